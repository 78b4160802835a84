import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseDesiredState } from '../../src/desired/state.js';
import { semanticDiff, type DiffEntry } from '../../src/verify/diff.js';
import { ReferenceLpm } from '../../src/bindings/reference.js';
import { parseAddress } from '../../src/net/address.js';
import type { Protocol } from '../../src/bindings/binding.js';

type B = { label: string; protocol: Protocol; prefix: string; port: number };
const state = (bindings: B[]) => parseDesiredState({ bindings }, 'test');
const key = (b: B) => `${b.protocol} ${b.prefix} ${b.port}`;
const unique = (bs: B[]) => [...new Map(bs.map((b) => [key(b), b])).values()];

// A small universe, walked address by address: 10.0.0.0/24 and 2001:db8::/120.
const v4 = fc.record({ host: fc.integer({ min: 0, max: 255 }), length: fc.integer({ min: 23, max: 32 }) }).map(({ host, length }) => {
  if (length === 23) return '10.0.0.0/23';
  return `10.0.0.${host & ((0xff << (32 - length)) & 0xff)}/${length}`;
});
const v6 = fc.record({ host: fc.integer({ min: 0, max: 255 }), length: fc.integer({ min: 120, max: 128 }) }).map(({ host, length }) => `2001:db8::${(host & ((0xff << (128 - length)) & 0xff)).toString(16)}/${length}`);
const binding = fc.record({
  label: fc.constantFrom('a', 'b', 'c'),
  protocol: fc.constantFrom<Protocol>('tcp', 'udp'),
  prefix: fc.oneof(v4, v6),
  port: fc.constantFrom(0, 0, 53, 80, 443),
});
const PORTS = [1, 53, 80, 443, 1000, 65535];
const ADDRESSES = [...Array.from({ length: 256 }, (_, i) => `10.0.0.${i}`), '10.0.1.7', ...Array.from({ length: 256 }, (_, i) => `2001:db8::${i.toString(16)}`)];

const value = (ip: string) => {
  const a = parseAddress(ip)!;
  return a.words.reduce((v, w) => (v << 32n) | BigInt(w), 0n) >> (a.family === 4 ? 96n : 0n);
};
const QUERY = ADDRESSES.map((ip) => ({ ip, address: parseAddress(ip)!, value: value(ip) }));

/** What the diff says happens at (protocol, address, port): [from, to], or undefined for no change. */
function fromDiff(entries: Array<DiffEntry & { lo: bigint; hi: bigint }>, protocol: Protocol, q: (typeof QUERY)[number], port: number): [string | null, string | null] | undefined {
  const hits = entries.filter((e) => e.protocol === protocol && e.family === q.address.family && e.lo <= q.value && q.value <= e.hi && e.ports.some(([lo, hi]) => port >= lo && port <= hi));
  if (hits.length > 1) expect.fail(`${protocol} ${q.ip} ${port} in more than one entry`);
  return hits[0] ? [hits[0].from, hits[0].to] : undefined;
}

describe('semantic diff', () => {
  it('says exactly which (protocol, address, port) change hands, as the reference lookup does', () => {
    fc.assert(
      fc.property(fc.array(binding, { maxLength: 25 }), fc.array(binding, { maxLength: 25 }), fc.array(fc.nat(30), { maxLength: 8 }), (start, added, removed) => {
        const before = unique(start);
        const after = unique([...before.filter((_, i) => !removed.includes(i)), ...added]);
        const sb = state(before);
        const sa = state(after);
        const diff = semanticDiff(sb, sa);
        const rb = new ReferenceLpm(sb.bindings);
        const ra = new ReferenceLpm(sa.bindings);
        const label = (r: ReferenceLpm, t: typeof sb.bindings, protocol: Protocol, q: (typeof QUERY)[number], port: number) => {
          const m = r.lookup(protocol, q.address, port);
          return m ? t.label(m.index) : null;
        };
        const entries = diff.entries.map((e) => ({ ...e, lo: value(e.first), hi: value(e.last) }));
        let changes = 0;
        for (const protocol of ['tcp', 'udp'] as const) {
          for (const q of QUERY) {
            for (const port of PORTS) {
              const was = label(rb, sb.bindings, protocol, q, port);
              const now = label(ra, sa.bindings, protocol, q, port);
              const said = fromDiff(entries, protocol, q, port);
              if (was === now) {
                if (said !== undefined) expect(said, `${protocol} ${q.ip} ${port} unchanged (${was})`).toBeUndefined();
              } else {
                changes++;
                if (said?.[0] !== was || said[1] !== now) expect(said, `${protocol} ${q.ip} ${port}: ${was} → ${now}`).toEqual([was, now]);
              }
            }
          }
        }
        // Nothing outside the universe, and the counts add up.
        for (const e of diff.entries) {
          expect(e.family === 4 ? e.first.startsWith('10.0.') : e.first.startsWith('2001:db8:')).toBe(true);
          expect(e.addresses).toBe(value(e.last) - value(e.first) + 1n);
          expect(e.from).not.toBe(e.to);
        }
        if (changes === 0) expect(diff.entries).toEqual([]);
      }),
      { numRuns: 100 },
    );
  });

  it('says nothing for a split that changes no verdict, one address for a carve-out, and sums per service', () => {
    const base: B[] = [
      { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 },
      { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 443 },
    ];
    const halves: B[] = [
      { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 },
      { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.128/25', port: 0 },
    ];
    expect(semanticDiff(state([base[0]!]), state(halves)).entries).toEqual([]);
    // With cdn's /24 on 443 the same split is not neutral: the /25s are longer, so they now win 443 too.
    expect(semanticDiff(state(base), state([...halves, base[1]!])).summary.map((s) => s.text)).toEqual(['cdn loses 256 IPv4 addresses on tcp port 443 to spectrum']);
    const carved = [...base, { label: 'cdn', protocol: 'tcp' as const, prefix: '192.0.2.200/32', port: 0 }];
    const d = semanticDiff(state(base), state(carved));
    // At .200 every port but 443 (already cdn's) moves from spectrum to cdn; at 443 nothing changes.
    expect(d.entries).toEqual([
      { protocol: 'tcp', family: 4, first: '192.0.2.200', last: '192.0.2.200', prefix: '192.0.2.200/32', addresses: 1n, ports: [[0, 442], [444, 65535]], from: 'spectrum', to: 'cdn' },
    ]);
    expect(d.summary.map((s) => s.text)).toEqual(['spectrum loses 1 IPv4 address on tcp ports other than 443 to cdn']);
    // Removing the /24 any-port binding: spectrum loses 256 addresses on every port but 443 (left to the kernel).
    const gone = semanticDiff(state(base), state([base[1]!]));
    expect(gone.summary.map((s) => s.text)).toEqual(['spectrum loses 256 IPv4 addresses on tcp ports other than 443 (unbound after)']);
    // A whole service moving on all ports.
    const moved = semanticDiff(state([base[0]!]), state([{ ...base[0]!, label: 'cdn' }]));
    expect(moved.summary.map((s) => s.text)).toEqual(['spectrum loses 256 IPv4 addresses on all tcp ports to cdn']);
  });

  it('counts IPv6 ranges exactly', () => {
    const d = semanticDiff(state([]), state([{ label: 'a', protocol: 'udp', prefix: '2001:db8::/32', port: 53 }]));
    expect(d.entries).toHaveLength(1);
    expect(d.entries[0]).toMatchObject({ prefix: '2001:db8::/32', addresses: 2n ** 96n, ports: [[53, 53]], from: null, to: 'a' });
  });
});
