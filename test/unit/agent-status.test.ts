/**
 * STATUS= on every ACK and NACK (issue 16, part 3): the agent said
 * `READY=1\nSTATUS=serving version V of epoch E` once at start, so
 * `systemctl status switchyard` kept showing the state restored at start
 * however many versions came and went, and never a refusal. NACKs were
 * logged at info (`journalctl -p warning` missed them).
 *
 * An AgentSession (the agent's push handling) answers pushes; its frames go
 * through ServiceStatus as in the agent, to a notification socket of our own
 * (a Unix datagram socket: Node has none, python3 binds one) through the
 * addon's sd_notify.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { pino } from 'pino';
import { AgentSession } from '../../src/agent/session.js';
import { StateStore } from '../../src/agent/store.js';
import { ServiceStatus, answerStatus, readyStatus } from '../../src/agent/status.js';
import { notify } from '../../src/agent/systemd.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { stateDigest } from '../../src/protocol/state.js';
import type { Frame } from '../../src/protocol/messages.js';

const hasPython = spawnSync('python3', ['--version']).status === 0;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-status-'));
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** systemd's side: every datagram received, its lines joined by "|". */
async function notifySocket() {
  const socketPath = path.join(dir, `notify-${children.length}`);
  const script = `import socket,sys
s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print('ready',flush=True)
while True:
    print(s.recv(4096).decode().replace('\\n','|'),flush=True)`;
  const child = spawn('python3', ['-c', script, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const lines = readline.createInterface({ input: child.stdout! });
  const received: string[] = [];
  await new Promise<void>((resolve) => lines.on('line', (l) => (l === 'ready' ? resolve() : received.push(l))));
  const next = async (count: number) => {
    for (let i = 0; i < 100 && received.length < count; i++) await new Promise((r) => setTimeout(r, 20));
    return received.slice(0, count);
  };
  return { socketPath, received, next };
}

/** A logger whose lines are kept (level, msg and fields). */
function capture() {
  const lines: Array<{ level: number; msg: string; [k: string]: unknown }> = [];
  const log = pino({ base: null, timestamp: false }, { write: (l: string) => void lines.push(JSON.parse(l) as (typeof lines)[number]) });
  return { log, lines };
}

const SERVICES = { cdn: { tcp: [80, 443] } };
const V1 = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: SERVICES };
const TOO_MANY = { bindings: [...V1.bindings, { label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/24', port: 0 }, { label: 'cdn', protocol: 'tcp', prefix: '203.0.113.0/24', port: 0 }], services: SERVICES };
const snapshot = (version: number, doc: unknown, epoch = 'e1') => JSON.stringify({ type: 'snapshot', epoch, version, digest: stateDigest(parseDesiredState(doc, 'test')), state: doc });
const ISO = /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/;

describe.skipIf(!hasPython)('STATUS= on every ACK and NACK', () => {
  it('an agent session\'s answers: each ACK says what is served and since when, each NACK what was refused, why, and what is still served', async () => {
    const systemd = await notifySocket();
    const { log, lines } = capture();
    const status = new ServiceStatus(log, (message) => notify(message, { NOTIFY_SOCKET: systemd.socketPath }));
    let now = Date.parse('2026-01-02T03:04:05.000Z');
    const session: AgentSession = new AgentSession({
      agentId: 'edge-1',
      agentVersion: 'test',
      store: new StateStore(path.join(dir, 'state')),
      apply: async () => {},
      limits: { maxBindings: 2, withdrawalShare: 0.05, withdrawalMin: 1 },
      now: () => now,
      // As the agent wires it (src/agent/agent.ts): the frame goes out, then the status.
      send: (frame) => status.answered(frame, session.applied),
    });
    status.ready(session.applied);
    await session.receive(snapshot(1, V1));
    now += 60_000;
    await session.receive(snapshot(2, TOO_MANY)); // over max_bindings: ECAPACITY
    await session.receive('{"type": "snapshot", "epoch": "e1", "version": 3'); // not JSON: no version it can name
    await session.receive(snapshot(1, V1)); // again (a reconnect): acknowledged as applied at first
    await session.receive(snapshot(4, V1, 'e2\nREADY=1')); // another epoch, named by the control plane
    expect(await systemd.next(6)).toEqual([
      'READY=1|STATUS=no state yet; connecting to the control plane',
      'STATUS=serving version 1 of epoch e1, acknowledged at 2026-01-02T03:04:05.000Z',
      'STATUS=refused version 2 of epoch e1: ECAPACITY; serving version 1',
      'STATUS=refused a push it could not read: EINVALID; serving version 1 of epoch e1',
      'STATUS=serving version 1 of epoch e1, acknowledged at 2026-01-02T03:04:05.000Z',
      // A line break in the epoch would have been a second assignment (READY=1) in the datagram.
      'STATUS=serving version 4 of epoch e2?READY=1, acknowledged at 2026-01-02T03:05:05.000Z',
    ]);
    // The log: ACKs at info (30), NACKs at warn (40) with their code and message.
    expect(lines.map((l) => [l.level, l.msg, l.version ?? null, l.code ?? null])).toEqual([
      [30, 'acknowledged', 1, null],
      [40, 'refused', 2, 'ECAPACITY'],
      [40, 'refused', null, 'EINVALID'],
      [30, 'acknowledged', 1, null],
      [30, 'acknowledged', 4, null],
    ]);
    expect(lines[1]!.message).toMatch(/3 bindings, more than the 2/);
  });

  it('READY=1 with the state restored at start', async () => {
    const systemd = await notifySocket();
    const status = new ServiceStatus(capture().log, (message) => notify(message, { NOTIFY_SOCKET: systemd.socketPath }));
    status.ready({ epoch: 'e1', version: 7, ackedAt: Date.parse('2026-01-02T03:04:05.000Z') });
    expect(await systemd.next(1)).toEqual(['READY=1|STATUS=serving version 7 of epoch e1 (restored; acknowledged at 2026-01-02T03:04:05.000Z)']);
  });
});

describe('STATUS= texts and failures', () => {
  const ack: Frame = { type: 'ack', epoch: 'e1', version: 5, digest: 'd' };
  it('an ACK of a version not yet in force says now; NACKs with and without an epoch or a state in force', () => {
    expect(answerStatus(ack, undefined, 0)).toBe('serving version 5 of epoch e1, acknowledged at 1970-01-01T00:00:00.000Z');
    expect(answerStatus({ type: 'nack', epoch: null, version: 3, code: 'EINVALID', message: 'm', details: [] }, undefined)).toBe('refused version 3: EINVALID; serving nothing yet');
    expect(answerStatus({ type: 'nack', epoch: 'e2', version: 1, code: 'EGAP', message: 'm', details: [] }, { epoch: 'e1', version: 9, ackedAt: 0 })).toBe('refused version 1 of epoch e2: EGAP; serving version 9 of epoch e1');
    expect(answerStatus({ type: 'heartbeat', epoch: 'e1', version: 1, digest: 'd', age_ms: 0 }, undefined)).toBeUndefined();
    // A long epoch is cut to 64 characters: the line stays readable in `systemctl status`.
    expect(answerStatus({ ...ack, epoch: 'y'.repeat(300) }, undefined, 0)).toBe(`serving version 5 of epoch ${'y'.repeat(63)}…, acknowledged at 1970-01-01T00:00:00.000Z`);
    expect(readyStatus(undefined)).toBe('no state yet; connecting to the control plane');
    expect(answerStatus(ack, undefined)).toMatch(ISO);
  });

  it('a notification that cannot be sent is logged once per run of failures, and never throws (the answer is already out)', () => {
    const { log, lines } = capture();
    let fail = true;
    const sent: string[] = [];
    const status = new ServiceStatus(log, (m) => {
      if (fail) throw new Error('sendto failed: ECONNREFUSED');
      sent.push(m);
      return true;
    });
    status.answered(ack, undefined);
    status.answered(ack, undefined);
    fail = false;
    status.answered(ack, undefined);
    fail = true;
    status.answered(ack, undefined);
    expect(lines.filter((l) => l.msg.startsWith('STATUS= could not be sent')).map((l) => [l.level, l.err])).toEqual([
      [40, 'sendto failed: ECONNREFUSED'],
      [40, 'sendto failed: ECONNREFUSED'],
    ]);
    expect(sent).toHaveLength(1);
    // READY=1 is not caught: an agent systemd cannot hear must not start (Type=notify).
    expect(() => status.ready(undefined)).toThrow(/ECONNREFUSED/);
  });
});
