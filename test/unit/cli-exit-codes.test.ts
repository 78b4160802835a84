/**
 * Exit statuses (issue 15, defect 8), for every command: 0 success, 1
 * findings or differences (verify, diff), 2 a usage error or any other
 * error. `verify` used to exit 1 both for findings and for a file it could
 * not read, and every error but EINVAL_ARGUMENT exited 1. Run in this
 * process through main(), against a namespace and a bpffs that do not exist.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from '../support/cli.js';

const run = runCli;

const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: [443] } };
const CLEAN = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: SERVICES };
// The same meaning spelt differently: a /24 split in two /25s of the same service.
const SPLIT = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/25', port: 0 }, { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.128/25', port: 0 }], services: SERVICES };
const CARVED = { bindings: [...CLEAN.bindings, { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 }], services: SERVICES };
// No policy for "nobody", port 80 inside an HTTPS-only range: findings.
const FINDINGS = { bindings: [...CLEAN.bindings, { label: 'nobody', protocol: 'udp', prefix: '203.0.113.0/24', port: 53 }, { label: 'cdn', protocol: 'tcp', prefix: '198.51.100.0/24', port: 80 }], services: SERVICES, https_only: { prefixes: ['198.51.100.0/24'] } };

describe('exit statuses: 0 ok, 1 findings or differences, 2 usage or error', () => {
  let dir: string;
  const files: Record<string, string> = {};
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-exit-'));
    const write = (name: string, content: string) => (files[name] = path.join(dir, name)) && fs.writeFileSync(files[name]!, content);
    write('clean.json', JSON.stringify(CLEAN));
    write('split.json', JSON.stringify(SPLIT));
    write('carved.json', JSON.stringify(CARVED));
    write('findings.json', JSON.stringify(FINDINGS));
    write('junk.json', '{"bindings": [');
    write('invalid.json', JSON.stringify({ bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.1/24', port: 0 }] }));
    write('unreadable.json', JSON.stringify(CLEAN));
    fs.chmodSync(files['unreadable.json']!, 0o000);
    files.missing = path.join(dir, 'missing.json');
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  /** Root reads a mode-000 file anyway: then the directory stands in for an unreadable file. */
  const unreadable = () => {
    try {
      fs.readFileSync(files['unreadable.json']!);
      return dir;
    } catch {
      return files['unreadable.json']!;
    }
  };

  it('verify: 0 clean, 1 with findings (on stdout, nothing on stderr), 2 for a file it cannot read or that does not validate', async () => {
    expect(await run(['verify', files['clean.json']!])).toMatchObject({ code: 0, stderr: '' });
    const found = await run(['verify', files['findings.json']!]);
    expect(found).toMatchObject({ code: 1, stderr: '' });
    expect(found.stdout).toMatch(/2 findings \(ENOPOLICY 1, EPLAINTEXT 1/);
    expect((await run(['verify', files['findings.json']!, '--json'])).code).toBe(1);
    for (const bad of [files.missing!, unreadable(), files['junk.json']!, files['invalid.json']!]) {
      const r = await run(['verify', bad]);
      expect(r.code, bad).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr.split('\n')).toHaveLength(2); // one line
      expect(r.stderr).toContain(bad);
    }
    expect((await run(['verify'])).code).toBe(2);
    expect((await run(['verify', files['clean.json']!, files['clean.json']!])).code).toBe(2);
  });

  it('diff: 0 when nothing changes hands (even spelt differently), 1 when something does, 2 for a bad file', async () => {
    expect(await run(['diff', files['clean.json']!, files['split.json']!])).toMatchObject({ code: 0, stderr: '', stdout: expect.stringMatching(/^no address or port changes hands/) as unknown });
    const changed = await run(['diff', files['clean.json']!, files['carved.json']!]);
    expect(changed).toMatchObject({ code: 1, stderr: '' });
    expect(changed.stdout).toMatch(/cdn loses 1 IPv4 address on tcp port 443 to spectrum/);
    expect((await run(['diff', files['carved.json']!, files['clean.json']!, '--json'])).code).toBe(1);
    for (const [a, b] of [[files.missing!, files['clean.json']!], [files['clean.json']!, unreadable()], [files['junk.json']!, files['clean.json']!], [files['clean.json']!, files['invalid.json']!]]) {
      const r = await run(['diff', a!, b!]);
      expect(r.code, `${a} ${b}`).toBe(2);
      expect(r.stderr.split('\n')).toHaveLength(2);
    }
    expect((await run(['diff', files['clean.json']!])).code).toBe(2);
  });

  it('every other error exits 2, whatever its code (a bad state file was 1)', async () => {
    const ns = ['--netns', '/nonexistent-sy/ns', '--bpffs', '/nonexistent-sy/bpffs'];
    for (const argv of [
      ['load-bindings', files['invalid.json']!, ...ns], // EINVAL_BINDING: exited 1
      ['load-bindings', files.missing!, ...ns], // EINVAL_FILE: exited 1
      ['firewall', 'plan', files['invalid.json']!, ...ns], // exited 1
      ['status', ...ns],
      ['bindings', ...ns],
      ['local', 'list', '--socket', path.join(dir, 'no-agent.sock')],
      ['agent', 'status', '--socket', path.join(dir, 'no-agent.sock')],
      ['bind', 'cdn', 'tcp', '192.0.2.0/24', 'eighty', ...ns],
      ['frobnicate'],
      ['status', '--bogus'],
    ]) {
      const r = await run(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.stderr.split('\n'), argv.join(' ')).toHaveLength(2);
    }
  });
});
