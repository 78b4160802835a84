/**
 * Binding sets for the benchmarks (dataplane.md, "How to measure fairly"):
 * dense [0,N) /32, uniform random /32, BGP-shaped IPv4, a real-derived table
 * (RouteViews-derived ranges from @ip-location-db/asn, decomposed into
 * prefixes) and an IPv6 mix. Half the bindings on a specific port, half on
 * port 0. Labels are spread over a few dozen destinations.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { BindingTable, type Protocol } from '../src/bindings/binding.js';
import { type Family, type Words, maskWords } from '../src/net/address.js';
import { rng } from '../test/support/random.js';

export type SetName = 'dense' | 'random' | 'bgp' | 'real' | 'real6' | 'ipv6';
export const PORTS = [80, 443, 8080, 8443];
const LABELS = Array.from({ length: 48 }, (_, i) => `svc${i}`);

const u32 = (r: () => number) => Math.floor(r() * 4294967296) >>> 0;

export interface SetOptions {
  /**
   * Every binding on this protocol (the real-traffic benchmark sends UDP and
   * wants the whole set in the trie it walks). The random draws stay the same,
   * so the prefixes, ports and labels follow the default set's, except where
   * two of them now collide and another is drawn.
   */
  protocol?: Protocol;
}

/** Adds prefixes from `next` until `count` distinct bindings exist. */
function fill(count: number, seed: number, next: (r: () => number, i: number) => { family: Family; words: Words; length: number } | undefined, options: SetOptions = {}): BindingTable {
  const r = rng(seed);
  const table = new BindingTable(count);
  const seen = new Set<string>();
  for (let i = 0; table.count < count; i++) {
    const p = next(r, i);
    if (!p) break;
    const words = maskWords(p.words, p.length);
    // Half on port 0, half on one of a few service ports.
    const port = table.count % 2 === 0 ? 0 : PORTS[Math.floor(r() * PORTS.length)]!;
    const drawn: Protocol = r() < 0.9 ? 'tcp' : 'udp';
    const protocol = options.protocol ?? drawn;
    const key = `${protocol}${words.join('.')}/${p.length}:${port}`;
    if (seen.has(key)) continue;
    seen.add(key);
    table.add(LABELS[Math.floor(r() * LABELS.length)]!, protocol, { family: p.family, words, length: p.length }, port);
  }
  return table;
}

function bgpLength(r: () => number): number {
  const x = r();
  if (x < 0.58) return 24;
  if (x < 0.68) return 23;
  if (x < 0.8) return 22;
  if (x < 0.85) return 21;
  if (x < 0.895) return 20;
  if (x < 0.99) return 16 + Math.floor(r() * 4);
  return 8 + Math.floor(r() * 8);
}

/** IPv4 ranges from RouteViews (via @ip-location-db/asn) as CIDR prefixes. */
function* realPrefixes(family: Family): Generator<{ words: Words; length: number }> {
  const require = createRequire(import.meta.url);
  const dir = path.dirname(require.resolve('@ip-location-db/asn/package.json'));
  const file = path.join(dir, family === 4 ? 'asn-ipv4-num.csv' : 'asn-ipv6-num.csv');
  const bits = family === 4 ? 32 : 128;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line) continue;
    const [a, b] = line.split(',');
    let start = BigInt(a!);
    const end = BigInt(b!);
    while (start <= end) {
      // The largest aligned block starting at `start` that fits in the range.
      let size = 0;
      while (size < bits && ((start >> BigInt(size)) & 1n) === 0n && start + (1n << BigInt(size + 1)) - 1n <= end) size++;
      const words: Words =
        family === 4
          ? [Number(start), 0, 0, 0]
          : [Number((start >> 96n) & 0xffffffffn), Number((start >> 64n) & 0xffffffffn), Number((start >> 32n) & 0xffffffffn), Number(start & 0xffffffffn)];
      yield { words, length: bits - size };
      start += 1n << BigInt(size);
    }
  }
}

const realCache = new Map<Family, Array<{ words: Words; length: number }>>();
/** Every real-derived prefix of a family (IPv4: about 0.6 M, IPv6: about 0.2 M). */
export function realPrefixes4or6(family: Family): Array<{ words: Words; length: number }> {
  let list = realCache.get(family);
  if (!list) {
    list = [...realPrefixes(family)];
    realCache.set(family, list);
  }
  return list;
}

export function makeSet(name: SetName, count: number, seed = 1, options: SetOptions = {}): BindingTable {
  switch (name) {
    case 'dense':
      return fill(count, seed, (_r, i) => ({ family: 4, words: [(0x0a000000 + i) >>> 0, 0, 0, 0], length: 32 }), options);
    case 'random':
      return fill(count, seed, (r) => ({ family: 4, words: [u32(r), 0, 0, 0], length: 32 }), options);
    case 'bgp':
      return fill(count, seed, (r) => ({ family: 4, words: [u32(r), 0, 0, 0], length: bgpLength(r) }), options);
    case 'real':
    case 'real6': {
      const family: Family = name === 'real' ? 4 : 6;
      const all = realPrefixes4or6(family);
      return fill(Math.min(count, all.length), seed, (_r, i) => (i < all.length ? { family, ...all[i]! } : undefined), options);
    }
    case 'ipv6': {
      // Provider space (/32-/48 under 2000::/3) and /128 hosts inside it.
      const providers: Words[] = [];
      return fill(count, seed, (r) => {
        if (providers.length < 4096 || r() < 0.3) {
          const words: Words = [(0x20000000 | (u32(r) & 0x1fffffff)) >>> 0, u32(r), 0, 0];
          if (providers.length < 65536) providers.push(words);
          return { family: 6, words, length: 32 + Math.floor(r() * 17) };
        }
        const p = providers[Math.floor(r() * providers.length)]!;
        return { family: 6, words: [p[0], (p[1] & 0xffff0000) | (u32(r) & 0xffff), u32(r), u32(r)], length: 128 };
      }, options);
    }
  }
}

export const familyOf = (name: SetName): Family => (name === 'ipv6' || name === 'real6' ? 6 : 4);
