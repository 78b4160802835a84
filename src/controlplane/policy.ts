/**
 * What the control plane does with a new desired state before any agent
 * sees it (a pure function). The worst edge outages came from a change that
 * looked fine and reached every server at once
 * (../shared/reference/incident-2025-07-14-addressing.md), so:
 *   - it is verified exactly (src/verify/verify.ts); any finding but an
 *     unreachable binding (dead configuration, reported) refuses it, as do
 *     the agents' own invariants (plaintext port in an HTTPS-only range,
 *     capacity): it is not published and the current version stays;
 *   - its semantic difference from the current version is computed (who
 *     gains and loses which addresses and ports), for the logs and status;
 *   - if it withdraws more of a service than the budget (the agents' guard:
 *     max(share × bindings, min), or all of them) it is held, not
 *     published, until an operator confirms its version; it then goes out
 *     with the override, so the agents' guard lets it through.
 */
import { policiesText, type DesiredState } from '../desired/state.js';
import { BindingTable } from '../bindings/binding.js';
import { IndexedState, parsedDiffSteps } from '../protocol/state.js';
import { runSync } from '../slice.js';
import { bindingsWithin, changedRegions, withinRegions, type Region } from '../verify/region.js';
import { DEFAULT_LIMITS, checkGuards, type GuardFinding, type GuardLimits } from '../protocol/guards.js';
import { verifyState, witnessPorts, type Finding } from '../verify/verify.js';
import { diffTables, type DiffSummary } from '../verify/diff.js';

export interface PublishPolicy {
  /** Verification findings that do not stop a publish (reported only). */
  warnOnly: ReadonlySet<Finding['code']>;
  limits: GuardLimits;
}

export const DEFAULT_POLICY: PublishPolicy = { warnOnly: new Set(['EUNREACHABLE']), limits: DEFAULT_LIMITS };

/** Over what a judgement was made: the regions a small change touches, or the whole states. */
export type Judged = 'regions' | 'whole';

export type Judgement =
  | { verdict: 'publish'; indexed: IndexedState; summary: DiffSummary[]; ranges: number; warnings: Finding[]; judged: Judged }
  | { verdict: 'hold'; indexed: IndexedState; summary: DiffSummary[]; ranges: number; warnings: Finding[]; judged: Judged; withdrawal: GuardFinding }
  | { verdict: 'refuse'; findings: Finding[]; guards: GuardFinding[] };

/**
 * What judge() knew of an earlier state it accepted: its digest and its
 * warnings. With it, a small change on top of that state is judged over
 * the regions it touches only (verify/region.ts): verification and the
 * diff there, the earlier warnings kept elsewhere — the same judgement
 * as over the whole states, at the cost of the change rather than of the
 * state.
 */
export interface Prior {
  digest: string;
  warnings: Finding[];
}

/** Changes up to this many (added + removed) are judged over their regions. */
export const REGIONAL_MAX_CHANGES = 64;

/** `proposal` indexed already (an edit made on a copy of the state in force) is not indexed again. */
export function judge(live: IndexedState | undefined, proposal: DesiredState | IndexedState, policy: PublishPolicy = DEFAULT_POLICY, prior?: Prior): Judgement {
  const indexed = proposal instanceof IndexedState ? proposal : IndexedState.of(proposal);
  const state = indexed.state;
  const regional = live && prior?.digest === live.digest ? regionsOf(live, indexed) : undefined;
  const findings = regional
    ? [...prior!.warnings.filter((f) => !withinRegions(f.witness.address, regional.regions)), ...verifyState({ ...state, bindings: regional.after }, { portsOf: state.bindings })]
    : verifyState(state);
  const blocking = findings.filter((f) => !policy.warnOnly.has(f.code));
  const warnings = findings.filter((f) => policy.warnOnly.has(f.code));
  const guards = checkGuards(live, indexed, { limits: policy.limits });
  // The agents' plaintext-port invariant is verification's EPLAINTEXT, said once.
  const refusing = guards.filter((g) => g.code !== 'EWITHDRAWAL' && !(g.code === 'EINVARIANT' && findings.some((f) => f.code === 'EPLAINTEXT')));
  if (blocking.length > 0 || refusing.length > 0) return { verdict: 'refuse', findings: blocking, guards: refusing };
  const diff = regional ? diffTables(regional.before, regional.after) : diffTables(live?.bindings ?? new BindingTable(0), indexed.bindings);
  const withdrawal = guards.find((g) => g.code === 'EWITHDRAWAL');
  const base = { indexed, summary: diff.summary, ranges: diff.entries.length, warnings, judged: regional ? ('regions' as const) : ('whole' as const) };
  return withdrawal ? { verdict: 'hold', ...base, withdrawal } : { verdict: 'publish', ...base };
}

/** What judge() learns of a state it accepts (its warnings), without a proposal to judge: null when the policy would refuse it. */
export function priorOf(indexed: IndexedState, policy: PublishPolicy = DEFAULT_POLICY): Prior | null {
  const findings = verifyState(indexed.state);
  return findings.some((f) => !policy.warnOnly.has(f.code)) ? null : { digest: indexed.digest, warnings: findings };
}

/**
 * The regions a change from `live` to `next` touches and the bindings of
 * each side inside them; undefined when the policies changed (they judge
 * every binding), or the change or its regions are large (a quarter of
 * the state): then the whole states are judged.
 */
function regionsOf(live: IndexedState, next: IndexedState): { regions: Region[]; before: BindingTable; after: BindingTable } | undefined {
  if (policiesText(live.state) !== policiesText(next.state)) return undefined;
  // Findings name the smallest port no binding names: one the change names (or frees) is named everywhere.
  const [was, is] = [witnessPorts(live.bindings), witnessPorts(next.bindings)];
  if (was.size !== is.size || [...was].some(([key, port]) => is.get(key) !== port)) return undefined;
  const changed = runSync(parsedDiffSteps(live, next, REGIONAL_MAX_CHANGES));
  if (!changed) return undefined;
  const regions = changedRegions([live.bindings, next.bindings], [changed.added, changed.removed], REGIONAL_MAX_CHANGES);
  if (!regions) return undefined;
  const max = Math.max(REGIONAL_MAX_CHANGES, Math.floor(Math.max(live.bindings.count, next.bindings.count) / 4));
  const before = bindingsWithin(live.bindings, regions, max);
  const after = before && bindingsWithin(next.bindings, regions, max);
  return after ? { regions, before: before!, after } : undefined;
}
