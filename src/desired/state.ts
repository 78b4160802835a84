/**
 * The desired-state document: one format for `load-bindings`, the firewall
 * commands and (later) the control plane's pushes.
 *
 *   {
 *     "bindings":   [{"label": "cdn", "protocol": "tcp", "prefix": "192.0.2.0/24", "port": 443}, ...],
 *     "services":   {"cdn": {"tcp": [80, 443], "udp": [443]}, "spectrum": {"tcp": ["1-65535"]}},
 *     "https_only": {"prefixes": ["198.51.100.0/24"], "plaintext_ports": [80, 8080]},
 *     "exclusive":  {"cdn": ["192.0.2.0/24"]}
 *   }
 *
 * A service policy lists the ports its traffic may reach, per protocol
 * (numbers 1-65535 or "low-high" ranges). HTTPS-only ranges close the
 * plaintext ports (default DEFAULT_PLAINTEXT_PORTS) at the transport layer,
 * whatever is bound there. Prefixes marked exclusive to a service must not
 * send traffic to any other (checked by `switchyard verify` and before the
 * control plane publishes; src/verify/). Everything is validated before
 * anything is applied; a bad entry is named.
 */
import fs from 'node:fs';
import { SwitchyardError } from '../errors.js';
import { type Prefix, formatPrefix } from '../net/address.js';
import { BindingTable, checkDocumentFields, own, parseBindingList, parseBindingPrefix, parseLabel, type Protocol } from '../bindings/binding.js';

/** HTTP's plaintext ports on an edge network (the reference reading's list). */
export const DEFAULT_PLAINTEXT_PORTS: readonly number[] = [80, 8080, 8880, 2052, 2082, 2086, 2095];

/** Inclusive port ranges, sorted, disjoint and not adjacent. */
export type PortRanges = ReadonlyArray<readonly [number, number]>;

export interface ServicePolicy {
  tcp: PortRanges;
  udp: PortRanges;
}

export interface HttpsOnly {
  prefixes: Prefix[];
  plaintextPorts: PortRanges;
}

export interface DesiredState {
  bindings: BindingTable;
  services: Map<string, ServicePolicy>;
  httpsOnly: HttpsOnly;
  /** Label → prefixes where only that service may receive traffic. */
  exclusive: Map<string, Prefix[]>;
}

/** The fields of a desired-state document (the API's OpenAPI schema lists the same). */
export const STATE_FIELDS: ReadonlySet<string> = new Set(['bindings', 'services', 'https_only', 'exclusive']);
const POLICY_FIELDS = new Set(['tcp', 'udp']);
const HTTPS_ONLY_FIELDS = new Set(['prefixes', 'plaintext_ports']);

const invalid = (entry: string, message: string) => new SwitchyardError('EINVAL_FILE', `${entry}: ${message}`, { entry });

/** Merges ranges into the canonical form (sorted, disjoint, adjacent ones joined). */
export function normalizeRanges(ranges: Array<readonly [number, number]>): PortRanges {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const [lo, hi] of sorted) {
    const last = out[out.length - 1];
    if (last && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

const rangesText = (r: PortRanges) => r.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)).join(',');

/**
 * The canonical text of everything in a state but its bindings: service
 * policies by label, HTTPS-only prefixes sorted, the plaintext ports. The
 * same meaning gives the same text (the state digest hashes it; a delta
 * can only be sent, or planned incrementally, while it stays the same).
 */
export function policiesText(state: DesiredState): string {
  const lines: string[] = [];
  for (const [label, p] of [...state.services].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) lines.push(`service ${label} tcp ${rangesText(p.tcp)} udp ${rangesText(p.udp)}\n`);
  for (const p of state.httpsOnly.prefixes.map(formatPrefix).sort()) lines.push(`https-only ${p}\n`);
  lines.push(`plaintext-ports ${rangesText(state.httpsOnly.plaintextPorts)}\n`);
  // Only when there are some: the digests of states without any stay as they were.
  for (const [label, prefixes] of [...state.exclusive].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    for (const p of prefixes.map(formatPrefix).sort()) lines.push(`exclusive ${label} ${p}\n`);
  }
  return lines.join('');
}

export function rangesContain(ranges: PortRanges, port: number): boolean {
  for (const [lo, hi] of ranges) if (port >= lo && port <= hi) return true;
  return false;
}

/** Ports as the documents write them: 443 or "8000-8100". */
export function parsePortList(value: unknown, entry: string): PortRanges {
  if (!Array.isArray(value)) throw invalid(entry, 'expected a list of ports (numbers 1-65535 or "low-high" ranges)');
  const ranges: Array<[number, number]> = [];
  value.forEach((item: unknown, n) => {
    const at = `${entry}[${n}]`;
    if (typeof item === 'number' && Number.isInteger(item) && item >= 1 && item <= 65535) {
      ranges.push([item, item]);
      return;
    }
    const m = typeof item === 'string' ? /^([1-9][0-9]{0,4})-([1-9][0-9]{0,4})$/.exec(item) : null;
    const lo = m ? Number(m[1]) : NaN;
    const hi = m ? Number(m[2]) : NaN;
    if (!m || lo > hi || hi > 65535) {
      throw invalid(at, `port ${JSON.stringify(item)} must be a number 1-65535 or a range "low-high" with low <= high <= 65535`);
    }
    ranges.push([lo, hi]);
  });
  return normalizeRanges(ranges);
}

function parseServices(value: unknown, source: string): Map<string, ServicePolicy> {
  const services = new Map<string, ServicePolicy>();
  if (value === undefined) return services;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(`${source}: services`, 'expected an object {"<label>": {"tcp": [...], "udp": [...]}}');
  }
  // Own keys (Object.entries), into a Map: a label is never looked up in a plain object.
  for (const [label, policy] of Object.entries(value)) {
    const entry = `${source}: services.${label}`;
    parseLabel(label, entry);
    checkDocumentFields(policy, entry, POLICY_FIELDS, '{"tcp": [ports], "udp": [ports]}');
    const tcp = own(policy, 'tcp');
    const udp = own(policy, 'udp');
    services.set(label, {
      tcp: tcp === undefined ? [] : parsePortList(tcp, `${entry}.tcp`),
      udp: udp === undefined ? [] : parsePortList(udp, `${entry}.udp`),
    });
  }
  return services;
}

/** A list of prefixes (not bindings: no port), each once. */
function parsePrefixList(list: unknown, entry: string): Prefix[] {
  if (!Array.isArray(list)) throw invalid(entry, 'expected a list of prefixes');
  const seen = new Set<string>();
  return list.map((item: unknown, n) => {
    const at = `${entry}[${n}]`;
    let prefix: Prefix;
    try {
      prefix = parseBindingPrefix(item, at, false);
    } catch (err) {
      throw invalid(at, (err as Error).message.slice(at.length + 2));
    }
    const key = formatPrefix(prefix);
    if (seen.has(key)) throw invalid(at, `${key} is listed twice`);
    seen.add(key);
    return prefix;
  });
}

function parseExclusive(value: unknown, source: string): Map<string, Prefix[]> {
  const exclusive = new Map<string, Prefix[]>();
  if (value === undefined) return exclusive;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(`${source}: exclusive`, 'expected an object {"<label>": ["<prefix>", ...]}');
  }
  for (const [label, list] of Object.entries(value)) {
    const entry = `${source}: exclusive.${label}`;
    parseLabel(label, entry);
    const prefixes = parsePrefixList(list, entry);
    if (prefixes.length > 0) exclusive.set(label, prefixes);
  }
  return exclusive;
}

function parseHttpsOnly(value: unknown, source: string): HttpsOnly {
  const defaults: HttpsOnly = { prefixes: [], plaintextPorts: normalizeRanges(DEFAULT_PLAINTEXT_PORTS.map((p) => [p, p] as const)) };
  if (value === undefined) return defaults;
  const entry = `${source}: https_only`;
  checkDocumentFields(value, entry, HTTPS_ONLY_FIELDS, '{"prefixes": [...], "plaintext_ports": [...]}');
  const prefixes = parsePrefixList(own(value, 'prefixes') ?? [], `${entry}.prefixes`);
  const ports = own(value, 'plaintext_ports');
  const plaintextPorts = ports === undefined ? defaults.plaintextPorts : parsePortList(ports, `${entry}.plaintext_ports`);
  return { prefixes, plaintextPorts };
}

/** Validates a whole desired-state document; nothing is applied on error. */
export function parseDesiredState(doc: unknown, source: string): DesiredState {
  checkDocumentFields(doc, source, STATE_FIELDS, '{"bindings": [...], "services": {...}, "https_only": {...}, "exclusive": {...}}');
  return {
    // Required even when empty: a file that forgot it must not unbind everything.
    bindings: parseBindingList(own(doc, 'bindings'), source),
    services: parseServices(own(doc, 'services'), source),
    httpsOnly: parseHttpsOnly(own(doc, 'https_only'), source),
    exclusive: parseExclusive(own(doc, 'exclusive'), source),
  };
}

/** A JSON file's content (`-` reads standard input); an unreadable or malformed one is an error naming it. */
export function readJsonFile(file: string): unknown {
  try {
    return JSON.parse(file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SwitchyardError('EINVAL_FILE', `${file}: ${(err as Error).message}`, { entry: file, cause: err });
  }
}

/** Reads and validates a desired-state file (`-` reads standard input). */
export function readDesiredState(file: string): DesiredState {
  return parseDesiredState(readJsonFile(file), file);
}

/** The policy's ports for one protocol; a label without a policy allows nothing. */
export function allowedPorts(state: DesiredState, label: string, protocol: Protocol): PortRanges {
  return state.services.get(label)?.[protocol] ?? [];
}
