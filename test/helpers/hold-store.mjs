// Test helper process: opens a store from the built code and holds it (and
// its lock) until killed. Usage: node hold-store.mjs DIR [VOLUME SEED]
// With VOLUME, it first creates VOLUME (64 KiB) if missing, writes 16
// seeded blocks into it and flushes them. Prints "ready PID" when it holds
// the store, or "error CODE MESSAGE" and exits 3 if it cannot open it.
import { Store } from '../../dist/blockstore/index.js';

const [dir, volume, seed] = process.argv.slice(2);
let store;
try {
  store = await Store.open(dir);
} catch (err) {
  process.stdout.write(`error ${err.code} ${err.message}\n`);
  process.exit(3);
}
if (volume) {
  if (!store.has(volume)) await store.createVolume(volume, 16 * 4096);
  const h = await store.openVolume(volume);
  const data = Buffer.alloc(16 * 4096);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + Number(seed) * 7 + (i >> 12)) & 0xff;
  await h.write(0, data);
  await h.flush();
}
process.stdout.write(`ready ${process.pid}\n`);
setInterval(() => {}, 1 << 30);
