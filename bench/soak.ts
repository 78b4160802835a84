/**
 * The soak (issue 7, `npm run soak -- --seconds N`): a server namespace
 * (the agent, the dispatcher, the firewall, three services that answer with
 * their name) and a client namespace joined by a veth pair; a control plane
 * and an agent started as in production (the CLI); load from the client at a
 * bounded rate, TCP and UDP, to host bindings in three /24s; every attempt
 * recorded as ok, refused, reset, timeout or misrouted — misrouted when the
 * service that answered is not the one any version in force during the
 * attempt binds there (a version is in force from when it is written to the
 * state file until the agent has acknowledged the next one). Meanwhile, in
 * turn: bindings moved between services through the control plane (under
 * the withdrawal budget, so many versions), `kill -9` of the agent and a
 * restart, a program upgrade, a control-plane restart, our firewall chain
 * flushed and a set emptied by hand. The agent's resident memory is sampled
 * every second. Results: printed and bench/results/soak.json.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { TestNamespace, CLI } from '../test/support/netns.js';
import { makeCerts } from '../test/support/certs.js';
import { writeAgentConfig } from '../test/support/agent-config.js';
import { projectPath } from '../src/paths.js';

const LABELS = ['cdn', 'spectrum', 'dns'];
const BLOCKS = ['192.0.2', '198.51.100', '203.0.113'];
const HOSTS = BLOCKS.flatMap((b) => Array.from({ length: 254 }, (_, i) => `${b}.${i + 1}`));
/** Per version moved between services: under the agents' withdrawal budget (50 bindings). */
const MOVE = 40;

interface Version {
  n: number;
  labels: string[]; // per host
  writtenAt: number;
}

export async function soak(seconds: number, rate = 200) {
  const server = TestNamespace.create();
  const client = TestNamespace.create({ localRoutes: false });
  server.linkTo(client);
  const certs = makeCerts();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-soak-'));
  const children: ChildProcess[] = [];
  const file = (name: string, content: string, mode = 0o600) => {
    fs.writeFileSync(path.join(dir, name), content, { mode });
    return path.join(dir, name);
  };
  const port = 21000 + Math.floor(Math.random() * 20000);
  const stateFile = path.join(dir, 'desired.json');
  const versions: Version[] = [];
  const labels = HOSTS.map((_, i) => LABELS[i % LABELS.length]!);
  const writeState = () => {
    const bindings = HOSTS.flatMap((h, i) => ['tcp', 'udp'].map((protocol) => ({ label: labels[i]!, protocol, prefix: `${h}/32`, port: 0 })));
    const services = Object.fromEntries(LABELS.map((l) => [l, { tcp: ['1-65535'], udp: ['1-65535'] }]));
    fs.writeFileSync(`${stateFile}.tmp`, JSON.stringify({ bindings, services }));
    fs.renameSync(`${stateFile}.tmp`, stateFile);
    versions.push({ n: versions.length + 1, labels: [...labels], writtenAt: Date.now() });
  };
  const cpArgs = ['control-plane', '--state', stateFile, '--listen', `127.0.0.1:${port}`, '--cert', file('cert.pem', certs.cert), '--key', file('key.pem', certs.key), '--tokens', file('tokens.json', JSON.stringify({ soak: 'tok' })), '--withdrawal-share', '100'];
  const config = writeAgentConfig(dir, { agentId: 'soak', port, ca: certs.ca, token: 'tok', netns: server.path, bpffs: server.bpffs, extra: { firewall: { backend: 'auto', resync_seconds: 2 }, heartbeat_seconds: 1 } });
  // Acknowledged versions, from the agent's log (a version's number restarts with a control plane's epoch: matched by order).
  const acked: number[] = [];
  let connections = 0;
  const start = (args: string[], log: string) => {
    const child = spawn(CLI, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    const out = fs.createWriteStream(path.join(dir, log), { flags: 'a' });
    child.stdout!.on('data', (d: Buffer) => {
      out.write(d);
      for (const line of d.toString().split('\n')) {
        if (line.includes('"msg":"acknowledged"')) acked.push(Date.now());
        if (line.includes('"event":"connected"')) connections++;
      }
    });
    child.stderr!.pipe(out);
    return child;
  };
  const events: Array<{ at: number; what: string }> = [];
  const rss: number[] = [];
  try {
    writeState();
    let cp = start(cpArgs, 'control-plane.log');
    let agent = start(['agent', '--config', config], 'agent.log');
    const until = async (what: string, check: () => boolean, ms = 30_000) => {
      for (const t0 = Date.now(); !check(); await new Promise((r) => setTimeout(r, 20))) if (Date.now() - t0 > ms) throw new Error(`soak: ${what} not within ${ms} ms`);
    };
    await until('version 1 acknowledged', () => acked.length >= 1);
    // UDP on the wildcard address: its answers then leave from an address the client can route to (from 127.0.0.1 they would be martians on the veth).
    for (const label of LABELS) await server.startService(label, ['tcp4', 'udp4@0.0.0.0:0'], true);
    const targets = HOSTS.flatMap((addr) => [{ proto: 'tcp', addr, port: 443 }, { proto: 'udp', addr, port: 53 }]);
    const load = spawn('ip', ['netns', 'exec', client.name, process.execPath, projectPath('test/fixtures/load.mjs'), JSON.stringify({ targets, rate, seconds })], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, PROBE_FROM_ANY: '1', PROBE_TIMEOUT_MS: '2000' } });
    children.push(load);
    let attempts = '';
    load.stdout!.on('data', (d: Buffer) => (attempts += d.toString()));
    const loadDone = new Promise((r) => load.once('exit', r));
    const sampler = setInterval(() => {
      try {
        rss.push(Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${agent.pid}/status`, 'utf8'))![1]) / 1024);
      } catch {
        // between an agent and the next
      }
    }, 1000);
    // Disturbances, in turn, until the load ends.
    const disturbances = [
      async () => {
        // Bindings moved: MOVE hosts to the next service.
        const from = Math.floor(Math.random() * HOSTS.length);
        for (let k = 0; k < MOVE; k++) {
          const i = (from + k * 7) % HOSTS.length;
          labels[i] = LABELS[(LABELS.indexOf(labels[i]!) + 1) % LABELS.length]!;
        }
        const before = acked.length;
        writeState();
        events.push({ at: Date.now(), what: `moved ${MOVE} hosts (version ${versions.length})` });
        await until(`version ${versions.length} acknowledged`, () => acked.length > before);
      },
      async () => {
        agent.kill('SIGKILL');
        events.push({ at: Date.now(), what: 'agent killed (-9), restarted' });
        await new Promise((r) => agent.once('exit', r));
        const before = connections;
        agent = start(['agent', '--config', config], 'agent.log');
        // It restores what it had and is told it is up to date: nothing to acknowledge.
        await until('the restarted agent connected', () => connections > before);
      },
      async () => {
        const r = spawnSync(CLI, ['upgrade', '--netns', server.path, '--bpffs', server.bpffs], { encoding: 'utf8' });
        events.push({ at: Date.now(), what: `program upgraded (exit ${r.status})` });
      },
      async () => {
        cp.kill('SIGTERM');
        await new Promise((r) => cp.once('exit', r));
        events.push({ at: Date.now(), what: 'control plane restarted' });
        cp = start(cpArgs, 'control-plane.log');
        const before = acked.length;
        await until('the agent acknowledging the restarted control plane', () => acked.length > before);
      },
      async () => {
        server.exec(['iptables', '-F', 'SWITCHYARD-TCP']);
        server.exec(['ipset', 'flush', 'sy4-udp-l-dns']);
        events.push({ at: Date.now(), what: 'firewall chain SWITCHYARD-TCP flushed, set sy4-udp-l-dns emptied' });
        await new Promise((r) => setTimeout(r, 2500)); // the agent's resync repairs it
      },
    ];
    let round = 0;
    const deadline = Date.now() + seconds * 1000 - 3000;
    while (Date.now() < deadline) {
      await disturbances[round++ % disturbances.length]!();
      await new Promise((r) => setTimeout(r, 1000));
    }
    await loadDone;
    clearInterval(sampler);
    return analyse(attempts, targets, versions, acked, events, rss);
  } finally {
    for (const c of children) c.kill('SIGKILL');
    client.destroy();
    server.destroy();
    fs.rmSync(certs.dir, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function analyse(text: string, targets: Array<{ proto: string; addr: string; port: number }>, versions: Version[], acked: number[], events: Array<{ at: number; what: string }>, rss: number[]) {
  // A version is in force from its write until the next version's first acknowledgement after that write.
  const ackAfter = (t: number) => acked.find((a) => a >= t) ?? Infinity;
  const windows = versions.map((v, j) => ({ labels: v.labels, from: v.writtenAt, to: j + 1 < versions.length ? ackAfter(versions[j + 1]!.writtenAt) : Infinity }));
  const counts: Record<string, number> = { ok: 0, refused: 0, reset: 0, timeout: 0, misrouted: 0, error: 0 };
  const bad: Array<Record<string, unknown>> = [];
  const timeouts: number[] = [];
  const hostIndex = new Map(HOSTS.map((h, i) => [h, i]));
  for (const line of text.split('\n')) {
    if (!line) continue;
    const a = JSON.parse(line) as { s: number; e: number; i: number; r: string };
    const t = targets[a.i]!;
    let kind: string;
    if (LABELS.includes(a.r)) {
      const host = hostIndex.get(t.addr)!;
      const allowed = new Set(windows.filter((w) => w.from <= a.e && w.to >= a.s).map((w) => w.labels[host]!));
      kind = allowed.has(a.r) ? 'ok' : 'misrouted';
      if (kind === 'misrouted') bad.push({ ...t, at: a.s, answered: a.r, allowed: [...allowed] });
    } else kind = ['refused', 'reset', 'timeout'].includes(a.r) ? a.r : 'error';
    if (kind === 'refused' || kind === 'reset' || kind === 'error') bad.push({ ...t, at: a.s, result: a.r });
    if (kind === 'timeout') timeouts.push(a.s);
    counts[kind]!++;
  }
  const near = (at: number) => events.filter((e) => Math.abs(e.at - at) < 3000).map((e) => e.what);
  // Timeouts by the disturbance that came last before them (its kind: the text up to a digit or parenthesis).
  const timeoutsAfter: Record<string, number> = {};
  for (const at of timeouts) {
    const last = [...events].reverse().find((e) => e.at <= at);
    const k = last ? last.what.replace(/\s*\(.*$/, '') : 'before any disturbance';
    timeoutsAfter[k] = (timeoutsAfter[k] ?? 0) + 1;
  }
  return {
    attempts: Object.values(counts).reduce((x, y) => x + y, 0),
    counts,
    versions: versions.length,
    disturbances: events.length,
    events: events.map((e) => e.what),
    agent_rss_mb: { first: Math.round(rss[0] ?? 0), max: Math.round(Math.max(0, ...rss)), last: Math.round(rss.at(-1) ?? 0) },
    timeouts_after: timeoutsAfter,
    problems: bad.slice(0, 20).map((b) => ({ ...b, near: near(b.at as number) })),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { seconds: { type: 'string' }, rate: { type: 'string' } } });
  const result = await soak(Number(values.seconds ?? 60), Number(values.rate ?? 200));
  const out = projectPath('bench/results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'soak.json'), `${JSON.stringify({ date: new Date().toISOString(), ...result }, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  process.exit(0);
}
