/**
 * The reference control plane's channel: HTTPS + WebSocket (`ws`), agents
 * authenticated by a per-agent bearer token (compared in constant time;
 * the unauthenticated get 401 before the upgrade), one connection per
 * agent (a new one replaces the old), frames validated by the shared
 * parser, one push in flight per agent (the next waits for its ACK or
 * NACK), dead peers found by ping/pong, a size cap on what agents send
 * (`maxPayload`, MAX_AGENT_FRAME_BYTES), a snapshot's fragments written
 * against a deadline (a peer that stops reading gives its slot up), and a
 * slow agent's backlog bounded (a push is skipped while the socket still
 * holds unsent data: the agent gets the newest state later, not every
 * state). `GET /status` (same tokens, or the admin token) shows per agent
 * the applied version, the last NACK and heartbeat.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { warmUpHistory } from './warmup.js';
import type { PublishPolicy } from './policy.js';
import { judgeOffThread } from './judge-thread.js';
import { ApiError, readBody, requestIdOf } from './http.js';
import { UnsavedChange, type DocumentStore } from './statefile.js';
import { documentOf } from '../protocol/state.js';
import { Rollout, type AgentView, type RolloutConfig } from './rollout.js';
import type { Finding } from '../verify/verify.js';
import type { GuardFinding } from '../protocol/guards.js';
import { IndexedState } from '../protocol/state.js';
import crypto from 'node:crypto';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import type { DesiredState } from '../desired/state.js';
import { encodeFrame, parseFrame, type Frame, type Hello, type Nack, type NackCode, type Snapshot } from '../protocol/messages.js';
import type { StateDelta } from '../protocol/state.js';
import { History, type PlannedVersion } from './history.js';
import { parseDesiredState } from '../desired/state.js';
import { indexedCopy, stateJson } from '../protocol/state.js';
import { StoreError, type AuditEntry, type ControlPlaneStore, type PublicationRecords, type SharedAgentView, type StoredVersion } from './store/store.js';
import { baseOf, stateOf, storesDocument } from './store/replay.js';
import { isReplicaStore } from './store/store.js';
import { LeaseKeeper, NotLeader, notLeaderAnswer, type LeaseOptions } from './lease.js';
import { SwitchyardError } from '../errors.js';

export interface ServerOptions {
  /** PEM certificate and key of this server (agents pin the CA that signed it). */
  cert: string;
  key: string;
  /** agent id → token. */
  tokens: Record<string, string>;
  /** A token for `GET /status` only. */
  adminToken?: string;
  /** Named administrators (name → token): the API, /override and /status; the audit log records the name (`adminToken` is the one named "admin"). */
  adminTokens?: Record<string, string>;
  port?: number;
  host?: string;
  /** The largest frame an agent may send (default MAX_AGENT_FRAME_BYTES). */
  maxFrameBytes?: number;
  /** A snapshot fragment not written within this many ms ends its connection (default WRITE_DEADLINE_MS). */
  writeDeadlineMs?: number;
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
  pingMs?: number;
  historyLimit?: number;
  epoch?: string;
  /** What propose() refuses or holds (policy.ts). */
  policy?: PublishPolicy;
  /** Snapshots sent at once (default 32); the other agents wait their turn. */
  snapshotConcurrency?: number;
  /** Stages a new version goes through (rollout.ts); without, it goes to every agent at once. */
  rollout?: RolloutConfig;
}

export interface AgentStatus {
  agentId: string;
  connected: boolean;
  applied: { epoch: string; version: number; digest: string } | null;
  lastNack: Pick<Nack, 'version' | 'code' | 'message'> | null;
  lastHeartbeat: number | null;
  /** Bindings the agent overrides locally (from its heartbeats). */
  localOverrides: number;
  inFlight: number | null;
}

interface Peer {
  socket: WebSocket;
  hello: Hello;
  status: AgentStatus;
  alive: boolean;
  /** A push was held back by unsent data: made when the socket has written it (or by the retry timer). */
  held: NodeJS.Timeout | undefined;
  /** One of the SNAPSHOT_CONCURRENCY snapshot sends is this agent's. */
  sendingSnapshot: boolean;
  /**
   * The last version NACKed on this connection: not pushed again on it. A
   * new connection starts afresh (its hello says what the agent refuses by
   * itself: a version that killed it): an agent restarts exactly when a
   * transient failure has cleared.
   */
  nacked: { version: number; code: NackCode } | null;
  /** Ends the connection when the snapshot fragment being written is not written in time. */
  deadline: NodeJS.Timeout | undefined;
}

interface Counters {
  misses: number;
  errors: number;
  at: number;
}

/** How often a rollout looks whether the next stage is due. */
const ROLLOUT_TICK_MS = 250;
/** Replicas write their agents' views this often… */
const SHARE_MS = 1_000;
/** …and a view older than this is of an agent (or a replica) gone. */
const SHARE_FRESH_MS = 3 * SHARE_MS;

/** How long a held-back push waits when no write completion brings it sooner. */
const HELD_RETRY_MS = 100;
/** Snapshots being sent at once (see pushTo). */
const SNAPSHOT_CONCURRENCY = 32;
/** A snapshot goes out in pieces of this size (see sendInFragments). */
const FRAGMENT_BYTES = 64 * 1024;
/**
 * A snapshot fragment not handed to the kernel within this long ends its
 * connection. The kernel takes megabytes for a peer before a write waits
 * (3.8 MB measured on loopback for a peer that had stopped reading), so a
 * 64 KiB fragment still waiting after 5 s means the peer has not read
 * 64 KiB in 5 s (under ~100 kbit/s): it is not reading, and it must not
 * keep one of the SNAPSHOT_CONCURRENCY slots the other agents wait for
 * (40 such clients held them until their pings timed out, 10-20 s; a real
 * agent waited 7.5-15.7 s for its snapshot behind them).
 */
const WRITE_DEADLINE_MS = 5000;
/**
 * The largest frame an agent may send. Agents send hello, ack, nack and
 * heartbeat: a hello is at most ~11 KB (32 rollout labels of 64+64
 * characters, a few strings of at most 256), the others a few hundred
 * bytes plus a NACK's message and its few details. 64 KiB is several times
 * the largest; anything bigger is refused by ws from the frame's header
 * (close 1009) before its payload is read, so an authenticated agent
 * cannot make the control plane buffer up to 256 MiB (one 64 MiB frame
 * took it from 80 to 265 MB RSS).
 */
export const MAX_AGENT_FRAME_BYTES = 64 * 1024;

/** authorized()'s prefix for an administrator (agent ids have no colon). */
const ADMIN = 'admin:';
const isAdmin = (who: string) => who.startsWith(ADMIN);
const adminName = (who: string) => who.slice(ADMIN.length);

const tokenHash = (token: string) => crypto.createHash('sha256').update(token).digest('hex');
const sameToken = (a: string, b: string) => {
  const x = crypto.createHash('sha256').update(a).digest();
  const y = crypto.createHash('sha256').update(b).digest();
  return crypto.timingSafeEqual(x, y);
};

type Brief = Pick<Finding, 'code' | 'message' | 'witness'>;
const brief = (f: Finding): Brief => ({ code: f.code, message: f.message, witness: f.witness });

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

export type Proposed =
  | { outcome: 'published'; ms: number; version: number; summary: string[]; warnings: Finding[] }
  | { outcome: 'unchanged'; ms: number; version: number }
  | { outcome: 'held'; ms: number; version: number; withdrawal: GuardFinding; summary: string[] }
  | { outcome: 'refused'; ms: number; findings: Finding[]; guards: GuardFinding[] };

/**
 * Events: `ack` (agentId, version) and `nack` (agentId, { version, code,
 * message }), as the answers arrive; `stalled` (agentId, why): a
 * connection ended by the write deadline; `unsaved` (source, UnsavedChange):
 * a change not published because it could not be saved.
 */
export class ControlPlaneServer extends EventEmitter {
  /** The versions (replaced by open() with what the store kept). */
  history: History;
  private readonly https: https.Server;
  private readonly wss: WebSocketServer;
  /** Agents whose hello was registered: their session. */
  private readonly peers = new Map<string, Peer>();
  /** Per agent, its one open connection (with or without a hello yet). */
  private readonly connections = new Map<string, WebSocket>();
  private readonly statuses = new Map<string, AgentStatus>();
  private pinger: NodeJS.Timeout | undefined;
  private override: { version: number; withdrawal: true } | undefined;
  private encodedSnapshot: { key: string; bytes: Buffer } | undefined;
  private snapshotsSending = 0;
  /** Agents due a snapshot while SNAPSHOT_CONCURRENCY are on their way (in arrival order). */
  private readonly waitingForSnapshot = new Set<Peer>();
  /** sha256(token) → agent id: a connection is authenticated in one lookup, not one hash per agent. */
  private readonly tokenIndex = new Map<string, string>();
  /** A state held for an operator's confirmation, with the version it will get; `save`: it came from the API and is to be saved when confirmed. */
  private held: { version: number; indexed: IndexedState; save: boolean; actor: string } | undefined;
  /** The stored versions still needed to rebuild the state in force (from its nearest document on). */
  private stored: StoredVersion[] = [];
  private opened = false;
  /** Whether this control plane publishes (always, unless it is a replica without the lease). */
  private leading = true;
  private lease: LeaseKeeper | undefined;
  /** Replicas: the other replicas' agents, as the publishing one last read them. */
  private remoteAgents: Array<SharedAgentView & { replica: string }> = [];
  private shareTimer: NodeJS.Timeout | undefined;
  /** When the last read of the others' agents was issued, and when the version rolling out started (monotonic ms). */
  private remoteReadAt = 0;
  private rolloutStartedAt = 0;
  /** The tail of the publishing steps (serial()). */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly publication: Omit<Publication, 'version' | 'digest' | 'bindings' | 'rollout' | 'replica' | 'store'> = { last: null, held: null, refused: null };
  private api: { handle(req: IncomingMessage, res: ServerResponse, actor: string): void } | undefined;
  private readonly rollout: Rollout | undefined;
  private rolloutTimer: NodeJS.Timeout | undefined;
  /** Per agent, its last two heartbeats' counters and, once it has the version rolling out, the baseline they are judged from. */
  private readonly health = new Map<string, { last?: Counters; prev?: Counters; baseline?: Counters & { rate: number }; pending?: boolean }>();

  /** Serves the service-bindings API (api.ts) under /v1/. */
  serveApi(api: { handle(req: IncomingMessage, res: ServerResponse, actor: string): void }): void {
    this.api = api;
  }

  constructor(private readonly options: ServerOptions) {
    super();
    for (const [agentId, token] of Object.entries(options.tokens)) this.tokenIndex.set(tokenHash(token), agentId);
    this.history = new History(options.historyLimit ?? 64, options.epoch);
    this.rollout = options.rollout ? new Rollout(options.rollout) : undefined;
    this.https = https.createServer({ cert: options.cert, key: options.key }, (req, res) => {
      const json = (code: number, body: unknown) => res.writeHead(code, { 'content-type': 'application/json' }).end(`${JSON.stringify(body)}\n`);
      if (req.url?.startsWith('/v1/')) {
        const who = this.authorized(req.headers.authorization, true);
        if (!who) return void res.writeHead(401).end();
        if (!isAdmin(who)) return json(403, { error: 'the service-bindings API needs an admin token' });
        if (!this.api) return json(404, { error: 'the service-bindings API is not served here' });
        return this.api.handle(req, res, adminName(who));
      }
      if (req.url === '/status' || req.url === '/override') {
        const who = this.authorized(req.headers.authorization, true);
        if (!who) return void res.writeHead(401).end();
        if (req.method === 'GET' && req.url === '/status') return json(200, { publication: this.publicationStatus(), agents: this.status() });
        if (req.method === 'POST' && req.url === '/override') {
          // The operator's confirmation that the current version's withdrawal is meant: admin token only.
          if (!isAdmin(who)) return json(403, { error: 'the override needs an admin token' });
          readBody(req, 4096)
            .then((body) => {
              // Own properties only: {"constructor": …} is an unknown field, not Object.prototype's.
              const ok = typeof body === 'object' && body !== null && !Array.isArray(body) && Object.keys(body).length === 1 && Object.hasOwn(body, 'version');
              const version = ok ? (body as { version: unknown }).version : undefined;
              if (typeof version !== 'number' || !Number.isSafeInteger(version)) return json(400, { error: 'the body must be {"version": N}', field: 'version' });
              return this.allowWithdrawal(version, { actor: adminName(who), remote: req.socket.remoteAddress ?? null, requestId: requestIdOf(req) }).then((agents) => json(200, { version, agents }));
            })
            .catch((err: Error) => {
              if (err instanceof NotLeader) return notLeaderAnswer(err, req, res);
              if (err instanceof ApiError) return json(err.status, { error: err.message, ...(err.field ? { field: err.field } : {}) });
              if (err instanceof UnsavedChange) return json(507, { error: err.message, code: err.reason ?? err.code });
              json(409, { error: err.message });
            });
          return;
        }
      }
      res.writeHead(404).end();
    });
    this.wss = new WebSocketServer({ noServer: true, maxPayload: options.maxFrameBytes ?? MAX_AGENT_FRAME_BYTES });
    this.https.on('upgrade', (req, socket, head) => {
      const agentId = this.authorized(req.headers.authorization, false);
      if (!agentId) {
        socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n');
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(agentId, ws));
    });
  }

  /** The agent id for a valid agent token (or `admin:<name>` for an administrator's, when allowed), else undefined. */
  private authorized(header: string | undefined, adminAllowed: boolean): string | undefined {
    const token = /^Bearer (\S+)$/.exec(header ?? '')?.[1];
    if (!token) return undefined;
    if (adminAllowed) {
      // Every administrator compared, in constant time each: which one matched is not timed out of us.
      let admin: string | undefined;
      for (const [name, t] of this.admins) if (sameToken(token, t)) admin ??= `${ADMIN}${name}`;
      if (admin) return admin;
    }
    return this.tokenIndex.get(tokenHash(token));
  }

  /** Administrators by name (ServerOptions.adminTokens, and adminToken as "admin"). */
  private get admins(): Array<[string, string]> {
    return [...Object.entries(this.options.adminTokens ?? {}), ...(this.options.adminToken ? ([['admin', this.options.adminToken]] as Array<[string, string]>) : [])];
  }

  /** How long compiling the push path took before listening (warmup.ts). */
  warmUpMs = 0;

  async listen(): Promise<number> {
    await this.open();
    this.warmUpMs = warmUpHistory().ms;
    await new Promise<void>((resolve) => this.https.listen(this.options.port ?? 0, this.options.host ?? '127.0.0.1', resolve));
    this.pinger = setInterval(() => this.ping(), this.options.pingMs ?? 10_000);
    this.pinger.unref();
    if (this.rollout) {
      this.rolloutTimer = setInterval(() => this.checkRollout(), ROLLOUT_TICK_MS);
      this.rolloutTimer.unref();
    }
    return (this.https.address() as AddressInfo).port;
  }

  /** `release: false` keeps the lease until it runs out, as a killed replica would (tests). */
  async close(options: { release?: boolean } = {}): Promise<void> {
    clearInterval(this.pinger);
    clearInterval(this.shareTimer);
    clearInterval(this.rolloutTimer);
    for (const socket of this.connections.values()) socket.terminate();
    this.wss.close();
    const closed = new Promise<void>((resolve) => this.https.close(() => resolve()));
    // Keep-alive connections would keep it open (and serving) for as long as their clients send.
    this.https.closeAllConnections();
    await closed;
    await this.queue; // a write under way finishes before the store closes
    await this.lease?.stop(options.release ?? true); // the next replica takes over at once
    await this.options.store?.close();
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
      this.shareTimer = setInterval(() => void this.shareAgents(), SHARE_MS);
      this.shareTimer.unref();
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
    if (changed) for (const h of this.health.values()) (h.baseline = undefined), (h.pending = false);
    for (const peer of this.peers.values()) this.pushTo(peer);
  }

  /** In a publishing step: only the replica holding the lease publishes; the others say who does. */
  private assertLeader(): void {
    if (this.leading) return;
    const leader = this.lease?.leader;
    throw new NotLeader(leader?.advertise ?? null, leader?.name ?? null);
  }

  /** Who publishes: this control plane, or (a follower) the replica holding the lease. */
  get role(): { leading: boolean; leader: string | null; advertise: string | null } {
    return { leading: this.leading, leader: this.leading ? (this.options.replica?.name ?? null) : (this.lease?.leader?.name ?? null), advertise: this.lease?.leader?.advertise ?? null };
  }

  /** The store's records as they are now (or as `change` makes them). */
  private records(change: Partial<PublicationRecords> = {}): PublicationRecords {
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
  private serial<T>(step: () => Promise<T>): Promise<T> {
    const run = this.queue.then(step, step);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** A store write that failed, as the API and the log say it: nothing was published. */
  private unsaved(source: string, err: unknown): UnsavedChange {
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
  private async commitAndPublish(
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
  private rolloutAfter(version: number): PublicationRecords['rollout'] {
    if (!this.rollout) return null;
    const next = new Rollout(this.rollout.config);
    next.restore(this.rollout.snapshot());
    next.start(version);
    return next.snapshot();
  }

  /** The records (and an audit entry) saved, or UnsavedChange. */
  private async recordOrThrow(source: string, audit?: AuditEntry): Promise<void> {
    const store = this.options.store;
    if (!store) return;
    try {
      await store.putRecords(this.records(), audit);
    } catch (err) {
      throw this.unsaved(source, err);
    }
  }

  /** The records saved after a rollout step; a failure is told (`unsaved`), the step stands. */
  private recordRollout(): Promise<void> {
    return this.serial(async () => {
      if (!this.leading) return; // a follower's rollout follows the leader's records
      try {
        await this.recordOrThrow('rollout');
      } catch {
        // told by unsaved(): a restart resumes from the step before
      }
    });
  }

  /** Publishes a validated state; `override` lets this version withdraw beyond the agents' budget. */
  publish(state: DesiredState | IndexedState, options: { override?: boolean; source?: string; actor?: string } = {}): Promise<{ version: number; changed: boolean }> {
    return this.serial(async () => {
      this.assertLeader();
      const source = options.source ?? 'publish';
      return this.commitAndPublish(this.history.plan(state), { source, actor: options.actor ?? source, summary: [], ...(options.override ? { override: true } : {}) });
    });
  }

  /**
   * A new desired state under the publishing policy (policy.ts): verified,
   * compared with the current version, then published, held for an
   * operator's confirmation (a withdrawal over budget), or refused. What
   * happened is kept for GET /status, in the store when there is one, with
   * an audit entry.
   *
   * `save` (a change from the API): judged first without publishing
   * anything, then saved durably in the state file and the store, then
   * published — no agent sees a change that is not saved. One that cannot
   * be saved throws UnsavedChange and changes nothing here (the state file
   * is put back when the store failed after it). A refused change is not
   * saved in the state file; nor is a held one: the file keeps the state in
   * force (a restart publishes what the agents have), and the held state
   * is saved when it is confirmed, before it goes out.
   */
  propose(
    given: DesiredState | (() => DesiredState),
    source: string,
    options: { save?: boolean; actor?: string; remote?: string | null; requestId?: string | null; action?: string } = {},
  ): Promise<Proposed> {
    return this.serial(async () => {
      this.assertLeader();
      // A function is called in this step's turn: it edits the state in force as it is then.
      const state = typeof given === 'function' ? given() : given;
      const live = this.history.indexed;
      const started = performance.now();
      const j = await judgeOffThread(live, state, this.options.policy);
      const ms = Math.round(performance.now() - started);
      const at = Date.now();
      const actor = options.actor ?? source;
      const audit = (outcome: string, version: number | null, summary: string[]): AuditEntry => ({
        at,
        actor,
        remote: options.remote ?? null,
        requestId: options.requestId ?? null,
        action: options.action ?? source,
        outcome,
        version,
        summary,
      });
      if (j.verdict === 'refuse') {
        const before = this.publication.refused;
        this.publication.refused = { at, source, findings: j.findings.map(brief), guards: j.guards };
        const lines = [...j.findings.map((f) => `${f.code} ${f.message}`), ...j.guards.map((g) => `${g.code} ${g.message}`)].slice(0, 20);
        try {
          await this.recordOrThrow(source, audit('refused', null, lines));
        } catch (err) {
          this.publication.refused = before;
          throw err;
        }
        return { outcome: 'refused', ms, findings: j.findings, guards: j.guards };
      }
      if (live && live.digest === j.indexed.digest) {
        // Back to what is in force: nothing waits any more.
        const before = [this.held, this.publication.held] as const;
        this.held = undefined;
        this.publication.held = null;
        try {
          await this.recordOrThrow(source, audit('unchanged', this.history.current!.version, []));
        } catch (err) {
          [this.held, this.publication.held] = before;
          throw err;
        }
        return { outcome: 'unchanged', ms, version: this.history.current!.version };
      }
      const summary = j.summary.map((x) => x.text);
      if (j.verdict === 'hold') {
        const version = (this.history.current?.version ?? 0) + 1;
        const before = [this.held, this.publication.held] as const;
        try {
          await this.options.store?.putDocument(j.indexed.digest, stateJson(j.indexed.state));
        } catch (err) {
          throw this.unsaved(source, err);
        }
        this.held = { version, indexed: j.indexed, save: options.save === true, actor };
        this.publication.held = { version, since: at, source, reason: j.withdrawal.message, entries: j.withdrawal.entries, summary };
        try {
          await this.recordOrThrow(source, audit('held', version, summary));
        } catch (err) {
          [this.held, this.publication.held] = before;
          throw err;
        }
        return { outcome: 'held', ms, version, withdrawal: j.withdrawal, summary };
      }
      if (options.save) this.save(j.indexed.state, source);
      const planned = this.history.plan(j.indexed);
      const last = { version: planned.version, at, source, summary, ranges: j.ranges, warnings: j.warnings.map(brief) };
      let r: { version: number; changed: boolean };
      try {
        r = await this.commitAndPublish(planned, { source, actor, summary, audit: audit('published', planned.version, summary), last });
      } catch (err) {
        // The file was written, the store refused: the file gets the state in force back.
        if (options.save && live) this.putBack(live.state);
        throw err;
      }
      this.held = undefined;
      this.publication.held = null;
      this.publication.last = last;
      return { outcome: 'published', ms, version: r.version, summary, warnings: j.warnings };
    });
  }

  /**
   * What propose() would do with a state (verification findings, the
   * semantic diff, the verdict), in the same turn as the proposals, with
   * nothing saved or published: the API's ?dry_run=1. Audited as such.
   */
  judgeOnly(
    given: () => DesiredState,
    source: string,
    options: { actor?: string; remote?: string | null; requestId?: string | null; action?: string } = {},
  ): Promise<{ outcome: 'published' | 'unchanged' | 'held' | 'refused'; version: number | null; changes: string[]; findings: Brief[]; guards: GuardFinding[]; withdrawal: GuardFinding | null }> {
    return this.serial(async () => {
      const state = given();
      const live = this.history.indexed;
      const j = await judgeOffThread(live, state, this.options.policy);
      const current = this.history.current?.version ?? null;
      const outcome = j.verdict === 'refuse' ? 'refused' : live && live.digest === j.indexed.digest ? 'unchanged' : j.verdict === 'hold' ? 'held' : 'published';
      const changes = j.verdict === 'refuse' ? [] : j.summary.map((x) => x.text);
      const findings = j.verdict === 'refuse' ? j.findings.map(brief) : j.warnings.map(brief);
      const guards = j.verdict === 'refuse' ? j.guards : [];
      const withdrawal = j.verdict === 'hold' ? j.withdrawal : null;
      const audit: AuditEntry = { at: Date.now(), actor: options.actor ?? source, remote: options.remote ?? null, requestId: options.requestId ?? null, action: options.action ?? source, outcome: `dry run: ${outcome}`, version: current, summary: changes };
      try {
        await this.options.store?.audit(audit);
      } catch (err) {
        throw this.unsaved(source, err);
      }
      return { outcome, version: current, changes, findings, guards, withdrawal };
    });
  }

  /**
   * `state` into the state file, durably, or UnsavedChange (also emitted as
   * `unsaved` (source, error), for the log): nothing is published then.
   */
  private save(state: DesiredState, source: string): void {
    const file = this.options.stateFile;
    if (!file) return;
    try {
      file.write(documentOf(state));
    } catch (err) {
      throw this.unsaved(source, err instanceof UnsavedChange ? err : new UnsavedChange(`the change could not be saved (${(err as Error).message}); it was not published, the current version stays`, undefined, err));
    }
  }

  /** The state in force back into the state file after the store refused a change written there first. */
  private putBack(state: DesiredState): void {
    try {
      this.options.stateFile?.write(documentOf(state));
    } catch (err) {
      this.emit('unsaved', 'put back', new UnsavedChange(`the state file holds a change the store refused, and putting the state in force back failed (${(err as Error).message}); a restart would publish it`, undefined, err));
    }
  }

  /** The publishing side of GET /status. */
  publicationStatus(): Publication {
    const c = this.history.current;
    const rollout = this.rollout ? this.rollout.status(this.views()) : null;
    const replica = this.options.replica ? { name: this.options.replica.name, ...this.role } : null;
    return { version: c?.version ?? null, digest: c?.digest ?? null, bindings: this.history.indexed?.bindings.count ?? 0, ...this.publication, rollout, replica, store: this.storeDescription };
  }

  /** Publishes a change of bindings on top of the current version (validated against it; a bad entry throws, naming it). */
  publishDelta(delta: StateDelta, options: { override?: boolean; source?: string; actor?: string } = {}): Promise<{ version: number; changed: boolean }> {
    return this.serial(async () => {
      this.assertLeader();
      const source = options.source ?? 'delta';
      if (!this.options.store) return this.published(this.history.publishDelta(delta), options);
      const planned = this.history.planDelta(delta);
      if (!planned.changed) return { version: planned.after, changed: false };
      const version: StoredVersion = {
        epoch: this.history.epoch,
        version: planned.after + 1,
        digest: planned.digest,
        delta: planned.delta,
        document: false,
        source,
        actor: options.actor ?? source,
        at: Date.now(),
        summary: [],
      };
      if (storesDocument(this.stored, planned.delta, this.history.indexed!.bindings.count)) {
        // Due a whole document: worked out on a copy (the state in force changes only once it is saved).
        const copy = indexedCopy(this.history.indexed!.state);
        copy.applyDelta(delta, source);
        return this.commitAndPublish(this.history.plan(copy), { source, actor: version.actor, summary: [], ...(options.override ? { override: true } : {}) });
      }
      try {
        await this.options.store.commit(version, undefined, this.records({ rollout: this.rolloutAfter(version.version), override: options.override ? version.version : null, held: null }), undefined);
      } catch (err) {
        throw this.unsaved(source, err);
      }
      this.stored.push(version);
      return this.published(this.history.publishDelta(delta), options);
    });
  }

  private published(r: { version: number; changed: boolean }, options: { override?: boolean }): { version: number; changed: boolean } {
    if (options.override) this.override = { version: r.version, withdrawal: true };
    if (r.changed && this.rollout) {
      this.rollout.start(r.version);
      this.rolloutStartedAt = performance.now();
      this.retain();
      // Health is judged afresh for each version: from when an agent has it.
      for (const h of this.health.values()) {
        h.baseline = undefined;
        h.pending = false;
      }
    }
    if (r.changed) for (const peer of this.peers.values()) this.pushTo(peer);
    return { version: r.version, changed: r.changed };
  }

  /**
   * Confirms that the current version `version` may withdraw beyond the
   * agents' budget: it is pushed again, with the override, to the agents
   * that refused it for that reason. Returns those agents.
   */
  allowWithdrawal(version: number, options: { actor?: string; remote?: string | null; requestId?: string | null } = {}): Promise<string[]> {
    return this.serial(async () => {
      this.assertLeader();
      const actor = options.actor ?? 'admin';
      const audit = (outcome: string, summary: string[]): AuditEntry => ({ at: Date.now(), actor, remote: options.remote ?? null, requestId: options.requestId ?? null, action: 'override', outcome, version, summary });
      if (this.held?.version === version) {
        // A held state, confirmed: saved first (one from the API; the file's
        // own is in the file already), then published with the override to
        // every agent. Unsaved, it stays held.
        const { indexed, save } = this.held;
        const live = this.history.indexed;
        if (save) this.save(indexed.state, 'confirmed');
        const summary = this.publication.held?.summary ?? [];
        const last = { version, at: Date.now(), source: 'confirmed', summary, ranges: 0, warnings: [] };
        try {
          await this.commitAndPublish(this.history.plan(indexed), { source: 'confirmed', actor, summary, override: true, audit: audit('published', summary), last });
        } catch (err) {
          if (save && live) this.putBack(live.state);
          throw err;
        }
        this.held = undefined;
        this.publication.held = null;
        this.publication.last = last;
        return [...this.peers.keys()];
      }
      const current = this.history.current?.version;
      if (current !== version) throw new Error(`version ${version} is not the current version (${current ?? 'none'}); only the current version can be confirmed`);
      const before = this.override;
      this.override = { version, withdrawal: true };
      try {
        await this.recordOrThrow('override', audit('confirmed', []));
      } catch (err) {
        this.override = before;
        throw err;
      }
      const pushed: string[] = [];
      for (const peer of this.peers.values()) {
        if (peer.nacked?.version === version && peer.nacked.code === 'EWITHDRAWAL') {
          peer.nacked = null;
          peer.status.lastNack = null;
          pushed.push(peer.status.agentId);
          this.pushTo(peer);
        }
      }
      return pushed;
    });
  }

  /** The audit log (the store's; empty without one). */
  async auditLog(options: { after?: number; limit?: number } = {}): Promise<AuditEntry[]> {
    return this.options.store ? this.options.store.readAudit(options) : [];
  }

  status(): AgentStatus[] {
    return [...this.statuses.values()];
  }

  private accept(agentId: string, socket: WebSocket): void {
    // One connection per agent: a new one replaces the old at once (before
    // its hello), and the old one's place in the snapshot queue and its
    // slot are given up now, not when its close event comes: one token
    // never holds more than one connection's worth of slots.
    const previous = this.connections.get(agentId);
    this.connections.set(agentId, socket);
    if (previous) {
      const old = this.peers.get(agentId);
      if (old?.socket === previous) this.drop(old);
      previous.terminate();
    }
    // Known from now on (GET /status lists it), connected only once its hello is registered.
    const status = this.statuses.get(agentId) ?? { agentId, connected: false, applied: null, lastNack: null, lastHeartbeat: null, inFlight: null, localOverrides: 0 };
    this.statuses.set(agentId, status);
    let peer: Peer | undefined;
    socket.on('pong', () => {
      if (peer) peer.alive = true;
    });
    socket.on('close', () => {
      if (this.connections.get(agentId) === socket) this.connections.delete(agentId);
      if (peer) this.drop(peer);
    });
    /** A protocol violation: the session ends now (not when the peer answers the close, if ever). */
    const refuse = (reason: string) => {
      if (peer) this.drop(peer);
      socket.close(1008, reason);
    };
    // ws closes the connection itself on a protocol error (1009 for a frame
    // over maxPayload, sent before 'error'): terminating here would cut
    // that close frame off. Anything else ends the connection.
    socket.on('error', () => {
      if (peer) this.drop(peer);
      if (socket.readyState === WebSocket.OPEN) socket.terminate();
    });
    socket.on('message', (data) => {
      // Replaced meanwhile, or closing (what comes after our close frame is not heard).
      if (this.connections.get(agentId) !== socket || socket.readyState !== WebSocket.OPEN) return;
      let frame: Frame;
      try {
        frame = parseFrame(data.toString(), this.options.maxFrameBytes ?? MAX_AGENT_FRAME_BYTES);
      } catch {
        refuse('invalid frame');
        return;
      }
      if (frame.type === 'hello') {
        if (frame.agent_id !== agentId) {
          refuse('agent id does not match its token');
          return;
        }
        if (peer) {
          refuse('one hello per connection');
          return;
        }
        status.connected = true;
        status.inFlight = null;
        status.applied = frame.have;
        peer = { socket, hello: frame, status, alive: true, held: undefined, sendingSnapshot: false, nacked: null, deadline: undefined };
        this.peers.set(agentId, peer);
        this.pushTo(peer);
        return;
      }
      if (!peer) return;
      if (frame.type === 'ack' || frame.type === 'nack') {
        let judged: number | null = frame.version;
        if (frame.type === 'ack') {
          status.applied = { epoch: frame.epoch, version: frame.version, digest: frame.digest };
          peer.hello = { ...peer.hello, have: status.applied };
        } else {
          // A push the agent could not read names no version: it is the one in flight.
          const version = frame.version ?? status.inFlight;
          judged = version;
          status.lastNack = { version, code: frame.code, message: frame.message };
          if (version !== null) peer.nacked = { version, code: frame.code };
          if (frame.code === 'EREFUSED' && frame.epoch !== null && frame.version !== null) peer.hello = { ...peer.hello, refused: { epoch: frame.epoch, version: frame.version } };
        }
        status.inFlight = null;
        if (frame.type === 'ack') this.emit('ack', agentId, frame.version);
        else this.emit('nack', agentId, status.lastNack);
        if (this.rollout && judged === this.rollout.rollingOut) {
          if (frame.type === 'ack') this.startBaseline(agentId);
          else if (this.rollout.halt(this.view(peer), `NACK ${frame.code}: ${frame.message}`)) void this.recordRollout();
          this.checkRollout();
        }
        // A NACK for a gap or a digest mismatch is answered with a snapshot next.
        if (frame.type === 'nack' && (frame.code === 'EGAP' || frame.code === 'EDIGEST')) peer.hello = { ...peer.hello, have: null };
        if (frame.type === 'ack' || frame.code === 'EGAP' || frame.code === 'EDIGEST') this.pushTo(peer);
        return;
      }
      if (frame.type === 'heartbeat') {
        status.lastHeartbeat = Date.now();
        status.localOverrides = frame.local_overrides ?? 0;
        status.applied = { epoch: frame.epoch, version: frame.version, digest: frame.digest };
        if (frame.misses !== undefined && frame.errors !== undefined) this.heartbeatCounters(agentId, { misses: frame.misses, errors: frame.errors, at: performance.now() });
      }
    });
  }

  /**
   * A connection's end (closed, replaced, or stalled): its timers, its place
   * in the snapshot queue and its slot (the next agent's turn), and, if it
   * is the agent's registered session, the agent is disconnected. Idempotent.
   */
  private drop(peer: Peer): void {
    clearTimeout(peer.held);
    peer.held = undefined;
    clearTimeout(peer.deadline);
    peer.deadline = undefined;
    this.waitingForSnapshot.delete(peer);
    this.snapshotSent(peer);
    if (this.peers.get(peer.status.agentId) === peer) {
      this.peers.delete(peer.status.agentId);
      peer.status.connected = false;
      peer.status.inFlight = null;
    }
  }

  private pushTo(peer: Peer): void {
    if (peer.status.inFlight !== null) return; // one push in flight; the ACK brings the next
    if (peer.socket.bufferedAmount > 0) {
      // A slow agent: no queue grows here. The push is made once what is
      // queued has been written (send's callback), or on a timer, never lost.
      peer.held ??= setTimeout(() => this.release(peer), HELD_RETRY_MS);
      return;
    }
    const target = this.rollout ? (this.rollout.target(peer.hello.labels) ?? undefined) : undefined;
    const frame = this.history.frameFor(peer.hello, this.override, target);
    if (!frame || (frame.type !== 'snapshot' && frame.type !== 'delta')) {
      if (frame) this.send(peer, encodeFrame(frame));
      return;
    }
    if (peer.nacked?.version === frame.version && peer.nacked.code !== 'EGAP' && peer.nacked.code !== 'EDIGEST') {
      return; // refused on this connection: not again on it until there is a newer version
    }
    if (frame.type === 'snapshot') {
      // At most so many snapshots on their way at once: each one's TLS
      // records are made as it is written (megabytes per agent), so two
      // thousand agents reconnecting must not all be sent to together.
      if (this.snapshotsSending >= (this.options.snapshotConcurrency ?? SNAPSHOT_CONCURRENCY)) {
        this.waitingForSnapshot.add(peer);
        return;
      }
      this.waitingForSnapshot.delete(peer);
      this.snapshotsSending++;
      peer.sendingSnapshot = true;
      peer.status.inFlight = frame.version;
      this.sendInFragments(peer, this.snapshotBytes(frame), () => this.snapshotSent(peer));
      return;
    }
    peer.status.inFlight = frame.version;
    this.send(peer, encodeFrame(frame));
  }

  /** A snapshot written out (or its agent gone): the next waiting agent's turn. Once per send. */
  private snapshotSent(peer: Peer): void {
    if (!peer.sendingSnapshot) return;
    peer.sendingSnapshot = false;
    this.snapshotsSending--;
    const next = this.waitingForSnapshot.values().next();
    if (!next.done) {
      this.waitingForSnapshot.delete(next.value);
      this.release(next.value);
    }
  }

  /**
   * A big frame as WebSocket fragments, each written once the one before it
   * has been: TLS encrypts what it is given at once and keeps the buffer it
   * grew for as long as the connection lives (measured: a 7 MB snapshot
   * written in one piece left 7 MB of resident memory per agent, 817 MB
   * for 100; in 64 KiB fragments 2,000 agents peaked at 310 MB, and the
   * snapshot reached them sooner), so this bounds what each agent costs. Nothing else is sent to
   * the agent meanwhile (its push is in flight), pings aside, which the
   * protocol allows between fragments. A fragment not written within the
   * write deadline ends the connection: a peer that is not reading gives
   * its slot up to the agents waiting for one.
   */
  private sendInFragments(peer: Peer, bytes: Buffer, done: () => void): void {
    let offset = 0;
    const deadlineMs = this.options.writeDeadlineMs ?? WRITE_DEADLINE_MS;
    const stalled = () => {
      this.emit('stalled', peer.status.agentId, `a snapshot fragment was not written within ${deadlineMs} ms (the agent is not reading); connection ended`);
      this.drop(peer);
      peer.socket.terminate();
    };
    const next = () => {
      if (peer.socket.readyState !== WebSocket.OPEN) return done();
      const end = Math.min(offset + FRAGMENT_BYTES, bytes.length);
      const fragment = bytes.subarray(offset, end);
      offset = end;
      // One timer per snapshot, re-armed per fragment.
      if (peer.deadline) peer.deadline.refresh();
      else peer.deadline = setTimeout(stalled, deadlineMs);
      peer.socket.send(fragment, { binary: false, fin: end === bytes.length }, (err) => {
        if (err || end === bytes.length) {
          clearTimeout(peer.deadline);
          peer.deadline = undefined;
          done();
        } else next();
      });
    };
    next();
  }

  private send(peer: Peer, data: string | Buffer, written?: () => void): void {
    // A Buffer goes out as a text frame too: a snapshot is encoded once for every agent.
    peer.socket.send(data, { binary: false }, () => {
      written?.();
      if (peer.held && peer.socket.bufferedAmount === 0) this.release(peer);
    });
  }

  private release(peer: Peer): void {
    clearTimeout(peer.held);
    peer.held = undefined;
    if (this.peers.get(peer.status.agentId) === peer && peer.socket.readyState === WebSocket.OPEN) this.pushTo(peer);
  }

  /** A snapshot is the same bytes for every agent: encoded once per version (and override). */
  private snapshotBytes(frame: Snapshot): Buffer {
    const key = `${frame.epoch} ${frame.version} ${frame.override ? 'override' : ''}`;
    if (this.encodedSnapshot?.key !== key) this.encodedSnapshot = { key, bytes: Buffer.from(this.history.snapshotText(frame), 'utf8') };
    return this.encodedSnapshot.bytes;
  }

  /** The history keeps the states the rollout's stages are still to have. */
  private retain(): void {
    if (!this.rollout) return;
    this.history.retainFor = this.rollout.versions();
    this.history.prune();
  }

  private view(peer: Peer): AgentView {
    const s = peer.status;
    return { agentId: s.agentId, labels: peer.hello.labels, connected: s.connected, applied: s.applied?.epoch === this.history.epoch ? s.applied.version : null, unhealthy: this.unhealthy(s.agentId) };
  }

  /** The agents a rollout is judged over: this replica's, and (replicas) the others' as they last wrote them. */
  private views(): AgentView[] {
    const own = [...this.peers.values()].map((p) => this.view(p));
    if (this.remoteAgents.length === 0) return own;
    const here = new Set(own.map((v) => v.agentId));
    return [...own, ...this.remoteAgents.filter((v) => !here.has(v.agentId))];
  }

  /**
   * Replicas: every SHARE_MS, this replica writes its connected agents'
   * views to the store, and the one that publishes reads the others'
   * (rows older than SHARE_FRESH_MS are of agents gone or of a replica gone).
   */
  private async shareAgents(): Promise<void> {
    const store = this.options.store;
    const replica = this.options.replica;
    if (!isReplicaStore(store) || !replica) return;
    const views: SharedAgentView[] = [...this.peers.values()].map((p) => {
      const n = p.status.lastNack;
      return { ...this.view(p), nack: n && n.version !== null ? { version: n.version, why: `NACK ${n.code}: ${n.message}` } : null };
    });
    try {
      await store.putAgents(replica.name, views);
      if (this.leading) {
        const readAt = performance.now();
        const all = await store.agents(SHARE_FRESH_MS);
        this.remoteAgents = all.filter((a) => a.replica !== replica.name);
        this.remoteReadAt = readAt;
      } else this.remoteAgents = [];
    } catch (err) {
      this.emit('store-error', err);
    }
  }

  /** Releases the next stage when it is due; pushes to its agents. */
  private checkRollout(): void {
    // Stages are released by the replica that publishes.
    if (!this.rollout || !this.leading) return;
    // Durations (the bake, miss rates) on the monotonic clock: a wall clock
    // stepped back would hold a rollout for as long, stepped forward skip the bake.
    const halted = this.rollout.halted;
    // A NACK an agent of another replica sent (its replica wrote it down).
    for (const a of this.remoteAgents) if (a.nack && a.nack.version === this.rollout.rollingOut) this.rollout.halt(a, `${a.nack.why} (via replica ${a.replica})`);
    // Replicas: no stage goes on what the others said before it started (an
    // agent of theirs unknown here would make its stage look empty, so done):
    // only on a read made once each has had a turn to write since.
    if (this.options.replica && this.remoteReadAt < this.rolloutStartedAt + SHARE_MS) {
      if (this.rollout.halted !== halted) void this.recordRollout();
      return;
    }
    const released = this.rollout.advance(this.views(), performance.now());
    if (released === null) {
      if (this.rollout.halted !== halted) void this.recordRollout();
      return;
    }
    this.retain();
    const rollout = this.rollout;
    const push = () => {
      for (const peer of this.peers.values()) if (rollout.stageOf(peer.hello.labels) === released) this.pushTo(peer);
    };
    // The stage's release is in the store before its agents hear of it.
    if (this.options.store) void this.recordRollout().then(push);
    else push();
  }

  private heartbeatCounters(agentId: string, now: Counters): void {
    const h = this.health.get(agentId) ?? {};
    h.prev = h.last;
    h.last = now;
    if (h.pending) {
      h.baseline = { ...now, rate: 0 };
      h.pending = false;
    }
    this.health.set(agentId, h);
    this.checkRollout();
  }

  /** The agent has the version rolling out: its counters are judged from here on. */
  private startBaseline(agentId: string): void {
    const h = this.health.get(agentId) ?? {};
    if (h.last && h.prev && h.last.at > h.prev.at) h.baseline = { ...h.last, rate: ((h.last.misses - h.prev.misses) * 1000) / (h.last.at - h.prev.at) };
    else if (h.last) h.baseline = { ...h.last, rate: 0 };
    else h.pending = true;
    this.health.set(agentId, h);
  }

  /** Errors risen, or misses climbing faster than before (at least 1/s, and twice the rate before), since the baseline. */
  private unhealthy(agentId: string): string | null {
    const h = this.health.get(agentId);
    const b = h?.baseline;
    const last = h?.last;
    if (!b || !last || last.at <= b.at) return null;
    if (last.errors > b.errors) return `errors rose from ${b.errors} to ${last.errors}`;
    const rate = ((last.misses - b.misses) * 1000) / (last.at - b.at);
    if (rate > Math.max(1, 2 * b.rate)) return `misses climb ${rate.toFixed(1)}/s (before: ${b.rate.toFixed(1)}/s)`;
    return null;
  }

  private ping(): void {
    for (const peer of this.peers.values()) {
      if (!peer.alive) {
        peer.socket.terminate();
        continue;
      }
      peer.alive = false;
      peer.socket.ping();
    }
  }
}
