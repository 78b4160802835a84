/**
 * Typed handles over BPF maps and programs: a MapSpec describes what we
 * expect, and opening a pinned object checks the live map against it (type,
 * sizes, flags) and fails loudly instead of reading garbage.
 */
import fs from 'node:fs';
import { SwitchyardError } from '../errors.js';
import { native, type MapInfo } from './native.js';

export const MapType = {
  ARRAY: 2,
  PERCPU_ARRAY: 6,
  ARRAY_OF_MAPS: 12,
  SOCKMAP: 15,
} as const;

export const MapFlags = {
  MMAPABLE: 1 << 10,
} as const;

export const UpdateFlags = { ANY: 0, NOEXIST: 1, EXIST: 2 } as const;

export const PROG_TYPE_SK_LOOKUP = 30;
export const ATTACH_SK_LOOKUP = 36;
export const LINK_TYPE_NETNS = 5;

export interface MapSpec {
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

export function describeMismatch(spec: MapSpec, info: MapInfo): string | undefined {
  for (const field of ['type', 'keySize', 'valueSize', 'maxEntries', 'flags'] as const) {
    if (spec[field] !== info[field]) return `${spec.name}: ${field} is ${info[field]}, expected ${spec[field]}`;
  }
  return undefined;
}

/** An owned file descriptor; close() is idempotent. */
export class Fd {
  constructor(public fd: number) {}
  close(): void {
    if (this.fd >= 0) {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
  }
}

export class BpfMap extends Fd {
  constructor(
    fd: number,
    readonly spec: MapSpec,
  ) {
    super(fd);
  }

  static open(path: string, spec: MapSpec): BpfMap {
    const fd = native().objGet(path);
    const map = new BpfMap(fd, spec);
    const problem = describeMismatch(spec, map.info());
    if (problem) {
      map.close();
      throw new SwitchyardError('EINCOMPATIBLE_STATE', `pinned map ${path} is not what this version expects: ${problem}`);
    }
    return map;
  }

  info(): MapInfo {
    return native().objInfo(this.fd, 'map');
  }

  lookup(key: Buffer, value: Buffer): boolean {
    return native().mapLookup(this.fd, key, value);
  }

  update(key: Buffer, value: Buffer, flags: number = UpdateFlags.ANY): void {
    native().mapUpdate(this.fd, key, value, flags);
  }

  delete(key: Buffer): boolean {
    return native().mapDelete(this.fd, key);
  }

  /** Mapped bytes of a BPF_F_MMAPABLE array: max_entries × value size, page-rounded. */
  mmap(writable: boolean): ArrayBuffer {
    const bytes = this.spec.maxEntries * this.spec.valueSize;
    const page = 4096;
    return native().mmap(this.fd, Math.ceil(bytes / page) * page, writable);
  }
}

export function u32Key(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

/**
 * Loads a BPF object (native loadObject, which blocks signals during the
 * load: the verifier answers EAGAIN when one is pending), again should it
 * still answer EAGAIN.
 */
export function loadObject(...args: Parameters<ReturnType<typeof native>['loadObject']>): ReturnType<ReturnType<typeof native>['loadObject']> {
  for (let attempt = 1; ; attempt++) {
    try {
      return native().loadObject(...args);
    } catch (err) {
      if (attempt >= 5 || (err as { code?: string }).code !== 'EAGAIN') throw err;
    }
  }
}
