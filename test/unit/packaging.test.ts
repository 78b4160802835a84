/**
 * What ships in the package, checked where it is written: the examples in
 * /usr/share/doc/switchyard/examples are read by the same parsers as the real
 * files, and the units keep the lessons of running under a real systemd
 * (the system test, `npm run test:system`, runs them for real).
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readAgentConfig } from '../../src/agent/agent.js';
import { readDesiredState } from '../../src/desired/state.js';
import { projectPath } from '../../src/paths.js';

const units = fs.readdirSync(projectPath('systemd')).filter((f) => f.endsWith('.service')).map((f) => projectPath('systemd', f));
const directives = (file: string) =>
  fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => /^[A-Za-z]+=/.test(l))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const);

describe('examples', () => {
  it('agent.json is a valid agent configuration', () => {
    const config = readAgentConfig(projectPath('systemd/examples/agent.json'));
    expect(config.stateDir).toBe('/var/lib/switchyard');
  });

  it('desired.json is a valid desired state', () => {
    expect(readDesiredState(projectPath('systemd/examples/desired.json')).bindings.count).toBe(2);
  });

  it('cdn.socket does not take the control plane port', () => {
    const cp = fs.readFileSync(projectPath('systemd/switchyard-control-plane.service'), 'utf8');
    const port = /--listen \S+:(\d+)/.exec(cp)![1];
    for (const [, value] of directives(projectPath('systemd/examples/cdn.socket')).filter(([k]) => k.startsWith('Listen'))) {
      expect(value.endsWith(`:${port}`), value).toBe(false);
    }
  });
});

describe.each(units.map((u) => [path.basename(u), u]))('%s', (_name, unit) => {
  const d = directives(unit);
  const get = (key: string) => d.filter(([k]) => k === key).map(([, v]) => v);

  it('names no mount unit for /sys/fs/bpf (PID 1 makes none: a start would fail)', () => {
    expect(d.filter(([, v]) => v.includes('sys-fs-bpf.mount'))).toEqual([]);
  });

  it('keeps /sys/fs/bpf writable where it writes there (ProtectKernelTunables=yes would make it read-only)', () => {
    if (!get('ReadWritePaths').some((v) => v.split(/\s+/).includes('/sys/fs/bpf'))) return;
    expect(get('ProtectKernelTunables')).not.toContain('yes');
    expect(get('ReadOnlyPaths').join(' ')).toMatch(/\/sys\b/);
  });

  it('grants in the bounding set exactly the ambient capabilities, and no wider /run', () => {
    expect(get('CapabilityBoundingSet')).toEqual(get('AmbientCapabilities'));
    expect(get('ReadWritePaths').join(' ').split(/\s+/)).not.toContain('/run');
  });

  it('allows node the calls it makes (a SystemCallFilter without @pkey killed it)', () => {
    for (const filter of get('SystemCallFilter')) expect(filter.split(/\s+/)).toContain('@pkey');
  });
});
