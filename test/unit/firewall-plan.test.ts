import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseDesiredState, type DesiredState } from '../../src/desired/state.js';
import { planFirewall, lpmEntries, type FirewallPlan } from '../../src/firewall/plan.js';
import { Evaluator, evaluate, expectedVerdict, SetIndex } from '../../src/firewall/verdict.js';
import { ReferenceLpm } from '../../src/bindings/reference.js';
import { parseAddress, parsePrefix, formatPrefix, type Address, type Prefix } from '../../src/net/address.js';
import type { Protocol } from '../../src/bindings/binding.js';
import { SwitchyardError } from '../../src/errors.js';

const verdictOf = (plan: FirewallPlan, protocol: Protocol, ip: string, port: number) => {
  const address = parseAddress(ip)!;
  return evaluate(plan.families[address.family === 4 ? 0 : 1], protocol, address, port).verdict;
};

const CARVE_OUT = {
  bindings: [
    { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 },
    { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 },
    { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.200/32', port: 0 },
    { label: 'tls', protocol: 'tcp', prefix: '198.51.100.0/24', port: 443 },
    { label: 'spectrum', protocol: 'tcp', prefix: '198.51.100.4/32', port: 0 },
    { label: 'cdn', protocol: 'udp', prefix: '2001:db8::/32', port: 0 },
  ],
  services: { cdn: { tcp: [80, 443], udp: [443] }, spectrum: { tcp: [22, '2000-2100'] }, tls: { tcp: [443] } },
  https_only: { prefixes: ['192.0.2.128/26', '2001:db8:1::/48'] },
};

const carveOutPlan = () => planFirewall(parseDesiredState(CARVE_OUT, 'carve.json'));

describe('firewall planner', () => {
  const plan = planFirewall(parseDesiredState(CARVE_OUT, 'carve.json'));

  it('moves the firewall with a carved-out /32 (system.md example)', () => {
    expect(verdictOf(plan, 'tcp', '192.0.2.200', 443)).toBe('accept'); // cdn's
    expect(verdictOf(plan, 'tcp', '192.0.2.200', 22)).toBe('drop'); // spectrum's port, cdn's address
    expect(verdictOf(plan, 'tcp', '192.0.2.201', 22)).toBe('accept'); // spectrum
    expect(verdictOf(plan, 'tcp', '192.0.2.201', 443)).toBe('drop');
    expect(verdictOf(plan, 'tcp', '192.0.2.5', 80)).toBe('accept');
    expect(verdictOf(plan, 'tcp', '192.0.2.5', 2050)).toBe('drop');
    expect(verdictOf(plan, 'udp', '192.0.2.5', 443)).toBe('drop'); // bound only for tcp
    expect(verdictOf(plan, 'tcp', '203.0.113.1', 22)).toBe('pass'); // not ours
  });

  it('gives the exact-port binding its port and the longer wildcard its address', () => {
    expect(verdictOf(plan, 'tcp', '198.51.100.5', 443)).toBe('accept'); // tls
    expect(verdictOf(plan, 'tcp', '198.51.100.5', 80)).toBe('drop'); // no binding for 80 there
    expect(verdictOf(plan, 'tcp', '198.51.100.4', 443)).toBe('drop'); // spectrum's /32 wins; spectrum does not allow 443
    expect(verdictOf(plan, 'tcp', '198.51.100.4', 2000)).toBe('accept');
  });

  it('closes plaintext ports on HTTPS-only ranges whatever is bound', () => {
    expect(verdictOf(plan, 'tcp', '192.0.2.130', 80)).toBe('reject');
    expect(verdictOf(plan, 'udp', '192.0.2.130', 8080)).toBe('reject');
    expect(verdictOf(plan, 'tcp', '192.0.2.130', 2052)).toBe('reject');
    expect(verdictOf(plan, 'tcp', '192.0.2.130', 2000)).toBe('accept');
    expect(verdictOf(plan, 'udp', '2001:db8:1::1', 80)).toBe('reject');
    expect(verdictOf(plan, 'udp', '2001:db8:2::1', 443)).toBe('accept');
    expect(plan.families[1].chains[0]!.rules.find((r) => r.protocol === 'udp' && r.target === 'REJECT')!.rejectWith).toBe('icmp6-port-unreachable');
  });

  it('uses nomatch carve-outs rather than splitting prefixes', () => {
    const spectrum = plan.families[0].sets.find((s) => s.name === 'sy4-tcp-l-spectrum')!;
    expect(spectrum.entries.map((e) => `${formatPrefix(e.prefix)}${e.nomatch ? ' nomatch' : ''}`)).toEqual([
      '192.0.2.0/24',
      '192.0.2.0/25 nomatch',
      '192.0.2.200/32 nomatch',
      '198.51.100.4/32',
    ]);
    for (const f of plan.families) for (const s of f.sets) expect(s.name.length).toBeLessThanOrEqual(31);
  });

  it('keeps names of long labels within ipset limits and distinct', () => {
    const long = (n: number) => `service-with-a-very-long-name-${n}`;
    const p = planFirewall(
      parseDesiredState(
        {
          bindings: [1, 2].map((n) => ({ label: long(n), protocol: 'tcp', prefix: `10.0.${n}.0/24`, port: 0 })),
          services: { [long(1)]: { tcp: [1] }, [long(2)]: { tcp: [1] } },
        },
        's',
      ),
    );
    const names = p.families[0].sets.map((s) => s.name);
    expect(new Set(names).size).toBe(names.length);
    for (const n of names) expect(n.length).toBeLessThanOrEqual(31);
  });

  it('splits a /0 into halves hash:net can hold, keeping precedence', () => {
    const entries = lpmEntries([
      { prefix: parsePrefix('0.0.0.0/0') as Prefix, verdict: true },
      { prefix: parsePrefix('128.0.0.0/1') as Prefix, verdict: false },
      { prefix: parsePrefix('10.0.0.0/8') as Prefix, verdict: false },
    ], (i) => i.verdict);
    expect(entries.map((e) => `${formatPrefix(e.prefix)}${e.nomatch ? '!' : ''}`)).toEqual(['0.0.0.0/1', '10.0.0.0/8!']);
  });

  it('splits more than 15 ports into multiport chunks', () => {
    const ports = Array.from({ length: 20 }, (_, i) => 1000 + i * 2);
    const p = planFirewall(parseDesiredState({ bindings: [{ label: 'a', protocol: 'udp', prefix: '10.0.0.0/8', port: 0 }], services: { a: { udp: ports } } }, 's'));
    const udp = p.families[0].chains.find((c) => c.name === 'SWITCHYARD-UDP')!;
    expect(udp.rules.filter((r) => r.target === 'ACCEPT').map((r) => r.dports!.length)).toEqual([15, 5]);
    for (const port of [1000, 1038, 1039]) expect(verdictOf(p, 'udp', '10.1.2.3', port)).toBe(port === 1039 ? 'drop' : 'accept');
  });
});

// --- the property: planner verdicts equal dispatcher precedence --------------

const V4_BASE = 0x0a000000; // 10.0.0.0: prefixes within a /22 so they nest
const LABELS = ['cdn', 'spectrum', 'dns'];
const POOL = [22, 53, 80, 443, 8080];

const arbV4Prefix = fc.record({ host: fc.integer({ min: 0, max: 1023 }), length: fc.integer({ min: 20, max: 32 }) }).map(({ host, length }) => {
  const mask = length === 0 ? 0 : (0xffffffff << (32 - length)) >>> 0;
  const w = ((V4_BASE + host) & mask) >>> 0;
  return `${w >>> 24}.${(w >>> 16) & 255}.${(w >>> 8) & 255}.${w & 255}/${length}`;
});
const arbV6Prefix = fc.record({ host: fc.integer({ min: 0, max: 1023 }), length: fc.integer({ min: 116, max: 128 }) }).map(({ host, length }) => {
  const p = parsePrefix(`2001:db8::${host.toString(16)}`, true) as Prefix;
  const keep = length - 96;
  const mask = keep === 0 ? 0 : (0xffffffff << (32 - keep)) >>> 0;
  return formatPrefix({ ...p, words: [p.words[0], p.words[1], p.words[2], (p.words[3] & mask) >>> 0], length });
});
const arbPorts = fc.uniqueArray(fc.oneof(fc.constantFrom(...POOL), fc.constant('8000-8100'), fc.constant('1-65535')), { maxLength: 3 });

const arbState = fc
  .record({
    bindings: fc.array(
      fc.record({
        label: fc.constantFrom(...LABELS),
        protocol: fc.constantFrom('tcp', 'udp'),
        prefix: fc.oneof(arbV4Prefix, arbV6Prefix, fc.constantFrom('0.0.0.0/0', '::/0', '10.0.0.0/8')),
        port: fc.oneof(fc.constant(0), fc.constantFrom(...POOL)),
      }),
      { maxLength: 30 },
    ),
    policies: fc.array(fc.record({ tcp: arbPorts, udp: arbPorts }), { minLength: LABELS.length, maxLength: LABELS.length }),
    https: fc.uniqueArray(fc.oneof(arbV4Prefix, arbV6Prefix), { maxLength: 3 }),
    plaintext: fc.option(fc.uniqueArray(fc.constantFrom(...POOL), { maxLength: 3 }), { nil: undefined }),
  })
  .map(({ bindings, policies, https, plaintext }) => {
    const seen = new Set<string>();
    const unique = bindings.filter((b) => {
      const key = `${b.protocol} ${b.prefix} ${b.port}`;
      return !seen.has(key) && seen.add(key);
    });
    return {
      bindings: unique,
      // One label is sometimes left without a policy: it then allows nothing.
      services: Object.fromEntries(LABELS.slice(0, 2 + (policies.length % 2)).map((l, i) => [l, policies[i]!])),
      https_only: { prefixes: https, ...(plaintext ? { plaintext_ports: plaintext } : {}) },
    };
  });

const arbQuery = fc.record({
  protocol: fc.constantFrom<Protocol>('tcp', 'udp'),
  v6: fc.boolean(),
  host: fc.integer({ min: 0, max: 1100 }),
  port: fc.oneof(fc.constantFrom(...POOL), fc.integer({ min: 1, max: 65535 })),
});

function queryAddress(v6: boolean, host: number): Address {
  if (!v6) return parseAddress(`10.0.${(host >> 8) & 255}.${host & 255}`)!;
  return parseAddress(`2001:db8::${host.toString(16)}`)!;
}

describe('firewall planner property', () => {
  it("matches the dispatcher's precedence for random bindings, policies and ranges", () => {
    fc.assert(
      fc.property(arbState, fc.array(arbQuery, { minLength: 50, maxLength: 50 }), (doc, queries) => {
        const state: DesiredState = parseDesiredState(doc, 'random');
        const plan = planFirewall(state);
        const lpm = new ReferenceLpm(state.bindings);
        const evaluators = plan.families.map((f) => new Evaluator(f));
        for (const q of queries) {
          const address = queryAddress(q.v6, q.host);
          const got = evaluators[q.v6 ? 1 : 0]!.evaluate(q.protocol, address, q.port).verdict;
          const want = expectedVerdict(state, lpm, q.protocol, address, q.port);
          if (got !== want) throw new Error(`${q.protocol} ${JSON.stringify(address.words)} port ${q.port}: plan says ${got}, precedence says ${want}`);
        }
      }),
      { numRuns: 400 },
    );
  });

  it('lpmEntries reproduces every listed verdict with a most-specific match', () => {
    fc.assert(
      fc.property(fc.uniqueArray(arbV4Prefix, { maxLength: 25 }), fc.array(fc.boolean(), { minLength: 25, maxLength: 25 }), (prefixes, verdicts) => {
        const items = prefixes.map((p, i) => ({ prefix: parsePrefix(p) as Prefix, verdict: verdicts[i]! }));
        const index = new SetIndex({ entries: lpmEntries(items, (i) => i.verdict) });
        for (let host = 0; host < 1024; host += 7) {
          const a = queryAddress(false, host);
          const want = new SetIndex({ entries: items.map((i) => ({ prefix: i.prefix, nomatch: !i.verdict })) }).has(a);
          expect(index.has(a)).toBe(want);
        }
      }),
      { numRuns: 200 },
    );
  });
});

/**
 * The plan as someone else left it: `chains` flushed (their rules gone),
 * `sets` flushed (no entries). A set can be destroyed only once no rule
 * refers to it, so a destroyed set is a flushed chain plus that: the same
 * verdicts (a rule on a missing set could not be there).
 */
function tampered(plan: FirewallPlan, chains: string[], sets: string[]): FirewallPlan {
  return {
    families: plan.families.map((f) => ({
      ...f,
      chains: f.chains.map((c) => (chains.includes(c.name) ? { ...c, rules: [] } : c)),
      sets: f.sets.map((set) => (sets.includes(set.name) ? { ...set, entries: [] } : set)),
    })) as FirewallPlan['families'],
  };
}

describe('firewall planner: tampering fails closed', () => {
  // Sets whose entries only ever grant (a service's any-port bindings, a
  // port's accepted bindings): emptied, they accept less. The sets that
  // refuse (managed, HTTPS-only, a port's denied bindings) are the refusal
  // itself: see the README on what a flushed one does.
  const granting = (name: string) => /^sy[46]-(tcp|udp)-(l-|p\d)/.test(name);

  it('accepts nothing more, and passes nothing it dropped, with a protocol chain flushed or a granting set emptied', () => {
    fc.assert(
      fc.property(arbState, fc.array(arbQuery, { minLength: 50, maxLength: 50 }), fc.nat(), (doc, queries, pick) => {
        const state: DesiredState = parseDesiredState(doc, 'random');
        const plan = planFirewall(state);
        const setNames = plan.families.flatMap((f) => f.sets.map((s) => s.name)).filter(granting);
        const cases: Array<[string, FirewallPlan]> = [
          ['SWITCHYARD-TCP flushed', tampered(plan, ['SWITCHYARD-TCP'], [])],
          ['SWITCHYARD-UDP flushed', tampered(plan, ['SWITCHYARD-UDP'], [])],
          ['both protocol chains flushed', tampered(plan, ['SWITCHYARD-TCP', 'SWITCHYARD-UDP'], [])],
        ];
        if (setNames.length > 0) {
          const name = setNames[pick % setNames.length]!;
          cases.push([`${name} emptied`, tampered(plan, [], [name])]);
        }
        const intact = plan.families.map((f) => new Evaluator(f));
        for (const [what, t] of cases) {
          const evaluators = t.families.map((f) => new Evaluator(f));
          for (const q of queries) {
            const address = queryAddress(q.v6, q.host);
            const want = intact[q.v6 ? 1 : 0]!.evaluate(q.protocol, address, q.port).verdict;
            const got = evaluators[q.v6 ? 1 : 0]!.evaluate(q.protocol, address, q.port).verdict;
            if (want === 'accept' || want === got) continue;
            // Refused before: still refused (dropped or rejected), never accepted or let through.
            if (got === 'accept' || got === 'pass') throw new Error(`${what}: ${q.protocol} ${JSON.stringify(address.words)} port ${q.port}: ${want} intact, ${got} now`);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('drops a bound address on a port its service does not allow with the chain flushed (the carve-out example)', () => {
    const flushed = tampered(carveOutPlan(), ['SWITCHYARD-TCP', 'SWITCHYARD-UDP'], []);
    expect(verdictOf(flushed, 'tcp', '192.0.2.200', 22)).toBe('drop');
    expect(verdictOf(flushed, 'tcp', '192.0.2.5', 2050)).toBe('drop');
    expect(verdictOf(flushed, 'udp', '2001:db8::1', 53)).toBe('drop');
    expect(verdictOf(flushed, 'tcp', '192.0.2.5', 80)).toBe('drop'); // allowed intact: refused while flushed (fail closed)
    expect(verdictOf(flushed, 'tcp', '192.0.2.130', 80)).toBe('reject'); // HTTPS-only lives in the main chain
    expect(verdictOf(flushed, 'tcp', '203.0.113.1', 22)).toBe('pass'); // not ours
  });
});

describe('desired-state validation', () => {
  const base = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }] };
  const error = (doc: unknown) => {
    try {
      parseDesiredState(doc, 'state.json');
    } catch (err) {
      expect(err).toBeInstanceOf(SwitchyardError);
      return (err as Error).message;
    }
    throw new Error('expected an error');
  };
  it('names the bad entry', () => {
    expect(error({ ...base, services: { cdn: { tcp: [0] } } })).toMatch(/services\.cdn\.tcp\[0\]: port 0 must be/);
    expect(error({ ...base, services: { cdn: { tcp: ['90-80'] } } })).toMatch(/services\.cdn\.tcp\[0\]: port "90-80"/);
    expect(error({ ...base, services: { cdn: { sctp: [1] } } })).toMatch(/services\.cdn: unknown field "sctp"/);
    expect(error({ ...base, services: { 'bad label': { tcp: [1] } } })).toMatch(/label "bad label"/);
    expect(error({ ...base, https_only: { prefixes: ['192.0.2.1/24'] } })).toMatch(/https_only\.prefixes\[0\]: prefix "192\.0\.2\.1\/24" has host bits set/);
    expect(error({ ...base, https_only: { prefixes: ['192.0.2.0/24', '192.0.2.0/24'] } })).toMatch(/prefixes\[1\]: 192\.0\.2\.0\/24 is listed twice/);
    expect(error({ ...base, https_only: { plaintext_ports: [70000] } })).toMatch(/plaintext_ports\[0\]/);
    expect(error({ services: {} })).toMatch(/"bindings" must be an array/);
    expect(error({ ...base, extra: 1 })).toMatch(/unknown field "extra"/);
  });
  it('defaults the plaintext ports to the edge list', () => {
    const s = parseDesiredState(base, 's');
    expect(s.httpsOnly.plaintextPorts.map((r) => r[0])).toEqual([80, 2052, 2082, 2086, 2095, 8080, 8880]);
  });
});
