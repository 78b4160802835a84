import { afterAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readAgentConfig } from '../../src/agent/agent.js';
import { DEFAULT_LIMITS } from '../../src/protocol/guards.js';
import { writeAgentConfig } from '../support/agent-config.js';

describe('agent config', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-config-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const config = (extra: Record<string, unknown>) => readAgentConfig(writeAgentConfig(dir, { agentId: 'edge-1', port: 1, ca: 'ca', token: 't', netns: '/run/netns/x', bpffs: '/sys/fs/bpf', extra }));

  it('has defaults for the firewall tools\' timeout and the capacity, and takes them from the file', () => {
    expect(config({})).toMatchObject({ firewall: { toolTimeoutSeconds: 30, resyncSeconds: 90 }, maxBindings: DEFAULT_LIMITS.maxBindings });
    expect(config({ firewall: { tool_timeout_seconds: 5 }, max_bindings: 1000 })).toMatchObject({ firewall: { toolTimeoutSeconds: 5 }, maxBindings: 1000 });
  });

  it('takes its state directory from systemd (StateDirectory=) when the file names none', () => {
    const file = path.join(dir, 'no-state-dir.json');
    fs.writeFileSync(file, JSON.stringify({ agent_id: 'edge-1', control_plane: { url: 'wss://127.0.0.1:1/', ca_file: 'ca', token_file: 't' } }));
    expect(readAgentConfig(file, { STATE_DIRECTORY: '/var/lib/switchyard' }).stateDir).toBe('/var/lib/switchyard');
    expect(readAgentConfig(file, { STATE_DIRECTORY: '/var/lib/switchyard:/var/lib/other' }).stateDir).toBe('/var/lib/switchyard');
    expect(() => readAgentConfig(file, {})).toThrow(/state_dir must be a non-empty string \(it may be left out only under a unit with StateDirectory=\)/);
    // Named in the file: the file wins.
    fs.writeFileSync(file, JSON.stringify({ agent_id: 'edge-1', state_dir: '/srv/sy', control_plane: { url: 'wss://127.0.0.1:1/', ca_file: 'ca', token_file: 't' } }));
    expect(readAgentConfig(file, { STATE_DIRECTORY: '/var/lib/switchyard' }).stateDir).toBe('/srv/sy');
  });

  it('takes the replicas of a control plane in control_plane.urls, each checked', () => {
    const file = path.join(dir, 'replicas.json');
    const write = (cp: Record<string, unknown>) => fs.writeFileSync(file, JSON.stringify({ agent_id: 'edge-1', state_dir: '/srv/sy', control_plane: { ca_file: 'ca', token_file: 't', ...cp } }));
    write({ urls: ['wss://cp-1:8443/', 'wss://cp-2:8443/'] });
    expect(readAgentConfig(file, {}).controlPlane).toMatchObject({ url: 'wss://cp-1:8443/', urls: ['wss://cp-1:8443/', 'wss://cp-2:8443/'] });
    write({ urls: ['wss://cp-1:8443/', 'https://cp-2:8443/'] });
    expect(() => readAgentConfig(file, {})).toThrow(/control_plane\.urls\[1\] must be wss:\/\//);
    write({ urls: [] });
    expect(() => readAgentConfig(file, {})).toThrow(/control_plane\.urls must list 1-16 wss:\/\/ URLs/);
    write({ url: 'wss://cp-1:8443/', urls: ['wss://cp-2:8443/'] });
    expect(() => readAgentConfig(file, {})).toThrow(/needs "url" \(one control plane\) or "urls" \(its replicas\), not both/);
  });

  it('names the field of a bad value', () => {
    expect(() => config({ firewall: { tool_timeout_seconds: 0 } })).toThrow(/agent\.json: firewall\.tool_timeout_seconds must be 1-86400 seconds/);
    expect(() => config({ max_bindings: 2.5 })).toThrow(/agent\.json: max_bindings must be an integer 1-4000000/);
    expect(() => config({ max_bindings: '10' })).toThrow(/max_bindings must be an integer/);
    expect(() => config({ firewall: { timeout: 3 } })).toThrow(/firewall: unknown field "timeout"/);
  });
});
