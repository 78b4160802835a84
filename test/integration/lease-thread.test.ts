/**
 * The publishing lease renewed on a thread of its own (lease-thread.ts):
 * a leader whose event loop is busy for longer than the lease (judging a
 * large state, a storm of agent connections) keeps it, and the write it
 * was busy with is not fenced; a leader whose loop is wedged for longer
 * than its stall bound lets the lease go. The compiled modules (dist/)
 * are used: the thread's script is the compiled lease-thread.js.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import pg from 'pg';
import { projectPath } from '../../src/paths.js';
import { makeCerts, type TestCerts } from '../support/certs.js';
import { postgresBin, TestPostgres } from '../support/postgres.js';
import { freePort } from '../support/ports.js';
import { cdnDoc } from '../support/store-scenario.js';

const built = fs.existsSync(projectPath('dist/src/controlplane/lease-thread.js'));
const usable = built && process.getuid?.() === 0 && postgresBin() !== undefined && spawnSync('openssl', ['version']).status === 0;
const TTL_MS = 1_000;

/**
 * This thread busy for `ms`, as a long judgement keeps it (nothing else
 * runs on it meanwhile), spent watching the lease from another process:
 * whether some replica held it, unexpired, at each look (every 100 ms).
 */
function busyWatching(url: string, ms: number): Array<string | null> {
  const script = `
    const pg = require('pg');
    const c = new pg.Client({ connectionString: process.argv[1] });
    const seen = [];
    const end = Date.now() + Number(process.argv[2]);
    (async () => {
      await c.connect();
      while (Date.now() < end) {
        const { rows } = await c.query('SELECT holder, expires_at > now() AS valid FROM sy_lease');
        seen.push(rows[0] && rows[0].valid ? rows[0].holder : null);
        await new Promise((r) => setTimeout(r, 100));
      }
      await c.end();
      console.log(JSON.stringify(seen));
    })();`;
  const r = spawnSync(process.execPath, ['-e', script, url, String(ms)], { cwd: projectPath('.'), encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`watching the lease: ${r.stderr}`);
  return JSON.parse(r.stdout) as Array<string | null>;
}

const eventually = async (what: string, check: () => boolean, ms = 10_000) => {
  const start = performance.now();
  while (performance.now() - start < ms) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what}: not within ${ms} ms`);
};

describe.skipIf(!usable)('the publishing lease on a thread of its own', () => {
  let certs: TestCerts;
  let db: TestPostgres;
  type Server = import('../../src/controlplane/server.js').ControlPlaneServer;
  const servers: Server[] = [];

  beforeAll(async () => {
    certs = makeCerts();
    db = TestPostgres.create();
  });
  afterAll(async () => {
    for (const s of servers) await s.close();
    db?.destroy();
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  async function pair(database: string, stallMs?: number) {
    const c = new pg.Client({ connectionString: db.url() });
    await c.connect();
    await c.query(`CREATE DATABASE ${database}`);
    await c.end();
    const { ControlPlaneServer } = (await import(projectPath('dist/src/controlplane/server.js'))) as typeof import('../../src/controlplane/server.js');
    const { PostgresStore } = (await import(projectPath('dist/src/controlplane/store/postgres.js'))) as typeof import('../../src/controlplane/store/postgres.js');
    const events: Record<string, string[]> = { a: [], b: [] };
    const make = async (name: 'a' | 'b') => {
      const port = await freePort();
      const server = new ControlPlaneServer({
        cert: certs.cert,
        key: certs.key,
        tokens: { 'edge-1': 'agent-token-1' },
        port,
        store: new PostgresStore(db.url(database)),
        replica: { name, advertise: `https://127.0.0.1:${port}`, ttlMs: TTL_MS, ...(stallMs ? { stallMs } : {}) },
      });
      server.on('store-error', () => {});
      server.on('unsaved', () => {});
      server.on('leading', (term: number) => events[name]!.push(`leading ${term}`));
      server.on('following', (why: string) => events[name]!.push(`following: ${why}`));
      await server.open();
      await server.listen();
      servers.push(server);
      return server;
    };
    const a = await make('a');
    await eventually('a leads', () => a.publicationStatus().replica?.leading === true);
    const b = await make('b');
    await new Promise((r) => setTimeout(r, TTL_MS));
    return { a, b, events };
  }

  it('a leader busy for 2.5 leases keeps the lease, and its write after the wait is stored, not fenced', async () => {
    const { a, b, events } = await pair('busy');
    expect(b.publicationStatus().replica?.leading).toBe(false);
    const before = [...events.a!];
    const seen = busyWatching(db.url('busy'), 2.5 * TTL_MS);
    expect(seen.length).toBeGreaterThan(10);
    expect(seen.filter((holder) => holder !== 'a')).toEqual([]);
    const { parseDesiredState } = (await import(projectPath('dist/src/desired/state.js'))) as typeof import('../../src/desired/state.js');
    const r = await a.publish(parseDesiredState(cdnDoc(3), 'busy'), { source: 'test' });
    expect(r.changed).toBe(true);
    await new Promise((r) => setTimeout(r, TTL_MS));
    expect(events.a, JSON.stringify(events)).toEqual(before);
    expect(events.b!.filter((e) => e.startsWith('leading'))).toEqual([]);
    expect(a.publicationStatus().replica?.leading).toBe(true);
    await eventually('b follows the write', () => b.publicationStatus().version === r.version);
  });

  it('a follower that comes to lead judges the next small change over its regions: it learnt the state it followed', async () => {
    const { a, b } = await pair('learnt');
    const { parseDesiredState } = (await import(projectPath('dist/src/desired/state.js'))) as typeof import('../../src/desired/state.js');
    const { priorKnown } = (await import(projectPath('dist/src/controlplane/judge-thread.js'))) as typeof import('../../src/controlplane/judge-thread.js');
    // Published without a judgement (publish()): nothing is known of it but what b learns by following it.
    const r = await a.publish(parseDesiredState(cdnDoc(6000), 'big'), { source: 'test' });
    await eventually('b follows', () => b.publicationStatus().version === r.version);
    await eventually('b has judged what it followed', () => priorKnown(b.history.indexed!.digest), 30_000);
    await a.close();
    servers.splice(servers.indexOf(a), 1);
    await eventually('b leads', () => b.publicationStatus().replica?.leading === true);
    const next = parseDesiredState(cdnDoc(6000, [{ label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.7/32', port: 0 }]), 'next');
    expect(await b.propose(next, 'test')).toMatchObject({ outcome: 'published', judged: 'regions' });
  });

  it('a leader whose loop does not turn for longer than its stall bound lets the lease go', async () => {
    const { a } = await pair('wedged', 2 * TTL_MS);
    const seen = busyWatching(db.url('wedged'), 4 * TTL_MS);
    // Held at first; let go once the bound had passed and the last renewal ran out.
    expect(seen[0]).toBe('a');
    expect(seen.slice(-5)).toEqual([null, null, null, null, null]);
    await eventually('a leads again once its loop turns', () => a.publicationStatus().replica?.leading === true);
  });
});
