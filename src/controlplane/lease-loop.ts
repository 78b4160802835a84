/**
 * The renewal loop of the publishing lease (lease.ts), on whichever thread
 * runs it: every third of the lease's time to live it takes or renews the
 * lease in the store, counts the lease from when it *sent* the renewal (a
 * slow answer only shortens it), less a margin, and writes the result into
 * a LeaseClock the publishing thread reads without waiting for a message.
 */
import type { ReplicaStore } from './store/store.js';

export interface LeaseOptions {
  /** This replica's name (unique among the replicas: the holder in the store). */
  name: string;
  /** Its API's URL, for the others to send writers to. */
  advertise: string | null;
  /** How long a lease lasts unrenewed (default LEASE_TTL_MS). */
  ttlMs?: number;
  /** How long the publishing thread's event loop may not turn before the lease is left to run out (default STALL_MS, at least twice the TTL). */
  stallMs?: number;
}

export const LEASE_TTL_MS = 3_000;
export const STALL_MS = 10_000;
/** Given up locally this share of the lease before the database would let another replica take it. */
const LEASE_MARGIN = 0.2;

/** What one renewal found: who holds the lease, and until when this replica may publish (LeaseClock.now() ms) when it does. */
export type Renewal = { term: number; holder: string; advertise: string | null; leading: boolean; validUntil: number } | { error: string };

const TERM = 0;
const VALID_UNTIL = 1;
const ALIVE_AT = 2;

/**
 * The lease as last renewed, in memory both threads see: the term held
 * (-1: none) and until when, and when the publishing thread's loop last
 * turned. Times are CLOCK_MONOTONIC milliseconds (process-wide, so the
 * same on every thread, and never stepped).
 */
export class LeaseClock {
  readonly buffer: SharedArrayBuffer;
  private readonly cells: BigInt64Array;

  /** A new clock, or (on the renewing thread) the one `buffer` holds. */
  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(3 * 8);
    this.cells = new BigInt64Array(this.buffer);
    if (!buffer) Atomics.store(this.cells, TERM, -1n);
  }

  static now(): number {
    return Number(process.hrtime.bigint() / 1_000_000n);
  }

  get validUntil(): number {
    return Number(Atomics.load(this.cells, VALID_UNTIL));
  }

  get aliveAt(): number {
    return Number(Atomics.load(this.cells, ALIVE_AT));
  }

  /** Whether `term` is held now, by the last renewal. */
  valid(term: number): boolean {
    return Number(Atomics.load(this.cells, TERM)) === term && LeaseClock.now() < this.validUntil;
  }

  held(term: number, validUntil: number): void {
    // Not valid while the term changes: the end first, then the term, then the new end.
    Atomics.store(this.cells, VALID_UNTIL, 0n);
    Atomics.store(this.cells, TERM, BigInt(term));
    Atomics.store(this.cells, VALID_UNTIL, BigInt(Math.floor(validUntil)));
  }

  lost(): void {
    Atomics.store(this.cells, VALID_UNTIL, 0n);
    Atomics.store(this.cells, TERM, -1n);
  }

  /** The publishing thread's loop turned. */
  turned(): void {
    Atomics.store(this.cells, ALIVE_AT, BigInt(LeaseClock.now()));
  }
}

export class LeaseLoop {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** The renewal under way: a stop waits for it, or its UPDATE could land after the release and hold the lease again. */
  private running: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: Pick<ReplicaStore, 'lead' | 'release'>,
    private readonly options: LeaseOptions,
    private readonly clock: LeaseClock,
    private readonly report: (r: Renewal) => void,
  ) {}

  private get ttlMs(): number {
    return this.options.ttlMs ?? LEASE_TTL_MS;
  }

  start(): void {
    this.running = this.tick();
  }

  async stop(release: boolean): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.clock.lost();
    await this.running;
    if (release) await this.store.release(this.options.name);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    const sent = LeaseClock.now();
    const stall = sent - this.clock.aliveAt;
    const stallMs = Math.max(this.options.stallMs ?? STALL_MS, 2 * this.ttlMs);
    if (stall > stallMs) {
      // Wedged: not renewed, so another replica takes over once it runs out.
      this.clock.lost();
      this.report({ error: `this replica's event loop has not turned for ${stall} ms; the lease is left to run out` });
    } else {
      try {
        const r = await this.store.lead(this.options.name, this.options.advertise, this.ttlMs);
        if (this.stopped) return;
        const validUntil = sent + this.ttlMs * (1 - LEASE_MARGIN);
        if (r.leading) this.clock.held(r.term, validUntil);
        else this.clock.lost();
        this.report({ ...r, validUntil });
      } catch (err) {
        if (this.stopped) return;
        this.clock.lost();
        this.report({ error: `the store did not answer (${(err as Error).message})` });
      }
    }
    if (!this.stopped) this.timer = setTimeout(() => (this.running = this.tick()), Math.max(100, this.ttlMs / 3));
  }
}
