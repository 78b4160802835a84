/**
 * Generations of the bindings table. A new generation is a new array map of
 * the program's capacity (see maps.ts), written through mmap and then swapped into slot 0 of the
 * pinned `generation` map: one pointer store for the program, which sees
 * either the old table or the new one, never a mix. The kernel frees the old
 * table after an RCU grace period, in O(pages).
 */
import fs from 'node:fs';
import path from 'node:path';
import { BpfMap, loadObject, u32Key } from '../kernel/bpf.js';
import { native } from '../kernel/native.js';
import { emptyInput, readHeader, type BuiltTable, type TrieInput } from '../trie/builder.js';
import { decodeTable } from '../trie/decoder.js';
import { ROW_BYTES } from '../trie/layout.js';
import { SwitchyardError, isKernelError } from '../errors.js';
import { tableSpec } from './maps.js';

export interface TableSummary {
  mapId: number;
  serial: bigint;
  /** Rows in use, and rows every table of this program has. */
  rows: number;
  capacityRows: number;
  bytes: number;
  nodeCount: number;
  wordCount: number;
  bindingCount: number;
  /** Rows left behind by in-place changes, reclaimed by the next full build. */
  garbageRows: number;
}

export interface CurrentTable {
  summary: TableSummary;
  bindings: TrieInput;
}

/**
 * The published table is also pinned, as `table` beside `generation`, so
 * readers open it by path (opening a map by id would need CAP_SYS_ADMIN). A
 * writer pins the next table as `table_next`, swaps it into the generation
 * slot, then renames the pin over `table`; a writer that died between the
 * swap and the rename left `table_next` naming the live table, which is
 * what readers then take.
 */
const PIN = 'table';
const PIN_NEXT = 'table_next';

/** The published table's map, found by the id in the generation slot among the two pins. */
export function openCurrent(dir: string, generation: BpfMap): { map: BpfMap; id: number } | undefined {
  const id = publishedTableId(generation);
  if (id === undefined) return undefined;
  for (const name of [PIN, PIN_NEXT]) {
    let fd: number;
    try {
      fd = native().objGet(path.join(dir, name));
    } catch (err) {
      if (isKernelError(err, 'ENOENT')) continue;
      throw err;
    }
    const info = native().objInfo(fd, 'map');
    if (info.id === id) return { map: new BpfMap(fd, tableSpec(info.maxEntries)), id };
    fs.closeSync(fd);
  }
  throw new SwitchyardError('EINCOMPATIBLE_STATE', `the published table (map id ${id}) is not pinned in ${dir}; was the generation map changed by another tool?`);
}

export function readCurrentTable(dir: string, generation: BpfMap, withBindings = true): CurrentTable | undefined {
  const current = openCurrent(dir, generation);
  if (!current) return undefined;
  const buffer = current.map.mmap(false);
  try {
    const header = readHeader(new DataView(buffer));
    if (!header) throw new SwitchyardError('EINCOMPATIBLE_STATE', `published table (map id ${current.id}) has an unknown header`);
    const summary: TableSummary = {
      mapId: current.id,
      serial: header.serial,
      rows: header.usedRows,
      capacityRows: current.map.spec.maxEntries,
      bytes: current.map.spec.maxEntries * ROW_BYTES,
      nodeCount: header.nodeCount,
      wordCount: header.wordCount,
      bindingCount: header.bindingCount,
      garbageRows: header.garbageRows,
    };
    const bindings = withBindings ? decodeTable(new Uint32Array(buffer)) : emptyInput();
    return { summary, bindings };
  } finally {
    native().unmap(buffer);
    current.map.close();
  }
}

/**
 * A writer killed between its swap and its rename left `table_next` naming
 * the live table (or, killed before the swap, a table that never served):
 * the next writer renames it over `table`, or removes it. Writers call it
 * under the lock; in-place changes publish nothing, so without it the
 * leftover pin would stay.
 */
export function settleTablePins(dir: string, generation: BpfMap): void {
  const next = path.join(dir, PIN_NEXT);
  let fd: number;
  try {
    fd = native().objGet(next);
  } catch (err) {
    if (isKernelError(err, 'ENOENT')) return;
    throw err;
  }
  let live: boolean;
  try {
    live = native().objInfo(fd, 'map').id === publishedTableId(generation);
  } finally {
    fs.closeSync(fd);
  }
  if (live) fs.renameSync(next, path.join(dir, PIN));
  else fs.rmSync(next);
}

/** Map id of the published table, or undefined before the first publish. */
function publishedTableId(generation: BpfMap): number | undefined {
  const value = Buffer.alloc(4);
  return generation.lookup(u32Key(0), value) ? value.readUInt32LE(0) : undefined;
}

/**
 * The published table mapped writable, for in-place changes
 * (src/trie/patch.ts). Mapping a BPF array maps all its pages at once (5 ms
 * for 64 MiB here), so an owner keeps it while it stays the published table:
 * `isCurrent()` costs one map lookup.
 */
export class LiveTable {
  private constructor(
    readonly id: number,
    private readonly map: BpfMap,
    private readonly buffer: ArrayBuffer,
    readonly words: Uint32Array,
  ) {}

  static open(dir: string, generation: BpfMap): LiveTable | undefined {
    const current = openCurrent(dir, generation);
    if (!current) return undefined;
    try {
      const buffer = current.map.mmap(true);
      return new LiveTable(current.id, current.map, buffer, new Uint32Array(buffer));
    } catch (err) {
      current.map.close();
      throw err;
    }
  }

  get capacityRows(): number {
    return this.map.spec.maxEntries;
  }

  isCurrent(generation: BpfMap): boolean {
    return publishedTableId(generation) === this.id;
  }

  close(): void {
    native().unmap(this.buffer);
    this.map.close();
  }
}

/** A new, unpinned table map of `capacityRows` holding `built`. The caller owns (closes) it. */
export function createTableMap(built: BuiltTable, capacityRows: number): BpfMap {
  if (built.rows > capacityRows) throw new Error(`table of ${built.rows} rows exceeds capacity ${capacityRows}`);
  const spec = tableSpec(capacityRows);
  const table = new BpfMap(
    native().mapCreate(spec.type, spec.keySize, spec.valueSize, spec.maxEntries, spec.flags, spec.name),
    spec,
  );
  try {
    const buffer = table.mmap(true);
    try {
      new Uint8Array(buffer).set(built.bytes);
    } finally {
      native().unmap(buffer);
    }
    return table;
  } catch (err) {
    table.close();
    throw err;
  }
}

/**
 * Loads a BPF object whose `generation` map (created, not reused) takes
 * tables of `capacityRows`; the template map only lives during the load.
 */
export function loadWithCapacity(objectPath: string, reuse: Record<string, number>, capacityRows: number) {
  const spec = tableSpec(capacityRows);
  const template = new BpfMap(native().mapCreate(spec.type, spec.keySize, spec.valueSize, spec.maxEntries, spec.flags, 'sy_table_tmpl'), spec);
  try {
    return loadObject(objectPath, reuse, { generation: template.fd });
  } finally {
    template.close();
  }
}

/** Swaps `table` into slot 0 of a generation map: the switch, for packets. */
export function swapTable(generation: BpfMap, table: BpfMap): void {
  const fd = Buffer.alloc(4);
  fd.writeUInt32LE(table.fd);
  generation.update(u32Key(0), fd);
}

/** Writes a built table into a new map and makes it the published one. */
export function publishTable(dir: string, generation: BpfMap, built: BuiltTable, capacityRows: number): number {
  const table = createTableMap(built, capacityRows);
  try {
    const next = path.join(dir, PIN_NEXT);
    fs.rmSync(next, { force: true }); // left by a writer that died before its swap
    native().objPin(table.fd, next);
    swapTable(generation, table);
    fs.renameSync(next, path.join(dir, PIN));
    return table.info().id;
  } finally {
    table.close();
  }
}
