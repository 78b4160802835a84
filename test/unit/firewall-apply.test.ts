import { describe, expect, it } from 'vitest';
import { parseDesiredState } from '../../src/desired/state.js';
import { planFirewall, type FirewallPlan } from '../../src/firewall/plan.js';
import { Firewall, createChunks, planChanges } from '../../src/firewall/apply.js';
import { observedRuleSet } from '../../src/firewall/netfilter.js';
import { Evaluator } from '../../src/firewall/verdict.js';
import { FirewallReconciler } from '../../src/firewall/reconciler.js';
import { ProcessRunner } from '../../src/firewall/runner.js';
import { parseAddress } from '../../src/net/address.js';
import type { Protocol } from '../../src/bindings/binding.js';
import { FakeNetfilter } from '../support/fake-netfilter.js';
import { stepWallClock } from '../support/clock.js';

type Doc = { bindings: Array<{ label: string; protocol: string; prefix: string; port: number }>; services: Record<string, unknown>; https_only?: unknown };

const BASE: Doc = {
  bindings: [
    { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 },
    { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 },
    { label: 'tls', protocol: 'tcp', prefix: '198.51.100.0/24', port: 443 },
    { label: 'cdn', protocol: 'udp', prefix: '2001:db8::/32', port: 0 },
  ],
  services: { cdn: { tcp: [80, 443], udp: [443] }, spectrum: { tcp: [22, 443] }, tls: { tcp: [443] } },
  https_only: { prefixes: ['192.0.2.128/26'] },
};
const plan = (doc: Doc) => planFirewall(parseDesiredState(doc, 'test'));
const MOVED: Doc = { ...BASE, bindings: [...BASE.bindings, { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.200/32', port: 0 }] };

/** Queries over the test prefixes: a few hosts × the interesting ports. */
const QUERIES: Array<[Protocol, string, number]> = [];
for (const ip of ['192.0.2.1', '192.0.2.130', '192.0.2.200', '192.0.2.201', '198.51.100.7', '203.0.113.1', '2001:db8::1']) {
  for (const port of [22, 80, 443, 8080]) for (const p of ['tcp', 'udp'] as const) QUERIES.push([p, ip, port]);
}

async function kernelVerdicts(fake: FakeNetfilter): Promise<string[]> {
  const observed = await new Firewall(fake).observe();
  const evaluators = { 4: new Evaluator(observedRuleSet(observed.rules[4], observed.sets, 4)), 6: new Evaluator(observedRuleSet(observed.rules[6], observed.sets, 6)) };
  return QUERIES.map(([protocol, ip, port]) => {
    const address = parseAddress(ip)!;
    if (observed.rules[address.family].jumps.length === 0) return 'pass';
    return evaluators[address.family].evaluate(protocol, address, port).verdict;
  });
}
const planVerdicts = (p: FirewallPlan) => {
  const evaluators = p.families.map((f) => new Evaluator(f));
  return QUERIES.map(([protocol, ip, port]) => {
    const address = parseAddress(ip)!;
    return evaluators[address.family === 4 ? 0 : 1]!.evaluate(protocol, address, port).verdict;
  });
};

describe('firewall applier (fake tools)', () => {
  it('applies a plan whose read-back verdicts are the plan’s, then writes nothing', async () => {
    const fake = new FakeNetfilter();
    const fw = new Firewall(fake);
    const first = await fw.apply(plan(BASE));
    expect(first.changed).toBe(true);
    expect(await kernelVerdicts(fake)).toEqual(planVerdicts(plan(BASE)));
    // Every rule we write parses back in our grammar, the conntrack one included.
    const observed = await fw.observe();
    for (const f of [4, 6] as const) for (const c of observed.rules[f].chains.values()) expect(c.parsed, `IPv${f} ${c.name}`).toBe(true);
    expect(observed.rules[4].chains.get('SWITCHYARD')!.rules.some((r) => r.established && r.target === 'ACCEPT')).toBe(true);
    fake.writes = [];
    const again = await fw.apply(plan(BASE));
    expect(again.changed).toBe(false);
    expect(fake.writes).toEqual([]);
  });

  it('moves a carved-out /32 in place, narrowing before widening', async () => {
    const fake = new FakeNetfilter();
    const fw = new Firewall(fake);
    await fw.apply(plan(BASE));
    const changes = planChanges(plan(MOVED), await fw.observe());
    const v4 = changes.families[4];
    expect(v4.sets.map((l) => l.text)).toEqual(['add sy4-tcp-l-spectrum 192.0.2.200 nomatch']); // spectrum loses it first
    expect(v4.after.map((l) => l.text)).toEqual(['add sy4-tcp-l-cdn 192.0.2.200']); // then cdn gets it
    expect(v4.rules).toEqual([]);
    expect(changes.families[6].sets).toEqual([]);
    await fw.execute(changes);
    expect(await kernelVerdicts(fake)).toEqual(planVerdicts(plan(MOVED)));
  });

  it('narrows before it widens, wherever the apply fails', async () => {
    // A /32 moves from spectrum to cdn, a /25 leaves cdn, a policy changes.
    const big: Doc = {
      ...MOVED,
      bindings: [...MOVED.bindings.filter((b) => b.prefix !== '192.0.2.0/25'), { label: 'tls', protocol: 'tcp', prefix: '192.0.2.64/26', port: 443 }],
      services: { ...MOVED.services, spectrum: { tcp: [22, 80] } },
    };
    for (const [from, to] of [
      [BASE, MOVED],
      [MOVED, big],
      [big, BASE],
    ] as const) {
      const before = planVerdicts(plan(from));
      const after = planVerdicts(plan(to));
      const probe = new FakeNetfilter();
      await new Firewall(probe).apply(plan(from));
      const changes = planChanges(plan(to), await new Firewall(probe).observe());
      const v4 = changes.families[4];
      expect(createChunks(changes)).toEqual([]); // the cuts below count ipset calls from step 1
      // [tool, failing line, what the verdicts may be afterwards]: failing in
      // step 1 or 2 undoes the narrowing (exactly the old verdicts, unless a
      // swap went through); in step 3 only what the new state accepts.
      // Without a rule change, one call does both and a failure undoes it all.
      const merged = v4.rules.length === 0 && v4.swapFrom === v4.sets.length;
      const cuts: Array<[RegExp, number, 'old' | 'new' | 'either']> = merged
        ? [...v4.sets, ...v4.after].map((_, i) => [/^ipset -exist restore$/, i + 1, 'old'] as [RegExp, number, 'old'])
        : [
        ...v4.sets.map((_, i) => [/^ipset -exist restore$/, i + 1, i <= v4.swapFrom ? 'old' : 'either'] as [RegExp, number, 'old']),
        ...v4.rules.map((_, i) => [/^iptables-nft-restore/, i + 1, v4.swapFrom < v4.sets.length ? 'either' : 'old'] as [RegExp, number, 'old']),
        ...v4.after.map((_, i) => [/^ipset -exist restore$/, i + 1, 'new'] as [RegExp, number, 'new']),
          ];
      expect(cuts.length).toBeGreaterThan(1);
      for (const [tool, line, which] of cuts) {
        const fake = new FakeNetfilter();
        const fw = new Firewall(fake);
        await fw.apply(plan(from));
        if (which === 'new' && v4.sets.length > 0) {
          // The failure is meant for the second ipset call: let the first pass.
          const first = fake.run.bind(fake);
          let calls = 0;
          fake.run = (argv, options) => {
            if (argv.join(' ') === 'ipset -exist restore' && calls++ === 1) fake.fail = { tool, line };
            return first(argv, options);
          };
        } else {
          fake.fail = { tool, line };
        }
        await expect(fw.apply(plan(to))).rejects.toThrow(/failed on /);
        const now = await kernelVerdicts(fake);
        const v4Queries = QUERIES.map(([, ip]) => !ip.includes(':'));
        if (which === 'old') expect(now.filter((_, i) => v4Queries[i]), `${tool.source} failing at line ${line}`).toEqual(before.filter((_, i) => v4Queries[i]));
        now.forEach((v, i) => {
          const ok = which === 'new' ? after[i] === 'accept' : before[i] === 'accept' || after[i] === 'accept';
          if (v === 'accept' && v4Queries[i]) expect(ok, `${QUERIES[i]!.join(' ')} accepted with ${tool.source} failing at line ${line} (${which})`).toBe(true);
        });
        await fw.apply(plan(to));
        expect(await kernelVerdicts(fake)).toEqual(after);
      }
    }
  });

  it('names the object of a failed line', async () => {
    const fake = new FakeNetfilter();
    const fw = new Firewall(fake);
    fake.fail = { tool: /^ipset -exist restore$/, line: 2 };
    await expect(fw.apply(plan(BASE))).rejects.toThrow(/ipset -exist restore failed on set sy4-managed entry 192\.0\.2\.0\/24 \("add sy4-managed 192\.0\.2\.0\/24"\): ipset v7\.17: Error in line 2: injected failure/);
    fake.fail = { tool: /^ip6tables-nft-restore/, line: 3 };
    await expect(fw.apply(plan(BASE))).rejects.toThrow(/ip6tables-nft-restore --noflush --wait 5 failed on chain SWITCHYARD-TCP/);
    expect((await fw.observe()).rules[6].jumps).toEqual([]);
    // IPv4 went in; the next apply finishes IPv6.
    expect((await fw.observe()).rules[4].jumps).toEqual([1]);
    await fw.apply(plan(BASE));
    expect(await kernelVerdicts(fake)).toEqual(planVerdicts(plan(BASE)));
  });

  it('repairs drift: chain flushed, jump deleted or duplicated, set emptied or destroyed', async () => {
    const fake = new FakeNetfilter();
    const fw = new Firewall(fake);
    const p = plan(BASE);
    await fw.apply(p);
    const want = await kernelVerdicts(fake);
    fake.tables[4].chains.set('SWITCHYARD-TCP', []);
    fake.tables[4].chains.get('INPUT')!.unshift('-p icmp -j ACCEPT', '-j SWITCHYARD');
    fake.tables[6].chains.set('INPUT', ['-p icmp -j ACCEPT']);
    fake.sets.get('sy4-tcp-l-cdn')!.entries.clear();
    fake.sets.delete('sy6-udp-l-cdn');
    fake.tables[6].chains.set('SWITCHYARD-UDP', []);
    expect(await kernelVerdicts(fake)).not.toEqual(want);
    const r = await fw.apply(p);
    expect(r.summary).toMatchObject({ chainsWritten: 2, jumpsFixed: 2, setsCreated: 1 });
    expect(await kernelVerdicts(fake)).toEqual(want);
    expect(fake.tables[4].chains.get('INPUT')).toEqual(['-m comment --comment sy:jump -j SWITCHYARD', '-p icmp -j ACCEPT']);
    expect(fake.tables[6].chains.get('INPUT')![1]).toBe('-p icmp -j ACCEPT');
  });

  it('converges a kernel with the old layout (the managed drop at the end of each protocol chain) in one rules write per family, no set touched', async () => {
    // The layout before issue 15, made from today's plan.
    const old = (p: FirewallPlan): FirewallPlan => ({
      families: p.families.map((f) => {
        const managed = `sy${f.family}-managed`;
        const isDrop = (r: { target: string; set?: { name: string } }) => r.target === 'DROP' && r.set?.name === managed;
        return {
          ...f,
          chains: f.chains.map((c) =>
            c.name === 'SWITCHYARD' ? { ...c, rules: c.rules.filter((r) => !isDrop(r)) } : { ...c, rules: [...c.rules, { set: { name: managed, negate: false }, target: 'DROP', why: 'old' }] },
          ),
        };
      }) as FirewallPlan['families'],
    });
    const fake = new FakeNetfilter();
    const fw = new Firewall(fake);
    await fw.apply(old(plan(BASE)));
    expect(await kernelVerdicts(fake)).toEqual(planVerdicts(plan(BASE))); // the same verdicts, intact
    const changes = planChanges(plan(BASE), await fw.observe());
    for (const f of [4, 6] as const) {
      const c = changes.families[f];
      expect([...c.creates, ...c.sets, ...c.after]).toEqual([]);
      expect(c.rules.filter((l) => l.text.startsWith(':')).map((l) => l.text)).toEqual([':SWITCHYARD - [0:0]', ':SWITCHYARD-TCP - [0:0]', ':SWITCHYARD-UDP - [0:0]']);
    }
    fake.writes = [];
    await fw.execute(changes);
    // One iptables-restore per family: one transaction each, so no packet meets half of a layout.
    expect(fake.writes.map((w) => w[0])).toEqual(['iptables-nft-restore', 'ip6tables-nft-restore']);
    expect(await kernelVerdicts(fake)).toEqual(planVerdicts(plan(BASE)));
    expect((await fw.apply(plan(BASE))).changed).toBe(false);
  });

  it('swaps a set in whole for a big change, and clears a temporary left by a crash', async () => {
    const many = (n: number, label: string, from = 0): Doc => ({
      bindings: Array.from({ length: n }, (_, k) => k + from).map((i) => ({ label, protocol: 'udp', prefix: `10.${(i >> 8) & 255}.${i & 255}.0/24`, port: 0 })),
      services: { a: { udp: [53] }, b: { udp: [53] } },
    });
    const fake = new FakeNetfilter();
    const fw = new Firewall(fake);
    await fw.apply(plan(many(3000, 'a')));
    fake.sets.set('sx4-udp-l-a', { type: 'hash:net', family: 'inet', maxelem: 65536, entries: new Set(['1.0.0.0/8']) });
    const changes = planChanges(plan(many(2000, 'a', 5000)), await fw.observe());
    expect(changes.families[4].creates[0]!.text).toBe('destroy sx4-udp-l-a');
    expect(changes.families[4].sets.some((l) => l.text === 'swap sx4-udp-l-a sy4-udp-l-a')).toBe(true);
    await fw.execute(changes);
    expect(fake.sets.get('sy4-udp-l-a')!.entries.size).toBe(2000);
    expect([...fake.sets.keys()].some((n) => n.startsWith('sx'))).toBe(false);
    // A label leaving: its set goes after the rule that used it.
    await fw.apply(plan(many(10, 'b')));
    expect(fake.sets.has('sy4-udp-l-a')).toBe(false);
  });

  it('writes a set of 150,000 entries, and names the entry of a failing fill line', async () => {
    // One /24 per binding: the managed set and the label's set have 150,000 entries each.
    const doc: Doc = {
      bindings: Array.from({ length: 150_000 }, (_, i) => ({ label: 'a', protocol: 'udp', prefix: `${10 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}.0/24`, port: 0 })),
      services: { a: { udp: [53] } },
    };
    const big = plan(doc);
    const fake = new FakeNetfilter();
    const fw = new Firewall(fake);
    const changes = planChanges(big, await fw.observe());
    const chunks = createChunks(changes);
    expect(chunks.flat().reduce((n, l) => n + (l.lines ?? 1), 0)).toBe(3 + 300_000); // three creates (sy6-managed is empty), two fills
    // Line 100,002 of the chunk that fills sy4-managed (its create, then 150,000 adds).
    const managed = chunks.findIndex((c) => c[0]!.text.startsWith('create sy4-managed'));
    fake.run = ((run) => {
      let calls = 0;
      return (argv, options) => {
        if (argv.join(' ') === 'ipset -exist restore' && calls++ === managed) fake.fail = { tool: /^ipset/, line: 100_002 };
        return run(argv, options);
      };
    })(fake.run.bind(fake));
    await expect(fw.apply(big)).rejects.toThrow(/on set sy4-managed entry 11\.134\.160\.0\/24 \("add sy4-managed 11\.134\.160\.0\/24"\)/);
    fake.run = FakeNetfilter.prototype.run.bind(fake);
    await fw.apply(big);
    expect(fake.sets.get('sy4-managed')!.entries.size).toBe(150_000);
    expect(fake.sets.get('sy4-udp-l-a')!.entries.size).toBe(150_000);
  });

  it('refuses to touch a set in our name space with another type, changing nothing', async () => {
    const fake = new FakeNetfilter();
    fake.sets.set('sy4-managed', { type: 'hash:ip', family: 'inet', maxelem: 65536, entries: new Set() });
    await expect(new Firewall(fake).apply(plan(BASE))).rejects.toThrow(/set sy4-managed exists as hash:ip family inet, not hash:net/);
    expect(fake.writes).toEqual([]);
  });

  it('counts the other backend’s rules, reading legacy tables only when the kernel has them', async () => {
    const fake = new FakeNetfilter();
    expect(await new Firewall(fake).otherBackendRules()).toEqual({ 4: 0, 6: 0 });
    fake.legacyRules = 2;
    expect(await new Firewall(fake).otherBackendRules()).toEqual({ 4: 2, 6: 2 });
  });

  it('cleanup removes exactly what it created', async () => {
    const fake = new FakeNetfilter();
    fake.tables[4].chains.get('INPUT')!.push('-p icmp -j ACCEPT');
    fake.sets.set('theirs', { type: 'hash:ip', family: 'inet', maxelem: 65536, entries: new Set(['1.2.3.4/32']) });
    const before = [fake.save(4), fake.save(6), fake.ipsetSave()];
    const fw = new Firewall(fake);
    await fw.apply(plan(BASE));
    await fw.cleanup();
    expect([fake.save(4), fake.save(6), fake.ipsetSave()]).toEqual(before);
  });
});

describe('firewall reconciler', () => {
  it('coalesces changes within the minimum interval and repairs drift on resync', async () => {
    const fake = new FakeNetfilter();
    const rec = new FirewallReconciler(new Firewall(fake), { minIntervalMs: 50, resyncMs: 100 });
    const state = (doc: Doc) => parseDesiredState(doc, 'test');
    rec.setDesired(state(BASE));
    await rec.idle();
    const applies = rec.status().applies;
    rec.setDesired(state(MOVED));
    rec.setDesired(state(BASE));
    rec.setDesired(state(MOVED));
    await rec.idle();
    expect(await kernelVerdicts(fake)).toEqual(planVerdicts(plan(MOVED)));
    expect(rec.status().applies - applies).toBe(1); // the three pushes became one apply
    rec.start();
    fake.tables[4].chains.set('SWITCHYARD-TCP', []);
    await new Promise((r) => setTimeout(r, 300));
    await rec.idle();
    expect(await kernelVerdicts(fake)).toEqual(planVerdicts(plan(MOVED)));
    expect(rec.status().changes).toBeGreaterThanOrEqual(3);
    await rec.stop();
    expect(fake.tables[4].chains.get('INPUT')!.length).toBe(1); // stopping leaves the rules
  });
});

describe('the reconciler and the wall clock', () => {
  it('keeps applying within its interval when the wall clock is stepped back an hour or forward', async () => {
    const fake = new FakeNetfilter();
    const rec = new FirewallReconciler(new Firewall(fake), { minIntervalMs: 50 });
    const state = (doc: Doc) => parseDesiredState(doc, 'test');
    rec.setDesired(state(BASE));
    await rec.idle();
    for (const step of [-3_600_000, 3_600_000]) {
      const undo = stepWallClock(step);
      try {
        rec.setDesired(state(MOVED));
        await new Promise((r) => setTimeout(r, 300)); // several intervals, not an hour
        expect(await kernelVerdicts(fake), `clock stepped ${step} ms`).toEqual(planVerdicts(plan(MOVED)));
        rec.setDesired(state(BASE));
        await new Promise((r) => setTimeout(r, 300));
        expect(await kernelVerdicts(fake), `clock stepped ${step} ms`).toEqual(planVerdicts(plan(BASE)));
      } finally {
        undo();
      }
    }
    await rec.stop();
  });
});

describe('process runner', () => {
  it('reports a tool that exits before reading its input, without an EPIPE crash', async () => {
    const r = await new ProcessRunner().run(['sh', '-c', 'exit 3'], { input: 'x'.repeat(4 << 20) });
    expect(r.code).toBe(3);
  });
  it('kills a tool that hangs', async () => {
    await expect(new ProcessRunner().run(['sleep', '5'], { timeoutMs: 100 })).rejects.toThrow(/no answer within 100 ms/);
  });
  it('says when a tool is missing', async () => {
    await expect(new ProcessRunner().run(['no-such-tool-here'])).rejects.toThrow(/cannot run it \(ENOENT\)/);
  });
});
