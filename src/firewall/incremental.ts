/**
 * Binding changes without planning every prefix again. A set entry depends
 * only on its own prefix and the prefixes that enclose it (lpmEntries), so
 * when a binding with prefix P comes or goes, only entries inside P can
 * change. An update therefore
 *   1. merges the changes, sorted, into the sorted bindings (one pass);
 *   2. keeps the outermost changed prefixes (the others lie inside them);
 *   3. plans once, over their regions only: the bindings inside them and
 *      those enclosing them;
 *   4. splices each set's entries inside those prefixes (one pass per set
 *      that changed) and hands the before and after of those entries to
 *      the writer.
 * Its cost is that of planning the changed regions, O(changes × log) to
 * find them and the sets' runs inside them, and copying the arrays that
 * changed; a change of more than a tenth of the state goes the full way
 * (FULL_SHARE), so a delta costs at most about a full plan of its result.
 * (It used to splice every set once per changed prefix: 20,000 changes to
 * 20,000 bindings took 10-16 s against 0.1-0.3 s for a full plan.) The
 * rules do not change as long as the skeleton (exact ports, labels), the
 * policies and which port sets are empty stay the same; anything else
 * (and a /0) goes the full way. The model is immutable: an update returns
 * a new one. Everything runs in slices (slice.ts).
 */
import { type Family, type Prefix, maskWords } from '../net/address.js';
import { parseBindingPrefix, type Binding } from '../bindings/binding.js';
import { policiesText, type DesiredState } from '../desired/state.js';
import {
  type FamilyPlan,
  type FirewallPlan,
  type IpSet,
  type PlanItem,
  type SetEntry,
  type Skeleton,
  compareAddresses,
  contains,
  familyItemsSteps,
  familyPlanSteps,
  familySetsSteps,
  ipsetText,
  keepSet,
  skeletonSteps,
} from './plan.js';
import { STRIDE, type Steps, runSync, sortSteps } from '../slice.js';

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

export interface ModelUpdate {
  model: FirewallModel;
  deltas: SetDelta[];
}

const FAMILIES = [4, 6] as const;

/**
 * Past this share of the bindings, a change goes the full way: planning
 * its regions and splicing every set then costs about a full plan or more
 * (measured, against a full plan of the result: 10,000 changes to 100,000
 * bindings 0.7 times, 20,000 1.25 times; 220,000 to 1,000,000 1.8 times;
 * 20,000 to 20,000 3.5 times), and the full way also reads the kernel back.
 * The agent takes a snapshot as a delta up to the same share. Below
 * FULL_MIN changes the update is cheap whatever the state.
 */
const FULL_SHARE = 0.1;
const FULL_MIN = 1024;

/** How many bindings hold each skeleton key ("tcp port 443", "udp label cdn"): a key that comes or goes reshapes the rules. */
type SkeletonCounts = Map<string, number>;
const skeletonKey = (item: Pick<PlanItem, 'tcp' | 'port' | 'label'>) => `${item.tcp ? 'tcp' : 'udp'} ${item.port === 0 ? `label ${item.label}` : `port ${item.port}`}`;

/** A change as the merge takes it; `seq` keeps the caller's order among changes to one key. */
interface Change extends PlanItem {
  removed: boolean;
  seq: number;
  /** Orders by the first address bits (and an IPv4 length) before the full comparison, as familyItems does. */
  key: number;
}

const sortKey = (p: Prefix) => (p.family === 4 ? p.words[0] * 64 + p.length : p.words[0] * 2097152 + (p.words[1] >>> 11));

const byChange = (a: Change, b: Change) => a.key - b.key || byPrefix(a, b) || Number(a.tcp) - Number(b.tcp) || a.port - b.port || a.seq - b.seq;

const byPrefix = (a: { prefix: Prefix }, b: { prefix: Prefix }) => compareAddresses(a.prefix, b.prefix);

/**
 * First index at or after `from` (of a list sorted by prefix) whose prefix
 * sorts at or after `key`: exponential then binary search, so walking many
 * sorted keys through one list costs O(keys × log(gap)), never more than a
 * pass over the list.
 */
function gallop(list: ReadonlyArray<{ prefix: Prefix }>, from: number, key: Prefix): number {
  const n = list.length;
  let lo = from;
  let hi = from;
  let step = 1;
  while (hi < n && compareAddresses(list[hi]!.prefix, key) < 0) {
    lo = hi + 1;
    hi += step;
    step *= 2;
  }
  if (hi > n) hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareAddresses(list[mid]!.prefix, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** End of the run from `at` whose prefixes lie inside p (they follow p's position): a /8 can hold a million. */
function* insideEnd(list: ReadonlyArray<{ prefix: Prefix }>, at: number, p: Prefix): Steps<number> {
  let end = at;
  while (end < list.length && contains(p, list[end]!.prefix)) {
    if ((++end & (STRIDE - 1)) === 0) yield;
  }
  return end;
}

/**
 * The pieces concatenated: slices and concat copy in blocks (a loop of
 * pushes cost about twice as much, ~3 ms per 100,000 items). At most
 * CONCAT_ARGS pieces per call: arguments live on the stack.
 */
const CONCAT_ARGS = 4096;
function* joined<T>(pieces: T[][]): Steps<T[]> {
  if (pieces.length <= CONCAT_ARGS) return ([] as T[]).concat(...pieces);
  const groups: T[][] = [];
  for (let at = 0; at < pieces.length; at += CONCAT_ARGS) {
    groups.push(([] as T[]).concat(...pieces.slice(at, at + CONCAT_ARGS)));
    yield;
  }
  return yield* joined(groups);
}

const sameEntry = (a: SetEntry, b: SetEntry) =>
  a.nomatch === b.nomatch &&
  a.prefix.length === b.prefix.length &&
  a.prefix.words[0] === b.prefix.words[0] &&
  a.prefix.words[1] === b.prefix.words[1] &&
  a.prefix.words[2] === b.prefix.words[2] &&
  a.prefix.words[3] === b.prefix.words[3];

/** Per family: the sorted bindings and what an update needs to know about them. */
interface FamilyModel {
  items: PlanItem[];
  skeleton: Skeleton;
  counts: SkeletonCounts;
  /** Bindings per prefix length: the lengths an enclosing binding can have. */
  lengths: Uint32Array;
}

function* familyModelSteps(items: PlanItem[], skeleton: Skeleton): Steps<FamilyModel> {
  const counts: SkeletonCounts = new Map();
  const lengths = new Uint32Array(129);
  for (let k = 0; k < items.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    const item = items[k]!;
    const key = skeletonKey(item);
    counts.set(key, (counts.get(key) ?? 0) + 1);
    lengths[item.prefix.length]!++;
  }
  return { items, skeleton, counts, lengths };
}

/**
 * The changed bindings merged into the sorted ones (both sorted), or
 * undefined when the change is not ours to make here: a key removed that
 * is not bound, or one that makes a skeleton key appear or vanish.
 */
function* mergeSteps(model: FamilyModel, changes: Change[]): Steps<{ items: PlanItem[]; counts: SkeletonCounts; lengths: Uint32Array } | undefined> {
  const old = model.items;
  const pieces: PlanItem[][] = [];
  const counts = new Map(model.counts);
  const lengths = Uint32Array.from(model.lengths);
  const touchedKeys = new Set<string>();
  const count = (item: PlanItem, by: number) => {
    const key = skeletonKey(item);
    counts.set(key, (counts.get(key) ?? 0) + by);
    touchedKeys.add(key);
    lengths[item.prefix.length]! += by;
  };
  let i = 0;
  let j = 0;
  while (j < changes.length) {
    const p = changes[j]!.prefix;
    const at = gallop(old, i, p);
    if (at > i) pieces.push(old.slice(i, at));
    i = at;
    // The bindings on this very prefix (one per protocol and port at most).
    const here: PlanItem[] = [];
    while (i < old.length && compareAddresses(old[i]!.prefix, p) === 0) here.push(old[i++]!);
    for (; j < changes.length && compareAddresses(changes[j]!.prefix, p) === 0; j++) {
      const c = changes[j]!;
      const k = here.findIndex((x) => x.tcp === c.tcp && x.port === c.port);
      if (k >= 0) count(here[k]!, -1);
      if (c.removed) {
        if (k < 0) return undefined; // not ours to remove: let the full planner decide
        here.splice(k, 1);
      } else {
        const item: PlanItem = { prefix: c.prefix, text: c.text, label: c.label, port: c.port, tcp: c.tcp };
        count(item, 1);
        if (k >= 0) here[k] = item;
        else here.push(item);
      }
      if ((j & (STRIDE - 1)) === STRIDE - 1) yield;
    }
    if (here.length > 0) pieces.push(here);
  }
  if (i < old.length) pieces.push(old.slice(i));
  // Judged on the result, not on the way there: a relabel that removes a
  // label's last binding before adding its new one keeps the rules.
  for (const key of touchedKeys) {
    const n = counts.get(key)!;
    if (n === 0) counts.delete(key);
    if (n > 0 !== (model.counts.get(key) ?? 0) > 0) return undefined;
  }
  return { items: yield* joined(pieces), counts, lengths };
}

/** A changed prefix no other encloses. */
type Outer = { prefix: Prefix };

/** The changed prefixes that no other changed prefix encloses (sorted, disjoint). */
function* outermostChanged(changes: Change[]): Steps<Outer[]> {
  const out: Outer[] = [];
  for (let k = 0; k < changes.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    const c = changes[k]!;
    const last = out[out.length - 1];
    // Sorted: a prefix inside an earlier one is inside the last one kept.
    if (last && contains(last.prefix, c.prefix)) continue;
    out.push(c);
  }
  return out;
}

/**
 * The bindings that decide the entries inside `outer` (sorted, disjoint):
 * those inside each prefix and those enclosing it, each once, in sorted
 * order. Enclosing bindings are found by a binary search per prefix length
 * in use when the prefixes are few, by one sweep of all bindings when that
 * is cheaper.
 */
function* regionsSteps(items: PlanItem[], lengths: Uint32Array, outer: Outer[], sweepAlways: boolean): Steps<PlanItem[]> {
  const inUse: number[] = [];
  for (let l = 0; l < lengths.length; l++) if (lengths[l]! > 0) inUse.push(l);
  const searches = outer.length * inUse.length * Math.log2(items.length + 2);
  const out: PlanItem[] = [];
  const emitted = new Set<PlanItem>();
  const emit = (item: PlanItem) => {
    if (!emitted.has(item)) {
      emitted.add(item);
      out.push(item);
    }
  };
  let at = 0;
  if (!sweepAlways && searches < items.length) {
    for (const { prefix: p } of outer) {
      for (const l of inUse) {
        if (l >= p.length) break;
        // Typed words, like every prefix the sweeps compare (mixing them with arrays makes each comparison several times slower).
        const key: Prefix = { family: p.family, words: Uint32Array.from(maskWords(p.words, l)) as unknown as Prefix['words'], length: l };
        for (let k = gallop(items, 0, key); k < items.length && compareAddresses(items[k]!.prefix, key) === 0; k++) emit(items[k]!);
      }
      at = gallop(items, at, p);
      const end = yield* insideEnd(items, at, p);
      for (; at < end; at++) {
        out.push(items[at]!);
        if ((at & (STRIDE - 1)) === 0) yield;
      }
      yield;
    }
    return out;
  }
  // One sweep: before each outer prefix's position, the stack holds exactly the bindings enclosing it.
  const stack: PlanItem[] = [];
  let next = 0;
  for (let k = 0; k <= items.length && next < outer.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    while (next < outer.length && (k === items.length || compareAddresses(items[k]!.prefix, outer[next]!.prefix) >= 0)) {
      const p = outer[next++]!.prefix;
      while (stack.length > 0 && !contains(stack[stack.length - 1]!.prefix, p)) stack.pop();
      for (const item of stack) emit(item);
      const end = yield* insideEnd(items, k, p);
      for (let m = k; m < end; m++) {
        out.push(items[m]!);
        if ((m & (STRIDE - 1)) === 0) yield;
      }
    }
    if (k === items.length) break;
    const item = items[k]!;
    while (stack.length > 0 && !contains(stack[stack.length - 1]!.prefix, item.prefix)) stack.pop();
    stack.push(item);
  }
  return out;
}

/**
 * The runs of a sorted list that lie inside one of `outer` (sorted,
 * disjoint), as (outer index, from, to) triples in order. Galloping from
 * one run to the next costs O(runs × log), not a step per outer prefix:
 * most sets have entries inside few of the changed prefixes (measured:
 * 220,000 changes to 1,000,000 bindings spent 2.8 s visiting every changed
 * prefix in every set).
 */
function* runsInside(list: ReadonlyArray<{ prefix: Prefix }>, outer: Outer[]): Steps<number[]> {
  const runs: number[] = [];
  let i = 0;
  let p = 0;
  let steps = 0;
  while (i < list.length && p < outer.length) {
    if ((++steps & (STRIDE - 1)) === 0) yield;
    const e = list[i]!.prefix;
    // Only the last outer prefix sorting at or before e can hold it (they are disjoint).
    const q = gallop(outer, p, e);
    const holder = q < outer.length && compareAddresses(outer[q]!.prefix, e) === 0 ? q : q > p && contains(outer[q - 1]!.prefix, e) ? q - 1 : -1;
    if (holder >= 0) {
      const to = yield* insideEnd(list, i, outer[holder]!.prefix);
      runs.push(holder, i, to);
      i = to;
      p = holder + 1;
    } else {
      if (q >= outer.length) break;
      i = gallop(list, i, outer[q]!.prefix);
      p = q;
    }
  }
  return runs;
}

/**
 * One set's entries with those inside `outer` replaced by `fresh`'s there;
 * undefined entries when nothing inside them changed. `before` and `after`
 * hold the entries of the prefixes where something did.
 */
function* spliceSteps(old: SetEntry[], fresh: SetEntry[], outer: Outer[]): Steps<{ entries?: SetEntry[]; before: SetEntry[]; after: SetEntry[] }> {
  const olds = yield* runsInside(old, outer);
  const news = yield* runsInside(fresh, outer);
  // [from, to) in old and [lo, hi) in fresh, per outer prefix where they differ.
  const spans: number[] = [];
  let a = 0;
  let b = 0;
  let cursor = 0;
  while (a < olds.length || b < news.length) {
    yield;
    const n = Math.min(a < olds.length ? olds[a]! : Infinity, b < news.length ? news[b]! : Infinity);
    let from: number;
    let to: number;
    if (a < olds.length && olds[a] === n) {
      [from, to] = [olds[a + 1]!, olds[a + 2]!];
      a += 3;
    } else {
      from = to = gallop(old, cursor, outer[n]!.prefix); // nothing there before: where the new entries go
    }
    let lo = 0;
    let hi = 0;
    if (b < news.length && news[b] === n) {
      [lo, hi] = [news[b + 1]!, news[b + 2]!];
      b += 3;
    }
    cursor = to;
    let same = to - from === hi - lo;
    for (let k = 0; same && k < to - from; k++) {
      same = sameEntry(old[from + k]!, fresh[lo + k]!);
      if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    }
    if (!same) spans.push(from, to, lo, hi);
  }
  if (spans.length === 0) return { before: [], after: [] };
  const entries: SetEntry[][] = [];
  const before: SetEntry[][] = [];
  const after: SetEntry[][] = [];
  let copied = 0;
  for (let s = 0; s < spans.length; s += 4) {
    const [from, to, lo, hi] = [spans[s]!, spans[s + 1]!, spans[s + 2]!, spans[s + 3]!];
    const inserted = fresh.slice(lo, hi);
    entries.push(old.slice(copied, from), inserted);
    before.push(old.slice(from, to));
    after.push(inserted);
    copied = to;
    if ((s & (STRIDE - 1)) === 0) yield;
  }
  entries.push(old.slice(copied));
  return { entries: yield* joined(entries), before: yield* joined(before), after: yield* joined(after) };
}

export class FirewallModel {
  private constructor(
    readonly plan: FirewallPlan,
    private readonly families: Record<Family, FamilyModel>,
    private readonly policies: string,
    private readonly presorted: boolean,
  ) {}

  static of(state: DesiredState): FirewallModel {
    return runSync(FirewallModel.building(state));
  }

  static *building(state: DesiredState): Steps<FirewallModel> {
    const plans: FamilyPlan[] = [];
    const families = {} as Record<Family, FamilyModel>;
    let presorted = true;
    for (const f of FAMILIES) {
      const { items, presorted: sorted } = yield* familyItemsSteps(state, f);
      const skeleton = yield* skeletonSteps(items);
      plans.push(yield* familyPlanSteps(state, f, items, sorted, skeleton));
      presorted &&= sorted;
      families[f] = yield* familyModelSteps(items, skeleton);
    }
    return new FirewallModel({ families: [plans[0]!, plans[1]!] }, families, policiesText(state), presorted);
  }

  /**
   * The model for `next`, which is this model's state with `changes` made to
   * its bindings (the caller's delta), and the entries that changed; or
   * undefined when the change needs the full planner.
   */
  update(next: DesiredState, changes: BindingChange[]): ModelUpdate | undefined {
    return runSync(this.updating(next, changes));
  }

  /** `sweepAlways`: find enclosing bindings by the sweep even for a few changes (tests cover both ways). */
  *updating(next: DesiredState, changes: BindingChange[], sweepAlways = false): Steps<ModelUpdate | undefined> {
    if (!this.presorted || policiesText(next) !== this.policies) return undefined;
    if (changes.length > Math.max(FULL_MIN, (this.families[4].items.length + this.families[6].items.length) * FULL_SHARE)) return undefined;
    const byFamily: Record<Family, Change[]> = { 4: [], 6: [] };
    for (let seq = 0; seq < changes.length; seq++) {
      if ((seq & (STRIDE - 1)) === STRIDE - 1) yield;
      const { binding, removed } = changes[seq]!;
      const parsed = parseBindingPrefix(binding.prefix, 'change');
      if (parsed.length === 0) return undefined;
      // The same word representation as familyItems (typed), for the sweeps.
      const prefix: Prefix = { ...parsed, words: Uint32Array.from(parsed.words) as unknown as Prefix['words'] };
      const change: Change = { prefix, text: ipsetText(prefix), label: binding.label, port: binding.port, tcp: binding.protocol === 'tcp', removed, seq, key: sortKey(prefix) };
      // A port or label new to the family reshapes the rules: known before any planning.
      if (!removed && !this.families[prefix.family].counts.has(skeletonKey(change))) return undefined;
      byFamily[prefix.family].push(change);
    }
    const deltas: SetDelta[] = [];
    const plans = [...this.plan.families] as FirewallPlan['families'];
    const families = { ...this.families };
    for (const f of FAMILIES) {
      if (byFamily[f].length === 0) continue;
      const model = this.families[f];
      const sorted = yield* sortSteps(byFamily[f], byChange);
      const merged = yield* mergeSteps(model, sorted);
      if (!merged) return undefined;
      const outer = yield* outermostChanged(sorted);
      const region = yield* regionsSteps(merged.items, merged.lengths, outer, sweepAlways);
      const fresh = new Map((yield* familySetsSteps(next, f, region, true, model.skeleton)).map((s) => [s.name, s]));
      const old = plans[f === 4 ? 0 : 1];
      const sets: IpSet[] = [];
      for (const set of old.sets) {
        const spliced = yield* spliceSteps(set.entries, fresh.get(set.name)!.entries, outer);
        fresh.delete(set.name);
        if (!spliced.entries) {
          sets.push(set);
          continue;
        }
        const updated = { ...set, entries: spliced.entries };
        // A port set emptying drops its rule: the full planner again.
        if (!keepSet(updated)) return undefined;
        sets.push(updated);
        deltas.push({ set: updated, before: spliced.before, after: spliced.after });
      }
      // A port set that was empty (so not created): it appears only with the full planner.
      for (const set of fresh.values()) if ((yield* runsInside(set.entries, outer)).length > 0) return undefined;
      plans[f === 4 ? 0 : 1] = { ...old, sets };
      families[f] = { items: merged.items, skeleton: model.skeleton, counts: merged.counts, lengths: merged.lengths };
    }
    return { model: new FirewallModel({ families: plans }, families, this.policies, true), deltas };
  }
}
