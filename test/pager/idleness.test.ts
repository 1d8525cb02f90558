/**
 * The idleness predictor (src/pager/idleness.ts) and the timer-period
 * learner (src/pager/idleness.ts learnPeriod), on sample sequences: the
 * initial timeout before a history, a timeout learnt from a VM's own quiet
 * spells, the maximum for spells that keep being cut short, short gaps
 * alone saying nothing about long ones; periods found only when wake-ups agree.
 */
import { describe, expect, it } from 'vitest';
import { IdlePredictor, learnPeriod, predictorOptions } from '../../src/pager/index.js';

/** Feeds `p` one busy second, then `gap` quiet seconds, for each gap. */
function feed(p: IdlePredictor, gaps: number[]): void {
  for (const g of gaps) {
    p.sample(true, 1);
    for (let i = 0; i < g; i++) p.sample(false, 1);
  }
  p.sample(true, 1);
}

describe('IdlePredictor', () => {
  it('uses the initial timeout until the VM has a history, and turns idle after it', () => {
    const p = new IdlePredictor(predictorOptions(30));
    feed(p, [100, 100]);
    expect(p.timeoutSeconds()).toBe(30);
    for (let i = 0; i < 29; i++) p.sample(false, 1);
    expect(p.idle()).toBe(false);
    p.sample(false, 1);
    expect(p.idle()).toBe(true);
    p.sample(true, 1);
    expect(p.idle()).toBe(false);
    expect(p.quietSeconds).toBe(0);
  });

  it('learns a shorter timeout from quiet spells that, once they started, lasted (a request a minute)', () => {
    const p = new IdlePredictor(predictorOptions(30));
    feed(p, [60, 60, 60, 60, 60, 60]);
    expect(p.timeoutSeconds()).toBe(15);
  });

  it('waits longer when quiet spells keep being cut short just after the timeout', () => {
    const p = new IdlePredictor(predictorOptions(30));
    // Spells of 40 s: any timeout below 40 leaves less than the 30 s payback before the next busy second.
    feed(p, [40, 40, 40, 40, 40, 40, 40, 40]);
    const t = p.timeoutSeconds();
    expect(t).toBeGreaterThan(40);
    expect(t).toBeLessThanOrEqual(600);
  });

  it('keeps the initial timeout when only short gaps were seen (a boot)', () => {
    const p = new IdlePredictor(predictorOptions(30));
    feed(p, [1, 2, 1, 3, 2, 1, 2, 1]);
    expect(p.timeoutSeconds()).toBe(30);
  });

  it('mixes: a bimodal VM gets a timeout just above its short gaps', () => {
    const p = new IdlePredictor(predictorOptions(10));
    feed(p, [2, 3, 2, 300, 2, 3, 300, 2, 300, 3, 300]);
    const t = p.timeoutSeconds();
    expect(t).toBeGreaterThan(3);
    expect(t).toBeLessThan(10);
  });
});

describe('learnPeriod', () => {
  it('finds the period of regular wake-ups, tolerating jitter and one outlier', () => {
    expect(Math.abs(learnPeriod([0, 10_000, 20_100, 29_900, 40_000])! - 10_000)).toBeLessThanOrEqual(200);
    expect(learnPeriod([0, 10_000, 20_000, 30_000, 33_000, 43_000])).toBe(10_000);
  });
  it('finds none from too few or disagreeing wake-ups', () => {
    expect(learnPeriod([0, 10_000, 20_000])).toBeUndefined();
    expect(learnPeriod([0, 3_000, 20_000, 21_000, 40_000])).toBeUndefined();
  });
});
