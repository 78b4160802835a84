/**
 * Keeps the firewall at the desired state: applies on change, no more often
 * than `minIntervalMs` (bursts of changes coalesce into one apply; binding
 * deltas given with them go the incremental way, see Firewall.sync), and
 * re-reads every `resyncMs` to repair what someone else changed (our chain
 * flushed, our jump deleted or duplicated, a set destroyed or emptied). A
 * failed apply is retried in full at the next tick. Stopping leaves every
 * rule in place: the firewall fails closed, not open.
 */
import type { ApplyResult, Firewall } from './apply.js';
import type { DesiredState } from '../desired/state.js';
import type { BindingChange } from './incremental.js';

export interface ReconcilerOptions {
  minIntervalMs?: number;
  resyncMs?: number;
  /** Told about every apply that changed something and every failure. */
  onResult?: (result: ApplyResult | Error) => void;
}

export interface ReconcilerStatus {
  lastApplied?: Date;
  lastResult?: ApplyResult;
  lastError?: string;
  applies: number;
  /** Applies that had to write something (a new plan, or repaired drift). */
  changes: number;
}

export class FirewallReconciler {
  private desired: DesiredState | undefined;
  /** Binding changes since the last successful sync, or undefined: the next sync reads everything back. */
  private pending: BindingChange[] | undefined = [];
  private timer: NodeJS.Timeout | undefined;
  private resync: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private dirty = false;
  private lastRun = -Infinity;
  private readonly state: ReconcilerStatus = { applies: 0, changes: 0 };

  constructor(
    private readonly firewall: Firewall,
    private readonly options: ReconcilerOptions = {},
  ) {}

  /**
   * A new desired state, applied within minIntervalMs. `changes`: the
   * binding delta from the previous desired state (policies unchanged), if
   * the caller knows it; without it the next apply reads the kernel back.
   */
  setDesired(state: DesiredState, changes?: BindingChange[]): void {
    this.pending = changes && this.pending && this.desired ? [...this.pending, ...changes] : undefined;
    this.desired = state;
    this.dirty = true;
    this.schedule();
  }

  start(): void {
    const every = this.options.resyncMs ?? 90_000;
    this.resync ??= setInterval(() => {
      this.pending = undefined; // a full read-back repairs drift
      this.dirty = true;
      this.schedule();
    }, every);
    this.resync.unref();
  }

  /** Stops reconciling; the rules stay. Waits for an apply in progress. */
  async stop(): Promise<void> {
    clearInterval(this.resync);
    clearTimeout(this.timer);
    this.resync = this.timer = undefined;
    this.desired = undefined;
    await this.running;
  }

  status(): ReconcilerStatus {
    return { ...this.state };
  }

  /** Resolves when no apply is due or running (for tests and shutdown). */
  async idle(): Promise<void> {
    while (this.running || this.timer) await (this.running ?? new Promise((r) => setTimeout(r, 5)));
  }

  private schedule(): void {
    if (this.timer || this.running || !this.desired) return;
    // The monotonic clock: a wall clock stepped back an hour would otherwise hold the next apply for an hour.
    const wait = Math.max(0, this.lastRun + (this.options.minIntervalMs ?? 1000) - performance.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running = this.run().finally(() => {
        this.running = undefined;
        if (this.dirty) this.schedule();
      });
    }, wait);
  }

  private async run(): Promise<void> {
    const state = this.desired;
    if (!state) return;
    const changes = this.pending;
    this.pending = [];
    this.dirty = false;
    this.lastRun = performance.now();
    try {
      const result = await this.firewall.sync(state, changes);
      this.state.applies++;
      if (result.changed) this.state.changes++;
      this.state.lastApplied = new Date();
      this.state.lastResult = result;
      delete this.state.lastError;
      if (result.changed) this.options.onResult?.(result);
    } catch (err) {
      this.pending = undefined; // the next apply (a change or the resync tick) goes in full
      this.state.lastError = (err as Error).message;
      this.options.onResult?.(err as Error);
    }
  }
}
