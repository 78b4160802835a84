/**
 * TypeScript mirror of bpf/switchyard.h: the table encoding shared with the
 * dispatcher program. test/unit/layout.test.ts checks every size and offset
 * here against the BTF of the compiled bpf/dispatcher.o.
 */
export const ABI_VERSION = 4;
export const META_MAGIC = 0x53594431;
export const HEADER_MAGIC = 0x53595432;
/** ABI 3's table encoding ("SYT1"): decoded (to migrate its bindings), never written. */
export const LEGACY_HEADER_MAGIC = 0x53595431;

export const MAX_DESTINATIONS = 65536;
export const LABEL_MAX = 59;

export const ROW_BYTES = 64;
export const WORDS_PER_ROW = 16;
export const NODES_PER_ROW = 2;
export const NODE_BYTES = 32;
export const NODE_WORDS = NODE_BYTES / 4;

export const ROOT_WORD = WORDS_PER_ROW;
export const ROOT_SLOTS = 4 << 16;
export const ROOT_BITS_SHIFT = 27;
/** ABI 3's direct tables with terminals in their rows: decoded, never built. */
export const ROOT_LEGACY_INLINE = 1 << 26;
export const ROOT_BUCKETS = 1 << 25;
export const ROOT_ROW_MASK = ROOT_BUCKETS - 1;

export const REF_NODE = 0x80000000;
export const REF_TERMINAL = 0x40000000;
export const TERMINALS_PER_ROW = 4;
const LEGACY_SLOTS_PER_ROW = 8;
export const BUCKET_ENTRIES = 8;
/** A bucket row's word 0 with one of these bits set is a reference, not its first entry's leaf word. */
export const REF_TAGS = 0xe0000000;
/** A child bucket table: rows from (ref & BUCKET_ROW_MASK), width (ref >> BUCKET_WIDTH_SHIFT) & 31. */
export const REF_BUCKETS = 0x20000000;
export const BUCKET_WIDTH_SHIFT = 24;
export const BUCKET_ROW_MASK = 0xffffff;
/** An IPv6 bucket entry of 5 words: the leaf word and the whole prefix. */
export const LEAF_LONG = 1 << 25;
/** Containing-prefix entries a skip row carries. */
export const SKIP_ENTRIES = 2;
/** struct sy_skip_row, u32 word offsets (u64s little-endian: low word first). */
export const SKIP = { ref: 0, inherited: 1, valueHi: 2, valueLo: 4, maskHi: 6, maskLo: 8, skipLen: 10, entry: 11, entries: SKIP_ENTRIES } as const;

/** Word index of direct-table slot v of the trie whose root word is `root` (a bucket table's: its row's word 0). */
export function directSlotWord(root: number, v: number): number {
  const row = root & ROOT_ROW_MASK;
  if (root & ROOT_BUCKETS) return (row + v) * WORDS_PER_ROW;
  if (root & ROOT_LEGACY_INLINE) return (row + Math.floor(v / LEGACY_SLOTS_PER_ROW)) * WORDS_PER_ROW + (v % LEGACY_SLOTS_PER_ROW);
  return row * WORDS_PER_ROW + v;
}

/** Whether word 0 of a bucket row is a reference (the slot's subtree) rather than its first entry. */
export function isBucketRef(word0: number): boolean {
  return (word0 & REF_TAGS) !== 0;
}

export function isChildBuckets(ref: number): boolean {
  return ((ref & REF_TAGS) >>> 0) === REF_BUCKETS;
}

export function childBucketsRef(row: number, width: number): number {
  if (row > BUCKET_ROW_MASK) throw new Error(`bucket table at row ${row}: past the ${BUCKET_ROW_MASK + 1} rows a child reference can name`);
  return (REF_BUCKETS | (width << BUCKET_WIDTH_SHIFT) | row) >>> 0;
}

export const LEAF_RESULT_MASK = 0x1ffff;
export const LEAF_PLEN_SHIFT = 17;
export const LEAF_PLEN_MASK = 0xff;

export const MAX_STEPS_V4 = 16;
export const MAX_STEPS_V6 = 40;

/** struct sy_node, as u32 word offsets. */
export const NODE = {
  vectorLo: 0,
  vectorHi: 1,
  leafvecLo: 2,
  leafvecHi: 3,
  childBase: 4,
  leafBase: 5,
  skipLen: 6,
  inherited: 7,
} as const;

/** struct sy_terminal, u32 word offsets. */
export const TERMINAL = { value: 0, mask: 1, leaf: 2, fallback: 3, words: 4 } as const;

/** struct sy_table_header, byte offsets. */
export const HEADER = {
  magic: 0,
  abiVersion: 4,
  bindingCount: 8,
  shadowRow: 12,
  serial: 16,
  usedRows: 24,
  nodeCount: 28,
  wordCount: 32,
  garbageRows: 36,
  size: 64,
} as const;

/** struct sy_binding_record. */
export const RECORD = { family: 0, protocol: 1, prefixLen: 2, port: 4, destination: 6, addr: 8, size: 24 } as const;

/** struct sy_destination. */
export const DESTINATION = { inUse: 0, family: 1, protocol: 2, labelLen: 3, label: 4, size: 64 } as const;

/** struct sy_destination_stats (per CPU). */
export const DESTINATION_STATS = { lookups: 0, misses: 8, errors: 16, size: 24 } as const;

/** struct sy_meta. */
export const META = { magic: 0, abiVersion: 4, size: 8 } as const;

/** struct sy_trace. */
export const TRACE = { nonce: 0, exact: 4, wildcard: 8, chosen: 12, flags: 16, assignErr: 20, size: 24 } as const;
export const TRACE_SOCKET_FOUND = 1;

/** Index of the root word of (family, protocol, port). */
export function rootSlot(family: 4 | 6, ipproto: number, port: number): number {
  return (((family === 4 ? 0 : 2) + (ipproto === 6 ? 0 : 1)) << 16) | port;
}

export function leafWord(destination: number, prefixLen: number): number {
  return ((prefixLen << LEAF_PLEN_SHIFT) | (destination + 1)) >>> 0;
}

export function leafDestination(leaf: number): number | undefined {
  const r = leaf & LEAF_RESULT_MASK;
  return r === 0 ? undefined : r - 1;
}

export function leafPrefixLen(leaf: number): number {
  return (leaf >>> LEAF_PLEN_SHIFT) & LEAF_PLEN_MASK;
}
