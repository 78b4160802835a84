/**
 * Compiling before the first push. V8 runs a function as bytecode until it
 * has been busy for a while, then optimises it; a fresh agent's first big
 * snapshot would otherwise run its parser, index, guards and both planners
 * cold (measured on a 100,000-binding snapshot: the firewall plan 570-730 ms
 * cold against ~300 warm, parse and index 300-450 against ~200). So at
 * start, before it connects, the agent runs the same code once on a made-up
 * state (nothing reaches the kernel: the plans and the table are dropped),
 * which also starts (and warms) the table builder's thread and the push
 * decoder's: a large push is parsed and indexed there, and the table is
 * sorted there, as the first real one will be. A restarted agent that
 * restored a state did most of this already; the cost is 0.4-0.5 s of
 * start (measured, 20,000 made-up bindings).
 */
import { parseDesiredState } from '../desired/state.js';
import { IndexedState } from '../protocol/state.js';
import { FirewallModel } from '../firewall/incremental.js';
import { createChunks, planChanges } from '../firewall/apply.js';
import type { TableBuildThread } from '../dispatcher/build-worker.js';
import type { PushDecoder } from './decoder.js';
import { WARMUP_BINDINGS, warmupDocument } from '../desired/warmup.js';
import { checkGuards } from '../protocol/guards.js';

/** Runs the push path on a made-up state, writing nothing; resolves with the milliseconds it took. */
export async function warmUp(tableBuilder: TableBuildThread, decoder?: PushDecoder, count = WARMUP_BINDINGS): Promise<number> {
  const started = performance.now();
  const text = JSON.stringify(warmupDocument(count));
  const digest = `sha256:${'0'.repeat(64)}`; // made up: the decoder does not check it (the session does)
  const decoding = decoder
    ? (async () => {
        await decoder.decode(Buffer.from(`{"type":"snapshot","epoch":"warm-up","version":1,"digest":"${digest}","state":${text}}`));
        const { bindings } = JSON.parse(text) as { bindings: unknown[] };
        await decoder.decode(Buffer.from(JSON.stringify({ type: 'delta', epoch: 'warm-up', version: 2, from_version: 1, digest, add: bindings, remove: [] })));
      })()
    : Promise.resolve();
  const document = JSON.parse(text) as unknown;
  const indexed = IndexedState.of(parseDesiredState(document, 'warm-up'));
  checkGuards(undefined, indexed);
  const t = indexed.bindings;
  const building = tableBuilder.build(
    { count: t.count, family: t.family.subarray(0, t.count), protocol: t.protocol.subarray(0, t.count), prefixLen: t.prefixLen.subarray(0, t.count), port: t.port.subarray(0, t.count), addr: t.addr.subarray(0, t.count * 4), destination: new Uint16Array(t.count) },
    0n, // no order: the builder sorts, as it does for a push
  );
  const model = FirewallModel.of(indexed.state);
  const nothing = { chains: new Map(), jumps: [] };
  createChunks(planChanges(model.plan, { rules: { 4: nothing, 6: nothing }, sets: new Map() }));
  await Promise.all([building, decoding]);
  return performance.now() - started;
}
