import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { IPv4, IPv6, Validator } from 'ip-num';
import { bitsAt, formatAddress, parseAddress, parsePrefix, type Words } from '../../src/net/address.js';

const wordsToBigInt = (w: Words) => (BigInt(w[0]) << 96n) | (BigInt(w[1]) << 64n) | (BigInt(w[2]) << 32n) | BigInt(w[3]);
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const words6 = fc.tuple(u32, u32, u32, u32) as fc.Arbitrary<Words>;

describe('address parsing agrees with ip-num', () => {
  it('IPv4: format then parse round-trips and matches ip-num', () => {
    fc.assert(
      fc.property(u32, (n) => {
        const text = formatAddress(4, [n, 0, 0, 0]);
        const parsed = parseAddress(text);
        expect(parsed).toEqual({ family: 4, words: [n, 0, 0, 0] });
        expect(IPv4.fromString(text).getValue()).toBe(BigInt(n));
      }),
      { numRuns: 2000 },
    );
  });

  it('IPv6: RFC 5952 text round-trips and matches ip-num', () => {
    fc.assert(
      fc.property(words6, fc.integer({ min: 0, max: 7 }), (w, zeros) => {
        const words = [...w] as Words;
        // Runs of zero groups exercise "::" compression.
        for (let g = 0; g < zeros; g++) words[g >> 1] = (words[g >> 1]! & (g & 1 ? 0xffff0000 : 0xffff)) >>> 0;
        const text = formatAddress(6, words);
        expect(parseAddress(text)).toEqual({ family: 6, words });
        expect(IPv6.fromString(text).getValue()).toBe(wordsToBigInt(words));
      }),
      { numRuns: 2000 },
    );
  });

  it('accepts what ip-num accepts among tricky spellings, and refuses zones, brackets and leading zeros', () => {
    for (const ok of ['::', '::1', '1::', '2001:db8::', '::ffff:192.0.2.1', '2001:DB8:0:0:0:0:0:1', '0.0.0.0', '255.255.255.255']) {
      expect(parseAddress(ok), ok).toBeDefined();
    }
    for (const bad of ['1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', '1.2.3.04', '::1%lo', '[::1]', ':::', '1:2:3:4:5:6:7:8:9', '1::2::3', '12345::', 'g::1', '', ' 1.2.3.4', '1.2.3.4 ']) {
      expect(parseAddress(bad), bad).toBeUndefined();
    }
    expect(Validator.isValidIPv4String('1.2.3.04')[0]).toBe(false);
  });

  it('prefixes: host bits, lengths, IPv4-mapped', () => {
    expect(parsePrefix('192.0.2.0/24')).toMatchObject({ family: 4, length: 24 });
    expect(parsePrefix('192.0.2.7')).toMatchObject({ family: 4, length: 32 });
    expect(parsePrefix('2001:db8::1')).toMatchObject({ family: 6, length: 128 });
    expect(parsePrefix('192.0.2.7', false)).toBe('syntax');
    expect(parsePrefix('192.0.2.1/24')).toBe('host-bits');
    expect(parsePrefix('192.0.2.0/33')).toBe('length');
    expect(parsePrefix('2001:db8::/129')).toBe('length');
    expect(parsePrefix('192.0.2.0/024')).toBe('syntax');
    expect(parsePrefix('::ffff:192.0.2.0/120')).toBe('ipv4-mapped');
    expect(parsePrefix('::ffff:0:0/96')).toBe('ipv4-mapped');
    expect(parsePrefix('::/0')).toMatchObject({ family: 6, length: 0 });
  });

  it('bitsAt reads any bit range, across word boundaries', () => {
    fc.assert(
      fc.property(words6, fc.integer({ min: 0, max: 127 }), fc.integer({ min: 1, max: 31 }), (w, pos, count) => {
        fc.pre(pos + count <= 128);
        const expected = Number((wordsToBigInt(w) >> BigInt(128 - pos - count)) & ((1n << BigInt(count)) - 1n));
        expect(bitsAt(w, 0, pos, count)).toBe(expected);
      }),
      { numRuns: 3000 },
    );
  });
});
