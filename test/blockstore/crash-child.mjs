// Crash-test writer: opens the store (built JS in dist/), then writes, trims,
// flushes, FUA-writes and snapshots volume 'crash' in a loop until killed.
// Logs each step with a synchronous write(2) to a log file (so nothing logged
// is lost at SIGKILL) and the parent knows what was acknowledged:
//   I b v   about to write value v to block b (it may land even if unacknowledged)
//   W b v   block b now holds value v (not yet durable)
//   A b v   block b holds value v, durable (FUA write acknowledged)
//   F       flush acknowledged: every W before it is durable
//   P name  snapshot crash@name exists, frozen with every W before it
//   R n     a relocation (run beside the writes, every few steps) moved n chunks
// Values: see crash-values.mjs.
import fs from 'node:fs';
import { Store } from '../../dist/blockstore/index.js';
import { encode } from './crash-values.mjs';

const [dir, seedArg, genArg, logPath] = process.argv.slice(2);
const BLOCK = 4096;
const BLOCKS = 2048;
let seed = Number(seedArg) >>> 0;
const rand = (n) => { seed = (seed * 1664525 + 1013904223) >>> 0; return seed % n; };
let gen = Number(genArg);

const log = fs.openSync(logPath, 'w');
const out = (line) => fs.writeSync(log, `${line}\n`);
const store = await Store.open(dir, { writebackIntervalMs: 50 });
const h = await store.openVolume('crash');
process.stdout.write('READY\n');
let snaps = 0;
let relocating = null;
for (let i = 0; i < 1e6; i++) {
  // Now and then a relocation of a random range runs beside the next writes and flushes (not awaited here).
  if (relocating === null && rand(6) === 0) {
    relocating = store.relocate('crash', { first: rand(BLOCKS), count: 256, force: true })
      .then((r) => { out(`R ${r.chunksMoved}`); relocating = null; });
  }
  const op = rand(100);
  const first = rand(BLOCKS - 8);
  const n = 1 + rand(8);
  const values = [];
  for (let k = 0; k < n; k++) {
    gen++;
    const r = rand(10);
    values.push(op >= 90 ? 'Z' : r < 2 ? `S${rand(4)}` : `G${first + k}.${gen}`);
  }
  values.forEach((v, k) => out(`I ${first + k} ${v}`));
  if (op >= 90) {
    await h.trim(first * BLOCK, n * BLOCK);
    values.forEach((v, k) => out(`W ${first + k} ${v}`));
  } else if (op >= 80) {
    await h.write(first * BLOCK, Buffer.concat(values.map(encode)), { fua: true });
    values.forEach((v, k) => out(`A ${first + k} ${v}`));
  } else {
    await h.write(first * BLOCK, Buffer.concat(values.map(encode)));
    values.forEach((v, k) => out(`W ${first + k} ${v}`));
  }
  if (rand(8) === 0) { await h.flush(); out('F'); }
  if (rand(200) === 0 && snaps < 2) {
    const name = `g${gen}`;
    await store.snapshot('crash', name);
    snaps++;
    out(`P ${name}`);
  }
}
