/**
 * The control plane's command line (issue 15, defect 8): `--listen [::]:8443`
 * kept the brackets (listen() looked up a host named "[::]": ENOTFOUND);
 * a malformed `--tokens` file said "Unexpected end of JSON input" without
 * naming the file, and its shape was not checked.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { makeCerts } from '../support/certs.js';
import { runCli } from '../support/cli.js';
import { parseListen, parseTokens } from '../../src/cli/daemons.js';

const run = runCli;

describe('control-plane --listen', () => {
  it('takes an IPv6 address in brackets, without them', () => {
    expect(parseListen('[::]:8443')).toEqual({ host: '::', port: 8443 });
    expect(parseListen('[::1]:1')).toEqual({ host: '::1', port: 1 });
    expect(parseListen('[2001:db8::7]:65535')).toEqual({ host: '2001:db8::7', port: 65535 });
    expect(parseListen('0.0.0.0:8443')).toEqual({ host: '0.0.0.0', port: 8443 });
    expect(parseListen('cp.example:8443')).toEqual({ host: 'cp.example', port: 8443 });
  });

  it('refuses an IPv6 address without brackets, saying how to write it', () => {
    expect(() => parseListen('::1:8443')).toThrow(/an IPv6 address goes in brackets, e\.g\. \[::1\]:8443/);
    expect(() => parseListen(':::8443')).toThrow(/goes in brackets/);
  });

  it('refuses the rest, naming the argument', () => {
    for (const bad of ['[::1]', '[::1]8443', '[::1]:0', '[::1]:65536', '[not-v6]:8443', '[127.0.0.1]:8443', ':8443', '127.0.0.1', '127.0.0.1:', '127.0.0.1:http', 'a]:1', '[::1]:1:2']) {
      let err: (Error & { code?: string }) | undefined;
      try {
        parseListen(bad);
      } catch (e) {
        err = e as Error & { code?: string };
      }
      expect(err, bad).toBeDefined();
      expect(err!.code, bad).toBe('EINVAL_ARGUMENT');
      expect(err!.message, bad).toContain(`--listen ${JSON.stringify(bad)}`);
    }
  });
});

/** Whether this machine has IPv6 loopback (::1) to listen on. */
const hasIpv6Loopback = await new Promise<boolean>((resolve) => {
  const probe = net.createServer().once('error', () => resolve(false));
  probe.listen(0, '::1', () => probe.close(() => resolve(true)));
});
const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

describe.skipIf(!hasIpv6Loopback || !hasOpenssl)('control-plane --listen [::1]:PORT, end to end', () => {
  it('listens on the IPv6 address (the brackets used to be kept: ENOTFOUND)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-cp-v6-'));
    const certs = makeCerts();
    try {
      const file = (name: string, content: string) => {
        fs.writeFileSync(path.join(dir, name), content, { mode: 0o600 });
        return path.join(dir, name);
      };
      // A free port on ::1 (taken and released: nothing else in this test listens there).
      const port = await new Promise<number>((resolve) => {
        const probe = net.createServer().listen(0, '::1', () => {
          const p = (probe.address() as net.AddressInfo).port;
          probe.close(() => resolve(p));
        });
      });
      const argv = ['control-plane', '--state', file('desired.json', '{"bindings": []}'), '--listen', `[::1]:${port}`, '--cert', file('cert.pem', certs.cert), '--key', file('key.pem', certs.key), '--tokens', file('tokens.json', '{"edge-1": "a-token-0123456789"}'), '--admin-token-file', file('admin-token', 'admin-token-0123456789\n')];
      let exited: { code: number; stderr: string } | undefined;
      const before = new Set([...process.listeners('SIGTERM'), ...process.listeners('SIGINT')]);
      const running = run(argv).then((r) => (exited = r));
      const status = () =>
        new Promise<number>((resolve) => {
          https
            .get({ host: '::1', port, path: '/status', ca: certs.ca, servername: 'localhost', headers: { authorization: 'Bearer admin-token-0123456789' } }, (res) => {
              res.resume();
              resolve(res.statusCode ?? 0);
            })
            .on('error', () => resolve(0));
        });
      let answered = 0;
      for (let t = 0; t < 10_000 && answered !== 200 && exited === undefined; t += 50) {
        answered = await status();
        if (answered !== 200) await new Promise((r) => setTimeout(r, 50));
      }
      expect(exited, exited?.stderr).toBeUndefined();
      expect(answered).toBe(200);
      // What controlPlaneCommand waits for: its own SIGTERM listener, called directly (no signal is sent).
      for (const stop of process.listeners('SIGTERM').filter((l) => !before.has(l))) (stop as () => void)();
      // And gone: a listener left behind would keep this worker from ending on a real SIGTERM.
      for (const signal of ['SIGTERM', 'SIGINT'] as const) for (const l of process.listeners(signal).filter((x) => !before.has(x))) process.removeListener(signal, l);
      expect((await running).code).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      fs.rmSync(certs.dir, { recursive: true, force: true });
    }
  });
});

describe('control-plane --tokens', () => {
  const refusal = (text: string) => {
    try {
      parseTokens(text, '/etc/switchyard/tokens.json');
    } catch (err) {
      return err as Error & { code: string; entry?: string };
    }
    throw new Error(`accepted: ${text}`);
  };

  it('takes {"<agent-id>": "<token>"}', () => {
    expect(parseTokens('{"edge-1": "0123456789abcdef0123", "edge-2": "fedcba9876543210fedc"}', 't.json')).toEqual({ 'edge-1': '0123456789abcdef0123', 'edge-2': 'fedcba9876543210fedc' });
  });

  it('names the file when it is not JSON, or not an object of tokens', () => {
    expect(refusal('{"edge-1": "abc')).toMatchObject({ code: 'EINVAL_FILE', message: expect.stringMatching(/^\/etc\/switchyard\/tokens\.json: not JSON \(.+\); expected \{"<agent-id>": "<token>", \.\.\.\}$/) });
    expect(refusal('')).toMatchObject({ message: expect.stringMatching(/^\/etc\/switchyard\/tokens\.json: not JSON/) });
    for (const shape of ['[]', '"edge-1"', 'null', '42']) expect(refusal(shape).message, shape).toBe('/etc/switchyard/tokens.json: expected an object {"<agent-id>": "<token>", ...}');
    expect(refusal('{}').message).toBe('/etc/switchyard/tokens.json: no agent tokens: no agent could connect');
  });

  it('names the bad entry: an agent id off the agent-id rule, a token that is not one, a token given twice', () => {
    const token = 'a'.repeat(32);
    for (const id of ['', 'edge 1', '../edge', '-edge', 'x'.repeat(300), '__proto__', 'constructor']) {
      const err = refusal(`{${JSON.stringify(id)}: "${token}"}`);
      expect(err.message.startsWith(`/etc/switchyard/tokens.json: agent id ${JSON.stringify(id)} `), err.message).toBe(true);
      expect(err.entry, id).toBe(`/etc/switchyard/tokens.json: ${JSON.stringify(id)}`);
    }
    for (const [value, why] of [['""', /the token of edge-1 must be a non-empty string/], ['42', /must be a non-empty string/], ['null', /must be a non-empty string/], ['"two words"', /visible ASCII characters only/], ['"tab\\there"', /visible ASCII/], ['"é"', /visible ASCII/], [`"${'x'.repeat(1025)}"`, /1025 characters long; at most 1024/]] as const) {
      expect(refusal(`{"edge-1": ${value}}`).message, value).toMatch(why);
    }
    const twice = refusal(`{"edge-1": "${token}", "edge-2": "b${token}", "edge-3": "${token}"}`);
    expect(twice.message).toBe('/etc/switchyard/tokens.json: edge-3 has the same token as edge-1; every agent needs its own');
    expect(twice.entry).toBe('/etc/switchyard/tokens.json: "edge-3"');
  });
});

describe('control-plane start: configuration errors exit 2 with one line naming the file', () => {
  let dir: string;
  const file = (name: string, content: string) => {
    fs.writeFileSync(path.join(dir, name), content, { mode: 0o600 });
    return path.join(dir, name);
  };
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-cp-cli-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const start = (tokens: string, listen = '127.0.0.1:1', admin?: string) =>
    run(['control-plane', '--state', file('desired.json', '{"bindings": []}'), '--listen', listen, '--cert', file('cert.pem', 'x'), '--key', file('key.pem', 'x'), '--tokens', file('tokens.json', tokens), ...(admin === undefined ? [] : ['--admin-token-file', file('admin-token', admin)])]);

  it('a malformed tokens file', async () => {
    const r = await start('{"edge-1": "abc');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`^switchyard control-plane: ${path.join(dir, 'tokens.json').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not JSON \\(.+\\); expected \\{"<agent-id>": "<token>", \\.\\.\\.\\}\\n$`));
  });

  it('a token shared by two agents, or by an agent and the administrator', async () => {
    expect((await start('{"edge-1": "same-token-0123456", "edge-2": "same-token-0123456"}')).stderr).toMatch(/tokens\.json: edge-2 has the same token as edge-1; every agent needs its own\n$/);
    const admin = await start('{"edge-1": "same-token-0123456"}', '127.0.0.1:1', 'same-token-0123456\n');
    expect(admin.code).toBe(2);
    expect(admin.stderr).toMatch(/admin-token: the admin token is also edge-1's token in .*tokens\.json; it must be its own\n$/);
  });

  it('replica flags without a shared store (PostgreSQL): refused, not ignored', async () => {
    const args = ['control-plane', '--state', file('desired.json', '{"bindings": []}'), '--listen', '127.0.0.1:1', '--cert', file('cert.pem', 'x'), '--key', file('key.pem', 'x'), '--tokens', file('tokens.json', '{"edge-1": "a-token-0123456789"}')];
    const r = await run([...args, '--store', path.join(dir, 'store'), '--replica-name', 'cp-1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--replica-name and --advertise are for replicas over PostgreSQL/);
  });

  it('an IPv6 address without brackets', async () => {
    const r = await start('{"edge-1": "a-token-0123456789"}', '::1:8443');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^switchyard control-plane: --listen "::1:8443" must be .*: an IPv6 address goes in brackets, e\.g\. \[::1\]:8443\n$/);
  });
});
