/**
 * A proposal judged (policy.ts: verification, guards, the semantic diff)
 * on a thread of its own when it is large: at 100,000 bindings the diff
 * against the state in force alone takes seconds, and the control plane's
 * event loop serves every agent's heartbeats, pings and pushes meanwhile.
 * Both states are copied to the thread (the caller keeps its own); the
 * new state's index comes back transferred (IndexedState.toParts). Small
 * ones are judged in place: a thread's round trip would cost more. What
 * was learnt of the states accepted lets a small change on top of one be
 * judged over the regions it touches (policy.ts, Prior).
 */
import { RequestThread, serveRequests } from '../thread.js';
import type { BindingColumnsTransfer } from '../bindings/binding.js';
import { BindingTable } from '../bindings/binding.js';
import type { DesiredState } from '../desired/state.js';
import { IndexedState, type IndexedParts } from '../protocol/state.js';
import { judge, type Judgement, type Prior, type PublishPolicy } from './policy.js';

/** Bindings (the proposal's and the state in force's together) from which a judgement goes to the thread. */
export const JUDGE_OFF_THREAD_BINDINGS = 5_000;

interface Job {
  live: IndexedParts | null;
  prior: Prior | undefined;
  state: { columns: BindingColumnsTransfer; policies: Omit<DesiredState, 'bindings'> };
  policy: PublishPolicy | undefined;
}

type Reply = Exclude<Judgement, { indexed: IndexedState }> | (Omit<Extract<Judgement, { indexed: IndexedState }>, 'indexed'> & { parts: IndexedParts });

const thread = new RequestThread<Job, Reply>(import.meta.url, 'judging a proposal');

/** What was learnt of the last states accepted (policy.ts Prior), by digest: the next small change on top is judged over its regions. */
const priors = new Map<string, Prior>();
const PRIORS_KEPT = 4;

function learnt(j: Judgement): Judgement {
  if (j.verdict === 'refuse') return j;
  priors.delete(j.indexed.digest);
  priors.set(j.indexed.digest, { digest: j.indexed.digest, warnings: j.warnings });
  while (priors.size > PRIORS_KEPT) priors.delete(priors.keys().next().value!);
  return j;
}

export async function judgeOffThread(live: IndexedState | undefined, state: DesiredState, policy: PublishPolicy | undefined): Promise<Judgement> {
  const prior = live ? priors.get(live.digest) : undefined;
  if (state.bindings.count + (live?.bindings.count ?? 0) < JUDGE_OFF_THREAD_BINDINGS || !thread.available) return learnt(judge(live, state, policy, prior));
  const { bindings, ...policies } = state;
  // Copied by postMessage, not transferred: both stay the caller's.
  const reply = await thread.request({ live: live ? live.toParts() : null, prior, state: { columns: bindings.toColumns(), policies }, policy }, []);
  if (reply.verdict === 'refuse') return reply;
  const { parts, ...rest } = reply;
  return learnt({ ...rest, indexed: IndexedState.fromParts(parts) } as Judgement);
}

/** Whether a state (by digest) was judged and accepted here: a small change on top is judged over its regions. */
export const priorKnown = (digest: string): boolean => priors.has(digest);

/**
 * A follower's new state in force, judged in the background (on the
 * thread when large), so that a replica that comes to lead knows its Prior
 * and judges the next small change over its regions, not the whole state.
 * From the state it followed before when that one is known, else from
 * itself (verification whole, an empty diff).
 */
export function learnFollowed(from: IndexedState | undefined, to: IndexedState, policy: PublishPolicy | undefined): void {
  if (priors.has(to.digest)) return;
  const base = from && priors.has(from.digest) ? from : to;
  judgeOffThread(base, to.state, policy).catch(() => undefined);
}

serveRequests<Job, Reply>((job) => {
  const live = job.live ? IndexedState.fromParts(job.live) : undefined;
  const state: DesiredState = { bindings: BindingTable.fromColumns(job.state.columns), ...job.state.policies };
  const j = judge(live, state, job.policy, job.prior);
  if (j.verdict === 'refuse') return { reply: j, transfer: [] };
  const { indexed, ...rest } = j;
  const parts = indexed.toParts();
  return { reply: { ...rest, parts }, transfer: IndexedState.transferList(parts) };
});
