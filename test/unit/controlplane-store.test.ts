/**
 * The control plane's file store (issue 18): a restart forgets nothing,
 * a version is saved before it is visible, and a store it cannot trust is
 * refused rather than guessed at. The same scenarios run against a real
 * PostgreSQL in test/integration/postgres-store.test.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { FileStore } from '../../src/controlplane/store/file.js';
import type { ControlPlaneStore } from '../../src/controlplane/store/store.js';
import { UnsavedChange } from '../../src/controlplane/statefile.js';
import { makeCerts, type TestCerts } from '../support/certs.js';
import { cdnState, haltSurvivesRestart, retriedRequestsAnswered, manyDeltasRebuild, restartForgetsNothing, rolloutSurvivesRestart, serverOn } from '../support/store-scenario.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

describe.skipIf(!hasOpenssl)('control-plane file store', () => {
  let certs: TestCerts;
  let dir: string;
  beforeAll(() => {
    certs = makeCerts();
  });
  afterAll(() => fs.rmSync(certs.dir, { recursive: true, force: true }));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fresh = () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-cp-store-'));
    return () => new FileStore(path.join(dir, 'store'));
  };

  it('a restart forgets nothing: epoch, versions and their deltas, the held and refused states, the audit log', async () => {
    await restartForgetsNothing(certs, fresh());
  });

  it("a rollout's stages survive a restart", async () => {
    await rolloutSurvivesRestart(certs, fresh());
  });

  it('a retried request is answered from the record, also after a restart; ids are per administrator', async () => {
    await retriedRequestsAnswered(certs, fresh());
  });

  it('a rollout halted by a NACKing canary is still halted after a restart', async () => {
    await haltSurvivesRestart(certs, fresh());
  });

  it('300 small changes are stored as deltas (a document now and then) and rebuilt exactly', async () => {
    const store = fresh();
    await manyDeltasRebuild(certs, store);
    const lines = fs.readFileSync(path.join(dir, 'store', 'versions.jsonl'), 'utf8').trim().split('\n');
    expect(lines).toHaveLength(301);
    const documents = fs.readdirSync(path.join(dir, 'store', 'documents'));
    expect(documents.length).toBeGreaterThanOrEqual(2);
    expect(documents.length).toBeLessThan(10);
  });

  it('a version the store cannot save is not published (UnsavedChange), and the next one that can be is', async () => {
    const make = fresh();
    let failing = false;
    const real = make();
    const flaky = new Proxy(real, {
      get(target, name) {
        if (name === 'commit' && failing) return async () => Promise.reject(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }));
        const value = Reflect.get(target, name) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    }) as ControlPlaneStore;
    const server = serverOn(certs, flaky);
    const unsaved: string[] = [];
    server.on('unsaved', (_source: string, err: UnsavedChange) => unsaved.push(err.message));
    await server.open();
    await server.publish(cdnState(30));
    failing = true;
    await expect(server.propose(cdnState(31), 'api')).rejects.toBeInstanceOf(UnsavedChange);
    await expect(server.publishDelta({ add: [{ label: 'spectrum', protocol: 'tcp', prefix: '10.0.0.1/32', port: 0 }], remove: [] })).rejects.toBeInstanceOf(UnsavedChange);
    expect(server.history.current).toMatchObject({ version: 1 });
    expect(server.history.indexed!.bindings.count).toBe(30);
    expect(unsaved).toHaveLength(2);
    expect(unsaved[0]).toMatch(/ENOSPC/);
    failing = false;
    expect(await server.propose(cdnState(31), 'api')).toMatchObject({ outcome: 'published', version: 2 });
    await server.close();
    const again = serverOn(certs, make());
    await again.open();
    expect(again.history.current).toMatchObject({ version: 2 });
    await again.close();
  });

  it('a torn last line (a crash inside the append) is dropped; a newer format and a second user are refused', async () => {
    const make = fresh();
    const server = serverOn(certs, make());
    await server.open();
    await server.publish(cdnState(5));
    await server.publish(cdnState(6));
    // A second control plane on the same store while the first runs.
    await expect(make().open('x')).rejects.toMatchObject({ code: 'ESTORE', message: expect.stringMatching(/another control plane/) });
    await server.close();
    const versions = path.join(dir, 'store', 'versions.jsonl');
    fs.appendFileSync(versions, '{"epoch":"torn","vers');
    const again = serverOn(certs, make());
    await again.open();
    expect(again.history.current).toMatchObject({ version: 2 });
    expect(fs.readFileSync(versions, 'utf8').endsWith('}\n')).toBe(true);
    await again.close();
    const meta = path.join(dir, 'store', 'store.json');
    fs.writeFileSync(meta, JSON.stringify({ ...JSON.parse(fs.readFileSync(meta, 'utf8')), format: 99 }));
    await expect(make().open('x')).rejects.toMatchObject({ code: 'ESTORE_SCHEMA' });
  });
});
