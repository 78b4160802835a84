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
import type { DesiredState } from '../desired/state.js';
import { BindingTable } from '../bindings/binding.js';
import { IndexedState } from '../protocol/state.js';
import { DEFAULT_LIMITS, checkGuards, type GuardFinding, type GuardLimits } from '../protocol/guards.js';
import { verifyState, type Finding } from '../verify/verify.js';
import { diffTables, type DiffSummary } from '../verify/diff.js';

export interface PublishPolicy {
  /** Verification findings that do not stop a publish (reported only). */
  warnOnly: ReadonlySet<Finding['code']>;
  limits: GuardLimits;
}

export const DEFAULT_POLICY: PublishPolicy = { warnOnly: new Set(['EUNREACHABLE']), limits: DEFAULT_LIMITS };

export type Judgement =
  | { verdict: 'publish'; indexed: IndexedState; summary: DiffSummary[]; ranges: number; warnings: Finding[] }
  | { verdict: 'hold'; indexed: IndexedState; summary: DiffSummary[]; ranges: number; warnings: Finding[]; withdrawal: GuardFinding }
  | { verdict: 'refuse'; findings: Finding[]; guards: GuardFinding[] };

export function judge(live: IndexedState | undefined, state: DesiredState, policy: PublishPolicy = DEFAULT_POLICY): Judgement {
  const findings = verifyState(state);
  const blocking = findings.filter((f) => !policy.warnOnly.has(f.code));
  const warnings = findings.filter((f) => policy.warnOnly.has(f.code));
  const indexed = IndexedState.of(state);
  const guards = checkGuards(live, indexed, { limits: policy.limits });
  // The agents' plaintext-port invariant is verification's EPLAINTEXT, said once.
  const refusing = guards.filter((g) => g.code !== 'EWITHDRAWAL' && !(g.code === 'EINVARIANT' && findings.some((f) => f.code === 'EPLAINTEXT')));
  if (blocking.length > 0 || refusing.length > 0) return { verdict: 'refuse', findings: blocking, guards: refusing };
  const diff = diffTables(live?.bindings ?? new BindingTable(0), indexed.bindings);
  const withdrawal = guards.find((g) => g.code === 'EWITHDRAWAL');
  const base = { indexed, summary: diff.summary, ranges: diff.entries.length, warnings };
  return withdrawal ? { verdict: 'hold', ...base, withdrawal } : { verdict: 'publish', ...base };
}
