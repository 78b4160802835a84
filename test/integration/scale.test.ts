import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TestNamespace, isRoot } from '../support/netns.js';
import { randomBindings, randomQueries } from '../support/random.js';
import { ReferenceLpm } from '../../src/bindings/reference.js';
import { formatAddress } from '../../src/net/address.js';

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
});
