/**
 * The control plane's push path compiled before the first agent connects:
 * a fresh process would otherwise index, diff and encode its first
 * one-binding change as bytecode (measured: the first change of a bench
 * took 27-55 ms publish to ACK, the next ones 7-15). A made-up state is
 * published, changed binding by binding and encoded on a throwaway
 * history; nothing reaches an agent.
 */
import { parseDesiredState } from '../desired/state.js';
import { warmupDocument } from '../desired/warmup.js';
import { encodeFrame, type Snapshot } from '../protocol/messages.js';
import { History } from './history.js';

/** Smaller than the agent's: only the change path needs compiling here. */
const CONTROL_PLANE_WARMUP_BINDINGS = 5000;
const WARMUP_CHANGES = 50;

/** Returns the milliseconds it took and the changes it made. */
export function warmUpHistory(): { ms: number; changes: number } {
  const started = performance.now();
  let changes = 0;
  const history = new History(64, 'warm-up');
  const first = history.publish(parseDesiredState(warmupDocument(CONTROL_PLANE_WARMUP_BINDINGS), 'warm-up'));
  for (let i = 0; i < WARMUP_CHANGES; i++) {
    try {
      history.publishDelta({ add: [{ label: 'warm-b', protocol: 'tcp', prefix: `10.255.${i}.1/32`, port: 0 }], remove: [] });
      changes++;
    } catch {
      // that key exists in the made-up state: one change fewer
    }
  }
  const delta = history.frameFor({ have: { epoch: 'warm-up', version: first.version, digest: first.digest }, refused: null });
  if (delta) encodeFrame(delta);
  const snapshot = history.frameFor({ have: null, refused: null });
  if (snapshot?.type === 'snapshot') history.snapshotText(snapshot as Snapshot);
  return { ms: performance.now() - started, changes };
}
