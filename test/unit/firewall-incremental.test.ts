import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseDesiredState } from '../../src/desired/state.js';
import { FirewallModel, type BindingChange } from '../../src/firewall/incremental.js';
import { Firewall } from '../../src/firewall/apply.js';
import { renderChain, entryText, observedRuleSet } from '../../src/firewall/netfilter.js';
import { evaluate } from '../../src/firewall/verdict.js';
import type { FirewallPlan } from '../../src/firewall/plan.js';
import { runSync } from '../../src/slice.js';
import type { Runner } from '../../src/firewall/runner.js';
import { formatAddress, parseAddress } from '../../src/net/address.js';
import { FakeNetfilter } from '../support/fake-netfilter.js';
import { rng } from '../support/random.js';

type B = { label: string; protocol: 'tcp' | 'udp'; prefix: string; port: number };
const LABELS = ['cdn', 'spectrum', 'dns'];
const SERVICES = { cdn: { tcp: [80, 443], udp: [443] }, spectrum: { tcp: ['1-1000'] }, dns: { udp: [53], tcp: [53] } };

const v4 = fc.record({ host: fc.integer({ min: 0, max: 255 }), length: fc.integer({ min: 24, max: 32 }) }).map(({ host, length }) => {
  const w = (0x0a000000 + host) & ((0xffffffff << (32 - length)) >>> 0);
  return `10.0.0.${w & 255}/${length}`;
});
const v6 = fc.record({ host: fc.integer({ min: 0, max: 255 }), length: fc.integer({ min: 120, max: 128 }) }).map(({ host, length }) => {
  const keep = host & ((0xff << (128 - length)) & 0xff);
  return `2001:db8::${keep.toString(16)}/${length}`;
});
const binding = fc.record({
  label: fc.constantFrom(...LABELS),
  protocol: fc.constantFrom<'tcp' | 'udp'>('tcp', 'udp'),
  prefix: fc.oneof(v4, v6),
  port: fc.constantFrom(0, 0, 80, 443),
});
const key = (b: B) => `${b.protocol} ${b.prefix} ${b.port}`;
const unique = (bs: B[]) => [...new Map(bs.map((b) => [key(b), b])).values()];
/** The changes from one list of bindings to another (a relabel: the old removed, the new added). */
const diff = (from: B[], to: B[]): BindingChange[] => {
  const target = new Map(to.map((b) => [key(b), b]));
  const source = new Map(from.map((b) => [key(b), b]));
  const out: BindingChange[] = [];
  for (const b of from) if (target.get(key(b))?.label !== b.label) out.push({ binding: b, removed: true });
  for (const b of to) if (source.get(key(b))?.label !== b.label) out.push({ binding: b, removed: false });
  return out;
};
const state = (bs: B[]) => parseDesiredState({ bindings: bs, services: SERVICES, https_only: { prefixes: ['10.0.0.0/28'] } }, 'test');

/** Plans compared as sets of entry texts and rendered chains. */
const shape = (plan: FirewallPlan) =>
  plan.families.map((f) => ({
    sets: Object.fromEntries(f.sets.map((s) => [s.name, s.entries.map(entryText).sort()])),
    chains: f.chains.map((c) => renderChain(c).map((r) => r.line)),
  }));

describe('incremental firewall model', () => {
  it('updates to exactly the plan the full planner makes, or declines', () => {
    let updated = 0;
    fc.assert(
      fc.property(fc.array(binding, { minLength: 5, maxLength: 40 }), fc.array(fc.tuple(binding, fc.boolean()), { minLength: 1, maxLength: 4 }), (start, edits) => {
        let bindings = unique(start);
        const changes: BindingChange[] = [];
        for (const [b, remove] of edits) {
          const existing = bindings.find((x) => key(x) === key(b));
          if (remove && existing) {
            bindings = bindings.filter((x) => x !== existing);
            changes.push({ binding: existing, removed: true });
          } else if (!remove) {
            bindings = [...bindings.filter((x) => key(x) !== key(b)), b];
            changes.push({ binding: b, removed: false });
          }
        }
        const model = FirewallModel.of(state(unique(start)));
        const next = state(bindings);
        const result = model.update(next, changes);
        if (!result) return;
        updated++;
        expect(shape(result.model.plan)).toEqual(shape(FirewallModel.of(next).plan));
      }),
      { numRuns: 500 },
    );
    expect(updated).toBeGreaterThan(100); // most small changes go the fast way
  });

  it('updates a region of 130,000 entries (a /8 over them) like the full planner', () => {
    // cdn's hosts inside spectrum's /8: each is an entry of cdn's set and a
    // nomatch of spectrum's; the /8 going away rewrites all of them at once
    // (more than a call's arguments can hold).
    const inner: B[] = Array.from({ length: 130_000 }, (_, i) => ({ label: 'cdn', protocol: 'tcp', prefix: `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}/32`, port: 0 }));
    const outer: B = { label: 'spectrum', protocol: 'tcp', prefix: '10.0.0.0/8', port: 0 };
    const other: B = { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }; // spectrum's label stays (the rules do not change)
    const model = FirewallModel.of(state([outer, other, ...inner]));
    const next = state([other, ...inner]);
    const result = model.update(next, [{ binding: outer, removed: true }]);
    expect(result).toBeDefined();
    expect(shape(result!.model.plan)).toEqual(shape(FirewallModel.of(next).plan));
    // And back: the /8 added over them.
    const back = result!.model.update(state([outer, other, ...inner]), [{ binding: outer, removed: false }]);
    expect(shape(back!.model.plan)).toEqual(shape(model.plan));
  });

  it('sync with a delta writes only the changed entries, and the kernel then answers like a full apply', async () => {
    const base: B[] = [
      { label: 'spectrum', protocol: 'tcp', prefix: '10.0.0.0/24', port: 0 },
      { label: 'cdn', protocol: 'tcp', prefix: '10.0.0.0/25', port: 0 },
      { label: 'cdn', protocol: 'tcp', prefix: '10.0.0.0/26', port: 443 },
      { label: 'dns', protocol: 'udp', prefix: '2001:db8::/120', port: 0 },
    ];
    const fake = new FakeNetfilter();
    const fw = new Firewall(fake);
    await fw.sync(state(base));
    const carve: B = { label: 'spectrum', protocol: 'tcp', prefix: '10.0.0.77/32', port: 0 };
    fake.writes = [];
    const r = await fw.sync(state([...base, carve]), [{ binding: carve, removed: false }]);
    expect(r.summary).toMatchObject({ entriesAdded: 2, chainsWritten: 0, setsCreated: 0 });
    expect(fake.writes.map((w) => w.join(' '))).toEqual(['ipset -exist restore']); // narrowing then widening in one call; no read-back, no rules
    const observed = await fw.observe();
    const plan = FirewallModel.of(state([...base, carve])).plan;
    for (const ip of ['10.0.0.77', '10.0.0.78', '10.0.0.200']) {
      for (const port of [80, 443, 999]) {
        const a = parseAddress(ip)!;
        expect(evaluate(observedRuleSet(observed.rules[4], observed.sets, 4), 'tcp', a, port).verdict).toBe(evaluate(plan.families[0], 'tcp', a, port).verdict);
      }
    }
    // A drifted kernel under a delta: the write fails, the full apply repairs.
    fake.sets.delete('sy4-tcp-l-cdn');
    fake.tables[4].chains.set('SWITCHYARD-TCP', []);
    const back = await fw.sync(state(base), [{ binding: carve, removed: true }]);
    expect(back.summary.setsCreated).toBe(1);
    expect(shape(FirewallModel.of(state(base)).plan)[0]!.sets['sy4-tcp-l-cdn']).toEqual([...fake.sets.get('sy4-tcp-l-cdn')!.entries].sort());
  });

  it('updates exactly like the full planner for random deltas of any size and shape, both ways of finding enclosing bindings', () => {
    // Deltas as large as the state, relabels (a key removed and added back),
    // a key changed several times in one delta, carve-outs and their parents.
    const delta = fc.array(fc.tuple(binding, fc.constantFrom('add', 'remove', 'relabel')), { minLength: 1, maxLength: 60 });
    // Every port and label bound elsewhere, allowed and not: so that most
    // deltas keep the rules' shape and go the incremental way.
    const base: B[] = [];
    for (const protocol of ['tcp', 'udp'] as const) {
      LABELS.forEach((label, i) => {
        base.push({ label, protocol, prefix: `10.1.${i}.0/24`, port: 0 }, { label, protocol, prefix: `2001:db8:1:${i}::/64`, port: 0 });
        for (const port of [80, 443]) base.push({ label, protocol, prefix: `10.1.${10 + i}.${port === 80 ? 0 : 128}/25`, port }, { label, protocol, prefix: `2001:db8:1:${10 + i}:${port}::/80`, port });
      });
    }
    const withBase = (bs: B[]) => state([...base, ...bs]);
    let updated = 0;
    fc.assert(
      fc.property(fc.array(binding, { minLength: 0, maxLength: 60 }), delta, fc.boolean(), (start, edits, sweepAlways) => {
        let bindings = unique(start);
        const changes: BindingChange[] = [];
        for (const [b, op] of edits) {
          const existing = bindings.find((x) => key(x) === key(b));
          if (op === 'remove' && existing) {
            bindings = bindings.filter((x) => x !== existing);
            changes.push({ binding: existing, removed: true });
          } else if (op === 'relabel' && existing) {
            const relabeled = { ...existing, label: b.label };
            bindings = [...bindings.filter((x) => x !== existing), relabeled];
            changes.push({ binding: existing, removed: true }, { binding: relabeled, removed: false });
          } else if (op === 'add') {
            bindings = [...bindings.filter((x) => key(x) !== key(b)), b];
            changes.push({ binding: b, removed: false });
          }
        }
        const model = FirewallModel.of(withBase(unique(start)));
        const next = withBase(bindings);
        const result = runSync(model.updating(next, changes, sweepAlways));
        if (!result) return;
        updated++;
        const want = FirewallModel.of(next).plan;
        expect(shape(result.model.plan)).toEqual(shape(want));
        // What is written (before → after, per set) takes each old set to the new one.
        for (const [i, family] of model.plan.families.entries()) {
          for (const set of family.sets) {
            const d = result.deltas.find((x) => x.set.name === set.name && x.set.family === family.family);
            const entries = new Set(set.entries.map(entryText));
            for (const e of d?.before ?? []) expect(entries.delete(entryText(e))).toBe(true);
            for (const e of d?.after ?? []) entries.add(entryText(e));
            expect([...entries].sort()).toEqual(shape(want)[i]!.sets[set.name] ?? []);
          }
        }
        // The model updates again from there (what the agent does push after push).
        const back = result.model.update(withBase(unique(start)), diff(bindings, unique(start)));
        if (back) expect(shape(back.model.plan)).toEqual(shape(model.plan));
      }),
      { numRuns: 400 },
    );
    expect(updated).toBeGreaterThan(300);
  });
});

// --- cost: a delta is never dearer than planning its result ------------------

/** `count` bindings like a real state's (both families, nested prefixes, exact and any ports), deterministic. */
function bigState(count: number, seed = 7): B[] {
  const r = rng(seed);
  const seen = new Set<string>();
  const out: B[] = [];
  while (out.length < count) {
    const nested = r() < 0.1;
    let prefix: string;
    if (r() < 0.7) {
      const length = nested ? 28 + Math.floor(r() * 5) : 16 + Math.floor(r() * 13);
      const word = (Math.floor(r() * 4294967296) & (0xffffffff << (32 - length))) >>> 0;
      prefix = `${formatAddress(4, [word, 0, 0, 0])}/${length}`;
    } else {
      const length = 40 + Math.floor(r() * 25);
      const hi = length >= 64 ? Math.floor(r() * 4294967296) >>> 0 : (Math.floor(r() * 4294967296) & (0xffffffff << (64 - length))) >>> 0;
      prefix = `${formatAddress(6, [0x20010db8, hi, 0, 0])}/${length}`;
    }
    const b: B = { label: LABELS[Math.floor(r() * LABELS.length)]!, protocol: r() < 0.8 ? 'tcp' : 'udp', prefix, port: r() < 0.5 ? 0 : [80, 443, 53][Math.floor(r() * 3)]! };
    if (seen.has(key(b))) continue;
    seen.add(key(b));
    out.push(b);
  }
  return out;
}

/**
 * Every label of bigState bound on any port, and every port of it bound to
 * every label (allowed or not), at documentation addresses: every set a
 * delta can touch exists already, so that a delta keeps the rules' shape.
 */
const COVER: B[] = (['tcp', 'udp'] as const).flatMap((protocol, p) =>
  LABELS.flatMap((label, i) =>
    [0, 80, 443, 53].flatMap((port, j) => [
      { label, protocol, prefix: `203.0.113.${p * 64 + i * 4 + j}/32`, port },
      { label, protocol, prefix: `2001:db8:ffff::${(p * 64 + i * 4 + j).toString(16)}/128`, port },
    ]),
  ),
);

/** A state of n bindings (COVER among them) and the delta that adds k more and removes up to k/10 of the others. */
function grown(n: number, k: number) {
  const all = [...COVER, ...bigState(n + k - COVER.length)];
  const first = all.slice(0, n);
  const added = all.slice(n);
  const removed = new Set(first.slice(COVER.length, COVER.length + Math.min(Math.floor(k / 10), n - COVER.length)));
  const changes: BindingChange[] = [...[...removed].map((b) => ({ binding: b, removed: true })), ...added.map((b) => ({ binding: b, removed: false }))];
  return { before: state(first), after: state([...first.filter((b) => !removed.has(b)), ...added]), changes };
}

/** The fastest of `samples` runs, in ms (the least disturbed by whatever else the machine runs). */
function fastest(samples: number, fn: () => unknown): number {
  let best = Infinity;
  for (let i = 0; i < samples; i++) {
    const started = performance.now();
    fn();
    best = Math.min(best, performance.now() - started);
  }
  return best;
}

describe('incremental firewall cost', () => {
  // The old update spliced whole sets per changed prefix: 100,000 + 1,000
  // took 3-4 times a full plan, 100,000 + 9,000 about 30 times, 20,000 +
  // 20,000 fifty times and more (7-16 s).
  it('plans a delta in no more than about a full plan of its result (100,000 + 1,000; 20,000 + 20,000; 100,000 + 9,000)', () => {
    for (const [n, k, bound] of [
      [100_000, 1_000, 1],
      [20_000, 20_000, 1],
      [100_000, 9_000, 1.5], // just under the share that goes the full way
    ] as const) {
      const { before, after, changes } = grown(n, k);
      const model = FirewallModel.of(before);
      const full = fastest(2, () => FirewallModel.of(after));
      let result: ReturnType<FirewallModel['update']>;
      const delta = fastest(2, () => (result = model.update(after, changes)));
      // Declined (a change that large goes the full way): its cost is deciding.
      if (result) expect(shape(result.model.plan)).toEqual(shape(FirewallModel.of(after).plan));
      expect(delta, `${n} bindings + ${k} changes: ${Math.round(delta)} ms, a full plan ${Math.round(full)} ms`).toBeLessThan(bound * full + 20);
    }
  }, 120_000);

  it("applies the issue's push (60 bindings, then 60,060 as a delta) about as fast as a fresh apply of the result", async () => {
    const { before, after, changes } = grown(60, 60_000);
    const fake = new FakeNetfilter();
    const running = new Firewall(fake);
    await running.sync(before);
    const started = performance.now();
    const r = await running.sync(after, changes);
    const delta = performance.now() - started;
    // The same push to an agent that has no model: a full apply, from the same kernel.
    const other = new FakeNetfilter();
    await new Firewall(other).sync(before);
    const begun = performance.now();
    await new Firewall(other).sync(after);
    const full = performance.now() - begun;
    expect(r.changed).toBe(true);
    expect(delta, `delta ${Math.round(delta)} ms, full ${Math.round(full)} ms`).toBeLessThan(2 * full + 200);
  }, 120_000);
});

// --- the event loop: no push holds it for long ---------------------------------

/** The fake tools, timed: their work is done before run() returns, and is not ours to count. */
class TimedTools implements Runner {
  toolMs = 0;
  readonly fake = new FakeNetfilter();
  run(argv: readonly string[], options?: Parameters<Runner['run']>[1]) {
    const started = performance.now();
    const result = this.fake.run(argv, options);
    this.toolMs += performance.now() - started;
    return result;
  }
}

/**
 * The longest the event loop was held during `fn`, in ms, not counting the
 * fake tools' own time (real tools are other processes) nor time the
 * process was not running (a busy machine): per gap between two ticks, the
 * least of the wall time and the CPU time the process used.
 */
async function longestHold(tools: TimedTools, fn: () => Promise<unknown>): Promise<number> {
  let longest = 0;
  let last = performance.now();
  let lastCpu = process.cpuUsage();
  let lastTool = tools.toolMs;
  const tick = () => {
    const now = performance.now();
    const cpu = process.cpuUsage(lastCpu);
    longest = Math.max(longest, Math.min(now - last, (cpu.user + cpu.system) / 1000) - (tools.toolMs - lastTool));
    [last, lastCpu, lastTool] = [now, process.cpuUsage(), tools.toolMs];
  };
  const timer = setInterval(tick, 2);
  try {
    await fn();
    tick();
  } finally {
    clearInterval(timer);
  }
  return longest;
}

describe('firewall sync and the event loop', () => {
  // 100 ms is the budget for a whole push (issue 15). Planning 100,000
  // bindings in one go held the loop for 300-600 ms; the incremental path
  // at 20,000 changes for seconds.
  // A hold is the code's, and every attempt shows it; another process on
  // the CPU (CI runs other test files beside this one) or a collection can
  // add to one attempt: each case is tried up to three times, each on a
  // fresh firewall, and the best attempt counts.
  it('holds the event loop under 100 ms for a full apply of 100,000 bindings and for deltas of every size', async () => {
    const best = async (attempt: () => Promise<number>) => {
      const holds: number[] = [];
      for (let k = 0; k < 3 && !holds.some((h) => h < 100); k++) holds.push(await attempt());
      return Math.min(...holds);
    };
    /** A firewall with `before` applied, and the hold of `step` on it. */
    const after = async (before: (fw: Firewall) => Promise<unknown> | undefined, step: (fw: Firewall, tools: TimedTools) => Promise<unknown>) => {
      const tools = new TimedTools();
      const fw = new Firewall(tools);
      await before(fw);
      return longestHold(tools, () => step(fw, tools));
    };
    const held: Record<string, number> = {};
    held['full apply of 100,000'] = await best(() => {
      const big = grown(100_000, 20_000); // made before the clock starts
      return after(() => undefined, (fw) => fw.sync(big.before));
    });
    held['delta of 20,000 on 100,000 (the full way)'] = await best(() => {
      const big = grown(100_000, 20_000);
      return after((fw) => fw.sync(big.before), (fw) => fw.sync(big.after, big.changes));
    });
    held['restart (a full apply with nothing to change)'] = await best(() => {
      const big = grown(100_000, 20_000);
      return after((fw) => fw.sync(big.after), (_, tools) => new Firewall(tools).sync(big.after));
    });
    held['delta of 9,000 on 100,000 (the incremental way)'] = await best(() => {
      const small = grown(100_000, 9_000);
      return after((fw) => fw.sync(small.before), (fw) => fw.sync(small.after, small.changes));
    });
    held['60 bindings, then 60,060 as a delta'] = await best(() => {
      const issue = grown(60, 60_000);
      return after((fw) => fw.sync(issue.before), (fw) => fw.sync(issue.after, issue.changes));
    });
    for (const [what, ms] of Object.entries(held)) expect(ms, `${what}: held ${Math.round(ms)} ms (best of up to three)`).toBeLessThan(100);
  }, 300_000);
});
