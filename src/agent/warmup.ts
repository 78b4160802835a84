/**
 * Compiling before the first push. V8 runs a function as bytecode until it
 * has been busy for a while, then optimises it; a fresh agent's first big
 * snapshot would otherwise run its parser, index, guards and both planners
 * cold (measured on a 100,000-binding snapshot: the firewall plan 570-730 ms
 * cold against ~300 warm, parse and index 300-450 against ~200). So at
 * start, before it connects, the agent runs the same code once on a made-up
 * state (nothing reaches the kernel: the plans and the table are dropped),
 * which also starts the table builder's thread. A restarted agent that
 * restored a state did most of this already; the cost is ~0.2 s of start.
 */
import { parseDesiredState } from '../desired/state.js';
import { IndexedState } from '../protocol/state.js';
import { FirewallModel } from '../firewall/incremental.js';
import { createChunks, planChanges } from '../firewall/apply.js';
import type { TableBuildThread } from '../dispatcher/build-worker.js';
import { formatAddress } from '../net/address.js';
import { checkGuards } from './guards.js';

/** Enough iterations of every hot loop to get it optimised; small enough to cost a fraction of a second. */
export const WARMUP_BINDINGS = 20_000;

const LABELS = ['warm-a', 'warm-b', 'warm-c'];

/** A made-up state shaped like a real one: both families, nested prefixes, exact and any ports, three services, an HTTPS-only range. */
export function warmupDocument(count = WARMUP_BINDINGS) {
  let seed = 0x5eed;
  const next = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 4294967296;
  };
  const seen = new Set<string>();
  const bindings: Array<{ label: string; protocol: string; prefix: string; port: number }> = [];
  while (bindings.length < count) {
    const nested = next() < 0.1;
    let prefix: string;
    if (next() < 0.7) {
      const length = nested ? 28 + Math.floor(next() * 5) : 16 + Math.floor(next() * 13);
      const word = (Math.floor(next() * 4294967296) & (0xffffffff << (32 - length))) >>> 0;
      prefix = `${formatAddress(4, [word, 0, 0, 0])}/${length}`;
    } else {
      const length = 32 + Math.floor(next() * 33);
      const keep = (bits: number) => (bits <= 0 ? 0 : bits >= 32 ? Math.floor(next() * 4294967296) >>> 0 : (Math.floor(next() * 4294967296) & (0xffffffff << (32 - bits))) >>> 0);
      prefix = `${formatAddress(6, [0x20010db8, keep(length - 32), keep(length - 64), 0])}/${length}`;
    }
    const protocol = next() < 0.8 ? 'tcp' : 'udp';
    const port = next() < 0.5 ? 0 : [80, 443, 53][Math.floor(next() * 3)]!;
    const key = `${protocol} ${prefix} ${port}`;
    if (seen.has(key)) continue;
    seen.add(key);
    bindings.push({ label: LABELS[Math.floor(next() * LABELS.length)]!, protocol, prefix, port });
  }
  return {
    bindings,
    services: { 'warm-a': { tcp: [80, 443], udp: [443] }, 'warm-b': { tcp: ['1-1023'] }, 'warm-c': { tcp: [53], udp: [53] } },
    https_only: { prefixes: ['198.18.0.0/15'] },
  };
}

/** Runs the push path on a made-up state, writing nothing; resolves with the milliseconds it took. */
export async function warmUp(tableBuilder: TableBuildThread, count = WARMUP_BINDINGS): Promise<number> {
  const started = performance.now();
  const document = JSON.parse(JSON.stringify(warmupDocument(count))) as unknown;
  const indexed = IndexedState.of(parseDesiredState(document, 'warm-up'));
  checkGuards(undefined, indexed);
  const t = indexed.bindings;
  const building = tableBuilder.build(
    { count: t.count, family: t.family.subarray(0, t.count), protocol: t.protocol.subarray(0, t.count), prefixLen: t.prefixLen.subarray(0, t.count), port: t.port.subarray(0, t.count), addr: t.addr.subarray(0, t.count * 4), destination: new Uint16Array(t.count) },
    0n,
    t.order(),
  );
  const model = FirewallModel.of(indexed.state);
  const nothing = { chains: new Map(), jumps: [] };
  createChunks(planChanges(model.plan, { rules: { 4: nothing, 6: nothing }, sets: new Map() }));
  await building;
  return performance.now() - started;
}
