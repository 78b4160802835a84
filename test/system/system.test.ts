/**
 * The package under a real systemd (scripts/system-test.sh builds the two
 * packages and the cached Debian root, then runs this). One container, in
 * the order an operator lives it: install with apt-get, configure, a fresh
 * boot with the units enabled as shipped, a push served, an API change that
 * survives the control plane's restart, the agent killed and stopped with
 * traffic running, the socket-activated example handed over, an upgrade
 * under traffic, a release of the next ABI and back, purge. Traffic stays inside the container's namespace.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Container } from './container.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const env = (name: string) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this through \`npm run test:system\``);
  return v;
};

const UNITS = ['switchyard.service', 'switchyard-control-plane.service', 'switchyard-dispatcher.service', 'switchyard-register@.service'];
const PROBE_NODE = '/usr/local/lib/systest/node';
const PROBE = '/usr/local/lib/systest/probe.mjs';
const API = 'https://127.0.0.1:8443';
/** What the test measured, for the note and the README (build/system-test.json). */
const figures: Record<string, unknown> = {};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let work: string;
let box: Container;

/** A self-signed CA, the control plane's certificate for 127.0.0.1, tokens. */
function provision(etc: string, cdnUid: number): void {
  fs.mkdirSync(etc, { recursive: true });
  const ssl = (...args: string[]) => {
    const r = spawnSync('openssl', args, { cwd: etc, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=switchyard-systest-ca');
  ssl('req', ...ec, '-keyout', 'control-plane.key', '-out', 'cp.csr', '-subj', '/CN=localhost');
  fs.writeFileSync(path.join(etc, 'ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  ssl('x509', '-req', '-in', 'cp.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'control-plane.pem', '-days', '2', '-extfile', 'ext');
  for (const f of ['cp.csr', 'ext', 'ca.key', 'ca.srl']) fs.rmSync(path.join(etc, f), { force: true });
  const token = () => spawnSync('openssl', ['rand', '-hex', '24'], { encoding: 'utf8' }).stdout.trim();
  const agentToken = token();
  const write = (name: string, text: string, mode = 0o600) => fs.writeFileSync(path.join(etc, name), text, { mode });
  write('tokens.json', JSON.stringify({ 'edge-1': agentToken }) + '\n');
  write('agent-token', agentToken + '\n');
  write('admin-token', token() + '\n');
  write(
    'desired.json',
    JSON.stringify({
      bindings: [
        { label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 },
        { label: 'cdn', protocol: 'udp', prefix: '198.51.100.0/24', port: 0 },
      ],
      services: { cdn: { tcp: ['1-65535'], udp: ['1-65535'] } },
    }) + '\n',
    0o644,
  );
  write(
    'agent.json',
    JSON.stringify({
      agent_id: 'edge-1',
      // No state_dir: the unit's StateDirectory= names it.
      control_plane: { url: 'wss://127.0.0.1:8443/', ca_file: '/etc/switchyard/ca.pem', token_file: '/etc/switchyard/agent-token' },
      registration: { cdn: { uids: [cdnUid] } },
    }) + '\n',
    0o644,
  );
}

/** GET/POST on the control plane's API from inside, with the admin token. */
async function api(method: string, route: string, body?: unknown): Promise<{ status: number; body: any }> {
  const script = `
    const token = require('fs').readFileSync('/etc/switchyard/admin-token', 'utf8').trim();
    fetch(${JSON.stringify(API + route)}, { method: ${JSON.stringify(method)}, headers: { authorization: 'Bearer ' + token, 'content-type': 'application/json' },
      body: ${body === undefined ? 'undefined' : JSON.stringify(JSON.stringify(body))} })
      .then(async (r) => console.log(JSON.stringify({ status: r.status, body: await r.json().catch(() => null) })));`;
  const out = await box.run([PROBE_NODE, '-e', script], { env: { NODE_EXTRA_CA_CERTS: '/etc/switchyard/ca.pem' } });
  return JSON.parse(out) as { status: number; body: any };
}

const probeOnce = async (proto: 'tcp' | 'udp', addr: string, port: number) => (await box.run([PROBE_NODE, PROBE, 'once', proto, addr, String(port)])).trim();

/** A probe loop in the container until stopped; resolves to its counts. */
function probeLoop(name: string): { stop: () => Promise<Record<string, number>> } {
  const stopFile = `/run/systest-stop-${name}`;
  const child: ChildProcess = box.background([PROBE_NODE, PROBE, 'loop', '198.51.100', stopFile]);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<void>((r) => child.on('close', () => r()));
  return {
    async stop() {
      await box.run(['touch', stopFile]);
      await done;
      const counts = JSON.parse(out.trim()) as Record<string, number>;
      figures[`probe_${name}`] = counts;
      return counts;
    },
  };
}

const show = async (unit: string, props: string[]) => {
  const out = await box.run(['systemctl', 'show', unit, ...props.map((p) => `--property=${p}`)]);
  return Object.fromEntries(out.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
};

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await sleep(250);
  }
  throw new Error(`${what}: not within ${ms} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
}

/** The version in force at the control plane (its versions restart at 1, in a new epoch, when it restarts: issue 18). */
const currentVersion = async (): Promise<number> => (await api('GET', '/v1/state')).body.version as number;

/** The version edge-1 has acknowledged of the control plane's epoch, as its /status says. */
async function appliedVersion(): Promise<number | undefined> {
  const r = await api('GET', '/status');
  const agent = (r.body?.agents ?? []).find((a: any) => a.agentId === 'edge-1');
  return agent?.applied?.version;
}

const ROUTES = ['198.51.100.0/24', '203.0.113.0/24'];
async function addRoutes(): Promise<void> {
  for (const r of ROUTES) await box.run(['ip', 'route', 'add', 'local', r, 'dev', 'lo']);
}

describe.sequential('the Debian package under systemd', () => {
  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'switchyard-systest-'));
    const root = path.join(work, 'root');
    const t0 = Date.now();
    const cp = spawnSync('cp', ['-a', '--reflink=auto', env('SYSTEST_ROOT'), root], { encoding: 'utf8' });
    if (cp.status !== 0) throw new Error(`cp: ${cp.stderr}`);
    figures.root_copy_ms = Date.now() - t0;
    fs.mkdirSync(path.join(root, 'usr/local/lib/systest'), { recursive: true });
    fs.copyFileSync(process.execPath, path.join(root, PROBE_NODE.slice(1)));
    fs.chmodSync(path.join(root, PROBE_NODE.slice(1)), 0o755);
    fs.copyFileSync(path.join(here, 'probe.mjs'), path.join(root, PROBE.slice(1)));
    // The example cdn.service's ExecStart (exec: LISTEN_PID names this process).
    fs.copyFileSync(path.join(here, 'cdn-server.mjs'), path.join(root, 'usr/local/lib/systest/cdn-server.mjs'));
    fs.writeFileSync(path.join(root, 'usr/local/bin/cdn-server'), `#!/bin/sh\nexec ${PROBE_NODE} /usr/local/lib/systest/cdn-server.mjs\n`, { mode: 0o755 });
    for (const deb of ['SYSTEST_DEB', 'SYSTEST_DEB_NEXT', 'SYSTEST_DEB_ABI']) fs.copyFileSync(env(deb), path.join(root, 'root', path.basename(env(deb))));
    box = new Container(root, work, `systest-${process.pid}`);
    figures.first_boot = await box.boot();
  }, 300_000);

  afterAll(async () => {
    if (box) {
      if (process.env.SYSTEST_KEEP !== '1') await box.destroy();
    }
    if (work && process.env.SYSTEST_KEEP !== '1') fs.rmSync(work, { recursive: true, force: true });
    const out = path.resolve(here, '../../build/system-test.json');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, JSON.stringify({ suite: process.env.SYSTEST_SUITE, at: new Date().toISOString(), ...figures }, null, 2) + '\n');
    console.log(`system test figures in ${out}:\n${JSON.stringify(figures, null, 2)}`);
  }, 120_000);

  it('installs with apt-get install ./…deb; the units are enabled and skip until configured', async () => {
    const deb = `/root/${path.basename(env('SYSTEST_DEB'))}`;
    const t0 = Date.now();
    const out = await box.run(['apt-get', 'install', '-y', '--no-install-recommends', deb], { env: { DEBIAN_FRONTEND: 'noninteractive' }, timeoutMs: 180_000 });
    figures.install_ms = Date.now() - t0;
    expect(out).toMatch(/Setting up switchyard/);
    for (const unit of ['switchyard.service', 'switchyard-control-plane.service']) {
      expect((await box.exec(['systemctl', 'is-enabled', unit])).stdout.trim()).toBe('enabled');
      // Not configured yet: skipped on its condition, not failed.
      const s = await show(unit, ['ActiveState', 'ConditionResult']);
      expect(s).toEqual({ ActiveState: 'inactive', ConditionResult: 'no' });
    }
    expect((await box.exec(['systemctl', 'is-enabled', 'switchyard-dispatcher.service'])).stdout.trim()).toBe('disabled');
    expect((await box.run(['systemctl', '--failed', '--no-legend'])).trim()).toBe('');
    const version = (await box.run(['switchyard', '--version'])).trim();
    expect(version).toContain(JSON.parse(fs.readFileSync(path.resolve(here, '../../package.json'), 'utf8')).version);
  });

  it('systemd-analyze verify finds nothing in the shipped units and the examples (man pages aside: the root has no man)', async () => {
    // The examples as an operator installs them (cdn.socket's service needs its binary and user).
    await box.run(['sh', '-c', 'cp /usr/share/doc/switchyard/examples/cdn*.s* /etc/systemd/system/ && useradd --system --no-create-home cdn && systemctl daemon-reload']);
    const files = [...UNITS.map((u) => `/lib/systemd/system/${u.replace('@.service', '@cdn.service')}`), '/etc/systemd/system/cdn.socket', '/etc/systemd/system/cdn.service', '/etc/systemd/system/cdn-handover.service'];
    // switchyard-register@cdn.service: verify wants an instance; the template is the file.
    const r = await box.exec(['sh', '-c', `cd /lib/systemd/system && ln -sf switchyard-register@.service /run/systemd/system/switchyard-register@cdn.service 2>/dev/null; systemd-analyze verify --man=no ${files.map((f) => f.replace('/lib/systemd/system/switchyard-register@cdn.service', '/run/systemd/system/switchyard-register@cdn.service')).join(' ')}`]);
    await box.run(['rm', '-f', '/run/systemd/system/switchyard-register@cdn.service']);
    expect({ code: r.code, out: (r.stdout + r.stderr).trim() }).toEqual({ code: 0, out: '' });
  });

  it('on a fresh boot, configured, the units as shipped: control plane and agent active, the agent only after READY=1', async () => {
    const uid = Number((await box.run(['id', '-u', 'cdn'])).trim());
    provision(path.join(box.root, 'etc/switchyard'), uid);
    await box.run(['systemctl', 'enable', 'cdn.socket', 'cdn-handover.service']);
    await box.shutdown();
    figures.boot = await box.boot();
    await addRoutes();
    expect(figures.boot).toMatchObject({ state: 'running' });
    for (const unit of ['switchyard.service', 'switchyard-control-plane.service']) {
      expect(await show(unit, ['ActiveState', 'SubState'])).toEqual({ ActiveState: 'active', SubState: 'running' });
    }
    const agent = await show('switchyard.service', ['Type', 'StatusText', 'NRestarts', 'WatchdogUSec']);
    expect(agent).toMatchObject({ Type: 'notify', NRestarts: '0', WatchdogUSec: '30s' });
    // STATUS= comes with READY=1: systemd heard the agent itself.
    expect(agent.StatusText).toMatch(/serving|no state yet|version/);
    // Active only after READY=1: the agent stamps its restore line (pino's
    // time) before it opens its sockets and sends READY=1; systemd stamps
    // ActiveEnterTimestamp when READY=1 arrives. (The journal's order of the
    // two lines proves nothing: journald reads the agent's stdout stream and
    // systemd's own messages from different sockets; seen out of order.)
    const journal = (await box.run(['journalctl', '-b', '-o', 'cat', '-u', 'switchyard.service'])).split('\n');
    const restored = journal.find((l) => /last known good state restored|no last known good state yet/.test(l));
    expect(restored).toBeDefined();
    const restoredAt = (JSON.parse(restored!.slice(restored!.indexOf('{'))) as { time: number }).time;
    const active = (await box.run(['systemctl', 'show', '--timestamp=us+utc', '--property=ActiveEnterTimestamp', '--value', 'switchyard.service'])).trim();
    const activeAt = Date.parse(active.replace(/^\w+ /, '').replace(' UTC', 'Z').replace(' ', 'T').replace(/(\.\d{3})\d+/, '$1'));
    expect(Number.isFinite(activeAt), active).toBe(true);
    expect(activeAt).toBeGreaterThanOrEqual(restoredAt);
    expect((await box.run(['systemctl', '--failed', '--no-legend'])).trim()).toBe('');
  });

  it('the push is applied and served: the socket-activated example handed over through the registration socket', async () => {
    await waitFor('edge-1 acknowledges version 1', async () => (await appliedVersion()) === 1);
    expect(await show('cdn-handover.service', ['ActiveState', 'Result'])).toMatchObject({ Result: 'success' });
    const journal = await box.run(['journalctl', '-b', '-o', 'cat', '-u', 'switchyard.service']);
    expect(journal).toMatch(/sockets registered/);
    expect(await probeOnce('tcp', '198.51.100.7', 80)).toBe('cdn');
    expect(await probeOnce('udp', '198.51.100.9', 53)).toBe('cdn');
    // Nothing binds 203.0.113.0/24 yet: refused.
    expect(await probeOnce('tcp', '203.0.113.5', 443)).toBe('refused');
    // STATUS= follows the ACK: `systemctl status switchyard` says what is in force.
    expect((await show('switchyard.service', ['StatusText'])).StatusText).toMatch(/^serving version 1 of epoch \S+, acknowledged at /);
  });

  it('an API change is saved: it survives a restart of the control plane', async () => {
    const added = { label: 'cdn', protocol: 'tcp', prefix: '203.0.113.0/24', port: 443 };
    const r = await api('POST', '/v1/bindings', { bindings: [added] });
    expect(r.status).toBeLessThan(300);
    await waitFor('edge-1 acknowledges version 2', async () => (await appliedVersion()) === 2);
    expect(await probeOnce('tcp', '203.0.113.5', 443)).toBe('cdn');
    await box.run(['systemctl', 'restart', 'switchyard-control-plane.service']);
    await waitFor('the control plane answers again', async () => (await api('GET', '/v1/bindings')).status === 200);
    // A change that fails verification (traffic for a label with no service
    // policy) is refused, and the control plane's line reaches the journal
    // at warning priority.
    const refused = await api('POST', '/v1/bindings', { bindings: [{ label: 'nopolicy', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }] });
    expect(refused.status).toBeGreaterThanOrEqual(400);
    const warnings = await box.run(['journalctl', '-b', '-o', 'cat', '-p', 'warning', '-u', 'switchyard-control-plane.service']);
    expect(warnings).toMatch(/refused by verification/);
    const after = await api('GET', '/v1/bindings');
    expect(after.body.bindings).toContainEqual(added);
    expect(await probeOnce('tcp', '203.0.113.5', 443)).toBe('cdn');
  });

  it('SIGKILL: systemd restarts the agent, traffic served throughout', async () => {
    const before = await show('switchyard.service', ['MainPID', 'NRestarts']);
    const loop = probeLoop('sigkill');
    await sleep(1000);
    await box.run(['systemctl', 'kill', '-s', 'SIGKILL', 'switchyard.service']);
    await waitFor('the agent restarted and ready', async () => {
      const s = await show('switchyard.service', ['ActiveState', 'MainPID', 'NRestarts']);
      return s.ActiveState === 'active' && s.MainPID !== before.MainPID && Number(s.NRestarts) === Number(before.NRestarts) + 1;
    });
    await sleep(1000);
    const counts = await loop.stop();
    expect(counts.attempts).toBeGreaterThan(20);
    expect(counts).toMatchObject({ refused: 0, timeout: 0, misrouted: 0, errors: 0 });
    expect(await appliedVersion()).toBe(await currentVersion());
  });

  it('SIGSTOP: the watchdog aborts the hung agent and systemd restarts it, traffic served throughout', async () => {
    const before = await show('switchyard.service', ['MainPID', 'NRestarts']);
    const loop = probeLoop('sigstop');
    const t0 = Date.now();
    await box.run(['systemctl', 'kill', '-s', 'SIGSTOP', 'switchyard.service']);
    await waitFor(
      'the watchdog restart',
      async () => {
        const s = await show('switchyard.service', ['ActiveState', 'MainPID', 'NRestarts']);
        return s.ActiveState === 'active' && s.MainPID !== before.MainPID && Number(s.NRestarts) === Number(before.NRestarts) + 1;
      },
      90_000,
    );
    figures.watchdog_restart_ms = Date.now() - t0;
    const counts = await loop.stop();
    const journal = await box.run(['journalctl', '-b', '-o', 'cat', '-u', 'switchyard.service']);
    expect(journal).toMatch(/[Ww]atchdog timeout/);
    expect(counts).toMatchObject({ refused: 0, timeout: 0, misrouted: 0, errors: 0 });
  });

  it('systemd-analyze security: the exposure of each unit', async () => {
    const scores: Record<string, string> = {};
    for (const unit of ['switchyard.service', 'switchyard-control-plane.service', 'switchyard-dispatcher.service', 'switchyard-register@cdn.service']) {
      const r = await box.exec(['systemd-analyze', 'security', '--no-pager', unit]);
      const m = /Overall exposure level for \S+: (\d+\.\d+) (\S+)/.exec(r.stdout + r.stderr);
      expect(m, `${unit}: ${r.stdout}${r.stderr}`).not.toBeNull();
      scores[unit] = `${m![1]} ${m![2]}`;
    }
    figures.security = scores;
  });

  it('upgrade with apt-get install of a newer build under traffic: 0 refused, the agent restarted on the new version', async () => {
    const before = await show('switchyard.service', ['MainPID']);
    const programOf = async () => (JSON.parse(await box.run(['switchyard', 'status', '--json'])) as { program: { id: number } }).program.id;
    const program = await programOf();
    const loop = probeLoop('upgrade');
    await sleep(1000);
    const t0 = Date.now();
    await box.run(['apt-get', 'install', '-y', '--no-install-recommends', `/root/${path.basename(env('SYSTEST_DEB_NEXT'))}`], { env: { DEBIAN_FRONTEND: 'noninteractive' }, timeoutMs: 180_000 });
    figures.upgrade_ms = Date.now() - t0;
    await waitFor('the new agent active', async () => {
      const s = await show('switchyard.service', ['ActiveState', 'MainPID']);
      return s.ActiveState === 'active' && s.MainPID !== before.MainPID;
    });
    await sleep(1000);
    const counts = await loop.stop();
    expect(counts.attempts).toBeGreaterThan(20);
    expect(counts).toMatchObject({ refused: 0, timeout: 0, misrouted: 0, errors: 0 });
    expect((await box.run(['switchyard', '--version'])).trim()).toContain('+systest1');
    // The same BPF object: the restart kept the program (a no-op).
    expect(await programOf()).toBe(program);
    expect(await appliedVersion()).toBe(await currentVersion());
  });

  it('a release that changes the map layout (the next ABI) and the way back, each under traffic: nothing refused or misrouted', async () => {
    const abiOf = async () => (JSON.parse(await box.run(['switchyard', 'version', '--json'])) as { abi: number }).abi;
    const programOf = async () => (JSON.parse(await box.run(['switchyard', 'status', '--json'])) as { program: { id: number } }).program.id;
    const abi = await abiOf();
    const steps: Array<[string, number, string]> = [
      [env('SYSTEST_DEB_ABI'), abi + 1, 'abi_up'],
      [env('SYSTEST_DEB'), abi, 'abi_down'],
    ];
    for (const [deb, expectedAbi, name] of steps) {
      const before = await show('switchyard.service', ['MainPID']);
      const program = await programOf();
      const loop = probeLoop(name);
      await sleep(1000);
      const t0 = Date.now();
      await box.run(['apt-get', 'install', '-y', '--allow-downgrades', '--no-install-recommends', `/root/${path.basename(deb)}`], {
        env: { DEBIAN_FRONTEND: 'noninteractive' },
        timeoutMs: 180_000,
      });
      await waitFor(`the agent of ABI ${expectedAbi} active`, async () => {
        const s = await show('switchyard.service', ['ActiveState', 'MainPID']);
        return s.ActiveState === 'active' && s.MainPID !== before.MainPID;
      });
      figures[`${name}_ms`] = Date.now() - t0;
      await sleep(1000);
      const counts = await loop.stop();
      expect(counts.attempts).toBeGreaterThan(20);
      expect(counts, name).toMatchObject({ refused: 0, timeout: 0, misrouted: 0, errors: 0 });
      expect(await abiOf()).toBe(expectedAbi);
      // The pinned state is the new ABI's (status opens it), under another program.
      expect(await programOf()).not.toBe(program);
      expect((await box.run(['ls', '/sys/fs/bpf/switchyard'])).trim().split(/\s+/).filter((d) => /^\d+$/.test(d))).toHaveLength(1);
      expect(await appliedVersion()).toBe(await currentVersion());
      expect(await probeOnce('udp', '198.51.100.9', 53)).toBe('cdn');
    }
  });

  it('purge removes the state, leaves the data plane serving', async () => {
    await box.run(['apt-get', 'purge', '-y', 'switchyard'], { env: { DEBIAN_FRONTEND: 'noninteractive' }, timeoutMs: 120_000 });
    for (const gone of ['/usr/lib/switchyard', '/var/lib/switchyard', '/var/lib/private/switchyard-control-plane', '/lib/systemd/system/switchyard.service']) {
      expect((await box.exec(['test', '-e', gone])).code, gone).not.toBe(0);
    }
    expect((await box.exec(['systemctl', 'is-active', 'switchyard.service'])).stdout.trim()).not.toBe('active');
    expect((await box.run(['ls', '/sys/fs/bpf/switchyard'])).trim()).not.toBe('');
    // No agent, no package: the pinned dispatcher serves on.
    expect(await probeOnce('tcp', '198.51.100.7', 80)).toBe('cdn');
  });

  it('purge when asked to (SWITCHYARD_UNLOAD=yes) also unloads the dispatcher', async () => {
    const deb = `/root/${path.basename(env('SYSTEST_DEB'))}`;
    await box.run(['apt-get', 'install', '-y', '--no-install-recommends', deb], { env: { DEBIAN_FRONTEND: 'noninteractive' }, timeoutMs: 180_000 });
    await waitFor('the agent back', async () => (await show('switchyard.service', ['ActiveState'])).ActiveState === 'active');
    await box.run(['apt-get', 'purge', '-y', 'switchyard'], { env: { DEBIAN_FRONTEND: 'noninteractive', SWITCHYARD_UNLOAD: 'yes' }, timeoutMs: 120_000 });
    const left = (await box.run(['ls', '/sys/fs/bpf/switchyard'])).trim().split(/\s+/).filter((d) => /^\d+$/.test(d));
    expect(left).toEqual([]);
    // Nothing dispatches any more: the kernel's own lookup finds no socket there.
    expect(await probeOnce('tcp', '198.51.100.7', 80)).toBe('refused');
  });
});
