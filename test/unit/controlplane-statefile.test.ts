/**
 * The control plane's state file (issue 15, defect 4): what the API
 * changes is durable before it is published — temporary file, fsync,
 * rename, fsync of the directory — with the file's mode kept, and a write
 * that fails leaves the file as it was and says why (the system's code).
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StateFile, UnsavedChange } from '../../src/controlplane/statefile.js';

const DOC = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: { cdn: { tcp: [443] } } };
const NEXT = { ...DOC, bindings: [...DOC.bindings, { label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 }] };
const silent = { error: () => {} } as unknown as Parameters<StateFile['watch']>[0];

describe('StateFile', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-statefile-'));
    file = path.join(dir, 'desired.json');
    fs.writeFileSync(file, JSON.stringify(DOC));
  });
  afterEach(() => {
    vi.restoreAllMocks();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const errno = (code: string, syscall: string) => Object.assign(new Error(`${code}: injected, ${syscall}`), { code, syscall });
  const failure = (fn: () => void): UnsavedChange => {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(UnsavedChange);
      return err as UnsavedChange;
    }
    throw new Error('it did not fail');
  };

  it('writes durably: every byte to a temporary file, fsync, rename, then fsync of the directory', () => {
    const calls: string[] = [];
    const fsync = fs.fsyncSync;
    const rename = fs.renameSync;
    const open = fs.openSync;
    const fds = new Map<number, string>();
    vi.spyOn(fs, 'openSync').mockImplementation(((p: fs.PathLike, ...rest: unknown[]) => {
      const fd = (open as (...a: unknown[]) => number)(p, ...rest);
      fds.set(fd, String(p));
      return fd;
    }) as typeof fs.openSync);
    vi.spyOn(fs, 'fsyncSync').mockImplementation((fd: number) => {
      calls.push(`fsync ${path.basename(fds.get(fd) ?? '?')}`);
      fsync(fd);
    });
    vi.spyOn(fs, 'renameSync').mockImplementation((from: fs.PathLike, to: fs.PathLike) => {
      calls.push(`rename ${path.basename(String(from))} ${path.basename(String(to))}`);
      rename(from, to);
    });
    new StateFile(file).write(NEXT);
    const temporary = `.desired.json.${process.pid}.tmp`;
    expect(calls).toEqual([`fsync ${temporary}`, `rename ${temporary} desired.json`, `fsync ${path.basename(dir)}`]);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual(NEXT);
    expect(fs.readdirSync(dir)).toEqual(['desired.json']);
  });

  it('keeps the file’s mode whatever the umask (the unit’s UMask=0077 made a 0644 file 0600)', () => {
    for (const mode of [0o644, 0o600, 0o640]) {
      fs.chmodSync(file, mode);
      const umask = process.umask(0o077);
      try {
        new StateFile(file).write(NEXT);
      } finally {
        process.umask(umask);
      }
      expect(fs.statSync(file).mode & 0o777, mode.toString(8)).toBe(mode);
    }
  });

  it('a file it cannot make (EROFS), a write that fails (ENOSPC), a directory gone: the file as it was, the reason named', () => {
    const before = fs.readFileSync(file, 'utf8');
    const open = fs.openSync;
    const readOnly = vi.spyOn(fs, 'openSync').mockImplementation(((p: fs.PathLike, ...rest: unknown[]) => {
      if (String(p).endsWith('.tmp')) throw errno('EROFS', 'open');
      return (open as (...a: unknown[]) => number)(p, ...rest);
    }) as typeof fs.openSync);
    const erofs = failure(() => new StateFile(file).write(NEXT));
    expect(erofs.reason).toBe('EROFS');
    expect(erofs.code).toBe('ECONTROL_PLANE');
    expect(erofs.entry).toBe(file);
    expect(erofs.message).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: the change could not be saved \\(EROFS: .*\\); it was not published, the current version stays$`));
    readOnly.mockRestore();

    const write = fs.writeSync;
    let n = 0;
    // The disk fills after the first piece: a short write, then ENOSPC.
    vi.spyOn(fs, 'writeSync').mockImplementation(((fd: number, buffer: Buffer, offset: number, length: number) => {
      if (n++ === 0) return (write as (...a: unknown[]) => number)(fd, buffer, offset, Math.min(length, 10));
      throw errno('ENOSPC', 'write');
    }) as typeof fs.writeSync);
    expect(failure(() => new StateFile(file).write(NEXT)).reason).toBe('ENOSPC');
    vi.restoreAllMocks();
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
    expect(fs.readdirSync(dir)).toEqual(['desired.json']); // no temporary left behind

    fs.rmSync(dir, { recursive: true, force: true });
    expect(failure(() => new StateFile(file).write(NEXT)).reason).toBe('ENOENT');
  });

  it('renamed but the directory not synced: the text known before is put back, and the write fails', () => {
    const before = fs.readFileSync(file, 'utf8');
    const stateFile = new StateFile(file);
    const watch = stateFile.watch(silent, () => {}); // reads the file: its text is what is known
    watch.close();
    const fsync = fs.fsyncSync;
    let failed = false;
    vi.spyOn(fs, 'fsyncSync').mockImplementation((fd: number) => {
      if (!failed && fs.fstatSync(fd).isDirectory()) {
        failed = true;
        throw errno('EIO', 'fsync');
      }
      fsync(fd);
    });
    expect(failure(() => stateFile.write(NEXT)).reason).toBe('EIO');
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
  });

  it('its own write is not handed on again by its watcher; an edit is', async () => {
    const stateFile = new StateFile(file);
    const seen: string[] = [];
    const watch = stateFile.watch(silent, (state, why) => seen.push(`${why} ${state.bindings.count}`));
    try {
      stateFile.write(NEXT);
      // Written after the API's write: once this is seen, the one before it was too.
      fs.writeFileSync(file, JSON.stringify({ ...DOC, bindings: [] }));
      for (let t = 0; t < 5000 && seen.length < 2; t += 20) await new Promise((r) => setTimeout(r, 20));
      expect(seen).toEqual(['start 1', 'file changed 0']);
    } finally {
      watch.close();
    }
  });
});
