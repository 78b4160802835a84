/**
 * IP addresses and prefixes as fixed-width words, fast enough to parse and
 * compare millions of bindings (ip-num, BigInt-based, is the independent
 * reference the unit tests check this parser against).
 *
 * An address is four u32 words, most significant first; IPv4 uses word 0
 * and leaves the others zero, so both families share the trie code.
 */
export type Family = 4 | 6;
export type Words = [number, number, number, number];

export interface Address {
  family: Family;
  words: Words;
}

export interface Prefix extends Address {
  length: number;
}

export const familyBits = (family: Family): number => (family === 4 ? 32 : 128);

const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

/** Dotted quad, strictly: four decimal octets 0-255, no leading zeros, nothing else. */
function parseIPv4Word(text: string): number | undefined {
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || ++dots > 3) return undefined;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && octet === 0) return undefined; // leading zero
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return undefined;
    } else {
      return undefined;
    }
  }
  if (dots !== 3 || digits === 0) return undefined;
  return (value * 256 + octet) >>> 0;
}

function parseIPv6Words(text: string): Words | undefined {
  if (text.length < 2 || text.length > 45) return undefined;
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const groupsOf = (part: string): number[] | undefined => {
    if (part === '') return [];
    const out: number[] = [];
    const items = part.split(':');
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      if (i === items.length - 1 && item.includes('.')) {
        const v4 = parseIPv4Word(item);
        if (v4 === undefined) return undefined;
        out.push(v4 >>> 16, v4 & 0xffff);
      } else {
        if (!HEX_GROUP.test(item)) return undefined;
        out.push(parseInt(item, 16));
      }
    }
    return out;
  };
  const head = groupsOf(halves[0]!);
  const tail = halves.length === 2 ? groupsOf(halves[1]!) : [];
  if (!head || !tail) return undefined;
  let groups: number[];
  if (halves.length === 2) {
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return undefined;
    groups = [...head, ...new Array<number>(missing).fill(0), ...tail];
  } else {
    groups = head;
  }
  if (groups.length !== 8) return undefined;
  const w = (i: number) => ((groups[2 * i]! << 16) | groups[2 * i + 1]!) >>> 0;
  return [w(0), w(1), w(2), w(3)];
}

/** Parses a plain IPv4 or IPv6 address (no zone index, no brackets). */
export function parseAddress(text: string): Address | undefined {
  if (text.includes(':')) {
    const words = parseIPv6Words(text);
    return words && { family: 6, words };
  }
  const v4 = parseIPv4Word(text);
  return v4 === undefined ? undefined : { family: 4, words: [v4, 0, 0, 0] };
}

/** Mask keeping the first `length` bits of word `i`. */
export function wordMask(length: number, i: number): number {
  const bits = Math.max(0, Math.min(32, length - 32 * i));
  return bits === 0 ? 0 : bits === 32 ? 0xffffffff : (0xffffffff << (32 - bits)) >>> 0;
}

/** PREFIX_MASKS[length * 4 + i] = wordMask(length, i), for hot loops. */
export const PREFIX_MASKS = new Uint32Array(129 * 4);
for (let length = 0; length <= 128; length++) for (let i = 0; i < 4; i++) PREFIX_MASKS[length * 4 + i] = wordMask(length, i);

/** Whether the prefix (words[at..at+4), length) contains the address other[ot..ot+4). */
export function prefixContains(words: ArrayLike<number>, at: number, length: number, other: ArrayLike<number>, ot: number): boolean {
  for (let i = 0; i < 4; i++) {
    const m = PREFIX_MASKS[length * 4 + i]!;
    if (m === 0) return true;
    if (((words[at + i]! ^ other[ot + i]!) & m) !== 0) return false;
  }
  return true;
}

export function maskWords(words: Words, length: number): Words {
  return [
    (words[0] & wordMask(length, 0)) >>> 0,
    (words[1] & wordMask(length, 1)) >>> 0,
    (words[2] & wordMask(length, 2)) >>> 0,
    (words[3] & wordMask(length, 3)) >>> 0,
  ];
}

export function isIPv4Mapped(words: Words): boolean {
  return words[0] === 0 && words[1] === 0 && words[2] === 0xffff;
}

export type PrefixProblem = 'syntax' | 'length' | 'host-bits' | 'ipv4-mapped';

/**
 * Parses `addr/len`, or a bare address as a host prefix when `allowBare`.
 * Host bits set, lengths beyond the family and IPv4-mapped IPv6 prefixes are
 * refused rather than silently fixed: a typo in a push must not move traffic.
 */
export function parsePrefix(text: string, allowBare = true): Prefix | PrefixProblem {
  const slash = text.indexOf('/');
  const address = parseAddress(slash < 0 ? text : text.slice(0, slash));
  if (!address) return 'syntax';
  let length = familyBits(address.family);
  if (slash >= 0) {
    // 0-128 in decimal, no sign, no leading zeros.
    const lenText = text.slice(slash + 1);
    if (lenText.length === 0 || lenText.length > 3 || (lenText.length > 1 && lenText.charCodeAt(0) === 48)) return 'syntax';
    length = 0;
    for (let i = 0; i < lenText.length; i++) {
      const c = lenText.charCodeAt(i) - 48;
      if (c < 0 || c > 9) return 'syntax';
      length = length * 10 + c;
    }
  } else if (!allowBare) {
    return 'syntax';
  }
  if (length > familyBits(address.family)) return 'length';
  const w = address.words;
  for (let i = 0; i < 4; i++) if (((w[i]! & ~wordMask(length, i)) >>> 0) !== 0) return 'host-bits';
  if (address.family === 6 && length >= 96 && isIPv4Mapped(w)) return 'ipv4-mapped';
  return { family: address.family, words: w, length };
}

/**
 * RFC 5952: the zero groups "::" stands for — the longest run of at least
 * two, the first on ties — as [start, length]; start -1 when there is none.
 */
export function longestZeroRun(groups: ArrayLike<number>): [number, number] {
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  return [bestStart, bestLength];
}

/** An address's text; `words` may be any array-like of them (one is enough for IPv4). */
export function formatAddress(family: Family, words: ArrayLike<number>): string {
  if (family === 4) {
    const w = words[0]!;
    return `${w >>> 24}.${(w >>> 16) & 255}.${(w >>> 8) & 255}.${w & 255}`;
  }
  const groups: number[] = [];
  for (let i = 0; i < 4; i++) groups.push(words[i]! >>> 16, words[i]! & 0xffff);
  const [bestStart, bestLen] = longestZeroRun(groups);
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`;
}

export function formatPrefix(p: Prefix): string {
  return `${formatAddress(p.family, p.words)}/${p.length}`;
}

/** Bits [pos, pos + count) of the address as an unsigned number (count ≤ 31). */
export function bitsAt(words: ArrayLike<number>, offset: number, pos: number, count: number): number {
  if (count === 0) return 0;
  const i = pos >>> 5;
  const shift = pos & 31;
  const first = words[offset + i]!;
  let value: number;
  if (shift + count <= 32) {
    value = (first << shift) >>> (32 - count);
  } else {
    const second = i + 1 < 4 ? words[offset + i + 1]! : 0;
    const fromFirst = 32 - shift;
    const rest = count - fromFirst;
    value = ((((first << shift) >>> shift) << rest) | (second >>> (32 - rest))) >>> 0;
  }
  return value >>> 0;
}
