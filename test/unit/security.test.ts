/**
 * Issue 7's security checks that need no kernel (the rest, which need root,
 * are in test/integration/agent.test.ts: modes of the state directory, its
 * files, admin.sock and the pins; a peer outside the allow-list cannot
 * register a socket for a label): the control-plane channel and API refuse
 * what is not authenticated; labels, prefixes and ids that try shell or path
 * injection are refused naming the entry; the tools run without a shell.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import https from 'node:https';
import { spawnSync } from 'node:child_process';
import { WebSocket } from 'ws';
import { ControlPlaneServer } from '../../src/controlplane/server.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { ProcessRunner } from '../../src/firewall/runner.js';
import { parseRollout } from '../../src/controlplane/rollout.js';
import { parseFrame } from '../../src/protocol/messages.js';
import { makeCerts, type TestCerts } from '../support/certs.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;
const INJECTIONS = ['$(reboot)', '`id`', 'cdn;rm -rf /', 'cdn && id', '../../etc/passwd', 'a/b', 'cdn\nCOMMIT', 'cdn -j ACCEPT', '-F', '.hidden', 'x'.repeat(300), ''];

describe.skipIf(!hasOpenssl)('the control plane refuses the unauthenticated', () => {
  let certs: TestCerts;
  let server: ControlPlaneServer;
  let port: number;
  beforeAll(async () => {
    certs = makeCerts();
    server = new ControlPlaneServer({ cert: certs.cert, key: certs.key, tokens: { 'edge-1': 'agent-token' }, adminToken: 'admin-token', epoch: 'e' });
    await server.publish(parseDesiredState({ bindings: [], services: {} }, 'v1'));
    port = await server.listen();
  });
  afterAll(async () => {
    await server.close();
    fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  const channel = (headers: Record<string, string>) =>
    new Promise<number>((resolve) => {
      const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { ca: certs.ca, headers });
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => {
        ws.terminate();
        resolve(101);
      });
      ws.on('error', () => {});
    });
  const api = (path: string, headers: Record<string, string>) =>
    new Promise<number>((resolve, reject) => {
      https.get({ host: '127.0.0.1', port, path, ca: certs.ca, headers }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });

  it('agents: no token, another scheme, a wrong token, the admin token are refused (401); the right one connects', async () => {
    expect(await channel({})).toBe(401);
    expect(await channel({ authorization: 'Basic YWdlbnQtdG9rZW4=' })).toBe(401);
    expect(await channel({ authorization: 'Bearer agent-token2' })).toBe(401);
    expect(await channel({ authorization: 'Bearer admin-token' })).toBe(401);
    expect(await channel({ authorization: 'Bearer agent-token' })).toBe(101);
    expect(server.status().map((s) => s.agentId)).toEqual(['edge-1']);
  });

  it('the admin API: no token or a wrong one is refused (401), an agent\'s token too (403)', async () => {
    expect(await api('/v1/bindings', {})).toBe(401);
    expect(await api('/v1/bindings', { authorization: 'Bearer nope' })).toBe(401);
    expect(await api('/status', {})).toBe(401);
    expect(await api('/v1/bindings', { authorization: 'Bearer agent-token' })).toBe(403);
    expect(await api('/status', { authorization: 'Bearer admin-token' })).toBe(200);
  });
});

describe('injection', () => {
  it('labels that try shell, iptables or path injection are refused, naming the entry', () => {
    for (const label of INJECTIONS) {
      const doc = { bindings: [{ label, protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: { [label]: { tcp: [443] } } };
      expect(() => parseDesiredState(doc, 'state.json'), JSON.stringify(label)).toThrow(/state\.json.*label/);
    }
  });

  it('prefixes, protocols and ports carrying more than an address are refused', () => {
    for (const prefix of ['192.0.2.0/24;id', '192.0.2.0/24 -j ACCEPT', '$(id)/24', '192.0.2.0/24\nCOMMIT', '../192.0.2.0/24']) {
      expect(() => parseDesiredState({ bindings: [{ label: 'cdn', protocol: 'tcp', prefix, port: 0 }], services: { cdn: { tcp: [443] } } }, 'state.json'), prefix).toThrow(/state\.json.*prefix/);
    }
    expect(() => parseDesiredState({ bindings: [{ label: 'cdn', protocol: 'tcp;id', prefix: '192.0.2.0/24', port: 0 }], services: {} }, 'state.json')).toThrow(/state\.json.*protocol/);
    expect(() => parseDesiredState({ bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: '443;id' }], services: {} }, 'state.json')).toThrow(/state\.json.*port/);
  });

  it('rollout labels an agent sends in hello are refused unless plain', () => {
    const hello = (labels: Record<string, string>) => JSON.stringify({ type: 'hello', protocol: 1, agent_id: 'edge-1', agent_version: 't', capabilities: [], have: null, refused: null, labels });
    expect(parseFrame(hello({ site: 'ams' }))).toMatchObject({ labels: { site: 'ams' } });
    expect(() => parseFrame(hello({ site: '$(id)' }))).toThrow(/frame hello\.labels\.site: must be 1-64 characters/);
    expect(() => parseFrame(hello({ '../x': 'a' }))).toThrow(/key "\.\.\/x" must be/);
  });

  it('rollout stage labels are refused unless plain', () => {
    expect(() => parseRollout({ stages: [{ name: 'canary', match: { site: '$(id)' } }] }, 'rollout.json')).toThrow(/rollout\.json/);
    expect(() => parseRollout({ stages: [{ name: '../x' }] }, 'rollout.json')).toThrow(/rollout\.json/);
  });

  it('tools get their arguments as argv, never through a shell', async () => {
    const r = await new ProcessRunner().run(['echo', '$(id)', '`id`', 'a;id']);
    expect(r.stdout).toBe('$(id) `id` a;id\n');
  });
});
