/**
 * READY=1 tells systemd (and units ordered After= the agent) that the agent
 * serves: its state in force and its sockets taking requests. A notification
 * socket of our own receives what the agent says (sd_notify over a Unix
 * datagram socket; Node has none, python3 binds one).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { CLI, TestNamespace, isRoot } from '../support/netns.js';
import { makeCerts } from '../support/certs.js';
import { writeAgentConfig } from '../support/agent-config.js';

const LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    print(s.recv(4096).decode().replace("\\n", " "), flush=True)
`;

describe.skipIf(!isRoot)('agent readiness', () => {
  let ns: TestNamespace;
  let dir: string;
  const children: ChildProcess[] = [];
  beforeEach(() => {
    ns = TestNamespace.create();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-ready-'));
  });
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    ns.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Starts the agent (no control plane: it keeps trying to connect) with $NOTIFY_SOCKET; collects what it notifies and how it ends. */
  async function agentWithNotify(extra: Record<string, unknown> = {}) {
    const notifySocket = path.join(dir, 'notify.sock');
    const listener = spawn('python3', ['-c', LISTENER, notifySocket], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(listener);
    const lines = readline.createInterface({ input: listener.stdout! });
    const notes: string[] = [];
    let onNote: (() => void) | undefined;
    await new Promise<void>((resolve) => lines.once('line', () => resolve()));
    lines.on('line', (l) => {
      notes.push(l);
      onNote?.();
    });
    const config = writeAgentConfig(dir, { agentId: 'edge-1', port: 1, ca: makeCerts().ca, token: 'tok-1', netns: ns.path, bpffs: ns.bpffs, extra });
    const agent = spawn(CLI, ['agent', '--config', config], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NOTIFY_SOCKET: notifySocket } });
    children.push(agent);
    let stderr = '';
    agent.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => agent.once('exit', (code) => resolve(code)));
    /** The sockets' state when READY=1 arrives (read at once, before anything else runs here). */
    const ready = new Promise<{ admin: boolean; register: boolean }>((resolve) => {
      onNote = () => {
        if (!notes.some((n) => n.startsWith('READY=1'))) return;
        const isSocket = (p: string) => fs.existsSync(p) && fs.statSync(p).isSocket();
        resolve({ admin: isSocket(path.join(dir, 'admin.sock')), register: isSocket(path.join(dir, 'register.sock')) });
      };
    });
    return { notes, ready, exited, stderr: () => stderr };
  }

  it('says READY=1 only once its admin and registration sockets listen', async () => {
    const a = await agentWithNotify();
    expect(await a.ready).toEqual({ admin: true, register: true });
  });

  it('a registration socket it cannot listen on: the agent fails, and never says READY=1', async () => {
    fs.writeFileSync(path.join(dir, 'not-a-dir'), '');
    const a = await agentWithNotify({ registration_socket: path.join(dir, 'not-a-dir', 'register.sock') });
    const code = await a.exited;
    expect(code).not.toBe(0);
    expect(a.stderr()).toMatch(/not-a-dir/);
    await new Promise((r) => setTimeout(r, 200)); // a datagram sent before the exit has arrived by now
    expect(a.notes.filter((n) => n.startsWith('READY=1'))).toEqual([]);
  });
});
