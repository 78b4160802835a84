/**
 * Small binding changes without planning 100,000 prefixes again. A set
 * entry depends only on its own prefix and the prefixes that enclose it
 * (lpmEntries), so when a binding with prefix P comes or goes, only entries
 * inside P can change: the planner runs again on P's region (the bindings
 * enclosing P and those inside it, a binary search away in the sorted
 * items) and its entries inside P replace the old ones. The rules do not
 * change as long as the skeleton (exact ports, labels), the policies and
 * which port sets are empty stay the same; anything else (and a /0) goes
 * the full way. `model.update` is pure: the model it returns is new.
 */
import { type Family, type Prefix, formatPrefix, maskWords } from '../net/address.js';
import { parseBindingPrefix, type Binding } from '../bindings/binding.js';
import type { DesiredState } from '../desired/state.js';
import {
  type FirewallPlan,
  type IpSet,
  type PlanItem,
  type SetEntry,
  type Skeleton,
  compareAddresses,
  contains,
  familyItems,
  familyPlan,
  familySets,
  keepSet,
  skeletonOf,
} from './plan.js';

export interface BindingChange {
  binding: Binding;
  removed: boolean;
}

/** The entries of one set inside the changed regions, before and after. */
export interface SetDelta {
  set: IpSet;
  before: SetEntry[];
  after: SetEntry[];
}

const FAMILIES = [4, 6] as const;

/** Policies and HTTPS-only ranges as one comparable string (they shape every set). */
function policyKey(state: DesiredState): string {
  return JSON.stringify([[...state.services].sort((a, b) => (a[0] < b[0] ? -1 : 1)), state.httpsOnly.plaintextPorts, state.httpsOnly.prefixes.map(formatPrefix).sort()]);
}

/** First index whose prefix sorts at or after `key`. */
function lowerBound(items: PlanItem[], key: Prefix): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareAddresses(items[mid]!.prefix, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const sameSkeleton = (a: Skeleton, b: Skeleton) => JSON.stringify(a) === JSON.stringify(b);

/** The items enclosing `p` and those inside it, in sorted order. */
function region(items: PlanItem[], p: Prefix): PlanItem[] {
  const out: PlanItem[] = [];
  for (let length = 0; length < p.length; length++) {
    const key: Prefix = { family: p.family, words: maskWords(p.words, length), length };
    for (let at = lowerBound(items, key); at < items.length && compareAddresses(items[at]!.prefix, key) === 0; at++) out.push(items[at]!);
  }
  for (let at = lowerBound(items, p); at < items.length && contains(p, items[at]!.prefix); at++) out.push(items[at]!);
  return out;
}

export class FirewallModel {
  private constructor(
    readonly state: DesiredState,
    readonly plan: FirewallPlan,
    private readonly items: Record<Family, PlanItem[]>,
    private readonly skeletons: Record<Family, Skeleton>,
    private readonly policies: string,
    private readonly presorted: boolean,
  ) {}

  static of(state: DesiredState): FirewallModel {
    const v4 = familyItems(state, 4);
    const v6 = familyItems(state, 6);
    const skeletons = { 4: skeletonOf(v4.items), 6: skeletonOf(v6.items) };
    const plan: FirewallPlan = {
      families: [familyPlan(state, 4, v4.items, v4.presorted, skeletons[4]), familyPlan(state, 6, v6.items, v6.presorted, skeletons[6])],
    };
    return new FirewallModel(state, plan, { 4: v4.items, 6: v6.items }, skeletons, policyKey(state), v4.presorted && v6.presorted);
  }

  /**
   * The model for `next`, which is this model's state with `changes` made to
   * its bindings (the caller's delta), and the entries that changed; or
   * undefined when the change needs the full planner.
   */
  update(next: DesiredState, changes: BindingChange[]): { model: FirewallModel; deltas: SetDelta[] } | undefined {
    if (!this.presorted || policyKey(next) !== this.policies) return undefined;
    const items = { 4: this.items[4], 6: this.items[6] };
    const touched: Record<Family, Prefix[]> = { 4: [], 6: [] };
    for (const { binding, removed } of changes) {
      const prefix = parseBindingPrefix(binding.prefix, 'change');
      if (prefix.length === 0) return undefined;
      const f = prefix.family;
      if (items[f] === this.items[f]) items[f] = [...items[f]];
      const list = items[f];
      const tcp = binding.protocol === 'tcp';
      let at = lowerBound(list, prefix);
      while (at < list.length && compareAddresses(list[at]!.prefix, prefix) === 0 && !(list[at]!.tcp === tcp && list[at]!.port === binding.port)) at++;
      const same = at < list.length && compareAddresses(list[at]!.prefix, prefix) === 0;
      if (removed) {
        if (!same) return undefined; // not ours to remove: let the full planner decide
        list.splice(at, 1);
      } else {
        const item: PlanItem = { prefix, text: formatPrefix(prefix), label: binding.label, port: binding.port, tcp };
        if (same) list[at] = item;
        else list.splice(at, 0, item);
      }
      touched[f].push(prefix);
    }
    const deltas: SetDelta[] = [];
    const families = [...this.plan.families] as FirewallPlan['families'];
    for (const f of FAMILIES) {
      if (touched[f].length === 0) continue;
      const skeleton = skeletonOf(items[f]);
      if (!sameSkeleton(skeleton, this.skeletons[f])) return undefined;
      const inside = (e: SetEntry) => touched[f].some((p) => contains(p, e.prefix));
      // New entries inside the touched prefixes, from each one's region.
      const fresh = new Map<string, Map<string, SetEntry>>();
      for (const p of touched[f]) {
        for (const set of familySets(next, f, region(items[f], p), true, skeleton)) {
          let m = fresh.get(set.name);
          if (!m) fresh.set(set.name, (m = new Map()));
          for (const e of set.entries) if (contains(p, e.prefix)) m.set(`${e.text ?? formatPrefix(e.prefix)}${e.nomatch ? '!' : ''}`, e);
        }
      }
      const old = families[f === 4 ? 0 : 1];
      const all = familySets(next, f, [], true, skeleton); // names and order only
      const sets: IpSet[] = [];
      for (const shape of all) {
        const previous = old.sets.find((s) => s.name === shape.name);
        const after = [...(fresh.get(shape.name)?.values() ?? [])];
        const before = previous ? previous.entries.filter(inside) : [];
        const entries = previous ? previous.entries.filter((e) => !inside(e)).concat(after) : after;
        const set = { ...shape, entries };
        // A port set appearing or emptying changes the rules: full planner.
        if (keepSet(set) !== Boolean(previous)) return undefined;
        if (!keepSet(set)) continue;
        sets.push(set);
        if (before.length > 0 || after.length > 0) deltas.push({ set, before, after });
      }
      families[f === 4 ? 0 : 1] = { ...old, sets };
    }
    return { model: new FirewallModel(next, { families }, items, this.skeletons, this.policies, true), deltas };
  }
}
