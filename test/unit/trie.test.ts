import { describe, expect, it } from 'vitest';
import { BindingTable, IPPROTO } from '../../src/bindings/binding.js';
import { ReferenceLpm } from '../../src/bindings/reference.js';
import { buildTable, type TrieInput } from '../../src/trie/builder.js';
import { ROOT_BUCKETS, ROOT_WORD, leafDestination, leafPrefixLen, rootSlot } from '../../src/trie/layout.js';
import { decodeTable } from '../../src/trie/decoder.js';
import { parseAddress, parsePrefix, type Prefix } from '../../src/net/address.js';
import { walkTable } from '../support/walk.js';
import { randomBindings, randomQueries, rng } from '../support/random.js';

/** Destination id = label index, enough to tell bindings apart by label. */
function inputOf(table: BindingTable): TrieInput {
  return { ...table, count: table.count, destination: table.labelIndex };
}

function check(table: BindingTable, querySeed: number, queries: number, bases = randomBindings(0, 0).bases) {
  const built = buildTable(inputOf(table));
  const ref = new ReferenceLpm(table);
  let hits = 0;
  for (const q of randomQueries(querySeed, { table, bases }, queries)) {
    const want = ref.lookup(q.protocol, q.address, q.port);
    const got = walkTable(built.bytes, IPPROTO[q.protocol], q.address, q.port).leaf;
    const gotDest = leafDestination(got);
    if (want === undefined) {
      expect(gotDest, JSON.stringify(q)).toBeUndefined();
    } else {
      hits++;
      expect(gotDest, JSON.stringify(q)).toBe(table.labelIndex[want.index]);
      expect(leafPrefixLen(got)).toBe(table.prefixLen[want.index]);
    }
  }
  return { built, hits };
}

describe('trie builder against the reference LPM', () => {
  for (const [name, families] of [['IPv4', [4]], ['IPv6', [6]], ['mixed', [4, 6]]] as const) {
    it(`agrees on 20K random queries over 12K ${name} bindings`, () => {
      const set = randomBindings(name.length * 7 + 1, 12_000, [...families]);
      const { hits } = check(set.table, 99, 20_000, set.bases);
      expect(hits).toBeGreaterThan(5_000);
    });
  }

  it('agrees on many small sets (edge shapes: /0, hosts, single prefixes)', () => {
    for (let seed = 1; seed < 200; seed++) {
      const set = randomBindings(seed, 1 + (seed % 40), seed % 3 === 0 ? [6] : seed % 3 === 1 ? [4] : [4, 6]);
      check(set.table, seed * 13, 300, set.bases);
    }
  });

  it('puts spread host routes in a bucket table (one row a slot), and agrees with the reference', () => {
    const r = rng(11);
    const table = new BindingTable();
    const seen = new Set<number>();
    while (table.count < 20_000) {
      const a = Math.floor(r() * 2 ** 32) >>> 0;
      if (seen.has(a)) continue;
      seen.add(a);
      table.add(`s${table.count % 7}`, 'tcp', { family: 4, words: [a, 0, 0, 0], length: 32 }, table.count % 3 === 0 ? 443 : 0);
    }
    const built = buildTable(inputOf(table));
    const root = new DataView(built.bytes.buffer).getUint32((ROOT_WORD + rootSlot(4, 6, 0)) * 4, true);
    expect(root & ROOT_BUCKETS).not.toBe(0);
    const ref = new ReferenceLpm(table);
    let hits = 0;
    for (let k = 0; k < 20_000; k++) {
      const address = k % 2 ? { family: 4 as const, words: [Math.floor(r() * 2 ** 32) >>> 0, 0, 0, 0] as [number, number, number, number] } : table.prefix(Math.floor(r() * table.count));
      const port = k % 3 ? 443 : 80;
      const want = ref.lookup('tcp', address, port);
      const got = walkTable(built.bytes, 6, address, port).leaf;
      expect(leafDestination(got)).toBe(want === undefined ? undefined : table.labelIndex[want.index]);
      if (want) hits++;
    }
    expect(hits).toBeGreaterThan(5_000);
    expect(decodeTable(new Uint32Array(built.bytes.buffer, built.bytes.byteOffset, built.bytes.byteLength / 4)).count).toBe(table.count);
  });

  it('uses skip nodes so a lone IPv6 host costs few nodes', () => {
    const table = new BindingTable();
    table.add('cdn', 'tcp', parsePrefix('2001:db8::/32') as Prefix, 0);
    table.add('api', 'tcp', parsePrefix('2001:db8:1:2:3:4:5:6/128') as Prefix, 0);
    const built = buildTable(inputOf(table));
    expect(built.nodeCount).toBeLessThanOrEqual(4);
    const q = (a: string) => leafDestination(walkTable(built.bytes, 6, parseAddress(a)!, 443).leaf);
    expect(q('2001:db8:1:2:3:4:5:6')).toBe(1);
    expect(q('2001:db8:1:2:3:4:5:7')).toBe(0);
    expect(q('2001:db9::1')).toBeUndefined();
  });

  it('follows system.md precedence', () => {
    const table = new BindingTable();
    table.add('tls', 'tcp', parsePrefix('198.51.100.0/24') as Prefix, 443);
    table.add('spectrum', 'tcp', parsePrefix('198.51.100.4/32') as Prefix, 0);
    table.add('exact', 'tcp', parsePrefix('198.51.100.8/30') as Prefix, 80);
    table.add('any', 'tcp', parsePrefix('198.51.100.8/30') as Prefix, 0);
    const built = buildTable(inputOf(table));
    const label = (a: string, port: number, proto = 6) => {
      const d = leafDestination(walkTable(built.bytes, proto, parseAddress(a)!, port).leaf);
      return d === undefined ? undefined : table.labels[d];
    };
    expect(label('198.51.100.4', 443)).toBe('spectrum');
    expect(label('198.51.100.5', 443)).toBe('tls');
    expect(label('198.51.100.9', 80)).toBe('exact');
    expect(label('198.51.100.9', 81)).toBe('any');
    expect(label('198.51.100.9', 80, 17)).toBeUndefined();
    expect(label('198.51.101.1', 443)).toBeUndefined();
  });
});
