/**
 * One binding bound, relabelled or unbound in a live table without
 * rebuilding it: only the subtree under the direct-table slot the prefix
 * falls in is decoded, changed and rebuilt, into free rows past
 * `used_rows`, then switched in by one u32 store of the slot (a bucket
 * table's slot: of its row's word 0, which then refers to the rebuilt
 * subtree, a slot of one leaf included, until the next full build). Pure: the
 * planner reads the table and returns the writes; the dispatcher makes them.
 *
 * The table stays the only copy of the binding set through any crash: the
 * writes are ordered so that a table cut short after any one of them
 * decodes to the old set or the new one.
 * 1. new rows (past used_rows: nothing points at them yet);
 * 2. used_rows, so no later writer reuses them;
 * 3. the list of unreachable bindings, when it changes: bindings the change
 *    hides are listed *before* they disappear from the trie (a listed
 *    binding still in the trie decodes once), and an unbound listed binding
 *    leaves the list first (while the trie may still hold it);
 * 4. the slot (or, for a first binding of a port, the root word);
 * 5. the binding count.
 * The list may over-approximate (a binding hidden in one slot may show in
 * another); the next full build lists exactly.
 *
 * Changes this cannot make in one slot (a prefix shorter than the trie's
 * direct table, unbinding one exactly as long) are answered `full`.
 */
import { compareKeys, sortBindings } from '../bindings/order.js';
import { bitsAt, wordMask } from '../net/address.js';
import { buildSlot, buildTrieAt, findShadowed, readHeader, writeRecords, type TrieInput } from './builder.js';
import { Columns, TableDecoder, readListed } from './decoder.js';
import {
  HEADER,
  LEAF_RESULT_MASK,
  NODE,
  NODE_WORDS,
  RECORD,
  REF_NODE,
  REF_TERMINAL,
  BUCKET_ENTRIES,
  LEAF_LONG,
  SKIP,
  ROOT_BITS_SHIFT,
  ROOT_BUCKETS,
  ROOT_WORD,
  ROW_BYTES,
  TERMINAL,
  WORDS_PER_ROW,
  directSlotWord,
  isBucketRef,
  isChildBuckets,
  leafPrefixLen,
  leafWord,
  rootSlot,
} from './layout.js';

export interface BindingKey {
  family: 4 | 6;
  protocol: number;
  port: number;
  /** Four address words, host bits clear. */
  addr: ArrayLike<number>;
  prefixLen: number;
}

export type Patch =
  | { kind: 'full'; reason: string }
  /** Nothing to write: the key already has this destination, or (unbind) is not bound. */
  | { kind: 'none'; previous: number | null }
  | {
      kind: 'patch';
      /** Destination the key had before (null: unbound). */
      previous: number | null;
      /** Blocks of whole rows to write first, past used_rows. */
      rows: Array<{ row: number; words: Uint32Array }>;
      /** Then these u32 stores, in this order: [word index, value]. */
      stores: Array<[number, number]>;
    };

/** Longest lists rewritten in place; beyond it a full build lists exactly. */
const MAX_LISTED = 65536;

const headerWord = (byteOffset: number) => byteOffset / 4;

/** The leaf word of the longest prefix above direct-table slot word `at` (struct sy_node.inherited; a bucket's shorter entry). */
function inheritedOf(table: Uint32Array, root: number, at: number): number {
  const ref = table[at]!;
  if (root & ROOT_BUCKETS && !isBucketRef(ref)) {
    const s = root >>> ROOT_BITS_SHIFT;
    for (let k = 0, e = 0; e < BUCKET_ENTRIES && k < WORDS_PER_ROW; e++) {
      const leaf = table[at + k]!;
      // IPv6 entries with the whole prefix take 5 words (never a shorter one's).
      if (leaf & LEAF_LONG) {
        k += 5;
        continue;
      }
      if (leaf & LEAF_RESULT_MASK && leafPrefixLen(leaf) <= s) return leaf;
      k += 2;
    }
    return 0;
  }
  // A skip row keeps what it inherits in word 1.
  if (isChildBuckets(ref)) return table[at + SKIP.inherited]!;
  if (ref & REF_NODE) return table[((ref & ~REF_NODE) >>> 0) * NODE_WORDS + NODE.inherited]!;
  if (ref & REF_TERMINAL) return table[((ref & ~REF_TERMINAL) >>> 0) * TERMINAL.words + TERMINAL.fallback]!;
  return ref;
}

function keyColumns(key: BindingKey, destination: number): Columns {
  const c = new Columns(1);
  c.push(key.family, key.protocol, key.port, key.prefixLen, key.addr, 0, destination);
  return c;
}

/** Index in `set` of the key of binding i of `c`, or -1. */
function indexOfKey(set: TrieInput, c: TrieInput, i = 0): number {
  for (let k = 0; k < set.count; k++) if (compareKeys(set, k, c, i) === 0) return k;
  return -1;
}

/**
 * Why binding (or, `unbind`, unbinding) `key` cannot be made in place, from
 * the root word alone, or undefined when it may be (planPatch can still
 * answer `full` when the table has no free rows left). It decodes nothing,
 * so a delta can be judged whole before its first write.
 */
export function rebuildReason(table: Uint32Array, key: Pick<BindingKey, 'family' | 'protocol' | 'port' | 'prefixLen'>, unbind: boolean): string | undefined {
  const root = table[ROOT_WORD + rootSlot(key.family, key.protocol, key.port)]!;
  if (root === 0) return undefined;
  const s = root >>> ROOT_BITS_SHIFT;
  if (key.prefixLen < s) return `a /${key.prefixLen} spans several of the trie's /${s} slots`;
  if (key.prefixLen === s && unbind) return `unbinding a /${s} changes what its slot inherits`;
  return undefined;
}

/** Plans binding `key` to `destination`, or unbinding it when `destination` is null. */
export function planPatch(table: Uint32Array, capacityRows: number, key: BindingKey, destination: number | null): Patch {
  const header = readHeader(new DataView(table.buffer, table.byteOffset, table.byteLength));
  if (!header) throw new Error('not a bindings table of this ABI');
  const slot = rootSlot(key.family, key.protocol, key.port);
  const root = table[ROOT_WORD + slot]!;
  const keyCols = keyColumns(key, destination ?? 0);
  let free = header.usedRows;
  const rows: Array<{ row: number; words: Uint32Array }> = [];
  // The serial first: a reader comparing serials sees any change, even one cut short.
  const serial = header.serial + 1n;
  const stores: Array<[number, number]> = [
    [headerWord(HEADER.serial) + 1, Number(serial >> 32n) >>> 0],
    [headerWord(HEADER.serial), Number(serial & 0xffffffffn) >>> 0],
  ];

  if (root === 0) {
    // The first binding of this (family, protocol, port): a trie of its own.
    if (destination === null) return { kind: 'none', previous: null };
    const built = buildTrieAt(keyCols, new Uint32Array([0]), 0, 1, free);
    rows.push({ row: free, words: built.rows });
    free += built.rowCount;
    if (free > capacityRows) return { kind: 'full', reason: 'no free rows' };
    stores.push([headerWord(HEADER.usedRows), free], [ROOT_WORD + slot, built.ref], [headerWord(HEADER.bindingCount), header.bindingCount + 1]);
    return { kind: 'patch', previous: null, rows, stores };
  }

  const s = root >>> ROOT_BITS_SHIFT;
  const structural = rebuildReason(table, key, destination === null);
  if (structural) return { kind: 'full', reason: structural };
  const v = bitsAt(key.addr, 0, 0, s);
  const slotWord = directSlotWord(root, v);
  const start = [(v << (32 - s)) >>> 0, 0, 0, 0];
  const inherited = inheritedOf(table, root, slotWord);

  // What the slot holds: the bindings reachable in it, the listed ones inside it.
  const decoder = new TableDecoder(table, 16);
  decoder.decodeSlot(slot, root, v);
  const reachable = decoder.out;
  const listed = listedOf(table, header.shadowRow);
  const set = new Columns(reachable.count + 4);
  let inheritedReachable = false;
  for (let i = 0; i < reachable.count; i++) {
    if (reachable.prefixLen[i]! <= s) inheritedReachable = true;
    else set.push(reachable.family[i]!, reachable.protocol[i]!, reachable.port[i]!, reachable.prefixLen[i]!, reachable.addr, i * 4, reachable.destination[i]!);
  }
  const reachableCount = set.count; // set[0, reachableCount) were reachable before
  for (let i = 0; i < listed.count; i++) {
    const inside =
      rootSlot(listed.family[i] as 4 | 6, listed.protocol[i]!, listed.port[i]!) === slot &&
      listed.prefixLen[i]! > s &&
      bitsAt(listed.addr, i * 4, 0, s) === v;
    if (inside && !containsKey(set, listed, i)) set.push(listed.family[i]!, listed.protocol[i]!, listed.port[i]!, listed.prefixLen[i]!, listed.addr, i * 4, listed.destination[i]!);
  }

  // The change.
  const at = key.prefixLen > s ? indexOfKey(set, keyCols) : -1;
  const previous =
    key.prefixLen > s
      ? at >= 0
        ? set.destination[at]!
        : null
      : (inherited & LEAF_RESULT_MASK) !== 0 && leafPrefixLen(inherited) === s
        ? (inherited & LEAF_RESULT_MASK) - 1
        : null;
  if (previous === destination) return { kind: 'none', previous };
  if (destination === null && previous === null) return { kind: 'none', previous: null };
  const next = new Columns(set.count + 1);
  for (let i = 0; i < set.count; i++) {
    if (i !== at) next.push(set.family[i]!, set.protocol[i]!, set.port[i]!, set.prefixLen[i]!, set.addr, i * 4, set.destination[i]!);
  }
  if (destination !== null && key.prefixLen > s) next.push(key.family, key.protocol, key.port, key.prefixLen, key.addr, 0, destination);
  const nextInherited = destination !== null && key.prefixLen === s ? leafWord(destination, s) : inherited;

  const order = sortBindings(next);
  // A bucket table's slot is switched by its row's word 0: a reference, never a bare leaf.
  const built = buildSlot(next, order, 0, next.count, s, nextInherited, free, root & ROOT_BUCKETS ? key.family : undefined);
  if (built.rowCount) rows.push({ row: free, words: built.rows });
  free += built.rowCount;

  // Which bindings no address of the slot reaches afterwards (the slot
  // itself stands for what it inherits).
  const hidden = hiddenAfter(next, order, start, s, key);
  const inheritedHidden = hidden.slot;

  // The list: hide before disappearing, unbound leave first. Rewritten
  // only when it changes: at a million bindings it holds tens of thousands,
  // and most changes hide nothing.
  const keyListedAt = indexOfKey(listed, keyCols);
  const toHide = new Columns(4);
  const hide = (c: TrieInput, i: number) => {
    if (containsKey(listed, c, i) || containsKey(toHide, c, i)) return;
    toHide.push(c.family[i]!, c.protocol[i]!, c.port[i]!, c.prefixLen[i]!, c.addr, i * 4, c.destination[i]!);
  };
  for (let i = 0; i < reachableCount; i++) {
    if (i === at) continue;
    // set[i] is next[i] below the changed key's index, next[i - 1] above it.
    if (hidden.bindings[at >= 0 && i > at ? i - 1 : i]) hide(set, i);
  }
  if (destination !== null && key.prefixLen > s && hidden.bindings[next.count - 1]) hide(keyColumns(key, destination), 0); // pushed last
  const inheritedIsKey = key.prefixLen === s && leafPrefixLen(inherited) === s;
  if (inheritedReachable && !inheritedIsKey && (nextInherited !== inherited || inheritedHidden)) {
    // The binding the slot inherited stops answering here.
    const plen = leafPrefixLen(inherited);
    const masked = start.map((w, i) => (w & wordMask(plen, i)) >>> 0);
    hide(keyColumns({ ...key, addr: masked, prefixLen: plen }, (inherited & LEAF_RESULT_MASK) - 1), 0);
  }
  if (destination !== null && key.prefixLen === s && inheritedHidden) hide(keyColumns(key, destination), 0);
  const listChanged = keyListedAt >= 0 || toHide.count > 0;
  let list = listed;
  if (listChanged) {
    list = new Columns(listed.count + toHide.count);
    for (let i = 0; i < listed.count; i++) {
      if (i === keyListedAt && destination === null) continue; // unbound: leaves the list
      list.push(listed.family[i]!, listed.protocol[i]!, listed.port[i]!, listed.prefixLen[i]!, listed.addr, i * 4, i === keyListedAt ? destination! : listed.destination[i]!);
    }
    for (let i = 0; i < toHide.count; i++) list.push(toHide.family[i]!, toHide.protocol[i]!, toHide.port[i]!, toHide.prefixLen[i]!, toHide.addr, i * 4, toHide.destination[i]!);
  }
  if (list.count > MAX_LISTED) return { kind: 'full', reason: 'too many unreachable bindings to list in place' };

  let shadowRow = header.shadowRow;
  let garbage = header.garbageRows + built.rowCount;
  if (listChanged) {
    if (header.shadowRow) garbage += 1 + Math.ceil((listed.count * RECORD.size) / ROW_BYTES);
    shadowRow = 0;
    if (list.count > 0) {
      shadowRow = free;
      const listRows = 1 + Math.ceil((list.count * RECORD.size) / ROW_BYTES);
      const bytes = new Uint8Array(listRows * ROW_BYTES);
      new Uint32Array(bytes.buffer)[0] = list.count;
      writeRecords(bytes, ROW_BYTES, list, Array.from({ length: list.count }, (_, i) => i));
      rows.push({ row: free, words: new Uint32Array(bytes.buffer) });
      free += listRows;
    }
  }
  if (free > capacityRows) return { kind: 'full', reason: 'no free rows' };
  stores.push([headerWord(HEADER.usedRows), free], [headerWord(HEADER.garbageRows), garbage]);
  if (listChanged) stores.push([headerWord(HEADER.shadowRow), shadowRow]);
  stores.push([slotWord, built.ref]);
  const delta = previous === null ? 1 : destination === null ? -1 : 0;
  stores.push([headerWord(HEADER.bindingCount), header.bindingCount + delta]);
  return { kind: 'patch', previous, rows, stores };
}

/**
 * The decoded list at `shadowRow` of `table`, kept while it is the list: a
 * list, once written, never changes in place (a change writes a new one at
 * new rows, and only a full build, a new table, reuses rows), so a delta's
 * changes decode it once instead of once each. Never written to by callers.
 */
const listCache = new WeakMap<Uint32Array, { shadowRow: number; listed: Columns }>();
function listedOf(table: Uint32Array, shadowRow: number): Columns {
  const cached = listCache.get(table);
  if (cached?.shadowRow === shadowRow) return cached.listed;
  const listed = new Columns(16);
  readListed(table, shadowRow, listed);
  listCache.set(table, { shadowRow, listed });
  return listed;
}

function containsKey(set: TrieInput, c: TrieInput, i: number): boolean {
  return indexOfKey(set, c, i) >= 0;
}

/**
 * Which of the slot's bindings (all longer than `s`; by index in `next`)
 * longer ones tile, and whether they tile the whole slot.
 */
function hiddenAfter(next: TrieInput, order: Uint32Array, start: number[], s: number, key: BindingKey): { bindings: Uint8Array; slot: boolean } {
  // The slot as a binding of its own, shortest, first in order.
  const withSlot = new Columns(next.count + 1);
  withSlot.push(key.family, key.protocol, key.port, s, start, 0, 0);
  for (let k = 0; k < next.count; k++) {
    const i = order[k]!;
    withSlot.push(next.family[i]!, next.protocol[i]!, next.port[i]!, next.prefixLen[i]!, next.addr, i * 4, next.destination[i]!);
  }
  const out: number[] = [];
  findShadowed(withSlot, Uint32Array.from({ length: withSlot.count }, (_, i) => i), 0, withSlot.count, out);
  const bindings = new Uint8Array(next.count);
  let slot = false;
  for (const w of out) {
    if (w === 0) slot = true;
    else bindings[order[w - 1]!] = 1;
  }
  return { bindings, slot };
}

/**
 * Makes a planned patch's writes into `table` (the live table's mmap, or
 * a copy), in the order the plan gives. Aligned u32 stores are atomic for
 * the program reading the table, and x86 makes stores visible in order.
 */
export function applyPatch(table: Uint32Array, patch: Extract<Patch, { kind: 'patch' }>): void {
  for (const block of patch.rows) table.set(block.words, block.row * WORDS_PER_ROW);
  // Atomics: the compiler keeps these in program order too, after the rows.
  for (const [word, value] of patch.stores) Atomics.store(table, word, value);
}
