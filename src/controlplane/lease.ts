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
 *
 * The renewals run on a thread of their own (lease-thread.ts), with their
 * own connection: judging a large state or a storm of agent connections
 * can hold the event loop for seconds, and a lease renewed on that loop
 * would move to another replica each time, fencing the very write the
 * replica was busy with. The thread renews only while the event loop still
 * turns now and then (LeaseClock): a replica whose loop is wedged lets the
 * lease go. This side keeps who leads, and tells the server (gained/lost).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SwitchyardError } from '../errors.js';
import type { ReplicaStore } from './store/store.js';
import { LEASE_TTL_MS, LeaseClock, LeaseLoop, type LeaseOptions, type Renewal } from './lease-loop.js';
import { LeaseThread } from './lease-thread.js';

export { LEASE_TTL_MS, type LeaseOptions } from './lease-loop.js';

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

export interface LeaseHooks {
  /** This replica now holds the lease in `term`: catch up, then publish (if it still holds it then: holds()). */
  gained(term: number): Promise<void>;
  /** It no longer does (or could not tell): stop publishing now. */
  lost(why: string): void;
}

/** The renewals' source: a thread of its own (a store another thread can reach), or this thread's loop (tests from sources). */
interface Renewer {
  start(): void;
  stop(release: boolean): Promise<void>;
}

export class LeaseKeeper {
  private deadline: NodeJS.Timeout | undefined;
  private alive: NodeJS.Timeout | undefined;
  private term: number | null = null;
  private stopped = false;
  private readonly clock = new LeaseClock();
  private readonly renewer: Renewer;
  /** Who leads, as last read (its name and advertised URL). */
  leader: { name: string; advertise: string | null } | null = null;

  constructor(
    store: ReplicaStore,
    private readonly options: LeaseOptions,
    private readonly hooks: LeaseHooks,
  ) {
    const report = (r: Renewal) => this.renewed(r);
    const spec = store.threadSpec?.();
    this.renewer = spec && LeaseThread.available ? new LeaseThread(spec, options, this.clock, report) : new LeaseLoop(store, options, this.clock, report);
  }

  get ttlMs(): number {
    return this.options.ttlMs ?? LEASE_TTL_MS;
  }

  get leading(): boolean {
    return this.term !== null;
  }

  /** Whether the lease is (still) held in `term`, by the latest renewal (also one not yet reported here): gained() checks it after each wait. */
  holds(term: number): boolean {
    return this.term === term && this.clock.valid(term);
  }

  start(): void {
    // The renewing side lets the lease go when this loop has not turned for long.
    this.clock.turned();
    this.alive = setInterval(() => this.clock.turned(), Math.max(50, this.ttlMs / 6));
    this.alive.unref();
    this.renewer.start();
  }

  /** Stops renewing; `release` gives the lease up so another replica takes over at once. */
  async stop(release: boolean): Promise<void> {
    this.stopped = true;
    clearInterval(this.alive);
    clearTimeout(this.deadline);
    if (this.term !== null) this.drop('stopping');
    await this.renewer.stop(release);
  }

  private drop(why: string): void {
    if (this.term === null) return;
    this.term = null;
    clearTimeout(this.deadline);
    this.hooks.lost(why);
  }

  /** Until the lease's local end; a renewal made meanwhile (reported or not yet) moves it. */
  private armDeadline(): void {
    clearTimeout(this.deadline);
    const left = this.clock.validUntil - LeaseClock.now();
    if (left <= 0) return this.drop('the lease ran out before it could be renewed');
    this.deadline = setTimeout(() => this.armDeadline(), left);
  }

  private renewed(r: Renewal): void {
    if (this.stopped) return;
    if ('error' in r) return this.drop(r.error);
    this.leader = { name: r.holder, advertise: r.advertise };
    if (!r.leading) return this.drop(`${r.holder || 'another replica'} holds the lease (term ${r.term})`);
    // Reports wait for this loop: one that queued behind a busy turn is judged by the latest renewal, which the clock holds.
    if (!this.clock.valid(r.term)) return this.drop('the renewal came back too late');
    if (this.term !== null && this.term !== r.term) this.drop(`the lease moved to term ${r.term}`);
    this.armDeadline();
    if (this.term !== r.term) {
      this.term = r.term;
      // Not awaited: renewals go on while the replica catches up (it checks holds() before publishing).
      void this.hooks.gained(r.term);
    }
  }
}
