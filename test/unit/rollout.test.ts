import { afterEach, beforeAll, afterAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { WebSocket } from 'ws';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { parseRollout } from '../../src/controlplane/rollout.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { makeCerts, type TestCerts } from '../support/certs.js';
import { stepWallClock } from '../support/clock.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
const SERVICES = { cdn: { tcp: [443] }, spectrum: { tcp: [443] } };
/** Version n's state: n bindings of cdn, so each version differs. */
const state = (n: number) => parseDesiredState({ bindings: Array.from({ length: 60 + n }, (_, i) => ({ label: 'cdn', protocol: 'tcp', prefix: `10.0.${i}.0/24`, port: 0 })), services: SERVICES }, `v${n}`);

const eventually = async (what: string, check: () => boolean, ms = 5000) => {
  for (let t = 0; t < ms; t += 20) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what}: not within ${ms} ms`);
};

describe.skipIf(!hasOpenssl)('staged rollout', () => {
  let certs: TestCerts;
  let server: ControlPlaneServer;
  const sockets: WebSocket[] = [];
  beforeAll(() => {
    certs = makeCerts();
  });
  afterAll(() => fs.rmSync(certs.dir, { recursive: true, force: true }));
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.terminate();
    await server.close();
  });

  /** An agent that acknowledges what it gets (but NACKs the versions in `refuse`), and records the order. */
  function agent(id: string, labels: Record<string, string>, port: number, log: string[], refuse: Set<number> = new Set()) {
    const a = { id, versions: [] as number[], socket: undefined as unknown as WebSocket, counters: { misses: 0, errors: 0 } };
    const socket = new WebSocket(`wss://127.0.0.1:${port}/`, { ca: certs.ca, headers: { authorization: `Bearer t-${id}` } });
    a.socket = socket;
    sockets.push(socket);
    let have: { epoch: string; version: number; digest: string } | null = null;
    socket.on('open', () => socket.send(JSON.stringify({ type: 'hello', protocol: 1, agent_id: id, agent_version: 'test', capabilities: ['delta'], have, refused: null, labels })));
    socket.on('message', (data: Buffer) => {
      const f = JSON.parse(data.toString()) as { type: string; epoch: string; version: number; digest: string; from_version?: number };
      if (f.type !== 'snapshot' && f.type !== 'delta') return;
      if (refuse.has(f.version)) {
        socket.send(JSON.stringify({ type: 'nack', epoch: f.epoch, version: f.version, code: 'EAPPLY', message: 'the kernel refused it (test)', details: [] }));
        return;
      }
      have = { epoch: f.epoch, version: f.version, digest: f.digest };
      a.versions.push(f.version);
      log.push(`${id} v${f.version}`);
      socket.send(JSON.stringify({ type: 'ack', ...have }));
    });
    return {
      ...a,
      heartbeat: () => have && socket.send(JSON.stringify({ type: 'heartbeat', ...have, age_ms: 0, ...a.counters })),
      get version() {
        return a.versions.at(-1) ?? null;
      },
    };
  }

  async function start() {
    const tokens = Object.fromEntries(['canary', 'ams', 'rest', 'late'].map((id) => [id, `t-${id}`]));
    const rollout = parseRollout({ stages: [{ name: 'canary', match: { canary: 'true' } }, { name: 'ams', match: { site: 'ams' } }, { name: 'rest' }], bake_seconds: 0.3 }, 'rollout.json');
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens, epoch: 'e', rollout });
    return server.listen();
  }

  it('goes stage by stage, halts on a NACK keeping later stages where they were, and a rollback goes out like any version', async () => {
    const port = await start();
    const log: string[] = [];
    await server.publish(state(1));
    const canary = agent('canary', { canary: 'true', site: 'ams' }, port, log, new Set([3]));
    const ams = agent('ams', { site: 'ams' }, port, log);
    const rest = agent('rest', { site: 'fra' }, port, log);
    await eventually('v1 everywhere (the first version has nothing to protect)', () => [canary, ams, rest].every((a) => a.version === 1));

    log.length = 0;
    await server.publish(state(2));
    await eventually('v2 everywhere', () => [canary, ams, rest].every((a) => a.version === 2));
    expect(log).toEqual(['canary v2', 'ams v2', 'rest v2']);
    // The agent has v2 once it sent its ACK; the server marks the last stage done once it has read it.
    await eventually('every stage done', () => server.publicationStatus().rollout!.stages.every((s) => s.state === 'done'));

    // The canary refuses version 3: the rollout halts there, later stages keep 2, a new agent of a later stage gets 2.
    await server.publish(state(3));
    await eventually('halted', () => server.publicationStatus().rollout!.halted !== null);
    expect(server.publicationStatus().rollout!.halted).toMatchObject({ stage: 'canary', agentId: 'canary', why: 'NACK EAPPLY: the kernel refused it (test)' });
    const late = agent('late', {}, port, log);
    await eventually('the late agent has what its stage has', () => late.version === 2);
    await new Promise((r) => setTimeout(r, 700)); // more than the bake: nothing moves
    expect([ams.version, rest.version, late.version]).toEqual([2, 2, 2]);
    expect(server.publicationStatus().rollout!.stages.map((s) => [s.name, s.version, s.state])).toEqual([
      ['canary', 3, 'rolling'],
      ['ams', 2, 'halted'],
      ['rest', 2, 'halted'],
    ]);

    // Rolling back: the previous content as a new version, from the first stage.
    await server.publish(state(2));
    await eventually('v4 everywhere', () => [canary, ams, rest, late].every((a) => a.version === 4));
  });

  it('halts when an agent that has the new version sees its errors rise', async () => {
    const port = await start();
    const log: string[] = [];
    await server.publish(state(1));
    const canary = agent('canary', { canary: 'true' }, port, log);
    const rest = agent('rest', {}, port, log);
    await eventually('v1 everywhere', () => canary.version === 1 && rest.version === 1);
    canary.heartbeat();
    await server.publish(state(2));
    await eventually('the canary has v2', () => canary.version === 2);
    canary.heartbeat(); // the baseline
    canary.counters.errors = 7;
    await new Promise((r) => setTimeout(r, 30));
    canary.heartbeat();
    await eventually('halted', () => server.publicationStatus().rollout!.halted !== null);
    expect(server.publicationStatus().rollout!.halted).toMatchObject({ stage: 'canary', why: 'errors rose from 0 to 7' });
    await new Promise((r) => setTimeout(r, 500));
    expect(rest.version).toBe(1);
  });

  it('bakes on the monotonic clock: a wall clock stepped back an hour does not hold the rollout, one stepped forward does not skip the bake', async () => {
    const tokens = Object.fromEntries(['canary', 'rest'].map((id) => [id, `t-${id}`]));
    const rollout = parseRollout({ stages: [{ name: 'canary', match: { canary: 'true' } }, { name: 'rest' }], bake_seconds: 1 }, 'rollout.json');
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens, epoch: 'e', rollout });
    const port = await server.listen();
    const log: string[] = [];
    await server.publish(state(1));
    const canary = agent('canary', { canary: 'true' }, port, log);
    const rest = agent('rest', {}, port, log);
    await eventually('v1 everywhere', () => canary.version === 1 && rest.version === 1);
    // Back an hour once the canary has version 2: the bake still ends after a second.
    await server.publish(state(2));
    await eventually('the canary has v2', () => canary.version === 2);
    let undo = stepWallClock(-3_600_000);
    try {
      await eventually('v2 released to the rest despite the step back', () => rest.version === 2, 5000);
    } finally {
      undo();
    }
    // Forward an hour right after the canary has version 3 (a heartbeat makes the control plane look at once): the rest waits for the bake.
    await server.publish(state(3));
    await eventually('the canary has v3', () => canary.version === 3);
    undo = stepWallClock(3_600_000);
    try {
      canary.heartbeat();
      await new Promise((r) => setTimeout(r, 200));
      expect(rest.version, 'released before its bake').toBe(2);
      await eventually('v3 released after the bake', () => rest.version === 3, 5000);
    } finally {
      undo();
    }
  });
});

describe('rollout file', () => {
  it('refuses a rollout file that names a stage twice or has no stages', () => {
    expect(() => parseRollout({ stages: [] }, 'r.json')).toThrow(/r\.json: expected \{"stages"/);
    expect(() => parseRollout({ stages: [{ name: 'a' }, { name: 'a' }] }, 'r.json')).toThrow(/stages\[1\]: a is listed twice/);
    expect(() => parseRollout({ stages: [{ name: 'a' }], bake: 3 }, 'r.json')).toThrow(/unknown field "bake"/);
  });

  it('refuses an unknown field in a stage (a misspelt "match" put every agent in the stage), naming it', () => {
    // {"name": "canary", "matches": …} was a stage without a match: the first stage, so every agent a canary.
    expect(() => parseRollout({ stages: [{ name: 'canary', matches: { canary: 'true' } }, { name: 'rest' }] }, 'r.json')).toThrow(/^r\.json: stages\[0\]: unknown field "matches"$/);
    expect(() => parseRollout(JSON.parse('{"stages": [{"name": "a", "__proto__": {"match": {"x": "y"}}}]}'), 'r.json')).toThrow(/stages\[0\]: unknown field "__proto__"/);
    expect(() => parseRollout({ stages: ['canary'] }, 'r.json')).toThrow(/stages\[0\] must be \{"name"/);
    // Fields are read as the file's own: "stages" inherited is no stages at all.
    expect(() => parseRollout(Object.create({ stages: [{ name: 'a' }] }), 'r.json')).toThrow(/r\.json: expected \{"stages"/);
  });
});
