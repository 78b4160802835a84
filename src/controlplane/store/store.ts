/**
 * What the control plane keeps so that a restart (or another replica)
 * forgets nothing: the versions it published (append-only; each one's
 * state is a stored document or the change from the version before), the
 * publication records (the last published, a held state, the last
 * refused), the rollout's state, and the audit log. Two backends: a
 * directory (file.ts, the embedded default) and PostgreSQL (postgres.ts).
 *
 * Documents are content-addressed (by the state's digest), so a rollback
 * to earlier content stores nothing new. A version's state is rebuilt from
 * the nearest stored document at or before it plus the deltas after it
 * (replay.ts); a document is stored when the policies change, for the first
 * version, and once the deltas since the last one grow past a bound, so a
 * one-binding change to a large state writes a line, not the whole state.
 *
 * Every write is durable before it returns (fsync / COMMIT); a write that
 * fails throws StoreError and the caller publishes nothing.
 */
import { SwitchyardError } from '../../errors.js';
import type { Binding } from '../../bindings/binding.js';
import type { BindingKey } from '../../protocol/state.js';

export interface StoredDelta {
  add: Binding[];
  remove: BindingKey[];
}

export interface StoredVersion {
  epoch: string;
  version: number;
  /** The state's digest (protocol/state.ts): what agents ACK. */
  digest: string;
  /** The change from the version before; null when services or HTTPS-only ranges changed too (or the first version). */
  delta: StoredDelta | null;
  /** Whether the whole document is stored (by digest): versions are rebuilt from the nearest one. */
  document: boolean;
  /** Where the change came from (the state file, an API route, a confirmation). */
  source: string;
  /** Who made it (an admin token's name, `file`, …). */
  actor: string;
  /** Wall-clock milliseconds. */
  at: number;
  /** The semantic diff's summary lines. */
  summary: string[];
}

/** A state held for an operator's confirmation (a withdrawal over budget). */
export interface HeldRecord {
  version: number;
  /** The held state's document, stored by this digest. */
  digest: string;
  since: number;
  source: string;
  actor: string;
  reason: string;
  entries: string[];
  summary: string[];
  /** It came from the API: saved to the state file when confirmed. */
  save: boolean;
}

export interface Brief {
  code: string;
  message: string;
  witness?: unknown;
}

/** The publishing side of GET /status, as it survives a restart. */
export interface PublicationRecords {
  last: { version: number; at: number; source: string; summary: string[]; ranges: number; warnings: Brief[] } | null;
  held: HeldRecord | null;
  refused: { at: number; source: string; findings: Brief[]; guards: Array<{ code: string; message: string; entries: string[] }> } | null;
  /** The version published with the guard override (an operator's confirmation). */
  override: number | null;
  /** Rollout.snapshot(): per stage the version it is to have, the version rolling out, how far, a halt. */
  rollout: RolloutRecord | null;
}

export interface RolloutRecord {
  allowed: Array<number | null>;
  version: number | null;
  released: number;
  halted: { stage: string; agentId: string; why: string; at: number } | null;
}

export interface AuditEntry {
  at: number;
  /** The admin token's name, `file` for the state file, `agent:<id>` … */
  actor: string;
  remote: string | null;
  requestId: string | null;
  /** `POST /v1/bindings`, `override`, `state file` … */
  action: string;
  /** published, unchanged, held, refused, unsaved, precondition failed, dry run … */
  outcome: string;
  version: number | null;
  summary: string[];
  /**
   * A digest of the request itself (method, route, body) when the client
   * named it with X-Request-Id: a retry with the same id and digest is
   * answered from this entry, not applied again (IDEMPOTENT_OUTCOMES).
   */
  request?: string | null;
}

/** The outcomes a retried request is answered with (others — a dry run, a failure — are made again). */
export const IDEMPOTENT_OUTCOMES: ReadonlySet<string> = new Set(['published', 'unchanged', 'held', 'refused']);

export const EMPTY_RECORDS: PublicationRecords = { last: null, held: null, refused: null, override: null, rollout: null };

/** What a store holds at start. */
export interface Loaded {
  epoch: string;
  /** The versions of the epoch, oldest first (a backend may start at the oldest one still needed). */
  versions: StoredVersion[];
  records: PublicationRecords;
}

export interface ControlPlaneStore {
  /** `file:<dir>` or `postgres://host/db` (no password), for logs and status. */
  readonly description: string;
  /** Opens (creating or migrating) the store; `epoch` is used when it holds none yet. */
  open(epoch: string): Promise<Loaded>;
  /**
   * Appends the next version, durably, with its document when `document`
   * (the state's JSON text) is given (version.document says so), and moves the publication pointer to
   * it; the audit entry goes in the same step. Refuses (StoreError
   * ESTORE_CONFLICT) a version that is not the next one.
   */
  commit(version: StoredVersion, document: string | undefined, records: PublicationRecords, audit: AuditEntry | undefined): Promise<void>;
  /** A stored document's text by digest (or undefined). */
  document(digest: string): Promise<string | undefined>;
  /** Stores a document (a held state), idempotently. */
  putDocument(digest: string, text: string): Promise<void>;
  /** Replaces the publication records (held, refused, rollout), durably. */
  putRecords(records: PublicationRecords, audit?: AuditEntry): Promise<void>;
  /** Appends to the audit log, durably. */
  audit(entry: AuditEntry): Promise<void>;
  /** Audit entries, newest last; `after`: only those after this many entries; at most `limit`. */
  readAudit(options?: { after?: number; limit?: number }): Promise<AuditEntry[]>;
  /** The latest entry of `actor`'s request `requestId` with a digest and an outcome in IDEMPOTENT_OUTCOMES, if any. */
  findRequest(actor: string, requestId: string): Promise<AuditEntry | undefined>;
  close(): Promise<void>;
}

/**
 * A store several control planes share (PostgreSQL): one of them holds
 * the publishing lease at a time, and every write is fenced by its term.
 */
export interface ReplicaStore {
  /** Takes or renews the lease for `holder` (advertising its API URL); says who holds it. */
  lead(holder: string, advertise: string | null, ttlMs: number): Promise<{ term: number; holder: string; advertise: string | null; leading: boolean }>;
  /** Gives the lease up now. */
  release(holder: string): Promise<void>;
  /** What openStore() takes to reach this store from another thread (the lease is renewed on one), if it can be. */
  threadSpec?(): string;
  /** Writes from now on: under this lease (checked in each write's transaction), or refused (null). */
  setFence(fence: { holder: string; term: number } | null): void;
  /** Versions after `after`, and the records. */
  since(after: number): Promise<{ versions: StoredVersion[]; records: PublicationRecords }>;
  /** `onChange` on every other replica's commit and after every (re)connection. */
  listen(onChange: () => void, onError: (err: Error) => void): void;
  /** What this replica says of its agents (upserted; an agent that moved is the latest replica's). */
  putAgents(replica: string, views: readonly SharedAgentView[]): Promise<void>;
  /** Every replica's agents, as written within the last `freshMs`. */
  agents(freshMs: number): Promise<Array<SharedAgentView & { replica: string }>>;
}

/** One agent as the replica it is connected to sees it: enough for the publishing replica's rollout. */
export interface SharedAgentView {
  agentId: string;
  labels: Record<string, string> | undefined;
  connected: boolean;
  /** The version of this epoch it has applied. */
  applied: number | null;
  unhealthy: string | null;
  /** Its last NACK (version, and the message to halt with). */
  nack: { version: number; why: string } | null;
}

export function isReplicaStore(store: ControlPlaneStore | undefined): store is ControlPlaneStore & ReplicaStore {
  return store !== undefined && typeof (store as Partial<ReplicaStore>).lead === 'function';
}

/** A store that could not do what was asked: nothing was published. `cause` carries the system's or the database's error. */
export class StoreError extends SwitchyardError {
  constructor(
    code: 'ESTORE' | 'ESTORE_CONFLICT' | 'ESTORE_SCHEMA' | 'ESTORE_CORRUPT' | 'ESTORE_FENCED',
    message: string,
    options: { cause?: unknown; entry?: string } = {},
  ) {
    super(code, message, options);
    this.name = 'StoreError';
  }

  /** The system's or database's reason (EROFS, ENOSPC, 57P01 …), when there is one. */
  get reason(): string | undefined {
    const code = (this.cause as { code?: unknown } | undefined)?.code;
    return typeof code === 'string' ? code : undefined;
  }
}
