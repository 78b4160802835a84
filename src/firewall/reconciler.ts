/**
 * Keeps the firewall at the desired plan: applies on change, no more often
 * than `minIntervalMs` (bursts of changes coalesce into one apply), and
 * re-reads every `resyncMs` to repair what someone else changed (our chain
 * flushed, our jump deleted or duplicated, a set destroyed or emptied). A
 * failed apply is retried at the next tick. Stopping leaves every rule in
 * place: the firewall fails closed, not open.
 */
import type { ApplyResult, Firewall } from './apply.js';
import type { FirewallPlan } from './plan.js';

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
  private plan: FirewallPlan | undefined;
  private timer: NodeJS.Timeout | undefined;
  private resync: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private dirty = false;
  private lastRun = 0;
  private readonly state: ReconcilerStatus = { applies: 0, changes: 0 };

  constructor(
    private readonly firewall: Firewall,
    private readonly options: ReconcilerOptions = {},
  ) {}

  /** A new desired plan: applied within minIntervalMs. */
  setDesired(plan: FirewallPlan): void {
    this.plan = plan;
    this.dirty = true;
    this.schedule();
  }

  start(): void {
    const every = this.options.resyncMs ?? 90_000;
    this.resync ??= setInterval(() => {
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
    this.plan = undefined;
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
    if (this.timer || this.running || !this.plan) return;
    const wait = Math.max(0, this.lastRun + (this.options.minIntervalMs ?? 1000) - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running = this.run().finally(() => {
        this.running = undefined;
        if (this.dirty) this.schedule();
      });
    }, wait);
  }

  private async run(): Promise<void> {
    const plan = this.plan;
    if (!plan) return;
    this.dirty = false;
    this.lastRun = Date.now();
    try {
      const result = await this.firewall.apply(plan);
      this.state.applies++;
      if (result.changed) this.state.changes++;
      this.state.lastApplied = new Date();
      this.state.lastResult = result;
      delete this.state.lastError;
      if (result.changed) this.options.onResult?.(result);
    } catch (err) {
      this.state.lastError = (err as Error).message;
      this.options.onResult?.(err as Error);
    }
  }
}
