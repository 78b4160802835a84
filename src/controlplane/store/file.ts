/**
 * The embedded store: one directory, no outside service.
 *
 *   store.json       {"format": 1, "epoch": "…"}: written once; a newer format is refused
 *   versions.jsonl   one line per version, appended and fsynced
 *   documents/       sha256-<hex>.json: whole states, content-addressed by digest
 *   records.json     the publication records (held, refused, rollout), replaced whole
 *   audit.jsonl      one line per audited action, appended and fsynced
 *   lock             flock'd by the one process using the store
 *
 * A version's document is renamed into place (and the directory synced)
 * before its line is appended, and the line is fsynced before commit()
 * returns: a crash leaves either no line (the version was never
 * published) or a complete one whose document exists. A torn last line
 * (a crash inside the append) is dropped at open. Files are 0600 in a 0700
 * directory: they hold the whole binding set.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fsyncPath } from '../../fsync.js';
import { native } from '../../kernel/native.js';
import { EMPTY_RECORDS, IDEMPOTENT_OUTCOMES, StoreError, type AuditEntry, type ControlPlaneStore, type Loaded, type PublicationRecords, type StoredVersion } from './store.js';

export const FILE_STORE_FORMAT = 1;

/** Temporary file, every byte, fsync, rename, fsync of the directory. */
function replaceFile(file: string, text: string): void {
  const temporary = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(temporary, 'w', 0o600);
  try {
    fs.writeFileSync(fd, text);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(temporary, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(temporary, file);
  fsyncPath(path.dirname(file));
}

/** Appends whole lines and fsyncs them. */
function appendLines(file: string, lines: string[]): void {
  const fd = fs.openSync(file, 'a', 0o600);
  try {
    fs.writeFileSync(fd, lines.map((l) => `${l}\n`).join(''));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The complete lines of a JSON-lines file, parsed; a torn last line is cut off the file. */
function readLines<T>(file: string): T[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const end = text.lastIndexOf('\n') + 1;
  if (end < text.length) fs.truncateSync(file, Buffer.byteLength(text.slice(0, end)));
  const out: T[] = [];
  const lines = text.slice(0, end).split('\n');
  lines.pop();
  lines.forEach((line, i) => {
    try {
      out.push(JSON.parse(line) as T);
    } catch (err) {
      throw new StoreError('ESTORE_CORRUPT', `${file}: line ${i + 1} is not JSON (${(err as Error).message})`, { entry: file, cause: err });
    }
  });
  return out;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;
/** A digest's file name (no colon in names). */
const documentName = (digest: string) => `${digest.replace(':', '-')}.json`;

export class FileStore implements ControlPlaneStore {
  readonly description: string;
  private lock: number | undefined;
  private next = 1;
  private epoch = '';

  constructor(readonly dir: string) {
    this.description = `file:${path.resolve(dir)}`;
  }

  private file(name: string): string {
    return path.join(this.dir, name);
  }

  /** Runs `fn`, turning a system error into StoreError naming the store and the reason. */
  private io<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError('ESTORE', `${this.dir}: ${what} failed (${(err as Error).message})`, { entry: this.dir, cause: err });
    }
  }

  async open(epoch: string): Promise<Loaded> {
    return this.io('opening the store', () => {
      fs.mkdirSync(path.join(this.dir, 'documents'), { recursive: true, mode: 0o700 });
      const lockFd = fs.openSync(this.file('lock'), 'a', 0o600);
      if (!native().flock(lockFd, true, false)) {
        fs.closeSync(lockFd);
        throw new StoreError('ESTORE', `${this.dir}: another control plane uses this store (its lock is held)`, { entry: this.dir });
      }
      this.lock = lockFd;
      let meta: { format?: unknown; epoch?: unknown };
      try {
        meta = JSON.parse(fs.readFileSync(this.file('store.json'), 'utf8')) as typeof meta;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StoreError('ESTORE_CORRUPT', `${this.file('store.json')}: ${(err as Error).message}`, { entry: this.file('store.json'), cause: err });
        meta = { format: FILE_STORE_FORMAT, epoch };
        replaceFile(this.file('store.json'), `${JSON.stringify(meta)}\n`);
      }
      if (typeof meta.format !== 'number' || meta.format > FILE_STORE_FORMAT) {
        throw new StoreError('ESTORE_SCHEMA', `${this.dir}: store format ${String(meta.format)} is newer than this version understands (${FILE_STORE_FORMAT}); refusing to run against it`, { entry: this.dir });
      }
      if (typeof meta.epoch !== 'string' || meta.epoch === '') throw new StoreError('ESTORE_CORRUPT', `${this.file('store.json')}: no epoch`, { entry: this.file('store.json') });
      this.epoch = meta.epoch;
      const versions = readLines<StoredVersion>(this.file('versions.jsonl'));
      versions.forEach((v, i) => {
        if (v.version !== i + 1 || v.epoch !== this.epoch || !DIGEST.test(v.digest)) {
          throw new StoreError('ESTORE_CORRUPT', `${this.file('versions.jsonl')}: line ${i + 1} is not version ${i + 1} of epoch ${this.epoch}`, { entry: this.file('versions.jsonl') });
        }
      });
      this.next = versions.length + 1;
      let records: PublicationRecords = EMPTY_RECORDS;
      try {
        records = { ...EMPTY_RECORDS, ...(JSON.parse(fs.readFileSync(this.file('records.json'), 'utf8')) as PublicationRecords) };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StoreError('ESTORE_CORRUPT', `${this.file('records.json')}: ${(err as Error).message}`, { entry: this.file('records.json'), cause: err });
      }
      return { epoch: this.epoch, versions, records };
    });
  }

  async commit(version: StoredVersion, document: string | undefined, records: PublicationRecords, audit: AuditEntry | undefined): Promise<void> {
    if (version.version !== this.next || version.epoch !== this.epoch) {
      throw new StoreError('ESTORE_CONFLICT', `${this.dir}: version ${version.version} of ${version.epoch} is not the next one (${this.next} of ${this.epoch})`, { entry: this.dir });
    }
    this.io(`saving version ${version.version}`, () => {
      if (document !== undefined) this.writeDocument(version.digest, document);
      appendLines(this.file('versions.jsonl'), [JSON.stringify(version)]);
    });
    this.next++;
    // The version is durable from here on: records and audit follow it (a
    // crash between them loses a status line, never a version).
    await this.putRecords(records, audit);
  }

  private writeDocument(digest: string, text: string): void {
    if (!DIGEST.test(digest)) throw new StoreError('ESTORE', `not a digest: ${JSON.stringify(digest)}`);
    const file = path.join(this.dir, 'documents', documentName(digest));
    if (fs.existsSync(file)) return; // content-addressed: the same content is there already
    replaceFile(file, text);
  }

  async document(digest: string): Promise<string | undefined> {
    if (!DIGEST.test(digest)) return undefined;
    try {
      return fs.readFileSync(path.join(this.dir, 'documents', documentName(digest)), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new StoreError('ESTORE', `${this.dir}: reading document ${digest} failed (${(err as Error).message})`, { entry: this.dir, cause: err });
    }
  }

  async putDocument(digest: string, text: string): Promise<void> {
    this.io(`saving document ${digest}`, () => this.writeDocument(digest, text));
  }

  async putRecords(records: PublicationRecords, audit?: AuditEntry): Promise<void> {
    this.io('saving the publication records', () => {
      replaceFile(this.file('records.json'), `${JSON.stringify(records)}\n`);
      if (audit) appendLines(this.file('audit.jsonl'), [JSON.stringify(audit)]);
    });
    if (audit) this.indexRequest(audit);
  }

  async audit(entry: AuditEntry): Promise<void> {
    this.io('saving an audit entry', () => appendLines(this.file('audit.jsonl'), [JSON.stringify(entry)]));
    this.indexRequest(entry);
  }

  /** Requests by (actor, X-Request-Id), read from the audit log once, then kept up to date as entries are appended. */
  private requests: Map<string, AuditEntry> | undefined;

  private indexRequest(entry: AuditEntry): void {
    if (this.requests && entry.requestId && entry.request && IDEMPOTENT_OUTCOMES.has(entry.outcome)) this.requests.set(`${entry.actor}\u0000${entry.requestId}`, entry);
  }

  async findRequest(actor: string, requestId: string): Promise<AuditEntry | undefined> {
    if (!this.requests) {
      const all = this.io('reading the audit log', () => readLines<AuditEntry>(this.file('audit.jsonl')));
      this.requests = new Map();
      for (const entry of all) this.indexRequest(entry);
    }
    return this.requests.get(`${actor}\u0000${requestId}`);
  }

  async readAudit(options: { after?: number; limit?: number } = {}): Promise<AuditEntry[]> {
    const all = this.io('reading the audit log', () => readLines<AuditEntry>(this.file('audit.jsonl')));
    const from = options.after ?? 0;
    return all.slice(from, options.limit === undefined ? undefined : from + options.limit);
  }

  async close(): Promise<void> {
    if (this.lock !== undefined) fs.closeSync(this.lock); // closing the fd drops the flock
    this.lock = undefined;
  }
}
