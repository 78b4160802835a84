import { describe, expect, it } from 'vitest';
import { parseBindingList, parseBindingsDocument, parseLabel, parsePort } from '../../src/bindings/binding.js';
import { SwitchyardError } from '../../src/errors.js';

function errorOf(fn: () => unknown): SwitchyardError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SwitchyardError);
    return err as SwitchyardError;
  }
  throw new Error('expected an error');
}

describe('binding validation', () => {
  it('parses a valid document into canonical bindings', () => {
    const t = parseBindingsDocument(
      { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 }, { label: 'dns', protocol: 'udp', prefix: '2001:DB8::/32', port: 53 }] },
      'f.json',
    );
    expect([...t]).toEqual([
      { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 },
      { label: 'dns', protocol: 'udp', prefix: '2001:db8::/32', port: 53 },
    ]);
  });

  it('names the offending entry', () => {
    const doc = (b: unknown) => ({ bindings: [{ label: 'ok', protocol: 'tcp', prefix: '10.0.0.0/8', port: 1 }, b] });
    const cases: Array<[unknown, RegExp]> = [
      [doc({ label: 'a', protocol: 'tcp', prefix: '10.0.0.1/8', port: 0 }), /f\.json: bindings\[1\].*"10\.0\.0\.1\/8" has host bits set/],
      [doc({ label: 'a', protocol: 'tcp', prefix: '10.0.0.0/33', port: 0 }), /bindings\[1\].*prefix length/],
      [doc({ label: 'a', protocol: 'tcp', prefix: '10.0.0.0', port: 0 }), /bindings\[1\].*not an IPv4 or IPv6 address or prefix/],
      [doc({ label: 'a', protocol: 'tcp', prefix: '::ffff:10.0.0.0/104', port: 0 }), /IPv4-mapped/],
      [doc({ label: 'a', protocol: 'TCP', prefix: '10.0.0.0/8', port: 0 }), /protocol "TCP" must be tcp or udp/],
      [doc({ label: 'a', protocol: 'tcp', prefix: '10.0.0.0/8', port: '80' }), /port "80" must be an integer/],
      [doc({ label: 'a', protocol: 'tcp', prefix: '10.0.0.0/8', port: 1.5 }), /port 1.5/],
      [doc({ label: 'a', protocol: 'tcp', prefix: '10.0.0.0/8' }), /missing field "port"/],
      [doc({ label: 'a', protocol: 'tcp', prefix: '10.0.0.0/8', port: 0, note: 'x' }), /unknown field "note"/],
      [doc({ label: 'ok', protocol: 'tcp', prefix: '10.0.0.0/8', port: 1 }), /bindings\[1\].*duplicates bindings\[0\]/],
      [doc('nope'), /bindings\[1\]: expected an object/],
      [{ bindings: [], extra: true }, /unknown field "extra"/],
      [[], /expected an object/],
      [{ bindings: {} }, /"bindings" must be an array/],
    ];
    for (const [input, message] of cases) {
      const err = errorOf(() => parseBindingsDocument(input, 'f.json'));
      expect(err.message, JSON.stringify(input)).toMatch(message);
      expect(err.code).toMatch(/^EINVAL_/);
    }
  });

  it('labels are a safe alphabet of bounded length', () => {
    for (const ok of ['cdn', 'a', 'spectrum-v2', 'dns_1.internal', 'A'.repeat(59)]) expect(parseLabel(ok, 'x')).toBe(ok);
    for (const bad of ['', '-x', '.hidden', 'a/b', '../x', 'a b', 'a;b', '$(x)', 'é', 'A'.repeat(60), 7]) {
      expect(() => parseLabel(bad, 'x'), String(bad)).toThrow(SwitchyardError);
    }
  });

  it('an entry\'s fields are its own: inherited ones are missing, not read (issue 15)', () => {
    // for…in and `in` (the old check) saw these through the prototype and accepted the entry.
    const inherited = Object.create({ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }) as unknown;
    expect(errorOf(() => parseBindingList([inherited], 'f.json')).message).toBe('f.json: bindings[0] ({}): missing field "label"');
    const half = Object.assign(Object.create({ port: 0 }) as object, { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24' }) as unknown;
    expect(errorOf(() => parseBindingList([half], 'f.json')).message).toMatch(/bindings\[0\] .*: missing field "port"$/);
    // The document's own "bindings" only.
    expect(errorOf(() => parseBindingsDocument(Object.create({ bindings: [] }), 'f.json')).message).toBe('f.json: "bindings" must be an array');
  });

  it('ports: numbers from files, digits from the command line', () => {
    expect(parsePort(0, 'x')).toBe(0);
    expect(parsePort(65535, 'x')).toBe(65535);
    expect(parsePort('443', 'x', true)).toBe(443);
    for (const bad of [-1, 65536, '443', NaN, null]) expect(() => parsePort(bad, 'x')).toThrow(SwitchyardError);
    for (const bad of ['0443', '+1', '1e3', '', '65536']) expect(() => parsePort(bad, 'x', true)).toThrow(SwitchyardError);
  });
});
