/**
 * Control plane to data plane (issue 5's figures) on loopback TLS, against
 * a real dispatcher and firewall in a fresh network namespace. The agent is
 * its own process, started as in production (`switchyard agent --config`):
 * sharing a process (and a heap, and its garbage collections) with the
 * control plane is not how either runs. The control plane runs here and
 * times, from its side, the snapshot of 100,000 bindings (the state parsed,
 * published, sent, applied by the agent to the dispatcher and the firewall,
 * persisted, acknowledged: it ACKs only after all that), on three fresh
 * agents (five, each in its own namespace with an empty state directory; the figure is their median); then,
 * on the last one, 100 one-binding changes, each timed from publish to its
 * ACK: published as a delta (the service-bindings path: the control plane
 * validates the change against its current state) and, for 20 more, as a
 * whole new state (the file path: the control plane indexes and diffs
 * 100,000 bindings; the file's parsing is not counted). Run unpinned, like
 * the agent.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseDesiredState } from '../src/desired/state.js';
import { ControlPlaneServer } from '../src/controlplane/server.js';
import { TestNamespace, CLI } from '../test/support/netns.js';
import { makeCerts } from '../test/support/certs.js';
import { writeAgentConfig } from '../test/support/agent-config.js';
import { stateDoc } from './firewall.js';

export interface AgentBench {
  bindings: number;
  /** Median of the samples: the control plane parses the state, publishes it, the agent applies and ACKs. */
  snapshot_ms: number;
  snapshot_samples: number[];
  /** Of each sample, the control plane's parse of the state (in the figure above). */
  snapshot_parse_samples: number[];
  changes: number;
  change_p50_ms: number;
  change_p99_ms: number;
  change_max_ms: number;
  whole_state_changes: number;
  whole_state_change_p50_ms: number;
  whole_state_change_max_ms: number;
  /** The agent's peak resident memory (VmHWM) at the end. */
  agent_peak_rss_mb: number;
}

const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;
const SNAPSHOT_SAMPLES = 5;

/**
 * A control plane and an agent process on a fresh namespace and state
 * directory. `pushes` collects the agent's "push handled" log lines (type,
 * code, ms, loopMaxMs: the longest its event loop was held by that push).
 */
export async function pair(dir: string, certs: ReturnType<typeof makeCerts>, pushes?: Array<{ type: string; code: string | null; ms: number; loopMaxMs: number }>) {
  const ns = TestNamespace.create();
  const server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { bench: 'tok' }, epoch: `bench-${path.basename(dir)}` });
  let agent: ChildProcess | undefined;
  const stop = async () => {
    if (agent && agent.exitCode === null) {
      const exited = new Promise((r) => agent!.once('exit', r));
      agent.kill('SIGTERM');
      await exited;
    }
    await server.close();
    ns.destroy();
  };
  try {
    const port = await server.listen();
    fs.mkdirSync(dir);
    const config = writeAgentConfig(dir, { agentId: 'bench', port, ca: certs.ca, token: 'tok', netns: ns.path, bpffs: ns.bpffs, extra: { firewall: { backend: 'auto', resync_seconds: 3600 }, heartbeat_seconds: 3600 } });
    // Its JSON log lines: to our stderr with BENCH_LOG set (phase timings), else dropped.
    // BENCH_PROFILE=DIR: the agent writes a CPU profile there when it stops.
    const profile = process.env.BENCH_PROFILE ? [`--cpu-prof`, `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : [];
    agent = spawn(process.execPath, [...profile, CLI, 'agent', '--config', config], { stdio: ['ignore', pushes ? 'pipe' : process.env.BENCH_LOG ? 'inherit' : 'ignore', 'inherit'] });
    const child = agent;
    if (pushes) {
      readline.createInterface({ input: child.stdout! }).on('line', (line) => {
        if (process.env.BENCH_LOG) process.stderr.write(`${line}\n`);
        const entry = JSON.parse(line) as { msg: string; type: string; code: string | null; ms: number; loopMaxMs: number };
        if (entry.msg === 'push handled') pushes.push({ type: entry.type, code: entry.code, ms: entry.ms, loopMaxMs: entry.loopMaxMs });
      });
    }
    const deadline = Date.now() + 30_000;
    while (!server.status()[0]?.connected) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not connect (exit ${child.exitCode})`);
      await new Promise((r) => setTimeout(r, 5));
    }
    // Connected is not idle: the agent may still be finishing its start (the
    // firewall's first read-back); a push is timed from an idle agent.
    await new Promise((r) => setTimeout(r, 1000));
    // Waits on the control plane's events (polling would keep a CPU busy, one of the agent's two).
    const acked = (version: number) =>
      new Promise<void>((resolve, reject) => {
        const done = (err?: Error) => {
          server.off('ack', onAck).off('nack', onNack);
          child.off('exit', onExit);
          if (err) reject(err);
          else resolve();
        };
        const onAck = (_: string, v: number) => v === version && done();
        const onNack = (_: string, nack: { version: number; code: string; message: string }) => nack.version === version && done(new Error(`version ${version} refused: ${nack.code} ${nack.message}`));
        const onExit = (code: number | null) => done(new Error(`the agent exited (${code}) before acknowledging version ${version}`));
        server.on('ack', onAck).on('nack', onNack);
        child.on('exit', onExit);
        if (server.status()[0]?.applied?.version === version) done();
      });
    const peakRssMb = () => Number(/VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]) / 1024;
    return { server, acked, peakRssMb, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

export async function agentBench(count = 100_000, changes = 100): Promise<AgentBench> {
  const certs = makeCerts();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-agent-bench-'));
  const doc = stateDoc(count);
  const snapshots: number[] = [];
  const parses: number[] = [];
  let last: Awaited<ReturnType<typeof pair>> | undefined;
  try {
    for (let sample = 0; sample < SNAPSHOT_SAMPLES; sample++) {
      await last?.stop();
      last = undefined;
      last = await pair(path.join(dir, `agent-${sample}`), certs);
      const started = performance.now();
      const state = parseDesiredState(doc, 'bench');
      parses.push(Math.round(performance.now() - started));
      const v = (await last.server.publish(state)).version;
      await last.acked(v);
      snapshots.push(Math.round(performance.now() - started));
    }
    const { server, acked } = last!;
    // One binding at a time: /32s carved out of cdn's any-port /16-/24s, given to spectrum.
    const cdn = doc.bindings.filter((b) => b.label === 'cdn' && b.port === 0 && b.protocol === 'tcp' && !b.prefix.includes(':') && Number(b.prefix.split('/')[1]) <= 24);
    const carve = (i: number) => ({ label: 'spectrum', protocol: 'tcp' as const, prefix: `${cdn[i % cdn.length]!.prefix.split('/')[0]!.replace(/\.\d+$/, `.${100 + Math.floor(i / cdn.length)}`)}/32`, port: 0 });
    const times: number[] = [];
    for (let i = 0; i < changes; i++) {
      const started = performance.now();
      const v = (await server.publishDelta({ add: [carve(i)], remove: [] })).version;
      await acked(v);
      times.push(performance.now() - started);
      if (process.env.BENCH_LOG) process.stderr.write(`change ${i}: ${times[i]!.toFixed(1)} ms\n`);
    }
    const wholeTimes: number[] = [];
    let bindings = [...doc.bindings, ...Array.from({ length: changes }, (_, i) => carve(i))];
    for (let i = changes; i < changes + 20; i++) {
      bindings = [...bindings, carve(i)];
      const state = parseDesiredState({ ...doc, bindings }, 'bench'); // the file's parsing: before the clock starts
      const started = performance.now();
      const v = (await server.publish(state)).version;
      await acked(v);
      wholeTimes.push(performance.now() - started);
    }
    const round = (x: number) => Math.round(x * 10) / 10;
    return {
      bindings: count,
      snapshot_ms: percentile(snapshots, 0.5),
      snapshot_samples: snapshots,
      snapshot_parse_samples: parses,
      changes,
      change_p50_ms: round(percentile(times, 0.5)),
      change_p99_ms: round(percentile(times, 0.99)),
      change_max_ms: round(Math.max(...times)),
      whole_state_changes: wholeTimes.length,
      whole_state_change_p50_ms: round(percentile(wholeTimes, 0.5)),
      whole_state_change_max_ms: round(Math.max(...wholeTimes)),
      agent_peak_rss_mb: Math.round(last!.peakRssMb()),
    };
  } finally {
    await last?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(certs.dir, { recursive: true, force: true });
  }
}

/** The figures from a process on every CPU (the rest of the bench is pinned to one). */
export function agentBenchUnpinned(count = 100_000): AgentBench {
  const cpus = `0-${os.cpus().length - 1}`;
  const out = execFileSync('taskset', ['-c', cpus, process.execPath, '--max-old-space-size=16384', fileURLToPath(import.meta.url), String(count)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return JSON.parse(out) as AgentBench;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // `node dist/bench/agent.js [bindings]` (default 100,000).
  process.stdout.write(`${JSON.stringify(await agentBench(Number(process.argv[2] ?? 100_000)))}\n`);
  process.exit(0);
}
