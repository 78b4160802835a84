/**
 * The longest the event loop went without turning since the last take():
 * the lateness of a 10 ms interval. (monitorEventLoopDelay's reset() drops
 * the interval it falls in — here, the push itself: a 500 ms block read as
 * 10 ms.)
 */
export class LoopHold {
  private last = performance.now();
  private max = 0;
  private readonly timer = setInterval(() => {
    const now = performance.now();
    this.max = Math.max(this.max, now - this.last);
    this.last = now;
  }, 10).unref();

  /** The longest hold so far, counting the one under way; then starts again. */
  take(): number {
    const now = performance.now();
    const held = Math.max(this.max, now - this.last);
    this.max = 0;
    this.last = now;
    return held;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
