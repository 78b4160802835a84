/**
 * A small change judged over the regions it touches (policy.ts with a
 * Prior, verify/region.ts) gives the judgement made over the whole states:
 * verdict, findings, the semantic diff. Random states in a small universe
 * (nested IPv4 and IPv6 prefixes, any-port and exact-port bindings, a
 * label without policy, an exclusive range, an HTTPS-only range) and
 * random changes on top.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseDesiredState } from '../../src/desired/state.js';
import { IndexedState } from '../../src/protocol/state.js';
import { DEFAULT_POLICY, judge, type Judgement } from '../../src/controlplane/policy.js';
import type { Protocol } from '../../src/bindings/binding.js';

type B = { label: string; protocol: Protocol; prefix: string; port: number };
const key = (b: B) => `${b.protocol} ${b.prefix} ${b.port}`;
const unique = (bs: B[]) => [...new Map(bs.map((b) => [key(b), b])).values()];

// Eight /24s (pairs of them under a /23), halves and quarters that often cover a whole /24 (unreachable bindings), hosts.
const v4 = fc.record({ net: fc.integer({ min: 0, max: 7 }), part: fc.integer({ min: 0, max: 3 }), host: fc.integer({ min: 0, max: 255 }), kind: fc.constantFrom(23, 24, 25, 25, 26, 26, 32) }).map(({ net, part, host, kind }) => {
  if (kind === 23) return `10.0.${net & ~1}.0/23`;
  if (kind === 24) return `10.0.${net}.0/24`;
  if (kind === 25) return `10.0.${net}.${(part & 1) * 128}/25`;
  if (kind === 26) return `10.0.${net}.${part * 64}/26`;
  return `10.0.${net}.${host}/32`;
});
const v6 = fc.record({ host: fc.integer({ min: 0, max: 255 }), length: fc.integer({ min: 118, max: 128 }) }).map(({ host, length }) => (length < 120 ? '2001:db8::/118' : `2001:db8::${(host & ((0xff << (128 - length)) & 0xff)).toString(16)}/${length}`));
const binding = fc.record({
  label: fc.constantFrom('a', 'a', 'b', 'c', 'nopolicy'),
  protocol: fc.constantFrom<Protocol>('tcp', 'udp'),
  prefix: fc.oneof(v4, v4, v6),
  port: fc.constantFrom(0, 0, 1, 53, 80, 443),
});
const POLICIES = {
  services: { a: { tcp: [443], udp: [53] }, b: { tcp: [443] }, c: { tcp: [80, 443] } },
  exclusive: { c: ['10.0.3.0/24'] },
  https_only: { prefixes: ['10.0.2.128/25'], plaintext_ports: [80] },
};
const doc = (bindings: B[]) => ({ bindings, ...POLICIES });
const policy = { ...DEFAULT_POLICY, limits: { ...DEFAULT_POLICY.limits, withdrawalShare: 1, withdrawalMin: 1000 } };

/** What a judgement says, comparable: the verdict, the findings (code, message, entries), the diff's sentences and size. */
const said = (j: Judgement) =>
  j.verdict === 'refuse'
    ? { verdict: j.verdict, findings: j.findings.map((f) => `${f.code} ${f.message} ${f.entries.join(',')}`).sort(), guards: j.guards.map((g) => g.code).sort() }
    : { verdict: j.verdict, warnings: j.warnings.map((f) => `${f.code} ${f.message} ${f.entries.join(',')}`).sort(), summary: j.summary.map((s) => s.text).sort(), ranges: j.ranges, digest: j.indexed.digest };

describe('a small change judged over its regions', () => {
  it('is judged as the whole states are', () => {
    let regional = 0;
    fc.assert(
      fc.property(fc.array(binding, { minLength: 12, maxLength: 40 }), fc.array(fc.integer({ min: 0, max: 7 }), { maxLength: 3 }), fc.array(binding, { maxLength: 4 }), fc.array(fc.nat(40), { maxLength: 4 }), (start, covered, added, removed) => {
        // Some /24s both of whose halves are bound: the /24 is unreachable (a warning carried from state to state).
        const covers = covered.flatMap((net): B[] => [
          { label: 'a', protocol: 'tcp', prefix: `10.0.${net}.0/24`, port: 0 },
          { label: 'b', protocol: 'tcp', prefix: `10.0.${net}.0/25`, port: 0 },
          { label: 'b', protocol: 'tcp', prefix: `10.0.${net}.128/25`, port: 0 },
        ]);
        // The live state: one the policy accepts (its blocking findings' bindings left out).
        let bindings = unique([...covers, ...start]);
        let live: IndexedState | undefined;
        let accepted: Judgement | undefined;
        for (let round = 0; round < 20; round++) {
          const j = judge(undefined, parseDesiredState(doc(bindings), 'live'), policy);
          if (j.verdict !== 'refuse') {
            live = j.indexed;
            accepted = j;
            break;
          }
          const bad = new Set(j.findings.flatMap((f) => f.entries));
          const noPolicy = j.findings.some((f) => f.code === 'ENOPOLICY');
          bindings = bindings.filter((b) => !bad.has(`${b.label} ${b.protocol} ${b.prefix} port ${b.port}`) && !(noPolicy && b.label === 'nopolicy'));
          if (j.findings.length === 0) return; // refused by a guard alone: no state to start from
        }
        if (!live || !accepted) return;
        const gone = new Set(removed.map((i) => i % Math.max(1, bindings.length)));
        const next = unique([...bindings.filter((_, i) => !gone.has(i)), ...added]);
        const state = parseDesiredState(doc(next), 'next');
        const whole = judge(live, state, policy);
        const byRegion = judge(live, state, policy, { digest: live.digest, warnings: accepted.warnings });
        // Counted only when the change was judged over its regions (else the two judgements are one and the same).
        if (byRegion.verdict !== 'refuse' && byRegion.judged === 'regions') regional++;
        expect(whole.verdict === 'refuse' || whole.judged === 'whole').toBe(true);
        expect(said(byRegion)).toEqual(said(whole));
      }),
      { numRuns: 400 },
    );
    expect(regional).toBeGreaterThan(50);
  });
});
