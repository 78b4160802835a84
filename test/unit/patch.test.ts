import { describe, expect, it } from 'vitest';
import { BindingTable, IPPROTO } from '../../src/bindings/binding.js';
import { ReferenceLpm } from '../../src/bindings/reference.js';
import { buildTable, type TrieInput } from '../../src/trie/builder.js';
import { decodeTable } from '../../src/trie/decoder.js';
import { applyPatch, planPatch } from '../../src/trie/patch.js';
import { ROOT_BITS_SHIFT, ROOT_BUCKETS, ROOT_WORD, leafDestination, leafPrefixLen, rootSlot, WORDS_PER_ROW } from '../../src/trie/layout.js';
import { parsePrefix, type Prefix } from '../../src/net/address.js';
import { walkTable } from '../support/walk.js';
import { randomBindings, randomQueries, rng } from '../support/random.js';

/** Destination ids by label, stable across the copies BindingTable.without() makes. */
const ids = new Map<string, number>();
const idOf = (label: string) => ids.get(label) ?? (ids.set(label, ids.size), ids.size - 1);

function inputOf(table: BindingTable): TrieInput {
  const destination = new Uint16Array(table.count);
  for (let i = 0; i < table.count; i++) destination[i] = idOf(table.label(i));
  return { ...table, count: table.count, destination };
}

function lines(c: TrieInput): string[] {
  const out: string[] = [];
  for (let i = 0; i < c.count; i++) {
    out.push(`${c.family[i]} ${c.protocol[i]} ${c.port[i]} ${Array.from(c.addr.subarray(i * 4, i * 4 + 4)).join('.')}/${c.prefixLen[i]} -> ${c.destination[i]}`);
  }
  return out.sort();
}

/** A table of `capacity` rows holding `set`, as a live table would be. */
function liveTable(set: BindingTable, capacity: number): Uint32Array {
  const built = buildTable(inputOf(set), 1n);
  const table = new Uint32Array(capacity * WORDS_PER_ROW);
  table.set(new Uint32Array(built.bytes.buffer, built.bytes.byteOffset, built.bytes.byteLength / 4));
  return table;
}

/** Applies bind (label) or unbind (null) to the expected set and, in place or by a full build, to the table. */
function change(table: Uint32Array, expected: BindingTable, label: string | null, protocol: 'tcp' | 'udp', prefix: Prefix, port: number) {
  const at = expected.indexOf(protocol, prefix, port);
  const dest = label === null ? null : idOf(label);
  const plan = planPatch(table, table.length / WORDS_PER_ROW, { family: prefix.family, protocol: IPPROTO[protocol], port, addr: prefix.words, prefixLen: prefix.length }, dest);
  const previous = at < 0 ? null : idOf(expected.label(at));
  let next = expected;
  if (label === null) {
    if (at >= 0) next = expected.without(at);
  } else {
    next = at >= 0 ? expected.without(at) : expected;
    if (next === expected) next = expected.without(-1);
    next.add(label, protocol, prefix, port);
  }
  if (plan.kind === 'full') {
    const rebuilt = liveTable(next, table.length / WORDS_PER_ROW);
    table.set(rebuilt);
  } else {
    expect(plan.previous).toBe(previous);
    if (plan.kind === 'patch') applyPatch(table, plan);
  }
  return { next, kind: plan.kind };
}

function agree(table: Uint32Array, expected: BindingTable, seed: number, bases: ReturnType<typeof randomBindings>['bases']) {
  const bytes = new Uint8Array(table.buffer, table.byteOffset, table.byteLength);
  expect(lines(decodeTable(table))).toEqual(lines(inputOf(expected)));
  const ref = new ReferenceLpm(expected);
  for (const q of randomQueries(seed, { table: expected, bases }, 2000)) {
    const want = ref.lookup(q.protocol, q.address, q.port);
    const got = walkTable(bytes, IPPROTO[q.protocol], q.address, q.port).leaf;
    expect(leafDestination(got), JSON.stringify(q)).toBe(want === undefined ? undefined : idOf(expected.label(want.index)));
    if (want) expect(leafPrefixLen(got)).toBe(expected.prefixLen[want.index]);
  }
}

/** A /24 with one /25 bound below it, among enough /16s for a direct table wider than /16. */
function tilingSet(): BindingTable {
  const set = new BindingTable();
  for (let i = 0; i < 200; i++) set.add('bulk', 'tcp', parsePrefix(`10.${i}.0.0/16`) as Prefix, 0);
  set.add('wide', 'tcp', parsePrefix('198.51.100.0/24') as Prefix, 0);
  set.add('half', 'tcp', parsePrefix('198.51.100.0/25') as Prefix, 0);
  return set;
}

const TILING_STEPS = [
  ['other', '198.51.100.128/25'], // tiles the /24: listed
  ['other', '198.51.100.128/26'],
  [null, '198.51.100.128/25'], // the /24 answers again
  ['again', '198.51.100.128/25'],
  [null, '198.51.100.0/24'], // unbinding a listed binding
  [null, '198.51.100.0/25'],
] as const;

describe('in-place changes to a live table', () => {
  it('a run of random binds, relabels and unbinds decodes and answers like the set they make', () => {
    for (const families of [[4], [6], [4, 6]] as const) {
      const start = randomBindings(17 + families.length * 3 + families[0], 3000, [...families]);
      const pool = randomBindings(99 + families[0], 3000, [...families]).table;
      let expected = start.table;
      const table = liveTable(expected, 1 << 16);
      const r = rng(5);
      const kinds: Record<string, number> = {};
      for (let step = 0; step < 900; step++) {
        const x = r();
        let i: number;
        let src: BindingTable;
        if (x < 0.4) [src, i] = [pool, Math.floor(r() * pool.count)];
        else [src, i] = [expected, Math.floor(r() * expected.count)];
        const b = src.binding(i);
        const prefix = parsePrefix(b.prefix) as Prefix;
        const label = x < 0.7 ? expected.labels[Math.floor(r() * expected.labels.length)]! : null;
        const { next, kind } = change(table, expected, label, b.protocol, prefix, b.port);
        kinds[kind] = (kinds[kind] ?? 0) + 1;
        expected = next;
        if (step % 300 === 299) agree(table, expected, step, start.bases);
      }
      agree(table, expected, 7, start.bases);
      expect(kinds.patch ?? 0).toBeGreaterThan(600);
    }
  });

  it('changes host routes of a bucket table', () => {
    const r = rng(21);
    let expected = new BindingTable();
    const host = () => ({ family: 4 as const, words: [Math.floor(r() * 2 ** 32) >>> 0, 0, 0, 0] as [number, number, number, number], length: 32 });
    while (expected.count < 5000) expected.add(`h${expected.count % 4}`, 'tcp', host(), 0);
    const table = liveTable(expected, 1 << 16);
    let patched = 0;
    for (let step = 0; step < 400; step++) {
      const unbind = step % 3 === 0;
      const prefix = unbind ? expected.prefix(Math.floor(r() * expected.count)) : host();
      const c = change(table, expected, unbind ? null : `h${step % 5}`, 'tcp', prefix, 0);
      if (c.kind === 'patch') patched++;
      expected = c.next;
    }
    expect(patched).toBeGreaterThan(350);
    agree(table, expected, 5, { 4: [[0, 0, 0, 0]], 6: [[0x20010db8, 0, 0, 0]] });
  });

  it('changes slots of a bucket table under shorter prefixes: rows, their shorter entry, slots emptied and refilled', () => {
    const r = rng(23);
    let expected = new BindingTable();
    const u32 = () => Math.floor(r() * 2 ** 32) >>> 0;
    const prefix = (length: number) => ({ family: 4 as const, words: [(u32() & (length ? (0xffffffff << (32 - length)) >>> 0 : 0)) >>> 0, 0, 0, 0] as [number, number, number, number], length });
    while (expected.count < 6000) {
      const p = prefix(32);
      if (expected.indexOf('tcp', p, 0) < 0) expected.add(`h${expected.count % 4}`, 'tcp', p, 0);
    }
    for (let k = 0; k < 40; k++) {
      const p = prefix(4 + (k % 7));
      if (expected.indexOf('tcp', p, 0) < 0) expected.add(`wide${k % 3}`, 'tcp', p, 0);
    }
    const table = liveTable(expected, 1 << 16);
    const root = table[ROOT_WORD + rootSlot(4, 6, 0)]!;
    expect(root & ROOT_BUCKETS).not.toBe(0);
    const bits = root >>> ROOT_BITS_SHIFT;
    let patched = 0;
    for (let step = 0; step < 500; step++) {
      // Unbind existing ones (slots empty out to their shorter entry or to nothing), bind new ones longer than the slots.
      const unbind = step % 2 === 0;
      const p = unbind ? expected.prefix(Math.floor(r() * expected.count)) : prefix(bits + 1 + Math.floor(r() * (32 - bits)));
      const c = change(table, expected, unbind ? null : `n${step % 5}`, 'tcp', p, 0);
      if (c.kind === 'patch') patched++;
      expected = c.next;
      if (step % 100 === 99) agree(table, expected, step, { 4: [[0, 0, 0, 0]], 6: [[0x20010db8, 0, 0, 0]] });
    }
    expect(patched).toBeGreaterThan(450);
  });

  it('hides and lists bindings a change tiles over, and shows them again', () => {
    let expected = tilingSet();
    const table = liveTable(expected, 1 << 16);
    const p = (t: string) => parsePrefix(t) as Prefix;
    for (const [label, prefix] of TILING_STEPS) {
      const r = change(table, expected, label, 'tcp', p(prefix), 0);
      expect(r.kind, `${label} ${prefix}`).toBe('patch');
      expected = r.next;
      agree(table, expected, 3, { 4: [[0xc6336400, 0, 0, 0], [0x0a000000, 0, 0, 0]], 6: [[0x20010db8, 0, 0, 0]] });
    }
  });

  it('a table cut short after any of a patch\'s writes decodes to the old set or the new one', () => {
    // Tiling changes first (they list and unlist), then random ones.
    let expected = tilingSet();
    let table = liveTable(expected, 1 << 15);
    let cuts = 0;
    for (const [label, prefix] of TILING_STEPS) {
      const r = changeCheckingCuts(table, expected, label, 'tcp', parsePrefix(prefix) as Prefix, 0);
      expected = r.next;
      cuts += r.cuts;
    }
    const start = randomBindings(41, 1000, [4, 6]);
    const pool = randomBindings(42, 400, [4, 6]).table;
    expected = start.table;
    table = liveTable(expected, 1 << 15);
    const r = rng(9);
    for (let step = 0; step < 100; step++) {
      const src = r() < 0.5 ? pool : expected;
      const b = src.binding(Math.floor(r() * src.count));
      const label = r() < 0.7 ? 'cut' + Math.floor(r() * 3) : null;
      const c = changeCheckingCuts(table, expected, label, b.protocol, parsePrefix(b.prefix) as Prefix, b.port);
      expected = c.next;
      cuts += c.cuts;
    }
    expect(cuts).toBeGreaterThan(250);
  });
});

/** Makes a change like change(), first checking every prefix of its writes decodes to the old or the new set. */
function changeCheckingCuts(table: Uint32Array, expected: BindingTable, label: string | null, protocol: 'tcp' | 'udp', prefix: Prefix, port: number) {
  const before = lines(inputOf(expected)).join('\n');
  const plan = planPatch(table, table.length / WORDS_PER_ROW, { family: prefix.family, protocol: IPPROTO[protocol], port, addr: prefix.words, prefixLen: prefix.length }, label === null ? null : idOf(label));
  const { next } = change(table.slice(), expected, label, protocol, prefix, port);
  if (plan.kind !== 'patch') return { next: change(table, expected, label, protocol, prefix, port).next, cuts: 0 };
  const after = lines(inputOf(next)).join('\n');
  for (let k = 0; k <= plan.stores.length; k++) {
    const copy = table.slice();
    applyPatch(copy, { ...plan, stores: plan.stores.slice(0, k) });
    const got = lines(decodeTable(copy)).join('\n');
    expect(got === before || got === after, `${label} ${protocol} ${prefix.length} ${port}: ${k} of ${plan.stores.length} stores`).toBe(true);
  }
  applyPatch(table, plan);
  return { next, cuts: plan.stores.length + 1 };
}
