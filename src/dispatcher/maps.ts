/**
 * What this version expects of each pinned map (mirrors the map definitions
 * in bpf/dispatcher.c). Opening pinned state checks every map against these
 * specs and the ABI version in `meta`, never the program tag: kernel 6.18
 * made tags SHA-256 and a tag-based check (tubular's) breaks there.
 */
import { MapFlags, MapType, type MapSpec } from '../kernel/bpf.js';
import { DESTINATION, DESTINATION_STATS, MAX_DESTINATIONS, META, ROW_BYTES, TRACE } from '../trie/layout.js';

export const MAPS = {
  generation: { name: 'generation', type: MapType.ARRAY_OF_MAPS, keySize: 4, valueSize: 4, maxEntries: 1, flags: 0 },
  sockets: { name: 'sockets', type: MapType.SOCKMAP, keySize: 4, valueSize: 8, maxEntries: MAX_DESTINATIONS, flags: 0 },
  destination_stats: {
    name: 'destination_stats',
    type: MapType.PERCPU_ARRAY,
    keySize: 4,
    valueSize: DESTINATION_STATS.size,
    maxEntries: MAX_DESTINATIONS,
    flags: 0,
  },
  destinations: {
    name: 'destinations',
    type: MapType.ARRAY,
    keySize: 4,
    valueSize: DESTINATION.size,
    maxEntries: MAX_DESTINATIONS,
    flags: MapFlags.MMAPABLE,
  },
  meta: { name: 'meta', type: MapType.ARRAY, keySize: 4, valueSize: META.size, maxEntries: 1, flags: 0 },
  trace: { name: 'trace', type: MapType.PERCPU_ARRAY, keySize: 4, valueSize: TRACE.size, maxEntries: 1, flags: 0 },
} as const satisfies Record<string, MapSpec>;

export type MapName = keyof typeof MAPS;
export const MAP_NAMES = Object.keys(MAPS) as MapName[];

/** The spec of one generation's table: sized to fit, so nothing is preallocated per binding. */
export function tableSpec(rows: number): MapSpec {
  return {
    name: 'sy_table',
    type: MapType.ARRAY,
    keySize: 4,
    valueSize: ROW_BYTES,
    maxEntries: rows,
    flags: MapFlags.INNER_MAP | MapFlags.MMAPABLE,
  };
}

export const PROGRAM_NAME = 'switchyard_dispatch';
