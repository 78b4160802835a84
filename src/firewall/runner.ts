/**
 * The firewall tools as child processes: argv arrays only (never a shell),
 * input on stdin, a hard timeout, and an `EPIPE` on stdin (the tool died
 * before reading everything, e.g. `ipset restore` stopping at its first
 * error) reported as the tool's failure instead of crashing Node. The unit
 * tests swap this for a fake that injects failures.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SwitchyardError } from '../errors.js';
import { DEFAULT_NETNS } from '../dispatcher/state.js';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string;
  timeoutMs?: number;
  /**
   * Output to a private temporary file instead of a pipe: a big dump (ipset
   * save) then runs to the end while this thread computes, instead of
   * stalling on a full pipe until the event loop reads it.
   */
  spool?: boolean;
}

export interface Runner {
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult>;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** Runs tools on this machine; with `netnsPath` (other than our own), inside that network namespace (nsenter). */
export class ProcessRunner implements Runner {
  private readonly netnsPath: string | undefined;

  constructor(netnsPath?: string) {
    this.netnsPath = netnsPath === DEFAULT_NETNS ? undefined : netnsPath;
  }

  run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const full = this.netnsPath ? ['nsenter', `--net=${this.netnsPath}`, '--', ...argv] : [...argv];
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    let spool: { path: string; fd: number } | undefined;
    if (options.spool) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchyard-'));
      const file = path.join(dir, 'out');
      spool = { path: file, fd: fs.openSync(file, 'wx', 0o600) };
    }
    const cleanup = () => {
      if (!spool) return;
      fs.closeSync(spool.fd);
      fs.rmSync(path.dirname(spool.path), { recursive: true, force: true });
    };
    return new Promise<RunResult>((resolve, reject) => {
      const child = spawn(full[0]!, full.slice(1), { stdio: ['pipe', spool ? spool.fd : 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, timeoutMs);
      child.stdout?.on('data', (d: Buffer) => out.push(d));
      child.stderr!.on('data', (d: Buffer) => err.push(d));
      // The tool may exit before reading all its input; its exit status says why.
      child.stdin!.on('error', () => {});
      child.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(
          new SwitchyardError('EFIREWALL', `${argv[0]}: cannot run it (${e.code ?? e.message}); is it installed?`, { entry: argv[0], cause: e }),
        );
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        const stderr = Buffer.concat(err).toString('utf8');
        if (timedOut) {
          reject(new SwitchyardError('EFIREWALL', `${argv.join(' ')}: no answer within ${timeoutMs} ms (killed)`, { entry: argv[0] }));
          return;
        }
        const stdout = spool ? fs.readFileSync(spool.path, 'utf8') : Buffer.concat(out).toString('utf8');
        resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
      });
      child.stdin!.end(options.input ?? '');
    }).finally(cleanup);
  }
}
