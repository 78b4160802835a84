/**
 * A change of ABI without an outage: this build (ABI N) and a test build of
 * ABI N+1 whose `trace` map has another layout (its value 8 bytes longer, in
 * the BPF object and in user space alike) take turns loading the same
 * namespace, N → N+1 → N → N+1 → N, while a probe loop of TCP and UDP runs
 * through the dispatcher: nothing refused, nothing misrouted; bindings,
 * destinations, sockets and counters carried over (the stable maps reused as
 * they are), the changed map made new each time.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { projectPath } from '../../src/paths.js';
import { ABI_VERSION } from '../../src/trie/layout.js';
import { TestNamespace, WEB_AND_API_TARGETS, isRoot, probeLoop, startWebAndApi } from '../support/netns.js';

interface Status {
  program: { id: number; tag: string };
  link: { id: number; progId: number };
  table: { serial: string; bindingCount: number };
  destinations: Array<{ label: string; id: number; socket: string | null; stats: { lookups: string; misses: string; errors: string } }>;
}

function replaceOnce(text: string, from: string, to: string, file: string): string {
  const at = text.indexOf(from);
  if (at < 0 || text.indexOf(from, at + 1) >= 0) throw new Error(`${file}: expected "${from}" exactly once`);
  return text.slice(0, at) + to + text.slice(at + from.length);
}

/**
 * A build of ABI N+1 in `root`: the built TypeScript with ABI_VERSION + 1
 * and a trace value of 32 bytes, the BPF object from sources patched the
 * same way; the addon and node_modules shared. `socketsHalved`: its sockets
 * map also has half the entries (a layout that cannot be carried over).
 */
function buildNext(root: string, socketsHalved = false): string {
  fs.mkdirSync(root);
  fs.copyFileSync(projectPath('package.json'), path.join(root, 'package.json'));
  fs.symlinkSync(projectPath('node_modules'), path.join(root, 'node_modules'));
  fs.symlinkSync(projectPath('native'), path.join(root, 'native'));
  fs.cpSync(projectPath('bin'), path.join(root, 'bin'), { recursive: true });
  fs.cpSync(projectPath('dist'), path.join(root, 'dist'), { recursive: true });
  const layout = path.join(root, 'dist/src/trie/layout.js');
  let js = fs.readFileSync(layout, 'utf8');
  js = replaceOnce(js, `export const ABI_VERSION = ${ABI_VERSION};`, `export const ABI_VERSION = ${ABI_VERSION + 1};`, layout);
  js = replaceOnce(js, 'assignErr: 20, size: 24 }', 'assignErr: 20, size: 32 }', layout);
  fs.writeFileSync(layout, js);
  if (socketsHalved) {
    const maps = path.join(root, 'dist/src/dispatcher/maps.js');
    fs.writeFileSync(maps, replaceOnce(fs.readFileSync(maps, 'utf8'), 'valueSize: 8, maxEntries: MAX_DESTINATIONS,', 'valueSize: 8, maxEntries: MAX_DESTINATIONS / 2,', maps));
  }

  const src = path.join(root, 'bpf-src');
  fs.cpSync(projectPath('bpf'), src, { recursive: true, filter: (f) => !f.endsWith('.o') });
  const header = path.join(src, 'switchyard.h');
  let h = fs.readFileSync(header, 'utf8');
  h = replaceOnce(h, `#define SY_ABI_VERSION ${ABI_VERSION}`, `#define SY_ABI_VERSION ${ABI_VERSION + 1}`, header);
  h = replaceOnce(h, '\t__s32 assign_err;\n};', '\t__s32 assign_err;\n\t__u32 reserved[2];\n};', header);
  fs.writeFileSync(header, h);
  if (socketsHalved) {
    const program = path.join(src, 'dispatcher.c');
    const c = fs.readFileSync(program, 'utf8');
    fs.writeFileSync(program, replaceOnce(c, '\t__uint(type, BPF_MAP_TYPE_SOCKMAP);\n\t__uint(max_entries, SY_MAX_DESTINATIONS);', '\t__uint(type, BPF_MAP_TYPE_SOCKMAP);\n\t__uint(max_entries, SY_MAX_DESTINATIONS / 2);', program));
  }
  fs.mkdirSync(path.join(root, 'bpf'));
  const arch = execFileSync('gcc', ['-dumpmachine'], { encoding: 'utf8' }).trim();
  execFileSync('clang', ['-O2', '-g', '-Wall', '-Werror', '-target', 'bpf', `-I/usr/include/${arch}`, '-c', path.join(src, 'dispatcher.c'), '-o', path.join(root, 'bpf/dispatcher.o')]);
  return root;
}

interface Migration {
  fromAbi: number;
  toAbi: number;
  bindings: number;
  reused: string[];
  created: string[];
  buildMs: number;
  loadMs: number;
  switchMs: number;
}

/** Where a writer dies in a migration (src/dispatcher/migrate.ts): the addon's call it dies at, and whether that call is made. */
type Death = { at: 'linkUpdate' | 'renameExchange'; made: boolean };

/**
 * The dispatcher layer's load of the build at `root` (what its agent calls
 * at start); with `death`, the process exits at that step instead of
 * finishing, as a killed writer would.
 */
function loadWith(root: string, ns: TestNamespace, death?: Death): { created?: boolean; migrated?: Migration; warnings?: string[]; error?: string; message?: string } {
  const text = `
    const { load } = await import(${JSON.stringify(path.join(root, 'dist/src/dispatcher/dispatcher.js'))});
    const { locate } = await import(${JSON.stringify(path.join(root, 'dist/src/dispatcher/state.js'))});
    const { native } = await import(${JSON.stringify(path.join(root, 'dist/src/kernel/native.js'))});
    const death = ${JSON.stringify(death ?? null)};
    if (death) {
      const addon = native();
      const real = addon[death.at];
      addon[death.at] = (...args) => {
        if (death.made) real(...args);
        process.exit(9);
      };
    }
    try {
      process.stdout.write(JSON.stringify(load(locate({ bpffs: ${JSON.stringify(ns.bpffs)}, netns: ${JSON.stringify(ns.path)} }))));
    } catch (err) {
      process.stdout.write(JSON.stringify({ error: err.code, message: err.message }));
    }`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', text], { encoding: 'utf8' });
  if (death) {
    expect(r.status).toBe(9);
    return {};
  }
  expect(r.stderr).toBe('');
  return JSON.parse(r.stdout);
}

function cliOf(root: string, ns: TestNamespace, args: string[]) {
  try {
    return { code: 0, stdout: execFileSync(path.join(root, 'bin/switchyard'), [...args, '--netns', ns.path, '--bpffs', ns.bpffs], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }), stderr: '' };
  } catch (err) {
    const e = err as { status: number; stdout: string; stderr: string };
    return { code: e.status, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Map ids of the pins in the namespace's state directory. */
function mapIds(ns: TestNamespace): Record<string, number> {
  const dir = path.join(ns.bpffs, 'switchyard', String(fs.statSync(ns.path).ino));
  const out: Record<string, number> = {};
  for (const name of ['sockets', 'destinations', 'destination_stats', 'trace', 'meta', 'generation']) {
    out[name] = (JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', path.join(dir, name)], { encoding: 'utf8' })) as { id: number }).id;
  }
  return out;
}



describe.skipIf(!isRoot)('ABI migration', () => {
  let ns: TestNamespace;
  let root: string;
  let next: string;
  let halved: string;
  const current = projectPath();
  beforeAll(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-abi-'));
    next = buildNext(path.join(root, 'next'));
    halved = buildNext(path.join(root, 'halved'), true);
  });
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
  beforeEach(async () => {
    ns = TestNamespace.create();
    ns.ok(['load']);
    await startWebAndApi(ns);
    ns.ok(['bind', 'nobody', 'tcp', '203.0.113.0/24', '0']); // reserved: refused by design, and it must stay so
  });
  afterEach(() => ns.destroy());

  const targets = WEB_AND_API_TARGETS;

  it(`N (${ABI_VERSION}) → N+1 → N → N+1 → N under a probe loop: nothing refused or misrouted, bindings, sockets and counters carried, the changed map made new`, async () => {
    const before = ns.json<Status>(['status']);
    const bindingsBefore = ns.json<{ bindings: unknown[] }>(['bindings']).bindings;
    const idsBefore = mapIds(ns);
    const loop = probeLoop(ns, targets, 300, 8);
    const steps: Array<{ to: number; migrated: Migration; programId: number; ids: Record<string, number> }> = [];
    const builds = [next, current, next, current];
    for (const build of builds) {
      await new Promise((resolve) => setTimeout(resolve, 700)); // traffic on each version
      const r = loadWith(build, ns);
      expect(r.created).toBe(false);
      expect(r.migrated).toBeDefined();
      const status = JSON.parse(cliOf(build, ns, ['status', '--json']).stdout) as Status;
      steps.push({ to: r.migrated!.toAbi, migrated: r.migrated!, programId: status.program.id, ids: mapIds(ns) });
      expect(status.link.id).toBe(before.link.id);
      expect(status.link.progId).toBe(status.program.id);
      // The other build refuses to guess, and says what to do.
      const other = cliOf(build === next ? current : next, ns, ['status']);
      expect(other.code).toBe(2);
      expect(other.stderr).toMatch(/holds dispatcher state of ABI \d+; this version speaks ABI \d+; `switchyard load` \(or the agent starting\) migrates it/);
    }
    const attempts = await loop.done;
    const wrong = attempts.filter((a) => a.got !== a.want);
    expect(attempts.length).toBeGreaterThan(1500);
    expect(wrong).toEqual([]);

    expect(steps.map((s) => [s.migrated.fromAbi, s.migrated.toAbi])).toEqual([
      [ABI_VERSION, ABI_VERSION + 1],
      [ABI_VERSION + 1, ABI_VERSION],
      [ABI_VERSION, ABI_VERSION + 1],
      [ABI_VERSION + 1, ABI_VERSION],
    ]);
    for (const s of steps) {
      expect(s.migrated.bindings).toBe(6);
      expect(s.migrated.reused.sort()).toEqual(['destination_stats', 'destinations', 'sockets']);
      expect(s.migrated.created.sort()).toEqual(['generation', 'meta', 'trace']);
      // Stable maps are the same maps all along; the changed one and the stamp are new each time.
      expect([s.ids.sockets, s.ids.destinations, s.ids.destination_stats]).toEqual([idsBefore.sockets, idsBefore.destinations, idsBefore.destination_stats]);
    }
    expect(new Set([idsBefore.trace, ...steps.map((s) => s.ids.trace)]).size).toBe(steps.length + 1);
    expect(new Set([before.program.id, ...steps.map((s) => s.programId)]).size).toBe(steps.length + 1);
    const ms = (f: (m: Migration) => number) => `${Math.min(...steps.map((s) => f(s.migrated))).toFixed(1)}-${Math.max(...steps.map((s) => f(s.migrated))).toFixed(1)} ms`;
    console.log(`ABI migration: ${attempts.length} probe attempts, ${wrong.length} wrong; ${steps.length} migrations: table read and rebuilt ${ms((m) => m.buildMs)}, program load ${ms((m) => m.loadMs)}, link update + directory swap ${Math.max(...steps.map((s) => s.migrated.switchMs)).toFixed(3)} ms at most`);

    const after = ns.json<Status>(['status']);
    expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toEqual(bindingsBefore);
    expect(after.destinations.map((d) => [d.label, d.id, d.socket])).toEqual(before.destinations.map((d) => [d.label, d.id, d.socket]));
    const lookups = (s: Status) => s.destinations.reduce((n, d) => n + Number(d.stats.lookups), 0);
    expect(lookups(after)).toBeGreaterThanOrEqual(lookups(before) + attempts.length);
    expect(after.destinations.every((d) => d.stats.errors === '0' && (d.label === 'nobody' || d.stats.misses === '0'))).toBe(true);
    expect(ns.probe([{ proto: 'tcp', addr: '203.0.113.5', port: 80 }])).toEqual(['refused']);
    expect(fs.readdirSync(path.join(ns.bpffs, 'switchyard')).filter((f) => !/^\d+$/.test(f))).toEqual([]);
  });

  const expected = () => targets.map(([, want]) => want);
  const probeAll = () => ns.probe(targets.map(([t]) => t));
  const stateDirs = () => fs.readdirSync(path.join(ns.bpffs, 'switchyard')).sort();

  it('a sockets map whose layout changed is not migrated: refused with the reason, nothing changed, traffic served', () => {
    const before = ns.json<Status>(['status']);
    const ids = mapIds(ns);
    const r = loadWith(halved, ns);
    expect(r.error).toBe('EINCOMPATIBLE_STATE');
    expect(r.message).toMatch(/whose sockets map has type 15, key 4 B, value 8 B, 65536 entries, flags 0 where ABI \d+ expects type 15, key 4 B, value 8 B, 32768 entries/);
    expect(r.message).toMatch(/a sockmap's sockets cannot be read back from user space/);
    expect(r.message).toMatch(/Nothing was changed; the old dispatcher serves on/);
    const after = ns.json<Status>(['status']);
    expect(after.program.id).toBe(before.program.id);
    expect(mapIds(ns)).toEqual(ids);
    expect(stateDirs()).toEqual([String(fs.statSync(ns.path).ino)]);
    expect(probeAll()).toEqual(expected());
  });

  const deaths: Array<[string, Death]> = [
    ['before the link update', { at: 'linkUpdate', made: false }],
    ['after the link update, before the directory swap', { at: 'renameExchange', made: false }],
    ['after the directory swap, before the old state is removed', { at: 'renameExchange', made: true }],
  ];
  for (const [when, death] of deaths) {
    for (const [who, build] of [['N+1 again', () => next], ['N (a downgrade)', () => current]] as const) {
      it(`a migration to N+1 killed ${when} serves meanwhile; the next load by ${who} leaves one consistent state`, () => {
        const before = ns.json<Status>(['status']);
        const bindings = ns.json<unknown>(['bindings']);
        loadWith(next, ns, death);
        expect(probeAll()).toEqual(expected());
        expect(stateDirs().filter((d) => d.startsWith('tmp-'))).toHaveLength(1); // the dead writer's

        const r = loadWith(build(), ns);
        expect(r.error).toBeUndefined();
        const status = JSON.parse(cliOf(build(), ns, ['status', '--json']).stdout) as Status;
        expect(status.link.id).toBe(before.link.id);
        expect(status.link.progId).toBe(status.program.id);
        expect(status.destinations.map((d) => [d.label, d.id, d.socket])).toEqual(before.destinations.map((d) => [d.label, d.id, d.socket]));
        expect(JSON.parse(cliOf(build(), ns, ['bindings', '--json']).stdout)).toEqual(bindings);
        expect(stateDirs()).toEqual([String(fs.statSync(ns.path).ino)]);
        expect(probeAll()).toEqual(expected());
      });
    }
  }

  /**
   * A Dispatcher open in one process (the agent's) while another moves the
   * pins under it: its next write follows the pins (a growth) or refuses
   * (a migration to another ABI), instead of writing to maps the program no
   * longer reads.
   */
  function heldAcross(action: string): string {
    const dist = (f: string) => JSON.stringify(projectPath('dist/src', f));
    const text = `
      const { execFileSync } = await import('node:child_process');
      const { Dispatcher } = await import(${dist('dispatcher/dispatcher.js')});
      const { locate } = await import(${dist('dispatcher/state.js')});
      const { parsePrefix } = await import(${dist('net/address.js')});
      const d = Dispatcher.open(locate({ bpffs: ${JSON.stringify(ns.bpffs)}, netns: ${JSON.stringify(ns.path)} }));
      d.bind({ label: 'api', protocol: 'tcp', prefix: parsePrefix('198.51.100.0/25'), port: 0 });
      execFileSync('/bin/sh', ['-c', ${JSON.stringify(action)}], { stdio: 'inherit' });
      try {
        d.bind({ label: 'api', protocol: 'tcp', prefix: parsePrefix('198.51.100.128/25'), port: 0 });
        process.stdout.write('bound');
      } catch (err) {
        process.stdout.write(err.code + ': ' + err.message);
      }`;
    return execFileSync(process.execPath, ['--input-type=module', '-e', text], { encoding: 'utf8' });
  }

  it('a Dispatcher held open across a migration by another process refuses its next write, naming the ABI', () => {
    const out = heldAcross(`${path.join(next, 'bin/switchyard')} load --netns ${ns.path} --bpffs ${ns.bpffs} >/dev/null`);
    expect(out).toMatch(/^EINCOMPATIBLE_STATE: .* holds dispatcher state of ABI \d+; this version speaks ABI \d+/);
    const bindings = JSON.parse(cliOf(next, ns, ['bindings', '--json']).stdout) as { bindings: Array<{ prefix: string }> };
    expect(bindings.bindings.map((b) => b.prefix)).toContain('198.51.100.0/25');
    expect(bindings.bindings.map((b) => b.prefix)).not.toContain('198.51.100.128/25');
  });

  it('a Dispatcher held open across a growth by another process writes to the table that serves', () => {
    const file = path.join(root, `big-${process.pid}.json`);
    const bindings = [];
    for (let i = 0; i < 100_000; i++) {
      const h = Math.imul(i, 0x9e3779b1) & 0xffffff;
      bindings.push({ label: 'big', protocol: 'tcp', prefix: `10.${(h >> 16) & 255}.${(h >> 8) & 255}.${h & 255}/32`, port: 0 });
    }
    bindings.push({ label: 'api', protocol: 'tcp', prefix: '198.51.100.0/25', port: 0 });
    fs.writeFileSync(file, JSON.stringify({ bindings }));
    const out = heldAcross(`${projectPath('bin/switchyard')} load-bindings ${file} --netns ${ns.path} --bpffs ${ns.bpffs} >/dev/null`);
    expect(out).toBe('bound');
    expect(ns.json<{ label: string }>(['lookup', 'tcp', '198.51.100.200', '80']).label).toBe('api');
    expect(ns.json<{ table: { bindingCount: number } }>(['status']).table.bindingCount).toBe(100_002);
  });
});
