/**
 * The publisher's durable side: the versions (History) and the publication
 * records (held, refused, last, the override, the rollout's stages), kept
 * in the store before any agent can see them; restored by open() so that
 * a restart forgets nothing; followed by a replica that does not hold the
 * lease (lease.ts), which catches up after every reconnection; and the
 * publishing steps run one at a time (serial()). The steps themselves
 * (propose, publish, …) are publisher.ts, on top of this.
 *
 * It does not import the transport (transport.ts, agent-sessions.ts) nor
 * the rollout's agent-health judgement: it tells its owner to push, and
 * asks it for the agents' views, through PublisherHooks.
 */
import { EventEmitter } from 'node:events';
import crypto from 'node:crypto';
import type { PublishPolicy } from './policy.js';
import { UnsavedChange, type DocumentStore } from './statefile.js';
import { Rollout, type AgentView, type RolloutConfig } from './rollout.js';
import type { Finding } from '../verify/verify.js';
import type { GuardFinding } from '../protocol/guards.js';
import { IndexedState } from '../protocol/state.js';
import type { Frame, Hello, NackCode } from '../protocol/messages.js';
import { History, type PlannedVersion } from './history.js';
import { learnFollowed } from './judge-thread.js';
import { parseDesiredState } from '../desired/state.js';
import { stateJson } from '../protocol/state.js';
import { StoreError, type AuditEntry, type ControlPlaneStore, type PublicationRecords, type StoredVersion } from './store/store.js';
import { baseOf, stateOf, storesDocument } from './store/replay.js';
import { isReplicaStore } from './store/store.js';
import { LeaseKeeper, NotLeader, type LeaseOptions } from './lease.js';
import { SwitchyardError } from '../errors.js';

/** What the publisher takes of ServerOptions. */
export interface PublisherOptions {
  /**
   * Where a change from the API, or a held one when it is confirmed, is
   * written before any agent can see it (the state file). A change from the
   * file itself is not written back: the file is where it came from.
   */
  stateFile?: DocumentStore;
  /**
   * Where versions, the publication records and the audit log are kept
   * (store/): saved before any agent can see a version, and read back by
   * open() so that a restart forgets nothing. Without one, all of it lives
   * in memory (tests, benchmarks).
   */
  store?: ControlPlaneStore;
  /**
   * One of several replicas over a shared store (PostgreSQL): every
   * replica serves agents and reads; the one holding the lease (lease.ts)
   * publishes; the others follow its versions (LISTEN/NOTIFY, and a
   * catch-up read after every reconnection) and answer writes with a
   * redirect to it.
   */
  replica?: LeaseOptions;
  historyLimit?: number;
  epoch?: string;
  /** What propose() refuses or holds (policy.ts). */
  policy?: PublishPolicy;
  /** Stages a new version goes through (rollout.ts); without, it goes to every agent at once. */
  rollout?: RolloutConfig;
}

/** What the publisher asks of its owner: it never reaches an agent itself. */
export interface PublisherHooks {
  /** Every agent gets its next push (a version published, or followed). */
  pushAll(): void;
  /** The agents whose connection refused `version` for `code`: the refusal forgotten, pushed it again; their ids. */
  pushNacked(version: number, code: NackCode): string[];
  /** The agents connected (their hello registered). */
  agentIds(): string[];
  /** A version started rolling out: its stages are timed from now, and every agent's health is judged afresh. */
  rolloutStarted(): void;
  /** Versions followed from the store: every agent's health is judged afresh. */
  followed(): void;
  /** Replicas: this one is open over the shared store (its lease keeper started): its agents' views are shared from now on. */
  replicating(): void;
  /** The agents a rollout is judged over (GET /status). */
  views(): AgentView[];
}

export type Brief = Pick<Finding, 'code' | 'message' | 'witness'>;
export const brief = (f: Finding): Brief => ({ code: f.code, message: f.message, witness: f.witness });

/** What the control plane publishes, holds and refused (GET /status). */
export interface Publication {
  version: number | null;
  digest: string | null;
  bindings: number;
  last: { version: number; at: number; source: string; summary: string[]; ranges: number; warnings: Brief[] } | null;
  held: { version: number; since: number; source: string; reason: string; entries: string[]; summary: string[] } | null;
  refused: { at: number; source: string; findings: Brief[]; guards: GuardFinding[] } | null;
  rollout: ReturnType<Rollout['status']> | null;
  /** Replicas: whether this one publishes, and which does. */
  replica: { name: string; leading: boolean; leader: string | null; advertise: string | null } | null;
  /** Where versions are kept. */
  store: string;
}

/**
 * Events: `unsaved` (source, UnsavedChange): a change not published
 * because it could not be saved; replicas: `leading` (term), `following`
 * (why), `store-error` (Error).
 */
export class Ledger extends EventEmitter {
  /** The versions (replaced by open() with what the store kept). */
  history: History;
  /** Stages a new version goes through; without, it goes to every agent at once. */
  readonly rollout: Rollout | undefined;
  protected override: { version: number; withdrawal: true } | undefined;
  /** A state held for an operator's confirmation, with the version it will get; `save`: it came from the API and is to be saved when confirmed. */
  protected held: { version: number; indexed: IndexedState; save: boolean; actor: string } | undefined;
  /** The stored versions still needed to rebuild the state in force (from its nearest document on). */
  protected stored: StoredVersion[] = [];
  private opened = false;
  /** Whether this control plane publishes (always, unless it is a replica without the lease). */
  private leading = true;
  private lease: LeaseKeeper | undefined;
  /** The tail of the publishing steps (serial()). */
  private queue: Promise<unknown> = Promise.resolve();
  protected readonly publication: Omit<Publication, 'version' | 'digest' | 'bindings' | 'rollout' | 'replica' | 'store'> = { last: null, held: null, refused: null };

  constructor(
    protected readonly options: PublisherOptions,
    protected readonly hooks: PublisherHooks,
  ) {
    super();
    this.history = new History(options.historyLimit ?? 64, options.epoch);
    this.rollout = options.rollout ? new Rollout(options.rollout) : undefined;
  }

  /** Whether this control plane publishes now (role, without the leader's name). */
  get publishing(): boolean {
    return this.leading;
  }

  /** Where versions are kept (`file:DIR`, a PostgreSQL URL without its password, or memory). */
  get storeDescription(): string {
    return this.options.store?.description ?? 'memory';
  }

  /**
   * Opens the store (ServerOptions.store) and takes up where the last run
   * left off: the epoch, the versions (so an agent that has the current
   * one is up to date, not sent it again), the state in force, a held
   * state, the last refused one, the rollout's stages. Without a store,
   * nothing to do. Call before listen().
   */
  async open(): Promise<void> {
    const store = this.options.store;
    if (!store || this.opened) return;
    const loaded = await store.open(this.options.epoch ?? crypto.randomUUID());
    const fetch = (digest: string) => store.document(digest);
    const versions = loaded.versions;
    const live = versions.length > 0 ? await stateOf(versions, versions.length - 1, fetch) : undefined;
    const records = loaded.records;
    const retained = new Map<number, IndexedState>();
    if (this.rollout && records.rollout && this.rollout.restore(records.rollout)) {
      for (const v of this.rollout.versions()) if (v !== versions.length && v >= 1 && v <= versions.length) retained.set(v, await stateOf(versions, v - 1, fetch));
    }
    this.history = History.restore(this.options.historyLimit ?? 64, loaded.epoch, versions, live, retained);
    if (this.rollout) this.history.retainFor = this.rollout.versions();
    this.stored = versions.slice(Math.max(0, Math.min(...[versions.length - 1, ...[...retained.keys()].map((v) => v - 1)].map((at) => baseOf(versions, at)))));
    await this.takeRecords(records);
    this.opened = true;
    const replica = this.options.replica;
    if (replica) {
      if (!isReplicaStore(store)) throw new SwitchyardError('EINVAL_ARGUMENT', `${store.description}: replicas need a store they can share (PostgreSQL)`);
      // A follower until the lease says otherwise: no write goes out unfenced.
      this.leading = false;
      store.setFence(null);
      if (this.history.indexed) learnFollowed(this.history.indexed, this.options.policy);
      store.listen(
        () => void this.follow().catch((err: Error) => this.emit('store-error', err)),
        (err) => this.emit('store-error', err),
      );
      this.lease = new LeaseKeeper(store, replica, {
        gained: (term) =>
          this.serial(async () => {
            if (!this.lease?.holds(term)) return;
            await this.catchUp();
            // Lost again while catching up: lost() has said so already.
            if (!this.lease?.holds(term)) return;
            store.setFence({ holder: replica.name, term });
            this.leading = true;
            this.emit('leading', term);
          }).catch((err: Error) => void this.emit('store-error', err)),
        lost: (why) => {
          this.leading = false;
          store.setFence(null);
          this.emit('following', why);
        },
      });
      this.lease.start();
      this.hooks.replicating();
    }
  }

  /** The publication records a store kept, taken as this control plane's (at open, and by a follower). */
  private async takeRecords(records: PublicationRecords): Promise<void> {
    // Written by records() from these very shapes.
    this.publication.last = records.last as Publication['last'];
    this.publication.refused = records.refused as Publication['refused'];
    this.held = undefined;
    this.publication.held = null;
    if (records.held) {
      const text = await this.options.store!.document(records.held.digest);
      if (text !== undefined) {
        const { digest, save, actor: _actor, ...shown } = records.held;
        const indexed = IndexedState.of(parseDesiredState(JSON.parse(text), `held document ${digest}`));
        this.held = { version: records.held.version, indexed, save, actor: records.held.actor };
        this.publication.held = shown;
      }
    }
    this.override = records.override !== null && records.override === this.history.current?.version ? { version: records.override, withdrawal: true } : undefined;
  }

  /** A follower's turn: the versions and records the leader wrote since, applied in order; its agents pushed. */
  private follow(): Promise<void> {
    return this.serial(async () => {
      if (this.leading) return;
      await this.catchUp();
    });
  }

  /** The versions after the current one and the records, from the store (in a publishing step). */
  private async catchUp(): Promise<void> {
    const store = this.options.store;
    if (!isReplicaStore(store)) return;
    const { versions, records } = await store.since(this.history.current?.version ?? 0);
    // Stages still to have an older version keep its state as the versions move on.
    if (this.rollout && records.rollout) {
      this.rollout.restore(records.rollout);
      this.history.retainFor = this.rollout.versions();
    }
    let changed = false;
    for (const v of versions) {
      const before = this.history.current;
      if (v.delta && before) this.history.publishDelta(v.delta, `version ${v.version}`);
      else {
        const text = await store.document(v.digest);
        if (text === undefined) throw new StoreError('ESTORE_CORRUPT', `version ${v.version}: neither a delta nor its document`, { entry: `version ${v.version}` });
        this.history.publish(IndexedState.of(parseDesiredState(JSON.parse(text), `version ${v.version}`)));
      }
      const now = this.history.current!;
      if (now.version !== v.version || now.digest !== v.digest) throw new StoreError('ESTORE_CORRUPT', `version ${v.version}: followed to ${now.version} ${now.digest}, not ${v.digest}`, { entry: `version ${v.version}` });
      this.stored.push(v);
      if (v.document) this.stored = this.stored.slice(-1);
      changed = true;
    }
    await this.takeRecords(records);
    if (this.rollout) this.retain();
    if (changed) this.hooks.followed();
    // Were this replica to lead, the next small change is judged over its regions (judge-thread.ts).
    if (changed && !this.leading) learnFollowed(this.history.indexed!, this.options.policy);
    this.hooks.pushAll();
  }

  /** In a publishing step: only the replica holding the lease publishes; the others say who does. */
  protected assertLeader(): void {
    if (this.leading) return;
    const leader = this.lease?.leader;
    throw new NotLeader(leader?.advertise ?? null, leader?.name ?? null);
  }

  /** Who publishes: this control plane, or (a follower) the replica holding the lease. */
  get role(): { leading: boolean; leader: string | null; advertise: string | null } {
    return { leading: this.leading, leader: this.leading ? (this.options.replica?.name ?? null) : (this.lease?.leader?.name ?? null), advertise: this.lease?.leader?.advertise ?? null };
  }

  /** The store's records as they are now (or as `change` makes them). */
  protected records(change: Partial<PublicationRecords> = {}): PublicationRecords {
    const held = this.held && this.publication.held ? { ...this.publication.held, digest: this.held.indexed.digest, save: this.held.save, actor: this.held.actor } : null;
    return {
      last: this.publication.last,
      held,
      refused: this.publication.refused,
      override: this.override?.version ?? null,
      rollout: this.rollout ? this.rollout.snapshot() : null,
      ...change,
    };
  }

  /** Steps that publish run one at a time: each one's store write is done before the next is judged. */
  protected serial<T>(step: () => Promise<T>): Promise<T> {
    const run = this.queue.then(step, step);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** A store write that failed, as the API and the log say it: nothing was published. */
  protected unsaved(source: string, err: unknown): UnsavedChange {
    const unsaved =
      err instanceof UnsavedChange
        ? err
        : new UnsavedChange(`the change could not be saved in the store (${(err as Error).message}); it was not published, the current version stays`, (err as StoreError).entry, err);
    this.emit('unsaved', source, unsaved);
    return unsaved;
  }

  /**
   * `planned` made durable in the store (its delta, and its whole document
   * when due), with the records as they will be once it is published and
   * the audit entry; then published. Nothing is visible before the store
   * has it; a store write that fails throws UnsavedChange.
   */
  protected async commitAndPublish(
    planned: PlannedVersion,
    meta: { source: string; actor: string; summary: string[]; override?: boolean; audit?: AuditEntry; last?: PublicationRecords['last']; keepHeld?: boolean },
  ): Promise<{ version: number; changed: boolean }> {
    const store = this.options.store;
    if (store && planned.changed) {
      const delta = planned.delta ? { add: planned.delta.add, remove: planned.delta.remove } : null;
      const whole = storesDocument(this.stored, delta, planned.indexed.bindings.count);
      const version: StoredVersion = { epoch: this.history.epoch, version: planned.version, digest: planned.digest, delta, document: whole, source: meta.source, actor: meta.actor, at: Date.now(), summary: meta.summary };
      const records = this.records({
        rollout: this.rolloutAfter(planned.version),
        override: meta.override ? planned.version : null,
        ...(meta.last !== undefined ? { last: meta.last } : {}),
        ...(meta.keepHeld ? {} : { held: null }),
      });
      try {
        await store.commit(version, whole ? stateJson(planned.indexed.state) : undefined, records, meta.audit);
      } catch (err) {
        throw this.unsaved(meta.source, err);
      }
      this.stored.push(version);
      if (whole) this.stored = this.stored.slice(-1); // an older version is rebuilt from here on, or kept in memory
    } else if (store && meta.audit) {
      await this.recordOrThrow(meta.source, meta.audit);
    }
    return this.published(this.history.commit(planned), meta.override ? { override: true } : {});
  }

  /** The rollout's record once `version` starts rolling out (what is stored with it; the rollout itself starts once it is). */
  protected rolloutAfter(version: number): PublicationRecords['rollout'] {
    if (!this.rollout) return null;
    const next = new Rollout(this.rollout.config);
    next.restore(this.rollout.snapshot());
    next.start(version);
    return next.snapshot();
  }

  /** The records (and an audit entry) saved, or UnsavedChange. */
  protected async recordOrThrow(source: string, audit?: AuditEntry): Promise<void> {
    const store = this.options.store;
    if (!store) return;
    try {
      await store.putRecords(this.records(), audit);
    } catch (err) {
      throw this.unsaved(source, err);
    }
  }

  /** The records saved after a rollout step; a failure is told (`unsaved`), the step stands. */
  recordRollout(): Promise<void> {
    return this.serial(async () => {
      if (!this.leading) return; // a follower's rollout follows the leader's records
      try {
        await this.recordOrThrow('rollout');
      } catch {
        // told by unsaved(): a restart resumes from the step before
      }
    });
  }

  /** A version committed: its rollout starts, and the agents get it. */
  protected published(r: { version: number; changed: boolean }, options: { override?: boolean }): { version: number; changed: boolean } {
    if (options.override) this.override = { version: r.version, withdrawal: true };
    if (r.changed && this.rollout) {
      this.rollout.start(r.version);
      // Its stages are timed from now; health is judged afresh for each version: from when an agent has it.
      this.hooks.rolloutStarted();
      this.retain();
    }
    if (r.changed) this.hooks.pushAll();
    return { version: r.version, changed: r.changed };
  }

  /** The history keeps the states the rollout's stages are still to have. */
  retain(): void {
    if (!this.rollout) return;
    this.history.retainFor = this.rollout.versions();
    this.history.prune();
  }

  /** What to push to an agent whose hello says `hello`: the version its rollout stage is to have, with the override. */
  frameFor(hello: Pick<Hello, 'have' | 'refused' | 'labels'>): Frame | undefined {
    const target = this.rollout ? (this.rollout.target(hello.labels) ?? undefined) : undefined;
    return this.history.frameFor(hello, this.override, target);
  }

  /** After the transport has closed: a write under way finishes, then the lease and the store go. */
  async close(release: boolean): Promise<void> {
    await this.queue; // a write under way finishes before the store closes
    await this.lease?.stop(release); // the next replica takes over at once
    await this.options.store?.close();
  }
}
