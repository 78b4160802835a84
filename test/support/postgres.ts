/**
 * A PostgreSQL cluster of the test's own: initdb in a temporary directory
 * as an unprivileged user (PostgreSQL refuses to run as root), listening on
 * a Unix socket in that directory only (no TCP port, nothing the host
 * serves), started and stopped with pg_ctl, removed afterwards. Never one
 * of the host's clusters.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** The newest installed server's bin directory (Debian: /usr/lib/postgresql/<major>/bin), or undefined. */
export function postgresBin(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!fs.existsSync(root)) return undefined;
  const majors = fs
    .readdirSync(root)
    .filter((d) => fs.existsSync(path.join(root, d, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return majors[0] === undefined ? undefined : path.join(root, majors[0], 'bin');
}

/** The unprivileged user the cluster runs as. */
const USER = 'nobody';

export class TestPostgres {
  private constructor(
    readonly dir: string,
    private readonly bin: string,
  ) {}

  /** A database URL for the cluster's socket (user `nobody`, trust auth on the socket only). */
  url(database = 'postgres'): string {
    return `postgres://${USER}@/${database}?host=${encodeURIComponent(this.dir)}`;
  }

  private run(tool: string, args: string[]): string {
    const r = spawnSync('setpriv', ['--reuid', USER, '--regid', 'nogroup', '--clear-groups', path.join(this.bin, tool), ...args], { encoding: 'utf8', cwd: this.dir, timeout: 60_000 });
    if (r.status !== 0) throw new Error(`${tool} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr || r.stdout}`);
    return r.stdout;
  }

  static create(): TestPostgres {
    const bin = postgresBin();
    if (!bin) throw new Error('PostgreSQL is not installed (scripts/setup.sh installs it)');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-pg-'));
    fs.chmodSync(dir, 0o700);
    execFileSync('chown', [`${USER}:nogroup`, dir]);
    const pg = new TestPostgres(dir, bin);
    try {
      pg.run('initdb', ['-D', path.join(dir, 'data'), '--auth=trust', '--username', USER, '--no-sync', '-E', 'UTF8']);
      pg.start();
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return pg;
  }

  start(): void {
    // No TCP listener; the socket in our directory; fsync on (durability is what is tested).
    this.run('pg_ctl', ['-D', path.join(this.dir, 'data'), '-l', path.join(this.dir, 'log'), '-w', '-t', '30', '-o', `-c listen_addresses='' -c unix_socket_directories='${this.dir}'`, 'start']);
  }

  /** `fast` (clients disconnected, clean) or `immediate` (like a crash). */
  stop(mode: 'fast' | 'immediate' = 'fast'): void {
    this.run('pg_ctl', ['-D', path.join(this.dir, 'data'), '-w', '-t', '30', '-m', mode, 'stop']);
  }

  destroy(): void {
    try {
      this.stop('immediate');
    } catch {
      // not running
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
