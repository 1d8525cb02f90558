/**
 * A progress line on stderr for long operations, only when stderr is a
 * terminal (scripts and CI see nothing) and -q was not given. Redrawn at most 10 times a second.
 */
import { formatBytes, formatRate } from './format.js';
import { isQuiet } from './quiet.js';

/** Progress of a byte-count job. */
export class Progress {
  private readonly started = Date.now();
  private lastDraw = 0;
  private readonly enabled: boolean;

  constructor(private readonly label: string, private total: number,
    stream: NodeJS.WriteStream = process.stderr) {
    this.enabled = Boolean(stream.isTTY) && !isQuiet();
    this.stream = stream;
  }

  private readonly stream: NodeJS.WriteStream;

  /** Reports that `done` bytes of `total` (default: the constructor's; 0: unknown) are finished. */
  update(done: number, total = this.total): void {
    this.total = total;
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.lastDraw < 100 && (this.total === 0 || done < this.total)) return;
    this.lastDraw = now;
    const rate = formatRate(done, (now - this.started) / 1000);
    if (this.total === 0) { // a stream of unknown length: bytes and rate only
      this.stream.write(`\r${this.label} ${formatBytes(done)} ${rate}  `);
      return;
    }
    const pct = Math.floor((done / this.total) * 100);
    const width = 30;
    const fill = Math.round((pct / 100) * width);
    const bar = '#'.repeat(fill) + '-'.repeat(width - fill);
    this.stream.write(`\r${this.label} [${bar}] ${String(pct).padStart(3)}% ${formatBytes(done)}/${formatBytes(this.total)} ${rate}  `);
  }

  /** Clears the line. */
  done(): void {
    if (this.enabled) this.stream.write('\r\x1b[K');
  }
}
