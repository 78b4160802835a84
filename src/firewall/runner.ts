/**
 * The firewall tools as child processes: argv arrays only (never a shell),
 * input on stdin, a hard timeout, and an `EPIPE` on stdin (the tool died
 * before reading everything, e.g. `ipset restore` stopping at its first
 * error) reported as the tool's failure instead of crashing Node. The unit
 * tests swap this for a fake that injects failures.
 *
 * Children are started with posix_spawn (the native addon), not Node's
 * child_process: libuv forks, and fork() copies the page tables of the
 * whole agent (with 100,000 bindings a spawn took 11-23 ms, most of a
 * one-binding change; 45 ms at 850 MB), where posix_spawn's vfork costs the
 * same at any size.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { SwitchyardError } from '../errors.js';
import { DEFAULT_NETNS } from '../dispatcher/state.js';
import { native } from '../kernel/native.js';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string;
  /**
   * The input in pieces, taken instead of `input` by the ProcessRunner: a
   * first apply of a million bindings is ~40 MB of `add` lines, and joining
   * them into one string (and writing that in one call) held the event loop
   * for 100-200 ms. Pieces are written to the tool's input file one by one,
   * the writes off this thread.
   */
  inputParts?: readonly string[];
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
/** Inputs above this go to the tool from a private temporary file rather than a pipe. */
const INPUT_FILE_BYTES = 256 * 1024;

/** Runs tools on this machine; with `netnsPath` (other than our own), inside that network namespace (nsenter). */
export class ProcessRunner implements Runner {
  private readonly netnsPath: string | undefined;

  constructor(netnsPath?: string) {
    this.netnsPath = netnsPath === DEFAULT_NETNS ? undefined : netnsPath;
  }

  async run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const full = this.netnsPath ? ['nsenter', `--net=${this.netnsPath}`, '--', ...argv] : [...argv];
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    let spool: { path: string; fd: number } | undefined;
    let inputFile: { path: string; fd: number } | undefined;
    const privateDir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'switchyard-'));
    if (options.spool) {
      const file = path.join(privateDir(), 'out');
      spool = { path: file, fd: fs.openSync(file, 'wx', 0o600) };
    }
    // A big input from a file: the tool reads it at its own pace, even while
    // this thread is busy (a pipe would hold it to what the event loop writes).
    // A small one goes through a pipe, and the tool is started in this very
    // turn (no await before the spawn): callers count on that (SyncHooks).
    const parts = options.inputParts ?? [options.input ?? ''];
    let size = 0;
    for (const part of parts) size += part.length;
    if (size > INPUT_FILE_BYTES) {
      const file = path.join(privateDir(), 'in');
      try {
        const handle = await fs.promises.open(file, 'wx', 0o600);
        try {
          for (const part of parts) await handle.write(part);
        } finally {
          await handle.close();
        }
        inputFile = { path: file, fd: fs.openSync(file, 'r') };
      } catch (err) {
        fs.rmSync(path.dirname(file), { recursive: true, force: true });
        if (spool) {
          fs.closeSync(spool.fd);
          fs.rmSync(path.dirname(spool.path), { recursive: true, force: true });
        }
        throw new SwitchyardError('EFIREWALL', `${argv[0]}: cannot write its input (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { entry: argv[0], cause: err });
      }
    }
    const input = inputFile ? '' : parts.join('');
    const cleanup = () => {
      for (const f of [spool, inputFile]) {
        if (!f) continue;
        fs.closeSync(f.fd);
        fs.rmSync(path.dirname(f.path), { recursive: true, force: true });
      }
    };
    return new Promise<RunResult>((resolve, reject) => {
      let child: ReturnType<ReturnType<typeof native>['spawn']>;
      try {
        const env = Object.entries({ ...process.env, LC_ALL: 'C' }).map(([k, v]) => `${k}=${v ?? ''}`);
        child = native().spawn(full, env, spool ? spool.fd : -1, inputFile ? inputFile.fd : -1);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        reject(new SwitchyardError('EFIREWALL', `${argv[0]}: cannot run it (${code ?? (e as Error).message}); is it installed?`, { entry: argv[0], cause: e }));
        return;
      }
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }, timeoutMs);
      const reading = (fd: number, into: Buffer[]) =>
        new Promise<void>((done) => {
          if (fd < 0) return done();
          const stream = new net.Socket({ fd, readable: true, writable: false });
          stream.on('data', (d: Buffer) => into.push(d));
          stream.on('error', () => done());
          stream.on('close', () => done());
        });
      const outputs = Promise.all([reading(child.stdout, out), reading(child.stderr, err)]);
      // The tool may exit before reading all its input (EPIPE); its exit status says why.
      let stdin: net.Socket | undefined;
      if (!inputFile) {
        stdin = new net.Socket({ fd: child.stdin, readable: false, writable: true });
        stdin.on('error', () => stdin!.destroy());
        stdin.end(input);
      }
      // Its output closed: it has exited, or is about to (then a few polls).
      void outputs.then(async () => {
        let exit = native().waitPid(child.pid);
        for (let wait = 0; exit === null; wait = Math.min(wait + 1, 20)) {
          await new Promise((r) => setTimeout(r, wait));
          exit = native().waitPid(child.pid);
        }
        clearTimeout(timer);
        stdin?.destroy();
        const stderr = Buffer.concat(err).toString('utf8');
        if (timedOut) {
          reject(new SwitchyardError('EFIREWALL', `${argv.join(' ')}: no answer within ${timeoutMs} ms (killed)`, { entry: argv[0] }));
          return;
        }
        try {
          // Read off this thread: `ipset save` of a million entries is ~40 MB.
          const stdout = spool ? (await fs.promises.readFile(spool.path)).toString('utf8') : Buffer.concat(out).toString('utf8');
          resolve({ code: exit.code, stdout, stderr });
        } catch (e) {
          reject(new SwitchyardError('EFIREWALL', `${argv[0]}: cannot read its output (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { entry: argv[0], cause: e }));
        }
      });
    }).finally(cleanup);
  }
}
