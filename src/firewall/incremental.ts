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
import { type Family, type Prefix, maskWords } from '../net/address.js';
import { parseBindingPrefix, type Binding } from '../bindings/binding.js';
import { policiesText, type DesiredState } from '../desired/state.js';
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
  ipsetText,
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


/** First index (of items or entries sorted by prefix) whose prefix sorts at or after `key`. */
function lowerBound(items: ReadonlyArray<{ prefix: Prefix }>, key: Prefix): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareAddresses(items[mid]!.prefix, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** How many bindings hold each skeleton key ("tcp port 443", "udp label cdn"): a key that comes or goes reshapes the rules. */
type SkeletonCounts = Map<string, number>;
const skeletonKey = (item: Pick<PlanItem, 'tcp' | 'port' | 'label'>) => `${item.tcp ? 'tcp' : 'udp'} ${item.port === 0 ? `label ${item.label}` : `port ${item.port}`}`;

function countSkeleton(items: PlanItem[]): SkeletonCounts {
  const counts: SkeletonCounts = new Map();
  for (const item of items) {
    const k = skeletonKey(item);
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  return counts;
}

/** The range [lo, hi) of a list sorted by prefix whose prefixes lie inside p (they follow p's position). */
function rangeInside(list: ReadonlyArray<{ prefix: Prefix }>, p: Prefix): [number, number] {
  const lo = lowerBound(list, p);
  let end = lo;
  while (end < list.length && contains(p, list[end]!.prefix)) end++;
  return [lo, end];
}

/** The entries inside any of `prefixes`, each once. */
function entriesInside(entries: SetEntry[], prefixes: Prefix[]): SetEntry[] {
  const picked = new Set<SetEntry>();
  for (const p of prefixes) {
    const [lo, hi] = rangeInside(entries, p);
    for (let i = lo; i < hi; i++) picked.add(entries[i]!);
  }
  return [...picked];
}

/** The items enclosing `p` and those inside it, in sorted order. */
function region(items: PlanItem[], p: Prefix): PlanItem[] {
  const out: PlanItem[] = [];
  for (let length = 0; length < p.length; length++) {
    const key: Prefix = { family: p.family, words: maskWords(p.words, length), length };
    for (let at = lowerBound(items, key); at < items.length && compareAddresses(items[at]!.prefix, key) === 0; at++) out.push(items[at]!);
  }
  const [lo, hi] = rangeInside(items, p);
  return out.concat(items.slice(lo, hi));
}

export class FirewallModel {
  private constructor(
    readonly state: DesiredState,
    readonly plan: FirewallPlan,
    private readonly items: Record<Family, PlanItem[]>,
    private readonly skeletons: Record<Family, Skeleton>,
    private readonly counts: Record<Family, SkeletonCounts>,
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
    const counts = { 4: countSkeleton(v4.items), 6: countSkeleton(v6.items) };
    return new FirewallModel(state, plan, { 4: v4.items, 6: v6.items }, skeletons, counts, policiesText(state), v4.presorted && v6.presorted);
  }

  /**
   * The model for `next`, which is this model's state with `changes` made to
   * its bindings (the caller's delta), and the entries that changed; or
   * undefined when the change needs the full planner.
   */
  update(next: DesiredState, changes: BindingChange[]): { model: FirewallModel; deltas: SetDelta[] } | undefined {
    if (!this.presorted || policiesText(next) !== this.policies) return undefined;
    const items = { 4: this.items[4], 6: this.items[6] };
    const counts = { 4: new Map(this.counts[4]), 6: new Map(this.counts[6]) };
    const count = (f: Family, item: PlanItem, by: number) => {
      const k = skeletonKey(item);
      const n = (counts[f].get(k) ?? 0) + by;
      if (n === 0) counts[f].delete(k);
      else counts[f].set(k, n);
      // A key appearing or vanishing changes the rules: the full planner does that.
      return (n === 0 && by < 0) || (n === 1 && by > 0);
    };
    const touched: Record<Family, Prefix[]> = { 4: [], 6: [] };
    for (const { binding, removed } of changes) {
      const parsed = parseBindingPrefix(binding.prefix, 'change');
      // The same word representation as familyItems (typed), for the sweeps.
      const prefix: Prefix = { ...parsed, words: Uint32Array.from(parsed.words) as unknown as Prefix['words'] };
      if (prefix.length === 0) return undefined;
      const f = prefix.family;
      if (items[f] === this.items[f]) items[f] = items[f].slice();
      const list = items[f];
      const tcp = binding.protocol === 'tcp';
      let at = lowerBound(list, prefix);
      while (at < list.length && compareAddresses(list[at]!.prefix, prefix) === 0 && !(list[at]!.tcp === tcp && list[at]!.port === binding.port)) at++;
      const same = at < list.length && compareAddresses(list[at]!.prefix, prefix) === 0;
      if (removed) {
        if (!same) return undefined; // not ours to remove: let the full planner decide
        if (count(f, list[at]!, -1)) return undefined;
        list.splice(at, 1);
      } else {
        const item: PlanItem = { prefix, text: ipsetText(prefix), label: binding.label, port: binding.port, tcp };
        if (same && count(f, list[at]!, -1)) return undefined;
        if (count(f, item, 1)) return undefined;
        if (same) list[at] = item;
        else list.splice(at, 0, item);
      }
      touched[f].push(prefix);
    }
    const deltas: SetDelta[] = [];
    const families = [...this.plan.families] as FirewallPlan['families'];
    for (const f of FAMILIES) {
      if (touched[f].length === 0) continue;
      const skeleton = this.skeletons[f];
      const old = families[f === 4 ? 0 : 1];
      // Each touched prefix's region, planned again; its entries inside the
      // prefix replace the old ones (sets stay sorted: lpmEntries sweeps in order).
      const sets = old.sets.map((set) => ({ ...set, entries: set.entries }));
      for (const p of touched[f]) {
        for (const fresh of familySets(next, f, region(items[f], p), true, skeleton)) {
          const set = sets.find((s) => s.name === fresh.name);
          const [lo, hi] = rangeInside(fresh.entries, p);
          if (!set) {
            // A port set that was empty: it appears only with the full planner.
            if (hi > lo) return undefined;
            continue;
          }
          const [from, to] = rangeInside(set.entries, p);
          if (from === to && lo === hi) continue;
          // A new array (the model is immutable); not splice(...inserted): a
          // region of 125,000+ entries as arguments overflows the stack.
          set.entries = set.entries.slice(0, from).concat(fresh.entries.slice(lo, hi), set.entries.slice(to));
        }
      }
      for (let i = 0; i < sets.length; i++) {
        const set = sets[i]!;
        if (set.entries === old.sets[i]!.entries) continue;
        // A port set emptying drops its rule: the full planner again.
        if (!keepSet(set)) return undefined;
        deltas.push({ set, before: entriesInside(old.sets[i]!.entries, touched[f]), after: entriesInside(set.entries, touched[f]) });
      }
      families[f === 4 ? 0 : 1] = { ...old, sets };
    }
    return { model: new FirewallModel(next, { families }, items, this.skeletons, counts, this.policies, true), deltas };
  }
}
