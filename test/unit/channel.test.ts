import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import https from 'node:https';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { ControlPlaneClient } from '../../src/agent/client.js';
import { AgentSession } from '../../src/agent/session.js';
import { StateStore } from '../../src/agent/store.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { encodeFrame } from '../../src/protocol/messages.js';
import { makeCerts, type TestCerts } from '../support/certs.js';
import { WebSocket } from 'ws';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: [443] } };
const state = (extra: string[] = []) =>
  parseDesiredState({ bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }, ...extra.map((p) => ({ label: 'spectrum', protocol: 'tcp', prefix: p, port: 443 }))], services: SERVICES }, 'test');

const eventually = async (what: string, check: () => boolean, ms = 5000) => {
  for (let t = 0; t < ms; t += 20) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what}: not within ${ms} ms`);
};

describe.skipIf(!hasOpenssl)('control-plane channel over TLS (loopback)', () => {
  let certs: TestCerts;
  let dir: string;
  let server: ControlPlaneServer;
  let port: number;
  const clients: ControlPlaneClient[] = [];
  beforeAll(() => {
    certs = makeCerts();
  });
  afterAll(() => fs.rmSync(certs.dir, { recursive: true, force: true }));
  beforeEach(async () => {
    dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sy-channel-')), 'state');
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'secret-1' }, adminToken: 'admin', pingMs: 200, epoch: 'e1' });
    port = await server.listen();
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.stop();
    await server.close();
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });

  function agent(options: { token?: string; ca?: string } = {}) {
    const events: string[] = [];
    const applied: number[] = [];
    let client: ControlPlaneClient | undefined;
    const session = new AgentSession({
      agentId: 'edge-1',
      agentVersion: 'test',
      store: new StateStore(dir),
      send: (f) => client?.send(encodeFrame(f)),
      apply: async (s) => void applied.push(s.bindings.count),
    });
    client = new ControlPlaneClient(session, {
      url: `wss://127.0.0.1:${port}/`,
      ca: options.ca ?? certs.ca,
      token: options.token ?? 'secret-1',
      heartbeatMs: 100,
      deadAfterMs: 500,
      backoff: { initialMs: 50, factor: 1.6, maxMs: 500, jitter: 0.2 },
      onEvent: (e) => events.push(e),
    });
    clients.push(client);
    client.start();
    return { session, client, events, applied };
  }

  it('pushes a snapshot, then a delta; ACKs reach the control plane, heartbeats too', async () => {
    server.publish(state());
    const a = agent();
    await eventually('v1 acknowledged', () => server.status()[0]?.applied?.version === 1);
    server.publish(state(['192.0.2.200/32']));
    await eventually('v2 acknowledged', () => server.status()[0]?.applied?.version === 2);
    expect(a.session.applied!.version).toBe(2);
    expect(a.applied).toEqual([1, 2]);
    await eventually('a heartbeat', () => server.status()[0]!.lastHeartbeat !== null);
    const get = (token: string) =>
      new Promise<{ code: number; body: string }>((resolve, reject) => {
        https
          .get({ host: '127.0.0.1', port, path: '/status', ca: certs.ca, headers: { authorization: `Bearer ${token}` } }, (res) => {
            let body = '';
            res.on('data', (d) => (body += d));
            res.on('end', () => resolve({ code: res.statusCode ?? 0, body }));
          })
          .on('error', reject);
      });
    const ok = await get('admin');
    expect(ok.code).toBe(200);
    expect(JSON.parse(ok.body).agents[0]).toMatchObject({ agentId: 'edge-1', connected: true, applied: { version: 2 } });
    expect((await get('wrong')).code).toBe(401);
  });

  it('a push held back by unsent data is made once it is written, not lost', async () => {
    server.publish(state());
    const a = agent();
    const acks: number[] = [];
    server.on('ack', (_: string, version: number) => {
      acks.push(version);
      // Right after the ACK the server answers it (up-to-date) and that frame
      // is still in the TLS socket's queue when this publish comes.
      if (version === 1) queueMicrotask(() => server.publishDelta({ add: [{ label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.9/32', port: 443 }], remove: [] }));
    });
    await eventually('v2 acknowledged', () => server.status()[0]?.applied?.version === 2);
    expect(acks).toEqual([1, 2]);
    expect(a.applied).toEqual([1, 2]);
  });

  it('sends big snapshots in fragments, a bounded number at a time, to every agent', async () => {
    await server.close();
    const tokens = Object.fromEntries(['a', 'b', 'c', 'edge-1'].map((id) => [id, `t-${id}`]));
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens, pingMs: 200, epoch: 'e1', snapshotConcurrency: 1 });
    port = await server.listen();
    // 3,000 bindings: a snapshot of ~200 KB, several fragments.
    const big = parseDesiredState({ bindings: Array.from({ length: 3000 }, (_, i) => ({ label: 'cdn', protocol: 'tcp', prefix: `10.${i >> 8}.${i & 255}.0/24`, port: 0 })), services: SERVICES }, 'big');
    // What the server's sockets are asked to send: fragments per message, and how many messages are under way at once.
    const send = WebSocket.prototype.send;
    const open = new Map<WebSocket, number>(); // socket → fragments of its message so far
    const fragments: number[] = [];
    let concurrent = 0;
    WebSocket.prototype.send = function (this: WebSocket, data: unknown, options?: unknown, cb?: unknown) {
      const fin = (options as { fin?: boolean } | undefined)?.fin !== false;
      if (Buffer.isBuffer(data) && (!fin || open.has(this))) {
        open.set(this, (open.get(this) ?? 0) + 1);
        concurrent = Math.max(concurrent, open.size);
        if (fin) {
          fragments.push(open.get(this)!);
          open.delete(this);
        }
      }
      return (send as (...a: unknown[]) => void).call(this, data, options, cb);
    } as typeof send;
    const a = agent({ token: 't-edge-1' });
    // Three bare agents that ACK whatever they get, and count the bytes of each message.
    const sizes: number[] = [];
    const bare = ['a', 'b', 'c'].map((id) => {
      const socket = new WebSocket(`wss://127.0.0.1:${port}/`, { ca: certs.ca, headers: { authorization: `Bearer t-${id}` } });
      socket.on('open', () => socket.send(JSON.stringify({ type: 'hello', protocol: 1, agent_id: id, agent_version: 'test', capabilities: [], have: null, refused: null })));
      socket.on('message', (data: Buffer) => {
        const f = JSON.parse(data.toString()) as { type: string; epoch: string; version: number; digest: string };
        if (f.type !== 'snapshot') return;
        sizes.push(data.length);
        socket.send(JSON.stringify({ type: 'ack', epoch: f.epoch, version: f.version, digest: f.digest }));
      });
      return socket;
    });
    try {
      // All four connected before the publish: their snapshots are due at once.
      await eventually('all four connected', () => server.status().filter((s) => s.connected).length === 4);
      server.publish(big);
      await eventually('all four acknowledged', () => server.status().filter((s) => s.applied?.version === 1).length === 4);
      expect(a.applied).toEqual([3000]); // the real agent validated and applied it whole
      expect(sizes).toHaveLength(3);
      expect(sizes.every((n) => n > 150_000)).toBe(true); // each a whole message, reassembled from fragments
      expect(fragments).toHaveLength(4);
      expect(fragments.every((n) => n >= 3)).toBe(true); // ~200 KB in 64 KiB pieces
      expect(concurrent).toBe(1); // snapshotConcurrency: 1
    } finally {
      WebSocket.prototype.send = send;
      for (const socket of bare) socket.terminate();
    }
  });

  it('refuses a wrong token (401) and an agent that does not trust the server’s CA', async () => {
    server.publish(state());
    const wrongToken = agent({ token: 'nope' });
    await eventually('refused', () => wrongToken.events.includes('refused'));
    wrongToken.client.stop();
    const wrongCa = agent({ ca: certs.otherCa });
    await eventually('a TLS error', () => wrongCa.events.includes('error'));
    expect(wrongCa.events).not.toContain('connected');
    expect(server.status()).toEqual([]);
  });

  it('resumes after the control plane restarts: the agent says what it has and gets up-to-date', async () => {
    server.publish(state(['192.0.2.200/32']));
    const a = agent();
    await eventually('acknowledged', () => server.status()[0]?.applied?.version === 1);
    await server.close();
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'secret-1' }, pingMs: 200, epoch: 'e1', port });
    server.publish(state(['192.0.2.200/32']));
    await server.listen();
    // Connected first, then its hello says what it has.
    await eventually('reconnected and said what it has', () => server.status()[0]?.connected === true && server.status()[0]?.applied?.version === 1);
    expect(a.applied).toEqual([2]); // applied once; the resumed channel sent up-to-date
    expect(a.events.filter((e) => e === 'connected').length).toBe(2);
  });
});

describe('reconnection backoff', () => {
  it('grows by 1.6 from 1 s to 120 s, with ±20 % jitter', () => {
    expect(ControlPlaneClient.backoffMs(0, undefined, () => 0.5)).toBe(1000);
    expect(ControlPlaneClient.backoffMs(1, undefined, () => 0.5)).toBe(1600);
    expect(ControlPlaneClient.backoffMs(30, undefined, () => 0.5)).toBe(120_000);
    expect(ControlPlaneClient.backoffMs(0, undefined, () => 0)).toBe(800);
    expect(ControlPlaneClient.backoffMs(0, undefined, () => 1)).toBe(1200);
  });
});
