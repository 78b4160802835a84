/**
 * The real-traffic dispatch benchmark (issue 17, item 1): real UDP datagrams
 * through a network namespace's sk_lookup hook, each program's cost read
 * from the kernel's own run-time statistics (BPF_ENABLE_STATS: run_time_ns
 * and run_cnt of every program, counted around each run).
 *
 *   node dist/bench/traffic.js --sets random:1000000,random:1000 --count 1000000 --rounds 3 [--kinds spread,hot] [--out file.json]
 *
 * Programs, each measured over the same destinations and the same number of
 * datagrams, net of an empty program (`return SK_PASS`) attached beside it
 * and charged by the same clock over the same traffic:
 *   ours     the real dispatcher: `load` into a scratch namespace's bpffs,
 *            `replaceBindings(set)`, one UDP socket per label `register`ed;
 *   tubular  tubular's data plane (bench/bpf/traffic.c): LPM_TRIE lookups as
 *            in bench.c, its metrics counter, its SOCKMAP, bpf_sk_assign;
 *   assign   one SOCKMAP lookup of a fixed key and bpf_sk_assign: what any
 *            sk_lookup dispatcher pays, whatever its lookup;
 *   probe    assign after one dependent load from an mmapable array of as
 *            many 64-byte rows as the dispatcher's table, at a row hashed
 *            from the destination: probe − assign is what one dependent
 *            access to a table of that size costs right after the network
 *            stack ran, measured in the same run (issue 17, item 5);
 *   probe2   the same with two independent loads (the destination's row and
 *            its port-0 row), as the dispatcher walks two tries.
 * ours runs in one namespace (its link is the dispatcher's pinned one);
 * the others in a second, each phase attaching [candidate, empty] with links
 * this harness owns and closes. With `oursObjects`, each dispatcher object is
 * a phase of its own: `upgrade` swaps it in through the pinned link, keeping
 * every map (so the same table), before its phase. Each round is a fresh
 * stats delta; the phases' order rotates by round; the median per program is
 * reported.
 *
 * Traffic: bench/sets.ts sets with every binding UDP (so the trie walked
 * holds the whole set), plus `dual` (half random IPv4, half the IPv6 mix).
 * Destinations spread over the bindings (a random binding, a random host in
 * it, its port or for port-0 bindings a service or random port), each with
 * the label the ReferenceLpm oracle expects; `hot` is 256 of them. The
 * datagram tool (bench/traffic/blast.c) checks every datagram lands on the
 * expected label's socket; any loss or misroute stops the run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { projectPath } from '../src/paths.js';
import { native } from '../src/kernel/native.js';
import { Fd, u32Key } from '../src/kernel/bpf.js';
import { BindingTable } from '../src/bindings/binding.js';
import { ReferenceLpm } from '../src/bindings/reference.js';
import { maskWords, formatAddress, type Family, type Words } from '../src/net/address.js';
import { Dispatcher, load, upgrade } from '../src/dispatcher/dispatcher.js';
import { locate } from '../src/dispatcher/state.js';
import { socketsOfProcess } from '../src/sockets/sockets.js';
import { TestNamespace } from '../test/support/netns.js';
import { rng } from '../test/support/random.js';
import { makeSet, PORTS } from './sets.js';
import type { ProgramSample, TrafficKind, TrafficRow, TrafficSetName } from './rows.js';
import { tubularEntries } from './harness.js';

export const TRAFFIC_OBJECT = projectPath('bench/bpf/traffic.o');
export const TRAFFIC_TOOL = projectPath('bench/traffic/blast');

export type { ProgramSample, TrafficKind, TrafficRow, TrafficSetName } from './rows.js';
export type Program = 'ours' | 'tubular' | 'assign' | 'probe' | 'probe2';
/** The second namespace's candidates, by their program in traffic.c. */
const OTHERS = { tubular: 'traffic_tubular', assign: 'traffic_assign', probe: 'traffic_probe', probe2: 'traffic_probe2' } as const;
type Other = keyof typeof OTHERS;

/** How the figures are taken, for the tables that show them. */
export const TRAFFIC_METHOD =
  'Real UDP datagrams through a network namespace\'s sk_lookup hook (each checked to land on the socket of the label the reference LPM expects); ns per program run from the kernel\'s BPF run-time stats (Δrun_time_ns/Δrun_cnt), net of an empty program attached beside each and charged by the same clock over the same datagrams; median of the rounds, the phases\' order rotating by round. assign: one SOCKMAP lookup and bpf_sk_assign, what any sk_lookup dispatcher pays. probe: assign after one dependent load from an mmapable array with as many 64-byte rows as our table, at a row hashed from the destination, so probe − assign is one dependent access to a table of our size right after the stack ran; probe2: two independent loads.';

export interface TrafficOptions {
  /** Datagrams per measured phase (default 1,000,000). */
  count?: number;
  rounds?: number;
  kinds?: TrafficKind[];
  /** Distinct destinations of the spread kind (default min(count, 2^20)). */
  destinations?: number;
  /** Unmeasured datagrams before each phase (default min(count, 32768)). */
  warmup?: number;
  /** Datagrams in flight at most (sent − received). */
  window?: number;
  /** A run ends when nothing arrives for this long; what is missing then is reported. */
  timeoutMs?: number;
  /** CPUs of the tool's sender (where loopback delivery, so the programs, run) and receiver threads; -1: unpinned. */
  senderCpu?: number;
  receiverCpu?: number;
  seed?: number;
  /**
   * Dispatcher objects to compare (A/B in one run): each is a phase of its
   * own, swapped in with `upgrade` (every map kept); the first is ours_ns.
   * Default: the object `load` and `replaceBindings` leave serving.
   */
  oursObjects?: string[];
  log?: (line: string) => void;
}



const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round1 = (x: number) => Math.round(x * 10) / 10;

/** A bench set with every binding UDP; `dual` is half `random` (IPv4 /32) and half `ipv6`. */
export function makeTrafficSet(name: TrafficSetName, size: number, seed = 1): BindingTable {
  if (name !== 'dual') return makeSet(name, size, seed, { protocol: 'udp' });
  const v4 = makeSet('random', Math.floor(size / 2), seed, { protocol: 'udp' });
  const v6 = makeSet('ipv6', size - Math.floor(size / 2), seed + 1, { protocol: 'udp' });
  const table = new BindingTable(v4.count + v6.count);
  for (let i = 0; i < v4.count; i++) table.addFrom(v4, i);
  for (let i = 0; i < v6.count; i++) table.addFrom(v6, i);
  return table;
}

export interface Destination {
  family: Family;
  words: Words;
  port: number;
  /** Index into the set's labels of the binding the oracle picks. */
  label: number;
  /** The oracle picked an exact-port binding. */
  exact: boolean;
}

/**
 * Whether a local route on lo can deliver to the address: not 0/8, 127/8 or
 * 224/3 (multicast, class E, broadcast); not ::/8 (unspecified, loopback,
 * mapped), fe80::/10 (needs a scope) or ff00::/8 (multicast).
 */
function deliverable(family: Family, w: Words): boolean {
  if (family === 4) {
    const a = w[0] >>> 24;
    return a !== 0 && a !== 127 && a < 224;
  }
  const top = w[0] >>> 24;
  return top !== 0 && top !== 0xff && (w[0] >>> 22) !== 0x3fa;
}

/**
 * `count` destinations spread over the bindings: a random binding, a random
 * host inside its prefix, its port (for a port-0 binding one of PORTS or a
 * random port no binding names), and the label the oracle (longest prefix;
 * the exact port only on an equal length) expects. Draws are independent, so
 * the traffic keeps the set's mix (about half exact-port bindings): an
 * exact-port /32 is one destination, which then repeats; requiring distinct
 * destinations would leave a 1K set's traffic almost all wildcard-port (the
 * rows report how many are distinct).
 */
export function makeDestinations(set: BindingTable, count: number, seed = 7): Destination[] {
  const oracle = new ReferenceLpm(set);
  const r = rng(seed);
  const u32 = () => Math.floor(r() * 4294967296) >>> 0;
  const bound = new Set<number>(Array.from(set.port.subarray(0, set.count)));
  const out: Destination[] = [];
  const ones: Words = [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff];
  for (let attempt = 0; out.length < count && attempt < count * 10 + 100_000; attempt++) {
    const i = Math.floor(r() * set.count);
    const p = set.prefix(i);
    const keep = maskWords(p.words, p.length);
    const host = maskWords(ones, p.length).map((m) => ~m >>> 0);
    const words = keep.map((w, j) => (w | (u32() & host[j]!)) >>> 0) as Words;
    if (p.family === 4) words[1] = words[2] = words[3] = 0;
    if (!deliverable(p.family, words)) continue;
    let port = set.port[i]!;
    if (port === 0) {
      if (r() < 0.5) port = PORTS[Math.floor(r() * PORTS.length)]!;
      else do port = 1024 + Math.floor(r() * 64512); while (bound.has(port));
    }
    const m = oracle.lookup('udp', { family: p.family, words }, port);
    if (!m) throw new Error(`oracle: no binding for ${formatAddress(p.family, words)} port ${port}, inside binding ${set.describe(i)}`);
    out.push({ family: p.family, words, port, label: set.labelIndex[m.index]!, exact: m.exactPort });
  }
  if (!out.length) throw new Error(`no deliverable destination in the set`);
  return out;
}

const keyOf = (d: Destination) => `${d.family}:${d.words.join('.')}:${d.port}`;

/** Distinct (address, port) destinations in a list. */
function distinct(dests: Destination[]): number {
  return new Set(dests.map(keyOf)).size;
}

/**
 * `n` distinct destinations drawn uniformly from `list`, so the hot set keeps
 * the spread list's mix of exact-port and wildcard-port destinations (they
 * cost the lookups differently).
 */
function sample(list: Destination[], n: number, seed: number): Destination[] {
  const r = rng(seed);
  const picked = new Map<string, Destination>();
  for (let tries = 0; picked.size < n && tries < n * 1000; tries++) {
    const d = list[Math.floor(r() * list.length)]!;
    picked.set(keyOf(d), d);
  }
  return [...picked.values()];
}

/** Share of destinations answered by an exact-port binding (the rest by a port-0 one). */
function exactShare(dests: Destination[]): number {
  return Math.round((dests.filter((d) => d.exact).length / Math.max(1, dests.length)) * 1000) / 1000;
}

/** The tool's destinations file: 24-byte records {u8 family; u8 pad; u16 port; u32 label; u8 address[16]}. */
function writeDestinations(file: string, dests: Destination[]): void {
  const b = Buffer.alloc(24 * dests.length);
  dests.forEach((d, k) => {
    const at = k * 24;
    b.writeUInt8(d.family, at);
    b.writeUInt16LE(d.port, at + 2);
    b.writeUInt32LE(d.label, at + 4);
    const words = d.family === 4 ? 1 : 4;
    for (let w = 0; w < words; w++) b.writeUInt32BE(d.words[w]!, at + 8 + 4 * w);
  });
  fs.writeFileSync(file, b);
}

interface RunResult {
  run: number;
  sent: number;
  received: number;
  misrouted: number;
  missing: number;
  stale: number;
  garbage: number;
  sendErrors: number;
  firstSendError: string;
  stalled: boolean;
  elapsedMs: number;
  missingDests: number[];
  mismatches: Array<{ dest: number; expected: number; got: number; family: number }>;
}

/** The datagram tool, running inside a namespace: one line of JSON per command. */
class Tool {
  private readonly lines: string[] = [];
  private waiting: ((line: string | undefined) => void) | undefined;
  private stderr = '';
  private exited = false;

  private constructor(private readonly child: ChildProcess) {
    const rl = readline.createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = undefined;
        w(line);
      } else this.lines.push(line);
    });
    child.stderr!.on('data', (d) => (this.stderr += d));
    child.on('exit', () => {
      this.exited = true;
      this.waiting?.(undefined);
      this.waiting = undefined;
    });
  }

  static async start(ns: TestNamespace, args: string[]): Promise<{ tool: Tool; pid: number; v4: number[]; v6: number[] }> {
    const child = spawn('ip', ['netns', 'exec', ns.name, TRAFFIC_TOOL, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const tool = new Tool(child);
    try {
      const ready = JSON.parse(await tool.next(30_000)) as { pid: number; v4: number[]; v6: number[] };
      return { tool, ...ready };
    } catch (err) {
      tool.close();
      throw err;
    }
  }

  private next(timeoutMs: number): Promise<string> {
    const queued = this.lines.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.exited) return Promise.reject(new Error(`traffic tool exited: ${this.stderr}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`traffic tool: no answer in ${timeoutMs} ms: ${this.stderr}`));
      }, timeoutMs);
      this.waiting = (line) => {
        clearTimeout(timer);
        if (line === undefined) reject(new Error(`traffic tool exited: ${this.stderr}`));
        else resolve(line);
      };
    });
  }

  async run(count: number, start: number, mode: 'label' | 'fixed', timeoutMs: number): Promise<RunResult> {
    this.child.stdin!.write(`run ${count} ${start} ${mode}\n`);
    // The tool's own timeout bounds a stalled run; this one bounds a wedged tool.
    return JSON.parse(await this.next(Math.max(600_000, timeoutMs * 4))) as RunResult;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.exited) this.child.kill('SIGKILL');
  }

  private closed = false;
}

const LOOPBACK4 = { family: 4 as const, words: [0x7f000001, 0, 0, 0] as Words };
const LOOPBACK6 = { family: 6 as const, words: [0, 0, 0, 1] as Words };

/** The tool's socket of (family, label), duplicated into this process (pidfd_getfd). Caller closes it. */
function takeSocket(pid: number, family: Family, port: number): number {
  const fds = socketsOfProcess(pid, 'udp', family === 4 ? LOOPBACK4 : LOOPBACK6, port);
  if (fds.length !== 1) {
    for (const fd of fds) fs.closeSync(fd);
    throw new Error(`traffic tool ${pid}: ${fds.length} sockets on port ${port} (IPv${family}), expected 1`);
  }
  return fds[0]!;
}

function progStats(fd: number): { ns: bigint; cnt: bigint } {
  const info = native().objInfo(fd, 'prog');
  return { ns: info.runTimeNs, cnt: info.runCnt };
}

/** Every address delivered locally inside the namespace, only there. */
function routeEverythingLocally(ns: TestNamespace): void {
  ns.ip(['route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo']);
  ns.ip(['-6', 'route', 'add', 'local', '::/0', 'dev', 'lo']);
}

/**
 * The programs of traffic.c, loaded against tubular's LPM trie (its ids:
 * IPv4 label + 1, IPv6 labels + 1 + labels) and a probe array of `probeRows`
 * 64-byte rows, mmapable so that the kernel vmallocs it as it does our table.
 */
function loadTrafficObject(set: BindingTable | undefined, probeRows: number, owned: Fd[]): { programs: Record<string, number>; maps: Record<string, number> } {
  const count = set?.count ?? 0;
  const lpm = new Fd(native().mapCreate(11 /* LPM_TRIE */, 23, 8, Math.max(1, count), 1 /* NO_PREALLOC */, 'tubular_lpm'));
  owned.push(lpm);
  if (set && count) {
    const { keys, values } = tubularEntries(set);
    // tubular's destinations are per (label, family): an IPv6 socket cannot take IPv4.
    for (let i = 0; i < count; i++) if (set.family[i] === 6) values.writeUInt32LE(set.labels.length + set.labelIndex[i]! + 1, i * 8);
    try {
      native().mapUpdateBatch(lpm.fd, keys, values, count);
    } catch {
      for (let i = 0; i < count; i++) native().mapUpdate(lpm.fd, keys.subarray(i * 23, (i + 1) * 23), values.subarray(i * 8, (i + 1) * 8));
    }
  }
  // Fresh, hence zero: every probe load reads 0, so the SOCKMAP key stays fixed.
  const probe = new Fd(native().mapCreate(2 /* ARRAY */, 4, 64, probeRows, 1 << 10 /* MMAPABLE */, 'probe_rows'));
  owned.push(probe);
  const loaded = native().loadObject(TRAFFIC_OBJECT, { tubular_bindings: lpm.fd, probe_rows: probe.fd });
  for (const fd of [...Object.values(loaded.maps), ...Object.values(loaded.programs)]) owned.push(new Fd(fd));
  // probe_row_count, the object's only global: its .bss map's value.
  const bss = Object.entries(loaded.maps).find(([name]) => name.endsWith('.bss'));
  if (!bss) throw new Error(`${TRAFFIC_OBJECT}: no .bss map (probe_row_count)`);
  const value = Buffer.alloc(native().objInfo(bss[1], 'map').valueSize);
  value.writeUInt32LE(probeRows, 0);
  native().mapUpdate(bss[1], u32Key(0), value);
  return loaded;
}

function defaultCpus(): { sender: number; receiver: number } {
  const n = os.cpus().length;
  // The sender's CPU runs loopback delivery, hence the programs: the last one,
  // like scripts/bench.sh; the receiver elsewhere so it does not share it.
  return n >= 2 ? { sender: n - 1, receiver: 0 } : { sender: -1, receiver: -1 };
}

/** Runs every (set, size) of `plan` for each traffic kind; rows in plan order. */
export async function trafficBench(plan: Array<[TrafficSetName, number]>, options: TrafficOptions = {}): Promise<TrafficRow[]> {
  const count = options.count ?? 1_000_000;
  const rounds = options.rounds ?? 3;
  const kinds = options.kinds ?? ['spread', 'hot'];
  const spread = options.destinations ?? Math.min(count, 1 << 20);
  const warmup = options.warmup ?? Math.min(count, 32_768);
  const window = options.window ?? 4096;
  const timeoutMs = options.timeoutMs ?? 5000;
  const cpus = defaultCpus();
  const senderCpu = options.senderCpu ?? cpus.sender;
  const receiverCpu = options.receiverCpu ?? cpus.receiver;
  const log = options.log ?? ((s: string) => process.stderr.write(`${s}\n`));
  if (!(count > 0 && rounds > 0)) throw new Error(`traffic: count ${count} and rounds ${rounds} must be positive`);
  // Before any set is built: a missing object would otherwise stop the run at its first phase.
  for (const o of options.oursObjects ?? []) if (!fs.existsSync(o)) throw new Error(`traffic: dispatcher object ${o} not found`);
  variantNames(options.oursObjects);
  const rows: TrafficRow[] = [];
  const stats = new Fd(native().enableStats());
  try {
    for (const [name, size] of plan) {
      const set = makeTrafficSet(name, size, options.seed ?? 1);
      const families = new Set(Array.from(set.family.subarray(0, set.count)));
      const family = families.size > 1 ? 'dual' : families.has(6) ? '6' : '4';
      const started = performance.now();
      const all = makeDestinations(set, spread, (options.seed ?? 1) + 6);
      log(`traffic ${name} ${set.count}: ${all.length} destinations (${((performance.now() - started) / 1000).toFixed(1)} s)`);
      const lists: Record<TrafficKind, Destination[]> = { spread: all, hot: sample(all, 256, (options.seed ?? 1) + 8) };
      rows.push(...(await benchSet(name, set, family, kinds.map((k) => [k, lists[k]] as [TrafficKind, Destination[]]), { count, rounds, warmup, window, timeoutMs, senderCpu, receiverCpu, oursObjects: options.oursObjects, log })));
    }
  } finally {
    stats.close(); // the previous stats setting again
  }
  return rows;
}

interface Settings {
  count: number;
  rounds: number;
  warmup: number;
  window: number;
  timeoutMs: number;
  senderCpu: number;
  receiverCpu: number;
  oursObjects: string[] | undefined;
  log: (line: string) => void;
}

/** Phase names of the dispatcher objects: `ours`, or `ours:<file name>` each (the path when names repeat). */
function variantNames(objects: string[] | undefined): string[] {
  if (!objects) return ['ours'];
  const base = objects.map((o) => path.basename(o));
  const names = new Set(base).size === base.length ? base : objects;
  if (new Set(names).size !== names.length) throw new Error(`oursObjects: ${objects.join(', ')} names an object twice`);
  return names.map((n) => `ours:${n}`);
}

async function benchSet(name: TrafficSetName, set: BindingTable, family: TrafficRow['family'], kinds: Array<[TrafficKind, Destination[]]>, s: Settings): Promise<TrafficRow[]> {
  const owned: Fd[] = [];
  const namespaces: TestNamespace[] = [];
  const tools: Tool[] = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-traffic-'));
  let dispatcher: Dispatcher | undefined;
  let oursProg: Fd | undefined;
  const rows: TrafficRow[] = [];
  try {
    // ours: the dispatcher in its own namespace, an empty program beside it.
    const nsOurs = TestNamespace.create();
    namespaces.push(nsOurs);
    routeEverythingLocally(nsOurs);
    const location = locate({ netns: nsOurs.path, bpffs: nsOurs.bpffs });
    load(location);
    dispatcher = Dispatcher.open(location);
    const t = performance.now();
    // Bindings first: a growth reloads the default object, which the variants then replace.
    dispatcher.replaceBindings(set);
    const link = new Fd(native().objGet(path.join(location.dir, 'link')));
    owned.push(link);
    const table = new Fd(native().objGet(path.join(location.dir, 'table')));
    const tableRows = native().objInfo(table.fd, 'map').maxEntries;
    table.close();
    const tableRowsUsed = dispatcher.status().table?.rows ?? 0;
    s.log(`  ours: ${set.count} bindings published (${((performance.now() - t) / 1000).toFixed(1)} s), table of ${tableRows} rows (${tableRowsUsed} in use)`);
    const variants = variantNames(s.oursObjects);
    let serving: string | undefined = s.oursObjects ? undefined : 'ours';
    /** The program serving now, for its stats (a larger table or an upgrade brought a new one). */
    const serve = (variant: string): number => {
      if (serving !== variant) {
        const started = performance.now();
        upgrade(location, s.oursObjects![variants.indexOf(variant)]!);
        s.log(`  ${variant}: swapped in (${Math.round(performance.now() - started)} ms)`);
        oursProg?.close();
        oursProg = undefined;
        serving = variant;
      }
      oursProg ??= new Fd(native().getFdById(native().objInfo(link.fd, 'link').progId, 'prog'));
      return oursProg.fd;
    };
    const oursSide = loadTrafficObject(undefined, 1, owned);
    const netnsOurs = new Fd(fs.openSync(nsOurs.path, 'r'));
    owned.push(netnsOurs);
    owned.push(new Fd(native().linkCreateSkLookup(oursSide.programs.traffic_empty!, netnsOurs.fd)));

    // The others: a second namespace, attached one phase at a time.
    const nsOther = TestNamespace.create();
    namespaces.push(nsOther);
    routeEverythingLocally(nsOther);
    const t2 = performance.now();
    const other = loadTrafficObject(set, tableRows, owned);
    s.log(`  tubular: ${set.count} LPM entries inserted (${((performance.now() - t2) / 1000).toFixed(1)} s)`);
    const netnsOther = new Fd(fs.openSync(nsOther.path, 'r'));
    owned.push(netnsOther);

    const labels = set.labels.length;
    const has4 = set.family.subarray(0, set.count).includes(4);
    const has6 = set.family.subarray(0, set.count).includes(6);
    const phases = [...variants, ...(Object.keys(OTHERS) as Other[])];
    for (const [kind, dests] of kinds) {
      const file = path.join(tmp, `${kind}.bin`);
      writeDestinations(file, dests);
      const args = ['--dests', file, '--labels', String(labels), ...(has4 ? ['--v4'] : []), ...(has6 ? ['--v6'] : []), '--window', String(s.window), '--timeout-ms', String(s.timeoutMs), '--sender-cpu', String(s.senderCpu), '--receiver-cpu', String(s.receiverCpu)];
      const a = await Tool.start(nsOurs, args);
      tools.push(a.tool);
      const b = await Tool.start(nsOther, args);
      tools.push(b.tool);
      // Each label's sockets: to the dispatcher, and to the second namespace's SOCKMAPs.
      for (const [fam, ports] of [[4, a.v4], [6, a.v6]] as Array<[Family, number[]]>) {
        ports.forEach((port, k) => {
          const fd = takeSocket(a.pid, fam, port);
          try {
            dispatcher!.register(set.labels[k]!, fd);
          } finally {
            fs.closeSync(fd);
          }
        });
      }
      for (const [fam, ports] of [[4, b.v4], [6, b.v6]] as Array<[Family, number[]]>) {
        ports.forEach((port, k) => {
          const fd = takeSocket(b.pid, fam, port);
          try {
            const value = Buffer.alloc(8);
            value.writeBigUInt64LE(BigInt(fd));
            native().mapUpdate(other.maps.tubular_sockets!, u32Key((fam === 6 ? labels : 0) + k), value);
            if (k === 0) native().mapUpdate(other.maps.assign_sockets!, u32Key(fam === 6 ? 1 : 0), value);
          } finally {
            fs.closeSync(fd);
          }
        });
      }

      const samples: Record<string, ProgramSample[]> = Object.fromEntries(phases.map((p) => [p, []]));
      const floors: number[] = [];
      let delivered = 0;
      let misrouted = 0;
      for (let round = 0; round < s.rounds; round++) {
        const order = phases.map((_, k) => phases[(k + round) % phases.length]!);
        for (const phase of order) {
          const links: Fd[] = [];
          try {
            let candidate: number;
            let empty: number;
            let tool: Tool;
            const ours = variants.includes(phase);
            if (ours) {
              candidate = serve(phase);
              empty = oursSide.programs.traffic_empty!;
              tool = a.tool;
            } else {
              candidate = other.programs[OTHERS[phase as Other]]!;
              empty = other.programs.traffic_empty!;
              tool = b.tool;
              // Candidate first: the empty one never assigns, so the order changes no verdict.
              links.push(new Fd(native().linkCreateSkLookup(candidate, netnsOther.fd)));
              links.push(new Fd(native().linkCreateSkLookup(empty, netnsOther.fd)));
            }
            // The assign-only programs send everything to label 0's socket.
            const mode = ours || phase === 'tubular' ? 'label' : 'fixed';
            const what = `${name} ${set.count} ${kind}, ${phase}, round ${round + 1}`;
            const check = (r: RunResult, n: number) => {
              const problems: string[] = [];
              if (r.sent !== n) problems.push(`sent ${r.sent} of ${n}${r.stalled ? ' (stalled: nothing arrived for the timeout)' : ''}`);
              if (r.sendErrors) problems.push(`${r.sendErrors} send errors (${r.firstSendError})`);
              if (r.misrouted) problems.push(`${r.misrouted} misrouted, first: ${r.mismatches.map((m) => `destination ${describe(dests[m.dest]!)} expected label ${mode === 'fixed' ? 0 : m.expected} (${set.labels[m.expected]}), got ${m.got} (${set.labels[m.got]}) on IPv${m.family}`).join('; ')}`);
              if (r.missing || r.received !== r.sent) problems.push(`${r.sent - r.received} lost (${r.missing} missing), first destinations: ${r.missingDests.map((d) => describe(dests[d]!)).join(', ')}`);
              if (r.stale || r.garbage) problems.push(`${r.stale} stale and ${r.garbage} malformed datagrams`);
              if (problems.length) throw new Error(`traffic ${what}: ${problems.join('; ')}; stopping`);
            };
            check(await tool.run(s.warmup, dests.length - (s.warmup % dests.length), mode, s.timeoutMs), s.warmup);
            const c0 = progStats(candidate);
            const e0 = progStats(empty);
            const r = await tool.run(s.count, 0, mode, s.timeoutMs);
            const c1 = progStats(candidate);
            const e1 = progStats(empty);
            check(r, s.count);
            const runs = Number(c1.cnt - c0.cnt);
            const emptyRuns = Number(e1.cnt - e0.cnt);
            // Each datagram runs every attached program once (and nothing else runs them).
            if (runs < r.sent || emptyRuns < r.sent) throw new Error(`traffic ${what}: run_cnt grew by ${runs} (empty: ${emptyRuns}) for ${r.sent} datagrams; are stats enabled?`);
            const candidateNs = Number(c1.ns - c0.ns) / runs;
            const emptyNs = Number(e1.ns - e0.ns) / emptyRuns;
            samples[phase]!.push({ candidate_ns: round1(candidateNs), empty_ns: round1(emptyNs), net_ns: round1(candidateNs - emptyNs), runs, empty_runs: emptyRuns, datagrams: r.sent, elapsed_ms: Math.round(r.elapsedMs) });
            floors.push(emptyNs);
            delivered += r.received;
            misrouted += r.misrouted;
            s.log(`  ${kind} round ${round + 1} ${phase.padEnd(7)} ${round1(candidateNs - emptyNs)} ns net (${round1(candidateNs)} − empty ${round1(emptyNs)}), ${r.sent} datagrams in ${Math.round(r.elapsedMs)} ms`);
          } finally {
            for (const l of links) l.close(); // detaches
          }
        }
      }
      a.tool.close();
      b.tool.close();
      const net = (p: string) => round1(median(samples[p]!.map((x) => x.net_ns)));
      const row: TrafficRow = {
        set: name,
        family,
        bindings: set.count,
        kind,
        destinations: dests.length,
        distinct_destinations: distinct(dests),
        exact_share: exactShare(dests),
        datagrams: s.count,
        rounds: s.rounds,
        ours_ns: net(variants[0]!),
        tubular_ns: net('tubular'),
        assign_ns: net('assign'),
        probe_ns: net('probe'),
        probe2_ns: net('probe2'),
        table_rows: tableRows,
        table_rows_used: tableRowsUsed,
        ...(s.oursObjects ? { ours_variants: Object.fromEntries(variants.map((v) => [v.slice('ours:'.length), net(v)])) } : {}),
        floor_ns: round1(median(floors)),
        ratio: 0,
        ours_minus_assign: 0,
        probe_minus_assign: 0,
        probe2_minus_assign: 0,
        delivered,
        misrouted,
        samples,
        sender_cpu: s.senderCpu,
        receiver_cpu: s.receiverCpu,
      };
      row.ratio = Math.round((row.tubular_ns / Math.max(1, row.ours_ns)) * 100) / 100;
      row.ours_minus_assign = round1(row.ours_ns - row.assign_ns);
      row.probe_minus_assign = round1(row.probe_ns - row.assign_ns);
      row.probe2_minus_assign = round1(row.probe2_ns - row.assign_ns);
      const others = row.ours_variants ? ` (${Object.entries(row.ours_variants).map(([k, v]) => `${k} ${v}`).join(', ')})` : '';
      s.log(`${name} ${set.count} ${kind}: ours ${row.ours_ns} ns${others}, tubular ${row.tubular_ns} ns (${row.ratio}×), assign-only ${row.assign_ns} ns, probe ${row.probe_ns} ns (+${row.probe_minus_assign}), probe2 ${row.probe2_ns} ns (+${row.probe2_minus_assign}), floor ${row.floor_ns} ns`);
      rows.push(row);
    }
  } finally {
    for (const tool of tools) tool.close();
    oursProg?.close();
    dispatcher?.close();
    for (const fd of owned.reverse()) fd.close();
    for (const ns of namespaces) ns.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return rows;
}

function describe(d: Destination): string {
  return `${formatAddress(d.family, d.words)} port ${d.port}`;
}

export function formatTable(rows: TrafficRow[]): string {
  const variants = [...new Set(rows.flatMap((r) => Object.keys(r.ours_variants ?? {})))];
  const head = ['set', 'family', 'bindings', 'traffic', 'destinations (distinct)', 'exact-port share', 'datagrams', 'ours ns', ...variants.map((v) => `${v} ns`), 'tubular ns', 'assign ns', 'probe ns', 'probe2 ns', 'floor ns', 'ratio', 'ours − assign', 'probe − assign', 'probe2 − assign', 'table rows (in use)', 'delivered', 'misrouted'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const cells = [r.set, r.family === 'dual' ? 'dual' : `IPv${r.family}`, r.bindings, r.kind, `${r.destinations} (${r.distinct_destinations})`, r.exact_share, r.datagrams, r.ours_ns, ...variants.map((v) => r.ours_variants?.[v] ?? '—'), r.tubular_ns, r.assign_ns, r.probe_ns, r.probe2_ns, r.floor_ns, `${r.ratio}×`, r.ours_minus_assign, r.probe_minus_assign, r.probe2_minus_assign, `${r.table_rows} (${r.table_rows_used})`, r.delivered, r.misrouted];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sets: { type: 'string', default: 'random:1000,random:100000,random:1000000' },
      count: { type: 'string', default: '1000000' },
      rounds: { type: 'string', default: '3' },
      kinds: { type: 'string', default: 'spread,hot' },
      destinations: { type: 'string' },
      window: { type: 'string' },
      'timeout-ms': { type: 'string' },
      'sender-cpu': { type: 'string' },
      'receiver-cpu': { type: 'string' },
      'ours-objects': { type: 'string' },
      out: { type: 'string' },
    },
  });
  const names = new Set(['dense', 'random', 'bgp', 'real', 'real6', 'ipv6', 'dual']);
  const plan = values.sets!.split(',').map((entry): [TrafficSetName, number] => {
    const [name, size] = entry.split(':');
    if (!names.has(name!)) throw new Error(`--sets: unknown set ${name}`);
    const n = size === undefined || size === 'all' ? Infinity : Number(size);
    if (!(n > 0)) throw new Error(`--sets: bad size in ${entry}`);
    return [name as TrafficSetName, n];
  });
  const int = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  const kinds = values.kinds!.split(',') as TrafficKind[];
  for (const k of kinds) if (k !== 'spread' && k !== 'hot') throw new Error(`--kinds: unknown kind ${k}`);
  const rows = await trafficBench(plan, {
    count: Number(values.count),
    rounds: Number(values.rounds),
    kinds,
    destinations: int(values.destinations),
    window: int(values.window),
    timeoutMs: int(values['timeout-ms']),
    senderCpu: int(values['sender-cpu']),
    receiverCpu: int(values['receiver-cpu']),
    oursObjects: values['ours-objects']?.split(',').map((o) => path.resolve(o)),
  });
  process.stdout.write(
    TRAFFIC_METHOD.replace(/\.$/, '') +
      (rows[0] ? `; the tool's sender (where loopback delivery runs the programs) on CPU ${rows[0].sender_cpu}, its receiver on CPU ${rows[0].receiver_cpu} (-1: unpinned)` : '') +
      '.\n\n' +
      `${formatTable(rows)}\n`,
  );
  if (values.out) fs.writeFileSync(values.out, `${JSON.stringify({ date: new Date().toISOString(), kernel: os.release(), rows }, null, 2)}\n`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
