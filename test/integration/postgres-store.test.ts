/**
 * The control plane over a real PostgreSQL (issue 18): the test starts its
 * own cluster (test/support/postgres.ts: initdb as nobody, a Unix socket in
 * a temporary directory, no TCP port) and removes it. The file store's
 * scenarios, then what only a database does: a schema migrated once and a
 * newer one refused, and a database that stops — a change is then refused
 * (UnsavedChange, nothing published) and the next one after it is back
 * goes through.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import pg from 'pg';
import { MIGRATIONS, PostgresStore } from '../../src/controlplane/store/postgres.js';
import { UnsavedChange } from '../../src/controlplane/statefile.js';
import { makeCerts, type TestCerts } from '../support/certs.js';
import { postgresBin, TestPostgres } from '../support/postgres.js';
import { cdnState, haltSurvivesRestart, retriedRequestsAnswered, manyDeltasRebuild, restartForgetsNothing, rolloutSurvivesRestart, serverOn } from '../support/store-scenario.js';

const usable = process.getuid?.() === 0 && postgresBin() !== undefined && spawnSync('openssl', ['version']).status === 0;

describe.skipIf(!usable)('control-plane PostgreSQL store (its own cluster)', () => {
  let certs: TestCerts;
  let db: TestPostgres;
  let n = 0;
  /** A fresh database per test in the one cluster. */
  async function database(): Promise<string> {
    const name = `sy_test_${++n}`;
    const c = new pg.Client({ connectionString: db.url() });
    await c.connect();
    await c.query(`CREATE DATABASE ${name}`);
    await c.end();
    return db.url(name);
  }

  beforeAll(() => {
    certs = makeCerts();
    db = TestPostgres.create();
  });
  afterAll(() => {
    db?.destroy();
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  it('a restart forgets nothing: epoch, versions and their deltas, the held and refused states, the audit log', async () => {
    const url = await database();
    await restartForgetsNothing(certs, () => new PostgresStore(url));
  });

  it("a rollout's stages survive a restart", async () => {
    const url = await database();
    await rolloutSurvivesRestart(certs, () => new PostgresStore(url));
  });

  it('a retried request is answered from the record, also after a restart; ids are per administrator', async () => {
    const url = await database();
    await retriedRequestsAnswered(certs, () => new PostgresStore(url));
  });

  it('a rollout halted by a NACKing canary is still halted after a restart', async () => {
    const url = await database();
    await haltSurvivesRestart(certs, () => new PostgresStore(url));
  });

  it('300 small changes are stored as deltas and rebuilt exactly', async () => {
    const url = await database();
    await manyDeltasRebuild(certs, () => new PostgresStore(url));
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    const { rows } = await c.query<{ versions: string; documents: string }>('SELECT (SELECT count(*) FROM sy_versions) AS versions, (SELECT count(*) FROM sy_documents) AS documents');
    await c.end();
    expect(Number(rows[0]!.versions)).toBe(301);
    expect(Number(rows[0]!.documents)).toBeLessThan(10);
  });

  it('migrates once; a schema newer than this version knows is refused, and nothing is written', async () => {
    const url = await database();
    const first = new PostgresStore(url);
    await first.open('e');
    await first.close();
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    expect((await c.query('SELECT version FROM sy_schema_migrations ORDER BY version')).rows.map((r: { version: number }) => r.version)).toEqual(MIGRATIONS.map((_, i) => i + 1));
    await c.query('INSERT INTO sy_schema_migrations (version) VALUES ($1)', [MIGRATIONS.length + 1]);
    await c.end();
    const newer = new PostgresStore(url);
    await expect(newer.open('e')).rejects.toMatchObject({ code: 'ESTORE_SCHEMA' });
    await newer.close();
  });

  it('the database stopped: a change is refused (UnsavedChange), nothing is published; restarted, the next change goes through and a restart sees it', async () => {
    const url = await database();
    const server = serverOn(certs, new PostgresStore(url));
    server.on('unsaved', () => {}); // told to the log in the daemon
    await server.open();
    await server.publish(cdnState(40));
    db.stop('immediate');
    try {
      await expect(server.propose(cdnState(41), 'api')).rejects.toBeInstanceOf(UnsavedChange);
      expect(server.history.current).toMatchObject({ version: 1 });
      expect(server.history.indexed!.bindings.count).toBe(40);
    } finally {
      db.start();
    }
    expect(await server.propose(cdnState(41), 'api')).toMatchObject({ outcome: 'published', version: 2 });
    await server.close();
    const again = serverOn(certs, new PostgresStore(url));
    await again.open();
    expect(again.history.current).toMatchObject({ version: 2 });
    expect(again.history.indexed!.bindings.count).toBe(41);
    await again.close();
  });
});
