/**
 * `switchyard lookup`: runs the loaded dispatcher program itself on a
 * synthetic sk_lookup context (BPF_PROG_TEST_RUN), not a re-implementation,
 * and reads back the decision from the program's trace slot.
 */
import { randomInt } from 'node:crypto';
import { SwitchyardError } from '../errors.js';
import { type BpfMap, type Fd, u32Key } from '../kernel/bpf.js';
import { possibleCpus } from '../kernel/cpus.js';
import { native } from '../kernel/native.js';
import { AF_INET, AF_INET6, SK_PASS } from '../kernel/linux.js';
import type { Address } from '../net/address.js';
import { IPPROTO, type Protocol } from '../bindings/binding.js';
import { TRACE, TRACE_SOCKET_FOUND } from '../trie/layout.js';

/** Mirrors struct bpf_sk_lookup (linux/bpf.h); checked against BTF in test/unit/layout.test.ts. */
export const SK_LOOKUP_CTX = {
  cookie: 0,
  family: 8,
  protocol: 12,
  remoteIp4: 16,
  remoteIp6: 20,
  remotePort: 36,
  localIp4: 40,
  localIp6: 44,
  localPort: 60,
  size: 72,
} as const;


export interface LookupQuery {
  protocol: Protocol;
  address: Address;
  port: number;
}

export interface RawDecision {
  pass: boolean;
  exact: number;
  wildcard: number;
  chosen: number;
  socketFound: boolean;
  assignError: number;
  cookie: bigint;
}

export function encodeContext(q: LookupQuery, nonce: number): Buffer {
  const ctx = Buffer.alloc(SK_LOOKUP_CTX.size);
  ctx.writeUInt32LE(q.address.family === 4 ? AF_INET : AF_INET6, SK_LOOKUP_CTX.family);
  ctx.writeUInt32LE(IPPROTO[q.protocol], SK_LOOKUP_CTX.protocol);
  const w = q.address.words;
  if (q.address.family === 4) {
    ctx.writeUInt32BE(w[0], SK_LOOKUP_CTX.localIp4);
    ctx.writeUInt32BE(nonce, SK_LOOKUP_CTX.remoteIp4);
  } else {
    for (let i = 0; i < 4; i++) ctx.writeUInt32BE(w[i]!, SK_LOOKUP_CTX.localIp6 + i * 4);
    ctx.writeUInt32BE(nonce, SK_LOOKUP_CTX.remoteIp6 + 12);
  }
  // remote port 0 asks the program to record its decision in `trace`.
  ctx.writeUInt32LE(q.port, SK_LOOKUP_CTX.localPort);
  return ctx;
}

export class ProgramLookup {
  private readonly traceValue = Buffer.alloc(TRACE.size * possibleCpus());
  private readonly zero = u32Key(0);

  constructor(
    private readonly program: Fd,
    private readonly trace: BpfMap,
  ) {}

  run(q: LookupQuery): RawDecision {
    const nonce = randomInt(1, 0xffffffff);
    const result = native().progTestRun(this.program.fd, encodeContext(q, nonce), 1);
    this.trace.lookup(this.zero, this.traceValue);
    for (let cpu = 0; cpu * TRACE.size < this.traceValue.length; cpu++) {
      const at = cpu * TRACE.size;
      // The value is the network-order nonce read as a host-order u32.
      if (this.traceValue.readUInt32BE(at + TRACE.nonce) !== nonce) continue;
      const flags = this.traceValue.readUInt32LE(at + TRACE.flags);
      return {
        pass: result.retval === SK_PASS,
        exact: this.traceValue.readUInt32LE(at + TRACE.exact),
        wildcard: this.traceValue.readUInt32LE(at + TRACE.wildcard),
        chosen: this.traceValue.readUInt32LE(at + TRACE.chosen),
        socketFound: (flags & TRACE_SOCKET_FOUND) !== 0,
        assignError: this.traceValue.readInt32LE(at + TRACE.assignErr),
        cookie: result.ctx.readBigUInt64LE(SK_LOOKUP_CTX.cookie),
      };
    }
    throw new SwitchyardError('EKERNEL', 'the dispatcher program left no trace for this lookup (program older than this CLI?)');
  }
}
