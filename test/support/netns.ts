/**
 * A fresh network namespace and bpffs mount per test: local routes for the
 * documentation prefixes (so traffic to them stays inside the namespace),
 * services and probes run inside it with `ip netns exec`. Nothing on the
 * host's own network, firewall or /sys/fs/bpf is touched.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { projectPath } from '../../src/paths.js';

export const CLI = projectPath('bin/switchyard');
const FIXTURES = projectPath('test/fixtures');

export const isRoot = process.getuid?.() === 0;

/** Prefixes routed to `lo` inside every test namespace. */
export const LOCAL_PREFIXES = ['192.0.2.0/24', '198.51.100.0/24', '203.0.113.0/24'];
export const LOCAL_PREFIXES_V6 = ['2001:db8::/32'];

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ProbeTarget {
  proto: 'tcp' | 'udp';
  addr: string;
  port: number;
}

export class Service {
  constructor(
    readonly name: string,
    readonly pid: number,
    private readonly child: ChildProcess,
  ) {}
  stop(): void {
    this.child.kill('SIGKILL');
  }
}

let counter = 0;

export class TestNamespace {
  readonly path: string;
  private services: Service[] = [];

  private constructor(
    readonly name: string,
    readonly bpffs: string,
  ) {
    this.path = `/run/netns/${name}`;
  }

  /** `localRoutes: false` makes a client namespace: no documentation prefixes on its own lo. */
  static create(options: { localRoutes?: boolean } = {}): TestNamespace {
    const name = `sy-test-${process.pid}-${++counter}`;
    execFileSync('ip', ['netns', 'add', name]);
    const bpffs = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-bpffs-'));
    const ns = new TestNamespace(name, bpffs);
    try {
      execFileSync('mount', ['-t', 'bpf', 'bpf', bpffs]);
      ns.ip(['link', 'set', 'lo', 'up']);
      if (options.localRoutes !== false) {
        for (const p of LOCAL_PREFIXES) ns.ip(['route', 'add', 'local', p, 'dev', 'lo']);
        for (const p of LOCAL_PREFIXES_V6) ns.ip(['-6', 'route', 'add', 'local', p, 'dev', 'lo']);
      }
    } catch (err) {
      ns.destroy();
      throw err;
    }
    return ns;
  }

  /**
   * A veth pair from this (server) namespace to `client`, which routes the
   * documentation prefixes here: client 10.99.0.2 / fd00:99::2, server
   * 10.99.0.1 / fd00:99::1. Traffic then crosses the server's INPUT as it
   * would from the Internet.
   */
  linkTo(client: TestNamespace): void {
    const here = `syv${counter}`;
    const there = `syc${counter}`;
    execFileSync('ip', ['link', 'add', here, 'netns', this.name, 'type', 'veth', 'peer', 'name', there, 'netns', client.name]);
    this.ip(['addr', 'add', '10.99.0.1/24', 'dev', here]);
    this.ip(['-6', 'addr', 'add', 'fd00:99::1/64', 'dev', here, 'nodad']);
    this.ip(['link', 'set', here, 'up']);
    client.ip(['addr', 'add', '10.99.0.2/24', 'dev', there]);
    client.ip(['-6', 'addr', 'add', 'fd00:99::2/64', 'dev', there, 'nodad']);
    client.ip(['link', 'set', there, 'up']);
    for (const p of LOCAL_PREFIXES) client.ip(['route', 'add', p, 'via', '10.99.0.1']);
    for (const p of LOCAL_PREFIXES_V6) client.ip(['-6', 'route', 'add', p, 'via', 'fd00:99::1']);
  }

  /** Runs a command inside the namespace (argv, no shell). */
  exec(argv: string[], input?: string): CliResult {
    const r = spawnSync('ip', ['netns', 'exec', this.name, ...argv], { input, encoding: 'utf8' });
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  ip(args: string[]): void {
    execFileSync('ip', ['-n', this.name, ...args]);
  }

  /** Runs the CLI from the host namespace, aimed at this one. */
  cli(args: string[], input?: string, env?: Record<string, string>): CliResult {
    const r = spawnSync(CLI, [...args, '--netns', this.path, '--bpffs', this.bpffs], {
      input,
      ...(env ? { env: { ...process.env, ...env } } : {}),
      encoding: 'utf8',
      maxBuffer: 256 * 1024 * 1024,
    });
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  /** Like cli() but throws on failure and returns stdout. */
  ok(args: string[], input?: string): string {
    const r = this.cli(args, input);
    if (r.code !== 0) throw new Error(`switchyard ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return r.stdout;
  }

  json<T = unknown>(args: string[]): T {
    return JSON.parse(this.ok([...args, '--json'])) as T;
  }

  /** Starts a service inside the namespace; `register` passes its sockets to `switchyard register` (LISTEN_FDS). */
  /**
   * A service in the namespace. `register`: its sockets registered at start
   * (socket activation style, `switchyard register`), with `registerArgs`
   * instead of the default CLI arguments; `uid`: run as that user (and group).
   */
  async startService(name: string, specs: string[], register = false, options: { uid?: number; registerArgs?: string[] } = {}): Promise<Service> {
    const args = [path.join(FIXTURES, 'service.mjs'), name, ...specs];
    if (register) {
      args.push('--register-listen-fds', JSON.stringify([CLI, 'register', name, ...(options.registerArgs ?? ['--bpffs', this.bpffs])]));
    }
    const user = options.uid === undefined ? [] : ['setpriv', `--reuid=${options.uid}`, `--regid=${options.uid}`, '--clear-groups'];
    const child = spawn('ip', ['netns', 'exec', this.name, ...user, process.execPath, '--no-deprecation', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const lines = readline.createInterface({ input: child.stdout! });
    const pid = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`service ${name} did not start: ${stderr}`)), 20_000);
      lines.on('line', (line) => {
        const m = /^ready (\d+)$/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`service ${name} exited ${code}: ${stderr}`));
      });
    });
    const service = new Service(name, pid, child);
    this.services.push(service);
    return service;
  }

  /** Local (address, port) of a service's sockets, read from ss inside the namespace. */
  socketsOf(pid: number): Array<{ proto: 'tcp' | 'udp'; addr: string; port: number }> {
    const out = execFileSync('ip', ['netns', 'exec', this.name, 'ss', '-H', '-ltunp'], { encoding: 'utf8' });
    const result: Array<{ proto: 'tcp' | 'udp'; addr: string; port: number }> = [];
    for (const line of out.split('\n')) {
      if (!line.includes(`pid=${pid},`)) continue;
      const cols = line.trim().split(/\s+/);
      const local = cols[4]!;
      const at = local.lastIndexOf(':');
      result.push({ proto: cols[0] === 'tcp' ? 'tcp' : 'udp', addr: local.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(local.slice(at + 1)) });
    }
    return result;
  }

  /** Sends bounded traffic from inside the namespace; one result per target. */
  probe(targets: ProbeTarget[], options: { fromAnyAddress?: boolean } = {}): string[] {
    const out = execFileSync('ip', ['netns', 'exec', this.name, process.execPath, path.join(FIXTURES, 'probe.mjs'), JSON.stringify(targets)], {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, ...(options.fromAnyAddress ? { PROBE_FROM_ANY: '1' } : {}) },
    });
    return JSON.parse(out) as string[];
  }

  destroy(): void {
    for (const s of this.services) s.stop();
    spawnSync('ip', ['netns', 'del', this.name]);
    spawnSync('umount', [this.bpffs]);
    fs.rmSync(this.bpffs, { recursive: true, force: true });
  }
}

/**
 * A probe loop inside the namespace (test/fixtures/load.mjs): `rate` attempts
 * a second over `targets` in turn for `seconds`; resolves to each attempt's
 * result and the answer it should have had.
 */
export function probeLoop(ns: TestNamespace, targets: Array<[ProbeTarget, string]>, rate: number, seconds: number) {
  const spec = { targets: targets.map(([t]) => t), rate, seconds, concurrency: 64 };
  const client = spawn('ip', ['netns', 'exec', ns.name, process.execPath, projectPath('test/fixtures/load.mjs'), JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  client.stdout!.on('data', (d) => (out += d));
  let running = true;
  const done = new Promise<Array<{ got: string; want: string; target: ProbeTarget }>>((resolve) =>
    client.on('exit', () => {
      running = false;
      resolve(
        out
          .split('\n')
          .filter(Boolean)
          .map((line) => JSON.parse(line) as { i: number; r: string })
          .map(({ i, r }) => ({ got: r, want: targets[i]![1], target: targets[i]![0] })),
      );
    }),
  );
  return { done, running: () => running };
}

/**
 * Two services for traffic through a switch of program or state: web (TCP
 * and UDP over IPv4, TCP over IPv6) and api (TCP and UDP over IPv4), with
 * bindings that need the exact-port and any-port walks of both families.
 */
export async function startWebAndApi(ns: TestNamespace): Promise<void> {
  await ns.startService('web', ['tcp4', 'udp4', 'tcp6'], true);
  await ns.startService('api', ['tcp4', 'udp4'], true);
  ns.ok(['bind', 'web', 'tcp', '192.0.2.0/24', '0']);
  ns.ok(['bind', 'web', 'udp', '192.0.2.0/24', '53']);
  ns.ok(['bind', 'web', 'tcp', '2001:db8::/32', '443']);
  ns.ok(['bind', 'api', 'tcp', '192.0.2.128/25', '8080']);
  ns.ok(['bind', 'api', 'udp', '198.51.100.0/24', '0']);
}

/** Where startWebAndApi's bindings send each probe. */
export const WEB_AND_API_TARGETS: Array<[ProbeTarget, string]> = [
  [{ proto: 'tcp', addr: '192.0.2.10', port: 80 }, 'web'],
  [{ proto: 'udp', addr: '192.0.2.11', port: 53 }, 'web'],
  [{ proto: 'tcp', addr: '2001:db8::7', port: 443 }, 'web'],
  [{ proto: 'tcp', addr: '192.0.2.200', port: 8080 }, 'api'],
  [{ proto: 'tcp', addr: '192.0.2.20', port: 8080 }, 'web'],
  [{ proto: 'udp', addr: '198.51.100.9', port: 5353 }, 'api'],
];
