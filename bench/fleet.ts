/**
 * One control plane, two thousand agents (issue 6's figures): simulated
 * agents (bench/fleet-agents.ts, a process of their own, the real protocol
 * over loopback TLS) connect; the control plane, in this process, publishes
 * a snapshot of 100,000 bindings (7 MB) and then a one-binding delta; each
 * is timed from publish until every agent has acknowledged it. The control
 * plane's resident memory is sampled every 50 ms throughout: snapshots go
 * out SNAPSHOT_CONCURRENCY at a time from one shared buffer, so it stays
 * bounded however many agents there are.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseDesiredState } from '../src/desired/state.js';
import { ControlPlaneServer } from '../src/controlplane/server.js';
import { makeCerts } from '../test/support/certs.js';
import { stateDoc } from './firewall.js';

export interface FleetBench {
  agents: number;
  connect_ms: number;
  snapshot_bindings: number;
  snapshot_bytes: number;
  snapshot_all_acked_ms: number;
  snapshot_first_acked_ms: number;
  delta_all_acked_ms: number;
  delta_first_acked_ms: number;
  rss_before_mb: number;
  rss_peak_mb: number;
}

const DEADLINE_MS = 240_000;

export async function fleetBench(agents = 2000, bindings = 100_000): Promise<FleetBench> {
  const certs = makeCerts();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-fleet-'));
  const tokens = Object.fromEntries(Array.from({ length: agents }, (_, i) => [`fleet-${i}`, `tok-${i}`]));
  const server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens, epoch: 'fleet', pingMs: 60_000, ...(process.env.FLEET_CONCURRENCY ? { snapshotConcurrency: Number(process.env.FLEET_CONCURRENCY) } : {}) });
  fs.writeFileSync(path.join(dir, 'ca.pem'), certs.ca);
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
  const deadline = setTimeout(() => {
    throw new Error(`fleet bench: not done within ${DEADLINE_MS} ms`);
  }, DEADLINE_MS);
  const state = parseDesiredState(stateDoc(bindings), 'fleet'); // the file's parsing: before any clock
  const port = await server.listen();
  const fleet = fork(fileURLToPath(new URL('./fleet-agents.js', import.meta.url)), [String(port), path.join(dir, 'ca.pem'), String(agents), 'tok-'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    const errors: string[] = [];
    fleet.on('message', (m: { error?: string }) => m.error && errors.length < 5 && errors.push(m.error));
    let started = performance.now();
    await new Promise<void>((resolve, reject) => {
      fleet.on('message', (m: { connected?: number }) => m.connected === agents && resolve());
      fleet.on('exit', (code) => reject(new Error(`the simulated agents exited (${code}): ${errors.join('; ')}`)));
    });
    while (server.status().filter((a) => a.connected).length < agents) await new Promise((r) => setTimeout(r, 20));
    const connectMs = Math.round(performance.now() - started);
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    peak = rssBefore;
    /** Publishes, then resolves when every agent has acknowledged: [first, last] ms. */
    const allAcked = (publish: () => Promise<number>) =>
      new Promise<[number, number]>((resolve) => {
        const begun = performance.now();
        let first = 0;
        const acked = new Set<string>();
        let version = -1;
        const onAck = (agentId: string, v: number) => {
          if (v !== version) return;
          if (acked.size === 0) first = performance.now() - begun;
          acked.add(agentId);
          if (acked.size === agents) {
            server.off('ack', onAck);
            resolve([Math.round(first), Math.round(performance.now() - begun)]);
          }
        };
        server.on('ack', onAck);
        // ACKs come over the network, turns after the publish resolves.
        void publish().then((v) => (version = v));
      });
    const snapshot = await allAcked(async () => (await server.publish(state)).version);
    started = performance.now();
    const delta = await allAcked(async () => (await server.publishDelta({ add: [{ label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.77/32', port: 0 }], remove: [] })).version);
    const mb = (b: number) => Math.round(b / 1048576);
    return {
      agents,
      connect_ms: connectMs,
      snapshot_bindings: bindings,
      snapshot_bytes: Buffer.byteLength(server.history.snapshotText(server.history.frameFor({ have: null, refused: null }) as never)),
      snapshot_all_acked_ms: snapshot[1],
      snapshot_first_acked_ms: snapshot[0],
      delta_all_acked_ms: delta[1],
      delta_first_acked_ms: delta[0],
      rss_before_mb: mb(rssBefore),
      rss_peak_mb: mb(peak),
    };
  } finally {
    clearInterval(sampler);
    clearTimeout(deadline);
    fleet.kill();
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(certs.dir, { recursive: true, force: true });
  }
}

/** In a process of its own on every CPU (the rest of the bench is pinned to one). */
export function fleetBenchUnpinned(): FleetBench {
  const cpus = `0-${os.cpus().length - 1}`;
  const out = execFileSync('taskset', ['-c', cpus, process.execPath, '--expose-gc', fileURLToPath(import.meta.url)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return JSON.parse(out) as FleetBench;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const agents = Number(process.argv[2] ?? 2000);
  process.stdout.write(`${JSON.stringify(await fleetBench(agents))}\n`);
  process.exit(0);
}
