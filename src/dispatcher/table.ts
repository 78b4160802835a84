/**
 * Generations of the bindings table. A new generation is a new array map,
 * sized to fit, written through mmap and then swapped into slot 0 of the
 * pinned `generation` map: one pointer store for the program, which sees
 * either the old table or the new one, never a mix. The kernel frees the old
 * table after an RCU grace period, in O(pages).
 */
import { BpfMap, u32Key } from '../kernel/bpf.js';
import { native } from '../kernel/native.js';
import type { BuiltTable, TrieInput } from '../trie/builder.js';
import { HEADER, HEADER_MAGIC, ABI_VERSION, RECORD, ROW_BYTES } from '../trie/layout.js';
import { SwitchyardError } from '../errors.js';
import { tableSpec } from './maps.js';

export interface TableSummary {
  mapId: number;
  serial: bigint;
  rows: number;
  bytes: number;
  nodeCount: number;
  wordCount: number;
  bindingCount: number;
}

export interface CurrentTable {
  summary: TableSummary;
  bindings: TrieInput;
}

/** Opens the published table, or undefined when none is (a fresh load). */
function openCurrent(generation: BpfMap): { map: BpfMap; id: number } | undefined {
  const value = Buffer.alloc(4);
  if (!generation.lookup(u32Key(0), value)) return undefined;
  const id = value.readUInt32LE(0);
  const fd = native().mapGetFdById(id);
  const info = native().objInfo(fd, 'map');
  return { map: new BpfMap(fd, tableSpec(info.maxEntries)), id };
}

export function readCurrentTable(generation: BpfMap, withBindings = true): CurrentTable | undefined {
  const current = openCurrent(generation);
  if (!current) return undefined;
  const buffer = current.map.mmap(false);
  try {
    const view = new DataView(buffer);
    if (view.getUint32(HEADER.magic, true) !== HEADER_MAGIC || view.getUint32(HEADER.abiVersion, true) !== ABI_VERSION) {
      throw new SwitchyardError('EINCOMPATIBLE_STATE', `published table (map id ${current.id}) has an unknown header`);
    }
    const count = view.getUint32(HEADER.bindingCount, true);
    const offset = view.getUint32(HEADER.bindingOffset, true);
    const rows = view.getUint32(HEADER.usedRows, true);
    const summary: TableSummary = {
      mapId: current.id,
      serial: view.getBigUint64(HEADER.serial, true),
      rows,
      bytes: current.map.spec.maxEntries * ROW_BYTES,
      nodeCount: view.getUint32(HEADER.nodeCount, true),
      wordCount: view.getUint32(HEADER.wordCount, true),
      bindingCount: count,
    };
    const n = withBindings ? count : 0;
    const bindings: TrieInput = {
      count: n,
      family: new Uint8Array(n),
      protocol: new Uint8Array(n),
      prefixLen: new Uint8Array(n),
      port: new Uint16Array(n),
      addr: new Uint32Array(n * 4),
      destination: new Uint16Array(n),
    };
    const dest = bindings.destination as Uint16Array;
    for (let i = 0; i < n; i++) {
      const at = offset + i * RECORD.size;
      bindings.family[i] = view.getUint8(at + RECORD.family);
      bindings.protocol[i] = view.getUint8(at + RECORD.protocol);
      bindings.prefixLen[i] = view.getUint8(at + RECORD.prefixLen);
      bindings.port[i] = view.getUint16(at + RECORD.port, true);
      dest[i] = view.getUint16(at + RECORD.destination, true);
      for (let w = 0; w < 4; w++) bindings.addr[i * 4 + w] = view.getUint32(at + RECORD.addr + w * 4, false);
    }
    return { summary, bindings };
  } finally {
    native().unmap(buffer);
    current.map.close();
  }
}

export function currentSerial(generation: BpfMap): bigint {
  return readCurrentTable(generation, false)?.summary.serial ?? 0n;
}

/** Writes a built table into a new map and makes it the published one. */
export function publishTable(generation: BpfMap, built: BuiltTable): number {
  const spec = tableSpec(built.rows);
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
    const fd = Buffer.alloc(4);
    fd.writeUInt32LE(table.fd);
    generation.update(u32Key(0), fd);
    return table.info().id;
  } finally {
    table.close();
  }
}

