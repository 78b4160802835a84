import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TestNamespace, isRoot, CLI } from '../support/netns.js';
import { randomBindings } from '../support/random.js';
import { native } from '../../src/kernel/native.js';
import { ABI_VERSION, META } from '../../src/trie/layout.js';

describe.skipIf(!isRoot)('pinned state survives writers dying and racing', () => {
  let ns: TestNamespace;
  let dir: string;
  beforeEach(() => {
    ns = TestNamespace.create();
    ns.ok(['load']);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-state-'));
  });
  afterEach(() => {
    ns.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const stateDir = () => ns.json<{ stateDir: string }>(['status']).stateDir;

  it('concurrent writers are serialised: no update is lost', async () => {
    const runs = Array.from({ length: 12 }, (_, i) =>
      new Promise<number>((resolve) => {
        const child = spawn(CLI, ['bind', `svc${i}`, 'tcp', `198.51.100.${i * 16}/28`, '0', '--netns', ns.path, '--bpffs', ns.bpffs], { stdio: 'ignore' });
        child.on('exit', (code) => resolve(code ?? -1));
      }),
    );
    expect(await Promise.all(runs)).toEqual(new Array(12).fill(0));
    expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toHaveLength(12);
  });

  it('a writer killed at any point leaves the old or the new binding set, and the next writer proceeds', async () => {
    const small = path.join(dir, 'small.json');
    fs.writeFileSync(small, JSON.stringify({ bindings: [{ label: 'old', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }] }));
    const big = path.join(dir, 'big.json');
    const set = randomBindings(5, 50_000);
    fs.writeFileSync(big, JSON.stringify({ bindings: [...set.table] }));
    for (let attempt = 0; attempt < 8; attempt++) {
      ns.ok(['load-bindings', small]);
      const child = spawn(CLI, ['load-bindings', big, '--netns', ns.path, '--bpffs', ns.bpffs], { stdio: 'ignore' });
      const exited = new Promise((resolve) => child.on('exit', resolve));
      await new Promise((r) => setTimeout(r, 150 + attempt * 180));
      child.kill('SIGKILL');
      await exited;
      const count = ns.json<{ table: { bindingCount: number } }>(['status']).table.bindingCount;
      expect([1, 50_000]).toContain(count);
      const bindings = ns.json<{ bindings: unknown[] }>(['bindings']).bindings;
      expect(bindings).toHaveLength(count);
      // The next writer is not blocked by what the dead one left behind.
      ns.ok(['bind', 'after', 'udp', '203.0.113.0/24', '53']);
      expect(ns.json<{ label: string }>(['lookup', 'udp', '203.0.113.1', '53']).label).toBe('after');
      expect(fs.readdirSync(stateDir()).filter((f) => f.includes('next'))).toEqual([]);
    }
  });

  it('refuses pinned state of another ABI instead of guessing, and changes nothing; load migrates it', () => {
    ns.ok(['bind', 'cdn', 'tcp', '192.0.2.0/24', '0']);
    const meta = native().objGet(path.join(stateDir(), 'meta'));
    try {
      const value = Buffer.alloc(META.size);
      native().mapLookup(meta, Buffer.alloc(4), value);
      const patched = Buffer.from(value);
      patched.writeUInt32LE(99, META.abiVersion);
      native().mapUpdate(meta, Buffer.alloc(4), patched);
      for (const args of [['status'], ['bind', 'x', 'tcp', '198.51.100.0/24', '0'], ['upgrade']]) {
        const r = ns.cli(args);
        expect(r.code, args.join(' ')).not.toBe(0);
        expect(r.stderr, args.join(' ')).toContain(`ABI 99; this version speaks ABI ${ABI_VERSION}`);
      }
      // load is the way on: it migrates the state (abi-migration.test.ts under traffic), bindings kept.
      expect(ns.json<{ migrated: { fromAbi: number; toAbi: number } }>(['load']).migrated).toMatchObject({ fromAbi: 99, toAbi: ABI_VERSION });
      expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toEqual([{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }]);
    } finally {
      fs.closeSync(meta);
    }
  });

  it('a publish interrupted before or after its swap leaves a table_next pin the next writer settles, in-place writes included', () => {
    ns.ok(['bind', 'cdn', 'tcp', '192.0.2.0/24', '0']);
    const dir = stateDir();
    // Killed after the swap: table_next names the live table.
    pinAs(dir, 'table_next', 'table');
    expect(ns.json<{ inPlace: boolean }>(['bind', 'api', 'tcp', '192.0.2.7/32', '0']).inPlace).toBe(true);
    expect(fs.readdirSync(dir).filter((f) => f.includes('next'))).toEqual([]);
    // Killed before the swap: table_next never served (here: some other map).
    pinAs(dir, 'table_next', 'meta');
    expect(ns.json<{ inPlace: boolean }>(['unbind', 'api', 'tcp', '192.0.2.7/32', '0']).inPlace).toBe(true);
    expect(fs.readdirSync(dir).filter((f) => f.includes('next'))).toEqual([]);
    expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toEqual([{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }]);
  });

  it('a growth interrupted before or after its link update is discarded or completed by the next writer', () => {
    ns.ok(['bind', 'cdn', 'tcp', '192.0.2.0/24', '0']);
    const dir = stateDir();
    // Died before BPF_LINK_UPDATE: the *_next objects never served; they go.
    const reuse: Record<string, number> = {};
    for (const name of ['generation', 'sockets', 'destination_stats', 'destinations', 'meta', 'trace']) reuse[name] = native().objGet(path.join(dir, name));
    const loaded = native().loadObject(path.resolve('bpf/dispatcher.o'), reuse);
    for (const fd of Object.values(reuse)) fs.closeSync(fd);
    native().objPin(loaded.programs.switchyard_dispatch!, path.join(dir, 'program_next'));
    pinAs(dir, 'generation_next', 'generation');
    const before = ns.json<{ program: { id: number } }>(['status']).program.id;
    ns.ok(['bind', 'api', 'tcp', '198.51.100.0/24', '0']);
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('_next'))).toEqual([]);
    expect(ns.json<{ program: { id: number } }>(['status']).program.id).toBe(before);

    // Died after it: the link already runs program_next, so it takes the pinned names.
    pinAs(dir, 'program_next', 'program');
    pinAs(dir, 'generation_next', 'generation');
    ns.ok(['bind', 'dns', 'udp', '203.0.113.0/24', '53']);
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('_next'))).toEqual([]);
    expect(ns.json<{ bindings: unknown[] }>(['bindings']).bindings).toHaveLength(3);
    expect(ns.json<{ label: string }>(['lookup', 'udp', '203.0.113.9', '53']).label).toBe('dns');
    for (const fd of [...Object.values(loaded.maps), ...Object.values(loaded.programs)]) fs.closeSync(fd);
  });

  it('native map surface: create, batch update and lookup, mmap, delete', () => {
    const ARRAY = 2;
    const HASH = 1;
    const MMAPABLE = 1 << 10;
    const array = native().mapCreate(ARRAY, 4, 8, 1024, MMAPABLE, 'sy_test_array');
    const hash = native().mapCreate(HASH, 4, 8, 64, 0, 'sy_test_hash');
    try {
      const n = 1024;
      const keys = Buffer.alloc(4 * n);
      const values = Buffer.alloc(8 * n);
      for (let i = 0; i < n; i++) {
        keys.writeUInt32LE(i, i * 4);
        values.writeBigUInt64LE(BigInt(i) * 3n, i * 8);
      }
      expect(native().mapUpdateBatch(array, keys, values, n)).toBe(n);
      const view = new BigUint64Array(native().mmap(array, 8 * n, false));
      expect(view[1000]).toBe(3000n);
      const outKeys = Buffer.alloc(4 * n);
      const outValues = Buffer.alloc(8 * n);
      const token = Buffer.alloc(4);
      const got = native().mapLookupBatch(array, null, token, outKeys, outValues, n);
      expect(got.count).toBe(n);
      expect(outValues.readBigUInt64LE(8 * 7)).toBe(21n);

      const one = Buffer.alloc(8);
      native().mapUpdate(hash, keys.subarray(0, 4), values.subarray(8, 16));
      expect(native().mapLookup(hash, keys.subarray(0, 4), one)).toBe(true);
      expect(one.readBigUInt64LE(0)).toBe(3n);
      expect(native().mapDelete(hash, keys.subarray(0, 4))).toBe(true);
      expect(native().mapDelete(hash, keys.subarray(0, 4))).toBe(false);
      expect(native().mapLookup(hash, keys.subarray(0, 4), one)).toBe(false);
      expect(native().objInfo(hash, 'map')).toMatchObject({ type: HASH, keySize: 4, valueSize: 8, maxEntries: 64, name: 'sy_test_hash' });
      native().unmap(view.buffer as ArrayBuffer);
      expect(view.length).toBe(0); // detached: no use after unmap
    } finally {
      fs.closeSync(array);
      fs.closeSync(hash);
    }
  });

  it('kernel errors carry code, errno and syscall', () => {
    try {
      native().objGet(path.join(ns.bpffs, 'does-not-exist'));
      expect.unreachable();
    } catch (err) {
      expect(err).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'bpf_obj_get' });
    }
  });
});

/** Pins the object pinned at `from` again as `name`, in state directory `dir` (what a killed writer leaves). */
function pinAs(dir: string, name: string, from: string): void {
  const fd = native().objGet(path.join(dir, from));
  try {
    native().objPin(fd, path.join(dir, name));
  } finally {
    fs.closeSync(fd);
  }
}
