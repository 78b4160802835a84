/**
 * Guards on a planned change, run before any syscall. A tripped guard is a
 * NACK and the last known good state stays. The withdrawal budget exists
 * because of the 2025-07-14 incident (../shared/reference): a push that
 * silently withdraws most of a service's addresses must be refused unless
 * the push says, for its own version, that it means it.
 */
import { IPPROTO } from '../bindings/binding.js';
import { forEachCommonKey } from '../bindings/order.js';
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
const describe = (s: DesiredState, i: number) => {
  const t = s.bindings;
  return `${t.label(i)} ${t.protocol[i] === IPPROTO.tcp ? 'tcp' : 'udp'} ${t.prefixText(i)} port ${t.port[i]}`;
};

/** Bindings on a plaintext port inside an HTTPS-only range: the range would refuse them. */
function plaintextInsideHttpsOnly(state: DesiredState): GuardFinding | undefined {
  const t = state.bindings;
  const ranges = state.httpsOnly.prefixes;
  if (ranges.length === 0) return undefined;
  const hits: string[] = [];
  let count = 0;
  for (let i = 0; i < t.count; i++) {
    const port = t.port[i]!;
    if (port === 0 || !rangesContain(state.httpsOnly.plaintextPorts, port)) continue;
    const inside = ranges.find((r) => r.family === t.family[i] && r.length <= t.prefixLen[i]! && prefixContains(r.words, 0, r.length, t.addr, i * 4));
    if (!inside) continue;
    count++;
    if (hits.length < SHOWN) hits.push(`${describe(state, i)} (inside HTTPS-only ${formatPrefix(inside)})`);
  }
  if (count === 0) return undefined;
  return { code: 'EINVARIANT', message: `${count} binding(s) on a plaintext port inside an HTTPS-only range (the range refuses that port)`, entries: hits };
}


function capacity(state: DesiredState, limits: GuardLimits): GuardFinding | undefined {
  const t = state.bindings;
  if (t.count > limits.maxBindings) {
    return { code: 'ECAPACITY', message: `${t.count} bindings, more than the ${limits.maxBindings} this agent is configured for`, entries: [] };
  }
  const destinations = new Set<string>();
  for (let i = 0; i < t.count; i++) destinations.add(`${t.labelIndex[i]} ${t.family[i]} ${t.protocol[i]}`);
  if (destinations.size > MAX_DESTINATIONS) {
    return { code: 'ECAPACITY', message: `${destinations.size} destinations (label, family, protocol), more than ${MAX_DESTINATIONS}`, entries: [] };
  }
  return undefined;
}

/**
 * Per service: how many of its bindings the change removes (a key gone, or
 * moved to another label). Trips when that is more than the budget
 * (max(share × before, min)) or when the service is emptied.
 */
function withdrawal(before: DesiredState, after: DesiredState, limits: GuardLimits): GuardFinding | undefined {
  const a = before.bindings;
  const b = after.bindings;
  const had = new Map<string, number>();
  const kept = new Map<string, number>();
  for (let i = 0; i < a.count; i++) had.set(a.label(i), (had.get(a.label(i)) ?? 0) + 1);
  forEachCommonKey(
    a,
    b,
    (i, j) => {
      const label = a.label(i);
      if (label === b.label(j)) kept.set(label, (kept.get(label) ?? 0) + 1);
    },
    a.order(),
    b.order(),
  );
  const over: string[] = [];
  for (const [label, count] of had) {
    const removed = count - (kept.get(label) ?? 0);
    const budget = Math.max(Math.floor(count * limits.withdrawalShare), limits.withdrawalMin);
    const emptied = removed === count && !b.labels.includes(label);
    if (removed > budget || emptied) {
      over.push(`${label}: ${removed} of ${count} bindings removed${emptied ? ' (the service would have none left)' : ` (budget ${budget})`}`);
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
 * Every guard on the change `before` → `after` (before is the last known
 * good state, or undefined on the first state an agent ever gets). The
 * withdrawal budget is skipped when the push carries an override for its
 * version (`override`).
 */
export function checkGuards(before: DesiredState | undefined, after: DesiredState, options: { override?: boolean; limits?: GuardLimits } = {}): GuardFinding[] {
  const limits = options.limits ?? DEFAULT_LIMITS;
  const findings: GuardFinding[] = [];
  for (const f of [plaintextInsideHttpsOnly(after), capacity(after, limits), before && !options.override ? withdrawal(before, after, limits) : undefined]) {
    if (f) findings.push(f);
  }
  return findings;
}
