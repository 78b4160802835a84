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
 * flushed and a set emptied by hand, the other chain flushed and a set
 * destroyed, and faults: `ipset restore` failing or
 * hanging on a version (NACKed after the last known good is put back; a
 * refused version is in force at most until then), the agent killed in the
 * middle of an apply (the restarted agent refuses that version). The agent's
 * resident memory is sampled every second. Results: printed and
 * bench/results/soak.json.
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
/** Per version moved between services: under the agents' withdrawal budget (50 bindings of a service). */
const MOVE = 40;
/**
 * Moved by a version a fault makes the agent refuse: small, because the
 * next version's delta (from the last one the agent took) carries it too,
 * and the two together must stay under the budget.
 */
const MOVE_REFUSED = 8;
/** How long `ipset restore` fails when that fault is armed: the version, the put-back of the last known good and a resync or so. */
const FAIL_MS = 3000;

interface Version {
  labels: string[]; // per host
  writtenAt: number;
  /** Refused by the agent (NACK, or found half applied at its restart): in force at most until then. */
  failedAt?: number;
}

/**
 * `ipset` for the agent, first on its PATH: the real one, except that every
 * `restore` fails until the time in `fail-until` (ms) — the agent's firewall
 * answers one failed run with a full one, so a single failure would be
 * absorbed — and one `restore` finding `arm-hang` takes it (the rename is
 * atomic) and hangs, its pid written down, until killed.
 */
function faultyIpset(dir: string): string {
  const real = spawnSync('sh', ['-c', 'command -v ipset'], { encoding: 'utf8' }).stdout.trim();
  if (!real) throw new Error('soak: ipset is not installed');
  fs.mkdirSync(dir, { mode: 0o700 });
  fs.writeFileSync(
    path.join(dir, 'ipset'),
    `#!/bin/sh
case "$*" in *restore*)
  if [ -f "${dir}/fail-until" ] && [ "$(date +%s%3N)" -lt "$(cat "${dir}/fail-until")" ]; then echo "ipset: injected failure (soak)" >&2; exit 1; fi
  if mv "${dir}/arm-hang" "${dir}/fired-hang" 2>/dev/null; then echo $$ > "${dir}/hung.pid"; exec sleep 3600; fi
esac
exec ${real} "$@"
`,
    { mode: 0o755 },
  );
  return dir;
}

export async function soak(seconds: number, rate = 300) {
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
    versions.push({ labels: [...labels], writtenAt: Date.now() });
  };
  const cpArgs = ['control-plane', '--state', stateFile, '--listen', `127.0.0.1:${port}`, '--cert', file('cert.pem', certs.cert), '--key', file('key.pem', certs.key), '--tokens', file('tokens.json', JSON.stringify({ soak: 'tok' })), '--withdrawal-share', '100'];
  const config = writeAgentConfig(dir, { agentId: 'soak', port, ca: certs.ca, token: 'tok', netns: server.path, bpffs: server.bpffs, extra: { firewall: { backend: 'auto', resync_seconds: 2, tool_timeout_seconds: 3 }, heartbeat_seconds: 1 } });
  const fake = faultyIpset(path.join(dir, 'fake-tools'));
  const agentEnv = { ...process.env, PATH: `${fake}:${process.env.PATH}` };
  // Acknowledged versions, from the agent's log (a version's number restarts with a control plane's epoch: matched by order).
  const acked: number[] = [];
  const nacked: number[] = [];
  const nackCodes: string[] = [];
  const restored: number[] = [];
  let connections = 0;
  const start = (args: string[], log: string, env?: NodeJS.ProcessEnv) => {
    const child = spawn(CLI, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env } : {}) });
    children.push(child);
    const out = fs.createWriteStream(path.join(dir, log), { flags: 'a' });
    child.stdout!.on('data', (d: Buffer) => {
      out.write(d);
      for (const line of d.toString().split('\n')) {
        if (line.includes('"msg":"acknowledged"')) acked.push(Date.now());
        if (line.includes('"msg":"refused"')) {
          nacked.push(Date.now());
          nackCodes.push(/"code":"(\w+)"/.exec(line)?.[1] ?? '?');
        }
        if (line.includes('"msg":"last known good state restored"')) restored.push(Date.now());
        if (line.includes('"event":"connected"')) connections++;
      }
    });
    child.stderr!.pipe(out);
    return child;
  };
  const events: Array<{ at: number; what: string }> = [];
  const rss: number[] = [];
  let failed = false;
  try {
    writeState();
    let cp = start(cpArgs, 'control-plane.log');
    let agent = start(['agent', '--config', config], 'agent.log', agentEnv);
    const until = async (what: string, check: () => boolean, ms = 30_000) => {
      for (const t0 = Date.now(); !check(); await new Promise((r) => setTimeout(r, 20))) if (Date.now() - t0 > ms) throw new Error(`soak: ${what} not within ${ms} ms`);
    };
    await until('version 1 acknowledged', () => acked.length >= 1);
    // UDP on the wildcard address: its answers then leave from an address the client can route to (from 127.0.0.1 they would be martians on the veth).
    for (const label of LABELS) await server.startService(label, ['tcp4', 'udp4@0.0.0.0:0'], true);
    const targets = HOSTS.flatMap((addr) => [{ proto: 'tcp', addr, port: 443 }, { proto: 'udp', addr, port: 53 }]);
    const load = spawn('ip', ['netns', 'exec', client.name, process.execPath, projectPath('test/fixtures/load.mjs'), JSON.stringify({ targets, rate, seconds })], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PROBE_FROM_ANY: '1', PROBE_TIMEOUT_MS: '2000' } });
    children.push(load);
    let attempts = '';
    let loadSummary = '';
    load.stdout!.on('data', (d: Buffer) => (attempts += d.toString()));
    load.stderr!.on('data', (d: Buffer) => (loadSummary += d.toString()));
    const loadDone = new Promise((r) => load.once('exit', r));
    const sampler = setInterval(() => {
      try {
        rss.push(Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${agent.pid}/status`, 'utf8'))![1]) / 1024);
      } catch {
        // between an agent and the next
      }
    }, 1000);
    /** MOVE hosts to the next service, as a new version of the state file. */
    const move = (count: number) => {
      const from = Math.floor(Math.random() * HOSTS.length);
      for (let k = 0; k < count; k++) {
        const i = (from + k * 7) % HOSTS.length;
        labels[i] = LABELS[(LABELS.indexOf(labels[i]!) + 1) % LABELS.length]!;
      }
      writeState();
    };
    const arm = (fault: 'fail' | 'hang') => {
      if (fault === 'hang') fs.writeFileSync(path.join(fake, 'arm-hang'), '');
      else fs.writeFileSync(path.join(fake, 'fail-until'), String(Date.now() + FAIL_MS));
    };
    /** A version with `ipset restore` set to fail or hang: NACKed (the last known good put back first) or, if another run took the fault, acknowledged. */
    const faultyVersion = async (fault: 'fail' | 'hang') => {
      arm(fault);
      const answer = await moveAndWait(MOVE_REFUSED);
      fs.rmSync(path.join(fake, 'arm-hang'), { force: true });
      // The failures over, then a resync: the firewall is back on the last known good before the next version.
      if (fault === 'fail') await new Promise((r) => setTimeout(r, Math.max(0, Number(fs.readFileSync(path.join(fake, 'fail-until'), 'utf8')) - Date.now()) + 2500));
      events.push({ at: Date.now(), what: `ipset restore ${fault === 'fail' ? 'failing' : 'hanging'} (version ${versions.length} ${answer})` });
    };
    /** A new version; waits for the agent's answer (a NACK marks the version refused). */
    const moveAndWait = async (count: number) => {
      const [a, n] = [acked.length, nacked.length];
      move(count);
      await until(`version ${versions.length} answered`, () => acked.length > a || nacked.length > n, 60_000);
      if (nacked.length === n) return 'acknowledged';
      versions.at(-1)!.failedAt = nacked.at(-1)!;
      return `NACKed ${nackCodes.at(-1)}`;
    };
    /** The version the agent refuses since its restart ("epoch/version"), from its status on the admin socket. */
    const refusedByAgent = () => {
      const r = spawnSync(CLI, ['agent', 'status', '--socket', path.join(dir, 'admin.sock'), '--json'], { encoding: 'utf8' });
      if (r.status !== 0) return null;
      const s = JSON.parse(r.stdout) as { refused: { epoch: string; version: number } | null };
      return s.refused ? `${s.refused.epoch}/${s.refused.version}` : null;
    };
    const restartAgent = async () => {
      const before = connections;
      agent = start(['agent', '--config', config], 'agent.log', agentEnv);
      // It restores what it had and is told it is up to date: nothing to acknowledge.
      await until('the restarted agent connected', () => connections > before);
    };
    const plainMove = async () => {
      const answer = await moveAndWait(MOVE);
      events.push({ at: Date.now(), what: `moved ${MOVE} hosts (version ${versions.length} ${answer})` });
    };
    // Disturbances, in turn, until the load ends; a plain move after each version a fault may have refused.
    const disturbances = [
      plainMove,
      () => faultyVersion('fail'),
      plainMove,
      async () => {
        agent.kill('SIGKILL');
        events.push({ at: Date.now(), what: 'agent killed (-9), restarted' });
        await new Promise((r) => agent.once('exit', r));
        await restartAgent();
      },
      () => faultyVersion('hang'),
      plainMove,
      async () => {
        const r = spawnSync(CLI, ['upgrade', '--netns', server.path, '--bpffs', server.bpffs], { encoding: 'utf8' });
        events.push({ at: Date.now(), what: `program upgraded (exit ${r.status})` });
      },
      async () => {
        cp.kill('SIGTERM');
        await new Promise((r) => cp.once('exit', r));
        events.push({ at: Date.now(), what: 'control plane restarted' });
        cp = start(cpArgs, 'control-plane.log');
        // The restarted control plane keeps its epoch and versions (its store): the agent, up to date, has nothing to
        // acknowledge until the next change, which must then reach it from the restarted one.
        const answer = await moveAndWait(MOVE);
        events.push({ at: Date.now(), what: `moved ${MOVE} hosts through the restarted control plane (version ${versions.length} ${answer})` });
      },
      async () => {
        // Killed in the middle of an apply (its ipset run hanging): the restarted agent refuses that version and restores the one before.
        const refusedBefore = refusedByAgent();
        arm('hang');
        const hung = path.join(fake, 'hung.pid');
        fs.rmSync(hung, { force: true });
        move(MOVE_REFUSED);
        await until('the apply under way', () => fs.existsSync(hung) && fs.readFileSync(hung, 'utf8').trim() !== '');
        agent.kill('SIGKILL');
        await new Promise((r) => agent.once('exit', r));
        try {
          process.kill(Number(fs.readFileSync(hung, 'utf8')), 'SIGKILL'); // the hung tool, orphaned
        } catch {
          // gone
        }
        const before = restored.length;
        await restartAgent();
        await until('the last known good restored', () => restored.length > before);
        // Refused, as its status says (a version the killed agent had finished is in force like any other).
        const refused = refusedByAgent();
        if (refused !== null && refused !== refusedBefore) versions.at(-1)!.failedAt = restored.at(-1)!;
        events.push({ at: Date.now(), what: `agent killed (-9) mid-apply, restarted (version ${versions.length} ${versions.at(-1)!.failedAt ? 'refused' : 'NOT refused'})` });
      },
      plainMove,
      async () => {
        server.exec(['iptables', '-F', 'SWITCHYARD-TCP']);
        server.exec(['ipset', 'flush', 'sy4-udp-l-dns']);
        events.push({ at: Date.now(), what: 'firewall chain SWITCHYARD-TCP flushed, set sy4-udp-l-dns emptied' });
        await new Promise((r) => setTimeout(r, 2500)); // the agent's resync repairs it
      },
      plainMove,
      async () => {
        // A set destroyed: the kernel allows it only once no rule refers to it, so the UDP chain goes first.
        const chain = server.exec(['iptables', '-F', 'SWITCHYARD-UDP']).code;
        const set = server.exec(['ipset', 'destroy', 'sy4-udp-l-spectrum']).code;
        events.push({ at: Date.now(), what: `firewall chain SWITCHYARD-UDP flushed (exit ${chain}), set sy4-udp-l-spectrum destroyed (exit ${set})` });
        await new Promise((r) => setTimeout(r, 2500));
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
    return { ...analyse(attempts, targets, versions, acked, events, rss), rate, load: loadSummary.trim() };
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    for (const c of children) c.kill('SIGKILL');
    client.destroy();
    server.destroy();
    fs.rmSync(certs.dir, { recursive: true, force: true });
    // A failed soak keeps its logs (the agent's and the control plane's) to read.
    if (failed) process.stderr.write(`soak: logs kept in ${dir}\n`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
}

function analyse(text: string, targets: Array<{ proto: string; addr: string; port: number }>, versions: Version[], acked: number[], events: Array<{ at: number; what: string }>, rss: number[]) {
  // A version is in force from its write until the next version's first acknowledgement after that write.
  // A refused version: from its write until the agent refused it (the last known good put back by then).
  const ackAfter = (t: number) => acked.find((a) => a >= t) ?? Infinity;
  const nextGood = (j: number) => versions.slice(j + 1).find((v) => v.failedAt === undefined);
  const windows = versions.map((v, j) => {
    const next = nextGood(j);
    return { labels: v.labels, from: v.writtenAt, to: v.failedAt ?? (next ? ackAfter(next.writtenAt) : Infinity) };
  });
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
    refused_versions: versions.filter((v) => v.failedAt !== undefined).length,
    disturbances: events.length,
    events: events.map((e) => e.what),
    agent_rss_mb: { first: Math.round(rss[0] ?? 0), max: Math.round(Math.max(0, ...rss)), last: Math.round(rss.at(-1) ?? 0) },
    timeouts_after: timeoutsAfter,
    problems: bad.slice(0, 20).map((b) => ({ ...b, near: near(b.at as number) })),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { seconds: { type: 'string' }, rate: { type: 'string' } } });
  const result = await soak(Number(values.seconds ?? 60), Number(values.rate ?? 300));
  const out = projectPath('bench/results');
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'soak.json'), `${JSON.stringify({ date: new Date().toISOString(), ...result }, null, 2)}\n`);
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  process.exit(0);
}
