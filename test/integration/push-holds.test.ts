/**
 * No push, whatever its size or shape, holds the agent's event loop for
 * 100 ms (heartbeats, pings and the systemd watchdog wait on it). The agent
 * runs as in production, its own process; it logs, per push, the longest
 * its event loop went without turning (`loopMaxMs`). A hold is a property
 * of the code, which every attempt shows; another process taking the CPU
 * (or a collection) can add to one attempt, so each shape is tried up to
 * three times, with a new version each, and the best attempt counts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { CLI, TestNamespace, isRoot } from '../support/netns.js';
import { makeCerts, type TestCerts } from '../support/certs.js';
import { writeAgentConfig } from '../support/agent-config.js';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { parseDesiredState } from '../../src/desired/state.js';

const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: [443] }, dns: { udp: [53] } };
const LABELS = ['cdn', 'spectrum', 'dns'];

/** `n` distinct /24s from 10.0.0.0 on (`offset` shifts them), as bindings of three services. */
function bindings(n: number, offset = 0) {
  return Array.from({ length: n }, (_, k) => {
    const i = k + offset;
    const label = LABELS[i % 3]!;
    return { label, protocol: label === 'dns' ? 'udp' : 'tcp', prefix: `${10 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}.0/24`, port: 0 };
  });
}

describe.skipIf(!isRoot)('pushes and the agent event loop', () => {
  let ns: TestNamespace;
  let dir: string;
  let certs: TestCerts;
  let server: ControlPlaneServer;
  let agent: ChildProcess;
  const handled: Array<{ type: string; code: string | null; loopMaxMs: number }> = [];

  beforeAll(async () => {
    ns = TestNamespace.create();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-holds-'));
    certs = makeCerts();
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'tok-1' }, epoch: 'holds' });
    const port = await server.listen();
    const config = writeAgentConfig(dir, { agentId: 'edge-1', port, ca: certs.ca, token: 'tok-1', netns: ns.path, bpffs: ns.bpffs, extra: { heartbeat_seconds: 1 } });
    agent = spawn(CLI, ['agent', '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
    readline.createInterface({ input: agent.stdout! }).on('line', (line) => {
      const entry = JSON.parse(line) as { msg: string; type: string; code: string | null; loopMaxMs: number };
      if (entry.msg === 'push handled') handled.push(entry);
    });
    for (let t = 0; !server.status()[0]?.connected; t += 50) {
      if (t > 30_000) throw new Error('the agent did not connect');
      await new Promise((r) => setTimeout(r, 50));
    }
  }, 60_000);
  afterAll(async () => {
    agent?.kill('SIGKILL');
    await server?.close();
    ns?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  /** Publishes `doc`, waits for its ACK, returns the agent's hold for it. */
  async function push(doc: { bindings: unknown[] }, override = false): Promise<number> {
    const seen = handled.length;
    const { version, changed } = await server.publish(parseDesiredState({ ...doc, services: SERVICES }, 'test'), { override });
    if (!changed) return NaN; // the state in force already: nothing is pushed
    await new Promise<void>((resolve, reject) => {
      const onAck = (_: string, v: number) => v === version && (off(), resolve());
      const onNack = (_: string, n: { version: number; code: string; message: string }) => n.version === version && (off(), reject(new Error(`${n.code} ${n.message}`)));
      const off = () => server.off('ack', onAck).off('nack', onNack);
      server.on('ack', onAck).on('nack', onNack);
    });
    for (let t = 0; handled.length === seen; t += 10) {
      if (t > 10_000) throw new Error('no "push handled" line');
      await new Promise((r) => setTimeout(r, 10));
    }
    return handled[handled.length - 1]!.loopMaxMs;
  }

  /** The best of up to three attempts, each a new version of the same shape. */
  async function best(attempt: (k: number) => Promise<number>): Promise<number[]> {
    const holds: number[] = [];
    for (let k = 0; k < 3 && !holds.some((h) => h < 100); k++) holds.push(await attempt(k));
    return holds;
  }

  it('60 bindings, then 60,060 (a delta of 60,000 adds: issue 15 measured a 47 s hold), then 20,000 out and 20,000 in', async () => {
    await push({ bindings: bindings(60) });
    const grow = await best((k) => (k % 2 === 0 ? push({ bindings: bindings(60_060) }) : push({ bindings: bindings(60) }, true)));
    expect(Math.min(...grow), `holds ${grow.join(', ')} ms`).toBeLessThan(100);
    await push({ bindings: bindings(60_060) });
    // A window sliding by 20,000: each attempt removes 20,000 and adds 20,000.
    const churn = await best((k) => push({ bindings: bindings(60_060, 20_000 * (k + 1)) }, true));
    expect(Math.min(...churn), `holds ${churn.join(', ')} ms`).toBeLessThan(100);
    expect(handled.every((h) => h.code === null)).toBe(true);
  });
});
