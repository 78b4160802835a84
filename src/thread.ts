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
  if (!(err instanceof SwitchyardError)) return { message: err instanceof Error ? err.message : String(err) };
  return { message: err.message, code: err.code, ...(err.entry !== undefined ? { entry: err.entry } : {}) };
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

type Pending<Rep> = Map<number, { resolve: (r: Rep) => void; reject: (e: Error) => void }>;

export class RequestThread<Req, Rep> {
  /** The thread, and the requests it owes: a thread that failed fails only its own (a late `exit` of an old one leaves a new one alone). */
  private current: { worker: Worker; pending: Pending<Rep> } | undefined;
  private next = 1;

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
    if (!this.current) {
      const worker = new Worker(fileURLToPath(this.moduleUrl));
      worker.unref(); // an idle thread never keeps the agent alive
      const current = { worker, pending: new Map() as Pending<Rep> };
      worker.on('message', (m: Answer<Rep>) => {
        const p = current.pending.get(m.id);
        current.pending.delete(m.id);
        if ('reply' in m) p?.resolve(m.reply);
        else p?.reject(fromWire(m.error, this.what));
      });
      const fail = (err: Error) => {
        if (this.current === current) this.current = undefined;
        for (const p of current.pending.values()) p.reject(err);
        current.pending.clear();
        void worker.terminate();
      };
      worker.on('error', fail);
      worker.on('exit', (code) => fail(new Error(`${this.what}: its thread exited (${code})`)));
      this.current = current;
    }
    const id = this.next++;
    const { worker, pending } = this.current;
    return new Promise<Rep>((resolve, reject) => {
      pending.set(id, { resolve, reject });
      worker.postMessage({ id, request }, transfer);
    });
  }

  close(): void {
    void this.current?.worker.terminate();
    this.current = undefined;
  }
}
