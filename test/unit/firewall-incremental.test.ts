import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseDesiredState } from '../../src/desired/state.js';
import { FirewallModel, type BindingChange } from '../../src/firewall/incremental.js';
import { Firewall } from '../../src/firewall/apply.js';
import { renderChain, entryText, observedRuleSet } from '../../src/firewall/netfilter.js';
import { evaluate } from '../../src/firewall/verdict.js';
import type { FirewallPlan } from '../../src/firewall/plan.js';
import { parseAddress } from '../../src/net/address.js';
import { FakeNetfilter } from '../support/fake-netfilter.js';

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
});
