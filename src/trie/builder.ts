/**
 * Builds the bindings table of one generation: a multibit, level-compressed
 * longest-prefix-match trie per (family, protocol, port), encoded as
 * bpf/switchyard.h describes. Pure: bindings in, bytes out, no I/O.
 *
 * Shape of one trie (poptrie, Asai & Ohara 2015, plus path compression):
 * - a direct-pointing table on the top `s` bits, `s` chosen per trie from its
 *   size so small per-port tries do not pay for a large table; a table of
 *   buckets: a row per slot listing the slot's few prefixes, so most walks
 *   read one cache line after the root word (a packet pays each dependent
 *   miss in full); a bucket with more prefixes than a row holds refers to a
 *   child bucket table on the next bits, or to a skip row when its prefixes
 *   share those bits (an IPv6 provider's hosts), up to MAX_BUCKET_LEVELS;
 * - below it, 64-way nodes over 6-bit strides whose children and leaves are
 *   found by popcount, with leaf pushing (every slot carries its longest
 *   match, so the walk never backtracks) and runs of equal leaves stored once;
 * - skip nodes where all prefixes of a subtree share their next bits, so a
 *   lone IPv6 /128 under a /32 costs two node loads, not fifteen.
 */
import { PREFIX_MASKS, bitsAt, prefixContains, wordMask } from '../net/address.js';
import { type BindingColumns, sortBindings } from '../bindings/order.js';
import {
  HEADER,
  HEADER_MAGIC,
  ABI_VERSION,
  MAX_STEPS_V4,
  MAX_STEPS_V6,
  NODE,
  NODE_WORDS,
  NODES_PER_ROW,
  RECORD,
  REF_NODE,
  REF_TERMINAL,
  TERMINAL,
  TERMINALS_PER_ROW,
  BUCKET_ENTRIES,
  LEAF_LONG,
  SKIP,
  BUCKET_ROW_MASK,
  BUCKET_WIDTH_SHIFT,
  ROOT_BUCKETS,
  childBucketsRef,
  isBucketRef,
  isChildBuckets,
  ROOT_BITS_SHIFT,
  ROOT_SLOTS,
  ROOT_WORD,
  ROW_BYTES,
  WORDS_PER_ROW,
  leafPrefixLen,
  leafWord,
  rootSlot,
} from './layout.js';

/** Bindings with their destination ids resolved, in columns. */
export interface TrieInput extends BindingColumns {
  destination: ArrayLike<number>;
  /** Leaf words to use instead of (destination, prefix length): the benchmark's single-walk prototype. */
  leaf?: ArrayLike<number>;
}

export interface BuiltTable {
  bytes: Uint8Array;
  rows: number;
  nodeCount: number;
  wordCount: number;
  bindingCount: number;
  trieCount: number;
  /** Bindings no address reaches, listed apart (struct sy_table_header). */
  shadowed: number;
}

export function emptyInput(): TrieInput {
  return {
    count: 0,
    family: new Uint8Array(0),
    protocol: new Uint8Array(0),
    prefixLen: new Uint8Array(0),
    port: new Uint16Array(0),
    addr: new Uint32Array(0),
    destination: new Uint16Array(0),
  };
}

/** The most prefixes of a bucket table (see chooseBucketBits) whose slots may overflow their rows. */
const BUCKET_OVERFLOW = 0.06;
/** Bucket tables up to 2^22 rows (256 MiB), as direct tables. */
const MAX_BUCKET_BITS = 22;
/** Bucket tables a walk passes at most before nodes take over (the walk's step bound counts them). */
const MAX_BUCKET_LEVELS = 4;
/** fillSlots scratch of bucket table levels, apart from the nodes' depths. */
const BUCKET_SCRATCH = 64;

/** Fewer shared bits than this and a plain node is as good as a skip node. */
const SKIP_MIN_BITS = 7;
const STRIDE = 6;

class Growable {
  data: Uint32Array;
  length = 0;
  constructor(capacity: number) {
    this.data = new Uint32Array(Math.max(capacity, 64));
  }
  reserve(n: number): number {
    const start = this.length;
    if (start + n > this.data.length) {
      const next = new Uint32Array(Math.max(this.data.length * 2, start + n));
      next.set(this.data.subarray(0, start));
      this.data = next;
    }
    this.length += n;
    return start;
  }
  push(v: number): number {
    const i = this.reserve(1);
    this.data[i] = v;
    return i;
  }
}

/**
 * Size of the direct-pointing table of a trie with `n` prefixes: about four
 * slots per prefix, so most slots hold a leaf or a single prefix (one node
 * load after the table). Measured on 1M-binding sets: the same table bytes as
 * one slot per prefix (fewer, smaller nodes below) and 15-45 % faster walks.
 */
export function directBits(n: number): number {
  return Math.max(4, Math.min(22, Math.floor(Math.log2(Math.max(1, n))) + 2));
}

/** How a node slot was allocated: one slot, or a whole row (wide skip, or multibit node with room for its leaves). */
type NodeKind = 'single' | 'wide' | 'row';

interface Slots {
  values: Uint32Array;
  childSlot: Uint32Array;
  childStart: Uint32Array;
  childEnd: Uint32Array;
  childCount: number;
  shorts: number[];
}

class TrieBuilder {
  readonly words: Growable;
  readonly nodes: Growable;
  /** Direct tables of slot words: first word, words. */
  readonly directTables: Array<[number, number]> = [];
  /** Bucket tables: first word, rows (word 0 of a row may be a reference). */
  readonly bucketTables: Array<[number, number]> = [];
  private maxSteps = MAX_STEPS_V4;

  /** With `withRoot`, words start with the header row and the root table (a whole table); without, a subtree. */
  constructor(
    private readonly input: TrieInput,
    private readonly order: Uint32Array,
    prefixes: number,
    withRoot = true,
  ) {
    // Direct tables take about 4 words per prefix and leaf runs about 3.
    const reserved = withRoot ? ROOT_WORD + ROOT_SLOTS : 0;
    this.words = new Growable(reserved + prefixes * 8);
    this.words.reserve(reserved);
    this.nodes = new Growable(prefixes * NODE_WORDS);
  }

  /** A terminal for the lone IPv4 prefix i, answering `fallback` elsewhere; returns its reference. */
  private terminal(i: number, fallback: number): number {
    const at = this.terminals.reserve(TERMINAL.words);
    this.writeTerminal(this.terminals.data, at, i, fallback);
    return (REF_TERMINAL | (at / TERMINAL.words)) >>> 0;
  }

  /**
   * A reference that always answers `leaf`, for a bucket table's slot
   * holding only a leaf: an IPv4 terminal of mask 0, an IPv6 skip node that
   * never matches (its mask selects no bit, its value has one).
   */
  alwaysReference(leaf: number, family: 4 | 6): number {
    if (family === 6) {
      const node = this.nodes.reserve(NODE_WORDS) / NODE_WORDS;
      const n = this.nodes.data;
      const at = node * NODE_WORDS;
      n[at + NODE.vectorLo] = 1;
      n[at + NODE.skipLen] = 1;
      n[at + NODE.leafBase] = leaf;
      n[at + NODE.inherited] = leaf;
      return (REF_NODE | node) >>> 0;
    }
    return this.alwaysTerminal(leaf);
  }

  private alwaysTerminal(leaf: number): number {
    const at = this.terminals.reserve(TERMINAL.words);
    const t = this.terminals.data;
    t[at + TERMINAL.value] = 0;
    t[at + TERMINAL.mask] = 0;
    t[at + TERMINAL.leaf] = leaf;
    t[at + TERMINAL.fallback] = leaf;
    return (REF_TERMINAL | (at / TERMINAL.words)) >>> 0;
  }

  private writeTerminal(t: Uint32Array, at: number, i: number, fallback: number): void {
    const mask = wordMask(this.input.prefixLen[i]!, 0);
    t[at + TERMINAL.value] = (this.input.addr[i * 4]! & mask) >>> 0;
    t[at + TERMINAL.mask] = mask;
    t[at + TERMINAL.leaf] = this.leafOf(i);
    t[at + TERMINAL.fallback] = fallback;
  }

  private leafOf(i: number): number {
    if (this.input.leaf) return this.input.leaf[i]!;
    return leafWord(this.input.destination[i]!, this.input.prefixLen[i]!);
  }

  private commonBits(a: number, b: number): number {
    const addr = this.input.addr;
    for (let w = 0; w < 4; w++) {
      const x = (addr[a * 4 + w]! ^ addr[b * 4 + w]!) >>> 0;
      if (x !== 0) return w * 32 + Math.clz32(x);
    }
    return 128;
  }

  /** IPv4 terminals (struct sy_terminal), 4 words each, placed after the nodes. */
  readonly terminals = new Growable(1024);
  /** Multibit nodes whose leaves sit in the second half of their row. */
  readonly inlineLeaves: number[] = [];
  /** Leaf runs of the node being built (consumed before its children are). */
  private readonly runs = new Uint32Array(64);

  /** Per-depth scratch for fillSlots: depth d is free while depth d's node is being built. */
  private readonly scratch: Slots[] = [];

  private slotsAt(depth: number, size: number): Slots {
    let slots = this.scratch[depth];
    if (!slots || slots.values.length < size) {
      slots = {
        values: new Uint32Array(size),
        childSlot: new Uint32Array(size),
        childStart: new Uint32Array(size),
        childEnd: new Uint32Array(size),
        childCount: 0,
        shorts: [],
      };
      this.scratch[depth] = slots;
    }
    return slots;
  }

  /** Builds the trie of sorted bindings order[lo..hi) and returns its root word. */
  buildTrie(lo: number, hi: number): number {
    // The benchmark's single-walk prototype puts its own tags in leaf words.
    const b = !this.input.leaf ? this.chooseBucketBits(lo, hi) : -1;
    if (b >= 0) {
      // Prefixes that all share their first bits (IPv6's 2000::/3) would
      // leave most of a table on the top bits empty and the rest crowded:
      // a two-row table instead, whose used row skips the shared bits to a
      // table where they differ (one more row a walk reads, the same for
      // every packet of the trie: cached).
      const top = hi - lo > BUCKET_ENTRIES && this.sharedLeadingBits(lo, hi) >= 2 ? 1 : b;
      return ((top << ROOT_BITS_SHIFT) | ROOT_BUCKETS | (this.bucketTable(lo, hi, 0, top, 0, 0) / WORDS_PER_ROW)) >>> 0;
    }
    const s = this.chooseDirectBits(lo, hi);
    const slots = this.fillSlots(0, lo, hi, 0, s, 1 << s, 0, 0);
    const base = this.reserveRows(Math.max(1, (1 << s) / WORDS_PER_ROW));
    this.directTables.push([base, Math.max(1 << s, WORDS_PER_ROW)]);
    this.words.data.set(slots.values.subarray(0, 1 << s), base);
    for (let c = 0; c < slots.childCount; c++) {
      const v = slots.childSlot[c]!;
      const ref = this.buildSlot(slots.childStart[c]!, slots.childEnd[c]!, s, slots.values[v]!);
      this.words.data[base + v] = ref; // after the build: it may have moved words.data
    }
    return ((s << ROOT_BITS_SHIFT) | (base / WORDS_PER_ROW)) >>> 0;
  }

  /** `rows` whole rows of words, starting on a row (root words and slots name tables by row); returns the first word. */
  private reserveRows(rows: number): number {
    this.words.reserve((WORDS_PER_ROW - (this.words.length % WORDS_PER_ROW)) % WORDS_PER_ROW);
    return this.words.reserve(rows * WORDS_PER_ROW);
  }

  /**
   * A bucket table (switchyard.h) on bits [pos, pos + width) for
   * order[lo..hi) (all longer than `pos`, sharing bits [0, pos)) over
   * `inherited`: per row the row's prefixes, longest first, then the
   * longest shorter one covering it, or, for a row with more than a bucket
   * holds, a skip row and a child table (see overflow). Returns the table's
   * first word.
   */
  private bucketTable(lo: number, hi: number, pos: number, width: number, inherited: number, level: number): number {
    const slots = this.fillSlots(BUCKET_SCRATCH + level, lo, hi, pos, width, 1 << width, 0, inherited);
    const base = this.reserveRows(1 << width);
    this.bucketTables.push([base, 1 << width]);
    const ipv4 = this.input.family[this.order[lo]!] === 4;
    const end = pos + width;
    const start = this.rowStart;
    let c = 0;
    for (let v = 0; v < 1 << width; v++) {
      const rowInherited = slots.values[v]!;
      const has = c < slots.childCount && slots.childSlot[c] === v;
      const first = has ? slots.childStart[c]! : 0;
      const last = has ? slots.childEnd[c++]! : 0;
      const at = base + v * WORDS_PER_ROW;
      if (this.fitsBucket(first, last, rowInherited, end, ipv4)) {
        // The row's first address: the default entry of an IPv4 row names its prefix.
        for (let w = 0; w < 4; w++) start[w] = (this.input.addr[this.order[lo]! * 4 + w]! & PREFIX_MASKS[pos * 4 + w]!) >>> 0;
        setBitsAt(start, pos, width, v);
        this.writeBucket(at, first, last, rowInherited, end, ipv4, start);
        continue;
      }
      this.overflow(at, first, last, end, rowInherited, level, ipv4);
    }
    return base;
  }

  private readonly rowStart = new Uint32Array(4);
  private readonly entries = new Uint32Array(BUCKET_ENTRIES);

  /** Words an IPv6 bucket entry of a row `d` bits deep takes for a prefix of length `len`. */
  private static entryWords(len: number, d: number, ipv4: boolean): number {
    return ipv4 || len - d <= 32 ? 2 : 5;
  }

  private fitsBucket(first: number, last: number, inherited: number, d: number, ipv4: boolean): boolean {
    const n = last - first + (inherited ? 1 : 0);
    if (n > BUCKET_ENTRIES) return false;
    if (ipv4) return true;
    let words = inherited ? 2 : 0;
    for (let k = first; k < last; k++) words += TrieBuilder.entryWords(this.input.prefixLen[this.order[k]!]!, d, false);
    return words <= WORDS_PER_ROW;
  }

  /** A bucket row at word `at`, `d` bits deep, starting at address `start`: order[first..last), longest first, then `inherited`. */
  private writeBucket(at: number, first: number, last: number, inherited: number, d: number, ipv4: boolean, start: Uint32Array): void {
    const { input, order } = this;
    const entries = this.entries;
    const n = last - first;
    // Longest first (stable: equal lengths never overlap).
    for (let e = 0; e < n; e++) {
      const i = order[first + e]!;
      let j = e;
      while (j > 0 && input.prefixLen[entries[j - 1]!]! < input.prefixLen[i]!) {
        entries[j] = entries[j - 1]!;
        j--;
      }
      entries[j] = i;
    }
    const row = this.words.data;
    let w = at;
    for (let e = 0; e < n; e++) {
      const i = entries[e]!;
      const len = input.prefixLen[i]!;
      if (ipv4) {
        row[w++] = this.leafOf(i);
        row[w++] = (input.addr[i * 4]! & wordMask(len, 0)) >>> 0;
      } else if (len - d <= 32) {
        row[w++] = this.leafOf(i);
        row[w++] = windowOf(input.addr, i * 4, d, len - d);
      } else {
        row[w++] = (this.leafOf(i) | LEAF_LONG) >>> 0;
        for (let k = 0; k < 4; k++) row[w++] = input.addr[i * 4 + k]!;
      }
    }
    if (inherited) {
      row[w++] = inherited;
      // Shorter than the row: IPv4 matches it on its own bits, IPv6 on none past d.
      row[w++] = ipv4 ? (start[0]! & wordMask(leafPrefixLen(inherited), 0)) >>> 0 : 0;
    }
  }

  /**
   * Row `at` (`d` bits deep) for order[first..last), too many for a bucket.
   * Where the prefixes below share their next bits (past up to two that
   * contain all the rest, like a provider's prefix over its hosts), a skip
   * row jumps them, so the child table splits where they differ; the
   * containing ones answer a mismatch. Clustered prefixes a skip row cannot
   * take (and rows past MAX_BUCKET_LEVELS) get nodes.
   */
  private overflow(at: number, first: number, last: number, d: number, inherited: number, level: number, ipv4: boolean): void {
    const { input, order } = this;
    const nodes = () => {
      const ref = this.buildSlot(first, last, d, inherited, 2 * level + 2);
      this.words.data[at] = ref; // after the build: it may have moved words.data
      this.words.data[at + 1] = inherited;
    };
    if (level + 1 >= MAX_BUCKET_LEVELS) return nodes();
    const addr = input.addr;
    const lastPrefix = order[last - 1]!;
    let rest = first;
    while (rest < last - 1 && rest - first < SKIP.entries && prefixContains(addr, order[rest]! * 4, input.prefixLen[order[rest]!]!, addr, lastPrefix * 4)) rest++;
    let skip = this.commonBits(order[rest]!, lastPrefix) - d;
    for (let k = rest; k < last && skip > 0; k++) skip = Math.min(skip, input.prefixLen[order[k]!]! - d);
    if (skip <= 0) rest = first;
    for (let k = first; k < rest; k++) if (!ipv4 && input.prefixLen[order[k]!]! - d > 32) return nodes();
    const below = Math.max(0, skip);
    const childPos = d + below;
    const n = last - rest;
    const width = Math.max(1, Math.min(MAX_BUCKET_BITS, (ipv4 ? 32 : 128) - childPos, Math.ceil(Math.log2(n / (ipv4 ? 3 : 2)))));
    // What the child table inherits: the longest containing prefix, else the row's.
    const childInherited = rest > first ? this.leafOf(order[rest - 1]!) : inherited;
    const base = this.bucketTable(rest, last, childPos, width, childInherited, level + 1);
    const row = this.words.data;
    row[at + SKIP.ref] = childBucketsRef(base / WORDS_PER_ROW, width);
    row[at + SKIP.inherited] = inherited;
    if (below === 0) return;
    // Bits [d, d + skip) of the prefixes below, as the u64 halves the walk compares.
    const p = order[rest]! * 4;
    for (let half = 0; half < 2; half++) {
      const mHi = PREFIX_MASKS[(d + below) * 4 + 2 * half]! & ~PREFIX_MASKS[d * 4 + 2 * half]!;
      const mLo = PREFIX_MASKS[(d + below) * 4 + 2 * half + 1]! & ~PREFIX_MASKS[d * 4 + 2 * half + 1]!;
      const value = half ? SKIP.valueLo : SKIP.valueHi;
      const mask = half ? SKIP.maskLo : SKIP.maskHi;
      row[at + value] = (addr[p + 2 * half + 1]! & mLo) >>> 0;
      row[at + value + 1] = (addr[p + 2 * half]! & mHi) >>> 0;
      row[at + mask] = mLo >>> 0;
      row[at + mask + 1] = mHi >>> 0;
    }
    row[at + SKIP.skipLen] = below;
    // The containing prefixes, longest first, as a bucket's short entries.
    for (let k = rest - 1, e = 0; k >= first; k--, e++) {
      const i = order[k]!;
      const len = input.prefixLen[i]!;
      row[at + SKIP.entry + 2 * e] = this.leafOf(i);
      row[at + SKIP.entry + 2 * e + 1] = ipv4 ? (addr[i * 4]! & wordMask(len, 0)) >>> 0 : windowOf(addr, i * 4, d, len - d);
    }
  }

  /**
   * The width of an IPv4 trie's bucket table, or -1 for a table of slots.
   * The narrowest (from about three prefixes a row) whose slots overflow
   * their rows for at most BUCKET_OVERFLOW of the prefixes: an overflowing
   * slot's walk reads a node and a leaf more. Clustered prefixes (dense
   * ranges, most real tables) overflow at any width and take slots.
   */
  /** Leading bits every prefix of order[lo..hi) has and shares. */
  private sharedLeadingBits(lo: number, hi: number): number {
    let shared = this.commonBits(this.order[lo]!, this.order[hi - 1]!);
    for (let k = lo; k < hi && shared > 0; k++) shared = Math.min(shared, this.input.prefixLen[this.order[k]!]!);
    return shared;
  }

  private chooseBucketBits(lo: number, hi: number): number {
    const n = hi - lo;
    const { input, order } = this;
    let shortest = 32;
    for (let k = lo; k < hi; k++) shortest = Math.min(shortest, input.prefixLen[order[k]!]!);
    // About three prefixes a row; two for IPv6, whose host routes take 5 words of a row's 16.
    const perRow = input.family[order[lo]!] === 4 ? 3 : 2;
    const first = Math.max(4, Math.min(MAX_BUCKET_BITS, Math.round(Math.log2(Math.max(1, n) / perRow))));
    for (let b = first; b <= Math.min(MAX_BUCKET_BITS, first + 2); b++) {
      // Room for a shorter prefix's entry in every row when any is shorter.
      const room = BUCKET_ENTRIES - (shortest <= b ? 1 : 0);
      let overflow = 0;
      for (let k = lo; k < hi; ) {
        const i = order[k]!;
        if (input.prefixLen[i]! <= b) {
          k++;
          continue;
        }
        // Sorted by address: a slot's prefixes are consecutive (shorter ones between them skipped).
        const v = input.addr[i * 4]! >>> (32 - b);
        let m = 0;
        while (k < hi && input.addr[order[k]! * 4]! >>> (32 - b) === v) {
          if (input.prefixLen[order[k]!]! > b) m++;
          k++;
        }
        if (m > room) overflow += m;
      }
      if (overflow <= BUCKET_OVERFLOW * n) return b;
    }
    // Clustered: rows that overflow get child tables.
    return first;
  }

  /**
   * The direct table's width. directBits() sets the speed (about four slots
   * a prefix: most walks end one node below the table); a bit either side
   * is taken when an estimate of the trie's bytes favours it, and a
   * narrower table (down to 8 bits fewer, ending the most common length at
   * a stride) only when it saves a quarter of the bytes: where strides end
   * matters more than the table when most prefixes have a few lengths. Real
   * tables are mostly /22-/24: a 12-bit table ends /24s exactly at a node
   * level (the real-derived set: 33 -> 26-28 bytes a binding), where a
   * 17-bit one leaves every /23 and /24 a node deeper.
   */
  private chooseDirectBits(lo: number, hi: number): number {
    const base = directBits(hi - lo);
    const ipv4 = this.input.family[this.order[lo]!] === 4;
    // Big IPv4 tries are estimated on an eighth of the address space (whole
    // slots of every candidate width: regions of the narrowest), scaled up.
    const narrowest = Math.max(4, base - 6);
    const sampleAt = ipv4 && hi - lo > 65536 ? narrowest - 3 : -1;
    // The prefixes estimated, their lengths, and the bits each shares with
    // the one before (the least over those skipped between).
    const addr = this.input.addr;
    const lens = new Uint8Array(hi - lo);
    const shared = new Uint8Array(hi - lo);
    let count = 0;
    let since = 0;
    for (let k = lo; k < hi; k++) {
      const i = this.order[k]!;
      if (k > lo) {
        const a = this.order[k - 1]! * 4;
        // IPv4 lives in word 0 (the others are 0): 32 stands for "all".
        const bits = ipv4 ? (addr[a] === addr[i * 4] ? 32 : Math.clz32(addr[a]! ^ addr[i * 4]!)) : this.commonBits(this.order[k - 1]!, i);
        since = Math.min(since, bits);
      }
      if (sampleAt >= 0 && bitsAt(addr, i * 4, sampleAt, 3) !== 0) continue;
      lens[count] = this.input.prefixLen[i]!;
      shared[count++] = since;
      since = 128;
    }
    const scale = sampleAt >= 0 ? 8 : 1;
    const cost = (s: number) => 4 * 2 ** s + scale * estimateBytes(lens, shared, count, s, ipv4);
    let best = base;
    let bestCost = Infinity;
    for (let s = Math.max(4, base - 1); s <= Math.min(22, base + 1); s++) {
      const c = cost(s);
      if (c < bestCost) [best, bestCost] = [s, c];
    }
    if (!ipv4) return best;
    // Narrower: the widths that end the most common prefix length at a stride.
    const near = bestCost;
    const common = this.commonLength(lo, hi);
    for (let s = common - STRIDE; s >= narrowest; s -= STRIDE) {
      if (s >= base - 1) continue;
      const c = cost(s);
      if (c < bestCost && c < near * 0.75) [best, bestCost] = [s, c];
    }
    return best;
  }

  /** The most frequent prefix length of order[lo..hi). */
  private commonLength(lo: number, hi: number): number {
    const counts = new Uint32Array(129);
    for (let k = lo; k < hi; k++) counts[this.input.prefixLen[this.order[k]!]!]!++;
    let best = 0;
    for (let len = 1; len <= 128; len++) if (counts[len]! > counts[best]!) best = len;
    return best;
  }

  /**
   * The reference a direct-table slot holds for order[lo..hi) (all longer
   * than `pos`, sharing bits [0, pos)) over `inherited`, the slot's longest
   * shorter match: that leaf, a terminal, or a node.
   */
  buildSlot(lo: number, hi: number, pos: number, inherited: number, depth = 1): number {
    if (lo === hi) return inherited;
    const family = this.input.family[this.order[lo]!] as 4 | 6;
    this.maxSteps = family === 4 ? MAX_STEPS_V4 : MAX_STEPS_V6;
    if (family === 4 && hi - lo === 1) return this.terminal(this.order[lo]!, inherited);
    const child = this.allocChild(lo, hi, pos);
    return (REF_NODE | this.buildNode(child.node, lo, hi, pos, inherited, depth, child.kind)) >>> 0;
  }

  /**
   * Splits order[lo..hi) (all longer than `pos`, sharing bits [0, pos)) over
   * the 2^width slots of bits [pos, pos + width): `values` holds each slot's
   * longest match among prefixes ending within the stride (leaf pushing),
   * the child ranges the longer prefixes per slot. Slot v sits at index
   * v << spread (spread > 0 for strides cut short by a 64-bit boundary).
   * Results live in the scratch of `depth` until that depth is reused.
   */
  private fillSlots(depth: number, lo: number, hi: number, pos: number, width: number, size: number, spread: number, inherited: number): Slots {
    const { order, input } = this;
    const slots = this.slotsAt(depth, size);
    const values = slots.values;
    values.fill(inherited, 0, size);
    slots.childCount = 0;
    const shorts = slots.shorts;
    shorts.length = 0;
    const end = pos + width;
    let k = lo;
    while (k < hi) {
      const i = order[k]!;
      if (input.prefixLen[i]! <= end) {
        shorts.push(i);
        k++;
        continue;
      }
      const v = bitsAt(input.addr, i * 4, pos, width);
      const start = k;
      while (k < hi) {
        const j = order[k]!;
        if (input.prefixLen[j]! <= end || bitsAt(input.addr, j * 4, pos, width) !== v) break;
        k++;
      }
      const c = slots.childCount++;
      slots.childSlot[c] = v << spread;
      slots.childStart[c] = start;
      slots.childEnd[c] = k;
    }
    // Longer prefixes overwrite shorter ones: apply in increasing length.
    if (shorts.length > 1) shorts.sort((a, b) => input.prefixLen[a]! - input.prefixLen[b]!);
    for (const i of shorts) {
      const len = input.prefixLen[i]!;
      const first = bitsAt(input.addr, i * 4, pos, len - pos) << (end - len);
      const leaf = this.leafOf(i);
      for (let v = first; v < first + (1 << (end - len)); v++) values[v << spread] = leaf;
    }
    return slots;
  }

  /** Bits from `pos` on that every prefix of order[lo..hi) has and shares (0 when fewer than a skip needs). */
  private sharedBits(lo: number, hi: number, pos: number): number {
    const { order, input } = this;
    // Sorted by address: the first and last prefixes bound what all share.
    let shared = this.commonBits(order[lo]!, order[hi - 1]!) - pos;
    if (shared < SKIP_MIN_BITS) return 0;
    for (let k = lo; k < hi; k++) shared = Math.min(shared, input.prefixLen[order[k]!]! - pos);
    return shared;
  }

  /**
   * A node slot for a child that is not one of a multibit node's contiguous
   * children. Wide skips get a whole row; so do multibit nodes, whose leaves
   * then go in the row's second half when at most 8 runs (one cache line for
   * the node and its answer: the common end of a walk).
   */
  private allocChild(lo: number, hi: number, pos: number): { node: number; kind: NodeKind } {
    const shared = this.sharedBits(lo, hi, pos);
    const wide = shared >= SKIP_MIN_BITS && pos < 64 && pos + shared > 64;
    if (wide) return { node: this.reserveRow(), kind: 'wide' };
    if (shared >= SKIP_MIN_BITS) return { node: this.nodes.reserve(NODE_WORDS) / NODE_WORDS, kind: 'single' };
    return { node: -1, kind: 'row' }; // buildNode takes its slots
  }

  /** Two node slots starting on a row. */
  private reserveRow(): number {
    if ((this.nodes.length / NODE_WORDS) % 2 === 1) this.nodes.reserve(NODE_WORDS); // rows start on even nodes
    return this.nodes.reserve(2 * NODE_WORDS) / NODE_WORDS;
  }

  /**
   * Builds the node for order[lo..hi) at `pos` into slot `node`, or, for a
   * 'row' child (node -1), into slots it takes once it knows whether its
   * leaves fit its row. Returns the slot.
   */
  private buildNode(node: number, lo: number, hi: number, pos: number, inherited: number, depth: number, kind: NodeKind = 'single'): number {
    const wide = kind === 'wide';
    // A wide skip is two nodes deep (one per half).
    if (depth + (wide ? 1 : 0) > this.maxSteps) {
      throw new Error(`trie deeper than ${this.maxSteps} nodes at bit ${pos}: builder invariant broken`);
    }
    const room = 64 - (pos & 63);
    const shared = this.sharedBits(lo, hi, pos);
    if (wide) {
      const at = node * NODE_WORDS;
      this.buildSkip(at, lo, hi, pos, shared, inherited, depth, true);
      return node;
    }
    const skip = Math.min(shared, room);
    if (skip >= SKIP_MIN_BITS) {
      this.buildSkip(node * NODE_WORDS, lo, hi, pos, skip, inherited, depth);
      return node;
    }

    const width = Math.min(STRIDE, room);
    const spread = STRIDE - width;
    const slots = this.fillSlots(depth, lo, hi, pos, width, 64, spread, inherited);
    let vectorLo = 0;
    let vectorHi = 0;
    for (let j = 0; j < slots.childCount; j++) {
      const c = slots.childSlot[j]!;
      if (c < 32) vectorLo |= 1 << c;
      else vectorHi |= 1 << (c - 32);
    }
    let leafvecLo = 0;
    let leafvecHi = 0;
    let runCount = 0;
    const runs = this.runs;
    let previous = -1;
    for (let c = 0; c < 64; c++) {
      const internal = c < 32 ? (vectorLo >>> c) & 1 : (vectorHi >>> (c - 32)) & 1;
      if (internal) continue;
      // Slots a short stride never reaches continue the current run.
      const reachable = (c & ((1 << spread) - 1)) === 0;
      const value = reachable || previous < 0 ? slots.values[c]! : previous;
      if (value !== previous) {
        runs[runCount++] = value;
        if (c < 32) leafvecLo |= 1 << c;
        else leafvecHi |= 1 << (c - 32);
        previous = value;
      }
    }
    // Leaves in the node's row when it has one to spare, else in the words.
    const inline = kind === 'row' && runCount <= NODE_WORDS;
    if (kind === 'row') node = inline ? this.reserveRow() : this.nodes.reserve(NODE_WORDS) / NODE_WORDS;
    const at = node * NODE_WORDS;
    let leafBase = 0;
    if (inline) this.inlineLeaves.push(node);
    else if (runCount > 0) {
      leafBase = this.words.reserve(runCount);
      this.words.data.set(runs.subarray(0, runCount), leafBase);
    }
    const childBase = this.nodes.reserve(NODE_WORDS * slots.childCount) / NODE_WORDS;
    const n = this.nodes.data;
    if (inline) n.set(runs.subarray(0, runCount), at + NODE_WORDS);
    n[at + NODE.vectorLo] = vectorLo >>> 0;
    n[at + NODE.vectorHi] = vectorHi >>> 0;
    n[at + NODE.leafvecLo] = leafvecLo >>> 0;
    n[at + NODE.leafvecHi] = leafvecHi >>> 0;
    n[at + NODE.childBase] = childBase;
    n[at + NODE.leafBase] = leafBase; // an inline node's is set at relocation
    n[at + NODE.skipLen] = 0;
    n[at + NODE.inherited] = inherited;
    for (let j = 0; j < slots.childCount; j++) {
      this.buildNode(childBase + j, slots.childStart[j]!, slots.childEnd[j]!, pos + width, slots.values[slots.childSlot[j]!]!, depth + 1);
    }
    return node;
  }

  /**
   * A skip node: all of order[lo..hi) share bits [pos, pos + skip). Within
   * the current 64-bit half, or (wide) across both, in a whole row.
   */
  private buildSkip(at: number, lo: number, hi: number, pos: number, skip: number, inherited: number, depth: number, wide = false): void {
    const { order, input } = this;
    const first = order[lo]!;
    const off = pos & 63;
    const halfWord = (pos >>> 6) * 2; // first u32 of the 64-bit half
    // Mask of bits [off, off + len) within a half, as (high u32, low u32).
    const len = wide ? 64 - off : skip;
    const maskHi = halfMask(off, len, 0);
    const maskLo = halfMask(off, len, 32);
    const valueHi = (input.addr[first * 4 + halfWord]! & maskHi) >>> 0;
    const valueLo = (input.addr[first * 4 + halfWord + 1]! & maskLo) >>> 0;
    if (wide) {
      // The low half's bits [64, pos + skip): a second skip node in the same
      // row, so both halves cost one cache line; it shares the fallback.
      const lowLen = pos + skip - 64;
      const low = at + NODE_WORDS;
      const n = this.nodes.data;
      n[low + NODE.leafvecHi] = halfMask(0, lowLen, 0);
      n[low + NODE.leafvecLo] = halfMask(0, lowLen, 32);
      n[low + NODE.vectorHi] = (input.addr[first * 4 + 2]! & n[low + NODE.leafvecHi]!) >>> 0;
      n[low + NODE.vectorLo] = (input.addr[first * 4 + 3]! & n[low + NODE.leafvecLo]!) >>> 0;
      n[low + NODE.leafBase] = inherited;
      n[low + NODE.skipLen] = lowLen;
      n[low + NODE.inherited] = inherited;
    }
    const next = pos + skip;
    let start = lo;
    let below = inherited;
    // Sorted by (address, length): a prefix ending exactly here comes first.
    if (input.prefixLen[first]! === next) {
      below = this.leafOf(first);
      start++;
    }
    let child = below;
    if (start + 1 === hi && input.family[order[start]!] === 4) {
      child = this.terminal(order[start]!, below);
    } else if (start < hi) {
      const fresh = this.allocChild(start, hi, next);
      child = (REF_NODE | this.buildNode(fresh.node, start, hi, next, below, depth + (wide ? 2 : 1), fresh.kind)) >>> 0;
    }
    const n = this.nodes.data;
    // In memory a u64 is (low u32, high u32): vector = expected bits, leafvec = mask.
    n[at + NODE.vectorLo] = valueLo;
    n[at + NODE.vectorHi] = valueHi;
    n[at + NODE.leafvecLo] = maskLo;
    n[at + NODE.leafvecHi] = maskHi;
    n[at + NODE.leafBase] = inherited;
    n[at + NODE.inherited] = inherited;
    if (wide) {
      n[at + NODE.childBase] = (REF_NODE | (at / NODE_WORDS + 1)) >>> 0;
      n[at + NODE.skipLen] = len;
      n[at + NODE_WORDS + NODE.childBase] = child;
    } else {
      n[at + NODE.childBase] = child;
      n[at + NODE.skipLen] = skip;
    }
  }
}

/**
 * Bytes below an s-bit direct table of a trie whose prefixes, in order,
 * have lengths `lens` and share `shared` bits with the one before: counts
 * the nodes each level of strides needs. A block of a level with one prefix
 * below it is a terminal or a skip node, with more a node and its leaf runs
 * (the first level's in a row of their own).
 */
function estimateBytes(lens: Uint8Array, sharedBits: Uint8Array, n: number, s: number, ipv4: boolean): number {
  const depthMax = Math.ceil(((ipv4 ? 32 : 128) - s) / STRIDE) + 1;
  const count = new Float64Array(depthMax);
  const ending = new Float64Array(depthMax);
  const pending = new Float64Array(depthMax);
  let bytes = 0;
  let open = 0; // levels with a block open
  const close = (d: number) => {
    const m = count[d]!;
    let cost = 0;
    if (m === 1) cost = d === 0 && ipv4 ? 16 : 32;
    else if (m > 1) {
      const runs = 2 * ending[d]! + 1;
      cost = (d === 0 && runs <= NODE_WORDS ? 64 : 32 + 4 * runs) + pending[d]!;
    }
    if (d === 0) bytes += cost;
    else pending[d - 1]! += cost;
    count[d] = 0;
    ending[d] = 0;
    pending[d] = 0;
  };
  let shared = 0; // with the previous prefix longer than s
  for (let k = 0; k < n; k++) {
    const len = lens[k]!;
    shared = Math.min(shared, sharedBits[k]!);
    if (len <= s) continue;
    // Blocks of levels deeper than the bits shared with the previous prefix end here.
    while (open > 0 && s + STRIDE * (open - 1) > shared) close(--open);
    for (let d = 0; d < depthMax && s + STRIDE * d < len; d++) {
      count[d]!++;
      if (len <= s + STRIDE * (d + 1)) ending[d]!++;
      if (d + 1 > open) open = d + 1;
    }
    shared = 128;
  }
  while (open > 0) close(--open);
  return bytes;
}

/** Bits [pos, pos + 32) of the address at a[at..at+4), only the first `len` kept (the rest zero). */
function windowOf(a: ArrayLike<number>, at: number, pos: number, len: number): number {
  if (len <= 0) return 0;
  const w = pos >>> 5;
  const off = pos & 31;
  const high = a[at + w]! >>> 0;
  const low = w + 1 < 4 ? a[at + w + 1]! >>> 0 : 0;
  const window = off === 0 ? high : ((high << off) | (low >>> (32 - off))) >>> 0;
  return len >= 32 ? window : (window & ((0xffffffff << (32 - len)) >>> 0)) >>> 0;
}

/** Sets bits [pos, pos + width) of the 4-word address `a` to v (they are 0). */
function setBitsAt(a: Uint32Array, pos: number, width: number, v: number): void {
  for (let b = 0; b < width; b++) {
    if (!((v >>> (width - 1 - b)) & 1)) continue;
    const p = pos + b;
    a[p >>> 5] = (a[p >>> 5]! | (1 << (31 - (p & 31)))) >>> 0;
  }
}

/** Bits [off, off + len) of a 64-bit half, restricted to the u32 at `wordOffset` (0 = high). */
function halfMask(off: number, len: number, wordOffset: number): number {
  const from = Math.max(off, wordOffset) - wordOffset;
  const to = Math.min(off + len, wordOffset + 32) - wordOffset;
  if (to <= from) return 0;
  const width = to - from;
  const ones = width === 32 ? 0xffffffff : ((1 << width) - 1) >>> 0;
  return (ones << (32 - to)) >>> 0;
}

/** Where a builder's words, nodes and terminals go once built: from row `firstRow` on, in that order. */
interface Placement {
  firstRow: number;
  wordCount: number;
  nodeRow: number;
  nodeCount: number;
  terminalRow: number;
  terminalWords: number;
  /** First row after the terminals. */
  endRow: number;
}

function placementOf(builder: TrieBuilder, firstRow: number): Placement {
  const wordCount = builder.words.length;
  const nodeRow = firstRow + Math.ceil(wordCount / WORDS_PER_ROW);
  const nodeCount = builder.nodes.length / NODE_WORDS;
  const terminalRow = nodeRow + Math.ceil(nodeCount / NODES_PER_ROW);
  const terminalWords = builder.terminals.length;
  const endRow = terminalRow + Math.ceil(terminalWords / WORDS_PER_ROW);
  return { firstRow, wordCount, nodeRow, nodeCount, terminalRow, terminalWords, endRow };
}

/** A node or terminal reference of the builder, as an index into the placed table. */
function relocateRef(ref: number, p: Placement): number {
  if (isChildBuckets(ref)) return childBucketsRef((ref & BUCKET_ROW_MASK) + p.firstRow, (ref >>> BUCKET_WIDTH_SHIFT) & 31);
  if (ref & REF_NODE) return (ref + p.nodeRow * NODES_PER_ROW) >>> 0;
  if (ref & REF_TERMINAL) return (ref + p.terminalRow * TERMINALS_PER_ROW) >>> 0;
  return ref;
}

/**
 * Rewrites the builder's references (local word, node and terminal indexes)
 * as indexes into the table it will be placed in, then copies it there:
 * `rows` is that table's row array from row p.firstRow on.
 */
function place(builder: TrieBuilder, p: Placement, rows: Uint32Array): void {
  const wordBase = p.firstRow * WORDS_PER_ROW;
  const nodeBase = p.nodeRow * NODES_PER_ROW;
  const words = builder.words.data;
  for (const [start, size] of builder.directTables) {
    for (let k = start; k < start + size; k++) words[k] = relocateRef(words[k]!, p);
  }
  for (const [start, rows] of builder.bucketTables) {
    for (let k = start; k < start + rows * WORDS_PER_ROW; k += WORDS_PER_ROW) {
      if (isBucketRef(words[k]!)) words[k] = relocateRef(words[k]!, p);
    }
  }
  const nodes = builder.nodes.data;
  // Inline leaves: word index of the row's second half; those slots are data, not nodes.
  const leafSlots = new Uint8Array(p.nodeCount);
  for (const n of builder.inlineLeaves) {
    nodes[n * NODE_WORDS + NODE.leafBase] = (nodeBase + n) * NODE_WORDS + NODE_WORDS;
    leafSlots[n] = 2;
    leafSlots[n + 1] = 1;
  }
  for (let n = 0; n < p.nodeCount; n++) {
    if (leafSlots[n] === 1) continue;
    const at = n * NODE_WORDS;
    if (nodes[at + NODE.skipLen]) {
      nodes[at + NODE.childBase] = relocateRef(nodes[at + NODE.childBase]!, p);
    } else {
      nodes[at + NODE.childBase] = nodes[at + NODE.childBase]! + nodeBase;
      if (leafSlots[n] !== 2) nodes[at + NODE.leafBase] = nodes[at + NODE.leafBase]! + wordBase;
    }
  }
  rows.set(words.subarray(0, p.wordCount), 0);
  rows.set(nodes.subarray(0, p.nodeCount * NODE_WORDS), (p.nodeRow - p.firstRow) * WORDS_PER_ROW);
  rows.set(builder.terminals.data.subarray(0, p.terminalWords), (p.terminalRow - p.firstRow) * WORDS_PER_ROW);
}

/** Builds the complete table of one generation. */
export function buildTable(input: TrieInput, serial = 0n, order = sortBindings(input)): BuiltTable {
  const builder = new TrieBuilder(input, order, input.count);
  const roots: Array<[number, number]> = [];
  const shadowed: number[] = [];
  for (let lo = 0; lo < input.count; ) {
    const i = order[lo]!;
    const slot = rootSlot(input.family[i] as 4 | 6, input.protocol[i]!, input.port[i]!);
    let hi = lo + 1;
    while (hi < input.count) {
      const j = order[hi]!;
      if (rootSlot(input.family[j] as 4 | 6, input.protocol[j]!, input.port[j]!) !== slot) break;
      hi++;
    }
    roots.push([slot, builder.buildTrie(lo, hi)]);
    findShadowed(input, order, lo, hi, shadowed);
    lo = hi;
  }
  const p = placementOf(builder, 0);
  // Bindings no address reaches are not in the trie: listed after it, so
  // the table alone still says every binding (see readTableBindings).
  const shadowRow = shadowed.length ? p.endRow : 0;
  const rowCount = Math.max(1, shadowed.length ? shadowRow + 1 + Math.ceil((shadowed.length * RECORD.size) / ROW_BYTES) : p.endRow);
  const bytes = new Uint8Array(rowCount * ROW_BYTES);
  place(builder, p, new Uint32Array(bytes.buffer));
  const words = new Uint32Array(bytes.buffer);
  for (const [slot, root] of roots) words[ROOT_WORD + slot] = root;
  if (shadowed.length) {
    words[shadowRow * WORDS_PER_ROW] = shadowed.length;
    writeRecords(bytes, (shadowRow + 1) * ROW_BYTES, input, shadowed);
  }
  const header = {
    serial,
    bindingCount: input.count,
    shadowRow,
    usedRows: rowCount,
    nodeCount: p.nodeCount,
    wordCount: p.wordCount,
    garbageRows: 0,
  };
  writeHeader(new DataView(bytes.buffer), header);
  return { bytes, rows: rowCount, nodeCount: p.nodeCount, wordCount: p.wordCount, bindingCount: input.count, trieCount: roots.length, shadowed: shadowed.length };
}

/** The fields of struct sy_table_header that user space keeps. */
export interface TableHeader {
  serial: bigint;
  bindingCount: number;
  shadowRow: number;
  usedRows: number;
  nodeCount: number;
  wordCount: number;
  garbageRows: number;
}

export function writeHeader(view: DataView, h: TableHeader): void {
  view.setUint32(HEADER.magic, HEADER_MAGIC, true);
  view.setUint32(HEADER.abiVersion, ABI_VERSION, true);
  view.setUint32(HEADER.bindingCount, h.bindingCount, true);
  view.setUint32(HEADER.shadowRow, h.shadowRow, true);
  view.setBigUint64(HEADER.serial, h.serial, true);
  view.setUint32(HEADER.usedRows, h.usedRows, true);
  view.setUint32(HEADER.nodeCount, h.nodeCount, true);
  view.setUint32(HEADER.wordCount, h.wordCount, true);
  view.setUint32(HEADER.garbageRows, h.garbageRows, true);
}

/** Reads a table's header; undefined when it is not one of this ABI. */
export function readHeader(view: DataView): TableHeader | undefined {
  if (view.getUint32(HEADER.magic, true) !== HEADER_MAGIC || view.getUint32(HEADER.abiVersion, true) !== ABI_VERSION) return undefined;
  return {
    serial: view.getBigUint64(HEADER.serial, true),
    bindingCount: view.getUint32(HEADER.bindingCount, true),
    shadowRow: view.getUint32(HEADER.shadowRow, true),
    usedRows: view.getUint32(HEADER.usedRows, true),
    nodeCount: view.getUint32(HEADER.nodeCount, true),
    wordCount: view.getUint32(HEADER.wordCount, true),
    garbageRows: view.getUint32(HEADER.garbageRows, true),
  };
}

/** A subtree built to be written into free rows of a live table. */
export interface BuiltSlot {
  /** What the direct-table slot must hold to reach it. */
  ref: number;
  /** Its rows, to write at `firstRow`. */
  rows: Uint32Array;
  rowCount: number;
}

/**
 * Builds what one direct-table slot of a trie refers to, placed at
 * `firstRow` of a live table: the bindings order[lo..hi) of one trie, all
 * longer than `pos` and sharing bits [0, pos), over `inherited`. With
 * `referenceOf` (the trie's family), a bare leaf comes as a reference that
 * always answers it.
 */
export function buildSlot(input: TrieInput, order: Uint32Array, lo: number, hi: number, pos: number, inherited: number, firstRow: number, referenceOf?: 4 | 6): BuiltSlot {
  const builder = new TrieBuilder(input, order, hi - lo, false);
  let ref = builder.buildSlot(lo, hi, pos, inherited);
  if (referenceOf && !(ref & (REF_NODE | REF_TERMINAL))) ref = builder.alwaysReference(ref, referenceOf);
  const { p, rows, rowCount } = placeAlone(builder, firstRow);
  return { ref: relocateRef(ref, p), rows, rowCount };
}

/** A whole trie (the bindings order[lo..hi) of one root slot) placed at `firstRow` of a live table; `ref` is its root word. */
export function buildTrieAt(input: TrieInput, order: Uint32Array, lo: number, hi: number, firstRow: number): BuiltSlot {
  const builder = new TrieBuilder(input, order, hi - lo, false);
  const root = builder.buildTrie(lo, hi);
  const { rows, rowCount } = placeAlone(builder, firstRow);
  return { ref: (root + firstRow) >>> 0, rows, rowCount }; // the root word names its direct table's row
}

/** The rows of a builder that is not a whole table, placed at `firstRow`. */
function placeAlone(builder: TrieBuilder, firstRow: number) {
  const p = placementOf(builder, firstRow);
  const rowCount = p.endRow - firstRow;
  const rows = new Uint32Array(rowCount * WORDS_PER_ROW);
  place(builder, p, rows);
  return { p, rows, rowCount };
}

/**
 * Appends to `out` the bindings of one trie, order[lo..hi), that no address
 * reaches: those whose range longer prefixes of the same trie tile exactly.
 * Sorted by (address, length), a prefix's nested prefixes follow it; a
 * stack of open prefixes tracks, per prefix, the next address its direct
 * children have not yet covered.
 */
export function findShadowed(input: TrieInput, order: Uint32Array, lo: number, hi: number, out: number[]): void {
  const addr = input.addr;
  // Prefixes of one length never nest (host routes: the common big trie).
  let nests = false;
  for (let k = lo + 1; k < hi && !nests; k++) nests = input.prefixLen[order[k]!] !== input.prefixLen[order[lo]!];
  if (!nests) return;
  const stack: number[] = [];
  // Per stack depth: next uncovered address (4 words), whether a gap was
  // seen, whether any prefix nests in it (most have none: no cover to check).
  const cursor = new Uint32Array(130 * 4);
  const gap = new Uint8Array(130);
  const nested = new Uint8Array(130);
  const close = () => {
    const i = stack.pop()!;
    const d = stack.length;
    // Covered to the end: the cursor is the address right after the prefix.
    if (nested[d] && !gap[d] && followsPrefix(cursor, d * 4, addr, i * 4, input.prefixLen[i]!)) out.push(i);
  };
  for (let k = lo; k < hi; k++) {
    const i = order[k]!;
    while (stack.length && !prefixContains(addr, stack[stack.length - 1]! * 4, input.prefixLen[stack[stack.length - 1]!]!, addr, i * 4)) close();
    const d = stack.length;
    if (d > 0) {
      const c = (d - 1) * 4;
      nested[d - 1] = 1;
      let same = true;
      for (let w = 0; w < 4; w++) if (cursor[c + w] !== addr[i * 4 + w]) same = false;
      if (!same) gap[d - 1] = 1;
      afterPrefix(addr, i * 4, input.prefixLen[i]!, cursor, c);
    }
    stack.push(i);
    gap[d] = 0;
    nested[d] = 0;
    for (let w = 0; w < 4; w++) cursor[d * 4 + w] = addr[i * 4 + w]!;
  }
  while (stack.length) close();
}

/** Writes into out[ot..ot+4) the address after prefix (a, len), wrapping to 0 past the top. */
function afterPrefix(a: ArrayLike<number>, at: number, len: number, out: Uint32Array, ot: number): void {
  let carry = 1;
  for (let w = 3; w >= 0; w--) {
    const host = ~PREFIX_MASKS[len * 4 + w]! >>> 0;
    const v = ((a[at + w]! | host) >>> 0) + carry;
    out[ot + w] = v >>> 0;
    carry = v > 0xffffffff ? 1 : 0;
  }
}

const nextAddress = new Uint32Array(4);

function followsPrefix(cursor: Uint32Array, ct: number, a: ArrayLike<number>, at: number, len: number): boolean {
  const next = nextAddress;
  afterPrefix(a, at, len, next, 0);
  for (let w = 0; w < 4; w++) if (next[w] !== cursor[ct + w]) return false;
  return true;
}

/** Binding records (struct sy_binding_record) of `which`, written a u32 at a time; x86 and BPF are little-endian. */
export function writeRecords(bytes: Uint8Array, offset: number, input: TrieInput, which: ArrayLike<number>): void {
  const out = new Uint32Array(bytes.buffer, bytes.byteOffset + offset, which.length * (RECORD.size / 4));
  const bswap = (x: number) => (((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24)) >>> 0;
  for (let k = 0, at = 0; k < which.length; k++, at += RECORD.size / 4) {
    const i = which[k]!;
    out[at] = input.family[i]! | (input.protocol[i]! << 8) | (input.prefixLen[i]! << 16);
    out[at + 1] = (input.port[i]! | (input.destination[i]! << 16)) >>> 0;
    for (let w = 0; w < 4; w++) out[at + 2 + w] = bswap(input.addr[i * 4 + w]!); // network order
  }
}
