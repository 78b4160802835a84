import { describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { notify, watchdogPingMs } from '../../src/agent/systemd.js';

const hasPython = spawnSync('python3', ['--version']).status === 0;

/** A stand-in for systemd's notification socket: prints each datagram it gets. */
async function listener(socketPath: string) {
  const script = `import socket,sys
s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)
s.bind(sys.argv[1].replace('@','\\0',1) if sys.argv[1].startswith('@') else sys.argv[1])
print('ready',flush=True)
while True:
    print(s.recv(4096).decode().replace('\\n','|'),flush=True)`;
  const child = spawn('python3', ['-c', script, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = readline.createInterface({ input: child.stdout! });
  const received: string[] = [];
  await new Promise<void>((resolve) =>
    lines.on('line', (l) => {
      if (l === 'ready') resolve();
      else received.push(l);
    }),
  );
  return { child, received };
}

describe.skipIf(!hasPython)('sd_notify', () => {
  it('sends READY and WATCHDOG datagrams to $NOTIFY_SOCKET (a path or an abstract name), nothing without it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-notify-'));
    for (const socketPath of [path.join(dir, 'notify'), `@switchyard-test-${process.pid}`]) {
      const { child, received } = await listener(socketPath);
      try {
        expect(notify('READY=1\nSTATUS=serving', { NOTIFY_SOCKET: socketPath })).toBe(true);
        expect(notify('WATCHDOG=1', { NOTIFY_SOCKET: socketPath })).toBe(true);
        for (let i = 0; i < 100 && received.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
        expect(received).toEqual(['READY=1|STATUS=serving', 'WATCHDOG=1']);
      } finally {
        child.kill();
      }
    }
    expect(notify('READY=1', {})).toBe(false);
    expect(() => notify('READY=1', { NOTIFY_SOCKET: path.join(dir, 'nobody') })).toThrow(/sendto/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('pings the watchdog at half its period, only for the process it watches', () => {
    expect(watchdogPingMs({ WATCHDOG_USEC: '30000000' }, 42)).toBe(15_000);
    expect(watchdogPingMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42)).toBe(15_000);
    expect(watchdogPingMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 42)).toBeUndefined();
    expect(watchdogPingMs({}, 42)).toBeUndefined();
  });
});
