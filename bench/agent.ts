/**
 * Control plane to data plane (issue 5's figures), in one process on
 * loopback TLS, against a real dispatcher and firewall in a fresh network
 * namespace: a snapshot of 100,000 bindings from publish to acknowledged
 * (the agent ACKs only after the dispatcher and the firewall have it and
 * it is persisted), then 100 one-binding changes, each timed from publish
 * to its ACK: published as a delta (the service-bindings path: the control
 * plane validates the change against its current state) and, for 20 more,
 * as a whole new state (the file path: the control plane indexes and diffs
 * 100,000 bindings; the file's parsing is not counted). Run unpinned, like
 * the agent.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseDesiredState } from '../src/desired/state.js';
import { ControlPlaneServer } from '../src/controlplane/server.js';
import { Agent } from '../src/agent/agent.js';
import { TestNamespace } from '../test/support/netns.js';
import { makeCerts } from '../test/support/certs.js';
import { stateDoc } from './firewall.js';

export interface AgentBench {
  bindings: number;
  snapshot_ms: number;
  changes: number;
  change_p50_ms: number;
  change_p99_ms: number;
  change_max_ms: number;
  whole_state_changes: number;
  whole_state_change_p50_ms: number;
  whole_state_change_max_ms: number;
}

const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;

export async function agentBench(count = 100_000, changes = 100): Promise<AgentBench> {
  const ns = TestNamespace.create();
  const certs = makeCerts();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-agent-bench-'));
  const server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { bench: 'tok' }, epoch: 'bench' });
  let agent: Agent | undefined;
  try {
    const port = await server.listen();
    fs.writeFileSync(path.join(dir, 'ca.pem'), certs.ca);
    fs.writeFileSync(path.join(dir, 'token'), 'tok', { mode: 0o600 });
    agent = new Agent({
      agentId: 'bench',
      stateDir: path.join(dir, 'state'),
      controlPlane: { url: `wss://127.0.0.1:${port}/`, caFile: path.join(dir, 'ca.pem'), tokenFile: path.join(dir, 'token') },
      netns: ns.path,
      bpffs: ns.bpffs,
      firewall: { backend: 'auto', resyncSeconds: 3600 },
      heartbeatSeconds: 3600,
      adminSocket: path.join(dir, 'admin.sock'),
      registrationSocket: path.join(dir, 'register.sock'),
      registration: {},
    });
    agent.log.level = process.env.BENCH_LOG ?? 'warn';
    await agent.start();
    const acked = async (version: number) => {
      while (server.status()[0]?.applied?.version !== version) await new Promise((r) => setImmediate(r));
    };
    while (!server.status()[0]?.connected) await new Promise((r) => setTimeout(r, 5));
    const doc = stateDoc(count);
    let started = performance.now();
    let v = server.publish(parseDesiredState(doc, 'bench')).version;
    await acked(v);
    const snapshotMs = performance.now() - started;
    // One binding at a time: /32s carved out of cdn's any-port /16-/24s, given to spectrum.
    const cdn = doc.bindings.filter((b) => b.label === 'cdn' && b.port === 0 && b.protocol === 'tcp' && !b.prefix.includes(':') && Number(b.prefix.split('/')[1]) <= 24);
    const carve = (i: number) => ({ label: 'spectrum', protocol: 'tcp' as const, prefix: `${cdn[i % cdn.length]!.prefix.split('/')[0]!.replace(/\.\d+$/, `.${100 + Math.floor(i / cdn.length)}`)}/32`, port: 0 });
    const times: number[] = [];
    for (let i = 0; i < changes; i++) {
      started = performance.now();
      v = server.publishDelta({ add: [carve(i)], remove: [] }).version;
      await acked(v);
      times.push(performance.now() - started);
      if (process.env.BENCH_LOG) process.stderr.write(`change ${i} ${(performance.now() - started).toFixed(1)} ms\n`);
    }
    const wholeTimes: number[] = [];
    let bindings = [...doc.bindings, ...Array.from({ length: changes }, (_, i) => carve(i))];
    for (let i = changes; i < changes + 20; i++) {
      bindings = [...bindings, carve(i)];
      const state = parseDesiredState({ ...doc, bindings }, 'bench'); // the file's parsing: before the clock starts
      started = performance.now();
      v = server.publish(state).version;
      await acked(v);
      wholeTimes.push(performance.now() - started);
    }
    const round = (x: number) => Math.round(x * 10) / 10;
    return {
      bindings: count,
      snapshot_ms: Math.round(snapshotMs),
      changes,
      change_p50_ms: round(percentile(times, 0.5)),
      change_p99_ms: round(percentile(times, 0.99)),
      change_max_ms: round(Math.max(...times)),
      whole_state_changes: wholeTimes.length,
      whole_state_change_p50_ms: round(percentile(wholeTimes, 0.5)),
      whole_state_change_max_ms: round(Math.max(...wholeTimes)),
    };
  } finally {
    agent?.stop();
    await server.close();
    ns.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(certs.dir, { recursive: true, force: true });
  }
}

/** The figures from a process on every CPU (the rest of the bench is pinned to one). */
export function agentBenchUnpinned(): AgentBench {
  const cpus = `0-${os.cpus().length - 1}`;
  const out = execFileSync('taskset', ['-c', cpus, process.execPath, fileURLToPath(import.meta.url)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return JSON.parse(out) as AgentBench;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(`${JSON.stringify(await agentBench())}\n`);
  process.exit(0);
}
