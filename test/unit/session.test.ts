import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { AgentSession } from '../../src/agent/session.js';
import { SNAPSHOT_GZIP } from '../../src/protocol/compress.js';
import { StateStore } from '../../src/agent/store.js';
import { DECODE_OFF_THREAD_BYTES, PushDecoder } from '../../src/agent/decoder.js';
import { parseDesiredState, type DesiredState } from '../../src/desired/state.js';
import { diffStates, stateDigest } from '../../src/protocol/state.js';
import { encodeFrame, parseFrame, type Frame, type Nack } from '../../src/protocol/messages.js';
import type { BindingChange } from '../../src/firewall/incremental.js';

const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: [443] } };
const doc = (bindings: Array<[string, string, number]>) => ({ bindings: bindings.map(([label, prefix, port]) => ({ label, protocol: 'tcp', prefix, port })), services: SERVICES });
const V1 = doc([['cdn', '192.0.2.0/24', 0]]);
const V2 = doc([['cdn', '192.0.2.0/24', 0], ['spectrum', '192.0.2.200/32', 443]]);
const parse = (d: unknown) => parseDesiredState(d, 'test');
const snapshot = (version: number, d: unknown, epoch = 'e1'): Frame => ({ type: 'snapshot', epoch, version, digest: stateDigest(parse(d)), state: d });

describe('agent session (fake transport)', () => {
  let dir: string;
  let sent: Frame[];
  let applied: Array<{ state: DesiredState; changes: BindingChange[] | undefined }>;
  let failApply: boolean;
  const session = (compactAfterDeltas?: number) =>
    new AgentSession({
      ...(compactAfterDeltas ? { compactAfterDeltas } : {}),
      agentId: 'edge-1',
      agentVersion: 'test',
      store: new StateStore(dir),
      send: (f) => sent.push(f),
      apply: async (next, changes) => {
        if (failApply) throw new Error('iptables-restore failed');
        applied.push({ state: next.state, changes });
      },
      limits: { maxBindings: 1000, withdrawalShare: 0.05, withdrawalMin: 1 },
    });
  const push = (s: AgentSession, f: unknown) => s.receive(JSON.stringify(f));
  const last = () => sent[sent.length - 1]!;

  beforeEach(() => {
    dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sy-session-')), 'state');
    sent = [];
    applied = [];
    failApply = false;
  });
  afterEach(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));

  it('applies a snapshot, persists it, then acks; a delta on top goes as binding changes', async () => {
    const s = session();
    expect(s.hello().have).toBeNull();
    await push(s, snapshot(1, V1));
    expect(last()).toMatchObject({ type: 'ack', epoch: 'e1', version: 1, digest: stateDigest(parse(V1)) });
    expect(new StateStore(dir).lastKnownGood()!.version).toBe(1);
    const delta = diffStates(parse(V1), parse(V2));
    await push(s, { type: 'delta', epoch: 'e1', from_version: 1, version: 2, digest: stateDigest(parse(V2)), ...delta });
    expect(last()).toMatchObject({ type: 'ack', version: 2 });
    expect(applied[1]!.changes).toEqual([{ binding: { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 }, removed: false }]);
    expect(s.heartbeat()).toMatchObject({ type: 'heartbeat', version: 2 });
  });

  it('acks a redelivered version without applying it again', async () => {
    const s = session();
    await push(s, snapshot(1, V1));
    await push(s, snapshot(1, V1));
    expect(sent.map((f) => f.type)).toEqual(['ack', 'ack']);
    expect(applied.length).toBe(1);
  });

  it('answers a version gap with EGAP (the control plane then sends a snapshot)', async () => {
    const s = session();
    await push(s, snapshot(1, V1));
    await push(s, { type: 'delta', epoch: 'e1', from_version: 5, version: 6, digest: stateDigest(parse(V2)), add: [], remove: [] });
    expect(last()).toMatchObject({ type: 'nack', code: 'EGAP', version: 6 });
    expect(s.applied!.version).toBe(1);
  });

  it('NACKs bad input, bad digests, guards and kernel failures, keeping the last known good', async () => {
    const s = session();
    await push(s, snapshot(1, V1));
    const nack = () => last() as Nack;
    await s.receive('{"type":"snapshot"');
    expect(nack()).toMatchObject({ code: 'EINVALID' });
    await push(s, { ...snapshot(2, V2), digest: `sha256:${'f'.repeat(64)}` });
    expect(nack()).toMatchObject({ code: 'EDIGEST', version: 2 });
    await push(s, { type: 'snapshot', epoch: 'e1', version: 2, digest: `sha256:${'0'.repeat(64)}`, state: doc([['cdn', '192.0.2.1/24', 0]]) });
    expect(nack()).toMatchObject({ code: 'EINVALID' }); // the state itself names the entry
    expect(nack().message).toMatch(/snapshot 2: bindings\[0\].*host bits/);
    await push(s, snapshot(3, doc([])));
    expect(nack()).toMatchObject({ code: 'EWITHDRAWAL', details: ['cdn: 1 of 1 bindings removed (the service would have none left)'] });
    await push(s, { ...snapshot(3, doc([])), override: { version: 3, withdrawal: true } });
    expect(last()).toMatchObject({ type: 'ack', version: 3 }); // the override for this version passes
    failApply = true;
    await push(s, snapshot(4, V1));
    expect(nack()).toMatchObject({ code: 'EAPPLY', version: 4 });
    expect(nack().message).toMatch(/iptables-restore failed; the last known good state \(3\) stays/);
    expect(s.applied!.version).toBe(3);
    expect(new StateStore(dir).lastKnownGood()!.version).toBe(3);
    await s.receive('x'.repeat(10));
    expect(nack().code).toBe('EINVALID');
  });

  it('a version it cannot persist (a full disk) is put back out of the kernel and refused; the next one goes through', async () => {
    const store = new StateStore(dir);
    const given: string[] = []; // the digest the kernel was given, at each apply (the state itself changes in place)
    const s = new AgentSession({ agentId: 'edge-1', agentVersion: 'test', store, send: (f) => sent.push(f), apply: async (next) => void given.push(next.digest) });
    await push(s, snapshot(1, V1));
    const full = () => {
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    };
    const [append, save] = [store.appendDeltaFrame.bind(store), store.saveSnapshotFrame.bind(store)];
    store.appendDeltaFrame = full;
    store.saveSnapshotFrame = full;
    const v1 = stateDigest(parse(V1));
    const delta = { type: 'delta', epoch: 'e1', version: 2, from_version: 1, digest: stateDigest(parse(V2)), ...diffStates(parse(V1), parse(V2)) };
    await push(s, delta);
    expect(last()).toMatchObject({ type: 'nack', code: 'EAPPLY', version: 2 });
    expect((last() as Nack).message).toMatch(/could not be persisted \(ENOSPC.*the last known good state \(1\) is put back/);
    // The kernel was given version 2, then version 1 again; the session still holds 1, whole.
    expect(given).toEqual([v1, stateDigest(parse(V2)), v1]);
    expect(s.applied!.version).toBe(1);
    expect(s.applied!.indexed.digest).toBe(v1);
    expect(store.recoverFromCrash()).toBeUndefined(); // no marker left: the version is not taken for one that killed the agent
    // Space again: the same delta applies.
    store.appendDeltaFrame = append;
    store.saveSnapshotFrame = save;
    await push(s, delta);
    expect(last()).toMatchObject({ type: 'ack', version: 2 });
  });

  it('a push it cannot read is NACKed in a frame the control plane parser takes: no made-up id, the message cut to size', async () => {
    const s = session();
    for (const text of ['not json', '{"type":"snapshot","epoch":"","version":-1}', '[]', 'null']) {
      await s.receive(text);
      const back = parseFrame(encodeFrame(last())) as Nack; // the control plane's own parser
      expect(back).toMatchObject({ type: 'nack', epoch: null, version: null, code: 'EINVALID' });
    }
    await s.receive('{"type":"snapshot","epoch":"e9","version":7}');
    expect(parseFrame(encodeFrame(last()))).toMatchObject({ type: 'nack', epoch: 'e9', version: 7, code: 'EINVALID' });
    // A kernel tool's whole stderr in the message: cut, so the frame stays far below the control plane's limit.
    failApply = true;
    const s2 = new AgentSession({ agentId: 'edge-1', agentVersion: 'test', store: new StateStore(dir), send: (f) => sent.push(f), apply: async () => { throw new Error('x'.repeat(200_000)); } });
    await push(s2, snapshot(1, V1));
    const frame = encodeFrame(last());
    expect(parseFrame(frame)).toMatchObject({ type: 'nack', code: 'EAPPLY', version: 1 });
    expect(frame.length).toBeLessThan(8192);
  });

  it('a large snapshot goes through the decoder (bytes in, index out) and is stored as it came; an invalid one is NACKed naming its version', async () => {
    const big = doc(Array.from({ length: 8000 }, (_, i) => ['cdn', `10.${i >> 8}.${i & 255}.0/24`, 0] as [string, string, number]));
    const s = new AgentSession({ agentId: 'edge-1', agentVersion: 'test', store: new StateStore(dir), send: (f) => sent.push(f), decoder: new PushDecoder(), apply: async (next) => void applied.push({ state: next.state, changes: undefined }) });
    const bytes = Buffer.from(JSON.stringify(snapshot(1, big)));
    expect(bytes.length).toBeGreaterThanOrEqual(DECODE_OFF_THREAD_BYTES);
    await s.receive(bytes);
    expect(last()).toMatchObject({ type: 'ack', version: 1, digest: stateDigest(parse(big)) });
    expect(applied[0]!.state.bindings.count).toBe(8000);
    expect(new StateStore(dir).lastKnownGood()).toMatchObject({ version: 1, state: big });
    const bad = doc([...big.bindings.map((b) => [b.label, b.prefix, b.port] as [string, string, number]), ['cdn', '10.0.0.1/24', 0]]);
    await s.receive(Buffer.from(JSON.stringify({ ...snapshot(2, big), state: bad })));
    expect(last()).toMatchObject({ type: 'nack', version: 2, code: 'EINVALID' });
    expect((last() as Nack).message).toMatch(/host bits/);
    await s.receive(Buffer.from(`{${' '.repeat(DECODE_OFF_THREAD_BYTES)}`));
    expect(last()).toMatchObject({ type: 'nack', epoch: null, version: null, code: 'EINVALID' });
    expect(s.applied!.version).toBe(1);
    // A large delta: its lists parsed by the decoder, applied in place, logged as the frame that came.
    const bigger = doc([...big.bindings.map((b) => [b.label, b.prefix, b.port] as [string, string, number]), ...Array.from({ length: 8000 }, (_, i) => ['spectrum', `10.${100 + (i >> 8)}.${i & 255}.0/24`, 443] as [string, string, number])]);
    const delta = { type: 'delta', epoch: 'e1', version: 2, from_version: 1, digest: stateDigest(parse(bigger)), ...diffStates(parse(big), parse(bigger)) };
    expect(Buffer.byteLength(JSON.stringify(delta))).toBeGreaterThanOrEqual(DECODE_OFF_THREAD_BYTES);
    await s.receive(Buffer.from(JSON.stringify({ ...delta, add: [...delta.add, { label: 'x', protocol: 'tcp', prefix: '10.0.0.1/24', port: 0 }] })));
    expect(last()).toMatchObject({ type: 'nack', version: 2, code: 'EINVALID' }); // a bad entry, named, for its version
    expect((last() as Nack).message).toMatch(/delta 2 \(add\): bindings\[8000\]/);
    await s.receive(Buffer.from(JSON.stringify(delta)));
    expect(last()).toMatchObject({ type: 'ack', version: 2 });
    expect(s.applied!.indexed.bindings.count).toBe(16000);
    const restarted = new AgentSession({ agentId: 'edge-1', agentVersion: 'test', store: new StateStore(dir), send: () => {}, apply: async () => {} });
    await restarted.restore();
    expect(restarted.applied).toMatchObject({ version: 2, digest: stateDigest(parse(bigger)) });
  });

  it('a compressed snapshot (hello asks for it) is inflated, applied and kept as its text, with or without the decoder; one that inflates past the frame limit or is not gzip is NACKed', async () => {
    expect(session().hello().capabilities).toContain(SNAPSHOT_GZIP);
    const big = doc(Array.from({ length: 3000 }, (_, i) => ['cdn', `10.${i >> 8}.${i & 255}.0/24`, 0] as [string, string, number]));
    for (const decoder of [undefined, new PushDecoder()]) {
      const d = path.join(dir, decoder ? 'with' : 'without');
      sent = [];
      const s = new AgentSession({ agentId: 'edge-1', agentVersion: 'test', store: new StateStore(d), send: (f) => sent.push(f), maxFrameBytes: 1024 * 1024, ...(decoder ? { decoder } : {}), apply: async () => {} });
      const text = Buffer.from(JSON.stringify(snapshot(1, big)));
      const gz = zlib.gzipSync(text);
      // Under the decoder's size threshold compressed: a compressed frame goes to it all the same.
      expect(gz.length).toBeLessThan(DECODE_OFF_THREAD_BYTES);
      await s.receive(gz);
      expect(last()).toMatchObject({ type: 'ack', version: 1, digest: stateDigest(parse(big)) });
      expect(new StateStore(d).lastKnownGood()).toMatchObject({ version: 1, state: big });
      // A bomb: 2 MB of spaces inside a frame limit of 1 MiB.
      await s.receive(zlib.gzipSync(Buffer.from(`{${' '.repeat(2 * 1024 * 1024)}}`)));
      expect(last()).toMatchObject({ type: 'nack', epoch: null, version: null, code: 'ETOO_LARGE' });
      await s.receive(Buffer.from([0x1f, 0x8b, 1, 2, 3, 4]));
      expect(last()).toMatchObject({ type: 'nack', code: 'EINVALID' });
      expect((last() as Nack).message).toMatch(/could not be inflated/);
      expect(s.applied!.version).toBe(1);
    }
  });

  it('a delta sent pretty-printed (line breaks between its fields) is logged on one line: a restart replays it', async () => {
    const s = session();
    await push(s, snapshot(1, V1));
    const delta = { type: 'delta', epoch: 'e1', version: 2, from_version: 1, digest: stateDigest(parse(V2)), ...diffStates(parse(V1), parse(V2)) };
    await s.receive(JSON.stringify(delta, null, 2));
    expect(last()).toMatchObject({ type: 'ack', version: 2 });
    const restarted = session();
    await restarted.restore();
    expect(restarted.applied).toMatchObject({ version: 2, digest: stateDigest(parse(V2)) });
  });

  it('a first state the kernel refuses half way is put back to nothing: the kernel is given the empty state, status and kernel agree', async () => {
    const given: string[] = [];
    let fail = true;
    const s = new AgentSession({
      agentId: 'edge-1',
      agentVersion: 'test',
      store: new StateStore(dir),
      send: (f) => sent.push(f),
      apply: async (next) => {
        given.push(`${next.bindings.count}`);
        if (fail && next.bindings.count > 0) throw new Error('ipset restore failed after the dispatcher was written');
      },
    });
    await push(s, snapshot(1, V1));
    expect(last()).toMatchObject({ type: 'nack', code: 'EAPPLY', version: 1 });
    expect((last() as Nack).message).toMatch(/the last known good state \(none\) stays; the kernel was put back to no bindings/);
    expect(given).toEqual(['1', '0']); // tried, then nothing: not left holding what was half applied
    expect(s.applied).toBeUndefined();
    fail = false;
    await push(s, snapshot(1, V1));
    expect(last()).toMatchObject({ type: 'ack', version: 1 });
  });

  it('refuses a version that killed the agent mid-apply, says so in hello, and restores the last known good at start', async () => {
    const first = session();
    await push(first, snapshot(1, V1));
    new StateStore(dir).markApplying({ epoch: 'e1', version: 2, started_at: 0 }); // …and the agent dies
    const restarted = session();
    applied = [];
    await restarted.restore();
    expect(applied.map((a) => stateDigest(a.state))).toEqual([stateDigest(parse(V1))]);
    expect(restarted.hello()).toMatchObject({ have: { epoch: 'e1', version: 1 }, refused: { epoch: 'e1', version: 2 } });
    await push(restarted, snapshot(2, V2));
    expect(last()).toMatchObject({ type: 'nack', code: 'EREFUSED', version: 2 });
    await push(restarted, snapshot(3, V2));
    expect(last()).toMatchObject({ type: 'ack', version: 3 });
  });

  it('logs deltas on top of the snapshot, replays them at restart (a torn last line ignored), and folds them into a new snapshot', async () => {
    const s = session(3);
    await push(s, snapshot(1, V1));
    const states = [V1];
    for (let v = 2; v <= 6; v++) {
      const d = doc([['cdn', '192.0.2.0/24', 0], ...Array.from({ length: v }, (_, i) => ['spectrum', `198.51.100.${i}/32`, 443] as [string, string, number])]);
      await push(s, { type: 'delta', epoch: 'e1', from_version: v - 1, version: v, digest: stateDigest(parse(d)), ...diffStates(parse(states[states.length - 1]), parse(d)) });
      expect(last()).toMatchObject({ type: 'ack', version: v });
      states.push(d);
    }
    await s.receive('{}').catch(() => {}); // let the queued rewrite run
    const store = new StateStore(dir);
    // Three deltas were folded into the snapshot file (version 4); 5 and 6 are in the log.
    expect(store.lastKnownGood()!.version).toBe(4);
    expect(store.deltas().map((d) => d.version)).toEqual([5, 6]);
    fs.appendFileSync(path.join(dir, 'deltas.jsonl'), '{"epoch":"e1","from_vers'); // a crash mid-append
    const restarted = session(3);
    applied = [];
    await restarted.restore();
    expect(restarted.hello().have).toEqual({ epoch: 'e1', version: 6, digest: stateDigest(parse(states[5])) });
    expect(applied.map((a) => stateDigest(a.state))).toEqual([stateDigest(parse(states[5]))]);
  });

  it('a delta refused after it was made (digest, guard, kernel) is undone: the same delta with the right digest then applies', async () => {
    const s = session();
    await push(s, snapshot(1, V1));
    const delta = { type: 'delta', epoch: 'e1', from_version: 1, version: 2, ...diffStates(parse(V1), parse(V2)) };
    await push(s, { ...delta, digest: `sha256:${'e'.repeat(64)}` });
    expect(last()).toMatchObject({ type: 'nack', code: 'EDIGEST' });
    failApply = true;
    await push(s, { ...delta, digest: stateDigest(parse(V2)) });
    expect(last()).toMatchObject({ type: 'nack', code: 'EAPPLY' });
    expect(s.applied!.digest).toBe(stateDigest(parse(V1)));
    failApply = false;
    await push(s, { ...delta, digest: stateDigest(parse(V2)) });
    expect(last()).toMatchObject({ type: 'ack', version: 2, digest: stateDigest(parse(V2)) });
  });

  it('a snapshot close to the state in force (another epoch: a restarted control plane) is made as the delta between them', async () => {
    const s = session();
    await push(s, snapshot(1, V1));
    await push(s, snapshot(1, V2, 'e2'));
    expect(last()).toMatchObject({ type: 'ack', epoch: 'e2', version: 1, digest: stateDigest(parse(V2)) });
    expect(applied[1]!.changes).toEqual([{ binding: { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 }, removed: false }]);
    await push(s, snapshot(1, V2, 'e3'));
    expect(applied[2]!.changes).toEqual([]); // the same content: nothing to write
    expect(new StateStore(dir).lastKnownGood()).toMatchObject({ epoch: 'e3', version: 1 });
  });

  it('handles pushes one at a time, in order', async () => {
    const s = session();
    await Promise.all([push(s, snapshot(1, V1)), push(s, snapshot(2, V2)), push(s, snapshot(2, V2))]);
    expect(sent.map((f) => `${f.type} ${(f as { version: number }).version}`)).toEqual(['ack 1', 'ack 2', 'ack 2']);
    expect(applied.length).toBe(2);
  });
});
