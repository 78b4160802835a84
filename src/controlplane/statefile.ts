/**
 * The control plane's state file: the one source of truth for the state
 * in force. It is followed (an operator's edit is proposed like any
 * change: editors replace files by rename, so the directory is watched and
 * events filtered by name) and written by the service-bindings API — and
 * that write is durable before any agent can see the change: temporary
 * file, every byte written, fsync, rename, fsync of the directory. Issue 15
 * (defect 4): the API published first and wrote afterwards; under the
 * shipped unit the write failed (a read-only /etc), the agents already ran
 * the new version, and a restart republished the old file, which they
 * refused. Now a change that cannot be saved is not published.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fsyncPath } from '../fsync.js';
import type { Logger } from 'pino';
import { SwitchyardError } from '../errors.js';
import { parseDesiredState, type DesiredState } from '../desired/state.js';

/** Where the control plane saves a change before publishing it. */
export interface DocumentStore {
  /** Saves `doc` durably, or throws (and the file holds what it held). */
  write(doc: unknown): void;
}

/**
 * A change that could not be saved, and so was not published (the API
 * answers 507 with it). `cause` is the system's error (EROFS, EACCES,
 * ENOSPC, EIO …), and its code is in the message.
 */
export class UnsavedChange extends SwitchyardError {
  constructor(message: string, entry: string | undefined, cause: unknown) {
    super('ECONTROL_PLANE', message, { ...(entry === undefined ? {} : { entry }), cause });
    this.name = 'UnsavedChange';
  }

  /** The system's reason (EROFS …), when there is one. */
  get reason(): string | undefined {
    const code = (this.cause as { code?: unknown } | undefined)?.code;
    return typeof code === 'string' ? code : undefined;
  }
}

export interface StateFileWatch {
  /** Whether a valid state has been handed on yet. */
  readonly loaded: boolean;
  /** Why the last read did not hand a state on (unreadable, not JSON, invalid), if it did not. */
  readonly error: string | undefined;
  close(): void;
}

/** All of `bytes`, or an error: write(2) may write less than asked (a filling disk writes what fits). */
function writeAll(fd: number, bytes: Buffer): void {
  for (let at = 0; at < bytes.length; ) {
    const n = fs.writeSync(fd, bytes, at, bytes.length - at);
    if (n <= 0) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
    at += n;
  }
}

export class StateFile implements DocumentStore {
  /**
   * The file's text as this process last read or wrote it. The watcher
   * hands on only text that differs: the API's own write is not proposed
   * a second time (nor parsed again: a million bindings take a second).
   */
  private known = '';

  constructor(readonly file: string) {}

  /** Follows the file: proposes it now and whenever an edit changes it; a file that does not validate is logged and the last good state stays. */
  watch(log: Logger, onState: (state: DesiredState, why: string) => void): StateFileWatch {
    let loaded = false;
    let error: string | undefined;
    const load = (why: string) => {
      let text: string;
      try {
        text = fs.readFileSync(this.file, 'utf8');
      } catch (err) {
        error = (err as Error).message;
        log.error({ err: error }, 'cannot read the state file; keeping the last good state');
        return;
      }
      if (text === this.known) return;
      let state: DesiredState;
      try {
        let doc: unknown;
        try {
          doc = JSON.parse(text);
        } catch (err) {
          throw new SwitchyardError('EINVAL_FILE', `${this.file}: ${(err as Error).message}`, { entry: this.file, cause: err });
        }
        state = parseDesiredState(doc, this.file);
      } catch (err) {
        error = (err as Error).message;
        log.error({ err: error }, 'state file refused; keeping the last good state');
        return;
      }
      this.known = text;
      loaded = true;
      error = undefined;
      onState(state, why);
    };
    load('start');
    const watcher = fs.watch(path.dirname(path.resolve(this.file)), (_event, name) => {
      if (name === path.basename(this.file)) load('file changed');
    });
    return {
      get loaded() {
        return loaded;
      },
      get error() {
        return error;
      },
      close: () => watcher.close(),
    };
  }

  /**
   * Writes `doc` so that it survives a crash before anyone is told. Throws
   * UnsavedChange naming the file and the system's reason; the file then
   * holds what it held.
   */
  write(doc: unknown): void {
    const text = `${JSON.stringify(doc, null, 2)}\n`;
    const failed = (err: unknown, extra = '') =>
      new UnsavedChange(`${this.file}: the change could not be saved (${(err as Error).message})${extra}; it was not published, the current version stays`, this.file, err);
    try {
      this.replace(text);
    } catch (err) {
      if (!(err instanceof SyncedTooLate)) throw failed(err);
      // Renamed, but the directory's fsync failed: the change is in the file
      // yet may not survive a crash, and it is not to be published. The text
      // known before is put back, so that a restart does not publish what
      // the client was told failed; if that fails too, the watcher is told
      // to leave the file alone, and the message says what it holds.
      try {
        if (this.known === '') throw new Error('nothing known to put back');
        this.replace(this.known);
      } catch {
        this.known = text;
        throw failed(err.cause, `, and putting the previous content back failed too: ${this.file} holds the unsaved change`);
      }
      throw failed(err.cause);
    }
    this.known = text;
  }

  /**
   * Temporary file, every byte, fsync, rename, fsync of the directory. The
   * file's mode and owner are kept, set on the temporary explicitly: the
   * unit's UMask=0077 would otherwise turn a 0644 file into 0600.
   */
  private replace(text: string): void {
    const dir = path.dirname(this.file);
    const temporary = path.join(dir, `.${path.basename(this.file)}.${process.pid}.tmp`);
    let mode = 0o600;
    let owner: { uid: number; gid: number } | undefined;
    try {
      const st = fs.statSync(this.file);
      mode = st.mode & 0o7777;
      owner = { uid: st.uid, gid: st.gid };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const fd = fs.openSync(temporary, 'w', mode);
    try {
      fs.fchmodSync(fd, mode);
      // Only root may give a file away; anyone else writes files it owns anyway.
      if (owner && process.getuid?.() === 0) fs.fchownSync(fd, owner.uid, owner.gid);
      writeAll(fd, Buffer.from(text, 'utf8'));
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(temporary, this.file);
    } catch (err) {
      try {
        fs.closeSync(fd);
      } catch {
        // closed already (the rename failed)
      }
      fs.rmSync(temporary, { force: true }); // its space back
      throw err;
    }
    try {
      fsyncPath(dir);
    } catch (err) {
      throw new SyncedTooLate(err);
    }
  }
}

/** The rename happened, the directory's fsync did not. */
class SyncedTooLate extends Error {
  constructor(cause: unknown) {
    super('the directory could not be synced', { cause });
  }
}
