/**
 * Exact address-space reasoning over bindings, without sampling. Within one
 * (family, protocol) and one *port class* — an exact port p, whose lookups
 * see the bindings for p and the any-port ones, or "any other port", which
 * sees the any-port ones alone — the lookup of system.md is a longest-prefix
 * match (on equal prefixes the exact port wins). The prefixes of a class
 * form a laminar family: two are nested or disjoint. Walked in order
 * (address, then length) with a stack, every prefix's *own region* (its
 * addresses minus those of the prefixes inside it) comes out as the gaps
 * between its children, and every address of the space lies in exactly one
 * own region (or in none: unbound). A region's verdict is the binding of its
 * prefix, or the nearest enclosing one's. So, exactly:
 *   - two states differ at (class, address) iff the region holding the
 *     address has different effective labels in them (diff.ts);
 *   - a binding no packet reaches is one whose own region is empty in the
 *     classes it takes part in (verify.ts).
 * Cost: O(n) per class after the table's own sort (BindingTable.order()
 * is by slot = (family, protocol, port), then address, then length, so each
 * class is a merge of sorted runs); the "other ports" bindings are walked
 * once per exact port of their protocol too.
 */
import { BindingTable, IPPROTO } from '../bindings/binding.js';
import { type Family, PREFIX_MASKS } from '../net/address.js';

/** The rows of one (family, protocol) of a table, by port (0 = any), each run sorted by address then length. */
export type Runs = Map<number, Uint32Array>;

/** Per `${family} ${protocol}`: the runs of a table. */
export function runsOf(table: BindingTable): Map<string, Runs> {
  const order = table.order();
  const out = new Map<string, Runs>();
  let i = 0;
  while (i < order.length) {
    const row = order[i]!;
    const family = table.family[row]!;
    const protocol = table.protocol[row]!;
    const port = table.port[row]!;
    let j = i + 1;
    while (j < order.length && table.family[order[j]!] === family && table.protocol[order[j]!] === protocol && table.port[order[j]!] === port) j++;
    const key = `${family} ${protocol === IPPROTO.tcp ? 'tcp' : 'udp'}`;
    let runs = out.get(key);
    if (!runs) out.set(key, (runs = new Map()));
    runs.set(port, order.subarray(i, j));
    i = j;
  }
  return out;
}

/** One side of a comparison: a table, its runs for the (family, protocol) at hand, and its labels as ids of a shared list. */
export interface Side {
  table: BindingTable;
  runs: Runs | undefined;
  /** labelIndex of the table → shared label id. */
  labelIds: Int32Array;
}

export const NONE = -1;
const EMPTY = new Uint32Array(0);

/** What a walk reports. Address words are views valid only during the call (copy to keep). */
export interface SweepHandler {
  /** An own region [first, last] whose effective labels (shared ids, NONE = unbound) differ between the sides. */
  changed?(first: Uint32Array, last: Uint32Array, before: number, after: number): void;
  /** Every own region with its effective label on the `after` side (NONE never reported). */
  region?(first: Uint32Array, last: Uint32Array, label: number, row: number): void;
  /**
   * A prefix of the `after` side whose own region is empty: `row` is its
   * binding in this class (exact-port if it has one, else any-port);
   * `winner` the binding that takes its first address. Meaningful when the
   * `before` side is empty (a verification): in a comparison, prefixes of
   * the before side count as covering too.
   */
  covered?(row: number, winner: number): void;
}

interface Frame {
  /** The prefix's first and last address, and the next address not yet accounted for (its own region resumes there). */
  first: Uint32Array;
  last: Uint32Array;
  cursor: Uint32Array;
  /** The cursor went past `last` (the children covered everything up to the end). */
  done: boolean;
  /** Some of its own region came out (it is not covered by its children). */
  own: boolean;
  before: number;
  after: number;
  /** The after side's binding here (NONE: only the before side has this prefix), and the deepest after-side binding starting at `first`. */
  row: number;
  deepest: number;
}

/**
 * Walks one class of one (family, protocol): `port` > 0 is the exact port
 * p (its runs and the any-port runs), 0 the other ports (any-port runs).
 */
export function sweepClass(family: Family, port: number, before: Side, after: Side, handler: SweepHandler): void {
  const words = family === 4 ? 1 : 4;
  const bits = family === 4 ? 32 : 128;
  // Four sorted runs merged: exact and any-port, before and after.
  const runs = [port > 0 ? (before.runs?.get(port) ?? EMPTY) : EMPTY, before.runs?.get(0) ?? EMPTY, port > 0 ? (after.runs?.get(port) ?? EMPTY) : EMPTY, after.runs?.get(0) ?? EMPTY];
  const tables = [before.table, before.table, after.table, after.table];
  const at = [0, 0, 0, 0];
  const stack: Frame[] = [];
  for (let d = 0; d <= bits + 1; d++) {
    stack.push({ first: new Uint32Array(words), last: new Uint32Array(words), cursor: new Uint32Array(words), done: false, own: false, before: NONE, after: NONE, row: NONE, deepest: NONE });
  }
  let depth = 0; // frames in use
  const head = new Uint32Array(words); // the next node's first address
  let headLength = 0;

  // Each run gathered once in its sorted order (the table's rows are all
  // over memory: reading them in sorted order missed the cache at every
  // step), with sort keys as numbers: exact for IPv4, the first 53 address
  // bits for IPv6 (equal keys are compared word by word).
  const gathered = runs.map((run, k) => gather(run, tables[k]!, family, k < 2 ? before.labelIds : after.labelIds));
  let headKey = 0;
  const compareHead = (k: number): number => {
    const g = gathered[k]!;
    const i = at[k]!;
    const key = g.key[i]!;
    if (key !== headKey || words === 1) return key - headKey;
    for (let w = 0; w < words; w++) {
      const a = g.addr[i * 4 + w]!;
      if (a !== head[w]) return a < head[w]! ? -1 : 1;
    }
    return g.length[i]! - headLength;
  };
  const contains = (f: Frame, address: Uint32Array): boolean => {
    for (let w = 0; w < words; w++) if (address[w]! < f.first[w]! || address[w]! > f.last[w]!) return false;
    return true;
  };
  const less = (a: Uint32Array, b: Uint32Array) => lessWords(a, b, words);
  const gap = new Uint32Array(words);
  /** f's own region from its cursor to just before `until` (or to its end). */
  const emit = (f: Frame, until: Uint32Array | undefined) => {
    if (f.done) return;
    if (until) {
      if (!less(f.cursor, until)) return;
      // until - 1
      gap.set(until);
      for (let w = words - 1; w >= 0; w--) {
        if (gap[w] !== 0) {
          gap[w] = gap[w]! - 1;
          break;
        }
        gap[w] = 0xffffffff;
      }
    } else {
      gap.set(f.last);
    }
    f.own = true;
    if (f.before !== f.after) handler.changed?.(f.cursor, gap, f.before, f.after);
    if (f.after !== NONE) handler.region?.(f.cursor, gap, f.after, f.row);
  };
  /** Moves f's cursor just past `last` (a child's end). */
  const skipPast = (f: Frame, last: Uint32Array) => {
    f.cursor.set(last);
    for (let w = words - 1; w >= 0; w--) {
      if (f.cursor[w] !== 0xffffffff) {
        f.cursor[w] = f.cursor[w]! + 1;
        return;
      }
      f.cursor[w] = 0;
    }
    f.done = true; // past the last address of the space
  };
  const pop = () => {
    const f = stack[--depth]!;
    emit(f, undefined);
    if (f.row !== NONE && !f.own) handler.covered?.(f.row, f.deepest);
    if (depth > 0) {
      const parent = stack[depth - 1]!;
      // The first child starting where its parent starts: the deepest binding there is the child's.
      if (f.deepest !== NONE && !less(parent.first, f.first)) parent.deepest = f.deepest;
      if (!parent.done) skipPast(parent, f.last);
      if (!parent.done && less(parent.last, parent.cursor)) parent.done = true;
    }
  };

  for (;;) {
    // The next prefix: the least (address, length) at the heads of the runs.
    let next = -1;
    for (let k = 0; k < 4; k++) {
      if (at[k]! >= runs[k]!.length) continue;
      if (next < 0 || compareHead(k) < 0) {
        next = k;
        const g = gathered[k]!;
        const i = at[k]!;
        for (let w = 0; w < words; w++) head[w] = g.addr[i * 4 + w]!;
        headLength = g.length[i]!;
        headKey = g.key[i]!;
      }
    }
    if (next < 0) break;
    // Everything at this prefix: the exact-port binding beats the any-port one on each side.
    let beforeRow = NONE;
    let afterRow = NONE;
    let beforeLabel = NONE;
    let afterLabel = NONE;
    for (let k = 0; k < 4; k++) {
      if (at[k]! >= runs[k]!.length || compareHead(k) !== 0) continue;
      const i = at[k]!++;
      const row = runs[k]![i]!;
      if (k < 2) {
        if (beforeRow === NONE) [beforeRow, beforeLabel] = [row, gathered[k]!.label[i]!];
      } else if (afterRow === NONE) [afterRow, afterLabel] = [row, gathered[k]!.label[i]!];
    }
    while (depth > 0 && !contains(stack[depth - 1]!, head)) pop();
    const parent = depth > 0 ? stack[depth - 1]! : undefined;
    if (parent) {
      emit(parent, head);
    }
    const f = stack[depth++]!;
    f.first.set(head);
    for (let w = 0; w < words; w++) f.last[w] = (head[w]! | ~PREFIX_MASKS[headLength * 4 + w]!) >>> 0;
    f.cursor.set(head);
    f.done = false;
    f.own = false;
    f.before = beforeRow !== NONE ? beforeLabel : (parent?.before ?? NONE);
    f.after = afterRow !== NONE ? afterLabel : (parent?.after ?? NONE);
    f.row = afterRow;
    f.deepest = afterRow !== NONE ? afterRow : NONE;
  }
  while (depth > 0) pop();
}

/** Whether address a (its first `words` words) comes before b. */
export function lessWords(a: ArrayLike<number>, b: ArrayLike<number>, words: number): boolean {
  for (let w = 0; w < words; w++) if (a[w] !== b[w]) return a[w]! < b[w]!;
  return false;
}

/** A run's rows as the walk reads them, in sorted order: address words (4 per row), length, shared label id, sort key. */
interface Gathered {
  addr: Uint32Array;
  length: Uint8Array;
  label: Int32Array;
  key: Float64Array;
}

const gatheredRuns = new WeakMap<Uint32Array, Gathered>();

/** Once per run: the any-port runs serve every class of their protocol. */
function gather(run: Uint32Array, t: BindingTable, family: Family, labelIds: Int32Array): Gathered {
  let g = gatheredRuns.get(run);
  if (g) return g;
  g = { addr: new Uint32Array(run.length * 4), length: new Uint8Array(run.length), label: new Int32Array(run.length), key: new Float64Array(run.length) };
  const a = t.addr;
  for (let i = 0; i < run.length; i++) {
    const row = run[i]!;
    for (let w = 0; w < 4; w++) g.addr[i * 4 + w] = a[row * 4 + w]!;
    g.length[i] = t.prefixLen[row]!;
    g.label[i] = labelIds[t.labelIndex[row]!]!;
    g.key[i] = family === 4 ? a[row * 4]! * 64 + t.prefixLen[row]! : a[row * 4]! * 2097152 + (a[row * 4 + 1]! >>> 11);
  }
  if (run.length > 0) gatheredRuns.set(run, g);
  return g;
}

/** A shared label list for two tables, and each table's mapping into it. */
export function sharedLabels(a: BindingTable, b: BindingTable): { labels: string[]; ids: [Int32Array, Int32Array] } {
  const labels: string[] = [];
  const index = new Map<string, number>();
  const map = (t: BindingTable) =>
    Int32Array.from(t.labels, (label) => {
      let id = index.get(label);
      if (id === undefined) {
        id = labels.length;
        labels.push(label);
        index.set(label, id);
      }
      return id;
    });
  return { labels, ids: [map(a), map(b)] };
}
