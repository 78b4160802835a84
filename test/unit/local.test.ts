import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { LocalLayer } from '../../src/agent/local.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { IndexedState, diffStates, indexedCopy } from '../../src/protocol/state.js';

const b = (label: string, prefix: string, port = 0) => ({ label, protocol: 'tcp' as const, prefix, port });
const state = (bindings: ReturnType<typeof b>[]) => IndexedState.of(parseDesiredState({ bindings }, 'test'));
const kernel = (layer: LocalLayer, cp: IndexedState) => [...layer.effective(cp, undefined).state.bindings].map((x) => `${x.label} ${x.prefix} ${x.port}`).sort();
const by = { uid: 0, pid: 1 };

describe('local overrides', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-local-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('bind and mask sit on top of the control plane; removing them brings its bindings back; they persist', () => {
    const cp = state([b('cdn', '192.0.2.0/24'), b('cdn', '198.51.100.0/24', 443)]);
    const layer = new LocalLayer(dir);
    const bind = layer.change(cp, { bind: b('spectrum', '198.51.100.0/24', 443) }, by);
    expect(bind.changes.map((c) => `${c.removed ? '-' : '+'}${c.binding.label}`)).toEqual(['-cdn', '+spectrum']);
    layer.change(cp, { unbind: { protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 } }, by);
    expect(kernel(layer, cp)).toEqual(['spectrum 198.51.100.0/24 443']);
    // A new agent reads them back.
    const again = new LocalLayer(dir);
    expect(again.list().map((o) => o.kind).sort()).toEqual(['bind', 'mask']);
    const back = again.change(cp, { unbind: { protocol: 'tcp', prefix: '198.51.100.0/24', port: 443 } }, by);
    expect(back.changes.map((c) => `${c.removed ? '-' : '+'}${c.binding.label}`)).toEqual(['-spectrum', '+cdn']);
    expect(again.clear(cp).removed).toBe(1);
    expect(kernel(again, cp)).toEqual(['cdn 192.0.2.0/24 0', 'cdn 198.51.100.0/24 443']);
    expect(() => again.change(cp, { unbind: { protocol: 'tcp', prefix: '203.0.113.0/24', port: 0 } }, by)).toThrow(/no binding tcp 203\.0\.113\.0\/24 0 in force/);
    expect(() => again.change(cp, { bind: b('cdn', '192.0.2.0/24') }, by)).toThrow(/already bound to cdn by the control plane/);
  });

  it('a key comes with exactly protocol, prefix and port, its own (admin requests carry it; issue 15)', () => {
    const cp = state([b('cdn', '192.0.2.0/24')]);
    const layer = new LocalLayer(dir);
    const key = { protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 };
    // Extra fields were ignored, missing ones read through the prototype.
    expect(() => layer.change(cp, { unbind: { ...key, label: 'cdn' } }, by)).toThrow(/^local unbind: unknown field "label"$/);
    expect(() => layer.change(cp, { unbind: { protocol: 'tcp', prefix: '192.0.2.0/24' } }, by)).toThrow(/^local unbind: missing field "port"$/);
    expect(() => layer.change(cp, { unbind: Object.create(key) }, by)).toThrow(/^local unbind: missing field "protocol"$/);
    expect(() => layer.change(cp, { unbind: 'tcp 192.0.2.0/24 0' }, by)).toThrow(/^local unbind: expected an object/);
    expect(layer.size).toBe(0);
    expect(fs.existsSync(path.join(dir, 'local.json'))).toBe(false); // nothing changed
    layer.change(cp, { unbind: key }, by);
    expect(new LocalLayer(dir).list()).toEqual(layer.list());
  });

  it('a delta pushed under overrides changes only keys nobody overrode, and equals the full computation', () => {
    const v1 = [b('cdn', '192.0.2.0/24'), b('cdn', '198.51.100.0/24', 443), b('dns', '203.0.113.0/24', 53)];
    const v2 = [b('spectrum', '192.0.2.0/24'), b('cdn', '198.51.100.0/24', 443), b('cdn', '203.0.113.5/32', 53)];
    const cp = indexedCopy(parseDesiredState({ bindings: v1 }, 'v1'));
    const layer = new LocalLayer(dir);
    layer.change(cp, { bind: b('local', '192.0.2.0/24') }, by);
    layer.change(cp, { unbind: { protocol: 'tcp', prefix: '203.0.113.0/24', port: 53 } }, by);
    const made = cp.applyDelta(diffStates(parseDesiredState({ bindings: v1 }, 'v1'), parseDesiredState({ bindings: v2 }, 'v2')));
    const pushed = layer.effective(cp, made.changes);
    // The relabel of 192.0.2.0/24 waits under the local bind, the removal of the masked key is already so; the rest goes through.
    expect(pushed.changes!.map((c) => `${c.removed ? '-' : '+'}${c.binding.prefix}`)).toEqual(['+203.0.113.5/32']);
    const incremental = [...pushed.state.bindings].map((x) => `${x.label} ${x.prefix} ${x.port}`).sort();
    expect(incremental).toEqual(kernel(new LocalLayer(dir), cp));
    expect(incremental).toEqual(['cdn 198.51.100.0/24 443', 'cdn 203.0.113.5/32 53', 'local 192.0.2.0/24 0']);
  });
});
