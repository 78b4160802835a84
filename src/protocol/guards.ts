/**
 * Guards on a planned change, run before any syscall. A tripped guard is a
 * NACK and the last known good state stays. The withdrawal budget exists
 * because of the 2025-07-14 incident (../shared/reference): a push that
 * silently withdraws most of a service's addresses must be refused unless
 * the push says, for its own version, that it means it.
 */
import { IPPROTO, parseBindingPrefix } from '../bindings/binding.js';
import { IndexedState, type AppliedDelta } from './state.js';
import { STRIDE, runSliced, runSync, type Steps } from '../slice.js';
import { formatPrefix, prefixContains } from '../net/address.js';
import { MAX_DESTINATIONS } from '../trie/layout.js';
import { type DesiredState, rangesContain } from '../desired/state.js';

export type GuardCode = 'EINVARIANT' | 'ECAPACITY' | 'EWITHDRAWAL';

export interface GuardFinding {
  code: GuardCode;
  message: string;
  /** The offending entries (a few), as operators write them. */
  entries: string[];
}

export interface GuardLimits {
  maxBindings: number;
  /** Share of a service's bindings a push may remove without an override… */
  withdrawalShare: number;
  /** …or this many, whichever is larger. */
  withdrawalMin: number;
}

export const DEFAULT_LIMITS: GuardLimits = { maxBindings: 4_000_000, withdrawalShare: 0.05, withdrawalMin: 50 };

const SHOWN = 5;

/** Bindings (rows of `state`) on a plaintext port inside an HTTPS-only range: the range would refuse them. */
function* plaintextInsideHttpsOnly(state: DesiredState, rows: ArrayLike<number> | undefined): Steps<GuardFinding | undefined> {
  const t = state.bindings;
  const ranges = state.httpsOnly.prefixes;
  if (ranges.length === 0) return undefined;
  const hits: string[] = [];
  let count = 0;
  const n = rows ? rows.length : t.count;
  for (let k = 0; k < n; k++) {
    if (k % STRIDE === STRIDE - 1) yield;
    const i = rows ? rows[k]! : k;
    const port = t.port[i]!;
    if (port === 0 || !rangesContain(state.httpsOnly.plaintextPorts, port)) continue;
    const inside = ranges.find((r) => r.family === t.family[i] && r.length <= t.prefixLen[i]! && prefixContains(r.words, 0, r.length, t.addr, i * 4));
    if (!inside) continue;
    count++;
    if (hits.length < SHOWN) hits.push(`${state.bindings.describe(i)} (inside HTTPS-only ${formatPrefix(inside)})`);
  }
  if (count === 0) return undefined;
  return { code: 'EINVARIANT', message: `${count} binding(s) on a plaintext port inside an HTTPS-only range (the range refuses that port)`, entries: hits };
}

function capacity(state: IndexedState, limits: GuardLimits): GuardFinding | undefined {
  const count = state.bindings.count;
  if (count > limits.maxBindings) {
    return { code: 'ECAPACITY', message: `${count} bindings, more than the ${limits.maxBindings} this agent is configured for`, entries: [] };
  }
  if (state.destinationCount > MAX_DESTINATIONS) {
    return { code: 'ECAPACITY', message: `${state.destinationCount} destinations (label, family, protocol), more than ${MAX_DESTINATIONS}`, entries: [] };
  }
  return undefined;
}

/**
 * Per service: how many of its bindings the change removes (a key gone, or
 * moved to another label), counted from the delta when it is one (so a
 * one-binding change costs one lookup) or over the whole states. Trips when
 * that is more than the budget (max(share × before, min)) or when the
 * service is emptied.
 */
function* withdrawal(before: IndexedState | AppliedDelta, after: IndexedState, limits: GuardLimits): Steps<GuardFinding | undefined> {
  const removed = new Map<string, number>();
  let countBefore: (label: string) => number;
  if (before instanceof IndexedState) {
    const a = before.bindings;
    const b = after.bindings;
    for (let i = 0; i < a.count; i++) {
      const j = after.findRow(a, i);
      if (j < 0 || a.label(i) !== b.label(j)) removed.set(a.label(i), (removed.get(a.label(i)) ?? 0) + 1);
      if (i % STRIDE === STRIDE - 1) yield;
    }
    countBefore = (label) => before.labelCount(label);
  } else {
    // A removal whose key the delta binds again to the same label withdraws
    // nothing: the state after says so, one lookup each.
    const t = after.bindings;
    let k = 0;
    for (const { binding: b, removed: gone } of before.changes) {
      if (++k % STRIDE === 0) yield;
      if (!gone) continue;
      const at = after.find(IPPROTO[b.protocol], parseBindingPrefix(b.prefix, 'change', false), b.port);
      if (at < 0 || t.label(at) !== b.label) removed.set(b.label, (removed.get(b.label) ?? 0) + 1);
    }
    countBefore = (label) => before.labelCountBefore.get(label) ?? 0;
  }
  const over: string[] = [];
  for (const [label, gone] of removed) {
    const count = countBefore(label);
    const budget = Math.max(Math.floor(count * limits.withdrawalShare), limits.withdrawalMin);
    const emptied = after.labelCount(label) === 0;
    if (gone > budget || emptied) {
      over.push(`${label}: ${gone} of ${count} bindings removed${emptied ? ' (the service would have none left)' : ` (budget ${budget})`}`);
    }
  }
  if (over.length === 0) return undefined;
  return {
    code: 'EWITHDRAWAL',
    message: `the change withdraws more of ${over.length === 1 ? 'a service' : `${over.length} services`} than the budget allows (${Math.round(limits.withdrawalShare * 100)} % or ${limits.withdrawalMin} bindings, or all of them); push it again with an override for its version if that is meant`,
    entries: over.slice(0, SHOWN),
  };
}

/**
 * Every guard on the change to `after`. `before` is the last known good
 * state (a snapshot replaces it), or the delta just made in place on it
 * (then each guard looks at the delta alone: services and HTTPS-only ranges
 * do not change in a delta), or undefined on the first state an agent ever
 * gets. The withdrawal budget is skipped when the push carries an override
 * for its version (`override`).
 */
export function checkGuards(before: IndexedState | AppliedDelta | undefined, after: IndexedState, options: GuardOptions = {}): GuardFinding[] {
  return runSync(guardSteps(before, after, options));
}

/** checkGuards in slices (src/slice.ts): a million bindings' guards give the event loop turns. */
export function checkGuardsSliced(before: IndexedState | AppliedDelta | undefined, after: IndexedState, options: GuardOptions = {}): Promise<GuardFinding[]> {
  return runSliced(guardSteps(before, after, options));
}

interface GuardOptions {
  override?: boolean;
  limits?: GuardLimits;
}

function* guardSteps(before: IndexedState | AppliedDelta | undefined, after: IndexedState, options: GuardOptions): Steps<GuardFinding[]> {
  const limits = options.limits ?? DEFAULT_LIMITS;
  // A delta: only the rows it added; a whole state: every row.
  const rows = before && !(before instanceof IndexedState) ? before.addedRows : undefined;
  const found = [yield* plaintextInsideHttpsOnly(after.state, rows), capacity(after, limits), before && !options.override ? yield* withdrawal(before, after, limits) : undefined];
  return found.filter((f): f is GuardFinding => f !== undefined);
}
