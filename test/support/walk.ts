/**
 * A TypeScript transcription of walk() in bpf/dispatcher.c, so the trie
 * builder can be tested anywhere (no root, no BPF). The integration tests run
 * the real program on the same tables.
 */
import {
  LEAF_PLEN_MASK,
  LEAF_PLEN_SHIFT,
  LEAF_RESULT_MASK,
  NODE_BYTES,
  REF_NODE,
  REF_TERMINAL,
  BUCKET_ENTRIES,
  BUCKET_ROW_MASK,
  LEAF_LONG,
  SKIP,
  BUCKET_WIDTH_SHIFT,
  ROOT_BITS_SHIFT,
  ROOT_BUCKETS,
  ROOT_WORD,
  ROW_BYTES,
  MAX_STEPS_V4,
  MAX_STEPS_V6,
  directSlotWord,
  isBucketRef,
  isChildBuckets,
  rootSlot,
} from '../../src/trie/layout.js';
import type { Address } from '../../src/net/address.js';

const M64 = (1n << 64n) - 1n;

export function walkTable(bytes: Uint8Array, ipproto: number, address: Address, port: number): { leaf: number; exact: number; wildcard: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const word = (w: number) => view.getUint32(w * 4, true);
  const w = address.words;
  const hi = (BigInt(w[0]) << 32n) | BigInt(w[1]);
  const lo = (BigInt(w[2]) << 32n) | BigInt(w[3]);
  const maxSteps = address.family === 4 ? MAX_STEPS_V4 : MAX_STEPS_V6;
  const walk = (root: number): number => {
    if (!root) return 0;
    const bits = root >>> ROOT_BITS_SHIFT;
    const slotWord = directSlotWord(root, Number(hi >> BigInt(64 - bits)));
    let ref = word(slotWord);
    const ipv4 = address.family === 4;
    // Bits [p, p + 32) of the address (IPv4: its 32 bits at the top), zeros past its end.
    const full = ipv4 ? BigInt(w[0]) << 96n : (hi << 64n) | lo;
    const windowAt = (p: number): number => Number(((full << BigInt(p)) & ((1n << 128n) - 1n)) >> 96n) >>> 0;
    const matches = (leaf: number, value: number, base: number): boolean => {
      const plen = (leaf >>> LEAF_PLEN_SHIFT) & LEAF_PLEN_MASK;
      const rel = plen > base ? plen - base : 0;
      const mask = rel === 0 ? 0 : (0xffffffff << (32 - rel)) >>> 0;
      return ((windowAt(base) & mask) >>> 0) === value;
    };
    // A bucket row `d` bits deep: the first entry whose prefix holds the address answers.
    const bucket = (at: number, d: number): number => {
      const base = ipv4 ? 0 : d;
      for (let k = 0, e = 0; e < BUCKET_ENTRIES && k < 16; e++) {
        const leaf = word(at + k);
        if (leaf & LEAF_LONG) {
          const plen = (leaf >>> LEAF_PLEN_SHIFT) & LEAF_PLEN_MASK;
          // Indexes wrap within the row, as the program's do.
          const at1 = (j: number) => word(at + ((k + j) & 15));
          const value = (BigInt(at1(1)) << 96n) | (BigInt(at1(2)) << 64n) | (BigInt(at1(3)) << 32n) | BigInt(at1(4));
          const mask = ((1n << 128n) - 1n) ^ ((1n << BigInt(128 - plen)) - 1n);
          if (((((hi << 64n) | lo) ^ value) & mask) === 0n) return (leaf & ~LEAF_LONG) >>> 0;
          k += 5;
          continue;
        }
        if (matches(leaf, word(at + ((k + 1) & 15)), base)) return leaf;
        k += 2;
      }
      return 0;
    };
    let pos = bits;
    let rowAt = root & ROOT_BUCKETS ? slotWord : -1;
    for (let step = 0; step < maxSteps; step++) {
      if (rowAt >= 0) {
        // A bucket table's row, pos bits deep.
        const at = rowAt;
        rowAt = -1;
        if (!isBucketRef(ref)) return bucket(at, pos);
        if (isChildBuckets(ref) && word(at + SKIP.skipLen)) {
          const u64 = (k: number) => (BigInt(word(at + k + 1)) << 32n) | BigInt(word(at + k));
          if (((hi ^ u64(SKIP.valueHi)) & u64(SKIP.maskHi)) | ((lo ^ u64(SKIP.valueLo)) & u64(SKIP.maskLo))) {
            const base = ipv4 ? 0 : pos;
            for (let e = 0; e < SKIP.entries; e++) {
              const leaf = word(at + SKIP.entry + 2 * e);
              if (leaf && matches(leaf, word(at + SKIP.entry + 2 * e + 1), base)) return leaf;
            }
            return word(at + SKIP.inherited);
          }
          pos += word(at + SKIP.skipLen);
        }
        continue;
      }
      if (isChildBuckets(ref)) {
        const width = (ref >>> BUCKET_WIDTH_SHIFT) & 31;
        rowAt = ((ref & BUCKET_ROW_MASK) + (windowAt(pos) >>> (32 - width))) * 16;
        ref = word(rowAt);
        pos += width;
        continue;
      }
      if (!(ref & REF_NODE)) {
        if (address.family !== 4 || !(ref & REF_TERMINAL)) return ref;
        const t = (ref & ~REF_TERMINAL) >>> 0;
        const at = (t >> 2) * ROW_BYTES + (t & 3) * 16;
        const matches = ((w[0] & view.getUint32(at + 4, true)) >>> 0) === view.getUint32(at, true);
        return view.getUint32(at + (matches ? 8 : 12), true);
      }
      const n = (ref & ~REF_NODE) >>> 0;
      const at = (n >> 1) * ROW_BYTES + (n & 1) * NODE_BYTES;
      const vector = view.getBigUint64(at, true);
      const leafvec = view.getBigUint64(at + 8, true);
      const childBase = view.getUint32(at + 16, true);
      const leafBase = view.getUint32(at + 20, true);
      const skipLen = view.getUint32(at + 24, true);
      const off = pos & 63;
      const half = pos < 64 ? hi : lo;
      if (skipLen) {
        if ((half & leafvec) !== vector) return leafBase;
        pos += skipLen;
        ref = childBase;
        continue;
      }
      const c = ((half << BigInt(off)) & M64) >> 58n;
      const bit = 1n << c;
      if (vector & bit) {
        ref = (REF_NODE | (childBase + popcount(vector & (bit - 1n)))) >>> 0;
        pos += Math.min(6, 64 - off);
        continue;
      }
      return word(leafBase + popcount(leafvec & (bit | (bit - 1n))) - 1);
    }
    return 0;
  };
  const base = ROOT_WORD + rootSlot(address.family, ipproto, 0);
  const exact = port ? walk(word(base + port)) : 0;
  const wildcard = walk(word(base));
  const plen = (leaf: number) => (leaf >>> LEAF_PLEN_SHIFT) & LEAF_PLEN_MASK;
  let leaf = wildcard;
  if (exact & LEAF_RESULT_MASK) leaf = wildcard & LEAF_RESULT_MASK && plen(wildcard) > plen(exact) ? wildcard : exact;
  return { leaf, exact, wildcard };
}

function popcount(x: bigint): number {
  let n = 0;
  while (x) {
    x &= x - 1n;
    n++;
  }
  return n;
}
