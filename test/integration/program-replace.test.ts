/**
 * `load` of a loaded dispatcher (what the agent does at every start) moves
 * the program to the installed object's when they differ, through the pinned
 * link, keeping every map; when they are the same it changes nothing. And a
 * writer that died at any step of that replacement leaves a state that
 * serves, which the next load completes.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { projectPath } from '../../src/paths.js';
import { TestNamespace, WEB_AND_API_TARGETS, isRoot, probeLoop, startWebAndApi } from '../support/netns.js';

interface Status {
  program: { id: number; tag: string };
  link: { id: number; progId: number };
  table: { serial: string; bindingCount: number };
  destinations: Array<{ label: string; id: number; socket: string | null; stats: { lookups: string; misses: string; errors: string } }>;
}

/** The same source as bpf/dispatcher.o for another CPU version of the BPF ISA: other instructions, the same behaviour. */
function buildVariant(dir: string): string {
  const out = path.join(dir, 'dispatcher-v3.o');
  const arch = execFileSync('gcc', ['-dumpmachine'], { encoding: 'utf8' }).trim();
  execFileSync('clang', ['-O2', '-g', '-Wall', '-Werror', '-target', 'bpf', `-I/usr/include/${arch}`, '-mcpu=v3', '-c', projectPath('bpf/dispatcher.c'), '-o', out]);
  return out;
}

/** Runs `body` (a module's text) with the built dispatcher modules in scope as `native`, `locate`, `PinnedState`, `loadObject`; its stdout. */
function script(body: string): string {
  const dist = (f: string) => JSON.stringify(projectPath('dist/src', f));
  const text = `
    const { native } = await import(${dist('kernel/native.js')});
    const { loadObject } = await import(${dist('kernel/bpf.js')});
    const { locate, PinnedState } = await import(${dist('dispatcher/state.js')});
    const { MAP_NAMES } = await import(${dist('dispatcher/maps.js')});
    ${body}`;
  return execFileSync(process.execPath, ['--input-type=module', '-e', text], { encoding: 'utf8' });
}

/** The dispatcher layer's load (what the agent calls; the CLI's output does not show a replacement). */
function loadDirect(ns: TestNamespace, object?: string): { created: boolean; replaced?: { previousProgramId: number; programId: number; loadMs: number; switchMs: number } } {
  return JSON.parse(
    script(`
      const { load } = await import(${JSON.stringify(projectPath('dist/src/dispatcher/dispatcher.js'))});
      process.stdout.write(JSON.stringify(load(locate({ bpffs: ${JSON.stringify(ns.bpffs)}, netns: ${JSON.stringify(ns.path)} }), ${JSON.stringify(object)})));`),
  );
}


/**
 * What a writer that died during a replacement leaves: `object` loaded
 * against the pinned maps, then (steps) pinned as program_new, the link
 * updated to it. The process exits holding nothing else.
 */
function diedReplacing(ns: TestNamespace, object: string, steps: { pin: boolean; update: boolean }): void {
  script(`
    const state = PinnedState.open(locate({ bpffs: ${JSON.stringify(ns.bpffs)}, netns: ${JSON.stringify(ns.path)} }));
    const reuse = {};
    for (const name of MAP_NAMES) reuse[name] = state.maps[name].fd;
    const { programs } = loadObject(${JSON.stringify(object)}, reuse);
    const prog = programs.switchyard_dispatch;
    if (${steps.pin}) native().objPin(prog, state.location.dir + '/program_new');
    if (${steps.update}) native().linkUpdate(state.link.fd, prog);`);
}

/** The pins of the namespace's state directory. */
const pins = (ns: TestNamespace) => fs.readdirSync(path.join(ns.bpffs, 'switchyard', String(fs.statSync(ns.path).ino))).sort();


describe.skipIf(!isRoot)('program replacement at load', () => {
  let ns: TestNamespace;
  let dir: string;
  let variant: string;
  let installedTag: string;
  let variantTag: string | undefined;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-progreplace-'));
    variant = buildVariant(dir);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  beforeEach(async () => {
    ns = TestNamespace.create();
    ns.ok(['load']);
    installedTag = ns.json<Status>(['status']).program.tag;
    variantTag ??= (() => {
      ns.ok(['upgrade', '--object', variant]);
      const tag = ns.json<Status>(['status']).program.tag;
      ns.ok(['upgrade']);
      return tag;
    })();
    expect(variantTag).not.toBe(installedTag);
    await startWebAndApi(ns);
  });
  afterEach(() => ns.destroy());

  const targets = WEB_AND_API_TARGETS;

  it('a different object replaces the program through the link under traffic; the same one changes nothing; bindings, sockets and counters stay', async () => {
    const before = ns.json<Status>(['status']);
    const loop = probeLoop(ns, targets, 400, 6);
    // Installed (A) → B → B → A → A → B …: a change at every other load.
    const cycle = [variant, variant, undefined, undefined];
    const loads: Array<{ object: string | undefined; replaced: boolean; programId: number; ms?: { load: number; switch: number } }> = [];
    while (loop.running() || loads.length < cycle.length * 2) {
      const object = cycle[loads.length % cycle.length];
      const r = loadDirect(ns, object);
      expect(r.created).toBe(false);
      loads.push({
        object,
        replaced: r.replaced !== undefined,
        programId: ns.json<Status>(['status']).program.id,
        ...(r.replaced ? { ms: { load: r.replaced.loadMs, switch: r.replaced.switchMs } } : {}),
      });
      await new Promise((resolve) => setTimeout(resolve, 20)); // the loop's exit is an event
    }
    const attempts = await loop.done;
    const wrong = attempts.filter((a) => a.got !== a.want);
    expect(attempts.length).toBeGreaterThan(1000);
    expect(wrong).toEqual([]);

    loads.forEach((l, i) => {
      const previous = i === 0 ? undefined : loads[i - 1]!.object;
      expect(l.replaced, `load ${i}`).toBe(l.object !== previous);
      expect(l.programId !== (i === 0 ? before.program.id : loads[i - 1]!.programId), `load ${i}`).toBe(l.replaced);
    });
    const replaced = loads.filter((l) => l.ms);
    console.log(`program replacement: ${attempts.length} probe attempts, 0 wrong; ${replaced.length} replacements, load (verifier) ${Math.min(...replaced.map((l) => l.ms!.load)).toFixed(1)}-${Math.max(...replaced.map((l) => l.ms!.load)).toFixed(1)} ms, switch ${Math.min(...replaced.map((l) => l.ms!.switch)).toFixed(2)}-${Math.max(...replaced.map((l) => l.ms!.switch)).toFixed(2)} ms`);

    const after = ns.json<Status>(['status']);
    expect(after.link.id).toBe(before.link.id);
    expect(after.link.progId).toBe(after.program.id);
    expect(after.program.tag).toBe(loads.at(-1)!.object === undefined ? installedTag : variantTag);
    expect(after.table.serial).toBe(before.table.serial);
    expect(after.destinations.map((d) => [d.label, d.id, d.socket])).toEqual(before.destinations.map((d) => [d.label, d.id, d.socket]));
    const lookups = (s: Status) => s.destinations.reduce((n, d) => n + Number(d.stats.lookups), 0);
    expect(lookups(after)).toBeGreaterThanOrEqual(lookups(before) + attempts.length);
    expect(after.destinations.every((d) => d.stats.misses === '0' && d.stats.errors === '0')).toBe(true);
    expect(pins(ns).filter((f) => /_(new|next)$/.test(f))).toEqual([]);
  });

  // A writer killed at each step of a replacement (src/dispatcher/dispatcher.ts, replaceProgram).
  const steps: Array<[string, { pin: boolean; update: boolean }]> = [
    ['after loading the new program, before pinning it', { pin: false, update: false }],
    ['after pinning it as program_new, before the link update', { pin: true, update: false }],
    ['after the link update, before the rename over program', { pin: true, update: true }],
    ['after a link update whose program was never pinned (an upgrade of the version before)', { pin: false, update: true }],
  ];
  for (const [when, step] of steps) {
    it(`a writer dead ${when}: the dispatcher serves meanwhile, and the next load finishes the job`, () => {
      const before = ns.json<Status>(['status']);
      diedReplacing(ns, variant, step);
      const targeted = targets.map(([t]) => t);
      expect(ns.probe(targeted)).toEqual(targets.map(([, want]) => want));
      const between = ns.json<Status>(['status']);
      expect(between.program.id).toBe(before.program.id); // `program` is not moved until the rename
      expect(pins(ns).includes('program_new')).toBe(step.pin);

      const r = loadDirect(ns, variant);
      const after = ns.json<Status>(['status']);
      // Completed where the link already ran the pinned new program; redone otherwise.
      expect(r.replaced !== undefined).toBe(!(step.pin && step.update));
      expect(after.link.progId).toBe(after.program.id);
      expect(after.program.tag).toBe(variantTag);
      expect(pins(ns).filter((f) => /_(new|next)$/.test(f))).toEqual([]);
      expect(ns.probe(targeted)).toEqual(targets.map(([, want]) => want));
      expect(loadDirect(ns, variant).replaced).toBeUndefined();
    });
  }
});
