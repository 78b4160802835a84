import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseDesiredState } from '../../src/desired/state.js';
import { verifyDocument, verifyState } from '../../src/verify/verify.js';
import { ReferenceLpm } from '../../src/bindings/reference.js';
import { parseAddress } from '../../src/net/address.js';
import type { Protocol } from '../../src/bindings/binding.js';

type B = { label: string; protocol: Protocol; prefix: string; port: number };
const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: ['1-65535'] }, tls: { tcp: [443] }, a: { tcp: [1], udp: [1] }, b: { tcp: [1], udp: [1] }, c: { tcp: [1], udp: [1] } };
const verify = (bindings: B[], extra: Record<string, unknown> = {}) => verifyState(parseDesiredState({ bindings, services: SERVICES, ...extra }, 'test'));
const codes = (bindings: B[], extra: Record<string, unknown> = {}) => verify(bindings, extra).map((f) => f.code);

describe('verification', () => {
  it('finds bindings no packet reaches, with the binding that wins there', () => {
    const cdn: B = { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 };
    const low: B = { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 };
    const high: B = { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.128/25', port: 0 };
    expect(codes([cdn, low])).toEqual([]);
    const [f] = verify([cdn, low, high]);
    expect(f).toMatchObject({ code: 'EUNREACHABLE', witness: { protocol: 'tcp', address: '192.0.2.0', port: 1 } });
    expect(f!.entries).toEqual(['cdn tcp 192.0.2.0/24 port 0', 'spectrum tcp 192.0.2.0/25 port 0']);
    // An exact port beats an any-port binding of the same prefix, not a longer one.
    const tls: B = { label: 'tls', protocol: 'tcp', prefix: '198.51.100.0/24', port: 443 };
    expect(codes([tls, { ...cdn, prefix: '198.51.100.0/24' }])).toEqual([]);
    const shadowed = verify([tls, { ...low, prefix: '198.51.100.0/25' }, { ...high, prefix: '198.51.100.128/25' }]);
    expect(shadowed.map((x) => [x.code, x.witness])).toEqual([['EUNREACHABLE', { protocol: 'tcp', address: '198.51.100.0', port: 443 }]]);
  });

  it('finds plaintext ports inside HTTPS-only ranges, labels without a policy, and exclusive prefixes another service reaches', () => {
    const plain = verify([{ label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/25', port: 80 }], { https_only: { prefixes: ['198.51.100.0/24'] } });
    expect(plain.map((x) => [x.code, x.witness])).toEqual([['EPLAINTEXT', { protocol: 'tcp', address: '198.51.100.0', port: 80 }]]);
    const orphan = verify([{ label: 'nobody', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }]);
    expect(orphan.map((x) => [x.code, x.witness])).toEqual([['ENOPOLICY', { protocol: 'udp', address: '203.0.113.0', port: 53 }]]);
    const exclusive = { exclusive: { cdn: ['192.0.2.0/24'] } };
    const cdn: B = { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 };
    const wide: B = { label: 'spectrum', protocol: 'tcp', prefix: '192.0.0.0/16', port: 0 };
    // spectrum's /16 never wins inside cdn's /24: fine. A /25 of spectrum inside it does.
    expect(codes([cdn, wide], exclusive)).toEqual([]);
    const carved = verify([cdn, wide, { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.128/25', port: 0 }], exclusive);
    expect(carved.map((x) => [x.code, x.witness])).toEqual([['EEXCLUSIVE', { protocol: 'tcp', address: '192.0.2.128', port: 1 }]]);
    // cdn on 443 only: the /16 takes every other port inside the /24.
    const partial = verify([{ ...cdn, port: 443 }, wide], exclusive);
    expect(partial.map((x) => [x.code, x.witness])).toEqual([['EEXCLUSIVE', { protocol: 'tcp', address: '192.0.2.0', port: 1 }]]);
  });

  it('lists every key bound twice, naming both entries, and verifies the rest', () => {
    const doc = {
      bindings: [
        { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 443 },
        { label: 'tls', protocol: 'tcp', prefix: '192.0.2.0/24', port: 443 },
        { label: 'cdn', protocol: 'udp', prefix: '2001:db8::/32', port: 53 },
        { label: 'cdn', protocol: 'udp', prefix: '2001:db8::/32', port: 53 },
      ],
      services: SERVICES,
    };
    const { findings } = verifyDocument(doc, 'f.json');
    expect(findings.filter((x) => x.code === 'EDUPLICATE').map((x) => [x.entries, x.witness])).toEqual([
      [['bindings[0]: cdn tcp 192.0.2.0/24 port 443', 'bindings[1]: tls tcp 192.0.2.0/24 port 443'], { protocol: 'tcp', address: '192.0.2.0', port: 443 }],
      [['bindings[2]: cdn udp 2001:db8::/32 port 53', 'bindings[3]: cdn udp 2001:db8::/32 port 53'], { protocol: 'udp', address: '2001:db8::', port: 53 }],
    ]);
    expect(() => verifyDocument({ bindings: [{ label: 'x', protocol: 'tcp', prefix: '192.0.2.1/24', port: 0 }] }, 'f.json')).toThrow(/bindings\[0\]/);
  });

  it('calls a binding unreachable exactly when the reference lookup never returns it', () => {
    const v4 = fc.record({ host: fc.integer({ min: 0, max: 511 }), length: fc.integer({ min: 23, max: 32 }) }).map(({ host, length }) => {
      const kept = host & ((0x1ff << (32 - length)) & 0x1ff);
      return `10.0.${kept >> 8}.${kept & 255}/${length}`;
    });
    const binding = fc.record({ label: fc.constantFrom('a', 'b', 'c'), protocol: fc.constantFrom<Protocol>('tcp', 'udp'), prefix: v4, port: fc.constantFrom(0, 0, 53, 443) });
    const addresses = Array.from({ length: 512 }, (_, i) => parseAddress(`10.0.${i >> 8}.${i & 255}`)!);
    fc.assert(
      fc.property(fc.array(binding, { maxLength: 30 }), (raw) => {
        const bindings = [...new Map(raw.map((b) => [`${b.protocol} ${b.prefix} ${b.port}`, b])).values()];
        const state = parseDesiredState({ bindings, services: SERVICES }, 'test');
        const reference = new ReferenceLpm(state.bindings);
        const reached = new Set<number>();
        for (const protocol of ['tcp', 'udp'] as const) for (const a of addresses) for (const port of [53, 443, 1000]) {
          const m = reference.lookup(protocol, a, port);
          if (m) reached.add(m.index);
        }
        const t = state.bindings;
        const unreachable = verifyState(state).filter((f) => f.code === 'EUNREACHABLE').map((f) => f.entries[0]).sort();
        const expected = Array.from({ length: t.count }, (_, i) => i)
          .filter((i) => !reached.has(i))
          .map((i) => `${t.label(i)} ${t.protocol[i] === 6 ? 'tcp' : 'udp'} ${t.prefixText(i)} port ${t.port[i]}`)
          .sort();
        expect(unreachable).toEqual(expected);
      }),
      { numRuns: 300 },
    );
  });
});
