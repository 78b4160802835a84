/**
 * What this Switchyard is: the package's version (package.json, the one
 * source: `switchyard version`, the agent's hello; the Debian package
 * rewrites the staged package.json's version to its own), the ABI of the
 * dispatcher state it speaks and the BPF object it would load. The
 * version is read from the package itself, not from `npm_package_version`,
 * which only exists under `npm run`.
 */
import { createHash } from 'node:crypto';
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

/**
 * The dispatcher object the CLI and the agent load when none is named:
 * `defaultObjectPath()` in src/dispatcher/dispatcher.ts (which also
 * refuses a missing file; here a missing file is an answer, not an error).
 * A unit test holds the two to the same path.
 */
export function bpfObjectPath(): string {
  return projectPath('bpf/dispatcher.o');
}

export interface VersionInfo {
  /** The package's version (package.json: the Debian package's version once installed). */
  version: string;
  /** The layout of the pinned dispatcher state this version reads and writes. */
  abi: number;
  /** The object a load or upgrade would use, and its sha256 (null, with why, when it cannot be read). */
  bpf_object: { path: string; sha256: string | null; error?: string };
  /** The Node.js running this (process.version). */
  node: string;
}

/** What `switchyard version` prints: the package, the ABI, the installed BPF object's hash, the runtime. */
export function versionInfo(): VersionInfo {
  const path = bpfObjectPath();
  let bpf: VersionInfo['bpf_object'];
  try {
    bpf = { path, sha256: createHash('sha256').update(fs.readFileSync(path)).digest('hex') };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    bpf = { path, sha256: null, error: e.code === 'ENOENT' ? 'not found' : `${e.code ?? ''} ${e.message}`.trim() };
  }
  return { version: switchyardVersion(), abi: ABI_VERSION, bpf_object: bpf, node: process.version };
}

/** The one line: `switchyard 0.1.0 (abi 3, bpf sha256 <hex>)`. */
export function versionLine(info: VersionInfo): string {
  const bpf = info.bpf_object.sha256 !== null ? `bpf sha256 ${info.bpf_object.sha256}` : `bpf object ${info.bpf_object.path}: ${info.bpf_object.error}`;
  return `switchyard ${info.version} (abi ${info.abi}, ${bpf})`;
}
