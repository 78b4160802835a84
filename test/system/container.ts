/**
 * A Debian root booted by a real systemd: `systemd-nspawn --boot` with its
 * own network namespace (--private-network: only lo) and a bpffs instance of
 * its own mounted on its /sys/fs/bpf (nspawn's /sys has none, and the
 * host's is never given). Commands run inside through nsenter into the
 * container's namespaces, with a clean environment, as `machinectl shell`
 * would (this host has no systemd to register the machine with).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const comm = (pid: string) => {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return undefined; // gone meanwhile
  }
};

export class Container {
  private nspawn: ChildProcess | undefined;
  private leader = 0;
  readonly bpffs: string;
  private boots = 0;

  constructor(
    /** The container's root directory (a copy of the cached root). */
    readonly root: string,
    private readonly work: string,
    readonly name: string,
  ) {
    this.bpffs = path.join(work, 'bpffs');
  }

  /**
   * Boots on a fresh bpffs instance (a reboot loses every pin, as a real one
   * does) and waits until systemd says the system is up.
   */
  async boot(): Promise<{ ms: number; state: string }> {
    const t0 = Date.now();
    fs.mkdirSync(this.bpffs, { recursive: true });
    spawnSync('umount', [this.bpffs]);
    const m = spawnSync('mount', ['-t', 'bpf', 'bpf', this.bpffs], { encoding: 'utf8' });
    if (m.status !== 0) throw new Error(`mount -t bpf ${this.bpffs}: ${m.stderr}`);
    this.boots += 1;
    const log = fs.openSync(path.join(this.work, `nspawn-${this.boots}.log`), 'w');
    this.nspawn = spawn(
      'systemd-nspawn',
      [
        '--boot',
        `--directory=${this.root}`,
        `--machine=${this.name}`,
        '--private-network',
        // nspawn's seccomp filter refuses bpf() unless asked; CAP_BPF and
        // CAP_PERFMON are not in its default capability set.
        '--system-call-filter=bpf',
        '--capability=CAP_BPF,CAP_PERFMON',
        `--bind=${this.bpffs}:/sys/fs/bpf`,
        // No systemd on this host to register with or to ask for a scope.
        '--register=no',
        '--keep-unit',
        '--console=passive',
      ],
      { stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    const pid = this.nspawn.pid!;
    // The container's PID 1 is a child of nspawn once it has become systemd
    // (nspawn forks helpers first).
    for (let i = 0; i < 300 && !this.leader; i++) {
      await sleep(100);
      if (this.nspawn.exitCode !== null) throw new Error(`systemd-nspawn exited ${this.nspawn.exitCode}: ${this.log()}`);
      const children = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);
      this.leader = Number(children.find((c) => comm(c) === 'systemd') ?? 0);
    }
    if (!this.leader) throw new Error(`the container did not start: ${this.log()}`);
    // Until its D-Bus is up, systemctl cannot ask; then --wait waits for the boot to finish.
    let up = { code: -1, stdout: '', stderr: '' };
    for (let i = 0; i < 600 && !/^(running|degraded)/.test(up.stdout); i++) {
      if (i > 0) await sleep(100);
      up = await this.exec(['systemctl', 'is-system-running', '--wait'], { timeoutMs: 120_000 });
    }
    return { ms: Date.now() - t0, state: up.stdout.trim() };
  }

  log(): string {
    try {
      return fs.readFileSync(path.join(this.work, `nspawn-${this.boots}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  /** Runs argv inside the container (all its namespaces, PATH only). */
  exec(argv: string[], options: { input?: string; timeoutMs?: number; env?: Record<string, string> } = {}): Promise<Result> {
    const env = Object.entries({ PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...options.env }).map(([k, v]) => `${k}=${v}`);
    const child = spawn('nsenter', ['-t', String(this.leader), '-m', '-u', '-i', '-n', '-p', '-C', '--', 'env', '-i', ...env, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.on('error', () => undefined); // a command that reads nothing may exit first
    child.stdin.end(options.input ?? '');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${argv.join(' ')}: no answer within ${options.timeoutMs ?? 60_000} ms; stdout ${stdout} stderr ${stderr}`));
      }, options.timeoutMs ?? 60_000);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code: code ?? -1, stdout, stderr });
      });
    });
  }

  /** Like exec, but a non-zero exit throws with what it printed. */
  async run(argv: string[], options: { input?: string; timeoutMs?: number; env?: Record<string, string> } = {}): Promise<string> {
    const r = await this.exec(argv, options);
    if (r.code !== 0) throw new Error(`${argv.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
  }

  /** Starts a long-running command inside; returns the handle (stop it with kill). */
  background(argv: string[]): ChildProcess {
    return spawn('nsenter', ['-t', String(this.leader), '-m', '-u', '-i', '-n', '-p', '-C', '--', 'env', '-i', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', ...argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }

  /** systemctl poweroff, and waits for nspawn to exit (killing it after a minute). */
  async shutdown(): Promise<void> {
    const nspawn = this.nspawn;
    if (!nspawn || nspawn.exitCode !== null) return;
    const exited = new Promise<void>((r) => nspawn.once('exit', () => r()));
    await this.exec(['systemctl', 'poweroff', '--no-block']).catch(() => undefined);
    const timer = setTimeout(() => nspawn.kill('SIGKILL'), 60_000);
    await exited;
    clearTimeout(timer);
    this.leader = 0;
    this.nspawn = undefined;
  }

  async destroy(): Promise<void> {
    await this.shutdown().catch(() => this.nspawn?.kill('SIGKILL'));
    spawnSync('umount', [this.bpffs]);
  }
}
