/**
 * Simulated agents for the fleet bench (bench/fleet.ts), in a process of
 * their own: N WebSocket connections over TLS (the CA pinned, one bearer
 * token each) that speak the real protocol — hello with what they have,
 * then an ACK for each snapshot or delta carrying its epoch, version and
 * digest, and a NACK (EGAP) for a delta not on top of what they have. They
 * do not apply states or recompute digests (a real agent's work, measured
 * by bench/agent.ts): a snapshot's frame head is read, its 7 MB body is
 * only received. They ask for compressed snapshots, as agents do
 * (FLEET_GZIP=0: not), and inflate only a compressed one's first bytes.
 * A connection that ends is made again after 1–2 s, as agents do. Reports to the parent over IPC: connections, errors, and
 * for each version once all of them acknowledged it, when each did.
 *
 * argv: port, CA file, count, token prefix[, offset, token suffix] (agent i is
 * `fleet-${offset + i}` with token `${prefix}${offset + i}${suffix}`).
 */
import fs from 'node:fs';
import { WebSocket } from 'ws';
import zlib from 'node:zlib';
import { PROTOCOL_VERSION } from '../src/protocol/messages.js';
import { SNAPSHOT_GZIP, isGzip } from '../src/protocol/compress.js';

const [port, caFile, countText, prefix, offsetText, suffix] = process.argv.slice(2);
/** Agents offset..offset+count-1 (several of these processes share one fleet). */
const offset = Number(offsetText ?? 0);
const ca = fs.readFileSync(caFile!, 'utf8');
const count = Number(countText);
const send = (m: unknown) => process.send!(m);

interface Simulated {
  id: string;
  have: { epoch: string; version: number; digest: string } | null;
}

/** type, epoch, version, from_version and digest from a frame's first bytes (the snapshot text starts with them). */
function head(received: Buffer): { type: string; epoch: string; version: number; from_version?: number; digest: string } {
  // A compressed snapshot (SNAPSHOT_GZIP): only its first bytes inflated, enough for the head.
  const data = isGzip(received) ? zlib.gunzipSync(received.subarray(0, 4096), { finishFlush: zlib.constants.Z_SYNC_FLUSH }) : received;
  if (data.length < 4096 && !isGzip(received)) return JSON.parse(data.toString('utf8')) as ReturnType<typeof head>;
  const text = data.toString('utf8', 0, 1024);
  const field = (name: string) => new RegExp(`"${name}":("[^"]*"|\\d+)`).exec(text)?.[1];
  const value = (name: string) => {
    const v = field(name);
    return v === undefined ? undefined : v.startsWith('"') ? v.slice(1, -1) : Number(v);
  };
  return { type: value('type') as string, epoch: value('epoch') as string, version: value('version') as number, digest: value('digest') as string };
}

let connected = 0;
/**
 * Per version, when each agent acknowledged it (wall-clock ms with
 * sub-millisecond precision, comparable across processes): sent to the
 * parent once every agent of this process has it.
 */
const ackTimes = new Map<number, number[]>();
function acked(version: number): void {
  const times = ackTimes.get(version) ?? [];
  times.push(performance.timeOrigin + performance.now());
  ackTimes.set(version, times);
  if (times.length === count) send({ allAcked: version, times });
}
/**
 * Agent i's connection; once open, the promise resolves. A connection the
 * control plane ends (its write deadline, say) is made again after 1–2 s,
 * as a real agent reconnects, with what it has in its hello.
 */
function connect(i: number, agent: Simulated = { id: `fleet-${offset + i}`, have: null }): Promise<void> {
  return new Promise((resolve) => {
    const socket = new WebSocket(`wss://127.0.0.1:${port}/`, { ca, headers: { authorization: `Bearer ${prefix}${offset + i}${suffix ?? ''}` }, perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
    socket.on('open', () => {
      connected++;
      socket.send(JSON.stringify({ type: 'hello', protocol: PROTOCOL_VERSION, agent_id: agent.id, agent_version: 'fleet-bench', capabilities: process.env.FLEET_GZIP === '0' ? ['delta'] : ['delta', SNAPSHOT_GZIP], have: agent.have, refused: null }));
      resolve();
    });
    socket.on('message', (data: Buffer) => {
      const frame = head(data);
      if (frame.type !== 'snapshot' && frame.type !== 'delta') return;
      if (frame.type === 'delta' && (!agent.have || agent.have.version !== frame.from_version || agent.have.epoch !== frame.epoch)) {
        socket.send(JSON.stringify({ type: 'nack', epoch: frame.epoch, version: frame.version, code: 'EGAP', message: 'not on top of what this agent has', details: [] }));
        return;
      }
      const first = agent.have?.version !== frame.version || agent.have.epoch !== frame.epoch;
      agent.have = { epoch: frame.epoch, version: frame.version, digest: frame.digest };
      socket.send(JSON.stringify({ type: 'ack', epoch: frame.epoch, version: frame.version, digest: frame.digest }));
      // Each agent counted once per version (a redelivery after a reconnection is not a second ACK time).
      if (first) acked(frame.version);
    });
    socket.on('error', (err) => {
      errors++;
      send({ error: `${agent.id}: ${err.message}` });
    });
    socket.on('close', () => {
      closed++;
      send({ closed: agent.id });
      setTimeout(() => void connect(i, agent), 1000 + Math.random() * 1000);
      resolve();
    });
  });
}

// Progress for the parent to show while it waits: per version, how many have it; connections closed (and made again) and errors so far.
let closed = 0;
let errors = 0;
setInterval(() => send({ progress: Object.fromEntries([...ackTimes].map(([v, t]) => [v, t.length])), closed, errors }), 5_000).unref();

// Handshakes a few dozen at a time (each is a TLS handshake on both sides).
for (let i = 0; i < count; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, k) => connect(i + k)));
}
send({ connected });
