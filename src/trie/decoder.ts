/**
 * Reads the binding set back out of a table: the table is its only copy
 * (see struct sy_table_header). Pure: table words in, bindings out.
 *
 * Every leaf the trie holds names a destination and a prefix length, and the
 * region of address space it answers for lies inside that prefix, so the
 * region's first address masked to the length is the prefix. The walk
 * visits regions in address order; a prefix answers for one contiguous run
 * of them or several runs around longer prefixes nested in it, and a stack
 * of the prefixes that contain the current region (each longer than the one
 * below) tells a prefix seen again from a new one.
 */
import { compareKeys, sortBindings } from '../bindings/order.js';
import { PREFIX_MASKS } from '../net/address.js';
import { readHeader, type TrieInput } from './builder.js';
import {
  LEAF_PLEN_MASK,
  LEAF_PLEN_SHIFT,
  LEAF_RESULT_MASK,
  NODE,
  NODE_WORDS,
  RECORD,
  REF_NODE,
  REF_TERMINAL,
  BUCKET_ENTRIES,
  BUCKET_ROW_MASK,
  LEAF_LONG,
  SKIP,
  BUCKET_WIDTH_SHIFT,
  ROOT_BITS_SHIFT,
  ROOT_BUCKETS,
  ROOT_SLOTS,
  ROOT_WORD,
  ROW_BYTES,
  TERMINAL,
  WORDS_PER_ROW,
  directSlotWord,
  isBucketRef,
  isChildBuckets,
} from './layout.js';

const STRIDE = 6;


export class Columns implements TrieInput {
  count = 0;
  family: Uint8Array;
  protocol: Uint8Array;
  prefixLen: Uint8Array;
  port: Uint16Array;
  addr: Uint32Array;
  destination: Uint16Array;
  constructor(capacity: number) {
    this.family = new Uint8Array(capacity);
    this.protocol = new Uint8Array(capacity);
    this.prefixLen = new Uint8Array(capacity);
    this.port = new Uint16Array(capacity);
    this.addr = new Uint32Array(capacity * 4);
    this.destination = new Uint16Array(capacity);
  }
  push(family: number, protocol: number, port: number, plen: number, addr: ArrayLike<number>, at: number, destination: number): void {
    if (this.count === this.family.length) this.grow();
    const i = this.count++;
    this.family[i] = family;
    this.protocol[i] = protocol;
    this.port[i] = port;
    this.prefixLen[i] = plen;
    for (let w = 0; w < 4; w++) this.addr[i * 4 + w] = (addr[at + w]! & PREFIX_MASKS[plen * 4 + w]!) >>> 0;
    this.destination[i] = destination;
  }
  private grow(): void {
    const n = Math.max(64, this.family.length * 2);
    const copy = <T extends Uint8Array | Uint16Array | Uint32Array>(a: T, size: number): T => {
      const b = new (a.constructor as new (n: number) => T)(size);
      b.set(a);
      return b;
    };
    this.family = copy(this.family, n);
    this.protocol = copy(this.protocol, n);
    this.prefixLen = copy(this.prefixLen, n);
    this.port = copy(this.port, n);
    this.addr = copy(this.addr, n * 4);
    this.destination = copy(this.destination, n);
  }
  /** Only the first `count` entries, as fresh arrays. */
  trimmed(): TrieInput {
    const n = this.count;
    return {
      count: n,
      family: this.family.slice(0, n),
      protocol: this.protocol.slice(0, n),
      prefixLen: this.prefixLen.slice(0, n),
      port: this.port.slice(0, n),
      addr: this.addr.slice(0, n * 4),
      destination: this.destination.slice(0, n),
    };
  }
}

/** Sets bits [pos, pos + width) of the 4-word address at `at` to `v` (they are 0). */
function setBits(words: Uint32Array, at: number, pos: number, width: number, v: number): void {
  for (let b = 0; b < width; b++) {
    if (!((v >>> (width - 1 - b)) & 1)) continue;
    const p = pos + b;
    words[at + (p >>> 5)] = (words[at + (p >>> 5)]! | (1 << (31 - (p & 31)))) >>> 0;
  }
}

export class TableDecoder {
  readonly out: Columns;
  private family = 4;
  private protocol = 6;
  private port = 0;
  /** Region starts, one 4-word address per depth. */
  private readonly starts = new Uint32Array(160 * 4);
  /** Prefixes containing the current region: 4 address words, length and leaf word each. */
  private readonly open = new Uint32Array(130 * 6);
  private openCount = 0;

  constructor(private readonly table: Uint32Array, capacity: number) {
    this.out = new Columns(capacity);
  }

  private enterTrie(slot: number): void {
    this.family = slot >>> 17 === 0 ? 4 : 6;
    this.protocol = (slot >>> 16) & 1 ? 17 : 6;
    this.port = slot & 0xffff;
    this.openCount = 0;
  }

  /** The bindings reachable from direct-table slot v of trie `slot` (root word `root`). */
  decodeSlot(slot: number, root: number, v: number): void {
    this.enterTrie(slot);
    this.visitSlot(root, v);
  }

  decodeTrie(slot: number, root: number): void {
    this.enterTrie(slot);
    const s = root >>> ROOT_BITS_SHIFT;
    for (let v = 0; v < 1 << s; v++) this.visitSlot(root, v);
  }

  private visitSlot(root: number, v: number): void {
    const s = root >>> ROOT_BITS_SHIFT;
    const starts = this.starts;
    starts.fill(0, 0, 4);
    starts[0] = s === 0 ? 0 : (v << (32 - s)) >>> 0; // s <= 22
    const at = directSlotWord(root, v);
    const ref = this.table[at]!;
    if (root & ROOT_BUCKETS) this.bucketRow(at, 0, s);
    else if (ref !== 0) this.visit(ref, 0, s);
  }

  /** A row of a bucket table at word `at`, `d` bits deep, its region starting at starts[depth]. */
  private bucketRow(at: number, depth: number, d: number): void {
    const t = this.table;
    const w0 = t[at]!;
    if (!isBucketRef(w0)) return this.bucket(at, depth, d);
    if (!isChildBuckets(w0)) return this.visit(w0, depth, d);
    // A skip row: what it inherits, the containing prefixes (shortest first), the child table.
    this.emit(t[at + SKIP.inherited]!, this.starts, depth * 4);
    const skip = t[at + SKIP.skipLen]!;
    const address = new Uint32Array(4);
    for (let e = SKIP.entries - 1; e >= 0; e--) {
      const leaf = t[at + SKIP.entry + 2 * e]!;
      if (!(leaf & LEAF_RESULT_MASK)) continue;
      this.entryAddress(address, depth, d, leaf, t[at + SKIP.entry + 2 * e + 1]!);
      this.emit(leaf, address, 0);
    }
    const next = (depth + 1) * 4;
    this.starts[next] = (this.starts[depth * 4]! | t[at + SKIP.valueHi + 1]!) >>> 0;
    this.starts[next + 1] = (this.starts[depth * 4 + 1]! | t[at + SKIP.valueHi]!) >>> 0;
    this.starts[next + 2] = (this.starts[depth * 4 + 2]! | t[at + SKIP.valueLo + 1]!) >>> 0;
    this.starts[next + 3] = (this.starts[depth * 4 + 3]! | t[at + SKIP.valueLo]!) >>> 0;
    this.visit(w0, depth + 1, d + skip);
  }

  /** The address of a bucket's short entry {leaf, value} in a row `d` bits deep (region at starts[depth]). */
  private entryAddress(out: Uint32Array, depth: number, d: number, leaf: number, value: number): void {
    const plen = (leaf >>> LEAF_PLEN_SHIFT) & LEAF_PLEN_MASK;
    for (let w = 0; w < 4; w++) out[w] = this.starts[depth * 4 + w]!;
    if (plen <= d) return; // the row's shorter prefix: from the row's start
    if (this.family === 4) {
      out[0] = value;
      return;
    }
    // Bits [d, d + 32) of an IPv6 prefix.
    const w = d >>> 5;
    const off = d & 31;
    out[w] = (out[w]! | (value >>> off)) >>> 0;
    if (off && w + 1 < 4) out[w + 1] = (out[w + 1]! | (value << (32 - off))) >>> 0;
  }

  /** A bucket row at word `at`, `d` bits deep, its region starting at starts[depth]: its entries in address order. */
  private bucket(at: number, depth: number, d: number): void {
    const t = this.table;
    const entries: Array<{ addr: Uint32Array; leaf: number }> = [];
    for (let k = 0, e = 0; e < BUCKET_ENTRIES && k < WORDS_PER_ROW; e++) {
      const leaf = t[at + k]!;
      if (leaf & LEAF_LONG) {
        entries.push({ addr: t.slice(at + k + 1, at + k + 5), leaf: (leaf & ~LEAF_LONG) >>> 0 });
        k += 5;
        continue;
      }
      if (leaf & LEAF_RESULT_MASK) {
        const addr = new Uint32Array(4);
        this.entryAddress(addr, depth, d, leaf, t[at + k + 1]!);
        entries.push({ addr, leaf });
      }
      k += 2;
    }
    const plenOf = (leaf: number) => (leaf >>> LEAF_PLEN_SHIFT) & LEAF_PLEN_MASK;
    entries.sort((x, y) => {
      for (let w = 0; w < 4; w++) if (x.addr[w] !== y.addr[w]) return x.addr[w]! - y.addr[w]!;
      return plenOf(x.leaf) - plenOf(y.leaf);
    });
    for (const e of entries) this.emit(e.leaf, e.addr, 0);
  }

  /** A reference found at the region starting at starts[depth], `pos` bits deep. */
  private visit(ref: number, depth: number, pos: number): void {
    const t = this.table;
    if (isChildBuckets(ref)) {
      const width = (ref >>> BUCKET_WIDTH_SHIFT) & 31;
      const base = ref & BUCKET_ROW_MASK;
      for (let v = 0; v < 1 << width; v++) {
        this.setStart(depth, pos, width, v);
        this.bucketRow((base + v) * WORDS_PER_ROW, depth + 1, pos + width);
      }
    } else if (ref & REF_NODE) {
      this.node((ref & ~REF_NODE) >>> 0, depth, pos);
    } else if (ref & REF_TERMINAL) {
      const at = (((ref & ~REF_TERMINAL) >>> 0) * TERMINAL.words) >>> 0;
      this.emit(t[at + TERMINAL.fallback]!, this.starts, depth * 4);
      // An always-matching terminal (a bucket slot's leaf) answers only its fallback's leaf.
      if (t[at + TERMINAL.mask] === 0) return;
      const value = new Uint32Array([t[at + TERMINAL.value]!, 0, 0, 0]);
      this.emit(t[at + TERMINAL.leaf]!, value, 0);
    } else {
      this.emit(ref, this.starts, depth * 4);
    }
  }

  private node(n: number, depth: number, pos: number): void {
    const t = this.table;
    const at = n * NODE_WORDS;
    const next = (depth + 1) * 4;
    const skip = t[at + NODE.skipLen]!;
    if (skip) {
      this.emit(t[at + NODE.leafBase]!, this.starts, depth * 4);
      // The expected bits (vector) of the current 64-bit half, already in place.
      const half = (pos >>> 6) * 2;
      for (let w = 0; w < 4; w++) this.starts[next + w] = this.starts[depth * 4 + w]!;
      this.starts[next + half] = (this.starts[next + half]! | t[at + NODE.vectorHi]!) >>> 0;
      this.starts[next + half + 1] = (this.starts[next + half + 1]! | t[at + NODE.vectorLo]!) >>> 0;
      this.visit(t[at + NODE.childBase]!, depth + 1, pos + skip);
      return;
    }
    const width = Math.min(STRIDE, 64 - (pos & 63));
    const spread = STRIDE - width;
    const childBase = t[at + NODE.childBase]!;
    const leafBase = t[at + NODE.leafBase]!;
    const vLo = t[at + NODE.vectorLo]!;
    const vHi = t[at + NODE.vectorHi]!;
    const lLo = t[at + NODE.leafvecLo]!;
    const lHi = t[at + NODE.leafvecHi]!;
    let child = 0;
    let leafIndex = -1;
    let leaf = 0;
    let last = -1;
    for (let c = 0; c < 64; c++) {
      const b = c & 31;
      // Runs start at leafvec bits, unreachable padding slots of a short stride included.
      if (((c < 32 ? lLo : lHi) >>> b) & 1) leaf = t[leafBase + ++leafIndex]!;
      if (c & ((1 << spread) - 1)) continue;
      if (((c < 32 ? vLo : vHi) >>> b) & 1) {
        this.setStart(depth, pos, width, c >>> spread);
        this.node(childBase + child++, depth + 1, pos + width);
        last = -1; // a run resumed after a child may be another prefix with the same leaf
        continue;
      }
      // A slot opens a prefix if its leaf differs from the slot before, or
      // if it starts a new block of that prefix's length (equal leaves of
      // adjacent prefixes share a run). emit() drops a prefix already open.
      const plen = (leaf >>> LEAF_PLEN_SHIFT) & LEAF_PLEN_MASK;
      const opens = leaf !== last || (plen > pos && ((c >>> spread) & ((1 << (pos + width - plen)) - 1)) === 0);
      last = leaf;
      if (opens && leaf & LEAF_RESULT_MASK) {
        this.setStart(depth, pos, width, c >>> spread);
        this.emit(leaf, this.starts, next);
      }
    }
  }

  /** starts[depth + 1] = starts[depth] with bits [pos, pos + width) = v. */
  private setStart(depth: number, pos: number, width: number, v: number): void {
    const next = (depth + 1) * 4;
    for (let w = 0; w < 4; w++) this.starts[next + w] = this.starts[depth * 4 + w]!;
    setBits(this.starts, next, pos, width, v);
  }

  /** The leaf answering for the region that starts at address a[at..at+4). */
  private emit(leaf: number, a: Uint32Array, at: number): void {
    const result = leaf & LEAF_RESULT_MASK;
    if (result === 0) return;
    const plen = (leaf >>> LEAF_PLEN_SHIFT) & LEAF_PLEN_MASK;
    const open = this.open;
    // Close the prefixes the region has left (regions only move forward).
    while (this.openCount > 0) {
      const o = (this.openCount - 1) * 6;
      const m = open[o + 4]! * 4;
      if (
        ((open[o]! ^ a[at]!) & PREFIX_MASKS[m]!) === 0 &&
        ((open[o + 1]! ^ a[at + 1]!) & PREFIX_MASKS[m + 1]!) === 0 &&
        ((open[o + 2]! ^ a[at + 2]!) & PREFIX_MASKS[m + 2]!) === 0 &&
        ((open[o + 3]! ^ a[at + 3]!) & PREFIX_MASKS[m + 3]!) === 0
      ) {
        // The longest open prefix answers here: seen before if it has this leaf.
        if (open[o + 5] === leaf) return;
        break;
      }
      this.openCount--;
    }
    const o = this.openCount++ * 6;
    const m = plen * 4;
    for (let w = 0; w < 4; w++) open[o + w] = (a[at + w]! & PREFIX_MASKS[m + w]!) >>> 0;
    open[o + 4] = plen;
    open[o + 5] = leaf;
    this.out.push(this.family, this.protocol, this.port, plen, a, at, result - 1);
  }
}

/**
 * Every binding of a table (u32 view of its rows), in no particular order.
 * Throws if `table` is not a table of this ABI.
 */
export function decodeTable(table: Uint32Array): TrieInput {
  const header = readHeader(new DataView(table.buffer, table.byteOffset, table.byteLength));
  if (!header) throw new Error('not a bindings table of this ABI');
  const decoder = new TableDecoder(table, header.bindingCount);
  for (let slot = 0; slot < ROOT_SLOTS; slot++) {
    const root = table[ROOT_WORD + slot]!;
    if (root) decoder.decodeTrie(slot, root);
  }
  const out = decoder.out;
  if (!header.shadowRow) return out.trimmed();
  const first = out.count;
  readListed(table, header.shadowRow, out);
  return withoutRepeats(out.trimmed(), first);
}

/** Appends the bindings listed at `shadowRow` (struct sy_table_header) to `out`. */
export function readListed(table: Uint32Array, shadowRow: number, out: Columns): void {
  if (!shadowRow) return;
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const count = table[shadowRow * WORDS_PER_ROW]!;
  const record = (shadowRow + 1) * ROW_BYTES;
  const addr = new Uint32Array(4);
  for (let k = 0; k < count; k++) {
    const at = record + k * RECORD.size;
    for (let w = 0; w < 4; w++) addr[w] = view.getUint32(at + RECORD.addr + w * 4, false);
    out.push(
      view.getUint8(at + RECORD.family),
      view.getUint8(at + RECORD.protocol),
      view.getUint16(at + RECORD.port, true),
      view.getUint8(at + RECORD.prefixLen),
      addr,
      0,
      view.getUint16(at + RECORD.destination, true),
    );
  }
}

/**
 * A listed (unreachable) binding may also be in the trie while an in-place
 * change is under way (listed first, then made unreachable): keep one.
 */
function withoutRepeats(input: TrieInput, firstListed: number): TrieInput {
  const order = sortBindings(input);
  const keep: number[] = [];
  for (let k = 0; k < input.count; k++) {
    const i = order[k]!;
    const j = k + 1 < input.count ? order[k + 1]! : -1;
    if (j >= 0 && compareKeys(input, i, input, j) === 0) {
      keep.push(i < firstListed ? i : j);
      k++;
      continue;
    }
    keep.push(i);
  }
  if (keep.length === input.count) return input;
  const out = new Columns(keep.length);
  for (const i of keep) out.push(input.family[i]!, input.protocol[i]!, input.port[i]!, input.prefixLen[i]!, input.addr, i * 4, input.destination[i]!);
  return out.trimmed();
}
