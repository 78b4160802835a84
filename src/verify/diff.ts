/**
 * The semantic difference of two desired states: exactly which (protocol,
 * addresses, ports) change hands, from which service to which, computed
 * from the precedence rules (sweep.ts), not by sampling. Bindings that move
 * without changing any verdict (a /24 split into two /25s of the same
 * label) produce nothing; a /32 carved out of a /24 produces one address.
 *
 * Each entry is a range of addresses of one family and protocol, the ports
 * it holds for, and the labels before and after (null: unbound, left to
 * the kernel's own lookup). Ranges of each port class are coalesced; the
 * same range changing the same way on several classes is one entry whose
 * port set is their union ("all ports" when it covers them all).
 */
import { type Family, type Words, formatAddress } from '../net/address.js';
import { type DesiredState, type PortRanges, normalizeRanges } from '../desired/state.js';
import { BindingTable } from '../bindings/binding.js';
import { NONE, type Runs, runsOf, sharedLabels, sweepClass } from './sweep.js';

export interface DiffEntry {
  protocol: 'tcp' | 'udp';
  family: Family;
  first: string;
  last: string;
  /** The range as one prefix, when it is one. */
  prefix: string | null;
  addresses: bigint;
  ports: PortRanges;
  from: string | null;
  to: string | null;
}

export interface DiffSummary {
  from: string | null;
  to: string | null;
  protocol: 'tcp' | 'udp';
  family: Family;
  ports: PortRanges;
  addresses: bigint;
  text: string;
}

export interface SemanticDiff {
  entries: DiffEntry[];
  summary: DiffSummary[];
}

/** [0, 65535] without `ranges` (sorted, disjoint). */
function complement(ranges: PortRanges): PortRanges {
  const out: Array<[number, number]> = [];
  let from = 0;
  for (const [a, b] of ranges) {
    if (a > from) out.push([from, a - 1]);
    from = b + 1;
  }
  if (from <= 65535) out.push([from, 65535]);
  return out;
}

const rangesText = (ports: PortRanges) => ports.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(', ');

/** "all tcp ports", "tcp port 443", "tcp ports other than 53, 80, 443". */
export function describePorts(protocol: string, ports: PortRanges): string {
  if (ports.length === 1 && ports[0]![0] === 0 && ports[0]![1] === 65535) return `all ${protocol} ports`;
  const count = ports.reduce((n, [a, b]) => n + b - a + 1, 0);
  if (count > 32768) return `${protocol} ports other than ${rangesText(complement(ports))}`;
  return `${protocol} port${count === 1 ? '' : 's'} ${rangesText(ports)}`;
}

function toBigInt(w: ArrayLike<number>, words: number): bigint {
  let v = 0n;
  for (let i = 0; i < words; i++) v = (v << 32n) | BigInt(w[i]!);
  return v;
}

/** The prefix [first, last] is, if it is one. */
function asPrefix(family: Family, first: bigint, last: bigint): string | null {
  const size = last - first + 1n;
  if ((size & (size - 1n)) !== 0n || first % size !== 0n) return null;
  const bits = family === 4 ? 32 : 128;
  const length = bits - (size.toString(2).length - 1);
  return `${formatAddress(family, wordsOf(family, first))}/${length}`;
}

function wordsOf(family: Family, v: bigint): Words {
  if (family === 4) return [Number(v), 0, 0, 0];
  return [Number((v >> 96n) & 0xffffffffn), Number((v >> 64n) & 0xffffffffn), Number((v >> 32n) & 0xffffffffn), Number(v & 0xffffffffn)];
}

/** Changed ranges of one class, coalesced: flat arrays of words, and the labels. */
class Ranges {
  readonly first: number[] = [];
  readonly last: number[] = [];
  readonly from: number[] = [];
  readonly to: number[] = [];
  constructor(private readonly words: number) {}
  get length() {
    return this.from.length;
  }
  add(first: Uint32Array, last: Uint32Array, from: number, to: number): void {
    const n = this.from.length;
    const w = this.words;
    if (n > 0 && this.from[n - 1] === from && this.to[n - 1] === to && follows(this.last, (n - 1) * w, first, w)) {
      for (let i = 0; i < w; i++) this.last[(n - 1) * w + i] = last[i]!;
      return;
    }
    for (let i = 0; i < w; i++) this.first.push(first[i]!);
    for (let i = 0; i < w; i++) this.last.push(last[i]!);
    this.from.push(from);
    this.to.push(to);
  }
}

/** Whether `next` is the address right after list[at..at+w). */
function follows(list: number[], at: number, next: Uint32Array, w: number): boolean {
  let carry = 1;
  for (let i = w - 1; i >= 0; i--) {
    const sum = list[at + i]! + carry;
    const word = sum > 0xffffffff ? 0 : sum;
    carry = sum > 0xffffffff ? 1 : 0;
    if (word !== next[i]) return false;
  }
  return carry === 0;
}

/** The exact semantic difference of `before` → `after` (bindings only: policies and HTTPS-only ranges change verdicts in the firewall, not who gets the traffic). */
export function semanticDiff(before: DesiredState, after: DesiredState): SemanticDiff {
  return diffTables(before.bindings, after.bindings);
}

export function diffTables(before: BindingTable, after: BindingTable): SemanticDiff {
  const { labels, ids } = sharedLabels(before, after);
  const runsBefore = runsOf(before);
  const runsAfter = runsOf(after);
  const keys = [...new Set([...runsBefore.keys(), ...runsAfter.keys()])].sort();
  const entries: DiffEntry[] = [];
  for (const key of keys) {
    const [f, protocol] = key.split(' ') as [string, 'tcp' | 'udp'];
    const family = Number(f) as Family;
    const words = family === 4 ? 1 : 4;
    const rb = runsBefore.get(key);
    const ra = runsAfter.get(key);
    const exact = [...new Set([...portsOf(rb), ...portsOf(ra)])].filter((p) => p !== 0).sort((a, b) => a - b);
    // Per range and change: the ports it holds on (a class's ranges never overlap each other).
    const merged = new Map<string, { first: number[]; last: number[]; from: number; to: number; ports: Array<readonly [number, number]> }>();
    for (const port of [0, ...exact]) {
      const ranges = new Ranges(words);
      sweepClass(family, port, { table: before, runs: rb, labelIds: ids[0] }, { table: after, runs: ra, labelIds: ids[1] }, { changed: (a, b, from, to) => ranges.add(a, b, from, to) });
      const ports = port === 0 ? complement(exact.map((p) => [p, p] as const)) : [[port, port] as const];
      if (ports.length === 0) continue;
      for (let i = 0; i < ranges.length; i++) {
        const first = ranges.first.slice(i * words, (i + 1) * words);
        const last = ranges.last.slice(i * words, (i + 1) * words);
        const k = `${first.join('.')}-${last.join('.')} ${ranges.from[i]} ${ranges.to[i]}`;
        const m = merged.get(k);
        if (m) m.ports.push(...ports);
        else merged.set(k, { first, last, from: ranges.from[i]!, to: ranges.to[i]!, ports: [...ports] });
      }
    }
    // By first address within the (family, protocol), whose keys come sorted.
    const block: Array<{ entry: DiffEntry; at: bigint }> = [];
    for (const m of merged.values()) {
      const first = toBigInt(m.first, words);
      const last = toBigInt(m.last, words);
      block.push({
        at: first,
        entry: {
          protocol,
          family,
          first: formatAddress(family, m.first),
          last: formatAddress(family, m.last),
          prefix: asPrefix(family, first, last),
          addresses: last - first + 1n,
          ports: normalizeRanges(m.ports),
          from: m.from === NONE ? null : labels[m.from]!,
          to: m.to === NONE ? null : labels[m.to]!,
        },
      });
    }
    for (const b of block.sort((x, y) => (x.at < y.at ? -1 : x.at > y.at ? 1 : 0))) entries.push(b.entry);
  }
  return { entries, summary: summarize(entries) };
}

function portsOf(runs: Runs | undefined): number[] {
  return runs ? [...runs.keys()] : [];
}

/** Per (from, to, protocol, family, ports): the addresses that move, as a sentence. */
function summarize(entries: DiffEntry[]): DiffSummary[] {
  const groups = new Map<string, DiffSummary>();
  for (const e of entries) {
    const k = `${e.from ?? ''}\u0000${e.to ?? ''}\u0000${e.protocol}\u0000${e.family}\u0000${rangesText(e.ports)}`;
    const g = groups.get(k);
    if (g) g.addresses += e.addresses;
    else groups.set(k, { from: e.from, to: e.to, protocol: e.protocol, family: e.family, ports: e.ports, addresses: e.addresses, text: '' });
  }
  const out = [...groups.values()];
  for (const g of out) {
    const what = `${g.addresses} IPv${g.family} address${g.addresses === 1n ? '' : 'es'} on ${describePorts(g.protocol, g.ports)}`;
    g.text = g.from && g.to ? `${g.from} loses ${what} to ${g.to}` : g.to ? `${g.to} gains ${what} (unbound before)` : `${g.from} loses ${what} (unbound after)`;
  }
  return out.sort((a, b) => (a.addresses > b.addresses ? -1 : a.addresses < b.addresses ? 1 : 0));
}
