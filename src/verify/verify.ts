/**
 * Verification of a desired state, exact (sweep.ts walks the whole address
 * space of every port class; nothing is sampled). Each finding names the
 * entries and gives a concrete (protocol, address, port) witness:
 *
 *   EDUPLICATE   the same (protocol, prefix, port) bound twice;
 *   EUNREACHABLE a binding no packet reaches: more specific bindings (for
 *                its port, or any-port ones) cover every one of its
 *                addresses; the witness names the one that wins there;
 *   EPLAINTEXT   a binding on a plaintext port overlapping an HTTPS-only
 *                range, which refuses that port there;
 *   ENOPOLICY    a label with bindings that receive traffic but no service
 *                policy: the firewall drops all of it;
 *   EEXCLUSIVE   an address of a prefix marked exclusive to one service
 *                where another one receives traffic.
 */
import { SwitchyardError } from '../errors.js';
import { BindingTable, IPPROTO, parseBindingList, type Protocol } from '../bindings/binding.js';
import { type DesiredState, parseDesiredState, rangesContain } from '../desired/state.js';
import { type Family, type Prefix, PREFIX_MASKS, formatAddress, formatPrefix } from '../net/address.js';
import { NONE, lessWords, runsOf, sweepClass } from './sweep.js';

export type FindingCode = 'EDUPLICATE' | 'EUNREACHABLE' | 'EPLAINTEXT' | 'ENOPOLICY' | 'EEXCLUSIVE';

export interface Witness {
  protocol: Protocol;
  address: string;
  port: number;
}

export interface Finding {
  code: FindingCode;
  message: string;
  /** The bindings (and ranges) it is about, as operators write them. */
  entries: string[];
  witness: Witness;
}

const protocolOf = (t: BindingTable, i: number): Protocol => (t.protocol[i] === IPPROTO.tcp ? 'tcp' : 'udp');

/** Per (family, protocol) as runsOf() keys them, the ports bindings name exactly. */
function exactPorts(t: BindingTable): Map<string, Set<number>> {
  const out = new Map<string, Set<number>>();
  for (let i = 0; i < t.count; i++) {
    if (t.port[i] === 0) continue;
    const key = `${t.family[i]} ${protocolOf(t, i)}`;
    const ports = out.get(key) ?? new Set<number>();
    ports.add(t.port[i]!);
    out.set(key, ports);
  }
  return out;
}

/** Per (family, protocol), the port any-port findings are witnessed at (otherPort): a change of these changes findings anywhere. */
export function witnessPorts(t: BindingTable): Map<string, number> {
  return new Map([...exactPorts(t)].map(([key, ports]) => [key, otherPort(ports)]));
}

/** The smallest port no binding of this (family, protocol) names exactly: where only any-port bindings count. */
function otherPort(exact: ReadonlySet<number>): number {
  for (let p = 1; p <= 65535; p++) if (!exact.has(p)) return p;
  return 0;
}

/** Verifies a parsed state. */
/**
 * `options.portsOf`: the whole table, when `state` holds only the bindings
 * of some regions (region.ts): the witness port of any-port findings is
 * the smallest port no binding of the whole table names.
 */
export function verifyState(state: DesiredState, options: { portsOf?: BindingTable } = {}): Finding[] {
  const t = state.bindings;
  const named = options.portsOf ? exactPorts(options.portsOf) : undefined;
  const findings: Finding[] = [];
  const empty = new BindingTable(0);
  const labelIds = Int32Array.from(t.labels, (_, i) => i);
  const noPolicy = new Map<number, Witness & { row: number }>();
  // Exclusive ranges per family: [first, last] words, label id.
  const exclusive = exclusiveRanges(state, t);
  for (const [key, runs] of runsOf(t)) {
    const [f, protocol] = key.split(' ') as [string, Protocol];
    const family = Number(f) as Family;
    const words = family === 4 ? 1 : 4;
    const exact = new Set([...runs.keys()].filter((p) => p !== 0));
    const other = otherPort(named?.get(key) ?? exact);
    for (const port of [0, ...exact]) {
      const witnessPort = port === 0 ? other : port;
      const ranges = exclusive.get(family) ?? [];
      let from = 0; // regions come in address order: the first exclusive range that may still overlap
      sweepClass(family, port, { table: empty, runs: undefined, labelIds: new Int32Array(0) }, { table: t, runs, labelIds }, {
        covered: (row, winner) => {
          // Any-port bindings are judged where only they count (port 0); exact ones in their own class.
          if ((port === 0) !== (t.port[row] === 0)) return;
          const first = formatAddress(family, t.addr.subarray(row * 4, row * 4 + 4));
          findings.push({
            code: 'EUNREACHABLE',
            message: `${t.describe(row)} receives nothing: more specific bindings cover all of ${t.prefixText(row)}${winner !== NONE && winner !== row ? ` (at ${first} port ${witnessPort}: ${t.describe(winner)})` : ''}`,
            entries: winner !== NONE && winner !== row ? [t.describe(row), t.describe(winner)] : [t.describe(row)],
            witness: { protocol, address: first, port: witnessPort },
          });
        },
        region: (first, last, label, row) => {
          if (!state.services.has(t.labels[label]!) && !noPolicy.has(label)) {
            noPolicy.set(label, { protocol, address: formatAddress(family, first), port: witnessPort, row });
          }
          while (from < ranges.length && lessWords(ranges[from]!.last, first, words)) from++;
          for (let k = from; k < ranges.length && !lessWords(last, ranges[k]!.first, words); k++) {
            const r = ranges[k]!;
            if (r.label === label || lessWords(r.last, first, words)) continue;
            const at = lessWords(r.first, first, words) ? first : r.first;
            findings.push({
              code: 'EEXCLUSIVE',
              message: `${formatPrefix(r.prefix)} is exclusive to ${t.labels[r.label] ?? r.labelText} but ${t.describe(row)} receives traffic there (${protocol} ${formatAddress(family, at)} port ${witnessPort})`,
              entries: [t.describe(row), `exclusive ${r.labelText} ${formatPrefix(r.prefix)}`],
              witness: { protocol, address: formatAddress(family, at), port: witnessPort },
            });
          }
        },
      });
    }
  }
  for (const [label, w] of noPolicy) {
    findings.push({
      code: 'ENOPOLICY',
      message: `${t.labels[label]} has bindings that receive traffic but no service policy: the firewall drops all of it (e.g. ${w.protocol} ${w.address} port ${w.port}, ${t.describe(w.row)})`,
      entries: [t.describe(w.row)],
      witness: { protocol: w.protocol, address: w.address, port: w.port },
    });
  }
  findings.push(...plaintextInHttpsOnly(state));
  return dedupeExclusive(findings);
}

/** One EEXCLUSIVE finding per (binding, exclusive range), with its first witness: a binding's region comes out in pieces, once per port class. */
function dedupeExclusive(findings: Finding[]): Finding[] {
  const seen = new Set<string>();
  return findings.filter((f) => {
    if (f.code !== 'EEXCLUSIVE') return true;
    const k = f.entries.join('|');
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

interface ExclusiveRange {
  first: Uint32Array;
  last: Uint32Array;
  /** The label's id in the table (-2 when no binding has it), and its text. */
  label: number;
  labelText: string;
  prefix: Prefix;
}

function exclusiveRanges(state: DesiredState, t: BindingTable): Map<Family, ExclusiveRange[]> {
  const out = new Map<Family, ExclusiveRange[]>();
  for (const [labelText, prefixes] of state.exclusive) {
    const label = t.labels.indexOf(labelText);
    for (const prefix of prefixes) {
      const words = prefix.family === 4 ? 1 : 4;
      const first = Uint32Array.from(prefix.words.slice(0, words));
      const last = first.map((w, i) => (w | ~PREFIX_MASKS[prefix.length * 4 + i]!) >>> 0);
      const list = out.get(prefix.family) ?? [];
      list.push({ first, last, label: label < 0 ? -2 : label, labelText, prefix });
      out.set(prefix.family, list);
    }
  }
  for (const list of out.values()) list.sort((a, b) => (lessWords(a.first, b.first, a.first.length) ? -1 : lessWords(b.first, a.first, a.first.length) ? 1 : 0));
  return out;
}


/** Exact-port bindings on a plaintext port overlapping an HTTPS-only range (which refuses that port there). */
function plaintextInHttpsOnly(state: DesiredState): Finding[] {
  const t = state.bindings;
  const out: Finding[] = [];
  const ranges = state.httpsOnly.prefixes;
  if (ranges.length === 0) return out;
  for (let i = 0; i < t.count; i++) {
    const port = t.port[i]!;
    if (port === 0 || !rangesContain(state.httpsOnly.plaintextPorts, port)) continue;
    for (const r of ranges) {
      if (r.family !== t.family[i]) continue;
      const shorter = Math.min(r.length, t.prefixLen[i]!);
      let overlap = true;
      for (let w = 0; w < 4; w++) if (((r.words[w]! ^ t.addr[i * 4 + w]!) & PREFIX_MASKS[shorter * 4 + w]!) !== 0) overlap = false;
      if (!overlap) continue;
      // The longer of the two is inside the other: its first address is in both.
      const inside = r.length >= t.prefixLen[i]! ? formatAddress(r.family, r.words) : formatAddress(r.family, t.addr.subarray(i * 4, i * 4 + 4));
      out.push({
        code: 'EPLAINTEXT',
        message: `${t.describe(i)} is on a plaintext port inside HTTPS-only ${formatPrefix(r)}, which refuses that port (${protocolOf(t, i)} ${inside} port ${port})`,
        entries: [t.describe(i), `https-only ${formatPrefix(r)}`],
        witness: { protocol: protocolOf(t, i), address: inside, port },
      });
    }
  }
  return out;
}

/**
 * Verifies a document: the state's own validation first (a bad entry is an
 * error, as everywhere), except that keys bound twice are findings
 * (EDUPLICATE, each pair), the first of each kept for the rest.
 */
export function verifyDocument(doc: unknown, source: string): { state: DesiredState; findings: Finding[] } {
  try {
    const state = parseDesiredState(doc, source);
    return { state, findings: verifyState(state) };
  } catch (err) {
    if (!(err instanceof SwitchyardError) || !/duplicates bindings\[/.test(err.message)) throw err;
  }
  const list = (doc as { bindings: unknown[] }).bindings;
  const table = parseBindingList(list, source, 'keep');
  const duplicates: Finding[] = [];
  const keep: number[] = [];
  const order = table.order();
  const seen = new Map<string, number>();
  for (let k = 0; k < order.length; k++) {
    const i = order[k]!;
    const key = `${table.protocol[i]} ${table.prefixText(i)} ${table.port[i]}`;
    const first = seen.get(key);
    if (first === undefined) {
      seen.set(key, i);
      continue;
    }
    const [a, b] = first < i ? [first, i] : [i, first];
    const family = table.family[i] as Family;
    duplicates.push({
      code: 'EDUPLICATE',
      message: `${source}: bindings[${b}] (${table.describe(b)}) duplicates bindings[${a}] (${table.describe(a)}): same protocol, prefix and port`,
      entries: [`bindings[${a}]: ${table.describe(a)}`, `bindings[${b}]: ${table.describe(b)}`],
      witness: { protocol: protocolOf(table, i), address: formatAddress(family, table.addr.subarray(i * 4, i * 4 + 4)), port: table.port[i]! === 0 ? 1 : table.port[i]! },
    });
  }
  for (const i of seen.values()) keep.push(i);
  keep.sort((x, y) => x - y);
  const state = parseDesiredState({ ...(doc as object), bindings: keep.map((i) => list[i]) }, source);
  return { state, findings: [...duplicates, ...verifyState(state)] };
}
