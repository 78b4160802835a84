/**
 * The wall clock stepped by `ms` (as an NTP step or an operator would), still
 * ticking from there; returns the undo. Only `Date.now` moves: the monotonic
 * clock (performance.now, timers) does not, as on a real machine.
 */
export function stepWallClock(ms: number): () => void {
  const real = Date.now;
  const from = real() + ms;
  const at = performance.now();
  Date.now = () => from + (performance.now() - at);
  return () => {
    Date.now = real;
  };
}
