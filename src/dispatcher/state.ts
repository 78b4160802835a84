/**
 * Where a dispatcher's state lives and who may write it.
 *
 * Everything is pinned in bpffs under <bpffs>/switchyard/<netns inode>/, so
 * the data plane outlives every process. The kernel reuses a namespace's
 * inode number as soon as the namespace is gone, so the directory name alone
 * does not say whose state it is: the pinned link does. A netns link is
 * detached when its namespace dies (its info then names inode 0), so state
 * whose link is not attached to the namespace we were pointed at is *stale*:
 * never adopted, moved aside by `load`, removed by `remove-stale`. A new state directory is built
 * under a temporary name and renamed into place (a crash leaves either no
 * dispatcher or a complete one), and writers serialise on an flock of
 * <bpffs>/switchyard.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SwitchyardError, isKernelError } from '../errors.js';
import { BpfMap, Fd, u32Key } from '../kernel/bpf.js';
import { native } from '../kernel/native.js';
import { ABI_VERSION, META, META_MAGIC } from '../trie/layout.js';
import { MAPS, MAP_NAMES, type MapName } from './maps.js';

const BPF_FS_MAGIC = 0xcafe4a11;
const NSFS_MAGIC = 0x6e736673;

export const DEFAULT_BPFFS = '/sys/fs/bpf';
export const DEFAULT_NETNS = '/proc/self/ns/net';

export interface Location {
  bpffs: string;
  netnsPath: string;
  netnsIno: number;
  /** <bpffs>/switchyard: the lock and every namespace's state. */
  base: string;
  /** <base>/<netns inode>: this namespace's pins. */
  dir: string;
}

/** The bpffs and <bpffs>/switchyard, checked, without a namespace: for what spans namespaces (remove-stale). */
export function locateBase(options: { bpffs?: string } = {}): Pick<Location, 'bpffs' | 'base'> {
  const bpffs = path.resolve(options.bpffs ?? DEFAULT_BPFFS);
  let fsType: number;
  try {
    fsType = fs.statfsSync(bpffs).type;
  } catch (err) {
    throw new SwitchyardError('EINVAL_ARGUMENT', `bpffs ${bpffs}: ${(err as Error).message}`, { entry: bpffs, cause: err });
  }
  if (fsType !== BPF_FS_MAGIC) {
    throw new SwitchyardError('EINVAL_ARGUMENT', `${bpffs} is not a bpf filesystem (mount -t bpf bpf ${bpffs})`, { entry: bpffs });
  }
  return { bpffs, base: path.join(bpffs, 'switchyard') };
}

export function locate(options: { bpffs?: string; netns?: string } = {}): Location {
  const { bpffs, base } = locateBase(options);
  const netnsPath = options.netns ?? DEFAULT_NETNS;
  let ino: number;
  try {
    if (fs.statfsSync(netnsPath).type !== NSFS_MAGIC) throw new Error('not a namespace file');
    ino = fs.statSync(netnsPath).ino;
  } catch (err) {
    throw new SwitchyardError(isKernelError(err, 'ENOENT') ? 'ENO_NETNS' : 'EINVAL_ARGUMENT', `network namespace ${netnsPath}: ${(err as Error).message}`, { entry: netnsPath, cause: err });
  }
  return { bpffs, netnsPath, netnsIno: ino, base, dir: path.join(base, String(ino)) };
}

/** An exclusive flock on <bpffs>/switchyard, held by one writer at a time. */
export class WriterLock {
  private constructor(private readonly dir: Fd) {}

  static acquire(location: Pick<Location, 'base'>): WriterLock {
    // Not recursive: the bpffs is there (locateBase checked it), and Node's
    // recursive mkdir reports a read-only bpffs as ENOENT (seen under a
    // unit whose ProtectKernelTunables= made /sys/fs/bpf read-only).
    try {
      fs.mkdirSync(location.base, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        const e = err as NodeJS.ErrnoException;
        const hint = e.code === 'EROFS' ? ' (read-only here: under systemd, a unit with ProtectKernelTunables=yes or without ReadWritePaths=/sys/fs/bpf)' : '';
        throw new SwitchyardError('EKERNEL', `cannot create ${location.base}: ${e.code}${hint}`, { entry: location.base, cause: err });
      }
    }
    const dir = new Fd(fs.openSync(location.base, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY));
    try {
      native().flock(dir.fd, true, true);
    } catch (err) {
      dir.close();
      throw err;
    }
    return new WriterLock(dir);
  }

  release(): void {
    this.dir.close(); // closing the last fd drops the flock
  }
}

export function withWriterLock<T>(location: Pick<Location, 'base'>, fn: () => T): T {
  const lock = WriterLock.acquire(location);
  try {
    return fn();
  } finally {
    lock.release();
  }
}

export function isLoaded(location: Location): boolean {
  return fs.existsSync(path.join(location.dir, 'link'));
}

/** Why the pinned link of `dir` does not serve namespace inode `ino`, or undefined when it does. */
function linkMismatch(dir: string, ino: number): string | undefined {
  let fd: number;
  try {
    fd = native().objGet(path.join(dir, 'link'));
  } catch (err) {
    if (isKernelError(err, 'ENOENT')) return 'it has no link';
    throw err;
  }
  try {
    const info = native().objInfo(fd, 'link');
    if (info.netnsIno === ino) return undefined;
    return info.netnsIno ? `its link ${info.id} is attached to namespace inode ${info.netnsIno}` : `its link ${info.id} is attached to no namespace (the one it served is gone, or it was detached)`;
  } finally {
    fs.closeSync(fd);
  }
}

/** Why this namespace's pinned state is stale (see above), or undefined when it is this namespace's own. */
export function staleReason(location: Location): string | undefined {
  return isLoaded(location) ? linkMismatch(location.dir, location.netnsIno) : undefined;
}

export function staleError(location: Location, reason: string): SwitchyardError {
  return new SwitchyardError(
    'ESTALE_STATE',
    `${location.dir} is stale: ${reason}, so it is not ${location.netnsPath}'s (namespace inodes are reused). Nothing dispatches there; \`switchyard load\` moves it aside and attaches afresh, \`switchyard remove-stale\` removes it`,
    { entry: location.dir },
  );
}

/** Renames stale state out of the namespace's way (bpffs names take no dots); returns the new path. */
export function moveStaleAside(location: Location): string {
  const aside = path.join(location.base, `stale-${location.netnsIno}-${Date.now()}`);
  fs.renameSync(location.dir, aside);
  return aside;
}

export interface StaleState {
  dir: string;
  reason: string;
}

/**
 * Every stale state under <bpffs>/switchyard: moved-aside directories, and
 * namespace directories whose link serves no live namespace of that inode.
 */
export function findStaleStates(base: string): StaleState[] {
  if (!fs.existsSync(base)) return [];
  const out: StaleState[] = [];
  for (const entry of fs.readdirSync(base).sort()) {
    const dir = path.join(base, entry);
    if (entry.startsWith('stale-')) out.push({ dir, reason: 'moved aside by load' });
    else if (/^\d+$/.test(entry)) {
      let reason: string | undefined;
      try {
        reason = linkMismatch(dir, Number(entry));
      } catch {
        continue; // its link cannot be read now: not known to be stale, so kept
      }
      if (reason) out.push({ dir, reason });
    }
  }
  return out;
}

/** Open handles on every pinned object of one namespace's dispatcher. */
export class PinnedState {
  private constructor(
    readonly location: Location,
    readonly maps: Record<MapName, BpfMap>,
    readonly program: Fd,
    readonly link: Fd,
  ) {}

  static open(location: Location): PinnedState {
    if (!isLoaded(location)) {
      throw new SwitchyardError(
        'ENOT_LOADED',
        `no dispatcher is loaded for network namespace ${location.netnsPath} (inode ${location.netnsIno}) in ${location.bpffs}; run \`switchyard load\``,
      );
    }
    const opened: Fd[] = [];
    try {
      // The stamp before the maps: another ABI's maps need not have our shapes (load migrates them).
      const abi = pinnedAbi(location.dir);
      if (abi !== undefined && abi !== ABI_VERSION) throw abiError(location, abi);
      const maps = {} as Record<MapName, BpfMap>;
      for (const name of MAP_NAMES) {
        maps[name] = BpfMap.open(path.join(location.dir, name), MAPS[name]);
        opened.push(maps[name]);
      }
      checkMeta(maps.meta, location);
      const program = new Fd(native().objGet(path.join(location.dir, 'program')));
      opened.push(program);
      const link = new Fd(native().objGet(path.join(location.dir, 'link')));
      opened.push(link);
      const netnsIno = native().objInfo(link.fd, 'link').netnsIno;
      if (netnsIno !== location.netnsIno) throw staleError(location, linkMismatch(location.dir, location.netnsIno) ?? 'its link moved');
      return new PinnedState(location, maps, program, link);
    } catch (err) {
      for (const fd of opened) fd.close();
      if (isKernelError(err, 'ENOENT')) {
        throw new SwitchyardError('EINCOMPATIBLE_STATE', `${location.dir} is incomplete (${err.message}); run \`switchyard unload\` and \`switchyard load\``, { cause: err });
      }
      throw err;
    }
  }

  close(): void {
    for (const map of Object.values(this.maps)) map.close();
    this.program.close();
    this.link.close();
  }
}

export function metaValue(): Buffer {
  const b = Buffer.alloc(META.size);
  b.writeUInt32LE(META_MAGIC, META.magic);
  b.writeUInt32LE(ABI_VERSION, META.abiVersion);
  return b;
}

/** The ABI stamped in a state directory's meta, or undefined when there is no readable stamp. */
export function pinnedAbi(dir: string): number | undefined {
  let fd: number;
  try {
    fd = native().objGet(path.join(dir, 'meta'));
  } catch (err) {
    if (isKernelError(err, 'ENOENT')) return undefined;
    throw err;
  }
  try {
    const info = native().objInfo(fd, 'map');
    if (info.keySize !== 4 || info.valueSize < META.size) return undefined;
    const value = Buffer.alloc(info.valueSize);
    if (!native().mapLookup(fd, u32Key(0), value)) return undefined;
    return value.readUInt32LE(META.magic) === META_MAGIC ? value.readUInt32LE(META.abiVersion) : undefined;
  } finally {
    fs.closeSync(fd);
  }
}

function checkMeta(meta: BpfMap, location: Location): void {
  const value = Buffer.alloc(META.size);
  meta.lookup(Buffer.alloc(4), value);
  const magic = value.readUInt32LE(META.magic);
  const abi = value.readUInt32LE(META.abiVersion);
  if (magic !== META_MAGIC || abi !== ABI_VERSION) throw abiError(location, magic === META_MAGIC ? abi : undefined);
}

function abiError(location: Location, abi: number | undefined): SwitchyardError {
  return new SwitchyardError(
    'EINCOMPATIBLE_STATE',
    `${location.dir} holds dispatcher state of ABI ${abi ?? 'unknown'}; this version speaks ABI ${ABI_VERSION}` +
      (abi !== undefined ? '; `switchyard load` (or the agent starting) migrates it, bindings and sockets kept' : ''),
  );
}

/** Unlinks every pin in a state directory and the directory itself. */
export function removeStateDir(dir: string): void {
  if (!fs.existsSync(dir)) return;
  for (const entry of fs.readdirSync(dir)) fs.unlinkSync(path.join(dir, entry));
  fs.rmdirSync(dir);
}

/**
 * Temporary directories of writers that died before their rename. Their pins
 * hold maps and maybe a link; removing them detaches nothing that serves.
 */
export function removeAbandonedTemps(location: Location): void {
  if (!fs.existsSync(location.base)) return;
  for (const entry of fs.readdirSync(location.base)) {
    const m = /^tmp-(\d+)-(\d+)$/.exec(entry);
    if (!m || pidAlive(Number(m[2]))) continue;
    removeStateDir(path.join(location.base, entry));
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function tempDirFor(location: Location): string {
  // bpffs refuses names with a dot.
  return path.join(location.base, `tmp-${location.netnsIno}-${process.pid}`);
}
