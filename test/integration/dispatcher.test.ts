import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CLI, TestNamespace, isRoot, type ProbeTarget } from '../support/netns.js';

const tcp = (addr: string, port: number): ProbeTarget => ({ proto: 'tcp', addr, port });
const udp = (addr: string, port: number): ProbeTarget => ({ proto: 'udp', addr, port });

describe.skipIf(!isRoot)('dispatcher in a fresh network namespace', () => {
  let ns: TestNamespace;
  beforeEach(() => {
    ns = TestNamespace.create();
    ns.ok(['load']);
  });
  afterEach(() => ns.destroy());

  async function registerByPid(name: string, specs: string[]) {
    const service = await ns.startService(name, specs);
    for (const s of ns.socketsOf(service.pid)) ns.ok(['register-pid', String(service.pid), name, s.proto, s.addr, String(s.port)]);
    return service;
  }

  it('loads under a storm of signals (the verifier answers EAGAIN when one is pending)', () => {
    ns.ok(['unload']);
    // A profiler's SIGPROF every 50 µs: the verifier's ~0.1 s never ended before a signal came.
    const profiles = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-prof-'));
    try {
      const r = spawnSync(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${profiles}`, '--cpu-prof-interval', '50', CLI, 'load', '--netns', ns.path, '--bpffs', ns.bpffs, '--json'], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(JSON.parse(r.stdout)).toMatchObject({ created: true });
    } finally {
      fs.rmSync(profiles, { recursive: true, force: true });
    }
  });

  it('load is idempotent, status reports the pinned program and link, unload removes everything', () => {
    expect(ns.json<{ created: boolean }>(['load']).created).toBe(false);
    const status = ns.json<{ program: { id: number }; link: { progId: number }; stateDir: string }>(['status']);
    expect(status.link.progId).toBe(status.program.id);
    expect(fs.readdirSync(status.stateDir).sort()).toEqual(
      ['destination_stats', 'destinations', 'generation', 'link', 'meta', 'program', 'sockets', 'table', 'trace'],
    );
    expect(fs.statSync(status.stateDir).mode & 0o777).toBe(0o700);
    expect(ns.json<{ removed: boolean }>(['unload']).removed).toBe(true);
    expect(fs.existsSync(status.stateDir)).toBe(false);
    const after = ns.cli(['status']);
    expect(after.code).not.toBe(0);
    expect(after.stderr).toMatch(/no dispatcher is loaded/);
  });

  it('bpffs unmounted under it: the data plane serves on, commands say the bpffs is missing, and no second program is loaded beside the unpinned one', async () => {
    await ns.startService('cdn', ['tcp4'], true);
    ns.ok(['bind', 'cdn', 'tcp', '192.0.2.0/24', '0']);
    const before = ns.json<{ link: { id: number } }>(['status']);
    spawnSync('umount', [ns.bpffs]);
    expect(ns.probe([tcp('192.0.2.1', 443)])).toEqual(['cdn']);
    const missing = ns.cli(['bind', 'cdn', 'tcp', '198.51.100.0/24', '0']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/is not a bpf filesystem \(mount -t bpf bpf /);
    // A fresh, empty bpffs: load finds the dispatcher still attached and refuses to run a second one beside it.
    expect(spawnSync('mount', ['-t', 'bpf', 'bpf', ns.bpffs]).status).toBe(0);
    const refused = ns.cli(['load']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(`still attached to ${ns.path} without its pins in ${ns.bpffs} (link ${before.link.id},`);
    expect(refused.stderr).toContain(`bpftool link detach id ${before.link.id}`);
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect(ns.cli(['status']).stderr).toMatch(/no dispatcher is loaded/); // nothing pinned, nothing attached
    expect(ns.probe([tcp('192.0.2.1', 443)])).toEqual(['cdn']);
    // Detached by the operator: load goes through.
    expect(spawnSync('bpftool', ['link', 'detach', 'id', String(before.link.id)]).status).toBe(0);
    expect(ns.json<{ created: boolean }>(['load']).created).toBe(true);
  });

  it('delivers TCP and UDP, IPv4 and IPv6, to sockets registered by LISTEN_FDS and by register-pid', async () => {
    await ns.startService('activated', ['tcp4', 'udp4', 'tcp6', 'udp6'], true);
    await registerByPid('pidgrab', ['tcp4', 'udp4', 'tcp6', 'udp6']);
    for (const proto of ['tcp', 'udp'] as const) {
      ns.ok(['bind', 'activated', proto, '192.0.2.0/25', '0']);
      ns.ok(['bind', 'activated', proto, '2001:db8:1::/48', '0']);
      ns.ok(['bind', 'pidgrab', proto, '192.0.2.128/25', '0']);
      ns.ok(['bind', 'pidgrab', proto, '2001:db8:2::/48', '0']);
    }
    expect(
      ns.probe([
        tcp('192.0.2.10', 80), udp('192.0.2.10', 53), tcp('2001:db8:1::10', 443), udp('2001:db8:1:ffff::1', 53),
        tcp('192.0.2.200', 80), udp('192.0.2.200', 53), tcp('2001:db8:2::10', 443), udp('2001:db8:2::1', 5353),
      ]),
    ).toEqual(['activated', 'activated', 'activated', 'activated', 'pidgrab', 'pidgrab', 'pidgrab', 'pidgrab']);
    const status = ns.json<{ destinations: Array<{ label: string; socket: string | null; stats: { lookups: string } }> }>(['status']);
    expect(status.destinations).toHaveLength(8);
    for (const d of status.destinations) {
      expect(d.socket).not.toBeNull();
      expect(Number(d.stats.lookups)).toBeGreaterThan(0);
    }
  });

  it('follows the precedence rules of system.md', async () => {
    for (const name of ['cdn', 'tls', 'spectrum', 'exact', 'wide']) await registerByPid(name, ['tcp4']);
    // A /32 port 443 carved out of a /24 any-port binding.
    ns.ok(['bind', 'cdn', 'tcp', '192.0.2.0/24', '0']);
    ns.ok(['bind', 'tls', 'tcp', '192.0.2.200', '443']);
    // A longer prefix with any port beats a shorter one with the exact port.
    ns.ok(['bind', 'tls', 'tcp', '198.51.100.0/24', '443']);
    ns.ok(['bind', 'spectrum', 'tcp', '198.51.100.4/32', '0']);
    // Equal prefixes: the exact port wins.
    ns.ok(['bind', 'wide', 'tcp', '203.0.113.0/24', '0']);
    ns.ok(['bind', 'exact', 'tcp', '203.0.113.0/24', '8080']);
    expect(
      ns.probe([
        tcp('192.0.2.200', 443), tcp('192.0.2.200', 80), tcp('192.0.2.201', 443),
        tcp('198.51.100.4', 443), tcp('198.51.100.5', 443),
        tcp('203.0.113.9', 8080), tcp('203.0.113.9', 8081),
      ]),
    ).toEqual(['tls', 'cdn', 'cdn', 'spectrum', 'tls', 'exact', 'wide']);
    // lookup runs the same program and says why.
    const answer = ns.json<{ label: string; binding: { prefix: string; port: number }; outcome: string }>(['lookup', 'tcp', '198.51.100.4', '443']);
    expect(answer).toMatchObject({ label: 'spectrum', binding: { prefix: '198.51.100.4/32', port: 0 }, outcome: 'socket' });
  });

  it('refuses traffic to bound addresses without a socket, and counts it as a miss', async () => {
    ns.ok(['bind', 'nobody', 'tcp', '192.0.2.0/24', '0']);
    ns.ok(['bind', 'nobody', 'udp', '192.0.2.0/24', '53']);
    // A socket the kernel would otherwise pick for 192.0.2.7:80 must not get it.
    await ns.startService('bystander', ['tcp4@192.0.2.7:80', 'udp4@192.0.2.7:53']);
    expect(ns.probe([tcp('192.0.2.7', 80), udp('192.0.2.7', 53)])).toEqual(['refused', 'refused']);
    const status = ns.json<{ destinations: Array<{ label: string; protocol: string; stats: { misses: string } }> }>(['status']);
    for (const d of status.destinations) expect(Number(d.stats.misses), `${d.label} ${d.protocol}`).toBeGreaterThan(0);
    expect(ns.json<{ outcome: string; verdict: string }>(['lookup', 'tcp', '192.0.2.7', '80'])).toMatchObject({ outcome: 'no-socket', verdict: 'drop' });
  });

  it('leaves unbound traffic to the kernel, and an IPv6 ::/0 binding never touches IPv4', async () => {
    ns.ip(['addr', 'add', '2001:db8::9/128', 'dev', 'lo']); // IPv6 binds only assigned addresses
    await ns.startService('native', ['tcp4@192.0.2.9:8080', 'udp4@192.0.2.9:5353', 'tcp6@[2001:db8::9]:8080']);
    await registerByPid('v6all', ['tcp6', 'udp6']);
    ns.ok(['bind', 'v6all', 'tcp', '::/0', '0']);
    ns.ok(['bind', 'v6all', 'udp', '::/0', '0']);
    ns.ok(['bind', 'other', 'tcp', '198.51.100.0/24', '0']);
    expect(ns.probe([tcp('192.0.2.9', 8080), udp('192.0.2.9', 5353), tcp('2001:db8::9', 8080)])).toEqual(['native', 'native', 'v6all']);
    // (No IPv6 UDP probe: udp ::/0 also captures the reply to the probe's own
    // loopback address, as it should.) The program itself says where it goes:
    expect(ns.json<{ label: string; outcome: string }>(['lookup', 'udp', '2001:db8::77', '53'])).toMatchObject({ label: 'v6all', outcome: 'socket' });
    expect(ns.json<{ outcome: string; label: null }>(['lookup', 'tcp', '192.0.2.9', '8080'])).toMatchObject({ outcome: 'unbound', label: null });
  });

  it('refuses sockets that could not take the traffic, and nothing changes', async () => {
    // Only a wildcard bind keeps an IPv6 socket dual-stack.
    const dual = await ns.startService('dual', ['tcp6dual@[::]:0']);
    const [s] = ns.socketsOf(dual.pid);
    const r = ns.cli(['register-pid', String(dual.pid), 'dual', 'tcp', '::', String(s!.port)]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/IPV6_V6ONLY/);
    expect(ns.json<{ destinations: unknown[] }>(['status']).destinations).toEqual([]);
  });

  it('upgrade swaps the program while a client loops connections, losing none', async () => {
    await registerByPid('web', ['tcp4']);
    ns.ok(['bind', 'web', 'tcp', '192.0.2.0/24', '80']);
    const before = ns.json<{ program: { id: number } }>(['status']).program.id;
    const targets = Array.from({ length: 600 }, (_, i) => tcp(`192.0.2.${1 + (i % 250)}`, 80));
    const client = spawn('ip', ['netns', 'exec', ns.name, process.execPath, path.resolve('test/fixtures/probe.mjs'), JSON.stringify(targets)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    client.stdout!.on('data', (d) => (out += d));
    const exited = new Promise((resolve) => client.on('exit', resolve));
    for (let i = 0; i < 5; i++) {
      ns.ok(['upgrade']);
      await new Promise((r) => setTimeout(r, 50));
    }
    await exited;
    const results = JSON.parse(out) as string[];
    expect(results).toHaveLength(600);
    expect(results.filter((r) => r !== 'web')).toEqual([]);
    const after = ns.json<{ program: { id: number }; link: { progId: number } }>(['status']);
    expect(after.program.id).not.toBe(before);
    expect(after.link.progId).toBe(after.program.id);
    expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toHaveLength(1);
  });

  it('load-bindings validates the whole file first and changes nothing on error', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-bindings-'));
    try {
      const good = path.join(dir, 'good.json');
      fs.writeFileSync(good, JSON.stringify({ bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 }] }));
      ns.ok(['load-bindings', good]);
      const cases: Array<[unknown, RegExp]> = [
        [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.1/24', port: 0 }, /bindings\[1\].*host bits/],
        [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/33', port: 0 }, /bindings\[1\].*prefix length/],
        [{ label: 'cdn', protocol: 'tcp', prefix: '::ffff:192.0.2.0/120', port: 0 }, /bindings\[1\].*IPv4-mapped/],
        [{ label: 'cdn', protocol: 'sctp', prefix: '192.0.2.0/24', port: 0 }, /bindings\[1\].*protocol/],
        [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 70000 }, /bindings\[1\].*port/],
        [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0, extra: 1 }, /bindings\[1\].*unknown field "extra"/],
        [{ label: '../etc', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }, /bindings\[1\].*label/],
        [{ label: 'api', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 }, /bindings\[1\].*duplicates bindings\[0\]/],
      ];
      for (const [bad, message] of cases) {
        const file = path.join(dir, 'bad.json');
        const first = (bad as { label: string }).label === 'api' ? { label: 'web', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 } : { label: 'web', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 };
        fs.writeFileSync(file, JSON.stringify({ bindings: [first, bad] }));
        const r = ns.cli(['load-bindings', file]);
        expect(r.code, JSON.stringify(bad)).not.toBe(0);
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
        expect(r.stderr).toMatch(message);
        expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toEqual([{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 }]);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects bad CLI arguments with a one-line reason naming them', () => {
    const cases: Array<[string[], RegExp]> = [
      [['bind', 'cdn', 'tcp', '192.0.2.1/24', '0'], /host bits/],
      [['bind', 'cdn', 'icmp', '192.0.2.0/24', '0'], /protocol "icmp"/],
      [['bind', 'cdn', 'tcp', '192.0.2.0/24', '65536'], /port "65536"/],
      [['bind', 'c;rm -rf', 'tcp', '192.0.2.0/24', '0'], /label/],
      [['bind', 'cdn', 'tcp', '192.0.2.0/24'], /expected 4 arguments/],
      [['lookup', 'tcp', '300.1.1.1', '80'], /"300.1.1.1" is not an IPv4 or IPv6 address/],
      [['unbind', 'cdn', 'tcp', '192.0.2.0/24', '0'], /no such binding/],
      [['unregister', 'cdn', 'ipv5', 'tcp'], /ipv4 or ipv6/],
    ];
    for (const [args, message] of cases) {
      const r = ns.cli(args);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr, args.join(' ')).toMatch(message);
    }
    expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toEqual([]);
  });
});
