/**
 * Control plane → agent → dispatcher and firewall → real connections, in a
 * fresh namespace, with the real commands (`switchyard control-plane`,
 * `switchyard agent`) as child processes.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { CLI, TestNamespace, isRoot } from '../support/netns.js';
import { makeCerts } from '../support/certs.js';
import { writeAgentConfig } from '../support/agent-config.js';

const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: [443] } };
const V1 = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: SERVICES };
const V2 = { ...V1, bindings: [...V1.bindings, { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 }] };

describe.skipIf(!isRoot)('agent and control plane end to end', () => {
  let ns: TestNamespace;
  let dir: string;
  const children: ChildProcess[] = [];
  const logs = new Map<ChildProcess, string>();

  beforeEach(() => {
    ns = TestNamespace.create();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-agent-'));
  });
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    ns.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const start = (args: string[], env?: NodeJS.ProcessEnv) => {
    const child = spawn(CLI, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env } : {}) });
    logs.set(child, '');
    const add = (d: Buffer) => logs.set(child, logs.get(child)! + d.toString());
    child.stdout!.on('data', add);
    child.stderr!.on('data', add);
    children.push(child);
    return child;
  };
  const eventually = async (what: string, check: () => boolean, ms = 15_000) => {
    for (let t = 0; t < ms; t += 100) {
      if (check()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${what}: not within ${ms} ms; logs: ${[...logs.values()].join('\n---\n')}`);
  };
  const get = (url: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.get(url, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
    });
  const labelAt = (ip: string, port: number) => {
    const r = ns.cli(['lookup', 'tcp', ip, String(port), '--json']);
    return r.code === 0 ? (JSON.parse(r.stdout) as { label: string | null }).label : `error ${r.stderr}`;
  };

  /** Certificates, tokens, a state file, the control plane's arguments and an agent config (plus `extra` fields). */
  const setup = (initial: unknown, extra: Record<string, unknown> = {}) => {
    const certs = makeCerts();
    const file = (name: string, content: string) => {
      fs.writeFileSync(path.join(dir, name), content, { mode: 0o600 });
      return path.join(dir, name);
    };
    const state = file('desired.json', JSON.stringify(initial));
    const port = 20000 + Math.floor(Math.random() * 20000);
    const cpArgs = ['control-plane', '--state', state, '--listen', `127.0.0.1:${port}`, '--cert', file('cert.pem', certs.cert), '--key', file('key.pem', certs.key), '--tokens', file('tokens.json', JSON.stringify({ 'edge-1': 'tok-1' })), '--admin-token-file', file('admin-token', 'adm-1\n')];
    const config = writeAgentConfig(dir, { agentId: 'edge-1', port, ca: certs.ca, token: 'tok-1', netns: ns.path, bpffs: ns.bpffs, extra: { heartbeat_seconds: 1, metrics_listen: `127.0.0.1:${port + 1}`, ...extra } });
    return { certs, state, port, cpArgs, config };
  };

  it('pushes bindings to the data plane, moves a carve-out, holds a withdrawal, and serves on without agent or control plane', async () => {
    const { certs, state, port, cpArgs, config } = setup(V1);
    const cp = start(cpArgs);
    let agent = start(['agent', '--config', config]);
    await eventually('v1 in the data plane', () => labelAt('192.0.2.200', 443) === 'cdn');
    await ns.startService('cdn', ['tcp4'], true);
    await ns.startService('spectrum', ['tcp4'], true);
    expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.200', port: 443 }])).toEqual(['cdn']);

    fs.writeFileSync(state, JSON.stringify(V2));
    await eventually('the carve-out in the data plane', () => labelAt('192.0.2.200', 443) === 'spectrum');
    expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.200', port: 443 }, { proto: 'tcp', addr: '192.0.2.200', port: 80 }, { proto: 'tcp', addr: '192.0.2.200', port: 22 }])).toEqual(['spectrum', 'cdn', 'timeout']);

    // A state that empties every service: held by the control plane (not published); nothing changes.
    fs.writeFileSync(state, JSON.stringify({ bindings: [], services: SERVICES }));
    await eventually('the withdrawal held', () => /held, not published: confirm with control-plane override --version 3/.test(logs.get(cp)!));
    expect(labelAt('192.0.2.200', 443)).toBe('spectrum');
    // A state that fails verification (a label without a policy): refused, not published.
    fs.writeFileSync(state, JSON.stringify({ ...V2, bindings: [...V2.bindings, { label: 'orphan', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }] }));
    await eventually('the unverified state refused', () => /refused by verification/.test(logs.get(cp)!) && /ENOPOLICY/.test(logs.get(cp)!));

    // Metrics: the kernel's counters per destination, bindings per label, the applied version, the refusal.
    const metrics = (await get(`http://127.0.0.1:${port + 1}/metrics`)).body;
    const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(metrics)?.[1] ?? NaN);
    expect(value('switchyard_lookups_total{label="spectrum",family="ipv4",protocol="tcp"}')).toBeGreaterThanOrEqual(1);
    expect(value('switchyard_bindings{label="spectrum"}')).toBe(1);
    expect(value('switchyard_applied_version')).toBe(2);
    expect(value('switchyard_nacks_total{code="EWITHDRAWAL"}')).toBeNaN(); // never reached the agent
    expect(value('switchyard_control_plane_connected')).toBe(1);
    expect(value('switchyard_apply_duration_seconds_count{kind="delta"}')).toBe(1);

    // Modes: the state directory and its files, the admin socket and the pinned objects are the owner's (root's) only.
    const modeOf = (p: string) => fs.statSync(p).mode & 0o777;
    const stateDir = path.join(dir, 'state');
    expect(modeOf(stateDir)).toBe(0o700);
    for (const f of fs.readdirSync(stateDir)) expect(modeOf(path.join(stateDir, f)), f).toBe(0o600);
    expect(modeOf(path.join(dir, 'admin.sock'))).toBe(0o600);
    const pins = (at: string): string[] => fs.readdirSync(at, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? pins(path.join(at, e.name)) : [path.join(at, e.name)]));
    const pinned = pins(path.join(ns.bpffs, 'switchyard')); // ours (the mount's own maps.debug and progs.debug are 0444)
    expect(pinned.length).toBeGreaterThan(5);
    for (const p of pinned) expect(modeOf(p), p).toBe(0o600);

    // The agent killed, then the control plane stopped: the data plane serves on, and a new agent restores its last known good state.
    agent.kill('SIGKILL');
    cp.kill('SIGTERM');
    expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.200', port: 443 }])).toEqual(['spectrum']);
    agent = start(['agent', '--config', config]);
    await eventually('restored', () => /last known good state restored/.test(logs.get(agent)!));
    expect(labelAt('192.0.2.200', 443)).toBe('spectrum');
    expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.200', port: 443 }])).toEqual(['spectrum']);

    // The control plane back on its store (issue 18: the same epoch and versions, not a new epoch at version 1):
    // the agent reconnects and is up to date at version 2, nothing sent again.
    fs.writeFileSync(state, JSON.stringify(V2));
    start(cpArgs);
    // Seen with the CLI, over the agents' own TLS and a token.
    const status = async () => {
      const r = spawnSync(CLI, ['control-plane', 'status', '--url', `https://127.0.0.1:${port}`, '--ca', path.join(dir, 'ca.pem'), '--token-file', path.join(dir, 'token'), '--json'], { encoding: 'utf8' });
      return r.status === 0 ? (JSON.parse(r.stdout) as { agents: Array<{ agentId: string; connected: boolean; applied: { version: number } | null }> }).agents : [];
    };
    let seen: Awaited<ReturnType<typeof status>> = [];
    for (let t = 0; t < 150 && !(seen[0]?.connected && seen[0].applied?.version === 2); t++) {
      await new Promise((r) => setTimeout(r, 100));
      seen = await status();
    }
    expect(seen[0]).toMatchObject({ agentId: 'edge-1', connected: true, applied: { version: 2 } });
    expect(labelAt('192.0.2.200', 443)).toBe('spectrum');
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });
  it('a full state directory: the version is refused and taken back out of the kernel; a smaller one then goes through', async () => {
    // The state directory on a 256 KiB tmpfs: version 1 fits, 20,000 more bindings do not.
    const small = path.join(dir, 'small');
    fs.mkdirSync(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', small]);
    try {
      const { state, port, cpArgs, config } = setup(V1, { state_dir: small });
      start(cpArgs);
      const agent = start(['agent', '--config', config]);
      await eventually('v1 in the data plane', () => labelAt('192.0.2.200', 443) === 'cdn');
      const big = { ...V1, bindings: [...V1.bindings, ...Array.from({ length: 20_000 }, (_, i) => ({ label: 'cdn', protocol: 'tcp', prefix: `10.${i >> 8}.${i & 255}.0/24`, port: 0 }))] };
      fs.writeFileSync(state, JSON.stringify(big));
      await eventually('the big version refused', () => /could not be persisted \(ENOSPC/.test(logs.get(agent)!), 30_000);
      expect(labelAt('10.0.5.1', 443)).toBeNull(); // taken back out
      expect(labelAt('192.0.2.200', 443)).toBe('cdn');
      // Back to a small state: for the control plane that withdraws the 20,000 (in force there), so an operator confirms it.
      fs.writeFileSync(state, JSON.stringify(V2));
      const cp = (args: string[]) => spawnSync(CLI, ['control-plane', ...args, '--url', `https://127.0.0.1:${port}`, '--ca', path.join(dir, 'ca.pem'), '--token-file', path.join(dir, 'admin-token')], { encoding: 'utf8' });
      await eventually('held', () => /HELD version 3/.test(cp(['status']).stdout));
      expect(cp(['override', '--version', '3']).status).toBe(0);
      await eventually('the small version in the data plane', () => labelAt('192.0.2.200', 443) === 'spectrum', 30_000);
      expect(spawnSync(CLI, ['agent', 'status', '--socket', path.join(dir, 'admin.sock'), '--json'], { encoding: 'utf8' }).stdout).toMatch(/"refused": null|"refused":null/);
    } finally {
      for (const c of children.splice(0)) c.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 200));
      spawnSync('umount', [small]);
    }
  });

  it('capacity: a version over the agent\'s max_bindings is refused with ECAPACITY and the data plane keeps the one before', async () => {
    const { state, cpArgs, config } = setup(V1, { max_bindings: 2 });
    start(cpArgs);
    const agent = start(['agent', '--config', config]);
    await eventually('v1 in the data plane', () => labelAt('192.0.2.200', 443) === 'cdn');
    fs.writeFileSync(state, JSON.stringify(V2)); // 2 bindings: at the limit
    await eventually('v2 in the data plane', () => labelAt('192.0.2.200', 443) === 'spectrum');
    const V3 = { ...V2, bindings: [...V2.bindings, { label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 }] };
    fs.writeFileSync(state, JSON.stringify(V3));
    await eventually('refused', () => /"code":"ECAPACITY","message":"3 bindings, more than the 2 this agent is configured for"/.test(logs.get(agent)!));
    expect(labelAt('198.51.100.1', 443)).toBeNull();
    expect(labelAt('192.0.2.200', 443)).toBe('spectrum');
    const status = JSON.parse(spawnSync(CLI, ['agent', 'status', '--socket', path.join(dir, 'admin.sock'), '--json'], { encoding: 'utf8' }).stdout) as { applied: { version: number } };
    expect(status.applied.version).toBe(2);
  });

  it('a staged rollout: the agent says its labels, the control plane puts it in its stage and shows the stages', async () => {
    const { state, port, cpArgs, config } = setup(V1, { labels: { canary: 'true', site: 'ams' } });
    const rollout = path.join(dir, 'rollout.json');
    fs.writeFileSync(rollout, JSON.stringify({ stages: [{ name: 'canary', match: { canary: 'true' } }, { name: 'rest' }], bake_seconds: 1 }));
    start([...cpArgs, '--rollout', rollout]);
    start(['agent', '--config', config]);
    await eventually('v1 in the data plane', () => labelAt('192.0.2.200', 443) === 'cdn');
    fs.writeFileSync(state, JSON.stringify(V2));
    await eventually('v2, the canary first', () => labelAt('192.0.2.200', 443) === 'spectrum');
    const cpStatus = () => JSON.parse(spawnSync(CLI, ['control-plane', 'status', '--url', `https://127.0.0.1:${port}`, '--ca', path.join(dir, 'ca.pem'), '--token-file', path.join(dir, 'admin-token'), '--json'], { encoding: 'utf8' }).stdout) as {
      publication: { rollout: { version: number; stages: Array<{ name: string; agents: number; applied: number; state: string }> } };
    };
    await eventually('the canary stage done, the next released', () => cpStatus().publication.rollout.stages[1]!.state === 'done');
    expect(cpStatus().publication.rollout).toMatchObject({ version: 2, stages: [{ name: 'canary', agents: 1, applied: 1, state: 'done' }, { name: 'rest', agents: 0, applied: 0 }] });
    const human = spawnSync(CLI, ['control-plane', 'status', '--url', `https://127.0.0.1:${port}`, '--ca', path.join(dir, 'ca.pem'), '--token-file', path.join(dir, 'admin-token')], { encoding: 'utf8' }).stdout;
    expect(human).toMatch(/rollout of version 2 \(bake 1 s\)\n    canary: done, version 2, 1\/1 agents have it/);
  });

  it('local overrides through the admin socket survive pushes; sockets handed over by an allowed uid only; direct writes refused', async () => {
    // The sockets in a directory others may traverse (the registration socket is for non-root services).
    const run = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-run-'));
    fs.chmodSync(run, 0o755);
    const admin = path.join(run, 'admin.sock');
    const register = path.join(run, 'register.sock');
    const { state, cpArgs, config } = setup(V1, { admin_socket: admin, registration_socket: register, registration: { spectrum: { uids: [65534] } } });
    try {
      start(cpArgs);
      start(['agent', '--config', config]);
      await eventually('v1 in the data plane', () => labelAt('192.0.2.200', 443) === 'cdn');
      expect(fs.statSync(admin).mode & 0o777).toBe(0o600);
      expect(fs.statSync(register).mode & 0o777).toBe(0o666);
      const sy = (args: string[]) => spawnSync(CLI, args, { encoding: 'utf8' });

      // A direct write behind the agent's back is refused, naming the way to do it.
      const direct = ns.cli(['bind', 'spectrum', 'tcp', '192.0.2.77', '443', '--admin-socket', admin]);
      expect(direct.code).toBe(2);
      expect(direct.stderr).toMatch(/an agent manages this dispatcher .* use `switchyard local bind\|unbind`/);

      // A local bind, then a push: the override stays, the push's own change lands.
      expect(sy(['local', 'bind', 'spectrum', 'tcp', '192.0.2.77', '443', '--socket', admin]).status).toBe(0);
      expect(labelAt('192.0.2.77', 443)).toBe('spectrum');
      fs.writeFileSync(state, JSON.stringify(V2));
      await eventually('v2 in the data plane', () => labelAt('192.0.2.200', 443) === 'spectrum');
      expect(labelAt('192.0.2.77', 443)).toBe('spectrum');
      const status = JSON.parse(sy(['agent', 'status', '--socket', admin, '--json']).stdout) as { applied: { version: number }; bindings: Record<string, number>; overrides: Array<{ kind: string; binding: { label: string; prefix: string } }> };
      expect(status.applied.version).toBe(2);
      expect(status.bindings).toEqual({ control_plane: 2, kernel: 3, local_overrides: 1 });
      expect(status.overrides).toMatchObject([{ kind: 'bind', binding: { label: 'spectrum', prefix: '192.0.2.77/32' } }]);

      // Masking the control plane's /24, then removing the local bind, then clearing: each as said.
      expect(sy(['local', 'unbind', 'tcp', '192.0.2.0/24', '0', '--socket', admin]).status).toBe(0);
      expect(labelAt('192.0.2.10', 443)).toBeNull();
      expect(sy(['local', 'unbind', 'tcp', '192.0.2.77', '443', '--socket', admin]).status).toBe(0);
      expect(labelAt('192.0.2.77', 443)).toBeNull(); // the /24 is still masked
      const cleared = sy(['local', 'clear', '--socket', admin]);
      expect(cleared.stdout).toMatch(/1 local override\(s\) removed/);
      expect(labelAt('192.0.2.10', 443)).toBe('cdn');
      const bad = sy(['local', 'unbind', 'tcp', '198.51.100.0/24', '0', '--socket', admin]);
      expect(bad.status).toBe(2);
      expect(bad.stderr).toMatch(/no binding tcp 198\.51\.100\.0\/24 0 in force/);

      // A service running as uid 65534 hands its socket over for spectrum (allowed), and for cdn (refused).
      await ns.startService('spectrum', ['tcp4'], true, { uid: 65534, registerArgs: ['--agent-socket', register] });
      expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.200', port: 443 }])).toEqual(['spectrum']);
      await expect(ns.startService('cdn', ['tcp4'], true, { uid: 65534, registerArgs: ['--agent-socket', register] })).rejects.toThrow(/uid 65534 gid 65534 may not register sockets for "cdn"/);
      // Root may; a non-root peer on the admin socket may not even connect (0600).
      const asNobody = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', CLI, 'agent', 'status', '--socket', admin], { encoding: 'utf8' });
      expect(asNobody.status).not.toBe(0);
      expect(asNobody.stderr).toMatch(/permission denied/);
    } finally {
      fs.rmSync(run, { recursive: true, force: true });
    }
  });
  it('the withdrawal guard trips and the operator override passes; a version that killed the agent mid-apply is refused after restart', async () => {
    const { state, port, cpArgs, config } = setup(V2);
    const cpCli = (args: string[]) => spawnSync(CLI, ['control-plane', ...args, '--url', `https://127.0.0.1:${port}`, '--ca', path.join(dir, 'ca.pem'), '--token-file', path.join(dir, 'admin-token')], { encoding: 'utf8' });
    start(cpArgs);
    let agent = start(['agent', '--config', config]);
    await eventually('v1 in the data plane', () => labelAt('192.0.2.200', 443) === 'spectrum');

    // Emptying spectrum: held by the control plane, shown in its status; the operator confirms; it goes out with the override.
    fs.writeFileSync(state, JSON.stringify(V1));
    const held = () => (JSON.parse(cpCli(['status', '--json']).stdout || '{}') as { publication?: { held: { version: number; reason: string } | null } }).publication?.held;
    await eventually('the withdrawal held', () => held()?.version === 2);
    expect(held()!.reason).toMatch(/withdraws more of a service/);
    expect(cpCli(['status']).stdout).toMatch(/HELD version 2 .*spectrum: 1 of 1 bindings removed/);
    expect(labelAt('192.0.2.200', 443)).toBe('spectrum');
    const confirmed = cpCli(['override', '--version', '2']);
    expect(confirmed.stdout).toMatch(/version 2 confirmed: pushed with the override to edge-1/);
    await eventually('the override applied', () => labelAt('192.0.2.200', 443) === 'cdn');
    const wrong = cpCli(['override', '--version', '1']);
    expect(wrong.status).toBe(2);
    expect(wrong.stderr).toMatch(/version 1 is not the current version \(2\)/);

    // A version whose apply never finishes (ipset hangs on it): the agent is killed mid-apply.
    const fake = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-fake-'));
    const realIpset = spawnSync('sh', ['-c', 'command -v ipset'], { encoding: 'utf8' }).stdout.trim();
    fs.writeFileSync(path.join(fake, 'ipset'), `#!/bin/sh\ninput=$(cat)\ncase "$input" in *198.51.100.*) echo $$ > ${fake}/hung.pid; exec sleep 30;; esac\nprintf '%s\\n' "$input" | exec ${realIpset} "$@"\n`, { mode: 0o755 });
    try {
      agent.kill('SIGKILL');
      agent = start(['agent', '--config', config], { ...process.env, PATH: `${fake}:${process.env.PATH}` });
      await eventually('restored', () => /last known good state restored/.test(logs.get(agent)!));
      const V3 = { ...V1, bindings: [...V1.bindings, { label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 }] };
      fs.writeFileSync(state, JSON.stringify(V3));
      await eventually('the apply under way', () => fs.existsSync(path.join(dir, 'state', 'applying.json')) && fs.existsSync(path.join(fake, 'hung.pid')));
      agent.kill('SIGKILL');
      process.kill(Number(fs.readFileSync(path.join(fake, 'hung.pid'), 'utf8')), 'SIGKILL'); // the hung tool, orphaned
    } finally {
      fs.rmSync(fake, { recursive: true, force: true });
    }
    agent = start(['agent', '--config', config]);
    await eventually('restored again', () => /last known good state restored/.test(logs.get(agent)!));
    const status = JSON.parse(spawnSync(CLI, ['agent', 'status', '--socket', path.join(dir, 'admin.sock'), '--json'], { encoding: 'utf8' }).stdout) as { applied: { version: number }; refused: { version: number } };
    expect(status.refused.version).toBe(3);
    expect(status.applied.version).toBe(2);
    expect(labelAt('198.51.100.1', 443)).toBeNull(); // version 3 is not in force, and not retried
    // The next version goes through.
    fs.writeFileSync(state, JSON.stringify({ ...V1, bindings: [...V1.bindings, { label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/25', port: 0 }] }));
    await eventually('version 4 in the data plane', () => labelAt('198.51.100.1', 443) === 'cdn');
  });
});
