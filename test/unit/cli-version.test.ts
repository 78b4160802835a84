/**
 * `switchyard --version` (issue 15, defect 8): it printed the help and
 * exited 2. Now `switchyard <version>` from package.json, exit 0; with
 * --json, the version and the dispatcher ABI.
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import { runCli } from '../support/cli.js';
import { switchyardVersion, versionInfo } from '../../src/version.js';
import { projectPath } from '../../src/paths.js';
import { ABI_VERSION } from '../../src/trie/layout.js';

const run = runCli;

const PACKAGE_VERSION = (JSON.parse(fs.readFileSync(projectPath('package.json'), 'utf8')) as { version: string }).version;

describe('switchyard --version', () => {
  it('prints "switchyard <package version>" and exits 0, as --version and -V', async () => {
    expect(PACKAGE_VERSION).toMatch(/^\d+\.\d+\.\d+/);
    for (const flag of ['--version', '-V']) {
      expect(await run([flag])).toEqual({ code: 0, stdout: `switchyard ${PACKAGE_VERSION}\n`, stderr: '' });
    }
  });

  it('with --json (before or after): the version and the dispatcher ABI', async () => {
    for (const argv of [['--version', '--json'], ['--json', '--version'], ['-V', '--json']]) {
      const r = await run(argv);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ version: PACKAGE_VERSION, abi: ABI_VERSION });
    }
  });

  it('anything else with it is a usage error (2); a command\'s own --version is untouched', async () => {
    expect(await run(['--version', 'extra'])).toMatchObject({ code: 2, stdout: '', stderr: 'switchyard: --version takes no argument but --json, not "extra"\n' });
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
      expect(versionInfo()).toEqual({ version: PACKAGE_VERSION, abi: ABI_VERSION });
    } finally {
      if (saved === undefined) delete process.env.npm_package_version;
      else process.env.npm_package_version = saved;
    }
  });

  it('the help lists it, and the exit statuses', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/-V, --version +switchyard <version>/);
    expect(r.stdout).toMatch(/exit status \(every command\):\n +0 +success\n +1 +findings or differences.*\n +2 +usage error, or any other error/);
  });
});
