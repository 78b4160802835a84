import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseDesiredState, type DesiredState } from '../../src/desired/state.js';
import { IndexedState, applyDelta, diffStates, indexedCopy, stateDigest } from '../../src/protocol/state.js';
import { IPPROTO } from '../../src/bindings/binding.js';
import { parsePrefix, type Prefix } from '../../src/net/address.js';
import { parseFrame, encodeFrame, type Frame } from '../../src/protocol/messages.js';
import { checkGuards, type GuardLimits } from '../../src/protocol/guards.js';

const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: ['1-1000'] } };
const state = (bindings: unknown[], extra: Record<string, unknown> = {}): DesiredState => parseDesiredState({ bindings, services: SERVICES, ...extra }, 'test');
const b = (label: string, prefix: string, port = 0, protocol = 'tcp') => ({ label, protocol, prefix, port });

describe('state digest', () => {
  it('is the same for the same meaning, whatever the order and spelling', () => {
    const one = parseDesiredState({ bindings: [b('cdn', '2001:DB8::/32'), b('x', '192.0.2.0/24', 443)], services: { cdn: { tcp: [443, 80] } } }, 'a');
    const two = parseDesiredState({ bindings: [b('x', '192.0.2.0/24', 443), b('cdn', '2001:db8::/32')], services: { cdn: { tcp: [80, '443-443'] } } }, 'b');
    expect(stateDigest(one)).toBe(stateDigest(two));
    expect(stateDigest(one)).toMatch(/^sha256:[0-9a-f]{64}$/);
    const relabelled = parseDesiredState({ bindings: [b('y', '192.0.2.0/24', 443), b('cdn', '2001:db8::/32')], services: { cdn: { tcp: [80, 443] } } }, 'c');
    expect(stateDigest(relabelled)).not.toBe(stateDigest(one));
  });
});

describe('deltas', () => {
  const key = fc.record({ host: fc.integer({ min: 0, max: 63 }), len: fc.constantFrom(24, 26, 28, 32), port: fc.constantFrom(0, 80, 443), label: fc.constantFrom('cdn', 'spectrum') });
  const toBinding = (k: { host: number; len: number; port: number; label: string }) => {
    const host = k.host & (0xff << (32 - k.len) & 0xff);
    return b(k.label, `10.0.0.${host}/${k.len}`, k.port);
  };
  const unique = (bs: ReturnType<typeof toBinding>[]) => [...new Map(bs.map((x) => [`${x.prefix} ${x.port}`, x])).values()];

  it('diff then apply gives the target state (same digest), for random pairs', () => {
    fc.assert(
      fc.property(fc.array(key, { maxLength: 30 }), fc.array(key, { maxLength: 30 }), (xs, ys) => {
        const before = state(unique(xs.map(toBinding)));
        const after = state(unique(ys.map(toBinding)));
        const delta = diffStates(before, after);
        const applied = applyDelta(before, delta);
        expect(stateDigest(applied.state)).toBe(stateDigest(after));
        expect(applied.changes.length).toBe(delta.add.length + delta.remove.length);
      }),
      { numRuns: 300 },
    );
  });

  it('a chain of deltas (some undone and made again) keeps the index, the counts and the digest as a fresh computation gives them', () => {
    // Small address space and many steps: probe chains collide and deletions shift them.
    const op = fc.record({ remove: fc.boolean(), k: key });
    fc.assert(
      fc.property(fc.array(fc.array(op, { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 40 }), (steps) => {
        let live = IndexedState.of(state([]));
        const reference = new Map<string, ReturnType<typeof toBinding>>();
        for (const step of steps) {
          const remove: Array<{ protocol: string; prefix: string; port: number }> = [];
          const add: ReturnType<typeof toBinding>[] = [];
          const touched = new Set<string>();
          for (const { remove: isRemove, k } of step) {
            const x = toBinding(k);
            const id = `${x.prefix} ${x.port}`;
            if (touched.has(id)) continue;
            touched.add(id);
            if (isRemove && reference.has(id)) {
              remove.push({ protocol: 'tcp', prefix: x.prefix, port: x.port });
              reference.delete(id);
            } else if (!isRemove && !reference.has(id)) {
              add.push(x);
              reference.set(id, x);
            }
          }
          const rowsBefore = [...live.bindings];
          const digestBefore = live.digest;
          const made = live.applyDelta({ add: add as never, remove });
          if (step.length % 3 === 0) {
            // Undone: exactly the rows as they were, in the same places; then made again.
            made.undo();
            expect([...live.bindings]).toEqual(rowsBefore);
            expect(live.digest).toBe(digestBefore);
            live.applyDelta({ add: add as never, remove });
          }
          const fresh = IndexedState.of(state([...reference.values()]));
          expect(live.digest).toBe(fresh.digest);
          expect(live.bindings.count).toBe(reference.size);
          for (const x of reference.values()) {
            const at = live.find(IPPROTO.tcp, parsePrefix(x.prefix, false) as Prefix, x.port);
            expect(at).toBeGreaterThanOrEqual(0);
            expect(live.bindings.label(at)).toBe(x.label);
          }
          for (const label of ['cdn', 'spectrum']) expect(live.labelCount(label)).toBe([...reference.values()].filter((x) => x.label === label).length);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('refuses a removal of what is not bound and an add of what is, naming the entry', () => {
    const s = state([b('cdn', '192.0.2.0/24')]);
    expect(() => applyDelta(s, { add: [], remove: [{ protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 }] })).toThrow(/delta: remove\[0\] \(tcp 192\.0\.2\.0\/25 port 0\): no such binding/);
    expect(() => applyDelta(s, { add: [b('spectrum', '192.0.2.0/24')], remove: [] })).toThrow(/already bound to cdn; remove it in the same delta to relabel/);
    expect(() => applyDelta(s, { add: [b('spectrum', '192.0.2.1/24')], remove: [] })).toThrow(/host bits/);
    const relabel = applyDelta(s, { add: [b('spectrum', '192.0.2.0/24')], remove: [{ protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }] });
    expect([...relabel.state.bindings]).toEqual([b('spectrum', '192.0.2.0/24')]);
    expect([...s.bindings]).toEqual([b('cdn', '192.0.2.0/24')]); // the input is not changed
  });
});

describe('guards', () => {
  const many = (label: string, n: number, from = 0) => Array.from({ length: n }, (_, i) => b(label, `10.${(from + i) >> 8}.${(from + i) & 255}.0/24`));
  /** The guards on before → after, checked both ways: over the whole states and over the delta between them (the same findings). */
  const guards = (before: DesiredState | undefined, after: DesiredState, options: { override?: boolean; limits?: GuardLimits } = {}) => {
    const whole = checkGuards(before && IndexedState.of(before), IndexedState.of(after), options);
    if (before) {
      const live = indexedCopy(before);
      const made = live.applyDelta(diffStates(before, after));
      const byDelta = checkGuards(made, live, options);
      const sorted = (fs: typeof whole) => fs.map((f) => ({ ...f, entries: [...f.entries].sort() }));
      expect(sorted(byDelta)).toEqual(sorted(whole));
    }
    return whole;
  };
  it('withdrawal budget: 5 % or 50 bindings of a service, whichever is larger, or emptying it', () => {
    const before = state([...many('cdn', 2000), ...many('spectrum', 10, 5000)]);
    // 100 of 2000 (5 %) is within the budget; 101 is not.
    expect(guards(before, state([...many('cdn', 1900, 100), ...many('spectrum', 10, 5000)]))).toEqual([]);
    const over = guards(before, state([...many('cdn', 1899, 101), ...many('spectrum', 10, 5000)]));
    expect(over.map((f) => f.code)).toEqual(['EWITHDRAWAL']);
    expect(over[0]!.entries).toEqual(['cdn: 101 of 2000 bindings removed (budget 100)']);
    // Emptying a small service trips it too; moving bindings to another label counts as removing them.
    const emptied = guards(before, state(many('cdn', 2000)));
    expect(emptied[0]!.entries).toEqual(['spectrum: 10 of 10 bindings removed (the service would have none left)']);
    const moved = guards(before, state([...many('cdn', 2000), ...many('dns', 10, 5000)]));
    expect(moved[0]!.entries).toEqual(['spectrum: 10 of 10 bindings removed (the service would have none left)']);
    expect(guards(before, state(many('cdn', 2000)), { override: true })).toEqual([]);
    expect(guards(undefined, state(many('cdn', 1)))).toEqual([]); // the first state an agent gets
  });

  it('refuses a binding on a plaintext port inside an HTTPS-only range, and too many bindings', () => {
    const https = { https_only: { prefixes: ['192.0.2.0/24'] } };
    const s = state([b('cdn', '192.0.2.0/24', 443), b('cdn', '192.0.2.8/29', 80), b('cdn', '198.51.100.0/24', 80)], https);
    const f = guards(undefined, s);
    expect(f.map((x) => x.code)).toEqual(['EINVARIANT']);
    expect(f[0]!.entries).toEqual(['cdn tcp 192.0.2.8/29 port 80 (inside HTTPS-only 192.0.2.0/24)']);
    expect(guards(undefined, s, { limits: { maxBindings: 2, withdrawalShare: 0.05, withdrawalMin: 50 } }).map((x) => x.code)).toEqual(['EINVARIANT', 'ECAPACITY']);
    // The same binding arriving in a delta is found from the delta alone.
    const before = state([b('cdn', '192.0.2.0/24', 443), b('cdn', '198.51.100.0/24', 80)], https);
    expect(guards(before, s)[0]!.entries).toEqual(['cdn tcp 192.0.2.8/29 port 80 (inside HTTPS-only 192.0.2.0/24)']);
  });
});

describe('frames', () => {
  const digest = `sha256:${'0'.repeat(64)}`;
  const frames: Frame[] = [
    { type: 'hello', protocol: 1, agent_id: 'edge-1', agent_version: '0.1.0', capabilities: ['delta'], have: null, refused: { epoch: 'e1', version: 7 } },
    { type: 'snapshot', epoch: 'e1', version: 8, digest, state: { bindings: [] } },
    { type: 'delta', epoch: 'e1', version: 9, from_version: 8, digest, add: [b('cdn', '192.0.2.0/24')], remove: [{ protocol: 'tcp', prefix: '10.0.0.0/8', port: 0 }], override: { version: 9, withdrawal: true } },
    { type: 'up-to-date', epoch: 'e1', version: 9 },
    { type: 'ack', epoch: 'e1', version: 9, digest },
    { type: 'nack', epoch: 'e1', version: 9, code: 'EWITHDRAWAL', message: 'too much', details: ['cdn: 101 of 2000'] },
    { type: 'heartbeat', epoch: 'e1', version: 9, digest, age_ms: 1200 },
  ];
  it('round-trips every kind', () => {
    for (const f of frames) expect(parseFrame(encodeFrame(f))).toEqual(f);
  });
  it('names what is wrong, and refuses an oversized frame unparsed', () => {
    expect(() => parseFrame('{')).toThrow(/frame: not JSON/);
    expect(() => parseFrame('{"type":"launch"}')).toThrow(/frame type: must be one of hello, snapshot/);
    expect(() => parseFrame(JSON.stringify({ ...frames[4], extra: 1 }))).toThrow(/frame ack\.extra: unknown field/);
    expect(() => parseFrame(JSON.stringify({ ...frames[4], version: -1 }))).toThrow(/frame ack\.version: must be a non-negative integer/);
    expect(() => parseFrame(JSON.stringify({ ...frames[2], remove: [{ protocol: 'tcp', prefix: 'x', port: 'eighty' }] }))).toThrow(/frame delta\.remove\[0\]\.port/);
    expect(() => parseFrame(JSON.stringify({ ...frames[5], code: 'EWHATEVER' }))).toThrow(/frame nack\.code: must be one of/);
    expect(() => parseFrame(JSON.stringify(frames[1]), 10)).toThrow(/more than the 10 allowed/);
  });
  it('takes only own fields: a type or field that is a name of Object.prototype is refused (issue 15)', () => {
    // The old shape checks used `in`: {"type": "constructor"} passed, a "toString" field too.
    const names = Object.getOwnPropertyNames(Object.prototype);
    fc.assert(
      fc.property(fc.constantFrom(...frames), fc.constantFrom(...names), fc.boolean(), (f, name, asType) => {
        const text = asType ? JSON.stringify({ ...f, type: name }) : JSON.stringify(f).replace(/^\{/, `{${JSON.stringify(name)}:{},`);
        expect(() => parseFrame(text)).toThrow(asType ? /^frame type: must be one of/ : new RegExp(`^frame ${f.type}\\.${name}: unknown field$`));
      }),
      { numRuns: 500 },
    );
  });
  it('never throws anything but a named error on arbitrary input', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), fc.constantFrom(...frames).chain((f) => fc.record({ k: fc.constantFrom(...Object.keys(f)), v: fc.jsonValue() }).map(({ k, v }) => JSON.stringify({ ...f, [k]: v })))), (text) => {
        try {
          parseFrame(text);
        } catch (err) {
          expect((err as Error).message).toMatch(/^frame/);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
