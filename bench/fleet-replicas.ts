/**
 * Control-plane replicas at fleet size (issue 18's figures), the way an
 * operator runs them: a PostgreSQL cluster of the bench's own
 * (test/support/postgres.ts), three `switchyard control-plane --store
 * postgres://…` processes (bin/switchyard), and simulated agents
 * (bench/fleet-agents.ts, the real protocol over loopback TLS) spread
 * evenly over the three. Measured:
 *   - a 100,000-binding state pushed to every agent as a snapshot (the
 *     leader's state file rewritten with new services, so no delta can
 *     carry it): from the write until the last agent acknowledged;
 *   - one-binding deltas through the API (POST /v1/bindings on the leader):
 *     each agent's acknowledgement time after the request was sent, p50 and
 *     p99 over all agents and deltas, and the slowest delta's last ACK;
 *   - each replica's resident memory before and after its agents
 *     connected, and its peak: RSS per 1,000 agents;
 *   - the leader SIGKILLed: until a write sent to a survivor (following
 *     its 307) is published again.
 *
 *   node --expose-gc dist/bench/fleet-replicas.js [agents=10000] [bindings=100000] [deltas=10]
 *
 * Writes bench/results/fleet-replicas.json. Needs root (the PostgreSQL
 * cluster runs as nobody) and PostgreSQL's server binaries.
 */
import fs from 'node:fs';
import zlib from 'node:zlib';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { makeCerts } from '../test/support/certs.js';
import { TestPostgres } from '../test/support/postgres.js';
import { freePort } from '../test/support/ports.js';
import { CLI } from '../test/support/netns.js';
import { projectPath } from '../src/paths.js';
import { stateDoc } from './firewall.js';

const REPLICAS = 3;
const ADMIN = 'fleet-admin-token-0123456789';
const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;
const now = () => performance.timeOrigin + performance.now();
/** CPU seconds a process has used (user + system, /proc/PID/stat fields 14 and 15, in clock ticks of 1/100 s). */
const cpuSeconds = (pid: number) => {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
};
const rssMb = (pid: number, field: 'VmRSS' | 'VmHWM') => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

export interface FleetReplicasBench {
  replicas: number;
  agents: number;
  connect_ms: number;
  snapshot_bindings: number;
  snapshot_all_acked_ms: number;
  /** The state document's size as JSON and gzipped (what an agent asking for snapshot-gzip receives, within its frame head). */
  snapshot_bytes: { json: number; gzip: number };
  /** Agents' connections ended while the snapshot went out (the control plane's write deadline) and made again. */
  snapshot_connections_closed: number;
  deltas: number;
  delta_ack_p50_ms: number;
  delta_ack_p99_ms: number;
  delta_all_acked_max_ms: number;
  per_delta: Array<{ api_ms: number; replicas: Array<{ replica: string; leading: boolean; first_ack_ms: number; last_ack_ms: number }> }>;
  rss_mb: Array<{ replica: string; before_agents: number; with_agents: number; peak: number; agents: number }>;
  rss_per_1000_agents_mb: number;
  leader_kill_to_published_ms: number;
  /** CPU seconds used from start to before the kill: the replicas', and the simulated agents' processes' (which share this machine's CPUs). */
  cpu_seconds: { replicas: number[]; simulated_agents: number[]; wall: number };
}

export async function fleetReplicasBench(agents = 10_000, bindings = 100_000, deltas = 10): Promise<FleetReplicasBench> {
  const certs = makeCerts();
  const db = TestPostgres.create();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-fleet-replicas-'));
  const children: ChildProcess[] = [];
  try {
    const admin = new pg.Client({ connectionString: db.url() });
    await admin.connect();
    await admin.query('CREATE DATABASE fleet');
    await admin.end();
    const url = db.url('fleet');
    const file = (name: string, content: string) => {
      fs.writeFileSync(path.join(dir, name), content, { mode: 0o600 });
      return path.join(dir, name);
    };
    file('ca.pem', certs.ca);
    const tokens = file('tokens.json', JSON.stringify(Object.fromEntries(Array.from({ length: agents }, (_, i) => [`fleet-${i}`, `tok-${i}-0123456789`]))));
    const admins = file('admins.json', JSON.stringify({ bench: ADMIN }));
    // The seed stays in the big state: a state that withdrew all of a service would be held for confirmation.
    const seed = { label: 'seed', protocol: 'tcp', prefix: '203.0.113.0/24', port: 0 };
    const small = { bindings: [seed], services: { seed: { tcp: [443] } } };
    const ports: number[] = [];
    for (let r = 0; r < REPLICAS; r++) ports.push(await freePort());
    const stateFiles = ports.map((_, r) => file(`desired-${r}.json`, JSON.stringify(small)));
    const start = (r: number) => {
      const child = spawn(
        process.execPath,
        [
          '--max-old-space-size=4096',
          CLI,
          'control-plane',
          ...['--state', stateFiles[r]!, '--store', url, '--replica-name', `r${r}`, '--advertise', `https://127.0.0.1:${ports[r]}`],
          ...['--listen', `127.0.0.1:${ports[r]}`, '--cert', file('cert.pem', certs.cert), '--key', file('key.pem', certs.key), '--tokens', tokens, '--admin-tokens', admins, '--log-level', process.env.FLEET_LOG ?? 'error'],
        ],
        { stdio: ['ignore', process.env.FLEET_LOG ? 'inherit' : 'ignore', 'inherit'] },
      );
      children.push(child);
      return child;
    };
    const request = (port: number, method: string, route: string, body?: unknown) =>
      new Promise<{ status: number; body: Record<string, unknown>; location?: string }>((resolve) => {
        const payload = body === undefined ? '' : JSON.stringify(body);
        const req = https.request(
          { host: '127.0.0.1', port, path: route, method, ca: certs.ca, agent: false, timeout: 10_000, headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
          (res) => {
            let text = '';
            res.on('data', (d) => (text += d));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Record<string, unknown>) : {}, ...(res.headers.location ? { location: res.headers.location } : {}) }));
          },
        );
        req.on('timeout', () => req.destroy(new Error('timeout')));
        req.on('error', () => resolve({ status: 0, body: {} }));
        req.end(payload);
      });
    const version = async (port: number) => ((await request(port, 'GET', '/status')).body.publication as { version: number | null } | undefined)?.version ?? null;
    const until = async (what: string, check: () => Promise<boolean>, ms: number) => {
      process.stderr.write(`fleet-replicas: waiting for ${what}\n`);
      const begun = performance.now();
      while (!(await check())) {
        if (performance.now() - begun > ms) throw new Error(`fleet-replicas: ${what} not within ${ms} ms`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };

    const benchStart = performance.now();
    const replicas = ports.map((_, r) => start(r));
    await until('version 1 on every replica', async () => (await Promise.all(ports.map(version))).every((v) => v === 1), 60_000);
    const before = replicas.map((c) => rssMb(c.pid!, 'VmRSS'));

    // The agents, an equal share per replica, each share in a process of its own.
    const share = Math.ceil(agents / REPLICAS);
    const acks = new Map<number, number[]>();
    /** `${version} ${replica}` → the ACK times of that replica's agents. */
    const byReplica = new Map<string, number[]>();
    /** Per agents' process, its last progress report. */
    const progress: Array<{ progress: Record<string, number>; closed: number; errors: number }> = [];
    const fleets = ports.map((port, r) => {
      const count = Math.min(share, agents - r * share);
      const f = fork(fileURLToPath(new URL('./fleet-agents.js', import.meta.url)), [String(port), path.join(dir, 'ca.pem'), String(count), 'tok-', String(r * share), '-0123456789'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      children.push(f);
      f.on('message', (m: { allAcked?: number; times?: number[]; progress?: Record<string, number>; closed?: number; errors?: number }) => {
        if (m.allAcked !== undefined) {
          acks.set(m.allAcked, [...(acks.get(m.allAcked) ?? []), ...m.times!]);
          byReplica.set(`${m.allAcked} ${r}`, m.times!);
        }
        if (m.progress) progress[r] = m as { progress: Record<string, number>; closed: number; errors: number };
      });
      return { f, count };
    });
    const begun = performance.now();
    await Promise.all(fleets.map(({ f, count }) => new Promise<void>((resolve, reject) => {
      f.on('message', (m: { connected?: number }) => m.connected === count && resolve());
      f.on('exit', (code) => reject(new Error(`simulated agents exited (${code})`)));
    })));
    const connectMs = Math.round(performance.now() - begun);
    await until('version 1 acknowledged by every agent', async () => (acks.get(1)?.length ?? 0) === agents, 120_000);
    const withAgents = replicas.map((c) => rssMb(c.pid!, 'VmRSS'));

    /** Which replica publishes now (the lease may move under load: a replica whose event loop stalls past it loses it). */
    const leaderNow = async () => {
      for (let r = 0; r < REPLICAS; r++) {
        if (replicas[r]!.exitCode !== null) continue;
        const s = (await request(ports[r]!, 'GET', '/status')).body.publication as { replica: { leading: boolean } } | undefined;
        if (s?.replica.leading) return r;
      }
      return -1;
    };
    // The snapshot: new services, so a whole state goes to everyone.
    // Without HTTPS-only ranges: the generator draws plaintext ports inside them, which verification refuses.
    const { https_only: _ranges, ...generated } = stateDoc(bindings) as ReturnType<typeof stateDoc> & { https_only?: unknown };
    const big = { ...generated, bindings: [...generated.bindings, seed], services: { ...generated.services, ...small.services } };
    // Written to the file of the replica that publishes; again (to the one that publishes then) if the lease moved first.
    const bigText = JSON.stringify(big);
    let snapshotStart = 0;
    for (let attempt = 0; (await version(ports[Math.max(0, await leaderNow())]!)) !== 2; attempt++) {
      if (attempt === 5) throw new Error('fleet-replicas: the 100K state was not published after 5 writes');
      const r = await leaderNow();
      if (r < 0) {
        await new Promise((res) => setTimeout(res, 500));
        continue;
      }
      snapshotStart = now();
      fs.writeFileSync(`${stateFiles[r]!}.tmp`, bigText);
      fs.renameSync(`${stateFiles[r]!}.tmp`, stateFiles[r]!);
      for (let t = 0; t < 600 && (await version(ports[r]!)) !== 2; t++) await new Promise((res) => setTimeout(res, 100));
    }
    let told = performance.now();
    await until('the snapshot acknowledged by every agent', async () => {
      if (performance.now() - told > 10_000) {
        told = performance.now();
        const have = progress.reduce((n, p) => n + (p?.progress['2'] ?? 0), 0);
        const gone = progress.reduce((n, p) => n + (p?.closed ?? 0), 0);
        process.stderr.write(`fleet-replicas: ${have} of ${agents} agents have version 2 (${gone} connections closed so far); replicas at versions ${(await Promise.all(ports.map(version))).join(', ')}\n`);
      }
      return (acks.get(2)?.length ?? 0) === agents;
    }, 600_000);
    const snapshotAll = Math.max(...acks.get(2)!) - snapshotStart;
    // Connections ended (and made again) while the snapshot went out, as the agents' processes last reported them.
    const snapshotClosed = progress.reduce((n, p) => n + (p?.closed ?? 0), 0);

    // One-binding deltas through the API.
    const latencies: number[] = [];
    let slowest = 0;
    /** Per delta: the API's answer, and per replica (the leader first) its agents' first and last ACK, ms after the request. */
    const perDelta: Array<{ api_ms: number; replicas: Array<{ replica: string; leading: boolean; first_ack_ms: number; last_ack_ms: number }> }> = [];
    let leader = -1;
    for (let d = 0; d < deltas; d++) {
      const v = 3 + d;
      // Who leads is asked first: the figures count from the API request.
      leader = await leaderNow();
      if (leader < 0) throw new Error('fleet-replicas: no replica leads');
      const sent = now();
      const r = await request(ports[leader]!, 'POST', '/v1/bindings', { bindings: [{ label: 'spectrum', protocol: 'tcp', prefix: `192.0.2.${d + 1}/32`, port: 0 }] });
      const apiMs = now() - sent;
      if (r.status !== 200) throw new Error(`fleet-replicas: delta ${d} answered ${r.status} ${JSON.stringify(r.body)}`);
      await until(`delta ${d} acknowledged by every agent`, async () => (acks.get(v)?.length ?? 0) === agents, 60_000);
      const times = acks.get(v)!.map((t) => t - sent);
      latencies.push(...times);
      slowest = Math.max(slowest, ...times);
      perDelta.push({
        api_ms: Math.round(apiMs),
        replicas: ports.map((_, k) => {
          const t = byReplica.get(`${v} ${k}`)!.map((x) => x - sent);
          return { replica: `r${k}`, leading: k === leader, first_ack_ms: Math.round(Math.min(...t)), last_ack_ms: Math.round(Math.max(...t)) };
        }),
      });
    }
    const peak = replicas.map((c) => rssMb(c.pid!, 'VmHWM'));
    const cpu = { replicas: replicas.map((c) => cpuSeconds(c.pid!)), simulated_agents: fleets.map(({ f }) => cpuSeconds(f.pid!)), wall: Math.round((performance.now() - benchStart) / 1000) };

    // The leader killed: a write sent to a survivor goes through again after…
    const killed = now();
    replicas[leader]!.kill('SIGKILL');
    const survivor = ports[(leader + 1) % REPLICAS]!;
    let published = 0;
    for (let i = 0; published === 0; i++) {
      let r = await request(survivor, 'POST', '/v1/bindings', { bindings: [{ label: 'spectrum', protocol: 'tcp', prefix: `198.51.100.${i % 250}/32`, port: 0 }] });
      if (r.status === 307 && r.location && !r.location.includes(`:${ports[leader]}`)) r = await request(Number(new URL(r.location).port), 'POST', '/v1/bindings', { bindings: [{ label: 'spectrum', protocol: 'tcp', prefix: `198.51.100.${i % 250}/32`, port: 0 }] });
      if (r.status === 200) published = now();
      else if (now() - killed > 60_000) throw new Error('fleet-replicas: no replica published within 60 s of the kill');
      else await new Promise((res) => setTimeout(res, 50));
    }
    const round = (x: number) => Math.round(x);
    const rss = ports.map((_, r) => ({ replica: `r${r}`, before_agents: round(before[r]!), with_agents: round(withAgents[r]!), peak: round(peak[r]!), agents: fleets[r]!.count }));
    return {
      replicas: REPLICAS,
      agents,
      connect_ms: connectMs,
      snapshot_bindings: bindings,
      snapshot_all_acked_ms: round(snapshotAll),
      snapshot_bytes: { json: Buffer.byteLength(bigText), gzip: zlib.gzipSync(bigText, { level: 6 }).length },
      snapshot_connections_closed: snapshotClosed,
      deltas,
      delta_ack_p50_ms: round(percentile(latencies, 0.5)),
      delta_ack_p99_ms: round(percentile(latencies, 0.99)),
      delta_all_acked_max_ms: round(slowest),
      per_delta: perDelta,
      rss_mb: rss,
      rss_per_1000_agents_mb: Math.round((rss.reduce((s, x) => s + (x.with_agents - x.before_agents) / x.agents, 0) / REPLICAS) * 1000 * 10) / 10,
      leader_kill_to_published_ms: round(published - killed),
      cpu_seconds: cpu,
    };
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    db.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(certs.dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [agents, bindings, deltas] = process.argv.slice(2).map(Number);
  const result = await fleetReplicasBench(agents || undefined, bindings || undefined, deltas || undefined);
  fs.mkdirSync(projectPath('bench/results'), { recursive: true });
  fs.writeFileSync(projectPath('bench/results/fleet-replicas.json'), `${JSON.stringify({ date: new Date().toISOString(), kernel: os.release(), cpus: os.cpus().length, ...result }, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}
