/**
 * A worker thread that answers requests, for the slow parts of a push that
 * must not hold the agent's event loop (the table build, decoding a large
 * frame). The module that defines the work is also the worker's script: it
 * calls serveRequests() when it runs as a worker. Buffers are transferred,
 * never copied; errors cross as their message, code and entry.
 */
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SwitchyardError, type ErrorCode } from './errors.js';

interface WireError {
  message: string;
  code?: string;
  entry?: string;
}

type Answer<Rep> = { id: number; reply: Rep } | { id: number; error: WireError };

/** An Error as it crosses threads (the code and entry of a SwitchyardError kept). */
export const toWire = (err: unknown): WireError => {
  const e = err as SwitchyardError;
  return { message: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}), ...(e.entry !== undefined ? { entry: e.entry } : {}) };
};

/** The Error again: a SwitchyardError when it had a code, else an Error whose message starts with `what`. */
export const fromWire = (e: WireError, what: string): Error =>
  e.code ? new SwitchyardError(e.code as ErrorCode, e.message, e.entry === undefined ? {} : { entry: e.entry }) : new Error(`${what}: ${e.message}`);

/** In the worker (a no-op on the main thread): answers each request with `handle`'s reply, transferring what it lists. */
export function serveRequests<Req, Rep>(handle: (request: Req) => { reply: Rep; transfer: ArrayBuffer[] }): void {
  if (isMainThread || !parentPort) return;
  const port = parentPort;
  port.on('message', ({ id, request }: { id: number; request: Req }) => {
    let answer: Answer<Rep>;
    let transfer: ArrayBuffer[] = [];
    try {
      const r = handle(request);
      answer = { id, reply: r.reply };
      transfer = r.transfer;
    } catch (err) {
      answer = { id, error: toWire(err) };
    }
    port.postMessage(answer, transfer);
  });
}

export class RequestThread<Req, Rep> {
  private worker: Worker | undefined;
  private next = 1;
  private readonly pending = new Map<number, { resolve: (r: Rep) => void; reject: (e: Error) => void }>();

  /** `moduleUrl`: the import.meta.url of the module that calls serveRequests(); `what` names the work in errors. */
  constructor(
    private readonly moduleUrl: string,
    private readonly what: string,
  ) {}

  /** The worker script is the compiled .js beside the module; from TypeScript sources (tests) there is none, and callers work on their own thread. */
  get available(): boolean {
    const file = fileURLToPath(this.moduleUrl);
    return file.endsWith('.js') && fs.existsSync(file);
  }

  request(request: Req, transfer: ArrayBuffer[]): Promise<Rep> {
    if (!this.worker) {
      const worker = new Worker(fileURLToPath(this.moduleUrl));
      worker.unref(); // an idle thread never keeps the agent alive
      worker.on('message', (m: Answer<Rep>) => {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if ('reply' in m) p?.resolve(m.reply);
        else p?.reject(fromWire(m.error, this.what));
      });
      worker.on('error', (err) => this.fail(err));
      worker.on('exit', (code) => this.fail(new Error(`${this.what}: its thread exited (${code})`)));
      this.worker = worker;
    }
    const id = this.next++;
    const worker = this.worker;
    return new Promise<Rep>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, request }, transfer);
    });
  }

  private fail(err: Error): void {
    this.worker = undefined;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  close(): void {
    void this.worker?.terminate();
    this.worker = undefined;
  }
}
