/**
 * The firewall's desired state, rendered from the desired-state document by a
 * pure function (no I/O): ipsets and the rules of the chains we own, per
 * family. The verdicts follow the dispatcher's precedence exactly
 * (system.md): a packet to (protocol, address, port) is
 *
 *   reject  if the address is in an HTTPS-only range and the port is plaintext
 *           (TCP: reset, UDP: ICMP port unreachable), whatever is bound there;
 *   accept  if the binding the dispatcher picks belongs to a service whose
 *           policy allows that protocol and port;
 *   drop    otherwise, if the address is in any bound prefix of its family;
 *   pass    (left to the rest of INPUT) if it is not ours at all.
 * These are the verdicts of new flows: packets of established flows to bound
 * addresses (replies included) are accepted after the HTTPS-only rejects.
 *
 * Longest-prefix precedence is expressed with ipset `hash:net` `nomatch`
 * entries (a set matches by its most specific entry), so carving a /32 out of
 * a /24 is one more entry, not a split into disjoint CIDRs. Per family and
 * protocol:
 *   - per port that has exact-port bindings, an accept set (where the
 *     binding picked for that port is an exact-port one whose service
 *     allows the port) and a deny set (picked, exact-port, not allowed);
 *     where an any-port binding wins, neither matches and the packet goes on;
 *   - per service with any-port bindings, a set of the addresses where the
 *     longest any-port binding is that service's, matched with its ports;
 *   - then, back in the main chain, a drop for every other packet to a
 *     bound address (there so that a flushed protocol chain fails closed).
 * Rules stay few (they do not grow with the bindings); sets grow.
 */
import crypto from 'node:crypto';
import { type Family, type Prefix, PREFIX_MASKS, familyBits, formatAddress, formatPrefix, prefixContains } from '../net/address.js';
import { IPPROTO, type Protocol } from '../bindings/binding.js';
import { type DesiredState, type PortRanges, allowedPorts, rangesContain } from '../desired/state.js';
import { STRIDE, type Steps, runSync, sortSteps } from '../slice.js';

export const MAIN_CHAIN = 'SWITCHYARD';
export const PROTOCOL_CHAIN: Record<Protocol, string> = { tcp: 'SWITCHYARD-TCP', udp: 'SWITCHYARD-UDP' };
/** Every set we own starts with this (s[yx] + family + '-'); sx… are temporaries for swaps. */
export const OWNED_SET = /^s[yx][46]-/;
/** ipset's limit on set names. */
const SET_NAME_MAX = 31;
/** iptables' multiport match takes at most 15 ports, a range counting as two. */
const MULTIPORT_SLOTS = 15;

export type Verdict = 'accept' | 'drop' | 'reject' | 'pass';

export interface SetEntry {
  prefix: Prefix;
  nomatch: boolean;
  /** ipsetText(prefix), when the planner already has it. */
  text?: string;
}

export interface IpSet {
  name: string;
  family: Family;
  entries: SetEntry[];
  /** What the set stands for, for status output and errors. */
  purpose: string;
  /** Port sets are left out when empty (and so is their rule). */
  optional?: boolean;
}

export type RuleTarget = 'ACCEPT' | 'DROP' | 'RETURN' | 'REJECT' | string;

export interface Rule {
  protocol?: Protocol;
  /** Destination ports; absent means any. */
  dports?: PortRanges;
  set?: { name: string; negate: boolean };
  /** Matches only packets of connections conntrack already knows (replies, established flows). */
  established?: boolean;
  target: RuleTarget;
  rejectWith?: 'tcp-reset' | 'icmp-port-unreachable' | 'icmp6-port-unreachable';
  /** Why the rule exists, for errors that map a failed line back to it. */
  why: string;
}

export interface Chain {
  name: string;
  rules: Rule[];
}

export interface FamilyPlan {
  family: Family;
  /** Main chain first: the one INPUT jumps to. */
  chains: Chain[];
  sets: IpSet[];
}

export interface FirewallPlan {
  families: [FamilyPlan, FamilyPlan];
}

const setPrefix = (family: Family) => `sy${family}-`;

/** A prefix as `ipset save` prints it (a host without its length), so read-back compares text. */
export const ipsetText = (p: Prefix): string => (p.length === familyBits(p.family) ? formatAddress(p.family, p.words) : formatPrefix(p));

/** Set names carry the label when it fits and a hash of it when it does not. */
function labelSetName(family: Family, protocol: Protocol, label: string): string {
  const head = `${setPrefix(family)}${protocol}-l-`;
  if (head.length + label.length <= SET_NAME_MAX) return head + label;
  const hash = crypto.createHash('sha256').update(label).digest('hex').slice(0, 8);
  return `${head}${label.slice(0, SET_NAME_MAX - head.length - 9)}-${hash}`;
}

export const managedSetName = (family: Family) => `${setPrefix(family)}managed`;
export const httpsOnlySetName = (family: Family) => `${setPrefix(family)}https`;
const portSetName = (family: Family, protocol: Protocol, port: number) => `${setPrefix(family)}${protocol}-p${port}`;
const portDenySetName = (family: Family, protocol: Protocol, port: number) => `${setPrefix(family)}${protocol}-x${port}`;
/** The temporary a set is filled in before a swap: same length, still ours. */
export const temporarySetName = (name: string) => `sx${name.slice(2)}`;

export function compareAddresses(a: Prefix, b: Prefix): number {
  for (let i = 0; i < 4; i++) if (a.words[i] !== b.words[i]) return a.words[i]! < b.words[i]! ? -1 : 1;
  return a.length - b.length;
}

export function contains(outer: Prefix, inner: Prefix): boolean {
  return outer.length <= inner.length && prefixContains(outer.words, 0, outer.length, inner.words, 0);
}

/** hash:net cannot hold a /0: it becomes its two /1 halves (unless a half is itself listed). */
function* withoutZeroLength<T extends { prefix: Prefix }>(items: T[]): Steps<T[]> {
  const out: T[] = [];
  const listed = new Set(items.filter((i) => i.prefix.length === 1).map((i) => formatPrefix(i.prefix)));
  for (let k = 0; k < items.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    const item = items[k]!;
    if (item.prefix.length !== 0) {
      out.push(item);
      continue;
    }
    for (const words of [[0, 0, 0, 0], [0x80000000, 0, 0, 0]]) {
      const half: Prefix = { family: item.prefix.family, words: words as Prefix['words'], length: 1 };
      if (!listed.has(formatPrefix(half))) out.push({ ...item, prefix: half });
    }
  }
  return out;
}

/**
 * The fewest hash:net entries whose most-specific-match equals `verdict` for
 * every address, given each listed prefix's verdict (the longest listed
 * prefix containing an address decides; no listed prefix means no match).
 * An entry is needed only where its verdict differs from what encloses it.
 */
export function lpmEntries<T extends { prefix: Prefix; text?: string }>(items: T[], verdict: (item: T) => boolean, presorted = false): SetEntry[] {
  return lpmClasses(items, (item) => (verdict(item) ? 0 : -1), 1, presorted)[0]!;
}

export function lpmClasses<T extends { prefix: Prefix; text?: string }>(items: T[], classOf: (item: T) => number, classes: number, presorted = false): SetEntry[][] {
  return runSync(lpmClassesSteps(items, classOf, classes, presorted));
}

const byAddress = (a: { prefix: Prefix }, b: { prefix: Prefix }) => compareAddresses(a.prefix, b.prefix);

/**
 * lpmEntries for several sets in one sweep, when each item belongs to at
 * most one of them (`classOf`: its set's index, or -1): set k's verdict for
 * an item is "its class is k". An item needs an entry in its own set and a
 * nomatch in its enclosing item's set exactly when the two classes differ.
 */
export function* lpmClassesSteps<T extends { prefix: Prefix; text?: string }>(items: T[], classOf: (item: T) => number, classes: number, presorted = false): Steps<SetEntry[][]> {
  // Callers that sorted once for many sets pass presorted (and no /0 among them).
  const sorted = presorted ? items : yield* sortSteps(yield* withoutZeroLength(items), byAddress);
  const entries: SetEntry[][] = Array.from({ length: classes }, () => []);
  const stack: Prefix[] = [];
  const enclosingClass: number[] = [];
  const entry = (item: T, nomatch: boolean): SetEntry => (item.text === undefined ? { prefix: item.prefix, nomatch } : { prefix: item.prefix, nomatch, text: item.text });
  for (let k = 0; k < sorted.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    const item = sorted[k]!;
    const p = item.prefix;
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      // contains(top, p), inlined: this loop runs for every item of every set.
      if (top.length <= p.length) {
        const m = top.length * 4;
        if (
          ((top.words[0] ^ p.words[0]) & PREFIX_MASKS[m]!) === 0 &&
          ((top.words[1] ^ p.words[1]) & PREFIX_MASKS[m + 1]!) === 0 &&
          ((top.words[2] ^ p.words[2]) & PREFIX_MASKS[m + 2]!) === 0 &&
          ((top.words[3] ^ p.words[3]) & PREFIX_MASKS[m + 3]!) === 0
        )
          break;
      }
      stack.pop();
      enclosingClass.pop();
    }
    const enclosing = enclosingClass.length > 0 ? enclosingClass[enclosingClass.length - 1]! : -1;
    const c = classOf(item);
    if (c !== enclosing) {
      if (c >= 0) entries[c]!.push(entry(item, false));
      if (enclosing >= 0) entries[enclosing]!.push(entry(item, true));
    }
    stack.push(p);
    enclosingClass.push(c);
  }
  return entries;
}

/** Prefixes with the ones inside another dropped (a plain, all-match set). */
function* outermost(items: Array<{ prefix: Prefix; text?: string }>, presorted = false): Steps<SetEntry[]> {
  return (yield* lpmClassesSteps(items, () => 0, 1, presorted))[0]!;
}

/** Ranges as multiport chunks of at most 15 slots (a range takes two). */
function portChunks(ranges: PortRanges): PortRanges[] {
  if (ranges.length === 1 && ranges[0]![0] === 1 && ranges[0]![1] === 65535) return [[]];
  const chunks: Array<Array<readonly [number, number]>> = [];
  let current: Array<readonly [number, number]> = [];
  let slots = 0;
  for (const r of ranges) {
    const cost = r[0] === r[1] ? 1 : 2;
    if (slots + cost > MULTIPORT_SLOTS) {
      chunks.push(current);
      current = [];
      slots = 0;
    }
    current.push(r);
    slots += cost;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

/** One rule per chunk of ports (an empty chunk list means no rule; [[]] means any port). */
function perPortChunk(ranges: PortRanges, make: (dports: PortRanges | undefined) => Rule): Rule[] {
  if (ranges.length === 0) return [];
  return portChunks(ranges).map((chunk) => make(chunk.length === 0 ? undefined : chunk));
}

export interface Bound {
  prefix: Prefix;
  text: string;
  label: string;
  port: number;
}

const samePrefix = (a: Prefix, b: Prefix) =>
  a.length === b.length && a.words[0] === b.words[0] && a.words[1] === b.words[1] && a.words[2] === b.words[2] && a.words[3] === b.words[3];

/** What the rules depend on, per protocol: the ports with exact-port bindings, the labels with any-port ones. */
export interface Skeleton {
  exactPorts: Record<Protocol, number[]>;
  labels: Record<Protocol, string[]>;
}

/** A family's bindings as the planner sweeps them: sorted by address, then length. */
export type PlanItem = Bound & { tcp: boolean };

export function skeletonOf(items: PlanItem[]): Skeleton {
  return runSync(skeletonSteps(items));
}

export function* skeletonSteps(items: PlanItem[]): Steps<Skeleton> {
  const ports = { tcp: new Set<number>(), udp: new Set<number>() };
  const labels = { tcp: new Set<string>(), udp: new Set<string>() };
  for (let k = 0; k < items.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    const b = items[k]!;
    const p = b.tcp ? 'tcp' : 'udp';
    if (b.port === 0) labels[p].add(b.label);
    else ports[p].add(b.port);
  }
  const sortedPorts = (x: Set<number>) => [...x].sort((a, b) => a - b);
  return { exactPorts: { tcp: sortedPorts(ports.tcp), udp: sortedPorts(ports.udp) }, labels: { tcp: [...labels.tcp].sort(), udp: [...labels.udp].sort() } };
}

export function familySets(state: DesiredState, family: Family, items: PlanItem[], presorted: boolean, skeleton: Skeleton): IpSet[] {
  return runSync(familySetsSteps(state, family, items, presorted, skeleton));
}

/**
 * Every set of one family for `items` (sorted; `presorted` also says there
 * is no /0), shaped by `skeleton`: port sets come out even when empty, so a
 * region's sets (incremental.ts) line up with the whole state's.
 */
export function* familySetsSteps(state: DesiredState, family: Family, items: PlanItem[], presorted: boolean, skeleton: Skeleton): Steps<IpSet[]> {
  const sets: IpSet[] = [
    { name: managedSetName(family), family, entries: yield* outermost(items, presorted), purpose: 'every bound prefix (traffic outside them is not ours)' },
  ];
  // Typed words, as the bindings' (incremental.ts compares entries of every set; one representation keeps that fast).
  const httpsPrefixes = state.httpsOnly.prefixes
    .filter((p) => p.family === family)
    .map((p): Prefix => ({ ...p, words: Uint32Array.from(p.words) as unknown as Prefix['words'] }));
  if (httpsPrefixes.length > 0) {
    sets.push({ name: httpsOnlySetName(family), family, entries: yield* outermost(httpsPrefixes.map((prefix) => ({ prefix }))), purpose: 'HTTPS-only ranges' });
  }
  for (const protocol of ['tcp', 'udp'] as const) {
    const tcp = protocol === 'tcp';
    const bound: PlanItem[] = [];
    for (let k = 0; k < items.length; k++) {
      if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
      if (items[k]!.tcp === tcp) bound.push(items[k]!);
    }
    for (const port of skeleton.exactPorts[protocol]) {
      // The binding picked for this port at each prefix: on equal prefixes the
      // exact port beats the wildcard (equal prefixes are neighbours here).
      const picked: Bound[] = [];
      for (let k = 0; k < bound.length; k++) {
        if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
        const b = bound[k]!;
        if (b.port !== port && b.port !== 0) continue;
        const last = picked[picked.length - 1];
        if (last && samePrefix(last.prefix, b.prefix)) {
          if (b.port === port) picked[picked.length - 1] = b;
        } else {
          picked.push(b);
        }
      }
      const allows = new Map<string, boolean>();
      const allowed = (label: string) => allows.get(label) ?? (allows.set(label, rangesContain(allowedPorts(state, label, protocol), port)), allows.get(label)!);
      // Where the exact-port binding wins: accepted if its service allows the
      // port, dropped if not. Where a wildcard wins, the per-service sets
      // below decide, so wildcard prefixes appear here only as carve-outs.
      const [accept, deny] = yield* lpmClassesSteps(picked, (b) => (b.port !== port ? -1 : allowed(b.label) ? 0 : 1), 2, presorted);
      sets.push(
        {
          name: portSetName(family, protocol, port),
          family,
          entries: accept!,
          optional: true,
          purpose: `${protocol} port ${port}: where a binding for this port wins and its service allows the port`,
        },
        {
          name: portDenySetName(family, protocol, port),
          family,
          entries: deny!,
          optional: true,
          purpose: `${protocol} port ${port}: where a binding for this port wins and its service does not allow the port`,
        },
      );
    }
    // Per service: where the longest any-port binding is its own (one sweep for all).
    const labels = skeleton.labels[protocol].filter((label) => allowedPorts(state, label, protocol).length > 0);
    const index = new Map(labels.map((label, i) => [label, i]));
    const wildcards: PlanItem[] = [];
    for (let k = 0; k < bound.length; k++) {
      if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
      if (bound[k]!.port === 0) wildcards.push(bound[k]!);
    }
    const perLabel = yield* lpmClassesSteps(wildcards, (b) => index.get(b.label) ?? -1, labels.length, presorted);
    labels.forEach((label, i) =>
      sets.push({
        name: labelSetName(family, protocol, label),
        family,
        entries: perLabel[i]!,
        purpose: `${protocol} any-port bindings of ${label}: where the longest one is ${label}'s`,
      }),
    );
  }
  return sets;
}

/**
 * The chains of one family, given its (non-empty) sets.
 *
 * The protocol chains hold only accepts and the drops that decide a port
 * (a binding for that port wins but its service does not allow it); the
 * drop of everything else to a bound address sits in the main chain, right
 * after the jump. So a protocol chain flushed by someone else sends its
 * packets back to that drop: the firewall fails closed until the resync
 * writes the chain again. (With the drop at the end of the protocol chain,
 * as before, a flushed chain let the packets fall through to the rest of
 * INPUT: accepted on most hosts.) A set can be destroyed only once no rule
 * refers to it, so only after its chain is flushed: the same drop holds.
 */
export function familyChains(state: DesiredState, family: Family, sets: IpSet[], skeleton: Skeleton): Chain[] {
  const managed = managedSetName(family);
  const has = new Set(sets.map((s) => s.name));
  const main: Rule[] = [];
  if (has.has(httpsOnlySetName(family))) {
    const unreachable = family === 4 ? 'icmp-port-unreachable' : 'icmp6-port-unreachable';
    for (const protocol of ['tcp', 'udp'] as const) {
      main.push(
        ...perPortChunk(state.httpsOnly.plaintextPorts, (dports) => ({
          protocol,
          ...(dports ? { dports } : {}),
          set: { name: httpsOnlySetName(family), negate: false },
          target: 'REJECT',
          rejectWith: protocol === 'tcp' ? 'tcp-reset' : unreachable,
          why: `HTTPS-only: refuse plaintext ${protocol} ports`,
        })),
      );
    }
  }
  // Verdicts are for new flows. Packets of flows already accepted, and
  // replies to connections the host opened from a bound address (or to
  // itself over lo), must not meet the per-port drops.
  main.push({ established: true, set: { name: managed, negate: false }, target: 'ACCEPT', why: 'established flows and replies to bound addresses' });
  const chains: Chain[] = [{ name: MAIN_CHAIN, rules: main }];
  for (const protocol of ['tcp', 'udp'] as const) {
    const rules: Rule[] = [];
    for (const port of skeleton.exactPorts[protocol]) {
      const accept = portSetName(family, protocol, port);
      const deny = portDenySetName(family, protocol, port);
      if (has.has(accept)) {
        rules.push({ protocol, dports: [[port, port]], set: { name: accept, negate: false }, target: 'ACCEPT', why: `${protocol}/${port}: accept where this port's binding wins and is allowed` });
      }
      if (has.has(deny)) {
        rules.push({ protocol, dports: [[port, port]], set: { name: deny, negate: false }, target: 'DROP', why: `${protocol}/${port}: drop where this port's binding wins but is not allowed` });
      }
    }
    for (const label of skeleton.labels[protocol]) {
      const name = labelSetName(family, protocol, label);
      if (!has.has(name)) continue;
      rules.push(
        ...perPortChunk(allowedPorts(state, label, protocol), (dports) => ({
          protocol,
          ...(dports ? { dports } : {}),
          set: { name, negate: false },
          target: 'ACCEPT',
          why: `${protocol}: ${label}'s policy on its any-port bindings`,
        })),
      );
    }
    main.push(
      { protocol, target: PROTOCOL_CHAIN[protocol], why: `${protocol} to the ${protocol} chain` },
      // Per protocol: other protocols to a bound address (ICMP) are not ours to judge.
      { protocol, set: { name: managed, negate: false }, target: 'DROP', why: `${protocol}: drop what no policy allows on bound addresses` },
    );
    chains.push({ name: PROTOCOL_CHAIN[protocol], rules });
  }
  return chains;
}

export function familyItems(state: DesiredState, family: Family): { items: PlanItem[]; presorted: boolean } {
  return runSync(familyItemsSteps(state, family));
}

/** A family's bindings, sorted once by address then length; every set is a sweep over them. */
export function* familyItemsSteps(state: DesiredState, family: Family): Steps<{ items: PlanItem[]; presorted: boolean }> {
  const t = state.bindings;
  const a = t.addr;
  // Sort indices by the table's columns first, then build each item once, in
  // sorted order, so the sweeps walk memory in order (after a sort of
  // objects they sit all over the heap, and on this kind of machine every
  // cache miss costs 100-200 ns). The numeric key orders by the first 32
  // bits (and, for IPv4, the length); ties compare the remaining words.
  let order: number[] = [];
  const keys = new Float64Array(t.count);
  let zeroLength = false;
  for (let i = 0; i < t.count; i++) {
    if ((i & (STRIDE - 1)) === STRIDE - 1) yield;
    if (t.family[i] !== family) continue;
    order.push(i);
    zeroLength ||= t.prefixLen[i] === 0;
    keys[i] = family === 4 ? a[i * 4]! * 64 + t.prefixLen[i]! : a[i * 4]! * 2097152 + (a[i * 4 + 1]! >>> 11);
  }
  order = yield* sortSteps(order, (x, y) => {
    const d = keys[x]! - keys[y]!;
    if (d !== 0) return d;
    for (let w = 0; w < 4; w++) if (a[x * 4 + w] !== a[y * 4 + w]) return a[x * 4 + w]! < a[y * 4 + w]! ? -1 : 1;
    return t.prefixLen[x]! - t.prefixLen[y]!;
  });
  // Sorted even with a /0 (equal prefixes must be neighbours); lpmEntries
  // then splits the /0 and sorts again. Words are copied in sorted order
  // into one Uint32Array and each prefix gets a view of its four: the sweeps
  // read them millions of times (~3x faster than number arrays holding
  // values above 2^31), and one buffer instead of one per prefix took a
  // quarter off the 100,000-binding plan (fewer objects to collect; measured).
  const words = new Uint32Array(order.length * 4);
  const items: PlanItem[] = [];
  for (let k = 0; k < order.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    const i = order[k]!;
    words.set(a.subarray(i * 4, i * 4 + 4), k * 4);
    const prefix: Prefix = { family, words: words.subarray(k * 4, k * 4 + 4) as unknown as Prefix['words'], length: t.prefixLen[i]! };
    items.push({ prefix, text: ipsetText(prefix), label: t.label(i), port: t.port[i]!, tcp: t.protocol[i] === IPPROTO.tcp });
  }
  return { items, presorted: !zeroLength };
}

/** Port sets that came out empty are not created (nor is their rule). */
export const keepSet = (set: IpSet) => set.entries.length > 0 || !set.optional;

export function familyPlan(state: DesiredState, family: Family, items: PlanItem[], presorted: boolean, skeleton = skeletonOf(items)): FamilyPlan {
  return runSync(familyPlanSteps(state, family, items, presorted, skeleton));
}

export function* familyPlanSteps(state: DesiredState, family: Family, items: PlanItem[], presorted: boolean, skeleton?: Skeleton): Steps<FamilyPlan> {
  const shape = skeleton ?? (yield* skeletonSteps(items));
  const sets = (yield* familySetsSteps(state, family, items, presorted, shape)).filter(keepSet);
  return { family, chains: familyChains(state, family, sets, shape), sets };
}

/** The whole firewall for a desired state: both families, always. */
export function planFirewall(state: DesiredState): FirewallPlan {
  const family = (f: Family) => {
    const { items, presorted } = familyItems(state, f);
    return familyPlan(state, f, items, presorted);
  };
  return { families: [family(4), family(6)] };
}
