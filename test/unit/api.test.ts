import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import { spawnSync } from 'node:child_process';
import { WebSocket } from 'ws';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { BindingsApi } from '../../src/controlplane/api.js';
import { StateFile } from '../../src/controlplane/statefile.js';
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

/** A control plane on INITIAL serving the API (its state saved to `stateFile`, when given); what the tests' hooks need. */
async function apiServer(stateFile?: ConstructorParameters<typeof ControlPlaneServer>[0]['stateFile']) {
  const certs = makeCerts();
  const server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'agent-token' }, adminToken: 'admin', epoch: 'e', ...(stateFile ? { stateFile } : {}) });
  await server.propose(parseDesiredState(INITIAL, 'initial'), 'test');
  server.serveApi(new BindingsApi(server));
  const port = await server.listen();
  return { certs, server, port };
}

describe.skipIf(!hasOpenssl)('service-bindings API', () => {
  let certs: TestCerts;
  let server: ControlPlaneServer;
  let port: number;
  const written: unknown[] = [];
  beforeAll(async () => {
    ({ certs, server, port } = await apiServer({ write: (doc) => void written.push(doc) }));
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
    expect(await server.allowWithdrawal(before + 1)).toEqual([]);
    expect(server.history.current!.version).toBe(before + 1);
    expect(server.history.indexed!.labelCount('cdn')).toBe(0);
  });

  it('a binding listed twice in one request: 400 naming the entry, nothing changes', async () => {
    const before = server.history.current!.version;
    const twice = { label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 };
    const added = await call('POST', '/v1/bindings', { bindings: [twice, twice] });
    expect(added).toMatchObject({ status: 400, body: { field: 'request (add): bindings[1]' } });
    expect(server.history.current!.version).toBe(before);
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
    expect(Object.keys(spec.body.paths as object)).toEqual(['/v1/openapi.json', '/status', '/override', '/v1/audit', '/v1/state', '/v1/bindings', '/v1/services', '/v1/services/{label}', '/v1/https-only']);
    // No store here: an empty trail (the store tests read a real one); a bad query names its field.
    expect(await call('GET', '/v1/audit')).toMatchObject({ status: 200, body: { entries: [] } });
    expect(await call('GET', '/v1/audit?limit=x')).toMatchObject({ status: 400, body: { field: 'limit' } });
    expect(await call('PATCH', '/v1/bindings')).toMatchObject({ status: 404 });
  });
});

/** One HTTPS request to the API; `body` as a string is sent verbatim (JSON.stringify cannot write a "__proto__" key). */
function request(port: number, ca: string, method: string, route: string, body?: unknown, token = 'admin') {
  return new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
    const payload = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) };
    const req = https.request({ host: '127.0.0.1', port, path: route, method, ca, headers }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

const eventually = async (what: string, check: () => boolean, ms = 5000) => {
  for (let t = 0; t < ms; t += 20) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what}: not within ${ms} ms`);
};

const CARVE = { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 };
const WITHDRAW_CDN = { bindings: Array.from({ length: 60 }, (_, i) => ({ protocol: 'tcp', prefix: `10.0.${i}.0/24`, port: 0 })) };

describe.skipIf(!hasOpenssl)('service-bindings API: a change is saved before it is published (issue 15)', () => {
  let certs: TestCerts;
  let dir: string;
  let file: string;
  let server: ControlPlaneServer;
  let port: number;
  let agent: WebSocket | undefined;
  beforeAll(() => {
    certs = makeCerts();
  });
  afterAll(() => fs.rmSync(certs.dir, { recursive: true, force: true }));
  afterEach(async () => {
    vi.restoreAllMocks();
    agent?.terminate();
    agent = undefined;
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A control plane on a real state file (the daemon's StateFile), v1 published from it, one agent connected with v1 acknowledged. */
  async function start(store?: { write(doc: unknown): void }) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-api-'));
    file = path.join(dir, 'desired.json');
    fs.writeFileSync(file, JSON.stringify(INITIAL), { mode: 0o644 });
    const stateFile = new StateFile(file);
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'agent-token' }, adminToken: 'admin', epoch: 'e', stateFile: store ?? stateFile });
    await server.propose(parseDesiredState(INITIAL, 'initial'), 'test');
    server.serveApi(new BindingsApi(server));
    port = await server.listen();
    agent = new WebSocket(`wss://127.0.0.1:${port}/`, { ca: certs.ca, headers: { authorization: 'Bearer agent-token' } });
    const socket = agent;
    socket.on('open', () => socket.send(JSON.stringify({ type: 'hello', protocol: 1, agent_id: 'edge-1', agent_version: 'test', capabilities: ['delta'], have: null, refused: null })));
    socket.on('message', (data: Buffer) => {
      const f = JSON.parse(data.toString()) as { type: string; epoch: string; version: number; digest: string };
      if (f.type === 'snapshot' || f.type === 'delta') socket.send(JSON.stringify({ type: 'ack', epoch: f.epoch, version: f.version, digest: f.digest }));
    });
    await eventually('v1 acknowledged', () => server.status()[0]?.applied?.version === 1 && server.status()[0]?.inFlight === null);
    return stateFile;
  }
  const call = (method: string, route: string, body?: unknown) => request(port, certs.ca, method, route, body);
  /** What an agent could see: the version in force and a push in flight (a publish starts its push at once, before the answer). */
  const seen = () => ({ version: server.history.current!.version, inFlight: server.status()[0]!.inFlight });

  it('a change that cannot be saved (EROFS, as under the unit) answers 507 naming the reason, is reported, and is not published', async () => {
    await start();
    const before = fs.readFileSync(file, 'utf8');
    const unsaved: Array<{ source: string; message: string }> = [];
    server.on('unsaved', (source: string, err: Error) => unsaved.push({ source, message: err.message }));
    // The unit's /etc: read-only (injected where the temporary file is made).
    const open = fs.openSync;
    vi.spyOn(fs, 'openSync').mockImplementation(((p: fs.PathLike, ...rest: unknown[]) => {
      if (String(p).startsWith(dir) && String(p).endsWith('.tmp')) throw Object.assign(new Error(`EROFS: read-only file system, open '${String(p)}'`), { code: 'EROFS', errno: -30, syscall: 'open', path: String(p) });
      return (open as (...a: unknown[]) => number)(p, ...rest);
    }) as typeof fs.openSync);
    const r = await call('POST', '/v1/bindings', { bindings: [CARVE] });
    expect(r.status).toBe(507);
    expect(r.body).toMatchObject({ outcome: 'unsaved', code: 'EROFS' });
    expect(r.body.error).toContain(file);
    expect(r.body.error).toContain('EROFS');
    expect(seen()).toEqual({ version: 1, inFlight: null }); // nothing published, nothing pushed
    expect(server.publicationStatus().last?.source).toBe('test');
    expect(unsaved).toEqual([{ source: 'api POST /v1/bindings', message: expect.stringContaining('EROFS') }]);
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
    expect(fs.readdirSync(dir)).toEqual(['desired.json']);
    // Writable again: saved, then published.
    vi.restoreAllMocks();
    expect((await call('POST', '/v1/bindings', { bindings: [CARVE] })).body).toMatchObject({ outcome: 'published', version: 2 });
    expect((JSON.parse(fs.readFileSync(file, 'utf8')) as { bindings: unknown[] }).bindings).toContainEqual(CARVE);
    expect(fs.statSync(file).mode & 0o777).toBe(0o644); // its mode kept
  });

  it('a state directory that is gone: 507 with ENOENT, nothing published', async () => {
    await start();
    fs.rmSync(dir, { recursive: true, force: true });
    const r = await call('POST', '/v1/bindings', { bindings: [CARVE] });
    expect(r).toMatchObject({ status: 507, body: { code: 'ENOENT' } });
    expect(seen()).toEqual({ version: 1, inFlight: null });
  });

  it('judged without publishing, saved, then published: no agent can see a change the file does not have', async () => {
    const atWrite: Array<ReturnType<typeof seen>> = [];
    await start({ write: () => void atWrite.push(seen()) });
    expect((await call('POST', '/v1/bindings', { bindings: [CARVE] })).body).toMatchObject({ outcome: 'published', version: 2 });
    expect(atWrite).toEqual([{ version: 1, inFlight: null }]); // written while v1 was still in force and nothing in flight
    expect(seen().version).toBe(2);
  });

  it('a refused change is not written; a held one neither, until it is confirmed: saved, then published (unsaved, it stays held)', async () => {
    const written: unknown[] = [];
    let failing = false;
    await start({
      write: (doc) => {
        if (failing) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        written.push(doc);
      },
    });
    expect(await call('POST', '/v1/bindings', { bindings: [{ label: 'nobody', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }] })).toMatchObject({ status: 422 });
    const held = await call('DELETE', '/v1/bindings', WITHDRAW_CDN);
    expect(held).toMatchObject({ status: 202, body: { outcome: 'held', version: 2 } });
    expect(written).toEqual([]); // the file keeps the state in force: a restart publishes what the agents have
    failing = true;
    const unsaved = await request(port, certs.ca, 'POST', '/override', { version: 2 });
    expect(unsaved).toMatchObject({ status: 507, body: { code: 'ENOSPC' } });
    expect(seen()).toEqual({ version: 1, inFlight: null });
    expect(server.publicationStatus().held).toMatchObject({ version: 2 });
    failing = false;
    expect(await request(port, certs.ca, 'POST', '/override', { version: 2 })).toMatchObject({ status: 200, body: { version: 2 } });
    expect(written).toHaveLength(1);
    expect((written[0] as { bindings: Array<{ label: string }> }).bindings.filter((b) => b.label === 'cdn')).toEqual([]);
    expect(seen().version).toBe(2);
  });

  it("the file watcher does not propose the API's own write again, and still follows an operator's edit", async () => {
    const stateFile = await start();
    const proposed: string[] = [];
    const log = { error: () => {} } as unknown as Parameters<StateFile['watch']>[0];
    const watch = stateFile.watch(log, (_state, why) => proposed.push(why));
    try {
      expect(proposed).toEqual(['start']);
      expect((await call('POST', '/v1/bindings', { bindings: [CARVE] })).body).toMatchObject({ outcome: 'published', version: 2 });
      // An edit after the API's write: once the watcher has seen it, it has seen the API's write before it.
      const edited = { ...INITIAL, bindings: [...INITIAL.bindings, { label: 'spectrum', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 }] };
      fs.writeFileSync(file, JSON.stringify(edited));
      await eventually("the operator's edit proposed", () => proposed.length > 1);
      expect(proposed).toEqual(['start', 'file changed']);
    } finally {
      watch.close();
    }
  });
});

describe.skipIf(!hasOpenssl)("service-bindings API: own properties only (Object.prototype's names are not fields)", () => {
  let certs: TestCerts;
  let server: ControlPlaneServer;
  let port: number;
  beforeAll(async () => {
    ({ certs, server, port } = await apiServer());
  });
  afterAll(async () => {
    await server.close();
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });
  const call = (method: string, route: string, body?: unknown) => request(port, certs.ca, method, route, body);
  const NAMES = ['constructor', 'toString', '__proto__', 'valueOf', 'hasOwnProperty', 'isPrototypeOf', '__defineGetter__'];
  const unchanged = () => expect(server.history.current!.version).toBe(1);

  it('a field named like one of them is an unknown field (400 naming it), in the body and in each entry', async () => {
    for (const name of NAMES) {
      const field = JSON.stringify(name);
      const bindingsBody = `{"bindings": [${JSON.stringify(CARVE)}], ${field}: 1}`;
      expect(await call('POST', '/v1/bindings', bindingsBody), name).toMatchObject({ status: 400, body: { field: name } });
      expect(await call('DELETE', '/v1/bindings', `{"bindings": [{"protocol": "tcp", "prefix": "192.0.2.0/24", "port": 0}], ${field}: 1}`), name).toMatchObject({ status: 400, body: { field: name } });
      expect(await call('POST', '/v1/bindings', `{"bindings": [{"label": "cdn", "protocol": "tcp", "prefix": "192.0.2.200/32", "port": 443, ${field}: 1}]}`), name).toMatchObject({ status: 400, body: { field: 'bindings[0]' } });
      expect(await call('DELETE', '/v1/bindings', `{"bindings": [{"protocol": "tcp", "prefix": "192.0.2.0/24", "port": 0, ${field}: 1}]}`), name).toMatchObject({ status: 400, body: { field: 'bindings[0]' } });
      expect(await call('POST', '/v1/https-only', `{"prefixes": ["192.0.2.0/26"], ${field}: 1}`), name).toMatchObject({ status: 400, body: { field: name } });
      expect((await call('PUT', '/v1/https-only', `{"prefixes": [], ${field}: 1}`)).status, name).toBe(400);
      expect((await call('PUT', '/v1/services/cdn', `{"tcp": [443], ${field}: 1}`)).status, name).toBe(400);
      expect((await call('POST', '/override', `{${field}: 1}`)).status, name).toBe(400);
      // The body's own field missing, an inherited one present: not found either.
      expect(await call('POST', '/v1/bindings', `{${field}: {"bindings": [${JSON.stringify(CARVE)}]}}`), name).toMatchObject({ status: 400 });
    }
    unchanged();
  });

  it('a service label named like one of them is never found on Object.prototype', async () => {
    for (const name of NAMES) {
      const route = `/v1/services/${encodeURIComponent(name)}`;
      // Nothing to delete: refused (400: not a usable label; or 404: no such policy), never "unchanged".
      const gone = await call('DELETE', route);
      expect([400, 404], `${name}: ${JSON.stringify(gone)}`).toContain(gone.status);
      // Set: either refused naming the label, or an own policy that GET lists.
      const set = await call('PUT', route, { tcp: [443] });
      if (set.status === 400) expect(set.body, name).toMatchObject({ field: 'label' });
      else {
        expect(set.body, name).toMatchObject({ outcome: 'published' });
        const services = (await call('GET', '/v1/services')).body.services as Record<string, unknown>;
        expect(Object.hasOwn(services, name), name).toBe(true);
        expect((await call('DELETE', route)).body, name).toMatchObject({ outcome: 'published' });
      }
      // A binding to a label with no policy: refused (ENOPOLICY, or the label itself), never published.
      const bound = await call('POST', '/v1/bindings', { bindings: [{ label: name, protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }] });
      expect([400, 422], `${name}: ${JSON.stringify(bound)}`).toContain(bound.status);
    }
    expect(await call('PUT', '/v1/services/%E0', { tcp: [443] })).toMatchObject({ status: 400, body: { field: 'label' } });
    expect(server.history.indexed!.state.services.has('__proto__')).toBe(false);
  });
});
