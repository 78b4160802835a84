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

  function agent(options: { token?: string; ca?: string; urls?: string[] } = {}) {
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
      urls: options.urls ?? [`wss://127.0.0.1:${port}/`],
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
    await server.publish(state());
    const a = agent();
    await eventually('v1 acknowledged', () => server.status()[0]?.applied?.version === 1);
    await server.publish(state(['192.0.2.200/32']));
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

  it('an agent given several replicas moves to the next when one goes away, and resumes without applying again', async () => {
    // A second control plane with the same epoch and versions (replicas of one store say the same).
    const other = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'secret-1' }, pingMs: 200, epoch: 'e1' });
    const otherPort = await other.listen();
    try {
      await server.publish(state());
      await other.publish(state());
      const a = agent({ urls: [`wss://127.0.0.1:${port}/`, `wss://127.0.0.1:${otherPort}/`] });
      await eventually('v1 acknowledged on the first', () => server.status()[0]?.applied?.version === 1);
      expect(a.client.url).toBe(`wss://127.0.0.1:${port}/`);
      await server.close();
      await eventually('connected to the second', () => other.status()[0]?.connected === true);
      expect(a.client.url).toBe(`wss://127.0.0.1:${otherPort}/`);
      await eventually('the second knows it has version 1', () => other.status()[0]?.applied?.version === 1);
      expect(a.applied).toEqual([1]); // up to date: nothing applied again
      await other.publish(state(['192.0.2.200/32']));
      await eventually('v2 from the second', () => a.applied.length === 2);
      expect(a.applied).toEqual([1, 2]);
    } finally {
      await other.close();
      server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'secret-1' }, pingMs: 200, epoch: 'e1' }); // afterEach closes one
    }
  });

  it('a push held back by unsent data is made once it is written, not lost', async () => {
    await server.publish(state());
    const a = agent();
    const acks: number[] = [];
    server.on('ack', (_: string, version: number) => {
      acks.push(version);
      // Right after the ACK the server answers it (up-to-date) and that frame
      // is still in the TLS socket's queue when this publish comes.
      if (version === 1) queueMicrotask(() => void server.publishDelta({ add: [{ label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.9/32', port: 443 }], remove: [] }));
    });
    await eventually('v2 acknowledged', () => server.status()[0]?.applied?.version === 2);
    expect(acks).toEqual([1, 2]);
    expect(a.applied).toEqual([1, 2]);
  });

  it('sends big snapshots in fragments, a bounded number at a time, to every agent; compressed (a binary frame) to the agent that asks', async () => {
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
    const binary: boolean[] = [];
    let concurrent = 0;
    WebSocket.prototype.send = function (this: WebSocket, data: unknown, options?: unknown, cb?: unknown) {
      const fin = (options as { fin?: boolean } | undefined)?.fin !== false;
      if (Buffer.isBuffer(data) && (!fin || open.has(this) || (options as { binary?: boolean } | undefined)?.binary)) {
        if (!open.has(this)) binary.push((options as { binary?: boolean } | undefined)?.binary === true);
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
    const types: string[] = [];
    const bare = ['a', 'b', 'c'].map((id) => {
      const socket = new WebSocket(`wss://127.0.0.1:${port}/`, { ca: certs.ca, headers: { authorization: `Bearer t-${id}` } });
      socket.on('open', () => socket.send(JSON.stringify({ type: 'hello', protocol: 1, agent_id: id, agent_version: 'test', capabilities: [], have: null, refused: null })));
      socket.on('message', (data: Buffer) => {
        const f = JSON.parse(data.toString()) as { type: string; epoch: string; version: number; digest: string };
        types.push(f.type);
        if (f.type !== 'snapshot') return;
        sizes.push(data.length);
        socket.send(JSON.stringify({ type: 'ack', epoch: f.epoch, version: f.version, digest: f.digest }));
      });
      return socket;
    });
    try {
      // All four connected before the publish: their snapshots are due at once.
      await eventually('all four connected', () => server.status().filter((s) => s.connected).length === 4);
      await server.publish(big);
      await eventually('all four acknowledged', () => server.status().filter((s) => s.applied?.version === 1).length === 4);
      expect(a.applied).toEqual([3000]); // the real agent validated and applied it whole
      expect(sizes).toHaveLength(3);
      expect(sizes.every((n) => n > 150_000)).toBe(true); // each a whole message, reassembled from fragments
      expect(fragments).toHaveLength(4);
      // The three bare agents (no capability): ~200 KB of text in 64 KiB pieces; the real agent asked for gzip: one binary frame.
      expect(binary.filter((b) => b)).toHaveLength(1);
      expect(fragments.filter((n, i) => !binary[i] && n >= 3)).toHaveLength(3);
      expect(concurrent).toBe(1); // snapshotConcurrency: 1
      // An ACK is not answered "up to date": the agent said so itself.
      await new Promise((r) => setTimeout(r, 200));
      expect(types).toEqual(['snapshot', 'snapshot', 'snapshot']);
    } finally {
      WebSocket.prototype.send = send;
      for (const socket of bare) socket.terminate();
    }
  });

  it('refuses a wrong token (401) and an agent that does not trust the server’s CA', async () => {
    await server.publish(state());
    const wrongToken = agent({ token: 'nope' });
    await eventually('refused', () => wrongToken.events.includes('refused'));
    wrongToken.client.stop();
    const wrongCa = agent({ ca: certs.otherCa });
    await eventually('a TLS error', () => wrongCa.events.includes('error'));
    expect(wrongCa.events).not.toContain('connected');
    expect(server.status()).toEqual([]);
  });

  it('resumes after the control plane restarts: the agent says what it has and gets up-to-date', async () => {
    await server.publish(state(['192.0.2.200/32']));
    const a = agent();
    await eventually('acknowledged', () => server.status()[0]?.applied?.version === 1);
    await server.close();
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'secret-1' }, pingMs: 200, epoch: 'e1', port });
    await server.publish(state(['192.0.2.200/32']));
    await server.listen();
    // Connected first, then its hello says what it has.
    await eventually('reconnected and said what it has', () => server.status()[0]?.connected === true && server.status()[0]?.applied?.version === 1);
    expect(a.applied).toEqual([2]); // applied once; the resumed channel sent up-to-date
    expect(a.events.filter((e) => e === 'connected').length).toBe(2);
  });
});

/** A big state: its snapshot (~7 MB) is more than the kernel takes for a peer that stopped reading (3.8 MB measured on loopback), so such a peer's writes wait. */
let bigState: ReturnType<typeof parseDesiredState> | undefined;
const big = () =>
  (bigState ??= parseDesiredState({ bindings: Array.from({ length: 110_000 }, (_, i) => ({ label: 'cdn', protocol: 'tcp', prefix: `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}/32`, port: 0 })), services: SERVICES }, 'big'));

describe.skipIf(!hasOpenssl)('control-plane channel: the fleet view and its limits (issue 15)', () => {
  let certs: TestCerts;
  let server: ControlPlaneServer | undefined;
  let port: number;
  const sockets: WebSocket[] = [];
  beforeAll(() => {
    certs = makeCerts();
  });
  afterAll(() => fs.rmSync(certs.dir, { recursive: true, force: true }));
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.terminate();
    await server?.close();
    server = undefined;
  });

  const start = async (options: Partial<ConstructorParameters<typeof ControlPlaneServer>[0]> & { tokens: Record<string, string> }) => {
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, epoch: 'e1', pingMs: 60_000, ...options });
    port = await server.listen();
    return server;
  };

  /** A bare agent over a real WebSocket: what it received, its close code; `reading: false` stops reading once open. */
  function bare(id: string, token: string, options: { reading?: boolean } = {}) {
    const socket = new WebSocket(`wss://127.0.0.1:${port}/`, { ca: certs.ca, headers: { authorization: `Bearer ${token}` } });
    sockets.push(socket);
    const frames: Array<{ type: string; version?: number; epoch?: string; digest?: string; at: number }> = [];
    socket.on('error', () => {});
    socket.on('message', (data: Buffer) => frames.push({ ...(JSON.parse(data.toString()) as { type: string }), at: performance.now() }));
    const opened = new Promise<void>((resolve) => socket.once('open', () => {
      if (options.reading === false) socket.pause(); // the kernel's buffers fill, then the server's writes wait
      resolve();
    }));
    const closed = new Promise<number>((resolve) => socket.once('close', (code: number) => resolve(code)));
    const hello = (extra: Record<string, unknown> = {}) => socket.send(JSON.stringify({ type: 'hello', protocol: 1, agent_id: id, agent_version: 'test', capabilities: [], have: null, refused: null, ...extra }));
    return { socket, frames, opened, closed, hello };
  }

  it('an agent whose connection closed before its hello was registered is not connected', async () => {
    await start({ tokens: { 'edge-9': 'secret-9' } });
    await server!.publish(state());
    const a = bare('edge-9', 'secret-9');
    await a.opened;
    a.socket.send('not json');
    expect(await a.closed).toBe(1008);
    expect(server!.status()).toMatchObject([{ agentId: 'edge-9', connected: false, applied: null }]);
    // A registered agent that goes away is disconnected too, and one that says hello is connected.
    const b = bare('edge-9', 'secret-9');
    await b.opened;
    b.hello();
    await eventually('connected', () => server!.status()[0]!.connected);
    b.socket.terminate();
    await eventually('disconnected', () => !server!.status()[0]!.connected);
  });

  it('refuses a frame over 64 KiB from an authenticated agent from its header (1009), without reading its payload', async () => {
    await start({ tokens: { 'edge-1': 'secret-1' } });
    await server!.publish(state());
    const a = bare('edge-1', 'secret-1');
    await a.opened;
    a.hello();
    await eventually('registered', () => server!.status()[0]?.connected === true && a.frames.length === 1);
    // Only the header of a masked 1 MiB text frame: the payload never comes. A
    // control plane that buffered the frame would wait for it forever.
    const header = Buffer.alloc(14);
    header[0] = 0x81; // FIN, text
    header[1] = 0x80 | 127; // masked, 64-bit length
    header.writeBigUInt64BE(BigInt(1 << 20), 2);
    header.writeUInt32BE(0x01020304, 10); // the mask
    (a.socket as unknown as { _socket: NodeJS.WritableStream })._socket.write(header);
    expect(await a.closed).toBe(1009);
    await eventually('disconnected', () => server!.status()[0]?.connected === false);
    // A whole 1 MiB frame, the same.
    const b = bare('edge-1', 'secret-1');
    await b.opened;
    b.socket.send(`{"type":"heartbeat","pad":"${'x'.repeat(1 << 20)}"}`);
    expect(await b.closed).toBe(1009);
  });

  it('a version NACKed by an agent is pushed again when it reconnects (its hello says what it refuses itself)', async () => {
    await start({ tokens: { 'edge-1': 'secret-1' } });
    await server!.publish(state());
    const a = bare('edge-1', 'secret-1');
    await a.opened;
    a.hello();
    await eventually('the snapshot', () => a.frames.some((f) => f.type === 'snapshot'));
    const v1 = a.frames.find((f) => f.type === 'snapshot')!;
    a.socket.send(JSON.stringify({ type: 'nack', epoch: v1.epoch, version: v1.version, code: 'EAPPLY', message: 'ipset restore failed (test)', details: [] }));
    await eventually('the NACK seen', () => server!.status()[0]?.lastNack?.code === 'EAPPLY');
    expect(server!.status()[0]!.inFlight).toBeNull(); // not pushed again on this connection
    a.socket.terminate();
    await a.closed;
    // The agent restarted (a transient failure cleared): a new hello, the version again.
    const b = bare('edge-1', 'secret-1');
    await b.opened;
    b.hello();
    await eventually('the snapshot pushed again', () => b.frames.some((f) => f.type === 'snapshot' && f.version === v1.version));
    b.socket.terminate();
    await b.closed;
    // A version the agent refuses itself (it died applying it) is not pushed.
    const c = bare('edge-1', 'secret-1');
    await c.opened;
    c.hello({ refused: { epoch: v1.epoch, version: v1.version } });
    await eventually('registered', () => server!.status()[0]?.connected === true);
    expect(server!.status()[0]!.inFlight).toBeNull(); // the hello was handled: nothing pushed
  });

  it('connections with one token hold at most one snapshot slot, however they are opened', async () => {
    const tokens = { x: 't-x', 'edge-1': 't-edge-1' };
    // Two slots, long deadlines and pings: only the one-connection-per-token rule can leave a slot free.
    await start({ tokens, snapshotConcurrency: 2, writeDeadlineMs: 60_000 });
    await server!.publish(big());
    const x = () => server!.status().find((s) => s.agentId === 'x');
    // Each hello says a different `have`: the status shows whose hello was registered last.
    const have = (n: number) => ({ have: { epoch: `x${n}`, version: n, digest: `sha256:${String(n).repeat(64)}` } });
    const x1 = bare('x', 't-x', { reading: false });
    await x1.opened;
    const x2 = bare('x', 't-x', { reading: false });
    await x2.opened;
    // Both opened before either says hello: x2 replaced x1 at once, so x1's hello is never heard.
    x1.hello(have(1));
    x2.hello(have(2));
    await eventually("x2's hello registered", () => x()?.applied?.epoch === 'x2' && x()?.inFlight === 1);
    const x3 = bare('x', 't-x', { reading: false });
    await x3.opened;
    x3.hello(have(3));
    await eventually("x3's hello registered", () => x()?.applied?.epoch === 'x3' && x()?.inFlight === 1);
    const real = bare('edge-1', 't-edge-1');
    await real.opened;
    real.hello();
    // Were x1 (or x2) still holding a slot, this would wait a minute (the write deadline, the pings).
    await eventually('the real agent has its snapshot', () => real.frames.some((f) => f.type === 'snapshot'), 15_000);
    // The replaced connections were ended (seen once their clients read again).
    x1.socket.resume();
    x2.socket.resume();
    expect(await x1.closed).toBe(1006);
    expect(await x2.closed).toBe(1006);
  });

  it('40 clients that stop reading do not delay a real agent’s snapshot beyond the write deadline', async () => {
    const ids = Array.from({ length: 40 }, (_, i) => `n${i}`);
    const tokens: Record<string, string> = Object.fromEntries([...ids, 'edge-1'].map((id) => [id, `t-${id}`]));
    const deadline = 1000;
    await start({ tokens, writeDeadlineMs: deadline }); // 32 slots, pings every minute
    const stalled: string[] = [];
    server!.on('stalled', (id: string) => stalled.push(id));
    await server!.publish(big());
    const idle = ids.map((id) => bare(id, `t-${id}`, { reading: false }));
    await Promise.all(idle.map((c) => c.opened));
    for (const c of idle) c.hello();
    // Every slot taken by a client that does not read; 8 more wait for one.
    await eventually('32 slots taken', () => server!.status().filter((s) => s.inFlight !== null).length === 32, 15_000);
    const real = bare('edge-1', 't-edge-1');
    await real.opened;
    const asked = performance.now();
    real.hello();
    await eventually('the real agent has its snapshot', () => real.frames.some((f) => f.type === 'snapshot'), 20_000);
    const waited = real.frames.find((f) => f.type === 'snapshot')!.at - asked;
    // The stalled clients gave their slots up after the deadline (not a minute
    // later, at their pings); the margin is for sending 7 MB to 9 clients at once.
    expect(stalled.length).toBeGreaterThanOrEqual(32);
    expect(waited).toBeLessThan(deadline + 8000);
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
