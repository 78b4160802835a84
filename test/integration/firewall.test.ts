/**
 * The firewall over a veth pair between two fresh namespaces: the client
 * sends real connections and datagrams to the server's bound prefixes; the
 * server runs the dispatcher, the services and our rules.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { CLI, TestNamespace, isRoot, type ProbeTarget } from '../support/netns.js';

const tcp = (addr: string, port: number): ProbeTarget => ({ proto: 'tcp', addr, port });
const udp = (addr: string, port: number): ProbeTarget => ({ proto: 'udp', addr, port });

const STATE = {
  bindings: [
    { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 },
    { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 },
    { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.200/32', port: 0 },
    { label: 'cdn', protocol: 'udp', prefix: '192.0.2.0/24', port: 0 },
    { label: 'spectrum', protocol: 'tcp', prefix: '2001:db8::/64', port: 0 },
    { label: 'cdn', protocol: 'tcp', prefix: '2001:db8::200/128', port: 0 },
    { label: 'cdn', protocol: 'tcp', prefix: '2001:db8::/120', port: 0 },
    { label: 'cdn', protocol: 'udp', prefix: '2001:db8::/64', port: 0 },
  ],
  services: { cdn: { tcp: [80, 443], udp: [443] }, spectrum: { tcp: [2000] } },
  https_only: { prefixes: ['192.0.2.0/26', '2001:db8::/120'] },
};

// [target, answer with the firewall]: the carve-out, the HTTPS-only range, both families.
const EXPECTED: Array<[ProbeTarget, string]> = [
  [tcp('192.0.2.200', 443), 'cdn'],
  [tcp('192.0.2.200', 2000), 'timeout'], // spectrum's port on cdn's /32: dropped
  [tcp('192.0.2.201', 2000), 'spectrum'],
  [tcp('192.0.2.201', 80), 'timeout'], // cdn's port on spectrum's address
  [tcp('192.0.2.100', 80), 'cdn'],
  [tcp('192.0.2.5', 80), 'refused'], // HTTPS-only: a reset to the SYN, refused at once
  [tcp('192.0.2.5', 443), 'cdn'],
  [udp('192.0.2.5', 8080), 'refused'], // ICMP port unreachable
  [udp('192.0.2.150', 443), 'cdn'],
  [udp('192.0.2.150', 53), 'timeout'],
  [tcp('2001:db8::200', 443), 'cdn'],
  [tcp('2001:db8::200', 2000), 'timeout'],
  [tcp('2001:db8::1:1', 2000), 'spectrum'],
  [tcp('2001:db8::5', 80), 'refused'],
  [udp('2001:db8::5', 80), 'refused'],
  [udp('2001:db8::1:5', 443), 'cdn'],
];

describe.skipIf(!isRoot)('firewall over a veth pair', () => {
  let server: TestNamespace;
  let client: TestNamespace;
  let dir: string;
  let stateFile: string;

  beforeEach(async () => {
    server = TestNamespace.create();
    client = TestNamespace.create({ localRoutes: false });
    server.linkTo(client);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-fw-'));
    stateFile = path.join(dir, 'state.json');
    fs.writeFileSync(stateFile, JSON.stringify(STATE));
    server.ok(['load']);
    server.ok(['load-bindings', stateFile]);
    await server.startService('cdn', ['tcp4', 'udp4@0.0.0.0:0', 'tcp6', 'udp6@[::]:0'], true);
    await server.startService('spectrum', ['tcp4', 'tcp6'], true);
  });
  afterEach(() => {
    client.destroy();
    server.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const probeAll = () => client.probe(EXPECTED.map(([t]) => t), { fromAnyAddress: true });
  const expected = EXPECTED.map(([, want]) => want);

  it('gives real traffic the verdicts the bindings imply, repairs drift, and cleans up exactly', () => {
    // Without the firewall every bound address answers on any port.
    const open = probeAll();
    expect(open[1]).toBe('cdn');
    expect(open[5]).toBe('cdn');

    server.exec(['iptables', '-A', 'INPUT', '-p', 'icmp', '-j', 'ACCEPT']); // someone else's rule
    server.exec(['ip6tables', '-A', 'INPUT', '-p', 'ipv6-icmp', '-j', 'ACCEPT']);
    const found = ['iptables-save', 'ip6tables-save', 'ipset save'].map((c) => server.exec(c.split(' ')).stdout.replace(/^#.*\n/gm, ''));

    expect(server.json<{ changed: boolean }>(['firewall', 'apply', stateFile]).changed).toBe(true);
    expect(probeAll()).toEqual(expected);
    // From the server itself over lo the source is the bound address too: the
    // replies (to an ephemeral port) pass as an established flow.
    expect(server.probe([tcp('192.0.2.100', 80), tcp('192.0.2.100', 2000)])).toEqual(['cdn', 'timeout']);
    expect(server.json<{ changed: boolean }>(['firewall', 'apply', stateFile]).changed).toBe(false);
    const lookup = server.json<{ label: string; firewall: { verdict: string; chain: string } }>(['lookup', 'tcp', '192.0.2.200', '2000']);
    expect(lookup.label).toBe('cdn');
    expect(lookup.firewall).toMatchObject({ verdict: 'drop', chain: 'SWITCHYARD' }); // the managed-prefix drop, after the jump to SWITCHYARD-TCP

    // Drift: our chain flushed, the IPv6 jump deleted, a set emptied.
    server.exec(['iptables', '-F', 'SWITCHYARD-TCP']);
    server.exec(['ip6tables', '-D', 'INPUT', '1']);
    server.exec(['ipset', 'flush', 'sy4-tcp-l-cdn']);
    expect(server.json<{ inSync: boolean }>(['firewall', 'status', stateFile]).inSync).toBe(false);
    const repaired = server.json<{ changed: boolean; summary: Record<string, number> }>(['firewall', 'apply', stateFile]);
    expect(repaired.summary).toMatchObject({ chainsWritten: 1, jumpsFixed: 1 });
    expect(probeAll()).toEqual(expected);

    expect(server.json<{ changed: boolean }>(['firewall', 'cleanup']).changed).toBe(true);
    const left = ['iptables-save', 'ip6tables-save', 'ipset save'].map((c) => server.exec(c.split(' ')).stdout.replace(/^#.*\n/gm, ''));
    expect(left).toEqual(found);
  });

  it('fails closed while someone else flushes a protocol chain or destroys a set, until the next apply repairs it', () => {
    server.ok(['firewall', 'apply', stateFile]);
    // Bound, but not allowed by the binding's service: dropped.
    const refused = [tcp('192.0.2.200', 2000), tcp('192.0.2.201', 80), udp('192.0.2.150', 53), tcp('2001:db8::200', 2000), udp('2001:db8::1:5', 53)];
    const dropped = refused.map(() => 'timeout');
    expect(client.probe(refused, { fromAnyAddress: true })).toEqual(dropped);
    for (const tool of ['iptables', 'ip6tables']) {
      for (const chain of ['SWITCHYARD-TCP', 'SWITCHYARD-UDP']) expect(server.exec([tool, '-F', chain]).code).toBe(0);
    }
    // With the UDP chains empty no rule refers to cdn's UDP sets: they can go too.
    expect(server.exec(['ipset', 'destroy', 'sy4-udp-l-cdn']).code).toBe(0);
    expect(server.exec(['ipset', 'destroy', 'sy6-udp-l-cdn']).code).toBe(0);
    // Real connections and datagrams, both families: still not accepted (they
    // were, before: back from the flushed chain they fell through INPUT).
    expect(client.probe(refused, { fromAnyAddress: true })).toEqual(dropped);
    // Allowed ports are refused meanwhile (fail closed); HTTPS-only still rejects; what is not ours passes.
    expect(client.probe([tcp('192.0.2.100', 80), udp('192.0.2.150', 443), tcp('192.0.2.5', 80)], { fromAnyAddress: true })).toEqual(['timeout', 'timeout', 'refused']);
    expect(server.json<{ inSync: boolean }>(['firewall', 'status', stateFile]).inSync).toBe(false);
    const repaired = server.json<{ summary: Record<string, number> }>(['firewall', 'apply', stateFile]);
    expect(repaired.summary).toMatchObject({ chainsWritten: 4, setsCreated: 2 });
    expect(probeAll()).toEqual(expected);
  });

  it('converges a host with the old rule layout (drop at the end of each protocol chain) without touching a set', () => {
    server.ok(['firewall', 'apply', stateFile]);
    // The layout before issue 15: the managed-prefix drop last in SWITCHYARD-TCP and -UDP, none in SWITCHYARD.
    for (const [tool, family] of [['iptables', 4], ['ip6tables', 6]] as const) {
      const saved = server.exec([`${tool}-save`, '-t', 'filter']).stdout;
      const ours = saved.split('\n').filter((l) => l.startsWith('-A SWITCHYARD'));
      const drop = (chain: string) => `-A ${chain} -m set --match-set sy${family}-managed dst -m comment --comment sy:old -j DROP`;
      const old = [
        '*filter',
        ':SWITCHYARD - [0:0]',
        ':SWITCHYARD-TCP - [0:0]',
        ':SWITCHYARD-UDP - [0:0]',
        ...ours.filter((l) => !(l.startsWith('-A SWITCHYARD ') && / -j DROP$/.test(l))).filter((l) => !l.startsWith('-A SWITCHYARD-')),
        ...ours.filter((l) => l.startsWith('-A SWITCHYARD-TCP ')),
        drop('SWITCHYARD-TCP'),
        ...ours.filter((l) => l.startsWith('-A SWITCHYARD-UDP ')),
        drop('SWITCHYARD-UDP'),
        'COMMIT',
        '',
      ].join('\n');
      const r = server.exec([`${tool}-restore`, '--noflush'], old);
      expect(r.code, r.stderr).toBe(0);
      expect(server.exec([`${tool}-save`, '-t', 'filter']).stdout).not.toMatch(/-A SWITCHYARD -p tcp -m set --match-set \S+ dst .*-j DROP/);
    }
    const sets = server.exec(['ipset', 'save']).stdout;
    // Same verdicts in the old layout (intact), so the switch changes none.
    expect(probeAll()).toEqual(expected);
    const applied = server.json<{ summary: Record<string, number> }>(['firewall', 'apply', stateFile]);
    // Every chain rewritten in one iptables-restore per family (one transaction: no packet sees half of it); no set touched.
    expect(applied.summary).toMatchObject({ chainsWritten: 6, setsCreated: 0, setsReplaced: 0, entriesAdded: 0, entriesRemoved: 0, setsDestroyed: 0 });
    expect(server.exec(['ipset', 'save']).stdout).toBe(sets);
    expect(server.json<{ inSync: boolean }>(['firewall', 'status', stateFile]).inSync).toBe(true);
    expect(probeAll()).toEqual(expected);
  });

  it('firewall watch applies, follows the file, repairs drift, refuses a bad file, and leaves the rules when stopped', async () => {
    // Resyncs every 3 s: the drift below must be seen (by a CLI process of
    // its own, slow under load) before the watcher repairs it.
    const child = spawn(CLI, ['firewall', 'watch', stateFile, '--interval', '3', '--netns', server.path, '--bpffs', server.bpffs], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout!.on('data', (d) => (log += d));
    child.stderr!.on('data', (d) => (log += d));
    const inSync = () => server.json<{ inSync: boolean }>(['firewall', 'status', stateFile]).inSync;
    const eventually = async (what: string, check: () => boolean) => {
      for (let i = 0; i < 100; i++) {
        if (check()) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`${what} did not happen within 10 s; log: ${log}`);
    };
    try {
      await eventually('first apply', inSync);
      server.exec(['iptables', '-F', 'SWITCHYARD-TCP']);
      server.exec(['ip6tables', '-D', 'INPUT', '1']);
      expect(inSync()).toBe(false);
      await eventually('drift repair', inSync);
      fs.writeFileSync(stateFile, JSON.stringify({ ...STATE, services: { ...STATE.services, cdn: { tcp: [80, 443, 2000], udp: [443] } } }));
      await eventually('the changed file applied', inSync);
      expect(client.probe([tcp('192.0.2.200', 2000)], { fromAnyAddress: true })).toEqual(['cdn']);
      fs.writeFileSync(stateFile, '{"bindings": [{"label": "x"}]}');
      await eventually('the bad file refused', () => /state file refused/.test(log));
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    expect(log).toMatch(/stopped; the rules stay in place/);
    expect(server.json<{ rules: Array<{ jumps: number[] }> }>(['firewall', 'status']).rules.map((r) => r.jumps)).toEqual([[1], [1]]);
  });

  it('works the same with the legacy backend, chosen with --backend', () => {
    const applied = server.json<{ backend: string; changed: boolean }>(['firewall', 'apply', stateFile, '--backend', 'legacy']);
    expect(applied).toMatchObject({ backend: 'legacy', changed: true });
    const sample = [0, 1, 5, 7, 13, 14];
    const got = client.probe(sample.map((i) => EXPECTED[i]![0]), { fromAnyAddress: true });
    expect(got).toEqual(sample.map((i) => EXPECTED[i]![1]));
    expect(server.json<{ changed: boolean }>(['firewall', 'apply', stateFile, '--backend', 'legacy']).changed).toBe(false);
    expect(server.json<{ changed: boolean }>(['firewall', 'cleanup', '--backend', 'legacy']).changed).toBe(true);
    expect(server.exec(['iptables-legacy-save']).stdout).not.toMatch(/SWITCHYARD/);
    expect(server.exec(['ipset', 'list', '-n']).stdout.trim()).toBe('');
  });

  it('a failed apply leaves the verdicts as they were and says what failed', () => {
    server.ok(['firewall', 'apply', stateFile]);
    // The next state moves the /32 and /128 back to spectrum and lets cdn take
    // udp 853 too (so both families' rules change); ip6tables-restore fails.
    const next = {
      ...STATE,
      bindings: STATE.bindings.filter((b) => b.prefix !== '192.0.2.200/32' && b.prefix !== '2001:db8::200/128'),
      services: { ...STATE.services, cdn: { tcp: [80, 443], udp: [443, 853] } },
    };
    fs.writeFileSync(stateFile, JSON.stringify(next));
    server.ok(['load-bindings', stateFile]);
    const bin = path.join(dir, 'bin');
    fs.mkdirSync(bin);
    for (const tool of ['ip6tables-nft-restore', 'ip6tables-legacy-restore']) {
      fs.writeFileSync(path.join(bin, tool), '#!/bin/sh\ncat >/dev/null\necho "Error occurred at line: 2" >&2\nexit 1\n', { mode: 0o755 });
    }
    const failed = server.cli(['firewall', 'apply', stateFile], undefined, { PATH: `${bin}:${process.env.PATH}` });
    expect(failed.code).toBe(2); // any error exits 2 (src/cli/main.ts)
    expect(failed.stderr).toMatch(/ip6tables-(nft|legacy)-restore --noflush --wait 5 failed on chain SWITCHYARD.*IPv6 set changes undone/);
    const now = probeAll();
    // IPv6 keeps the old verdicts exactly (which service answers follows the
    // dispatcher, already on the new bindings); IPv4 has the new ones.
    const verdict = (answer: string) => (['timeout', 'refused', 'reset'].includes(answer) ? answer : 'accepted');
    EXPECTED.forEach(([t, want], i) => {
      if (t.addr.includes(':')) expect(verdict(now[i]!), `${t.proto} ${t.addr}:${t.port}`).toBe(verdict(want));
    });
    expect(now.slice(0, 2)).toEqual(['timeout', 'spectrum']); // 192.0.2.200 is spectrum's again
    // The bad input case: nothing changes at all.
    fs.writeFileSync(stateFile, JSON.stringify({ ...STATE, services: { cdn: { tcp: ['80-70'] } } }));
    const bad = server.cli(['firewall', 'apply', stateFile]);
    expect(bad.stderr).toMatch(/services\.cdn\.tcp\[0\]: port "80-70"/);
    fs.writeFileSync(stateFile, JSON.stringify(next));
    server.ok(['firewall', 'apply', stateFile]);
    expect(server.json<{ inSync: boolean }>(['firewall', 'status', stateFile]).inSync).toBe(true);
  });
});
