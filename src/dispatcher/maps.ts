/**
 * What this version expects of each pinned map (mirrors the map definitions
 * in bpf/dispatcher.c). Opening pinned state checks every map against these
 * specs and the ABI version in `meta`, never the program tag: kernel 6.18
 * made tags SHA-256 and a tag-based check (tubular's) breaks there.
 */
import { SwitchyardError } from '../errors.js';
import { MapFlags, MapType, describeMismatch, type MapSpec } from '../kernel/bpf.js';
import { native } from '../kernel/native.js';
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

/**
 * The spec of a generation's table. Every table of a loaded program has the
 * same number of rows, its capacity (see bpf/dispatcher.c for why); growing
 * reloads the program with a larger generation map.
 */
export function tableSpec(capacityRows: number): MapSpec {
  return { name: 'sy_table', type: MapType.ARRAY, keySize: 4, valueSize: ROW_BYTES, maxEntries: capacityRows, flags: MapFlags.MMAPABLE };
}

/** Room for about 70K bindings (4 MiB) until the first growth. */
export const MIN_CAPACITY_ROWS = 1 << 16;
/** Capacity for a table of `rows`: a quarter of headroom, in 64 KiB steps. */
export function capacityFor(rows: number): number {
  return Math.max(MIN_CAPACITY_ROWS, Math.ceil((rows * 1.25) / 1024) * 1024);
}

export const PROGRAM_NAME = 'switchyard_dispatch';

/**
 * The program of an object just loaded, once every map it made is what this
 * version expects (an object of another build would publish tables the code
 * cannot read): the first load, a migration and a replacement check alike.
 */
export function checkLoadedObject(objectPath: string, maps: Record<string, number>, programs: Record<string, number>): number {
  const prog = programs[PROGRAM_NAME];
  if (prog === undefined) throw new SwitchyardError('EINVAL_ARGUMENT', `${objectPath} has no program ${PROGRAM_NAME}`);
  for (const name of MAP_NAMES) {
    const fd = maps[name];
    if (fd === undefined) throw new SwitchyardError('EINCOMPATIBLE_STATE', `${objectPath} has no map ${name}`);
    const problem = describeMismatch(MAPS[name], native().objInfo(fd, 'map'));
    if (problem) throw new SwitchyardError('EINCOMPATIBLE_STATE', `${objectPath} does not match this version: ${problem}`);
  }
  return prog;
}
