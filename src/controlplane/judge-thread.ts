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
import { judge, priorOf, type Judgement, type Prior, type PublishPolicy } from './policy.js';

/** Bindings (the proposal's and the state in force's together) from which a judgement goes to the thread. */
export const JUDGE_OFF_THREAD_BINDINGS = 5_000;

type StateParts = { columns: BindingColumnsTransfer; policies: Omit<DesiredState, 'bindings'> };

/** A proposal to judge against the state in force, or (learn) a state to verify for its Prior only. */
type Job = { live: IndexedParts | null; prior: Prior | undefined; state: StateParts; policy: PublishPolicy | undefined } | { learn: StateParts; policy: PublishPolicy | undefined };

type Reply = Exclude<Judgement, { indexed: IndexedState }> | (Omit<Extract<Judgement, { indexed: IndexedState }>, 'indexed'> & { parts: IndexedParts }) | { prior: Prior | null };

const thread = new RequestThread<Job, Reply>(import.meta.url, 'judging a proposal');

/** A state as it crosses to the thread: copied by postMessage, not transferred (it stays the caller's). */
function partsOf(state: DesiredState): StateParts {
  const { bindings, ...policies } = state;
  return { columns: bindings.toColumns(), policies };
}

/** What was learnt of the last states accepted (policy.ts Prior), by digest: the next small change on top is judged over its regions. */
const priors = new Map<string, Prior>();
const PRIORS_KEPT = 4;

function remember(prior: Prior): void {
  priors.delete(prior.digest);
  priors.set(prior.digest, prior);
  while (priors.size > PRIORS_KEPT) priors.delete(priors.keys().next().value!);
}

/** `learn: false` (a dry run): the judgement leaves nothing behind — the states that take effect keep their places. */
export async function judgeOffThread(live: IndexedState | undefined, proposal: DesiredState | IndexedState, policy: PublishPolicy | undefined, options: { learn?: boolean } = {}): Promise<Judgement> {
  const prior = live ? priors.get(live.digest) : undefined;
  let j: Judgement;
  if (proposal.bindings.count + (live?.bindings.count ?? 0) < JUDGE_OFF_THREAD_BINDINGS || !thread.available) j = judge(live, proposal, policy, prior);
  else {
    const state = proposal instanceof IndexedState ? proposal.state : proposal;
    const reply = (await thread.request({ live: live ? live.toParts() : null, prior, state: partsOf(state), policy }, [])) as Exclude<Reply, { prior: unknown }>;
    if (reply.verdict === 'refuse') return reply;
    const { parts, ...rest } = reply;
    j = { ...rest, indexed: IndexedState.fromParts(parts) } as Judgement;
  }
  if (j.verdict !== 'refuse' && options.learn !== false) remember({ digest: j.indexed.digest, warnings: j.warnings });
  return j;
}

/** Whether a state (by digest) was judged and accepted here: a small change on top is judged over its regions. */
export const priorKnown = (digest: string): boolean => priors.has(digest);

/** The follower's learning: one verification under way at most, then the latest state followed meanwhile. */
let learning: { next: { state: IndexedState; policy: PublishPolicy | undefined } | undefined } | undefined;

/**
 * A follower's state in force verified in the background (on the thread
 * when large), so that a replica that comes to lead knows its Prior and
 * judges the next small change over its regions, not the whole state.
 * States followed while one is being verified: only the latest is.
 */
export function learnFollowed(state: IndexedState, policy: PublishPolicy | undefined): void {
  if (priors.has(state.digest)) return;
  if (learning) {
    learning.next = { state, policy };
    return;
  }
  learning = { next: undefined };
  const learn = async (s: IndexedState, p: PublishPolicy | undefined): Promise<void> => {
    const prior = s.bindings.count < JUDGE_OFF_THREAD_BINDINGS || !thread.available ? priorOf(s, p) : ((await thread.request({ learn: partsOf(s.state), policy: p }, [])) as { prior: Prior | null }).prior;
    if (prior) remember(prior);
  };
  void (async () => {
    let job = { state, policy };
    for (;;) {
      await learn(job.state, job.policy).catch(() => undefined);
      const next = learning!.next;
      if (!next) break;
      learning!.next = undefined;
      job = next;
    }
    learning = undefined;
  })();
}

serveRequests<Job, Reply>((job) => {
  if ('learn' in job) {
    const indexed = IndexedState.of({ bindings: BindingTable.fromColumns(job.learn.columns), ...job.learn.policies });
    return { reply: { prior: priorOf(indexed, job.policy) }, transfer: [] };
  }
  const live = job.live ? IndexedState.fromParts(job.live) : undefined;
  const state: DesiredState = { bindings: BindingTable.fromColumns(job.state.columns), ...job.state.policies };
  const j = judge(live, state, job.policy, job.prior);
  if (j.verdict === 'refuse') return { reply: j, transfer: [] };
  const { indexed, ...rest } = j;
  const parts = indexed.toParts();
  return { reply: { ...rest, parts }, transfer: IndexedState.transferList(parts) };
});
