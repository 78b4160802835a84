/**
 * The publishing lease of control-plane replicas over one store: exactly
 * one replica publishes at a time. Each replica tries to take or renew the
 * lease every third of its time to live; the one that holds it publishes.
 *
 * A replica stops publishing before another can start: it counts its lease
 * from when it *sent* the renewal (so a slow answer only shortens it), and
 * gives it up locally a margin before the database would let another take
 * it — also when the store stops answering. And every write it makes is
 * fenced by its term in the database itself (store/postgres.ts), so even a
 * replica paused past that point (a stopped process, a stepped clock)
 * cannot write once another has taken over.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SwitchyardError } from '../errors.js';
import type { ReplicaStore } from './store/store.js';

/** A write to a replica that does not publish: the API redirects it to `advertise` (the leader's URL), when known. */
export class NotLeader extends SwitchyardError {
  constructor(
    readonly advertise: string | null,
    readonly leader: string | null,
  ) {
    super('ENOT_LEADER', `this replica does not publish; ${leader ? `${leader}${advertise ? ` (${advertise})` : ''} does` : 'no replica holds the lease right now'}: send writes there`);
    this.name = 'NotLeader';
  }
}

/**
 * The answer to a write on a follower: 307 to the same path on the leader
 * (the method and body are sent again there: `curl -L`, or any client
 * that follows redirects), or 503 with Retry-After while no replica leads.
 */
export function notLeaderAnswer(err: NotLeader, req: IncomingMessage, res: ServerResponse): void {
  const body = `${JSON.stringify({ error: err.message, code: err.code, leader: err.leader, location: err.advertise })}\n`;
  if (err.advertise) {
    const location = new URL(req.url ?? '/', err.advertise).toString();
    res.writeHead(307, { 'content-type': 'application/json', location }).end(body);
  } else res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' }).end(body);
}

export interface LeaseOptions {
  /** This replica's name (unique among the replicas: the holder in the store). */
  name: string;
  /** Its API's URL, for the others to send writers to. */
  advertise: string | null;
  /** How long a lease lasts unrenewed (default LEASE_TTL_MS). */
  ttlMs?: number;
}

export const LEASE_TTL_MS = 3_000;
/** Given up locally this share of the lease before the database would let another replica take it. */
const LEASE_MARGIN = 0.2;

export interface LeaseHooks {
  /** This replica now holds the lease in `term`: catch up, then publish (if it still holds it then: holds()). */
  gained(term: number): Promise<void>;
  /** It no longer does (or could not tell): stop publishing now. */
  lost(why: string): void;
}

export class LeaseKeeper {
  private timer: NodeJS.Timeout | undefined;
  private deadline: NodeJS.Timeout | undefined;
  private term: number | null = null;
  private stopped = false;
  /** Who leads, as last read (its name and advertised URL). */
  leader: { name: string; advertise: string | null } | null = null;

  constructor(
    private readonly store: ReplicaStore,
    private readonly options: LeaseOptions,
    private readonly hooks: LeaseHooks,
  ) {}

  get ttlMs(): number {
    return this.options.ttlMs ?? LEASE_TTL_MS;
  }

  get leading(): boolean {
    return this.term !== null;
  }

  /** Whether the lease is (still) held in `term`: gained() checks it after each wait. */
  holds(term: number): boolean {
    return this.term === term;
  }

  start(): void {
    void this.tick();
  }

  /** Stops renewing; `release` gives the lease up so another replica takes over at once. */
  async stop(release: boolean): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.deadline);
    if (this.term !== null) this.drop('stopping');
    if (release) await this.store.release(this.options.name);
  }

  private drop(why: string): void {
    if (this.term === null) return;
    this.term = null;
    clearTimeout(this.deadline);
    this.hooks.lost(why);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    const sent = performance.now();
    try {
      const r = await this.store.lead(this.options.name, this.options.advertise, this.ttlMs);
      if (this.stopped) return;
      this.leader = { name: r.holder, advertise: r.advertise };
      if (!r.leading) this.drop(`${r.holder || 'another replica'} holds the lease (term ${r.term})`);
      else {
        // Counted from the send: the lease is ours until sent + ttl by the database's reckoning, at best.
        const left = sent + this.ttlMs * (1 - LEASE_MARGIN) - performance.now();
        if (left <= 0) this.drop('the renewal came back too late');
        else {
          clearTimeout(this.deadline);
          this.deadline = setTimeout(() => this.drop('the lease ran out before it could be renewed'), left);
          if (this.term !== r.term) {
            if (this.term !== null) this.drop(`the lease moved to term ${r.term}`);
            this.term = r.term;
            // Not awaited: renewals go on while the replica catches up (it checks holds() before publishing).
            void this.hooks.gained(r.term);
          }
        }
      }
    } catch (err) {
      this.drop(`the store did not answer (${(err as Error).message})`);
    }
    if (!this.stopped) this.timer = setTimeout(() => void this.tick(), Math.max(100, this.ttlMs / 3));
  }
}
