// Crash-test writer for flushes committed in several transactions (slices):
// writes every block of volume 'v' with generation g, logs "W g", flushes,
// logs "F g", and goes on with g + 1 until killed. Blocks b and b + HALF
// hold the same bytes, so one chunk is referenced from two slices. Logs with
// synchronous write(2) so nothing logged is lost at SIGKILL.
import fs from 'node:fs';
import { Store } from '../../dist/blockstore/index.js';
import { BLOCKS, block } from './crash-slices-values.mjs';

const [dir, genArg, logPath] = process.argv.slice(2);
const log = fs.openSync(logPath, 'w');
const out = (line) => fs.writeSync(log, `${line}\n`);
const store = await Store.open(dir, { writebackIntervalMs: 0 });
const h = await store.openVolume('v');
process.stdout.write('READY\n');
const RUN = 256;
for (let gen = Number(genArg); gen < 1e6; gen++) {
  out(`S ${gen}`);
  for (let b = 0; b < BLOCKS; b += RUN) {
    const n = Math.min(RUN, BLOCKS - b);
    await h.write(b * 4096, Buffer.concat(Array.from({ length: n }, (_, i) => block(b + i, gen))));
  }
  out(`W ${gen}`);
  await h.flush();
  out(`F ${gen}`);
}
