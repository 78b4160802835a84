/**
 * The OpenAPI document against what the code does (issue 18, item 4: it
 * had drifted — no `exclusive`, no `/status`, no `/override`): every route
 * the API's code handles is documented, every documented operation is
 * routed (a live server answers it with something other than "no such
 * route"), and the state schema lists exactly the fields the state parser
 * accepts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { BindingsApi, OPENAPI } from '../../src/controlplane/api.js';
import { STATE_FIELDS } from '../../src/desired/state.js';
import { makeCerts, type TestCerts } from '../support/certs.js';
import { cdnState } from '../support/store-scenario.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
const operations = Object.entries(OPENAPI.paths as Record<string, Record<string, unknown>>).flatMap(([route, item]) =>
  Object.keys(item)
    .filter((k) => ['get', 'put', 'post', 'delete'].includes(k))
    .map((method) => `${method.toUpperCase()} ${route}`),
);

describe('OpenAPI document', () => {
  it("lists the state's fields exactly as the parser accepts them", () => {
    expect(Object.keys(OPENAPI.components.schemas.State.properties).sort()).toEqual([...STATE_FIELDS].sort());
  });

  it('documents every route the API code handles', () => {
    const source = fs.readFileSync(path.resolve('src/controlplane/api.ts'), 'utf8');
    const handled = [...source.matchAll(/case '((?:GET|PUT|POST|DELETE) \/[^']*)':/g)].map((m) => m[1]!);
    expect(handled.length).toBeGreaterThan(10);
    for (const route of handled) expect(operations, route).toContain(route);
  });
});

describe.skipIf(!hasOpenssl)('OpenAPI document, against a live control plane', () => {
  let certs: TestCerts;
  let server: ControlPlaneServer;
  let port: number;
  beforeAll(async () => {
    certs = makeCerts();
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'agent-token-1' }, adminToken: 'admin-token-0123456789' });
    await server.publish(cdnState(5));
    server.serveApi(new BindingsApi(server));
    port = await server.listen();
  });
  afterAll(async () => {
    await server.close();
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  it('routes every documented operation (an answer other than "no such route")', async () => {
    for (const op of operations) {
      const [method, route] = op.split(' ') as [string, string];
      const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = https.request(
          { host: '127.0.0.1', port, method, path: route.replace('{label}', 'cdn'), ca: certs.ca, headers: { authorization: 'Bearer admin-token-0123456789', 'content-type': 'application/json', 'content-length': 2 } },
          (res) => {
            let body = '';
            res.on('data', (d) => (body += d));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          },
        );
        req.on('error', reject);
        req.end('{}');
      });
      expect(answer.body, op).not.toMatch(/no such route/);
      expect(answer.status === 404 && answer.body === '', op).toBe(false);
    }
  });
});
