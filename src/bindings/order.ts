/**
 * The canonical order of bindings, (family, protocol, port, address, prefix
 * length), computed without string keys so a million bindings sort in tens
 * of milliseconds. The trie builder walks bindings in this order; duplicate
 * detection and set differences compare neighbours in it.
 */
import { rootSlot } from '../trie/layout.js';

/** Bindings in columns (BindingTable, the table records, the builder's input). */
export interface BindingColumns {
  count: number;
  family: Uint8Array;
  protocol: Uint8Array;
  prefixLen: Uint8Array;
  port: Uint16Array;
  addr: Uint32Array;
}

/**
 * Indices 0..n-1 ordered by (trie, address, prefix length): LSD radix sort on
 * 16-bit digits, skipping digits that are the same for every binding (the
 * three low address words of an IPv4-only set).
 */
export function sortBindings(input: BindingColumns): Uint32Array {
  const n = input.count;
  let order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  let scratch = new Uint32Array(n);
  const counts = new Uint32Array(65537);
  const digit = new Uint16Array(n);
  const slots = new Uint32Array(n);
  for (let i = 0; i < n; i++) slots[i] = rootSlot(input.family[i] as 4 | 6, input.protocol[i]!, input.port[i]!);
  const addr = input.addr;
  // Least significant first: prefix length, address words 3..0, trie. An
  // address word the same in every binding (IPv4: words 1..3) is skipped
  // without a pass.
  const constantWord = (w: number) => {
    for (let i = 1; i < n; i++) if (addr[i * 4 + w] !== addr[w]) return false;
    return true;
  };
  const passes: Array<(digits: Uint16Array) => void> = [
    (d) => {
      for (let i = 0; i < n; i++) d[i] = input.prefixLen[i]!;
    },
  ];
  for (let w = 3; w >= 0; w--) {
    if (n > 0 && constantWord(w)) continue;
    passes.push(
      (d) => {
        for (let i = 0; i < n; i++) d[i] = addr[i * 4 + w]! & 0xffff;
      },
      (d) => {
        for (let i = 0; i < n; i++) d[i] = addr[i * 4 + w]! >>> 16;
      },
    );
  }
  passes.push(
    (d) => {
      for (let i = 0; i < n; i++) d[i] = slots[i]! & 0xffff;
    },
    (d) => {
      for (let i = 0; i < n; i++) d[i] = slots[i]! >>> 16;
    },
  );
  for (const fill of passes) {
    fill(digit);
    counts.fill(0);
    for (let i = 0; i < n; i++) counts[digit[i]! + 1]!++;
    if (n === 0 || counts[digit[0]! + 1] === n) continue; // every binding has this digit
    for (let d = 1; d <= 65536; d++) counts[d]! += counts[d - 1]!;
    for (let k = 0; k < n; k++) {
      const i = order[k]!;
      scratch[counts[digit[i]!]!++] = i;
    }
    [order, scratch] = [scratch, order];
  }
  return order;
}

/** Orders binding i of `a` against binding j of `b` by key. */
export function compareKeys(a: BindingColumns, i: number, b: BindingColumns, j: number): number {
  const slot = (c: BindingColumns, k: number) => rootSlot(c.family[k] as 4 | 6, c.protocol[k]!, c.port[k]!);
  const d = slot(a, i) - slot(b, j);
  if (d !== 0) return d;
  for (let w = 0; w < 4; w++) {
    const x = a.addr[i * 4 + w]! - b.addr[j * 4 + w]!;
    if (x !== 0) return x;
  }
  return a.prefixLen[i]! - b.prefixLen[j]!;
}

/** The first two bindings with the same (protocol, prefix, port), in input order. */
export function findDuplicate(cols: BindingColumns, order: Uint32Array): [number, number] | undefined {
  for (let k = 1; k < cols.count; k++) {
    const a = order[k - 1]!;
    const b = order[k]!;
    if (compareKeys(cols, a, cols, b) === 0) return a < b ? [a, b] : [b, a];
  }
  return undefined;
}

/**
 * Walks two binding sets in key order and calls `same(i, j)` for every key
 * both hold (binding i of `before`, j of `after`).
 */
export function forEachCommonKey(
  before: BindingColumns,
  after: BindingColumns,
  same: (i: number, j: number) => void,
  x = sortBindings(before),
  y = sortBindings(after),
): void {
  let i = 0;
  let j = 0;
  while (i < before.count && j < after.count) {
    const c = compareKeys(before, x[i]!, after, y[j]!);
    if (c < 0) i++;
    else if (c > 0) j++;
    else same(x[i++]!, y[j++]!);
  }
}

/**
 * Bindings added (a new key, or a key with a new label) and removed (a key
 * gone or relabelled) between two sets; `sameLabel` compares labels of
 * binding i of `before` and j of `after`.
 */
export function countChanges(
  before: BindingColumns,
  after: BindingColumns,
  sameLabel: (i: number, j: number) => boolean,
  x = sortBindings(before),
  y = sortBindings(after),
): { added: number; removed: number } {
  let kept = 0;
  forEachCommonKey(before, after, (i, j) => {
    if (sameLabel(i, j)) kept++;
  }, x, y);
  return { added: after.count - kept, removed: before.count - kept };
}
