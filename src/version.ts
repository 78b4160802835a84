/**
 * What this Switchyard is: the package's version (package.json, the one
 * source: the CLI's `--version`, the agent's hello) and the ABI of the
 * dispatcher state it speaks. Read from the package itself, not from
 * `npm_package_version`, which only exists under `npm run`.
 */
import fs from 'node:fs';
import { SwitchyardError } from './errors.js';
import { projectPath } from './paths.js';
import { ABI_VERSION } from './trie/layout.js';

let cached: string | undefined;

/** The package's version ("0.1.0"), read once. */
export function switchyardVersion(): string {
  if (cached === undefined) {
    const file = projectPath('package.json');
    let version: unknown;
    try {
      const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
      version = typeof doc === 'object' && doc !== null && Object.hasOwn(doc, 'version') ? (doc as { version: unknown }).version : undefined;
    } catch (err) {
      throw new SwitchyardError('EINVAL_FILE', `${file}: ${(err as Error).message}`, { entry: file, cause: err });
    }
    // It goes into hello frames (a string of at most 256 characters) and log lines.
    if (typeof version !== 'string' || !/^[0-9A-Za-z.+-]{1,64}$/.test(version)) {
      throw new SwitchyardError('EINVAL_FILE', `${file}: "version" ${JSON.stringify(version)} is not a version`, { entry: file });
    }
    cached = version;
  }
  return cached;
}

/** The version and the dispatcher ABI (what `switchyard --version --json` prints). */
export function versionInfo(): { version: string; abi: number } {
  return { version: switchyardVersion(), abi: ABI_VERSION };
}
