/**
 * The agent's state directory (root only, 0700): the last known good state
 * and the apply marker. The last known good state is a snapshot file plus a
 * log of the deltas acknowledged since (rewriting 100,000 bindings for every
 * one-binding change cost a quarter of a second). The snapshot and the
 * marker are written atomically (temporary file, fsync, rename, fsync of the
 * directory), so a crash at any instruction leaves the old file or the new
 * one; a delta is appended and fdatasync'ed before its ACK, and a torn last
 * line (a crash mid-append, never acknowledged) is ignored on reading.
 *
 * The marker is written before a version is applied and removed once it is
 * acknowledged: an agent that finds it at start died applying that version,
 * refuses it from then on, and says so in its hello. (A version that kills
 * the agent must not be retried in a crash loop across the fleet.)
 */
import fs from 'node:fs';
import path from 'node:path';
import { SwitchyardError } from '../errors.js';
import type { StateId } from '../protocol/messages.js';
import type { BindingKey } from '../protocol/state.js';

export interface LastKnownGood extends StateId {
  /** The desired-state document as applied (validated again when read). */
  state: unknown;
  /** When it was acknowledged (ms since the epoch). */
  acked_at: number;
}

/** A delta acknowledged on top of the snapshot (or of the delta before it). */
export interface DeltaRecord extends StateId {
  from_version: number;
  add: unknown[];
  remove: BindingKey[];
  acked_at: number;
}

export interface ApplyMarker {
  epoch: string;
  version: number;
  started_at: number;
}

const LKG = 'last-known-good.json';
const DELTAS = 'deltas.jsonl';
const MARKER = 'applying.json';
const REFUSED = 'refused.json';

/**
 * All of `data`, or an error: write(2) may write less than asked (a disk
 * filling up writes what fits and says how much), and a short write taken
 * for a whole one left a truncated file renamed into place.
 */
function writeAll(fd: number, data: string): void {
  const bytes = Buffer.from(data, 'utf8');
  for (let at = 0; at < bytes.length; ) {
    const n = fs.writeSync(fd, bytes, at, bytes.length - at);
    if (n <= 0) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
    at += n;
  }
}

/** Writes `data` to `file` so that a crash leaves the old content or the new (temporary file, fsync, rename, fsync of the directory). */
export function writeAtomic(file: string, data: string, mode = 0o600): void {
  const dir = path.dirname(file);
  const temporary = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(temporary, 'w', mode);
  try {
    writeAll(fd, data);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(temporary, { force: true }); // its space back
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(temporary, file);
  const dirFd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}

/**
 * writeAtomic off the event loop: the writes and syncs run on libuv's
 * threads, and the text is encoded a slice at a time (a million bindings'
 * snapshot is tens of megabytes: encoded and written whole, and synced, it
 * held the agent's event loop for a large part of a second).
 */
export async function writeAtomicAsync(file: string, data: string | ReadonlyArray<string | Uint8Array>, mode = 0o600): Promise<void> {
  const dir = path.dirname(file);
  const temporary = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const handle = await fs.promises.open(temporary, 'w', mode);
  try {
    for (const part of typeof data === 'string' ? [data] : data) await writeAllAsync(handle, part);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await fs.promises.rm(temporary, { force: true }); // its space back
    throw err;
  }
  await handle.close();
  await fs.promises.rename(temporary, file);
  const dirHandle = await fs.promises.open(dir, 'r');
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}

/** Encoded and written this much at a time. */
const SLICE_CHARS = 1 << 20;

async function writeAllAsync(handle: fs.promises.FileHandle, data: string | Uint8Array): Promise<void> {
  if (typeof data !== 'string') return writeBytes(handle, data);
  let from = 0;
  while (from < data.length) {
    // A slice never ends between the two halves of a surrogate pair.
    let to = Math.min(data.length, from + SLICE_CHARS);
    if (to < data.length && /[\ud800-\udbff]/.test(data[to - 1]!)) to--;
    await writeBytes(handle, Buffer.from(data.slice(from, to), 'utf8'));
    from = to;
  }
}

async function writeBytes(handle: fs.promises.FileHandle, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length; ) {
    const { bytesWritten } = await handle.write(bytes, at, bytes.length - at);
    if (bytesWritten <= 0) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
    at += bytesWritten;
  }
}

/**
 * A JSON text on one line: line breaks outside strings (JSON strings cannot
 * hold raw ones) become spaces. The delta log is one record a line; a
 * frame pretty-printed by its sender would otherwise end the log there at
 * the next read, and lose that delta and every one after it.
 */
function oneLine(json: string | Uint8Array): string | Uint8Array {
  if (typeof json === 'string') return /[\r\n]/.test(json) ? json.replace(/[\r\n]/g, ' ') : json;
  if (!json.includes(0x0a) && !json.includes(0x0d)) return json;
  const copy = Uint8Array.from(json);
  for (let i = 0; i < copy.length; i++) if (copy[i] === 0x0a || copy[i] === 0x0d) copy[i] = 0x20;
  return copy;
}

export class StateStore {
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const mode = fs.statSync(dir).mode & 0o777;
    if (mode & 0o077) {
      throw new SwitchyardError('EINVAL_ARGUMENT', `state directory ${dir} is mode ${mode.toString(8)}: it must be readable by its owner only (0700)`, { entry: dir });
    }
  }

  private read<T>(name: string): T | undefined {
    const file = path.join(this.dir, name);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      return JSON.parse(text) as T;
    } catch (err) {
      throw new SwitchyardError('EINVAL_FILE', `${file}: not JSON (${(err as Error).message}); the state directory was changed by hand?`, { entry: file, cause: err });
    }
  }

  /** The snapshot part of the last known good state (the deltas on top: `deltas()`). */
  lastKnownGood(): LastKnownGood | undefined {
    const file = this.read<{ acked_at: number; snapshot?: { epoch: string; version: number; digest: string; state: unknown } } & Partial<LastKnownGood>>(LKG);
    if (!file) return undefined;
    const s = file.snapshot ?? file; // the snapshot frame as received (or, from older agents, the fields themselves)
    return { epoch: s.epoch!, version: s.version!, digest: s.digest!, state: s.state, acked_at: file.acked_at };
  }

  /** A new snapshot, from the state (serialised here). */
  saveLastKnownGood(lkg: LastKnownGood): Promise<void> {
    return this.saveSnapshotFrame(JSON.stringify({ type: 'snapshot', epoch: lkg.epoch, version: lkg.version, digest: lkg.digest, state: lkg.state }), lkg.acked_at);
  }

  /**
   * A new snapshot: the snapshot frame's text as received (already
   * validated; stored as is rather than serialised again). The delta log is
   * emptied after the snapshot is durable (a crash in between leaves deltas
   * that no longer chain onto it: skipped).
   */
  async saveSnapshotFrame(frameText: string | Uint8Array, ackedAt: number): Promise<void> {
    await writeAtomicAsync(path.join(this.dir, LKG), [`{"acked_at":${JSON.stringify(ackedAt)},"snapshot":`, frameText, '}']);
    // Emptied, not removed: the next delta appends without creating a file.
    await fs.promises.writeFile(path.join(this.dir, DELTAS), '', { mode: 0o600 });
  }

  /**
   * Appends an acknowledged delta durably (before its ACK goes out): the
   * delta frame's text as received (already validated), stored as is rather
   * than serialised again — one line, `{"acked_at":…,"delta":<frame>}`.
   */
  async appendDeltaFrame(frameText: string | Uint8Array, ackedAt: number): Promise<void> {
    const handle = await fs.promises.open(path.join(this.dir, DELTAS), 'a', 0o600);
    const size = (await handle.stat()).size;
    try {
      for (const part of [`{"acked_at":${JSON.stringify(ackedAt)},"delta":`, oneLine(frameText), '}\n']) await writeAllAsync(handle, part);
      await handle.datasync();
    } catch (err) {
      // No torn line left behind for the next append to bury mid-file.
      await handle.truncate(size);
      throw err;
    } finally {
      await handle.close();
    }
  }

  /** The deltas logged since the snapshot, in order; a torn last line (never acknowledged) ends the list. */
  deltas(): DeltaRecord[] {
    let text: string;
    try {
      text = fs.readFileSync(path.join(this.dir, DELTAS), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const records: DeltaRecord[] = [];
    for (const line of text.split('\n')) {
      if (line === '') continue;
      let value: { acked_at: number; delta?: Omit<DeltaRecord, 'acked_at'> } & Partial<DeltaRecord>;
      try {
        value = JSON.parse(line) as typeof value;
      } catch {
        break;
      }
      // The delta frame as received (or, from older agents, the record's fields themselves).
      const d = value.delta ?? value;
      records.push({ epoch: d.epoch!, version: d.version!, digest: d.digest!, from_version: d.from_version!, add: d.add!, remove: d.remove!, acked_at: value.acked_at });
    }
    return records;
  }

  /** Before applying a version. */
  markApplying(marker: ApplyMarker): void {
    writeAtomic(path.join(this.dir, MARKER), JSON.stringify(marker));
  }

  /** After the version is acknowledged (or refused cleanly). */
  clearApplying(): void {
    fs.rmSync(path.join(this.dir, MARKER), { force: true });
  }

  /**
   * At start: a marker left behind means the agent died applying that
   * version; it is recorded as refused (and the marker cleared) so it is
   * never applied again. Returns the refused version, if any.
   */
  recoverFromCrash(): { epoch: string; version: number } | undefined {
    const marker = this.read<ApplyMarker>(MARKER);
    if (marker) {
      writeAtomic(path.join(this.dir, REFUSED), JSON.stringify({ epoch: marker.epoch, version: marker.version }));
      this.clearApplying();
    }
    return this.refused();
  }

  refused(): { epoch: string; version: number } | undefined {
    return this.read<{ epoch: string; version: number }>(REFUSED);
  }

  isRefused(epoch: string, version: number): boolean {
    const r = this.refused();
    return r !== undefined && r.epoch === epoch && r.version === version;
  }
}
