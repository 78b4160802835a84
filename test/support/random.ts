/** Deterministic random binding sets and queries for tests and benchmarks. */
import { BindingTable, type Protocol } from '../../src/bindings/binding.js';
import { type Address, type Family, type Words, maskWords } from '../../src/net/address.js';

export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const PORTS = [0, 0, 80, 443, 53, 8080];
const LABELS = ['cdn', 'spectrum', 'dns', 'api', 'tls', 'mail'];

const u32 = (r: () => number) => Math.floor(r() * 4294967296) >>> 0;

/** Addresses clustered under a few bases, so prefixes nest and overlap. */
function randomWords(r: () => number, family: Family, bases: Words[]): Words {
  const base = bases[Math.floor(r() * bases.length)]!;
  if (family === 4) return [((base[0] & 0xfff00000) | (u32(r) & 0xfffff)) >>> 0, 0, 0, 0];
  return [base[0], r() < 0.8 ? base[1] : u32(r), u32(r), u32(r)];
}

function randomLength(r: () => number, family: Family): number {
  const x = r();
  // A few very short prefixes (they cover everything below them), mostly
  // hosts, /24s (/48s) and a spread of lengths in between.
  if (family === 4) return x < 0.3 ? 32 : x < 0.5 ? 24 : x < 0.52 ? Math.floor(r() * 12) : 12 + Math.floor(r() * 21);
  return x < 0.3 ? 128 : x < 0.5 ? 48 : x < 0.6 ? 32 : x < 0.62 ? Math.floor(r() * 16) : 16 + Math.floor(r() * 113);
}

export interface RandomSet {
  table: BindingTable;
  bases: { 4: Words[]; 6: Words[] };
}

export function randomBindings(seed: number, count: number, families: Family[] = [4, 6]): RandomSet {
  const r = rng(seed);
  const bases = {
    4: Array.from({ length: 8 }, () => [u32(r), 0, 0, 0] as Words),
    6: Array.from({ length: 8 }, () => [(0x20010000 | (u32(r) & 0xffff)) >>> 0, u32(r), 0, 0] as Words),
  };
  const table = new BindingTable(count);
  const seen = new Set<string>();
  let attempts = 0;
  while (table.count < count && attempts++ < count * 10) {
    const family = families[Math.floor(r() * families.length)]!;
    const length = randomLength(r, family);
    let words = maskWords(randomWords(r, family, bases[family]), length);
    if (family === 6 && length >= 96 && words[0] === 0 && words[1] === 0 && words[2] === 0xffff) continue;
    const protocol: Protocol = r() < 0.7 ? 'tcp' : 'udp';
    const port = PORTS[Math.floor(r() * PORTS.length)]!;
    const key = `${protocol}|${family}|${length}|${port}|${words.join('.')}`;
    if (seen.has(key)) continue;
    seen.add(key);
    words = [...words] as Words;
    table.add(LABELS[Math.floor(r() * LABELS.length)]!, protocol, { family, words, length }, port);
  }
  return { table, bases };
}

export interface Query {
  protocol: Protocol;
  address: Address;
  port: number;
}

/** Near bound prefixes (hits, with random host bits), near the clusters, and anywhere (mostly misses). */
export function randomQueries(seed: number, set: RandomSet, count: number): Query[] {
  const r = rng(seed);
  const out: Query[] = [];
  const { table } = set;
  for (let k = 0; k < count; k++) {
    let family: Family;
    let words: Words;
    const kind = r();
    if (kind < 0.2) {
      family = r() < 0.5 ? 4 : 6;
      words = family === 4 ? [u32(r), 0, 0, 0] : [u32(r), u32(r), u32(r), u32(r)];
    } else if (kind < 0.6 && table.count > 0) {
      const i = Math.floor(r() * table.count);
      const p = table.prefix(i);
      family = p.family;
      const noise: Words = family === 4 ? [u32(r), 0, 0, 0] : [u32(r), u32(r), u32(r), u32(r)];
      const keep = maskWords(p.words, p.length);
      const mask = maskWords([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], p.length);
      words = keep.map((w, j) => ((w | (noise[j]! & ~mask[j]!)) >>> 0)) as Words;
    } else {
      family = r() < 0.5 ? 4 : 6;
      words = randomWords(r, family, set.bases[family]);
    }
    const protocol: Protocol = r() < 0.7 ? 'tcp' : 'udp';
    const port = r() < 0.1 ? Math.floor(r() * 65536) : PORTS[Math.floor(r() * PORTS.length)]!;
    out.push({ protocol, address: { family, words }, port });
  }
  return out;
}
