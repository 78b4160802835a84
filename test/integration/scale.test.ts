import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TestNamespace, isRoot } from '../support/netns.js';
import { randomBindings, randomQueries, rng } from '../support/random.js';
import { ReferenceLpm } from '../../src/bindings/reference.js';
import { type Prefix, formatAddress, parseAddress, parsePrefix } from '../../src/net/address.js';

describe.skipIf(!isRoot)('dispatcher at scale', () => {
  let ns: TestNamespace;
  let dir: string;
  beforeEach(() => {
    ns = TestNamespace.create();
    ns.ok(['load']);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-scale-'));
  });
  afterEach(() => {
    ns.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('load-bindings of 100K bindings, then `lookup -` agrees with the reference LPM on 10K random queries', () => {
    const set = randomBindings(2024, 100_000);
    const file = path.join(dir, 'bindings.json');
    fs.writeFileSync(file, JSON.stringify({ bindings: [...set.table] }));
    const loaded = ns.json<{ bindings: number }>(['load-bindings', file]);
    expect(loaded.bindings).toBe(100_000);
    expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toHaveLength(100_000);

    const queries = randomQueries(7, set, 10_000);
    const input = queries.map((q) => `${q.protocol} ${formatAddress(q.address.family, q.address.words)} ${q.port}`).join('\n');
    const answers = ns
      .ok(['lookup', '-', '--json'], input)
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { label: string | null; binding: { prefix: string; port: number } | null });
    expect(answers).toHaveLength(queries.length);

    const reference = new ReferenceLpm(set.table);
    let matched = 0;
    queries.forEach((q, k) => {
      const want = reference.lookup(q.protocol, q.address, q.port);
      const got = answers[k]!;
      const what = `query ${k}: ${input.split('\n')[k]}`;
      if (!want) {
        expect(got.label, what).toBeNull();
        return;
      }
      matched++;
      const b = set.table.binding(want.index);
      expect(got.label, what).toBe(b.label);
      expect(got.binding, what).toEqual(expect.objectContaining({ prefix: b.prefix, port: b.port }));
    });
    expect(matched).toBeGreaterThan(3_000);
  });

  it('bind and unbind change a 100K table in place; the set read back and the answers are the new ones', () => {
    const set = randomBindings(77, 100_000, [4]);
    const file = path.join(dir, 'bindings.json');
    fs.writeFileSync(file, JSON.stringify({ bindings: [...set.table] }));
    ns.ok(['load-bindings', file]);
    let expected = set.table;
    let inPlace = 0;
    const r = rng(3);
    for (let k = 0; k < 20; k++) {
      const add = k % 2 === 0;
      const i = Math.floor(r() * expected.count);
      const b = add
        ? { label: `new${k % 3}`, protocol: 'tcp' as const, prefix: `198.18.${k}.${1 + Math.floor(r() * 250)}/32`, port: 0 }
        : expected.binding(i);
      const result = ns.json<{ inPlace: boolean }>([add ? 'bind' : 'unbind', b.label, b.protocol, b.prefix, String(b.port)]);
      if (result.inPlace) inPlace++;
      if (add) {
        expect(result.inPlace, `bind ${JSON.stringify(b)}`).toBe(true);
        expected = expected.without(-1);
        expected.add(b.label, b.protocol, parsePrefix(b.prefix) as Prefix, b.port);
      } else {
        expected = expected.without(i);
      }
      const answer = ns.json<{ label: string | null }>(['lookup', b.protocol, b.prefix.split('/')[0]!, String(b.port || 80)]);
      const want = new ReferenceLpm(expected).lookup(b.protocol, parseAddress(b.prefix.split('/')[0]!)!, b.port || 80);
      expect(answer.label).toBe(want ? expected.label(want.index) : null);
    }
    expect(inPlace).toBeGreaterThan(14); // the binds, and unbinds of prefixes no shorter than their trie's direct table
    const read = ns.json<{ bindings: Array<Record<string, unknown>> }>(['bindings']).bindings.map((b) => JSON.stringify(b)).sort();
    expect(read).toEqual([...expected].map((b) => JSON.stringify(b)).sort());
  });
});
