/**
 * Long computations in slices, so that the agent's event loop keeps
 * turning while it plans a million bindings (a full firewall plan of
 * 1,000,000 took 5-8 s of one thread; the control plane's ping, the admin
 * socket and the metrics all wait for the thread). Long loops (the
 * firewall's planner, a delta made on the indexed state) are
 * generators that `yield` every few thousand iterations; `runSync` runs one
 * to the end (the CLI, the warm-up, tests), `runSliced` gives the event
 * loop a turn whenever a slice has run for `sliceMs`. One body serves both,
 * so what the agent runs is what the tests run.
 */
import { setImmediate as turn } from 'node:timers/promises';

/** A computation that pauses now and then; its return value is the result. */
export type Steps<T> = Generator<void, T, void>;

/** Iterations between two pauses: ~1 ms of the cheapest loops, well under a slice for the dearest. */
export const STRIDE = 2048;

export function runSync<T>(steps: Steps<T>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** How long one slice may keep the thread (the budget for a whole push is 100 ms). */
export const SLICE_MS = 10;

export async function runSliced<T>(steps: Steps<T>, sliceMs = SLICE_MS): Promise<T> {
  let until = performance.now() + sliceMs;
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() >= until) {
      await turn();
      until = performance.now() + sliceMs;
    }
  }
}

/**
 * Runs of this many are sorted by Array.prototype.sort in one go, then
 * merged pairwise with pauses: 4,096 items take a few ms even with a dear
 * comparator (14,000 took 100 ms with the incremental planner's).
 */
const RUN = 4096;

/**
 * A stable sort that pauses: Array.prototype.sort is one uninterruptible
 * call (about a second for 1,000,000 items with a comparator).
 * Returns the sorted array, which may be `a` itself or a new one.
 */
export function* sortSteps<T>(a: T[], compare: (x: T, y: T) => number): Steps<T[]> {
  const n = a.length;
  if (n <= RUN) return a.sort(compare);
  for (let lo = 0; lo < n; lo += RUN) {
    const run = a.slice(lo, lo + RUN).sort(compare);
    for (let i = 0; i < run.length; i++) a[lo + i] = run[i]!;
    yield;
  }
  let src = a;
  let dst: T[] = new Array<T>(n);
  for (let width = RUN; width < n; width *= 2) {
    let k = 0;
    for (let lo = 0; lo < n; lo += 2 * width) {
      const mid = Math.min(lo + width, n);
      const hi = Math.min(lo + 2 * width, n);
      let i = lo;
      let j = mid;
      while (i < mid && j < hi) {
        // Left first on ties: stable.
        dst[k++] = compare(src[j]!, src[i]!) < 0 ? src[j++]! : src[i++]!;
        if ((k & (STRIDE - 1)) === 0) yield;
      }
      while (i < mid) dst[k++] = src[i++]!;
      while (j < hi) dst[k++] = src[j++]!;
      yield;
    }
    [src, dst] = [dst, src];
  }
  return src;
}
