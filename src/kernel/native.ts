/**
 * The only module that loads the native addon (native/src). Everything the
 * addon exposes is declared here as plain functions over fds, numbers and
 * Buffers; all policy lives in TypeScript. Failures are Errors with Node's
 * shape: code ('ENOENT'), errno (negative), syscall.
 */
import { createRequire } from 'node:module';
import { projectPath } from '../paths.js';

export interface MapInfo {
  type: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}
export interface ProgInfo {
  type: number;
  id: number;
  name: string;
  loadTime: bigint;
  jited: boolean;
  /** The kernel's tag (hex) of the instructions as loaded, map references zeroed: the same code has the same tag whatever its maps. */
  tag: string;
  /** Cumulative ns spent in the program, counted only while BPF stats are enabled (enableStats). */
  runTimeNs: bigint;
  /** Cumulative runs, counted like runTimeNs. */
  runCnt: bigint;
}
export interface LinkInfo {
  type: number;
  id: number;
  progId: number;
  netnsIno?: number;
  attachType?: number;
}
export interface SocketInfo {
  domain: number;
  type: number;
  protocol: number;
  listening: boolean;
  connected: boolean;
  reuseport: boolean;
  v6only?: boolean;
  address: string;
  port: number;
  cookie: bigint;
  netnsIno: number;
}
export interface TestRunResult {
  retval: number;
  duration: number;
  ctx: Buffer;
}

export interface Native {
  /** `innerMaps` gives the inner template (a map fd) of each map-of-maps the object creates. */
  loadObject(
    path: string,
    reuse: Record<string, number>,
    innerMaps?: Record<string, number>,
  ): { maps: Record<string, number>; programs: Record<string, number> };
  mapCreate(type: number, keySize: number, valueSize: number, maxEntries: number, flags: number, name: string, innerMapFd?: number): number;
  objPin(fd: number, path: string): void;
  objGet(path: string): number;
  getFdById(id: number, kind: 'map' | 'prog' | 'link'): number;
  /** Every BPF link's id on the machine (needs CAP_SYS_ADMIN: EPERM without). */
  linkIds(): number[];
  /** Ids of the programs attached to `targetFd` (a netns fd, say) for `attachType` (BPF_PROG_QUERY; CAP_NET_ADMIN suffices). */
  progQuery(targetFd: number, attachType: number): number[];
  objInfo(fd: number, kind: 'map'): MapInfo;
  objInfo(fd: number, kind: 'prog'): ProgInfo;
  objInfo(fd: number, kind: 'link'): LinkInfo;
  mapLookup(fd: number, key: Buffer, value: Buffer): boolean;
  mapUpdate(fd: number, key: Buffer, value: Buffer, flags?: number): void;
  mapDelete(fd: number, key: Buffer): boolean;
  mapLookupBatch(fd: number, inToken: Buffer | null, outToken: Buffer, keys: Buffer, values: Buffer, count: number): { count: number; done: boolean };
  mapUpdateBatch(fd: number, keys: Buffer, values: Buffer, count: number, flags?: number): number;
  mmap(fd: number, length: number, writable: boolean): ArrayBuffer;
  unmap(buffer: ArrayBuffer): void;
  linkCreateSkLookup(progFd: number, netnsFd: number): number;
  linkUpdate(linkFd: number, progFd: number): void;
  progTestRun(progFd: number, ctx: Buffer, repeat: number): TestRunResult;
  /** BPF_ENABLE_STATS (run time): programs' runTimeNs/runCnt count while the returned fd is open; close it to restore the previous setting. */
  enableStats(): number;
  pidfdOpen(pid: number): number;
  pidfdGetfd(pidfd: number, targetFd: number): number;
  socketInfo(fd: number): SocketInfo;
  flock(fd: number, exclusive: boolean, wait: boolean): boolean;
  /** Swaps two paths in one step (renameat2 RENAME_EXCHANGE). */
  renameExchange(a: string, b: string): void;
  /** One datagram to the notification socket ($NOTIFY_SOCKET; "@…" abstract). */
  sdNotify(socketPath: string, message: string): void;
  /** posix_spawnp with pipes for stdin (unless `stdinFd` >= 0), stdout (unless `stdoutFd` >= 0) and stderr; the parent's ends, close-on-exec. */
  spawn(argv: readonly string[], env: readonly string[], stdoutFd: number, stdinFd?: number): { pid: number; stdin: number; stdout: number; stderr: number };
  /** null while the child runs; its exit (reaped) once it has. */
  waitPid(pid: number): { code: number; signal: number } | null;
  /** The peer of a Unix socket, as it was when it connected (SO_PEERCRED). */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** One request (to the first newline or EOF, at most maxBytes) and the descriptors passed with it (SCM_RIGHTS). */
  receiveRequest(fd: number, maxBytes: number, timeoutMs: number): Promise<{ data: Buffer; fds: number[] }>;
  /** Client side: connect to a Unix socket, send `request` (with `fds`), read the reply to EOF. Synchronous. */
  unixRequest(path: string, request: Buffer, fds: readonly number[], timeoutMs: number): Buffer;
}

function load(): Native {
  // Built in place by `npm run build:native`.
  const file = projectPath('native/build/Release/switchyard.node');
  try {
    return createRequire(import.meta.url)(file) as Native;
  } catch (err) {
    throw new Error(
      `switchyard: cannot load the native addon (${(err as Error).message}). ` +
        'Build it with `npm run build:native` (needs libbpf-dev and a C++ toolchain).',
      { cause: err },
    );
  }
}

let instance: Native | undefined;

/** The addon, loaded on first use so unit tests that never touch the kernel run anywhere. */
export function native(): Native {
  instance ??= load();
  return instance;
}
