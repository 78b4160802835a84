/**
 * The API an operator expects (issue 18, item 4): named administrators,
 * every change in the audit log with who, from where, the request id, the
 * diff summary and the outcome; If-Match answered 412 when the state moved
 * on; ?dry_run=1 judging without publishing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import { spawnSync } from 'node:child_process';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { BindingsApi } from '../../src/controlplane/api.js';
import { FileStore } from '../../src/controlplane/store/file.js';
import { makeCerts, type TestCerts } from '../support/certs.js';
import { cdnState } from '../support/store-scenario.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

describe.skipIf(!hasOpenssl)('API: named administrators, audit log, If-Match, dry run', () => {
  let certs: TestCerts;
  let dir: string;
  let server: ControlPlaneServer;
  let port: number;
  /** The control plane over the test's store (again: a restart). */
  const start = async () => {
    server = new ControlPlaneServer({
      cert: certs.cert,
      key: certs.key,
      tokens: { 'edge-1': 'agent-token-1' },
      adminTokens: { alice: 'alice-token-0123456789', bob: 'bob-token-0123456789' },
      store: new FileStore(path.join(dir, 'store')),
    });
    await server.open();
    server.serveApi(new BindingsApi(server));
    port = await server.listen();
  };
  beforeAll(async () => {
    certs = makeCerts();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-api-audit-'));
    await start();
    await server.propose(cdnState(60), 'state file', { actor: 'file' });
  });
  afterAll(async () => {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  const call = (method: string, route: string, token: string, body?: unknown, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; body: Record<string, unknown>; etag: string | undefined }>((resolve, reject) => {
      const payload = body === undefined ? '' : JSON.stringify(body);
      const req = https.request(
        { host: '127.0.0.1', port, path: route, method, ca: certs.ca, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload), ...headers } },
        (res) => {
          let text = '';
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Record<string, unknown>) : {}, etag: res.headers.etag }));
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
  const bind = (prefix: string) => ({ bindings: [{ label: 'spectrum', protocol: 'tcp', prefix, port: 0 }] });

  it('records who changed what; a stale If-Match is 412 and changes nothing; a dry run publishes nothing', async () => {
    const read = await call('GET', '/v1/bindings?label=spectrum', 'alice-token-0123456789');
    expect(read).toMatchObject({ status: 200, etag: '"1"' });
    const first = await call('POST', '/v1/bindings', 'alice-token-0123456789', bind('10.0.1.7/32'), { 'if-match': read.etag!, 'x-request-id': 'req-alice-1' });
    expect(first).toMatchObject({ status: 200, body: { outcome: 'published', version: 2 } });
    // Bob read version 1 too: his change was made against a state that moved on.
    const stale = await call('POST', '/v1/bindings', 'bob-token-0123456789', bind('10.0.2.7/32'), { 'if-match': read.etag! });
    expect(stale).toMatchObject({ status: 412, body: { field: 'If-Match' } });
    expect(server.history.current?.version).toBe(2);
    expect(await call('POST', '/v1/bindings', 'bob-token-0123456789', bind('10.0.2.7/32'), { 'if-match': 'yesterday' })).toMatchObject({ status: 400, body: { field: 'If-Match' } });
    // A dry run: the diff and the verdict, nothing published.
    const dry = await call('POST', '/v1/bindings?dry_run=1', 'bob-token-0123456789', bind('10.0.3.7/32'), { 'if-match': '"2"' });
    expect(dry).toMatchObject({ status: 200, body: { dry_run: true, outcome: 'published', version: 2 } });
    expect((dry.body.changes as string[]).join(' ')).toMatch(/cdn loses 1 IPv4 address/);
    expect(server.history.current?.version).toBe(2);
    const refusedDry = await call('POST', '/v1/bindings?dry_run=1', 'bob-token-0123456789', { bindings: [{ label: 'nobody', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }] });
    expect(refusedDry).toMatchObject({ status: 200, body: { dry_run: true, outcome: 'refused' } });
    // An agent's token is not an administrator's.
    expect(await call('GET', '/v1/audit', 'agent-token-1')).toMatchObject({ status: 403 });
    const audit = await call('GET', '/v1/audit', 'bob-token-0123456789');
    expect(audit.status).toBe(200);
    const entries = audit.body.entries as Array<Record<string, unknown>>;
    expect(entries.map((e) => [e.actor, e.outcome, e.version])).toEqual([
      ['file', 'published', 1],
      ['alice', 'published', 2],
      ['bob', 'dry run: published', 2],
      ['bob', 'dry run: refused', 2],
    ]);
    expect(entries[1]).toMatchObject({ action: 'POST /v1/bindings', requestId: 'req-alice-1', remote: '127.0.0.1' });
    expect((entries[1]!.summary as string[]).join(' ')).toMatch(/cdn loses 1 IPv4 address/);
    expect((await call('GET', '/v1/audit?after=3', 'alice-token-0123456789')).body.entries).toHaveLength(1);
  });

  it('a write retried with its X-Request-Id is answered as it was, not made again (also after a restart); the id with another request is refused; ids are per administrator', async () => {
    const alice = 'alice-token-0123456789';
    const v = server.history.current!.version;
    const once = await call('POST', '/v1/bindings', alice, bind('10.0.4.7/32'), { 'x-request-id': 'retry-1' });
    expect(once).toMatchObject({ status: 200, body: { outcome: 'published', version: v + 1 } });
    // Its answer lost, the client sends it again: the same answer, nothing made again (not 409 "already bound").
    const again = await call('POST', '/v1/bindings', alice, bind('10.0.4.7/32'), { 'x-request-id': 'retry-1' });
    expect(again).toMatchObject({ status: 200, body: { outcome: 'published', version: v + 1, replayed: true, changes: once.body.changes } });
    expect(server.history.current!.version).toBe(v + 1);
    const unbind = { bindings: [{ protocol: 'tcp', prefix: '10.0.4.7/32', port: 0 }] };
    expect(await call('DELETE', '/v1/bindings', alice, unbind, { 'x-request-id': 'retry-2' })).toMatchObject({ status: 200, body: { outcome: 'published', version: v + 2 } });
    expect(await call('DELETE', '/v1/bindings', alice, unbind, { 'x-request-id': 'retry-2' })).toMatchObject({ status: 200, body: { version: v + 2, replayed: true } });
    // The same id for another request: refused, naming the header; nothing changes.
    expect(await call('POST', '/v1/bindings', alice, bind('10.0.5.7/32'), { 'x-request-id': 'retry-1' })).toMatchObject({ status: 422, body: { field: 'X-Request-Id' } });
    expect(server.history.current!.version).toBe(v + 2);
    // Bob's ids are his own.
    expect(await call('POST', '/v1/bindings', 'bob-token-0123456789', bind('10.0.5.7/32'), { 'x-request-id': 'retry-1' })).toMatchObject({ status: 200, body: { outcome: 'published', version: v + 3 } });
    // Restarted (the store is the record): the retry is still answered as it was.
    await server.close();
    await start();
    expect(await call('POST', '/v1/bindings', alice, bind('10.0.4.7/32'), { 'x-request-id': 'retry-1' })).toMatchObject({ status: 200, body: { version: v + 1, replayed: true } });
    expect(server.history.current!.version).toBe(v + 3);
  });
});
