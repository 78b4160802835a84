/**
 * The TypeScript mirrors of bpf/switchyard.h (and of the kernel's struct
 * bpf_sk_lookup) against the BTF clang produced for bpf/layout.c.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DESTINATION, DESTINATION_STATS, HEADER, META, NODE, NODE_BYTES, RECORD, ROW_BYTES, SKIP, TERMINAL, TRACE } from '../../src/trie/layout.js';
import { SK_LOOKUP_CTX } from '../../src/dispatcher/lookup.js';

const object = path.resolve('bpf/layout.o');

interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  members?: Array<{ name: string; type_id: number; bits_offset: number }>;
}

function loadBtf(): Map<string, BtfType> | undefined {
  if (!fs.existsSync(object)) return undefined;
  try {
    const dump = JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', object], { encoding: 'utf8' })) as { types: BtfType[] };
    return new Map(dump.types.filter((t) => t.kind === 'STRUCT').map((t) => [t.name, t]));
  } catch {
    return undefined;
  }
}

const btf = loadBtf();

/** Byte offset of each named member of a struct. */
function offsets(name: string): Record<string, number> & { size: number } {
  const t = btf!.get(name);
  if (!t) throw new Error(`struct ${name} not in ${object}`);
  const out: Record<string, number> = { size: t.size! };
  for (const m of t.members ?? []) out[m.name] = m.bits_offset / 8;
  return out as Record<string, number> & { size: number };
}

describe.skipIf(!btf)('layouts mirror bpf/switchyard.h (BTF of bpf/layout.o; needs bpftool and a build)', () => {
  it('sy_node', () => {
    const o = offsets('sy_node');
    expect(o.size).toBe(NODE_BYTES);
    expect([o.vector, o.leafvec, o.child_base, o.leaf_base, o.skip_len, o.inherited]).toEqual(
      [NODE.vectorLo, NODE.leafvecLo, NODE.childBase, NODE.leafBase, NODE.skipLen, NODE.inherited].map((w) => w * 4),
    );
    expect(offsets('sy_row').size).toBe(ROW_BYTES);
    const t = offsets('sy_terminal');
    expect(t.size).toBe(TERMINAL.words * 4);
    expect([t.value, t.mask, t.leaf, t.fallback]).toEqual([TERMINAL.value, TERMINAL.mask, TERMINAL.leaf, TERMINAL.fallback].map((w) => w * 4));
  });

  it('sy_skip_row', () => {
    const s = offsets('sy_skip_row');
    expect(s.size).toBe(ROW_BYTES);
    expect([s.ref, s.inherited, s.value_hi, s.value_lo, s.mask_hi, s.mask_lo, s.skip_len, s.entry]).toEqual(
      [SKIP.ref, SKIP.inherited, SKIP.valueHi, SKIP.valueLo, SKIP.maskHi, SKIP.maskLo, SKIP.skipLen, SKIP.entry].map((w) => w * 4),
    );
  });

  // Byte-offset mirrors: each camelCase field names the C member in snake_case.
  const mirrors: Array<[string, Record<string, number>]> = [
    ['sy_table_header', HEADER],
    ['sy_binding_record', RECORD],
    ['sy_destination', DESTINATION],
    ['sy_destination_stats', DESTINATION_STATS],
    ['sy_meta', META],
    ['sy_trace', TRACE],
    ['bpf_sk_lookup', SK_LOOKUP_CTX],
  ];
  // Members that are not plain named fields in C.
  const cName: Record<string, string> = { 'bpf_sk_lookup.cookie': '(anon)' /* anonymous union with sk */ };
  const snake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

  it.each(mirrors)('%s', (struct, mirror) => {
    const o = offsets(struct);
    for (const [field, value] of Object.entries(mirror)) {
      const member = field === 'size' ? 'size' : (cName[`${struct}.${field}`] ?? snake(field));
      expect(o[member], `${struct}.${member}`).toBe(value);
    }
  });
});

describe('constants mirror bpf/switchyard.h', () => {
  it('every SY_ #define has a TypeScript twin of the same name and value', async () => {
    const layout = (await import('../../src/trie/layout.js')) as unknown as Record<string, number>;
    const header = fs.readFileSync(path.resolve('bpf/switchyard.h'), 'utf8');
    const values = new Map<string, number>();
    for (const m of header.matchAll(/^#define SY_(\w+)\s+(.+?)\s*(?:\/\*.*)?$/gm)) {
      const expr = m[2]!.replace(/\bSY_(\w+)\b/g, (_, name: string) => String(values.get(name))).replace(/\b(0x[0-9a-fA-F]+|\d+)u\b/g, '$1');
      values.set(m[1]!, Number(new Function(`return (${expr}) >>> 0`)()));
    }
    expect(values.size).toBeGreaterThan(15);
    for (const [name, value] of values) expect(layout[name] === undefined ? undefined : layout[name]! >>> 0, name).toBe(value);
  });
});
