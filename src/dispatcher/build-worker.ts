/**
 * The table builder on a thread of its own (worker_threads): the agent
 * builds a 100,000-binding table (~0.5 s of CPU) while its main thread plans
 * the firewall, on the other CPU. The columns are copied in (a few MB), the
 * built table is transferred back (no copy). `TableBuildThread` is the
 * caller's side; this module is also the worker's script.
 */
import { buildTable, type BuiltTable, type TrieInput } from '../trie/builder.js';
import { findDuplicate, sortBindings } from '../bindings/order.js';
import { formatPrefix, type Family } from '../net/address.js';
import { protocolName } from '../bindings/binding.js';
import { SwitchyardError } from '../errors.js';
import { RequestThread, serveRequests } from '../thread.js';

interface Job {
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

serveRequests<Job, BuiltTable>((job) => {
  const built = build(job.input, job.serial, job.order);
  return { reply: built, transfer: [built.bytes.buffer as ArrayBuffer] };
});

export class TableBuildThread {
  private readonly thread = new RequestThread<Job, BuiltTable>(import.meta.url, 'table build failed');

  build(input: TrieInput, serial: bigint, order?: Uint32Array): Promise<BuiltTable> {
    if (!this.thread.available) return Promise.resolve().then(() => build(input, serial, order));
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
    return this.thread.request({ input: copy, serial, ...(orderCopy ? { order: orderCopy } : {}) }, transfer);
  }

  close(): void {
    this.thread.close();
  }
}
