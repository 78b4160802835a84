/**
 * `npm run bench [-- --quick]`: the dispatcher against tubular's design, in
 * one run on this machine. Prints the machine and the tables (real traffic
 * first, bench/traffic.ts; then the test-run lookup latency), writes
 * bench/results/latest.{json,md} and bench/results/traffic.svg.
 * Never part of the test run; needs root (BPF, network namespaces).
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { projectRoot } from '../src/paths.js';
import { describeMachine, mapMemory, type Machine } from './machine.js';
import { familyOf, makeSet, type SetName, PORTS } from './sets.js';
import { buildOurs, loadTubular, makeQueries, LookupBench } from './harness.js';
import { HEADER, ROW_BYTES } from '../src/trie/layout.js';
import { locate } from '../src/dispatcher/state.js';
import { Dispatcher, load } from '../src/dispatcher/dispatcher.js';
import { parsePrefix, type Prefix } from '../src/net/address.js';
import { chart } from './chart.js';
import { formatTable, trafficBench, TRAFFIC_METHOD } from './traffic.js';
import type { LookupRow, TrafficRow, TrafficSetName } from './rows.js';
import { TestNamespace } from '../test/support/netns.js';
import { socketsOfProcess } from '../src/sockets/sockets.js';
import { releaseTimes } from './release.js';
import { buildSingle } from './single.js';
import { firewallBenchUnpinned } from './firewall.js';
import { agentBenchUnpinned } from './agent.js';
import { verifyBench } from './verify.js';
import { fleetBenchUnpinned } from './fleet.js';

const root = projectRoot();
const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    out: { type: 'string' },
    only: { type: 'string' },
    sets: { type: 'string' },
    single: { type: 'boolean' },
    'traffic-count': { type: 'string' },
    'traffic-rounds': { type: 'string' },
    'ours-objects': { type: 'string' },
  },
});
const quick = flags.quick === true;
const outDir = flags.out ?? path.join(root, 'bench/results');
/**
 * --only traffic,lookups,release,bind,conn,firewall,agent,verify,fleet runs
 * parts (and writes no results); --sets real,random:1000000 picks the rows of
 * both tables (with --only); --traffic-count, --traffic-rounds and
 * --ours-objects a.o,b.o (an A/B of dispatcher objects) go to the traffic part.
 */
const only = flags.only?.split(',');
const runs = (part: string) => !only || only.includes(part);

const collectGarbage = () => (globalThis as { gc?: () => void }).gc?.();
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const log = (s: string) => process.stderr.write(`${s}\n`);

function lookupRow(name: SetName, size: number, withTubular: boolean, queryCount: number): LookupRow {
  const set = makeSet(name, size);
  // Collect the previous rows' garbage first, so each build and insert is
  // timed on its own (with node --expose-gc, as scripts/bench.sh runs it).
  collectGarbage();
  const started = performance.now();
  const built = buildOurs(set);
  const buildMs = performance.now() - started;
  collectGarbage();
  const tubular = withTubular ? loadTubular(set) : undefined;
  const queries = makeQueries(set, familyOf(name), queryCount);
  // Without the baseline, an empty LPM trie stands in (the program needs one).
  const stand = tubular?.map ?? loadTubular(makeSet(name, 0)).map;
  const bench = new LookupBench(built, stand, queries);
  const publishMs = bench.publishMs;
  try {
    const ours = bench.answers('check_ours');
    let hits = 0;
    for (const a of ours) if (a) hits++;
    if (tubular) {
      const theirs = bench.answers('check_tubular');
      for (let i = 0; i < ours.length; i++) {
        if (ours[i] !== theirs[i]) throw new Error(`${name} ${set.count}: query ${i}: ours says ${ours[i]}, tubular says ${theirs[i]}; stopping`);
      }
    }
    // The timed runs chain each query to the previous answer (bench.c).
    bench.expect(ours);
    const floors: number[] = [];
    const oursNs: number[] = [];
    const theirsNs: number[] = [];
    for (let round = 0; round < 3; round++) {
      floors.push(bench.time('bench_floor', queries.count));
      oursNs.push(bench.time('bench_ours', queries.count));
      if (tubular) theirsNs.push(bench.time('bench_tubular', queries.count));
    }
    const floor = median(floors);
    const distinct = bench.lastOrder().distinct;
    const header = new DataView(built.bytes.buffer, built.bytes.byteOffset);
    const shadowRow = header.getUint32(HEADER.shadowRow, true);
    const row: LookupRow = {
      set: name,
      family: familyOf(name),
      bindings: set.count,
      queries: queries.count,
      hits,
      floor_ns: floor,
      ours_ns: Math.max(0, median(oursNs) - floor),
      tubular_ns: tubular ? Math.max(0, median(theirsNs) - floor) : null,
      ratio: null,
      ours_build_ms: Math.round(buildMs),
      ours_publish_ms: Math.round(publishMs * 10) / 10,
      tubular_insert_ms: tubular ? Math.round(tubular.insertMs) : null,
      tubular_insert: tubular ? (tubular.batch ? 'batch' : 'one by one') : null,
      ours_bytes: bench.tableMemory(),
      ours_trie_bytes: (shadowRow || built.rows) * ROW_BYTES,
      tubular_bytes: tubular ? mapMemory(tubular.map.fd) : null,
      testrun_method: 'dependent',
      testrun_distinct: distinct,
    };
    if (row.tubular_ns !== null) row.ratio = Math.round((row.tubular_ns / Math.max(1, row.ours_ns)) * 10) / 10;
    if (flags.single && tubular) {
      const single = new LookupBench(buildSingle(set), stand, queries);
      try {
        const theirs = bench.answers('check_tubular');
        const answers = single.answers('check_single');
        for (let i = 0; i < answers.length; i++) {
          if (answers[i] !== theirs[i]) throw new Error(`${name} ${set.count}: query ${i}: single-walk prototype says ${answers[i]}, tubular ${theirs[i]}; stopping`);
        }
        const times: number[] = [];
        for (let round = 0; round < 3; round++) times.push(single.time('bench_single', queries.count));
        row.single_ns = Math.max(0, median(times) - floor);
        row.single_bytes = single.tableMemory();
      } finally {
        single.close();
      }
    }
    return row;
  } finally {
    bench.close();
    if (stand !== tubular?.map) stand.close();
    tubular?.map.close();
  }
}

/** The same 1M build again, as a long-lived owner's next full replace: the median of `count`. */
function warmBuilds(set: ReturnType<typeof makeSet>, count: number): { ours_build_warm_ms: number; ours_build_warm_samples: number[] } {
  const samples: number[] = [];
  for (let k = 0; k < count; k++) {
    collectGarbage();
    const started = performance.now();
    buildOurs(set);
    samples.push(Math.round(performance.now() - started));
  }
  return { ours_build_warm_ms: median(samples), ours_build_warm_samples: samples };
}

/** A loaded dispatcher in a scratch namespace (the tests' TestNamespace), open for `fn`. */
async function withDispatcher<T>(fn: (d: Dispatcher, ns: TestNamespace) => T | Promise<T>): Promise<T> {
  const ns = TestNamespace.create();
  try {
    const location = locate({ netns: ns.path, bpffs: ns.bpffs });
    load(location);
    const d = Dispatcher.open(location);
    try {
      return await fn(d, ns);
    } finally {
      d.close();
    }
  } finally {
    ns.destroy();
  }
}

/**
 * Time from `bind` (the library call the CLI and the agent make) until the
 * loaded program answers with it (BPF_PROG_TEST_RUN). A long-lived owner
 * (the agent) keeps the table mapped: the first bind of a Dispatcher maps
 * it (reported apart as `first_ms`), the rest are the steady state.
 */
function bindLatency(size: number, count: number): Promise<{ bindings: number; bind_ms: number; p90_ms: number; first_ms: number; in_place: number; samples: number }> {
  return withDispatcher((d) => {
    d.replaceBindings(makeSet('random', size));
    const samples: number[] = [];
    let inPlace = 0;
    for (let k = 0; k < count; k++) {
      // 198.18.0.0/15 (benchmarking range): /24s the random set may or may not hold.
      const address = (0xc6120000 + (k << 8)) >>> 0;
      const prefix: Prefix = { family: 4, words: [address, 0, 0, 0], length: 24 };
      const label = `bench-bind-${k % 3}`;
      const started = performance.now();
      const r = d.bind({ label, protocol: 'tcp', prefix, port: 0 });
      const [answer] = [...d.lookup([{ protocol: 'tcp', address: { family: 4, words: [address + 1, 0, 0, 0] }, port: 80 }])];
      samples.push(performance.now() - started);
      if (answer?.label !== label) throw new Error(`bind ${k} not visible to the program`);
      if (r.inPlace) inPlace++;
    }
    const rest = samples.slice(1).sort((a, b) => a - b);
    const round = (x: number) => Math.round(x * 1000) / 1000;
    return {
      bindings: size,
      bind_ms: round(median(rest)),
      p90_ms: round(rest[Math.floor(rest.length * 0.9)]!),
      first_ms: round(samples[0]!),
      in_place: inPlace,
      samples: samples.length,
    };
  });
}

/** TCP connections per second to a plain listener vs. through the dispatcher, same namespace. */
function connectionRate(count: number, rounds: number) {
  return withDispatcher(async (d, ns) => {
    await ns.startService('plain', ['tcp4@192.0.2.1:8080']);
    const svc = await ns.startService('svc', ['tcp4@127.0.0.1:9090']);
    d.bind({ label: 'svc', protocol: 'tcp', prefix: parsePrefix('198.51.100.0/24') as Prefix, port: 0 });
    const fds = socketsOfProcess(svc.pid, 'tcp', { family: 4, words: [0x7f000001, 0, 0, 0] }, 9090);
    try {
      d.register('svc', fds[0]!);
    } finally {
      for (const fd of fds) fs.closeSync(fd);
    }
    const batch = Math.ceil(count / rounds);
    const out = execFileSync('ip', ['netns', 'exec', ns.name, process.execPath, path.join(root, 'bench/conn-client.mjs'), '192.0.2.1', '198.51.100.7', '8080', String(batch), String(rounds)], {
      encoding: 'utf8',
    });
    const rates = JSON.parse(out) as Record<string, number[]>;
    const plain = rates['192.0.2.1']!;
    const dispatched = rates['198.51.100.7']!;
    // Paired by round: adjacent batches share the machine's momentary load.
    const paired = plain.map((p, r) => dispatched[r]! / p - 1);
    return {
      connections: 2 * batch * rounds,
      rounds,
      batch,
      plain_per_s: Math.round(median(plain)),
      dispatched_per_s: Math.round(median(dispatched)),
      difference_pct: Math.round(median(paired) * 1000) / 10,
    };
  });
}

function markdown(machine: Machine, traffic: TrafficRow[], rows: LookupRow[], extra: Record<string, unknown>): string {
  const t = traffic[0];
  const lines = [
    `# Switchyard benchmark (${quick ? 'quick' : 'full'} run, ${new Date().toISOString()})`,
    '',
    `Machine: ${machine.cpu}, ${machine.cpus} CPUs, ${Object.entries(machine.caches).map(([k, v]) => `${k} ${v}`).join(', ')}; kernel ${machine.kernel}; BPF JIT ${machine.bpfJit}; SRSO: ${machine.mitigations.spec_rstack_overflow}.`,
    '',
    ...(t
      ? [
          `Real traffic: ${TRAFFIC_METHOD} ${t.datagrams} datagrams per program and round, ${t.rounds} rounds; spread: destinations drawn over the bindings, hot: 256 of them; the datagram tool's sender (where loopback delivery runs the programs) on CPU ${t.sender_cpu}, its receiver on CPU ${t.receiver_cpu}.`,
          '',
          formatTable(traffic),
          '',
          '![ns per datagram, real traffic](traffic.svg)',
          '',
        ]
      : []),
    `Dependent-load latency (random 64-byte lines; what one cache-missing trie level costs): ${Object.entries(machine.loadLatencyNs).map(([k, v]) => `${k} ${v} ns`).join(', ')}.`,
    '',
    'Lookup latency, BPF_PROG_TEST_RUN: ns per program run over a random array of queries, each run\'s query index computed from the previous run\'s answer (so a lookup\'s loads cannot start before the previous answer is loaded: a latency, not a throughput), net of a floor program that pays the same dependent chain without the lookup; median of 3.',
    '',
    '| set | family | bindings | floor ns | ours ns (latency) | tubular ns (latency) | ratio | ours B/binding (trie) | tubular B/binding | ours build+publish ms | tubular insert ms |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map((r) =>
      [
        r.set,
        `IPv${r.family}`,
        r.bindings,
        r.floor_ns,
        r.ours_ns,
        r.tubular_ns ?? '—',
        r.ratio === null ? '—' : `${r.ratio}×`,
        `${(r.ours_bytes / r.bindings).toFixed(1)} (${(r.ours_trie_bytes / r.bindings).toFixed(1)})`,
        r.tubular_bytes === null ? '—' : (r.tubular_bytes / r.bindings).toFixed(1),
        `${r.ours_build_ms}+${r.ours_publish_ms}`,
        r.tubular_insert_ms === null ? '—' : `${r.tubular_insert_ms} (${r.tubular_insert})`,
      ].join(' | ').replace(/^/, '| ').replace(/$/, ' |'),
    ),
    '',
    '```json',
    JSON.stringify(extra, null, 2),
    '```',
  ];
  return lines.join('\n') + '\n';
}

async function main(): Promise<void> {
  const machine = describeMachine();
  log(`machine: ${machine.cpu}, ${machine.cpus} CPUs, ${JSON.stringify(machine.caches)}, kernel ${machine.kernel}, JIT ${machine.bpfJit}, load latency ${JSON.stringify(machine.loadLatencyNs)}`);
  const queryCount = 1 << 20;
  const plan: Array<[SetName, number, boolean]> = quick
    ? [
        ['random', 1_000, true], ['random', 100_000, true], ['random', 1_000_000, true],
        ['bgp', 1_000, true], ['bgp', 100_000, true], ['bgp', 1_000_000, true],
        ['real', Infinity, true], ['ipv6', 1_000_000, true], ['random', 4_000_000, false],
      ]
    : [
        ...(['dense', 'random', 'bgp', 'ipv6'] as SetName[]).flatMap((s) => [1_000, 10_000, 100_000, 1_000_000].map((n) => [s, n, true] as [SetName, number, boolean])),
        ['real', Infinity, true], ['real6', Infinity, true], ['random', 4_000_000, false], ['bgp', 4_000_000, false],
      ];
  const picked: Array<[TrafficSetName, number]> | undefined = flags.sets?.split(',').map((entry) => {
    const [name, size] = entry.split(':');
    return [name as TrafficSetName, size && size !== 'all' ? Number(size) : Infinity];
  });
  // The headline: real datagrams through sk_lookup (bench/traffic.ts), each set
  // with traffic spread over its bindings and with 256 hot destinations.
  const trafficPlan: Array<[TrafficSetName, number]> = quick
    ? [['random', 1_000], ['random', 100_000], ['random', 1_000_000], ['real', Infinity], ['ipv6', 100_000], ['ipv6', 1_000_000], ['dual', 100_000]]
    : [['random', 1_000], ['random', 100_000], ['random', 1_000_000], ['bgp', 1_000_000], ['real', Infinity], ['ipv6', 100_000], ['ipv6', 1_000_000], ['dual', 200_000]];
  // Per program, round and kind: five programs, two kinds, three rounds, about
  // 8 µs a datagram here; 500K keeps the full run's traffic part near 25 min.
  const trafficCount = Number(flags['traffic-count'] ?? (quick ? 300_000 : 500_000));
  const trafficRounds = Number(flags['traffic-rounds'] ?? 3);
  const trafficStarted = performance.now();
  const traffic = runs('traffic')
    ? await trafficBench(picked ?? trafficPlan, { count: trafficCount, rounds: trafficRounds, kinds: ['spread', 'hot'], oursObjects: flags['ours-objects']?.split(',').map((o) => path.resolve(o)), log })
    : [];
  if (traffic.length) log(`traffic: ${traffic.length} rows, ${trafficCount} datagrams per phase, ${trafficRounds} rounds, in ${((performance.now() - trafficStarted) / 60_000).toFixed(1)} min\n${formatTable(traffic)}`);
  const rows: LookupRow[] = [];
  const lookupPlan: Array<[SetName, number, boolean]> = picked ? picked.filter(([name]) => name !== 'dual').map(([name, size]) => [name as SetName, size, true]) : plan;
  for (const [name, size, withTubular] of runs('lookups') ? lookupPlan : []) {
    const t = performance.now();
    const row = lookupRow(name, size, withTubular, queryCount);
    rows.push(row);
    const single = row.single_ns === undefined ? '' : `  single-walk prototype ${row.single_ns} ns (${((row.tubular_ns ?? 0) / Math.max(1, row.single_ns)).toFixed(1)}x, ${(row.single_bytes! / row.bindings).toFixed(1)} B/binding)`;
    log(`${name.padEnd(6)} ${String(row.bindings).padStart(8)}  floor ${row.floor_ns} ns  ours ${row.ours_ns} ns  tubular ${row.tubular_ns ?? '—'} ns  ratio ${row.ratio ?? "—"}${single}  build ${row.ours_build_ms} ms, tubular insert ${row.tubular_insert_ms ?? "—"} ms  (${((performance.now() - t) / 1000).toFixed(1)} s)`);
  }
  const release = runs('release') ? await releaseTimes(makeSet('random', 1_000_000)) : null;
  if (release) log(`release 1M: ours ${release.ours.ms ?? 'not seen'} ms (${release.ours.bytes} bytes), tubular ${release.tubular.ms ?? 'not seen'} ms (${release.tubular.bytes} bytes)`);
  const bind = runs('bind') ? await bindLatency(1_000_000, quick ? 50 : 200) : null;
  if (bind) log(`bind visible to the program: median ${bind.bind_ms} ms, p90 ${bind.p90_ms} ms (first of this process ${bind.first_ms} ms) with ${bind.bindings} bindings`);
  const conn = runs('conn') ? await connectionRate(quick ? 6_000 : 30_000, quick ? 20 : 60) : null;
  if (conn) log(`TCP connections: plain ${conn.plain_per_s}/s, through the dispatcher ${conn.dispatched_per_s}/s (${conn.difference_pct}%, median of per-round pairs)`);
  const firewall = runs('firewall') ? firewallBenchUnpinned(100_000) : null;
  if (firewall) {
    log(
      `firewall (${firewall.prefixes} prefixes, ${firewall.set_entries} set entries, ${firewall.backend}; medians of ${firewall.first_apply_samples.length}): first apply ${firewall.first_apply_ms} ms ${JSON.stringify(firewall.first_apply_samples)}, one-prefix change ${firewall.one_prefix_change_ms} ms ${JSON.stringify(firewall.one_prefix_change_samples)} (${firewall.one_prefix_change_writes} write each), restart with nothing to change ${firewall.restart_noop_ms} ms ${JSON.stringify(firewall.restart_noop_samples)} (${firewall.restart_noop_writes} writes)`,
    );
  }
  // Control plane → data plane (issue 5): in the full run, or with --only agent.
  const agent = (only ? only.includes('agent') : !quick) ? agentBenchUnpinned() : null;
  if (agent) {
    log(`agent (${agent.bindings} bindings, its own process): snapshot parsed + published → acknowledged ${agent.snapshot_ms} ms (median of ${JSON.stringify(agent.snapshot_samples)}, parse ${JSON.stringify(agent.snapshot_parse_samples)}); peak agent RSS ${agent.agent_peak_rss_mb} MB; ${agent.changes} one-binding changes published as deltas: p50 ${agent.change_p50_ms} ms, p99 ${agent.change_p99_ms} ms, max ${agent.change_max_ms} ms; ${agent.whole_state_changes} published as whole states: p50 ${agent.whole_state_change_p50_ms} ms, max ${agent.whole_state_change_max_ms} ms`);
  }
  // Verification and semantic diff of two 1M-binding states (issue 6).
  const verify = runs('verify') && !quick ? verifyBench() : null;
  if (verify) {
    log(`verify + diff (${verify.bindings} bindings, ${verify.changes} changes; medians of 3): verify ${verify.verify_ms} ms ${JSON.stringify(verify.verify_samples)}, diff ${verify.diff_ms} ms ${JSON.stringify(verify.diff_samples)}, together ${verify.verify_and_diff_ms} ms; parsing one state ${verify.parse_ms} ms; findings ${JSON.stringify(verify.findings)}; ${verify.diff_ranges} ranges change hands`);
  }
  // One control plane, 2,000 simulated agents (issue 6).
  const fleet = runs('fleet') && !quick ? fleetBenchUnpinned() : null;
  if (fleet) {
    log(`fleet (${fleet.agents} simulated agents over TLS): connected in ${fleet.connect_ms} ms; a ${fleet.snapshot_bindings}-binding snapshot (${fleet.snapshot_bytes} bytes) acknowledged by all in ${fleet.snapshot_all_acked_ms} ms (first ${fleet.snapshot_first_acked_ms} ms); a one-binding delta by all in ${fleet.delta_all_acked_ms} ms; control plane RSS ${fleet.rss_before_mb} MB before, peak ${fleet.rss_peak_mb} MB`);
  }
  const oneM = rows.find((r) => r.set === 'random' && r.bindings === 1_000_000);
  const rebuild = oneM ? warmBuilds(makeSet('random', 1_000_000), quick ? 1 : 3) : {};
  if (oneM) log(`replace 1M: build ${oneM.ours_build_ms} ms the first time in this process, ${JSON.stringify(rebuild)} (warm: a long-lived agent's next replace)`);
  const extra = {
    replace_1m: oneM
      ? {
          // The lookup row's build: the first of its size in this process (cold JIT).
          ours_build_ms: oneM.ours_build_ms,
          ...rebuild,
          ours_publish_ms: oneM.ours_publish_ms,
          tubular_insert_ms: oneM.tubular_insert_ms,
          tubular_insert: oneM.tubular_insert,
        }
      : null,
    release_1m: release,
    bind,
    tcp_connections: conn,
    firewall,
    agent,
    verify,
    fleet,
    ports: PORTS,
  };
  const result = { machine, quick, date: new Date().toISOString(), traffic_method: TRAFFIC_METHOD, traffic, lookups: rows, ...extra };
  if (only || picked) return;
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'latest.json'), `${JSON.stringify(result, null, 2)}\n`);
  fs.writeFileSync(path.join(outDir, 'latest.md'), markdown(machine, traffic, rows, extra));
  fs.writeFileSync(path.join(outDir, 'traffic.svg'), chart(traffic));
  process.stdout.write(markdown(machine, traffic, rows, extra));
}

await main();
