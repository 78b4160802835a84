/**
 * The only module that loads the native addon (native/src). Everything the
 * addon exposes is declared here as plain functions over fds, numbers and
 * Buffers; all policy lives in TypeScript. Failures are Errors with Node's
 * shape: code ('ENOENT'), errno (negative), syscall.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

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
  mapGetFdById(id: number): number;
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
  pidfdOpen(pid: number): number;
  pidfdGetfd(pidfd: number, targetFd: number): number;
  socketInfo(fd: number): SocketInfo;
  flock(fd: number, exclusive: boolean, wait: boolean): boolean;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// src/kernel (tests, via vitest) and dist/src/kernel (built) both reach the
// repository root; the addon is built in place by `npm run build:native`.
const candidates = [
  path.resolve(here, '../../native/build/Release/switchyard.node'),
  path.resolve(here, '../../../native/build/Release/switchyard.node'),
];

function load(): Native {
  const require = createRequire(import.meta.url);
  let lastError: unknown;
  for (const file of candidates) {
    try {
      return require(file) as Native;
    } catch (err) {
      lastError = err;
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') break;
    }
  }
  throw new Error(
    `switchyard: cannot load the native addon (${(lastError as Error).message}). ` +
      'Build it with `npm run build:native` (needs libbpf-dev and a C++ toolchain).',
    { cause: lastError },
  );
}

let instance: Native | undefined;

/** The addon, loaded on first use so unit tests that never touch the kernel run anywhere. */
export function native(): Native {
  instance ??= load();
  return instance;
}
