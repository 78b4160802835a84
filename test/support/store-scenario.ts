/**
 * What a control plane restarted on its store must still know, whichever
 * backend keeps it (the file store's unit test and the PostgreSQL
 * integration test run the same checks).
 */
import { expect } from 'vitest';
import { WebSocket } from 'ws';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { parseRollout } from '../../src/controlplane/rollout.js';
import { parseDesiredState } from '../../src/desired/state.js';
import type { ControlPlaneStore } from '../../src/controlplane/store/store.js';
import type { TestCerts } from './certs.js';

const SERVICES = { cdn: { tcp: [443] }, spectrum: { tcp: [443] } };
type BindingDoc = { label: string; protocol: string; prefix: string; port: number };
/** The document of n bindings of cdn (each n a different state), plus `extra`. */
export const cdnDoc = (n: number, extra: BindingDoc[] = []) => ({ bindings: [...Array.from({ length: n }, (_, i) => ({ label: 'cdn', protocol: 'tcp', prefix: `10.${i >> 8}.${i & 255}.0/24`, port: 0 })), ...extra], services: SERVICES });
/** That document parsed. */
export const cdnState = (n: number, extra: BindingDoc[] = []) => parseDesiredState(cdnDoc(n, extra), `state ${n}`);

const ROLLOUT = parseRollout({ stages: [{ name: 'canary', match: { canary: 'true' } }, { name: 'rest' }], bake_seconds: 3600 }, 'rollout.json');

export function serverOn(certs: TestCerts, store: ControlPlaneStore, options: { rollout?: boolean } = {}): ControlPlaneServer {
  return new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { a: 'token-a' }, epoch: `epoch-${Math.random()}`, store, ...(options.rollout ? { rollout: ROLLOUT } : {}) });
}

/**
 * Versions, a held withdrawal, a refusal and the audit trail survive a
 * restart; the epoch and version numbers go on; an agent one version
 * behind still gets a delta; confirming the held state after the restart
 * publishes it.
 */
export async function restartForgetsNothing(certs: TestCerts, store: () => ControlPlaneStore): Promise<void> {
  const first = serverOn(certs, store());
  await first.open();
  expect((await first.propose(cdnState(100), 'file', { actor: 'file' })).outcome).toBe('published');
  const carve = { label: 'spectrum', protocol: 'tcp', prefix: '10.0.1.7/32', port: 0 };
  expect((await first.propose(cdnState(100, [carve]), 'api POST /v1/bindings', { actor: 'alice', remote: '192.0.2.1', requestId: 'req-1' })).outcome).toBe('published');
  // Withdrawing most of cdn: held for confirmation.
  expect((await first.propose(cdnState(10, [carve]), 'api DELETE /v1/bindings', { actor: 'bob' })).outcome).toBe('held');
  // A binding nobody has a policy for: refused.
  expect((await first.propose(cdnState(100, [carve, { label: 'nobody', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }]), 'api POST /v1/bindings', { actor: 'carol' })).outcome).toBe('refused');
  const epoch = first.history.epoch;
  const v1 = { epoch, version: 1, digest: '' };
  const v2 = first.history.current!;
  await first.close();

  const second = serverOn(certs, store());
  await second.open();
  expect(second.history.epoch).toBe(epoch);
  expect(second.history.current).toMatchObject({ version: 2, digest: v2.digest });
  expect(second.history.indexed!.bindings.count).toBe(101);
  // The version before is known with its delta: an agent that has it gets one binding, not the state.
  const v1digest = cdnState(100);
  v1.digest = (await import('../../src/protocol/state.js')).stateDigest(v1digest);
  const frame = second.history.frameFor({ have: v1, refused: null });
  expect(frame).toMatchObject({ type: 'delta', from_version: 1, version: 2, add: [carve], remove: [] });
  expect(second.history.frameFor({ have: { epoch, version: 2, digest: v2.digest }, refused: null })).toMatchObject({ type: 'up-to-date', version: 2 });
  const status = second.publicationStatus();
  expect(status.held).toMatchObject({ version: 3, source: 'api DELETE /v1/bindings' });
  expect(status.refused).toMatchObject({ source: 'api POST /v1/bindings' });
  expect(status.last).toMatchObject({ version: 2, source: 'api POST /v1/bindings' });
  const audit = await second.auditLog();
  expect(audit.map((a) => [a.actor, a.outcome, a.version])).toEqual([
    ['file', 'published', 1],
    ['alice', 'published', 2],
    ['bob', 'held', 3],
    ['carol', 'refused', null],
  ]);
  expect(audit[1]).toMatchObject({ remote: '192.0.2.1', requestId: 'req-1' });
  // The held state, confirmed after the restart: published as version 3 with the override.
  await second.allowWithdrawal(3, { actor: 'dave' });
  expect(second.history.current).toMatchObject({ version: 3 });
  expect(second.history.indexed!.bindings.count).toBe(11);
  await second.close();

  const third = serverOn(certs, store());
  await third.open();
  expect(third.history.current).toMatchObject({ version: 3 });
  expect(third.publicationStatus().held).toBeNull();
  const frame3 = third.history.frameFor({ have: null, refused: null }, { version: 3, withdrawal: true });
  expect(frame3).toMatchObject({ type: 'snapshot', version: 3, override: { version: 3, withdrawal: true } });
  expect((await third.auditLog()).at(-1)).toMatchObject({ actor: 'dave', action: 'override', outcome: 'published', version: 3 });
  await third.close();
}

/** A rollout's stages survive a restart: the stage behind is still served the version it had. */
export async function rolloutSurvivesRestart(certs: TestCerts, store: () => ControlPlaneStore): Promise<void> {
  const first = serverOn(certs, store(), { rollout: true });
  await first.open();
  await first.publish(cdnState(20));
  await first.publish(cdnState(21));
  const before = first.publicationStatus().rollout!;
  expect(before.stages.map((s) => s.version)).toEqual([2, 1]);
  await first.close();

  const second = serverOn(certs, store(), { rollout: true });
  await second.open();
  expect(second.publicationStatus().rollout!.stages.map((s) => s.version)).toEqual([2, 1]);
  // The rest stage still gets version 1, rebuilt from the store.
  const frame = second.history.frameFor({ have: null, refused: null }, undefined, 1);
  expect(frame).toMatchObject({ type: 'snapshot', version: 1 });
  expect(JSON.parse(second.history.snapshotText(frame as never)).state.bindings).toHaveLength(20);
  await second.close();
}

/** Many small changes: the store keeps deltas (documents now and then), and a restart rebuilds the exact state. */
export async function manyDeltasRebuild(certs: TestCerts, store: () => ControlPlaneStore, count = 300): Promise<void> {
  const first = serverOn(certs, store());
  await first.open();
  await first.publish(cdnState(50));
  for (let i = 0; i < count; i++) {
    const prefix = `172.16.${i >> 8}.${i & 255}/32`;
    await first.publishDelta(i % 3 === 2 ? { add: [], remove: [{ protocol: 'tcp', prefix: `172.16.${(i - 1) >> 8}.${(i - 1) & 255}/32`, port: 0 }] } : { add: [{ label: 'spectrum', protocol: 'tcp', prefix, port: 0 }], remove: [] });
  }
  const want = first.history.current!;
  await first.close();
  const second = serverOn(certs, store());
  await second.open();
  expect(second.history.current).toMatchObject({ version: want.version, digest: want.digest });
  await second.close();
}

/** A rollout halted by a NACKing canary stays halted across a restart: the later stage keeps the version it had. */
export async function haltSurvivesRestart(certs: TestCerts, store: () => ControlPlaneStore): Promise<void> {
  const first = serverOn(certs, store(), { rollout: true });
  const port = await first.listen();
  await first.publish(cdnState(20));
  // The canary (agent "a") refuses version 2.
  const nacked = new Promise<void>((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { ca: certs.ca, headers: { authorization: 'Bearer token-a' } });
    ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', protocol: 1, agent_id: 'a', agent_version: 'test', capabilities: ['delta'], have: null, refused: null, labels: { canary: 'true' } })));
    ws.on('message', (data: Buffer) => {
      const f = JSON.parse(data.toString()) as { type: string; epoch: string; version: number; digest: string };
      if (f.type !== 'snapshot' && f.type !== 'delta') return;
      if (f.version === 2) {
        ws.send(JSON.stringify({ type: 'nack', epoch: f.epoch, version: 2, code: 'EAPPLY', message: 'the kernel refused it (test)', details: [] }));
        resolve();
      } else ws.send(JSON.stringify({ type: 'ack', epoch: f.epoch, version: f.version, digest: f.digest }));
    });
    ws.on('error', reject);
  });
  await new Promise((r) => setTimeout(r, 200)); // the canary has version 1
  await first.publish(cdnState(21));
  await nacked;
  for (let t = 0; t < 100 && !first.publicationStatus().rollout?.halted; t++) await new Promise((r) => setTimeout(r, 20));
  expect(first.publicationStatus().rollout?.halted).toMatchObject({ stage: 'canary', agentId: 'a' });
  await first.close();

  const second = serverOn(certs, store(), { rollout: true });
  await second.open();
  const rollout = second.publicationStatus().rollout!;
  expect(rollout.halted).toMatchObject({ stage: 'canary', agentId: 'a', why: expect.stringMatching(/EAPPLY/) });
  expect(rollout.stages.map((s) => s.version)).toEqual([2, 1]);
  await second.close();
}

/**
 * A request retried with its X-Request-Id and digest is answered from the
 * record (also after a restart: the store is the record), not made again;
 * another administrator's request with the same id is its own; the same
 * id with another digest comes back with the digest it had (the API
 * refuses it).
 */
export async function retriedRequestsAnswered(certs: TestCerts, store: () => ControlPlaneStore): Promise<void> {
  const first = serverOn(certs, store());
  await first.open();
  await first.publish(cdnState(10));
  const ask = { save: false, actor: 'alice', requestId: 'req-1', request: 'digest-1' };
  const made = await first.propose(() => cdnState(11), 'api', ask);
  expect(made).toMatchObject({ outcome: 'published', version: 2 });
  // The edit would be made again on the state as it is now (12 bindings): it is not.
  expect(await first.propose(() => cdnState(12), 'api', ask)).toMatchObject({ outcome: 'replayed', earlier: { outcome: 'published', version: 2, request: 'digest-1' } });
  expect(first.history.current!.version).toBe(2);
  expect(await first.propose(() => cdnState(12), 'api', { ...ask, actor: 'bob' })).toMatchObject({ outcome: 'published', version: 3 });
  await first.close();
  const second = serverOn(certs, store());
  await second.open();
  expect(await second.propose(() => cdnState(13), 'api', { ...ask, request: 'digest-2' })).toMatchObject({ outcome: 'replayed', earlier: { version: 2, request: 'digest-1' } });
  expect(second.history.current!.version).toBe(3);
  await second.close();
}
