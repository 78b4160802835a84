/**
 * The lease's renewals (lease-loop.ts) on a thread of their own with their
 * own store connection, so that a busy event loop on the publishing thread
 * does not lose the lease. `LeaseThread` is the publishing thread's side;
 * this module is also the thread's script.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { LeaseClock, LeaseLoop, type LeaseOptions, type Renewal } from './lease-loop.js';
import { openStore } from './store/open.js';
import { isReplicaStore } from './store/store.js';

interface ThreadData {
  leaseThread: true;
  spec: string;
  options: LeaseOptions;
  clock: SharedArrayBuffer;
}

type ToThread = { stop: true; release: boolean };
type FromThread = { renewal: Renewal } | { stopped: true };

const STOP_WAIT_MS = 2_000;
/** A thread that failed is started again after this long. */
const RESTART_MS = 1_000;

export class LeaseThread {
  private worker: Worker | undefined;
  private stopped = false;

  /** The script is the compiled .js beside this module; from TypeScript sources (tests) there is none, and the lease is renewed on the caller's loop. */
  static get available(): boolean {
    const file = fileURLToPath(import.meta.url);
    return file.endsWith('.js') && fs.existsSync(file);
  }

  /** `spec`: the store as the thread opens it (ReplicaStore.threadSpec()). */
  constructor(
    private readonly spec: string,
    private readonly options: LeaseOptions,
    private readonly clock: LeaseClock,
    private readonly report: (r: Renewal) => void,
  ) {}

  start(): void {
    const data: ThreadData = { leaseThread: true, spec: this.spec, options: this.options, clock: this.clock.buffer };
    const worker = new Worker(fileURLToPath(import.meta.url), { workerData: data });
    worker.unref();
    worker.on('message', (m: FromThread) => {
      if ('renewal' in m) this.report(m.renewal);
    });
    const fail = (why: string) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      this.clock.lost();
      this.report({ error: `the lease's thread ${why}` });
      // Another thread after a pause, as the loop retries a renewal that failed: the replica may lead again.
      if (!this.stopped) setTimeout(() => !this.stopped && !this.worker && this.start(), RESTART_MS).unref();
    };
    worker.on('error', (err) => fail(`failed (${err.message})`));
    worker.on('exit', (code) => fail(`exited (${code})`));
    this.worker = worker;
  }

  async stop(release: boolean): Promise<void> {
    this.stopped = true;
    const worker = this.worker;
    this.worker = undefined;
    this.clock.lost();
    if (!worker) return;
    await new Promise<void>((resolve) => {
      const done = setTimeout(resolve, STOP_WAIT_MS);
      worker.on('message', (m: FromThread) => {
        if ('stopped' in m) {
          clearTimeout(done);
          resolve();
        }
      });
      worker.postMessage({ stop: true, release } satisfies ToThread);
    });
    await worker.terminate();
  }
}

if (!isMainThread && parentPort && (workerData as Partial<ThreadData> | undefined)?.leaseThread) {
  const data = workerData as ThreadData;
  const port = parentPort;
  const store = openStore(data.spec, () => {});
  if (!isReplicaStore(store)) throw new Error(`${store.description}: not a store replicas share`);
  const loop = new LeaseLoop(store, data.options, new LeaseClock(data.clock), (renewal) => port.postMessage({ renewal } satisfies FromThread));
  port.on('message', (m: ToThread) => {
    if (!m.stop) return;
    void loop
      .stop(m.release)
      .catch(() => undefined)
      .then(() => port.postMessage({ stopped: true } satisfies FromThread));
  });
  loop.start();
}
