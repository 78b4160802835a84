import { describe, expect, it } from 'vitest';
import { BindingTable } from '../../src/bindings/binding.js';
import { buildTable, type TrieInput } from '../../src/trie/builder.js';
import { decodeTable } from '../../src/trie/decoder.js';
import { parsePrefix, type Prefix } from '../../src/net/address.js';
import { randomBindings, rng } from '../support/random.js';

function inputOf(table: BindingTable): TrieInput {
  return { ...table, count: table.count, destination: table.labelIndex };
}

/** Each binding as one comparable line. */
function lines(c: TrieInput): string[] {
  const out: string[] = [];
  for (let i = 0; i < c.count; i++) {
    const a = Array.from(c.addr.subarray(i * 4, i * 4 + 4)).join('.');
    out.push(`${c.family[i]} ${c.protocol[i]} ${c.port[i]} ${a}/${c.prefixLen[i]} -> ${c.destination[i]}`);
  }
  return out.sort();
}

function roundTrip(table: BindingTable) {
  const built = buildTable(inputOf(table));
  const decoded = decodeTable(new Uint32Array(built.bytes.buffer, built.bytes.byteOffset, built.bytes.byteLength / 4));
  expect(lines(decoded)).toEqual(lines(inputOf(table)));
  return built;
}

function tableOf(entries: Array<[string, string, number]>): BindingTable {
  const t = new BindingTable();
  for (const [label, prefix, port] of entries) t.add(label, 'tcp', parsePrefix(prefix) as Prefix, port);
  return t;
}

describe('the table is the binding set: decode(build(x)) = x', () => {
  it('random IPv4, IPv6 and mixed sets', () => {
    for (const families of [[4], [6], [4, 6]] as const) {
      roundTrip(randomBindings(families.length * 31 + families[0], 12_000, [...families]).table);
    }
  });

  it('large mixed sets (equal leaves of different prefixes on both sides of a child: seed 5)', () => {
    for (const seed of [5, 6]) roundTrip(randomBindings(seed, 50_000).table);
  });

  it('many small sets (/0, hosts, lone prefixes, terminals, skips)', () => {
    for (let seed = 1; seed < 200; seed++) {
      roundTrip(randomBindings(seed, 1 + (seed % 40), seed % 3 === 0 ? [6] : seed % 3 === 1 ? [4] : [4, 6]).table);
    }
  });

  it('keeps bindings no address reaches (tiled by longer prefixes), and lists only those', () => {
    const built = roundTrip(
      tableOf([
        ['a', '198.51.100.0/24', 0],
        ['b', '198.51.100.0/25', 0],
        ['c', '198.51.100.128/26', 0],
        ['d', '198.51.100.192/26', 0],
        ['e', '0.0.0.0/0', 80],
        ['f', '0.0.0.0/1', 80],
        ['g', '128.0.0.0/1', 80],
        ['h', '2001:db8::/32', 443],
        ['i', '2001:db8::/33', 443],
        ['j', '2001:db8:8000::/33', 443],
        ['k', '::/0', 443],
        ['l', '203.0.113.0/24', 0], // only partly covered: reachable
        ['m', '203.0.113.0/25', 0],
      ]),
    );
    // a (by b, c, d), e (by f, g), h (by i, j); k still answers outside 2001:db8::/32.
    expect(built.shadowed).toBe(3);
  });

  it('dense nested sets where many prefixes are tiled', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const r = rng(seed);
      const t = new BindingTable();
      const seen = new Set<string>();
      for (let n = 0; n < 400; n++) {
        const len = 20 + Math.floor(r() * 7);
        const addr = (0xc6336000 | (Math.floor(r() * 4096) << 0)) & (0xffffffff << (32 - len));
        const text = `${addr >>> 24}.${(addr >>> 16) & 255}.${(addr >>> 8) & 255}.${addr & 255}/${len}`;
        const port = r() < 0.5 ? 0 : 443;
        if (seen.has(`${text} ${port}`)) continue;
        seen.add(`${text} ${port}`);
        t.add(`s${n % 5}`, 'tcp', parsePrefix(text) as Prefix, port);
      }
      const built = roundTrip(t);
      if (seed === 1) expect(built.shadowed).toBeGreaterThan(0);
    }
  });
});
