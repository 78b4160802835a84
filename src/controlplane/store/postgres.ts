/**
 * The PostgreSQL store (`--store postgres://…`), for control planes that
 * run as replicas over a database their operators already run. Same
 * contract as the file store: a version is committed (versions row,
 * document when due, the publication pointer, the records and the audit
 * entry, in one transaction) before any agent can see it.
 *
 * The schema is versioned (MIGRATIONS, applied in order at open under a
 * transaction-scoped advisory lock, so replicas starting together migrate
 * once); a database whose schema is newer than this version knows is
 * refused, never written. Queries are bounded in time: a database that
 * stops answering fails the write (nothing is published), it does not hang
 * the control plane.
 */
import pg from 'pg';
import { EMPTY_RECORDS, IDEMPOTENT_OUTCOMES, StoreError, type AuditEntry, type ControlPlaneStore, type Loaded, type PublicationRecords, type ReplicaStore, type SharedAgentView, type StoredVersion } from './store.js';

/** Schema migrations, in order; index + 1 is the schema version each one makes. Never edit one that shipped: add the next. */
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE sy_meta (
     id boolean PRIMARY KEY DEFAULT true CHECK (id),
     epoch text NOT NULL
   );
   CREATE TABLE sy_documents (
     digest text PRIMARY KEY,
     body text NOT NULL
   );
   CREATE TABLE sy_versions (
     epoch text NOT NULL,
     version integer NOT NULL,
     digest text NOT NULL,
     delta text,
     document boolean NOT NULL,
     source text NOT NULL,
     actor text NOT NULL,
     at timestamptz NOT NULL,
     summary jsonb NOT NULL,
     PRIMARY KEY (epoch, version)
   );
   CREATE TABLE sy_pointer (
     id boolean PRIMARY KEY DEFAULT true CHECK (id),
     epoch text NOT NULL,
     version integer NOT NULL
   );
   CREATE TABLE sy_records (
     id boolean PRIMARY KEY DEFAULT true CHECK (id),
     body jsonb NOT NULL
   );
   CREATE TABLE sy_audit (
     id bigserial PRIMARY KEY,
     at timestamptz NOT NULL,
     actor text NOT NULL,
     remote text,
     request_id text,
     action text NOT NULL,
     outcome text NOT NULL,
     version integer,
     summary jsonb NOT NULL
   );`,
  // Replicas: the publishing lease. `term` grows with every change of holder;
  // every write of a replica checks its term in the same transaction (fencing).
  `CREATE TABLE sy_lease (
     id boolean PRIMARY KEY DEFAULT true CHECK (id),
     holder text,
     advertise text,
     term bigint NOT NULL,
     expires_at timestamptz NOT NULL
   );
   INSERT INTO sy_lease (holder, advertise, term, expires_at) VALUES (NULL, NULL, 0, '-infinity');`,
  // Replicas: what each says of its agents, so the one that publishes judges
  // a rollout's stages over every agent, wherever it is connected.
  `CREATE TABLE sy_agents (
     agent_id text PRIMARY KEY,
     replica text NOT NULL,
     view jsonb NOT NULL,
     updated_at timestamptz NOT NULL DEFAULT now()
   );`,
  // Idempotent API writes: a request's digest beside its X-Request-Id, found by (actor, request id).
  `ALTER TABLE sy_audit ADD COLUMN request text;
   CREATE INDEX sy_audit_request ON sy_audit (actor, request_id) WHERE request IS NOT NULL;`,
];

/** The channel replicas are told of a new version or new records on (the payload: the version). */
export const CHANGES_CHANNEL = 'switchyard_changes';

/** Any constant: the advisory lock replicas take while migrating. */
const MIGRATION_LOCK = 0x53594d31; // "SYM1"
const CONNECT_TIMEOUT_MS = 5_000;
const QUERY_TIMEOUT_MS = 30_000;
/** A lost LISTEN connection is retried this often. */
const RELISTEN_MS = 1_000;

/** The URL without its password, for logs and status. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    // A URL the WHATWG parser refuses (postgres://user@/db?host=/run/postgresql): the password cut by hand.
    return url.replace(/^([a-z]+:\/\/[^:/@]*):[^@]*@/, '$1:***@');
  }
}

const AUDIT_COLUMNS = 'at, actor, remote, request_id, action, outcome, version, summary, request';
type AuditRow = { at: Date; actor: string; remote: string | null; request_id: string | null; action: string; outcome: string; version: number | null; summary: string[]; request: string | null };
const auditOf = (r: AuditRow): AuditEntry => ({ at: r.at.getTime(), actor: r.actor, remote: r.remote, requestId: r.request_id, action: r.action, outcome: r.outcome, version: r.version, summary: r.summary, request: r.request });

export class PostgresStore implements ControlPlaneStore, ReplicaStore {
  readonly description: string;
  private readonly pool: pg.Pool;
  private epoch = '';
  /** undefined: no replica checks (one control plane); null: not leading (writes refused); else the lease writes are made under. */
  private fence: { holder: string; term: number } | null | undefined;
  private listener: pg.Client | undefined;
  private listening = false;

  private versionOf(r: { version: number; digest: string; delta: string | null; document: boolean; source: string; actor: string; at: Date; summary: string[] }): StoredVersion {
    return {
      epoch: this.epoch,
      version: r.version,
      digest: r.digest,
      delta: r.delta === null ? null : (JSON.parse(r.delta) as StoredVersion['delta']),
      document: r.document,
      source: r.source,
      actor: r.actor,
      at: r.at.getTime(),
      summary: r.summary,
    };
  }

  constructor(
    private readonly url: string,
    onError: (err: Error) => void = () => {},
  ) {
    this.description = redactUrl(url);
    this.pool = new pg.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, query_timeout: QUERY_TIMEOUT_MS });
    // An idle client whose connection dies: told, not thrown (the next query reconnects).
    this.pool.on('error', onError);
  }

  private fail(what: string, err: unknown): never {
    if (err instanceof StoreError) throw err;
    const code = (err as { code?: string }).code;
    throw new StoreError('ESTORE', `${this.description}: ${what} failed (${(err as Error).message}${code ? `, ${code}` : ''})`, { entry: this.description, cause: err });
  }

  /** `fn` in one transaction on one connection; rolled back on any error. */
  private async transaction<T>(what: string, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      this.fail(what, err);
    }
    // A connection that dies while checked out says so on the client: the
    // query in flight fails with it, so the event itself needs no more.
    let broken: Error | undefined;
    const onError = (err: Error) => (broken = err);
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const out = await fn(client);
      await client.query('COMMIT');
      return out;
    } catch (err) {
      broken ??= await client.query('ROLLBACK').then(
        () => undefined,
        (e: Error) => e,
      );
      return this.fail(what, err);
    } finally {
      client.off('error', onError);
      // A broken connection is closed, not handed to the next writer.
      client.release(broken ?? false);
    }
  }

  async open(epoch: string): Promise<Loaded> {
    await this.transaction('migrating the schema', async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await c.query('CREATE TABLE IF NOT EXISTS sy_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
      const { rows } = await c.query<{ v: number | null }>('SELECT max(version) AS v FROM sy_schema_migrations');
      const have = rows[0]?.v ?? 0;
      if (have > MIGRATIONS.length) {
        throw new StoreError('ESTORE_SCHEMA', `${this.description}: schema version ${have} is newer than this version knows (${MIGRATIONS.length}); refusing to run against it`, { entry: this.description });
      }
      for (let v = have + 1; v <= MIGRATIONS.length; v++) {
        await c.query(MIGRATIONS[v - 1]!);
        await c.query('INSERT INTO sy_schema_migrations (version) VALUES ($1)', [v]);
      }
      await c.query('INSERT INTO sy_meta (epoch) VALUES ($1) ON CONFLICT (id) DO NOTHING', [epoch]);
      const meta = await c.query<{ epoch: string }>('SELECT epoch FROM sy_meta');
      this.epoch = meta.rows[0]!.epoch;
      await c.query('INSERT INTO sy_pointer (epoch, version) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING', [this.epoch]);
      await c.query('INSERT INTO sy_records (body) VALUES ($1) ON CONFLICT (id) DO NOTHING', [JSON.stringify(EMPTY_RECORDS)]);
    });
    try {
      const pointer = await this.pool.query<{ epoch: string; version: number }>('SELECT epoch, version FROM sy_pointer');
      const { version: current } = pointer.rows[0]!;
      const rows = await this.pool.query<{ version: number; digest: string; delta: string | null; document: boolean; source: string; actor: string; at: Date; summary: string[] }>(
        'SELECT version, digest, delta, document, source, actor, at, summary FROM sy_versions WHERE epoch = $1 AND version <= $2 ORDER BY version',
        [this.epoch, current],
      );
      const versions = rows.rows.map((r) => this.versionOf(r));
      versions.forEach((v, i) => {
        if (v.version !== i + 1) throw new StoreError('ESTORE_CORRUPT', `${this.description}: version ${i + 1} of epoch ${this.epoch} is missing`, { entry: this.description });
      });
      const records = await this.pool.query<{ body: PublicationRecords }>('SELECT body FROM sy_records');
      return { epoch: this.epoch, versions, records: { ...EMPTY_RECORDS, ...records.rows[0]!.body } };
    } catch (err) {
      this.fail('reading the store', err);
    }
  }

  /**
   * The fence: with a term set (this replica leads), a write is made only
   * if the lease is still this replica's, in that term, unexpired by the
   * database's clock — checked in the write's own transaction, so a replica
   * that lost the lease (or its connection, or its clock) cannot write
   * after another took over.
   */
  private async fenced(c: pg.PoolClient): Promise<void> {
    if (this.fence === undefined) return;
    if (this.fence === null) throw new StoreError('ESTORE_FENCED', `${this.description}: this replica does not hold the publishing lease`, { entry: this.description });
    const { rows } = await c.query('SELECT 1 FROM sy_lease WHERE holder = $1 AND term = $2 AND expires_at > now() FOR SHARE', [this.fence.holder, this.fence.term]);
    if (rows.length === 0) throw new StoreError('ESTORE_FENCED', `${this.description}: the publishing lease of term ${this.fence.term} is no longer ${this.fence.holder}'s`, { entry: this.description });
  }

  /** Tells the other replicas (at commit, in commit order). */
  private async notify(c: pg.PoolClient, version: number): Promise<void> {
    await c.query('SELECT pg_notify($1, $2)', [CHANGES_CHANNEL, String(version)]);
  }

  async commit(version: StoredVersion, document: string | undefined, records: PublicationRecords, audit: AuditEntry | undefined): Promise<void> {
    await this.transaction(`saving version ${version.version}`, async (c) => {
      await this.fenced(c);
      // The pointer row, locked: writers are serialised, and only the next version goes in.
      const { rows } = await c.query<{ epoch: string; version: number }>('SELECT epoch, version FROM sy_pointer FOR UPDATE');
      const p = rows[0]!;
      if (p.epoch !== version.epoch || p.version !== version.version - 1) {
        throw new StoreError('ESTORE_CONFLICT', `${this.description}: version ${version.version} of ${version.epoch} is not the next one (the store is at ${p.version} of ${p.epoch})`, { entry: this.description });
      }
      if (document !== undefined) await c.query('INSERT INTO sy_documents (digest, body) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING', [version.digest, document]);
      await c.query('INSERT INTO sy_versions (epoch, version, digest, delta, document, source, actor, at, summary) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)', [
        version.epoch,
        version.version,
        version.digest,
        version.delta === null ? null : JSON.stringify(version.delta),
        version.document,
        version.source,
        version.actor,
        new Date(version.at),
        JSON.stringify(version.summary),
      ]);
      await c.query('UPDATE sy_pointer SET version = $1', [version.version]);
      await c.query('UPDATE sy_records SET body = $1', [JSON.stringify(records)]);
      if (audit) await this.insertAudit(c, audit);
      await this.notify(c, version.version);
    });
  }

  private async insertAudit(c: pg.PoolClient | pg.Pool, a: AuditEntry): Promise<void> {
    await c.query('INSERT INTO sy_audit (at, actor, remote, request_id, action, outcome, version, summary, request) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)', [
      new Date(a.at),
      a.actor,
      a.remote,
      a.requestId,
      a.action,
      a.outcome,
      a.version,
      JSON.stringify(a.summary),
      a.request ?? null,
    ]);
  }

  async document(digest: string): Promise<string | undefined> {
    try {
      const { rows } = await this.pool.query<{ body: string }>('SELECT body FROM sy_documents WHERE digest = $1', [digest]);
      return rows[0]?.body;
    } catch (err) {
      this.fail(`reading document ${digest}`, err);
    }
  }

  async putDocument(digest: string, text: string): Promise<void> {
    try {
      await this.pool.query('INSERT INTO sy_documents (digest, body) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING', [digest, text]);
    } catch (err) {
      this.fail(`saving document ${digest}`, err);
    }
  }

  async putRecords(records: PublicationRecords, audit?: AuditEntry): Promise<void> {
    await this.transaction('saving the publication records', async (c) => {
      await this.fenced(c);
      await c.query('UPDATE sy_records SET body = $1', [JSON.stringify(records)]);
      if (audit) await this.insertAudit(c, audit);
      const { rows } = await c.query<{ version: number }>('SELECT version FROM sy_pointer');
      await this.notify(c, rows[0]!.version);
    });
  }

  async audit(entry: AuditEntry): Promise<void> {
    try {
      await this.insertAudit(this.pool, entry);
    } catch (err) {
      this.fail('saving an audit entry', err);
    }
  }

  async readAudit(options: { after?: number; limit?: number } = {}): Promise<AuditEntry[]> {
    try {
      const { rows } = await this.pool.query<AuditRow>(`SELECT ${AUDIT_COLUMNS} FROM sy_audit ORDER BY id OFFSET $1 LIMIT $2`, [options.after ?? 0, options.limit ?? null]);
      return rows.map(auditOf);
    } catch (err) {
      this.fail('reading the audit log', err);
    }
  }

  async findRequest(actor: string, requestId: string): Promise<AuditEntry | undefined> {
    try {
      const { rows } = await this.pool.query<AuditRow>(
        `SELECT ${AUDIT_COLUMNS} FROM sy_audit WHERE actor = $1 AND request_id = $2 AND request IS NOT NULL AND outcome = ANY($3) ORDER BY id DESC LIMIT 1`,
        [actor, requestId, [...IDEMPOTENT_OUTCOMES]],
      );
      return rows[0] ? auditOf(rows[0]) : undefined;
    } catch (err) {
      this.fail('reading the audit log', err);
    }
  }

  async lead(holder: string, advertise: string | null, ttlMs: number): Promise<{ term: number; holder: string; advertise: string | null; leading: boolean }> {
    try {
      // Renewed by its holder in its term; taken (next term) once expired.
      const taken = await this.pool.query<{ term: string }>(
        `UPDATE sy_lease SET
           term = CASE WHEN holder = $1 AND expires_at > now() THEN term ELSE term + 1 END,
           holder = $1, advertise = $2, expires_at = now() + $3 * interval '1 millisecond'
         WHERE holder = $1 OR expires_at <= now()
         RETURNING term`,
        [holder, advertise, ttlMs],
      );
      if (taken.rows.length > 0) return { term: Number(taken.rows[0]!.term), holder, advertise, leading: true };
      const { rows } = await this.pool.query<{ term: string; holder: string | null; advertise: string | null }>('SELECT term, holder, advertise FROM sy_lease');
      return { term: Number(rows[0]!.term), holder: rows[0]!.holder ?? '', advertise: rows[0]!.advertise, leading: false };
    } catch (err) {
      this.fail('renewing the publishing lease', err);
    }
  }

  /** Gives the lease up (a clean stop): another replica takes over at once, not after the TTL. */
  async release(holder: string): Promise<void> {
    await this.pool.query("UPDATE sy_lease SET expires_at = '-infinity' WHERE holder = $1", [holder]).catch(() => undefined);
  }

  threadSpec(): string {
    return this.url;
  }

  setFence(fence: { holder: string; term: number } | null): void {
    this.fence = fence;
  }

  async since(after: number): Promise<{ versions: StoredVersion[]; records: PublicationRecords }> {
    // One snapshot of the database for the three reads: records of a version committed in between would not match the versions read.
    return this.transaction('reading new versions', async (c) => {
      await c.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
      const pointer = await c.query<{ version: number }>('SELECT version FROM sy_pointer');
      const rows = await c.query<{ version: number; digest: string; delta: string | null; document: boolean; source: string; actor: string; at: Date; summary: string[] }>(
        'SELECT version, digest, delta, document, source, actor, at, summary FROM sy_versions WHERE epoch = $1 AND version > $2 AND version <= $3 ORDER BY version',
        [this.epoch, after, pointer.rows[0]!.version],
      );
      const records = await c.query<{ body: PublicationRecords }>('SELECT body FROM sy_records');
      return { versions: rows.rows.map((r) => this.versionOf(r)), records: { ...EMPTY_RECORDS, ...records.rows[0]!.body } };
    });
  }

  /**
   * Calls `onChange` whenever another replica commits (LISTEN), and once
   * after every (re)connection: notifications sent while disconnected are
   * lost, so the caller reads what it missed then. Reconnects until close().
   */
  listen(onChange: () => void, onError: (err: Error) => void): void {
    this.listening = true;
    const connect = async (): Promise<void> => {
      while (this.listening) {
        const client = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
        try {
          await client.connect();
          client.on('notification', () => onChange());
          const ended = new Promise<void>((resolve) => {
            client.on('error', (err) => {
              onError(err);
              resolve();
            });
            client.on('end', () => resolve());
          });
          await client.query(`LISTEN ${CHANGES_CHANNEL}`);
          this.listener = client;
          onChange(); // what was missed before this connection
          await ended;
        } catch (err) {
          onError(err as Error);
        }
        this.listener = undefined;
        await client.end().catch(() => undefined);
        if (this.listening) await new Promise((r) => setTimeout(r, RELISTEN_MS));
      }
    };
    void connect();
  }

  async putAgents(replica: string, views: readonly SharedAgentView[]): Promise<void> {
    if (views.length === 0) return;
    try {
      await this.pool.query(
        `INSERT INTO sy_agents (agent_id, replica, view, updated_at)
         SELECT v->>'agentId', $1, v, now() FROM jsonb_array_elements($2::jsonb) AS v
         ON CONFLICT (agent_id) DO UPDATE SET replica = EXCLUDED.replica, view = EXCLUDED.view, updated_at = now()`,
        [replica, JSON.stringify(views)],
      );
    } catch (err) {
      this.fail("saving the agents' state", err);
    }
  }

  async agents(freshMs: number): Promise<Array<SharedAgentView & { replica: string }>> {
    try {
      const { rows } = await this.pool.query<{ replica: string; view: SharedAgentView }>("SELECT replica, view FROM sy_agents WHERE updated_at > now() - $1 * interval '1 millisecond'", [freshMs]);
      return rows.map((r) => ({ ...r.view, replica: r.replica }));
    } catch (err) {
      this.fail("reading the agents' state", err);
    }
  }

  async close(): Promise<void> {
    this.listening = false;
    await this.listener?.end().catch(() => undefined);
    await this.pool.end().catch(() => undefined);
  }
}
