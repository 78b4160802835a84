import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import https from 'node:https';
import { spawnSync } from 'node:child_process';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { BindingsApi } from '../../src/controlplane/api.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { makeCerts, type TestCerts } from '../support/certs.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: ['1-65535'] } };
const INITIAL = {
  bindings: [
    ...Array.from({ length: 60 }, (_, i) => ({ label: 'cdn', protocol: 'tcp', prefix: `10.0.${i}.0/24`, port: 0 })),
    { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 },
  ],
  services: SERVICES,
};

describe.skipIf(!hasOpenssl)('service-bindings API', () => {
  let certs: TestCerts;
  let server: ControlPlaneServer;
  let port: number;
  const written: unknown[] = [];
  beforeAll(async () => {
    certs = makeCerts();
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'agent-token' }, adminToken: 'admin', epoch: 'e' });
    server.propose(parseDesiredState(INITIAL, 'initial'), 'test');
    server.serveApi(new BindingsApi(server, { write: (doc) => written.push(doc) }));
    port = await server.listen();
  });
  afterAll(async () => {
    await server.close();
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  const call = (method: string, path: string, body?: unknown, token = 'admin') =>
    new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
      const payload = body === undefined ? '' : JSON.stringify(body);
      // Content-Length always: Node sends a DELETE's body unframed otherwise.
      const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) };
      const req = https.request({ host: '127.0.0.1', port, path, method, ca: certs.ca, headers }, (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} }));
      });
      req.on('error', reject);
      req.end(payload);
    });

  it('binds and unbinds through the publishing policy, and writes what it publishes back', async () => {
    const carve = { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 };
    const added = await call('POST', '/v1/bindings', { bindings: [carve] });
    expect(added.status).toBe(200);
    expect(added.body).toMatchObject({ outcome: 'published', version: 2, changes: ['spectrum loses 1 IPv4 address on tcp port 443 to cdn'] });
    expect((written.at(-1) as { bindings: unknown[] }).bindings).toContainEqual(carve);
    const listed = await call('GET', '/v1/bindings?label=cdn&prefix=192.0.2.200/32');
    expect(listed.body).toEqual({ version: 2, bindings: [carve] });
    // The same key again: a conflict naming the entry; a bad prefix: a 400 naming the field.
    expect(await call('POST', '/v1/bindings', { bindings: [{ ...carve, label: 'spectrum' }] })).toMatchObject({ status: 409, body: { field: 'bindings[0]' } });
    expect(await call('POST', '/v1/bindings', { bindings: [{ ...carve, prefix: '192.0.2.1/24' }] })).toMatchObject({ status: 400, body: { field: 'bindings[0]' } });
    const removed = await call('DELETE', '/v1/bindings', { bindings: [{ protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 }] });
    expect(removed.body).toMatchObject({ outcome: 'published', version: 3, changes: ['cdn loses 1 IPv4 address on tcp port 443 to spectrum'] });
    expect(await call('DELETE', '/v1/bindings', { bindings: [{ protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 }] })).toMatchObject({ status: 404 });
  });

  it('refuses what verification refuses, holds a withdrawal until it is confirmed', async () => {
    const orphan = await call('POST', '/v1/bindings', { bindings: [{ label: 'nobody', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }] });
    expect(orphan.status).toBe(422);
    expect(orphan.body).toMatchObject({ outcome: 'refused', findings: [{ code: 'ENOPOLICY', witness: { protocol: 'udp', address: '203.0.113.0', port: 53 } }] });
    const before = server.history.current!.version;
    const gone = await call('DELETE', '/v1/bindings', { bindings: Array.from({ length: 60 }, (_, i) => ({ protocol: 'tcp', prefix: `10.0.${i}.0/24`, port: 0 })) });
    expect(gone.body).toMatchObject({ outcome: 'held' });
    expect(gone.status).toBe(202);
    expect(gone.body).toMatchObject({ outcome: 'held', version: before + 1, confirm: `POST /override {"version": ${before + 1}}` });
    expect(server.history.current!.version).toBe(before); // not published
    expect(server.publicationStatus().held).toMatchObject({ version: before + 1 });
    expect(server.allowWithdrawal(before + 1)).toEqual([]);
    expect(server.history.current!.version).toBe(before + 1);
    expect(server.history.indexed!.labelCount('cdn')).toBe(0);
  });

  it('sets service policies and HTTPS-only ranges; needs the admin token; describes itself', async () => {
    expect((await call('PUT', '/v1/services/cdn', { tcp: [443] })).body).toMatchObject({ outcome: 'published' });
    expect((await call('GET', '/v1/services')).body).toMatchObject({ services: { cdn: { tcp: [443], udp: [] } } });
    expect(await call('PUT', '/v1/services/cdn', { tcp: ['70000'] })).toMatchObject({ status: 400, body: { field: 'request: services.cdn.tcp[0]' } });
    expect((await call('PUT', '/v1/https-only', { prefixes: ['192.0.2.0/26'] })).body).toMatchObject({ outcome: 'published' });
    expect((await call('POST', '/v1/https-only', { prefixes: ['192.0.2.64/26'] })).body).toMatchObject({ outcome: 'published' });
    expect(await call('POST', '/v1/https-only', { prefixes: ['192.0.2.64/26'] })).toMatchObject({ status: 409, body: { field: 'prefixes[0]' } });
    expect((await call('DELETE', '/v1/https-only', { prefixes: ['192.0.2.0/26'] })).body).toMatchObject({ outcome: 'published' });
    expect((await call('GET', '/v1/https-only')).body).toMatchObject({ https_only: { prefixes: ['192.0.2.64/26'] } });
    expect(await call('DELETE', '/v1/https-only', { prefixes: ['10.0.0.0/8'] })).toMatchObject({ status: 404 });
    expect(await call('GET', '/v1/state', undefined, 'agent-token')).toMatchObject({ status: 403 });
    expect(await call('GET', '/v1/state', undefined, 'nobody')).toMatchObject({ status: 401 });
    const spec = await call('GET', '/v1/openapi.json');
    expect(Object.keys(spec.body.paths as object)).toEqual(['/v1/state', '/v1/bindings', '/v1/services', '/v1/services/{label}', '/v1/https-only']);
    expect(await call('PATCH', '/v1/bindings')).toMatchObject({ status: 404 });
  });
});
