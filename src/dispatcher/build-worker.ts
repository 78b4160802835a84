/**
 * The table builder on a thread of its own (worker_threads): the agent
 * builds a 100,000-binding table (~0.5 s of CPU) while its main thread plans
 * the firewall, on the other CPU. The columns are copied in (a few MB), the
 * built table is transferred back (no copy). `TableBuildThread` is the
 * caller's side; this module is also the worker's script.
 */
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { buildTable, type BuiltTable, type TrieInput } from '../trie/builder.js';

interface Job {
  id: number;
  input: TrieInput;
  serial: bigint;
  order: Uint32Array;
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on('message', (job: Job) => {
    try {
      const built = buildTable(job.input, job.serial, job.order);
      port.postMessage({ id: job.id, built }, [built.bytes.buffer as ArrayBuffer]);
    } catch (err) {
      port.postMessage({ id: job.id, error: (err as Error).message });
    }
  });
}

export class TableBuildThread {
  private worker: Worker | undefined;
  private next = 1;
  private readonly pending = new Map<number, { resolve: (b: BuiltTable) => void; reject: (e: Error) => void }>();

  /** The worker script next to this module (the compiled .js); absent (running from TypeScript sources): build here. */
  static available(): boolean {
    return fileURLToPath(import.meta.url).endsWith('.js') && fs.existsSync(fileURLToPath(import.meta.url));
  }

  build(input: TrieInput, serial: bigint, order: Uint32Array): Promise<BuiltTable> {
    if (!TableBuildThread.available()) return Promise.resolve(buildTable(input, serial, order));
    if (!this.worker) {
      const worker = new Worker(fileURLToPath(import.meta.url));
      worker.unref(); // an idle builder never keeps the agent alive
      worker.on('message', (m: { id: number; built?: BuiltTable; error?: string }) => {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (m.built) p?.resolve(m.built);
        else p?.reject(new Error(`table build failed: ${m.error}`));
      });
      worker.on('error', (err) => this.fail(err));
      worker.on('exit', (code) => this.fail(new Error(`table build thread exited (${code})`)));
      this.worker = worker;
    }
    const id = this.next++;
    const worker = this.worker;
    return new Promise<BuiltTable>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Copies of the columns (the caller's table stays as it is).
      const copy: TrieInput = {
        count: input.count,
        family: Uint8Array.from(input.family),
        protocol: Uint8Array.from(input.protocol),
        prefixLen: Uint8Array.from(input.prefixLen),
        port: Uint16Array.from(input.port),
        addr: Uint32Array.from(input.addr),
        destination: Uint16Array.from(input.destination),
      };
      const orderCopy = Uint32Array.from(order);
      worker.postMessage({ id, input: copy, serial, order: orderCopy } satisfies Job, [copy.family.buffer, copy.protocol.buffer, copy.prefixLen.buffer, copy.port.buffer, copy.addr.buffer, (copy.destination as Uint16Array).buffer, orderCopy.buffer] as ArrayBuffer[]);
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
