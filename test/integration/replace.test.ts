/**
 * A full replace whose table outgrows the program (a growth: new program,
 * new generation map) while it frees a destination: everything after the
 * switch must hold, and a command that switched reports success.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TestNamespace, isRoot } from '../support/netns.js';

/** n distinct /32 bindings scattered over 10.0.0.0/8 (an odd multiplier permutes 2^24), labelled `label`, as a desired-state file. */
function stateFile(dir: string, n: number, label: string): string {
  const bindings = [];
  for (let i = 0; i < n; i++) {
    const h = Math.imul(i, 0x9e3779b1) & 0xffffff;
    bindings.push({ label, protocol: 'tcp', prefix: `10.${(h >> 16) & 255}.${(h >> 8) & 255}.${h & 255}/32`, port: 0 });
  }
  const file = path.join(dir, `state-${n}-${label}.json`);
  fs.writeFileSync(file, JSON.stringify({ bindings }));
  return file;
}

describe.skipIf(!isRoot)('replace with growth', () => {
  let ns: TestNamespace;
  let dir: string;
  beforeEach(() => {
    ns = TestNamespace.create();
    ns.ok(['load']);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-replace-'));
  });
  afterEach(() => {
    ns.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('grows the table while a label disappears: exit 0, the new set in force, the freed label gone; a reused id starts its counters at zero', () => {
    ns.ok(['bind', 'a', 'tcp', '192.0.2.200', '0']);
    // Traffic counted against `a` (a miss: no socket), so its counters are non-zero before it is freed.
    expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.200', port: 80 }])).toEqual(['refused']);
    const before = ns.json<{ destinations: Array<{ label: string; id: number; stats: { misses: string } }> }>(['status']);
    const a = before.destinations.find((d) => d.label === 'a')!;
    expect(Number(a.stats.misses)).toBeGreaterThan(0);

    const r = ns.cli(['load-bindings', stateFile(dir, 100_000, 'big'), '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ bindings: 100_000, added: 100_000, removed: 1 });
    const after = ns.json<{ table: { bindingCount: number; capacityRows: number }; destinations: Array<{ label: string; id: number; stats: { misses: string; lookups: string } }> }>(['status']);
    expect(after.table.bindingCount).toBe(100_000);
    expect(after.table.capacityRows).toBeGreaterThan(1 << 16); // it grew
    expect(after.destinations.map((d) => d.label)).toEqual(['big']);

    // And back down, freeing `big`, with a new label that takes the id `a` had: its counters are its own, not a's.
    const back = ns.cli(['load-bindings', stateFile(dir, 10, 'small'), '--json']);
    expect(back.stderr).toBe('');
    expect(back.code).toBe(0);
    const last = ns.json<{ destinations: Array<{ label: string; id: number; stats: { misses: string; lookups: string } }> }>(['status']).destinations;
    expect(last.map((d) => [d.label, d.id])).toEqual([['small', a.id]]);
    expect(last[0]!.stats).toMatchObject({ misses: '0', lookups: '0' });
  });
});
