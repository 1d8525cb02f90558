// Child of test/blockstore/read-view.test.ts, run with `node --expose-gc`
// (the collector must be driven by hand): takes a zero-copy view of segment
// 1, lets GC delete that segment, drops the view, collects, and prints JSON
// {viewOk, mappedWhileViewed, mappedAfterCollect}. Uses the built dist/.
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist');
const { Store } = await import(path.join(dist, 'blockstore', 'index.js'));
const dir = process.argv[2];
const BLOCKS = 16384;
const MiB = 1024 * 1024;
const fill = () => randomFillSync(Buffer.alloc(BLOCKS * 4096));

const store = await Store.init(dir, { writebackIntervalMs: 0 });
await store.createVolume('v', BLOCKS * 4096);
const h = await store.openVolume('v');
const first = fill();
await h.write(0, first);
await h.flush();
let view = await h.read(MiB, MiB, { view: true });
await h.write(0, fill());
await h.flush();
await store.gc();
const seg1 = path.join(dir, 'segments', '00000001.seg');
const mapped = () => fs.readFileSync('/proc/self/maps', 'utf8').includes(`${seg1} (deleted)`);
const viewOk = view.equals(first.subarray(MiB, 2 * MiB));
const mappedWhileViewed = mapped();
view = null;
for (let i = 0; i < 100 && mapped(); i++) {
  globalThis.gc();
  await new Promise((r) => setTimeout(r, 20));
}
const mappedAfterCollect = mapped();
await h.close();
await store.close();
console.log(JSON.stringify({ viewOk, mappedWhileViewed, mappedAfterCollect }));
