/**
 * Our rules and sets as the tools write and print them: iptables-restore /
 * iptables-save lines and ipset restore / save lines. Rendering and parsing
 * are pure. Only our own objects are parsed back (chains we own, rules with
 * our hash comment, sets with our name prefix): iptables-save does not
 * round-trip other tools' rules, so we never interpret them.
 */
import crypto from 'node:crypto';
import type { Family } from '../net/address.js';
import { type Prefix, parsePrefix } from '../net/address.js';
import type { Protocol } from '../bindings/binding.js';
import type { PortRanges } from '../desired/state.js';
import { type Chain, type IpSet, type Rule, type SetEntry, MAIN_CHAIN, OWNED_SET, PROTOCOL_CHAIN, ipsetText } from './plan.js';
import { STRIDE, type Steps, runSync } from '../slice.js';

export const OUR_CHAINS: readonly string[] = [MAIN_CHAIN, PROTOCOL_CHAIN.tcp, PROTOCOL_CHAIN.udp];
/** The comment on INPUT's jump to our main chain. */
export const JUMP_COMMENT = 'sy:jump';

const formatPorts = (ranges: PortRanges) => ranges.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}:${hi}`)).join(',');

/** A rule's match and target, without the comment (what its hash covers). */
export function ruleBody(rule: Rule): string[] {
  const args: string[] = [];
  if (rule.protocol) args.push('-p', rule.protocol);
  if (rule.dports) {
    if (rule.dports.length === 1) args.push('-m', rule.protocol!, '--dport', formatPorts(rule.dports));
    else args.push('-m', 'multiport', '--dports', formatPorts(rule.dports));
  }
  if (rule.established) args.push('-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED');
  if (rule.set) args.push('-m', 'set', ...(rule.set.negate ? ['!'] : []), '--match-set', rule.set.name, 'dst');
  args.push('-j', rule.target);
  if (rule.rejectWith) args.push('--reject-with', rule.rejectWith);
  return args;
}

export interface RenderedRule {
  rule: Rule;
  hash: string;
  /** The iptables-restore line, `-A <chain> …`. */
  line: string;
}

/**
 * Each rule's comment carries a hash of its chain, its body and the hash of
 * the rule before it (as Felix does), so the list of hashes read back says
 * whether the whole chain, order included, is what we want.
 */
export function renderChain(chain: Chain): RenderedRule[] {
  let previous = chain.name;
  return chain.rules.map((rule) => {
    const body = ruleBody(rule);
    const hash = `sy:${crypto.createHash('sha256').update(`${previous}\n${body.join(' ')}`).digest('base64url').slice(0, 16)}`;
    previous = hash;
    const [head, tail] = [body.slice(0, body.indexOf('-j')), body.slice(body.indexOf('-j'))];
    return { rule, hash, line: ['-A', chain.name, ...head, '-m', 'comment', '--comment', hash, ...tail].join(' ') };
  });
}

/** Whitespace-separated words with double quotes removed (iptables-save quotes comments). */
function words(line: string): string[] {
  return (line.match(/"[^"]*"|\S+/g) ?? []).map((w) => (w.startsWith('"') ? w.slice(1, -1) : w));
}

function parsePortList(text: string): PortRanges | undefined {
  const out: Array<[number, number]> = [];
  for (const part of text.split(',')) {
    const m = /^(\d+)(?::(\d+))?$/.exec(part);
    if (!m) return undefined;
    out.push([Number(m[1]), Number(m[2] ?? m[1])]);
  }
  return out;
}

/** One of our rules from its iptables-save line; undefined when it is not in our grammar. */
export function parseRuleLine(line: string): { chain: string; rule: Rule; hash?: string } | undefined {
  const w = words(line);
  if (w[0] !== '-A' || !w[1]) return undefined;
  const rule: Rule = { target: '', why: 'read back' };
  let hash: string | undefined;
  for (let i = 2; i < w.length; i++) {
    const a = w[i]!;
    const next = () => w[++i];
    if (a === '-p') {
      const p = next();
      if (p !== 'tcp' && p !== 'udp') return undefined;
      rule.protocol = p as Protocol;
    } else if (a === '-m') {
      const module = next();
      if (!['tcp', 'udp', 'multiport', 'set', 'comment', 'conntrack'].includes(module ?? '')) return undefined;
    } else if (a === '--ctstate') {
      if (!/ESTABLISHED/.test(next() ?? '')) return undefined;
      rule.established = true;
    } else if (a === '--dport' || a === '--dports') {
      const ports = parsePortList(next() ?? '');
      if (!ports) return undefined;
      rule.dports = ports;
    } else if (a === '!' && w[i + 1] === '--match-set') {
      rule.set = { name: w[i + 2] ?? '', negate: true };
      i += 3;
    } else if (a === '--match-set') {
      rule.set = { name: next() ?? '', negate: false };
      i++; // "dst"
    } else if (a === '--comment') {
      hash = next();
    } else if (a === '-j') {
      rule.target = next() ?? '';
    } else if (a === '--reject-with') {
      rule.rejectWith = next() as Rule['rejectWith'];
    } else {
      return undefined;
    }
  }
  return { chain: w[1], rule, ...(hash ? { hash } : {}) };
}

export interface ObservedChain {
  name: string;
  /** Our hash comment per rule, in order ('' for a rule without one). */
  hashes: string[];
  /** The rules we could parse (all of them when the chain is intact). */
  rules: Rule[];
  /** Whether every rule parsed in our grammar. */
  parsed: boolean;
}

export interface ObservedRules {
  /** Our chains that exist. */
  chains: Map<string, ObservedChain>;
  /** 1-based positions in INPUT of rules that jump to our main chain. */
  jumps: number[];
}

/** Our chains and INPUT's jumps to them, from `iptables-save -t filter`. */
export function parseIptablesSave(text: string): ObservedRules {
  const chains = new Map<string, ObservedChain>();
  const jumps: number[] = [];
  let inputRules = 0;
  let inFilter = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) inFilter = line === '*filter';
    if (!inFilter) continue;
    const declared = /^:(\S+) /.exec(line);
    if (declared && OUR_CHAINS.includes(declared[1]!)) chains.set(declared[1]!, { name: declared[1]!, hashes: [], rules: [], parsed: true });
    if (!line.startsWith('-A ')) continue;
    const chainName = line.split(' ')[1]!;
    if (chainName === 'INPUT') {
      inputRules++;
      if (/ -j SWITCHYARD(\s|$)/.test(line)) jumps.push(inputRules);
      continue;
    }
    const chain = chains.get(chainName);
    if (!chain) continue;
    const parsed = parseRuleLine(line);
    chain.hashes.push(parsed?.hash ?? '');
    if (parsed) chain.rules.push(parsed.rule);
    else chain.parsed = false;
  }
  return { chains, jumps };
}

export interface ObservedSet {
  name: string;
  type: string;
  family: string;
  maxelem: number;
  /** Canonical entry texts (`prefix` or `prefix nomatch`), as read. */
  list: string[];
  /** Order-free digest of `list` (entryDigest summed), to find an unchanged set without building a Set. */
  digest: number;
  /** The entries as a Set, built on first use. */
  readonly entries: Set<string>;
  /** The same, built in slices (see slice.ts). */
  entriesSteps(): Steps<Set<string>>;
}

/** Two 32-bit FNV-1a hashes of an entry text, packed into 52 bits. */
export function entryDigest(text: string): number {
  let a = 0x811c9dc5;
  let b = 0x01000193;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
  }
  return (a >>> 0) * 0x100000 + ((b >>> 12) & 0xfffff);
}

/** Sum of entry digests modulo 2^52: the same for the same entries in any order. */
export function setDigest(texts: Iterable<string>): number {
  let sum = 0;
  for (const t of texts) sum = (sum + entryDigest(t)) % 0x10000000000000;
  return sum;
}

function observedSet(name: string, type: string, family: string, maxelem: number): ObservedSet {
  let entries: Set<string> | undefined;
  const set: ObservedSet = {
    name,
    type,
    family,
    maxelem,
    list: [],
    digest: 0,
    get entries(): Set<string> {
      entries ??= new Set(set.list);
      return entries;
    },
    *entriesSteps() {
      if (entries) return entries;
      // In slices: one `new Set` of a million strings holds the thread for a few hundred ms.
      const built = new Set<string>();
      for (let k = 0; k < set.list.length; k++) {
        if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
        built.add(set.list[k]!);
      }
      return (entries = built);
    },
  };
  return set;
}

export const entryText = (e: SetEntry) => (e.nomatch ? `${e.text ?? ipsetText(e.prefix)} nomatch` : (e.text ?? ipsetText(e.prefix)));

/**
 * An entry's text as we render it (ipsetText, plus " nomatch"). ipset prints
 * IPv4 and most IPv6 exactly so; only an IPv6 address with an embedded
 * dotted quad (glibc's form for ::a.b.c.d) needs parsing.
 */
function canonicalEntry(text: string): string | undefined {
  if (!(text.includes(':') && text.includes('.'))) return text;
  const [prefix, flag] = text.split(' ');
  const parsed = parsePrefix(prefix ?? '', true);
  if (typeof parsed === 'string') return undefined;
  return `${ipsetText(parsed)}${flag === 'nomatch' ? ' nomatch' : ''}`;
}

/** Our sets from `ipset save` (every set's lines; others' are skipped). */
export function parseIpsetSave(text: string): Map<string, ObservedSet> {
  return runSync(parseIpsetSaveSteps(text));
}

export function* parseIpsetSaveSteps(text: string): Steps<Map<string, ObservedSet>> {
  const sets = new Map<string, ObservedSet>();
  let current: ObservedSet | undefined;
  let at = 0;
  let lines = 0;
  while (at < text.length) {
    if ((++lines & (STRIDE - 1)) === 0) yield;
    let end = text.indexOf('\n', at);
    if (end < 0) end = text.length;
    const line = text.slice(at, end);
    at = end + 1;
    if (line.startsWith('add ')) {
      // Lines of one set come together: check the name without splitting.
      const nameEnd = line.indexOf(' ', 4);
      if (!current || line.slice(4, nameEnd) !== current.name) current = sets.get(line.slice(4, nameEnd));
      if (!current) continue;
      const raw = line.slice(nameEnd + 1);
      const entry = canonicalEntry(raw) ?? `unparsed ${raw}`;
      current.list.push(entry);
      current.digest = (current.digest + entryDigest(entry)) % 0x10000000000000;
    } else if (line.startsWith('create ')) {
      const w = line.split(' ');
      if (!OWNED_SET.test(w[1] ?? '')) continue;
      const option = (key: string) => w[w.indexOf(key) + 1] ?? '';
      current = observedSet(w[1]!, w[2] ?? '', option('family'), Number(option('maxelem')) || 65536);
      sets.set(current.name, current);
    }
  }
  return sets;
}

export const ipsetFamily = (family: Family) => (family === 4 ? 'inet' : 'inet6');

/** maxelem with room to grow, so a set is not rebuilt for every few additions. */
export function maxelemFor(count: number): number {
  let m = 65536;
  while (m < count * 1.25) m *= 2;
  return m;
}

export function createLine(set: Pick<IpSet, 'name' | 'family'>, count: number, name = set.name): string {
  const hashsize = Math.max(1024, 2 ** Math.ceil(Math.log2(Math.max(1, count / 4))));
  return `create ${name} hash:net family ${ipsetFamily(set.family)} hashsize ${hashsize} maxelem ${maxelemFor(count)}`;
}

/** Our chains and sets of one family as read back, in the form `evaluate` runs. */
export function observedRuleSet(rules: ObservedRules, sets: Map<string, ObservedSet>, family: Family): { family: Family; chains: Chain[]; sets: Array<Pick<IpSet, 'name' | 'entries'>> } {
  const entriesOf = (set: ObservedSet): SetEntry[] =>
    [...set.entries].flatMap((text) => {
      const [prefix, flag] = text.split(' ');
      const parsed = parsePrefix(prefix ?? '', true);
      return typeof parsed === 'string' ? [] : [{ prefix: parsed as Prefix, nomatch: flag === 'nomatch' }];
    });
  return {
    family,
    chains: [...rules.chains.values()].map((c) => ({ name: c.name, rules: c.rules })),
    sets: [...sets.values()].filter((s) => s.family === ipsetFamily(family)).map((s) => ({ name: s.name, entries: entriesOf(s) })),
  };
}
