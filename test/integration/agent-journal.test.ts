/**
 * Issue 16, part 3, with the real commands: the agent and the control plane
 * as systemd runs them, stdout a stream named by $JOURNAL_STREAM (a file
 * here: what counts is that fd 1 is the stream the variable names) and
 * $NOTIFY_SOCKET a socket of our own. Every log line carries its level's
 * syslog priority; a refused version is at warn (in the agent's log and in
 * the control plane's); STATUS= follows every ACK and NACK; the control
 * plane's --log-level drops what is below it.
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
    print(s.recv(4096).decode().replace("\\n", "|"), flush=True)
`;

const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: [443] } };
const V1 = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: SERVICES };
const TOO_MANY = { ...V1, bindings: [...V1.bindings, { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 }] };

describe.skipIf(!isRoot)('the daemons under systemd: journal priorities and STATUS=', () => {
  let ns: TestNamespace;
  let dir: string;
  const children: ChildProcess[] = [];
  beforeEach(() => {
    ns = TestNamespace.create();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-journal-'));
  });
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    ns.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A command with stdout on a file that $JOURNAL_STREAM names, as systemd connects the journal. */
  const startJournaled = (name: string, args: string[], env: NodeJS.ProcessEnv = {}) => {
    const file = path.join(dir, `${name}.out`);
    const fd = fs.openSync(file, 'w');
    const st = fs.fstatSync(fd, { bigint: true });
    const child = spawn(CLI, args, { stdio: ['ignore', fd, 'inherit'], env: { ...process.env, ...env, JOURNAL_STREAM: `${st.dev}:${st.ino}` } });
    fs.closeSync(fd);
    children.push(child);
    return () => fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  };
  const eventually = async (what: string, check: () => boolean, detail: () => unknown, ms = 20_000) => {
    for (let t = 0; t < ms; t += 100) {
      if (check()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${what}: not within ${ms} ms: ${JSON.stringify(detail())}`);
  };
  /** "<N>" and the JSON after it. */
  const parsed = (lines: string[]) =>
    lines.map((l) => {
      const m = /^<([0-7])>(\{.*\})$/.exec(l);
      if (!m) throw new Error(`a line without a priority prefix: ${l}`);
      return { priority: Number(m[1]), ...(JSON.parse(m[2]!) as { level: number; msg: string; code?: string }) };
    });

  it('agent: every line with its priority, a NACK at warning; STATUS= after each ACK and NACK. control-plane --log-level warn: warnings only', async () => {
    const notifySocket = path.join(dir, 'notify.sock');
    const listener = spawn('python3', ['-c', LISTENER, notifySocket], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(listener);
    const lines = readline.createInterface({ input: listener.stdout! });
    await new Promise<void>((resolve) => lines.once('line', () => resolve()));
    const notes: string[] = [];
    lines.on('line', (l) => notes.push(l));

    const certs = makeCerts();
    const file = (name: string, content: string) => {
      fs.writeFileSync(path.join(dir, name), content, { mode: 0o600 });
      return path.join(dir, name);
    };
    const state = file('desired.json', JSON.stringify(V1));
    const port = 20000 + Math.floor(Math.random() * 20000);
    // 'tok-1' is shorter than 16 characters: the control plane warns about it at start.
    const controlPlane = startJournaled('control-plane', ['control-plane', '--log-level', 'warn', '--state', state, '--listen', `127.0.0.1:${port}`, '--cert', file('cert.pem', certs.cert), '--key', file('key.pem', certs.key), '--tokens', file('tokens.json', JSON.stringify({ 'edge-1': 'tok-1' }))]);
    const config = writeAgentConfig(dir, { agentId: 'edge-1', port, ca: certs.ca, token: 'tok-1', netns: ns.path, bpffs: ns.bpffs, extra: { max_bindings: 1, log_level: 'debug' } });
    const agent = startJournaled('agent', ['agent', '--config', config], { NOTIFY_SOCKET: notifySocket });

    const status = () => notes.filter((n) => n.startsWith('STATUS='));
    await eventually('version 1 acknowledged', () => status().some((n) => n.startsWith('STATUS=serving version 1 ')), () => ({ notes, agent: agent() }));
    fs.writeFileSync(state, JSON.stringify(TOO_MANY)); // over max_bindings 1: ECAPACITY
    await eventually('version 2 refused', () => status().some((n) => n.startsWith('STATUS=refused version 2 ')), () => ({ notes, agent: agent() }));

    expect(notes[0]).toBe('READY=1|STATUS=no state yet; connecting to the control plane');
    const [acked, refused] = status();
    expect(acked).toMatch(/^STATUS=serving version 1 of epoch \S+, acknowledged at \d{4}-\d\d-\d\dT[0-9:.]+Z$/);
    expect(refused).toBe('STATUS=refused version 2 of epoch ' + /epoch (\S+),/.exec(acked!)![1] + ': ECAPACITY; serving version 1');

    const byPriority = { 10: 7, 20: 7, 30: 6, 40: 4, 50: 3, 60: 2 } as Record<number, number>;
    const agentLines = parsed(agent());
    for (const l of agentLines) expect(l.priority, l.msg).toBe(byPriority[l.level]);
    expect(agentLines.filter((l) => l.msg === 'refused').map((l) => [l.priority, l.code])).toEqual([[4, 'ECAPACITY']]);
    expect(agentLines.filter((l) => l.msg === 'acknowledged').map((l) => l.priority)).toEqual([6]);

    const cpLines = parsed(controlPlane());
    expect(cpLines.length).toBeGreaterThan(0);
    expect(cpLines.filter((l) => l.level < 40)).toEqual([]); // 'listening', 'published' … are info: not logged at warn
    expect(cpLines.some((l) => l.priority === 4 && /shorter than 16 characters/.test(l.msg))).toBe(true);
    // The agent's NACK, as the control plane saw it, at warning too.
    await eventually('the NACK in the control plane\'s log', () => controlPlane().some((l) => l.includes('"msg":"refused by an agent"')), () => controlPlane());
    expect(parsed(controlPlane()).filter((l) => l.msg === 'refused by an agent').map((l) => [l.priority, l.code])).toEqual([[4, 'ECAPACITY']]);
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });
});
