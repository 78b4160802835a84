/**
 * `switchyard --version` (issue 15, defect 8): it printed the help and
 * exited 2. Now `switchyard <version>` from package.json, exit 0; with
 * --json, the version and the dispatcher ABI.
 *
 * Issue 16: `switchyard version` too, and both say which BPF object a load
 * or upgrade would use, by its sha256 (an installed package's object is
 * told from another build's), and the Node.js running it.
 */
import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { runCli } from '../support/cli.js';
import { bpfObjectPath, switchyardVersion, versionInfo, versionLine } from '../../src/version.js';
import { defaultObjectPath } from '../../src/dispatcher/dispatcher.js';
import { projectPath } from '../../src/paths.js';
import { ABI_VERSION } from '../../src/trie/layout.js';

const run = runCli;

const PACKAGE_VERSION = (JSON.parse(fs.readFileSync(projectPath('package.json'), 'utf8')) as { version: string }).version;
const OBJECT = projectPath('bpf/dispatcher.o');
const hasObject = fs.existsSync(OBJECT);
const SHA256 = hasObject ? createHash('sha256').update(fs.readFileSync(OBJECT)).digest('hex') : '';
// Unit tests run anywhere, a checkout whose BPF object is not built included: then it is said missing.
const INFO = { version: PACKAGE_VERSION, abi: ABI_VERSION, bpf_object: hasObject ? { path: OBJECT, sha256: SHA256 } : { path: OBJECT, sha256: null, error: 'not found' }, node: process.version };
const LINE = `switchyard ${PACKAGE_VERSION} (abi ${ABI_VERSION}, ${hasObject ? `bpf sha256 ${SHA256}` : `bpf object ${OBJECT}: not found`})\n`;

describe('switchyard version, --version', () => {
  it('prints "switchyard <package version> (abi N, bpf sha256 HEX)" and exits 0, as version, --version and -V', async () => {
    expect(PACKAGE_VERSION).toMatch(/^\d+\.\d+\.\d+/);
    if (hasObject) expect(SHA256).toMatch(/^[0-9a-f]{64}$/);
    for (const argv of [['version'], ['--version'], ['-V']]) {
      expect(await run(argv), argv.join(' ')).toEqual({ code: 0, stdout: LINE, stderr: '' });
    }
  });

  it('with --json (before or after): the version, the dispatcher ABI, the object and its sha256, the Node.js', async () => {
    for (const argv of [['version', '--json'], ['--json', 'version'], ['--version', '--json'], ['--json', '--version'], ['-V', '--json']]) {
      const r = await run(argv);
      expect(r.code, argv.join(' ')).toBe(0);
      expect(JSON.parse(r.stdout), argv.join(' ')).toEqual(INFO);
    }
  });

  it.skipIf(!hasObject)('the object is the one load and upgrade take when none is named', () => {
    expect(bpfObjectPath()).toBe(defaultObjectPath());
  });

  it('anything else with it is a usage error (2); a command\'s own --version is untouched', async () => {
    expect(await run(['--version', 'extra'])).toMatchObject({ code: 2, stdout: '', stderr: 'switchyard: --version takes no argument but --json, not "extra"\n' });
    expect(await run(['version', 'extra'])).toMatchObject({ code: 2, stdout: '', stderr: 'switchyard version: expected 0 arguments: version [--json]\n' });
    // control-plane override --version N is the version to confirm, not ours.
    const r = await run(['control-plane', 'override', '--version', 'x']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--version "x" must be a version number/);
  });

  it('the module: read once from package.json, not from npm_package_version', () => {
    const saved = process.env.npm_package_version;
    process.env.npm_package_version = '9.9.9';
    try {
      expect(switchyardVersion()).toBe(PACKAGE_VERSION);
      expect(versionInfo()).toEqual(INFO);
    } finally {
      if (saved === undefined) delete process.env.npm_package_version;
      else process.env.npm_package_version = saved;
    }
  });

  it('the help lists it, and the exit statuses', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/-V, --version +switchyard <version> \(abi N, bpf sha256 HEX\)/);
    expect(r.stdout).toMatch(/\n  version \[--json\]\n +the package version, the dispatcher state's ABI and the sha256 of the BPF object/);
    expect(r.stdout).toMatch(/exit status \(every command\):\n +0 +success\n +1 +findings or differences.*\n +2 +usage error, or any other error/);
  });
});

describe('switchyard version without a BPF object', () => {
  it('says the object is missing, where it was looked for, and still answers the version (exit 0)', () => {
    const info = { version: '1.2.3', abi: 3, bpf_object: { path: '/usr/lib/switchyard/bpf/dispatcher.o', sha256: null, error: 'not found' }, node: 'v20.0.0' };
    expect(versionLine(info)).toBe('switchyard 1.2.3 (abi 3, bpf object /usr/lib/switchyard/bpf/dispatcher.o: not found)');
  });
});
