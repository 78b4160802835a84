/**
 * The dispatcher with the capabilities the systemd units give the agent
 * (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_NET_RAW) and no CAP_SYS_ADMIN:
 * listing BPF objects by id is refused there, so the first load's search for
 * an unpinned dispatcher (src/dispatcher/orphan.ts) must not depend on it.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { projectPath } from '../../src/paths.js';
import { CLI, TestNamespace, isRoot } from '../support/netns.js';

const CAPS = ['bpf', 'net_admin', 'perfmon', 'net_raw'];
const CAP_BITS = { net_admin: 12, net_raw: 13, perfmon: 38, bpf: 39 } as const;
const haveSetpriv = spawnSync('setpriv', ['--version']).status === 0;

/** argv run as root with only CAPS: uid 0 gets its bounding set as its capabilities at exec. */
function restricted(argv: string[]) {
  const set = `-all,${CAPS.map((c) => `+${c}`).join(',')}`;
  const r = spawnSync('setpriv', [`--inh-caps=${set}`, `--ambient-caps=${set}`, `--bounding-set=${set}`, ...argv], { encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** The dispatcher layer's load (what the agent calls), without the CLI, run with only CAPS. */
function restrictedLoad(ns: TestNamespace, bpffs: string) {
  const script = `
    const { load } = await import(${JSON.stringify(projectPath('dist/src/dispatcher/dispatcher.js'))});
    const { locate } = await import(${JSON.stringify(projectPath('dist/src/dispatcher/state.js'))});
    try {
      console.log(JSON.stringify(load(locate({ bpffs: ${JSON.stringify(bpffs)}, netns: ${JSON.stringify(ns.path)} }))));
    } catch (err) {
      console.log(JSON.stringify({ error: err.code, message: err.message }));
    }`;
  const r = restricted([process.execPath, '--input-type=module', '-e', script]);
  expect(r.stderr).toBe('');
  return JSON.parse(r.stdout) as { created?: boolean; warnings?: string[]; error?: string; message?: string };
}

describe.skipIf(!isRoot || !haveSetpriv)('dispatcher with the units capabilities only', () => {
  let ns: TestNamespace;
  let extra: string | undefined;
  beforeEach(() => {
    ns = TestNamespace.create();
  });
  afterEach(() => {
    if (extra) {
      spawnSync('umount', [extra]);
      fs.rmSync(extra, { recursive: true, force: true });
      extra = undefined;
    }
    ns.destroy();
  });

  it('runs with exactly those capabilities', () => {
    const r = restricted(['grep', '^CapEff', '/proc/self/status']);
    const want = CAPS.reduce((m, c) => m | (1n << BigInt(CAP_BITS[c as keyof typeof CAP_BITS])), 0n);
    expect(BigInt(`0x${r.stdout.split(/\s+/)[1]}`)).toBe(want);
  });

  it('a first load (nothing attached to the namespace) succeeds, and the dispatcher serves', async () => {
    const r = restricted([CLI, 'load', '--netns', ns.path, '--bpffs', ns.bpffs, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ created: true });
    await ns.startService('cdn', ['tcp4', 'udp4'], true);
    for (const proto of ['tcp', 'udp']) expect(restricted([CLI, 'bind', 'cdn', proto, '192.0.2.0/24', '0', '--netns', ns.path, '--bpffs', ns.bpffs]).code).toBe(0);
    expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.7', port: 443 }, { proto: 'udp', addr: '192.0.2.8', port: 53 }])).toEqual(['cdn', 'cdn']);
    const status = ns.json<{ program: { id: number }; link: { progId: number } }>(['status']);
    expect(status.link.progId).toBe(status.program.id);
  });

  it('beside a Switchyard dispatcher whose pins are elsewhere: root refuses (it can tell), the units capabilities load with a warning naming the program', () => {
    ns.ok(['load']);
    const first = ns.json<{ program: { id: number }; link: { id: number } }>(['status']);
    // A second bpffs: the dispatcher attached above has no pins there, as after a bpffs unmount.
    extra = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-bpffs-'));
    expect(spawnSync('mount', ['-t', 'bpf', 'bpf', extra]).status).toBe(0);

    const asRoot = spawnSync(CLI, ['load', '--netns', ns.path, '--bpffs', extra], { encoding: 'utf8' });
    expect(asRoot.status).toBe(2);
    expect(asRoot.stderr).toContain(`(link ${first.link.id}, program ${first.program.id};`);

    const r = restrictedLoad(ns, extra);
    expect(r.error).toBeUndefined();
    expect(r.created).toBe(true);
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings![0]).toContain(`(id ${first.program.id})`);
    expect(r.warnings![0]).toContain('CAP_SYS_ADMIN');
  });

  it('a read-only bpffs (a unit that does not let it write there) is said as such, with the path', () => {
    extra = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-bpffs-'));
    expect(spawnSync('mount', ['-t', 'bpf', 'bpf', extra]).status).toBe(0);
    expect(spawnSync('mount', ['-o', 'remount,bind,ro', extra]).status).toBe(0);
    const r = spawnSync(CLI, ['load', '--netns', ns.path, '--bpffs', extra], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    // Node's recursive mkdir said ENOENT here, which sent the reader looking for a missing directory.
    expect(r.stderr).toContain(`cannot create ${path.join(extra, 'switchyard')}: EROFS`);
  });
});
