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
import { findDuplicate, sortBindings } from '../bindings/order.js';
import { formatPrefix, type Family } from '../net/address.js';
import { protocolName } from '../bindings/binding.js';
import { SwitchyardError } from '../errors.js';

interface Job {
  id: number;
  input: TrieInput;
  serial: bigint;
  order?: Uint32Array;
}

/**
 * The build, sorting first when no order is given: sorting a million
 * bindings is most of a second, which the caller's thread does not pay. A
 * duplicate key then is found here, and named.
 */
function build(input: TrieInput, serial: bigint, given?: Uint32Array): BuiltTable {
  const order = given ?? sortBindings(input);
  if (!given) {
    const duplicate = findDuplicate(input, order);
    if (duplicate) {
      const i = duplicate[1];
      const a = input.addr;
      const prefix = formatPrefix({ family: input.family[i] as Family, words: [a[i * 4]!, a[i * 4 + 1]!, a[i * 4 + 2]!, a[i * 4 + 3]!], length: input.prefixLen[i]! });
      const key = `${protocolName(input.protocol[i]!)} ${prefix} port ${input.port[i]!}`;
      throw new SwitchyardError('EINVAL_BINDING', `two bindings have the same protocol, prefix and port: ${key}`, { entry: key });
    }
  }
  return buildTable(input, serial, order);
}

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on('message', (job: Job) => {
    try {
      const built = build(job.input, job.serial, job.order);
      port.postMessage({ id: job.id, built }, [built.bytes.buffer as ArrayBuffer]);
    } catch (err) {
      port.postMessage({ id: job.id, error: (err as Error).message, code: (err as SwitchyardError).code, entry: (err as SwitchyardError).entry });
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

  build(input: TrieInput, serial: bigint, order?: Uint32Array): Promise<BuiltTable> {
    if (!TableBuildThread.available()) return Promise.resolve().then(() => build(input, serial, order));
    if (!this.worker) {
      const worker = new Worker(fileURLToPath(import.meta.url));
      worker.unref(); // an idle builder never keeps the agent alive
      worker.on('message', (m: { id: number; built?: BuiltTable; error?: string; code?: string; entry?: string }) => {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (m.built) p?.resolve(m.built);
        else if (m.code === 'EINVAL_BINDING') p?.reject(new SwitchyardError('EINVAL_BINDING', m.error!, m.entry === undefined ? {} : { entry: m.entry }));
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
      // Copies of the columns (the caller's table stays as it is); slice()
      // copies bytes, where from() would walk an iterator element by element.
      const copy: TrieInput = {
        count: input.count,
        family: input.family.slice(0, input.count),
        protocol: input.protocol.slice(0, input.count),
        prefixLen: input.prefixLen.slice(0, input.count),
        port: input.port.slice(0, input.count),
        addr: input.addr.slice(0, input.count * 4),
        destination: (input.destination as Uint16Array).slice(0, input.count),
      };
      const orderCopy = order?.slice();
      const transfer = [copy.family.buffer, copy.protocol.buffer, copy.prefixLen.buffer, copy.port.buffer, copy.addr.buffer, (copy.destination as Uint16Array).buffer, ...(orderCopy ? [orderCopy.buffer] : [])] as ArrayBuffer[];
      worker.postMessage({ id, input: copy, serial, ...(orderCopy ? { order: orderCopy } : {}) } satisfies Job, transfer);
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
