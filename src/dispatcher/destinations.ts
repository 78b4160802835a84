/**
 * Destinations: (label, family, protocol) → id, the key of the socket map
 * and of the per-destination counters. Kept in the pinned `destinations`
 * array (mmap-ed), so ids survive every process.
 *
 * An id is reused only when no binding of the published table names it and
 * no socket is registered for it: otherwise a reused id would hand one
 * service's traffic to another.
 */
import { SwitchyardError } from '../errors.js';
import type { BpfMap } from '../kernel/bpf.js';
import { native } from '../kernel/native.js';
import type { Family } from '../net/address.js';
import { IPPROTO, type Protocol, protocolName } from '../bindings/binding.js';
import { DESTINATION, DESTINATION_STATS, MAX_DESTINATIONS } from '../trie/layout.js';
import { possibleCpus } from '../kernel/cpus.js';
import { u32Key } from '../kernel/bpf.js';

export interface Destination {
  id: number;
  label: string;
  family: Family;
  protocol: Protocol;
}

export const destinationKey = (label: string, family: Family, protocol: Protocol) => `${label}|${family}|${protocol}`;

/**
 * A view of the pinned `destinations` map through a shared mapping: the
 * bytes are always the kernel's, other processes' changes included. Lookups
 * by id read the entry itself; lookups by key go through an index that is
 * checked against the bytes on every hit and rebuilt on a miss, so a
 * long-lived owner (the agent) pays the 64K-entry scan only when a key is new.
 */
export class Destinations {
  private readonly bytes: Uint8Array;
  private index: Map<string, number> | undefined;

  private constructor(private readonly buffer: ArrayBuffer) {
    this.bytes = new Uint8Array(buffer);
  }

  static read(map: BpfMap): Destinations {
    return new Destinations(map.mmap(true));
  }

  close(): void {
    native().unmap(this.buffer);
  }

  get(id: number): Destination | undefined {
    const at = id * DESTINATION.size;
    if (id < 0 || id >= MAX_DESTINATIONS || !this.bytes[at + DESTINATION.inUse]) return undefined;
    const len = this.bytes[at + DESTINATION.labelLen]!;
    return {
      id,
      label: Buffer.from(this.bytes.subarray(at + DESTINATION.label, at + DESTINATION.label + len)).toString('latin1'),
      family: this.bytes[at + DESTINATION.family] === 6 ? 6 : 4,
      protocol: protocolName(this.bytes[at + DESTINATION.protocol]!),
    };
  }

  all(): Destination[] {
    const out: Destination[] = [];
    for (let id = 0; id < MAX_DESTINATIONS; id++) {
      const d = this.bytes[id * DESTINATION.size + DESTINATION.inUse] ? this.get(id) : undefined;
      if (d) out.push(d);
    }
    return out;
  }

  find(label: string, family: Family, protocol: Protocol): Destination | undefined {
    const key = destinationKey(label, family, protocol);
    const cached = this.index?.get(key);
    if (cached !== undefined) {
      const d = this.get(cached);
      if (d && destinationKey(d.label, d.family, d.protocol) === key) return d;
    }
    this.index = new Map(this.all().map((d) => [destinationKey(d.label, d.family, d.protocol), d.id]));
    const id = this.index.get(key);
    return id === undefined ? undefined : this.get(id);
  }

  /**
   * The id of (label, family, protocol), allocating a free one if needed.
   * `prepare(id)` runs on a newly chosen id before the entry is written
   * (the counters are zeroed there): a failure then leaves the id free.
   */
  ensure(label: string, family: Family, protocol: Protocol, inUse: (id: number) => boolean, prepare: (id: number) => void = () => {}): Destination {
    const found = this.find(label, family, protocol);
    if (found) return found;
    let id = 0;
    while (id < MAX_DESTINATIONS && (this.bytes[id * DESTINATION.size + DESTINATION.inUse] || inUse(id))) id++;
    if (id === MAX_DESTINATIONS) {
      throw new SwitchyardError('ECAPACITY', `no free destination for ${label} ipv${family} ${protocol}: all ${MAX_DESTINATIONS} are in use`, {
        entry: label,
      });
    }
    prepare(id);
    const at = id * DESTINATION.size;
    const label8 = Buffer.from(label, 'latin1');
    this.bytes.fill(0, at, at + DESTINATION.size);
    this.bytes.set(label8, at + DESTINATION.label);
    this.bytes[at + DESTINATION.labelLen] = label8.length;
    this.bytes[at + DESTINATION.family] = family;
    this.bytes[at + DESTINATION.protocol] = IPPROTO[protocol];
    this.bytes[at + DESTINATION.inUse] = 1; // last: the entry is complete before it counts
    this.index?.set(destinationKey(label, family, protocol), id);
    return { id, label, family, protocol };
  }

  release(id: number): void {
    this.bytes.fill(0, id * DESTINATION.size, (id + 1) * DESTINATION.size);
  }
}

/** Per-destination counters summed over CPUs. */
export interface DestinationStats {
  lookups: bigint;
  misses: bigint;
  errors: bigint;
}

export function readStats(map: BpfMap, id: number): DestinationStats {
  const cpus = possibleCpus();
  const value = Buffer.alloc(DESTINATION_STATS.size * cpus);
  map.lookup(u32Key(id), value);
  const sum = { lookups: 0n, misses: 0n, errors: 0n };
  for (let c = 0; c < cpus; c++) {
    const at = c * DESTINATION_STATS.size;
    sum.lookups += value.readBigUInt64LE(at + DESTINATION_STATS.lookups);
    sum.misses += value.readBigUInt64LE(at + DESTINATION_STATS.misses);
    sum.errors += value.readBigUInt64LE(at + DESTINATION_STATS.errors);
  }
  return sum;
}

export function clearStats(map: BpfMap, id: number): void {
  map.update(u32Key(id), Buffer.alloc(DESTINATION_STATS.size * possibleCpus()));
}
