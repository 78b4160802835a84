/**
 * The desired state as the control plane and the agent exchange it: its
 * digest (so both ends can tell they hold the same state), deltas (bindings
 * added and removed on top of a version), and the differences between two
 * states. Pure; both ends use this module.
 *
 * Everything a change of one binding touches is O(size of the change), not
 * O(bindings): with 100,000 bindings, hashing canonical text and copying
 * tables row by row cost about a second per change, and even a memory copy
 * of the columns costs milliseconds on this class of machine. An
 * IndexedState keeps, next to the state, a hash index of its keys
 * (protocol, prefix, port), the bindings per label and per destination, and
 * an order-free hash of its bindings; a delta is validated in full first,
 * then made in place, and can be undone exactly (a guard that trips, a
 * digest that disagrees, a kernel that refuses).
 *
 * The digest: sha256 over a header that carries the count and a multiset
 * hash of the bindings, followed by the canonical text of the service
 * policies and HTTPS-only ranges (small). The multiset hash is four 32-bit
 * lanes, each the sum mod 2^32 of a seeded murmur3 of every binding's fields
 * (family, protocol, prefix length, port, address words, label). It tells a
 * state that diverged (a bug, a torn file) from the right one with
 * certainty ~2^-128; it is not meant to resist forgery (the channel is
 * authenticated and the control plane is trusted anyway).
 */
import crypto from 'node:crypto';
import { STRIDE, runSliced, runSync, type Steps } from '../slice.js';
import { SwitchyardError } from '../errors.js';
import { BindingTable, IPPROTO, parseBindingList, parseBindingPrefix, parsePort, parseProtocol, protocolName, type Binding, type BindingColumnsTransfer } from '../bindings/binding.js';
import { formatPrefix, longestZeroRun, type Prefix } from '../net/address.js';
import { policiesText, type DesiredState } from '../desired/state.js';
import type { BindingChange } from '../firewall/incremental.js';

/** A binding's key as a delta names it for removal. */
export interface BindingKey {
  protocol: string;
  prefix: string;
  port: number;
}

export interface StateDelta {
  /** Bindings added (a key not in the state, or one removed in the same delta). */
  add: Binding[];
  /** Keys removed (each must be in the state). */
  remove: BindingKey[];
}

// murmur3 (x86, 32-bit) over 32-bit words.
const mix = (h: number, word: number): number => {
  let k = Math.imul(word, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  h ^= Math.imul(k, 0x1b873593);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
};
const finish = (h: number, bytes: number): number => {
  h ^= bytes;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
};

/** The key fields of a binding: (family, protocol, length), port, four address words. */
const keyHead = (family: number, ipproto: number, length: number) => family | (ipproto << 8) | (length << 16);

function hashKey(seed: number, head: number, port: number, a: ArrayLike<number>, at: number, label: number | undefined): number {
  let h = mix(mix(seed, head), port);
  h = mix(mix(mix(mix(h, a[at]!), a[at + 1]!), a[at + 2]!), a[at + 3]!);
  return label === undefined ? finish(h, 24) : finish(mix(h, label), 28);
}

const labelHashes = new Map<string, number>();
function labelHash(label: string): number {
  let h = labelHashes.get(label);
  if (h === undefined) {
    h = 0x5eed;
    for (let i = 0; i < label.length; i++) h = mix(h, label.charCodeAt(i));
    h = finish(h, label.length * 4);
    if (labelHashes.size < 100_000) labelHashes.set(label, h);
  }
  return h;
}

const LANE_SEEDS = [0x9e3779b9, 0x85ebca6b, 0xc2b2ae35, 0x27d4eb2f] as const;
const EMPTY = -1;
const tableHead = (t: BindingTable, i: number) => keyHead(t.family[i]!, t.protocol[i]!, t.prefixLen[i]!);
/** Binding i of `t` has the key (head, port, address words a[at..at+3]). */
const hasKey = (t: BindingTable, i: number, head: number, port: number, a: ArrayLike<number>, at: number) => {
  const b = i * 4;
  return t.port[i] === port && tableHead(t, i) === head && t.addr[b] === a[at] && t.addr[b + 1] === a[at + 1] && t.addr[b + 2] === a[at + 2] && t.addr[b + 3] === a[at + 3];
};
const destinationKey = (t: BindingTable, i: number) => t.labelIndex[i]! * 16 + t.family[i]! + (t.protocol[i] === IPPROTO.tcp ? 0 : 8);
const bump = <K>(m: Map<K, number>, k: K, by: number) => {
  const n = (m.get(k) ?? 0) + by;
  if (n === 0) m.delete(k);
  else m.set(k, n);
};

/** An IndexedState taken apart to cross threads (see toParts). */
export interface IndexedParts {
  columns: BindingColumnsTransfer;
  policies: Omit<DesiredState, 'bindings'>;
  slots: Int32Array;
  lanes: Uint32Array;
  labels: Map<string, number>;
  destinations: Map<number, number>;
  digest: string;
}

/** A delta's bindings parsed and checked on their own (keys, values, duplicates among the adds), not yet against a state. */
export interface ParsedDelta {
  added: BindingTable;
  /** The keys removed (labels unused). */
  removed: BindingTable;
}

/** Parses a delta's entries, naming a bad one; what it means for a state is applyParsed's to check. */
export function parseDelta(delta: StateDelta, source = 'delta'): ParsedDelta {
  const added = parseBindingList(delta.add, `${source} (add)`); // named entries, duplicates within the adds
  const removed = new BindingTable(Math.max(16, delta.remove.length));
  delta.remove.forEach((key, n) => {
    const entry = `${source}: remove[${n}]`;
    removed.add('', parseProtocol(key.protocol, entry), parseBindingPrefix(key.prefix, entry, false), parsePort(key.port, entry));
  });
  return { added, removed };
}

/** A delta made in place: what it changed, and how to take it back. */
export interface AppliedDelta {
  /** Removals (in the delta's order), then additions, as bindings; made on first use. */
  readonly changes: BindingChange[];
  changeCount: number;
  /** Makes `changes` a slice at a time, giving the event loop turns (a large delta). */
  prepareChanges(): Promise<void>;
  /** The rows the additions took (they stay there until the next delta). */
  addedRows: number[];
  /** Bindings a label had before the delta (for the labels the delta removed from). */
  labelCountBefore: ReadonlyMap<string, number>;
  /** Restores the state exactly as it was (the same rows in the same places). */
  undo(): void;
}

type Row = { labelIndex: number; family: number; protocol: number; prefixLen: number; port: number; addr: [number, number, number, number] };

/**
 * A desired state with what makes deltas, guards and digests cheap. It owns
 * its state's binding table: `applyDelta` changes both in place.
 */
export class IndexedState {
  private cachedDigest: string | undefined;

  private constructor(
    readonly state: DesiredState,
    /** Open addressing, linear probing: binding index or EMPTY. */
    private slots: Int32Array,
    private readonly lanes: Uint32Array,
    private readonly labels: Map<string, number>,
    private readonly destinations: Map<number, number>,
  ) {}

  /**
   * Everything this index holds, as another thread can hand it over (the
   * columns and the hash slots are transferred; policies, counts and
   * labels are cloned, small): a large push is parsed and indexed off the
   * event loop (src/agent/decoder.ts).
   */
  toParts(): IndexedParts {
    const { bindings, ...policies } = this.state;
    return { columns: bindings.toColumns(), policies, slots: this.slots, lanes: this.lanes, labels: this.labels, destinations: this.destinations, digest: this.digest };
  }

  static fromParts(p: IndexedParts): IndexedState {
    const indexed = new IndexedState({ bindings: BindingTable.fromColumns(p.columns), ...p.policies }, p.slots, p.lanes, p.labels, p.destinations);
    indexed.cachedDigest = p.digest;
    return indexed;
  }

  /** The typed arrays of toParts(), to transfer. */
  static transferList(p: IndexedParts): ArrayBuffer[] {
    const c = p.columns;
    return [c.labelIndex, c.family, c.protocol, c.prefixLen, c.port, c.addr, p.slots, p.lanes].map((a) => a.buffer as ArrayBuffer);
  }

  static of(state: DesiredState): IndexedState {
    const t = state.bindings;
    const indexed = new IndexedState(state, new Int32Array(slotCount(t.count)).fill(EMPTY), new Uint32Array(4), new Map(), new Map());
    for (let i = 0; i < t.count; i++) {
      if (indexed.insert(i) !== EMPTY) {
        throw new SwitchyardError('EINVAL_BINDING', `binding ${JSON.stringify(t.binding(i))} is listed twice`, { entry: t.prefixText(i) });
      }
      indexed.count(i, 1);
    }
    return indexed;
  }

  get bindings(): BindingTable {
    return this.state.bindings;
  }

  /** How many bindings carry `label`. */
  labelCount(label: string): number {
    return this.labels.get(label) ?? 0;
  }

  /** Labels with at least one binding, and their counts. */
  labelCounts(): ReadonlyMap<string, number> {
    return this.labels;
  }

  /** Distinct (label, family, protocol): the dispatcher's destinations. */
  get destinationCount(): number {
    return this.destinations.size;
  }

  get digest(): string {
    if (this.cachedDigest === undefined) {
      const s = this.state;
      const hash = crypto.createHash('sha256');
      hash.update(`switchyard-state 2\nbindings ${s.bindings.count} ${[...this.lanes].map((x) => x.toString(16).padStart(8, '0')).join('')}\n`);
      hash.update(policiesText(s));
      this.cachedDigest = `sha256:${hash.digest('hex')}`;
    }
    return this.cachedDigest;
  }

  /** Index of the binding with this key, or -1. */
  find(ipproto: number, prefix: Prefix, port: number): number {
    const head = keyHead(prefix.family, ipproto, prefix.length);
    return this.probe(head, port, prefix.words, 0);
  }

  /** Index of the binding with the key of `other`'s binding `j`, or -1. */
  findRow(other: BindingTable, j: number): number {
    return this.probe(tableHead(other, j), other.port[j]!, other.addr, j * 4);
  }

  private probe(head: number, port: number, a: ArrayLike<number>, at: number): number {
    const t = this.state.bindings;
    const mask = this.slots.length - 1;
    for (let s = hashKey(0, head, port, a, at, undefined) & mask; ; s = (s + 1) & mask) {
      const i = this.slots[s]!;
      if (i === EMPTY) return -1;
      if (hasKey(t, i, head, port, a, at)) return i;
    }
  }

  private home(i: number): number {
    const t = this.state.bindings;
    return hashKey(0, tableHead(t, i), t.port[i]!, t.addr, i * 4, undefined) & (this.slots.length - 1);
  }

  /** Puts binding `i` in the index; returns the index already holding its key (EMPTY if none, then `i` is in). */
  private insert(i: number): number {
    const t = this.state.bindings;
    const mask = this.slots.length - 1;
    for (let s = this.home(i); ; s = (s + 1) & mask) {
      const j = this.slots[s]!;
      if (j === EMPTY) {
        this.slots[s] = i;
        return EMPTY;
      }
      if (hasKey(t, j, tableHead(t, i), t.port[i]!, t.addr, i * 4)) return j;
    }
  }

  private slotOf(i: number): number {
    const mask = this.slots.length - 1;
    let s = this.home(i);
    while (this.slots[s] !== i) s = (s + 1) & mask;
    return s;
  }

  /** Takes binding `i` out of the index (backward-shift deletion: no tombstones). */
  private erase(i: number): void {
    const mask = this.slots.length - 1;
    let hole = this.slotOf(i);
    for (let s = (hole + 1) & mask; this.slots[s] !== EMPTY; s = (s + 1) & mask) {
      const home = this.home(this.slots[s]!);
      // Stays if its home lies cyclically in (hole, s].
      const stays = hole <= s ? home > hole && home <= s : home > hole || home <= s;
      if (stays) continue;
      this.slots[hole] = this.slots[s]!;
      hole = s;
    }
    this.slots[hole] = EMPTY;
  }

  /** Counts binding `i` in (by 1) or out (by -1) of the per-label counts, destinations and digest lanes. */
  private count(i: number, by: 1 | -1): void {
    const t = this.state.bindings;
    const label = t.label(i);
    bump(this.labels, label, by);
    bump(this.destinations, destinationKey(t, i), by);
    const lh = labelHash(label);
    for (let k = 0; k < 4; k++) {
      const h = hashKey(LANE_SEEDS[k], tableHead(t, i), t.port[i]!, t.addr, i * 4, lh);
      this.lanes[k] = (this.lanes[k]! + by * h) >>> 0;
    }
  }

  /**
   * Makes a delta in place: removals (in the delta's order), then additions.
   * Everything is checked before anything changes: a key it cannot remove
   * (or removes twice), an addition already bound (and not removed in the
   * same delta) or twice, is an error naming the entry, and the state is
   * as it was.
   */
  applyDelta(delta: StateDelta, source = 'delta'): AppliedDelta {
    return this.applyParsed(parseDelta(delta, source), source);
  }

  /** applyDelta of a delta parseDelta made (on this thread or another: src/agent/decoder.ts). */
  applyParsed(parsed: ParsedDelta, source = 'delta'): AppliedDelta {
    return runSync(this.applySteps(parsed, source));
  }

  /**
   * applyParsed in slices (src/slice.ts): a large delta gives the event loop
   * turns. Between slices the state is part made; the caller (the agent's
   * session, one push at a time) lets nothing else write it meanwhile.
   */
  applyParsedSliced(parsed: ParsedDelta, source = 'delta'): Promise<AppliedDelta> {
    return runSliced(this.applySteps(parsed, source));
  }

  private *applySteps(parsed: ParsedDelta, source: string): Steps<AppliedDelta> {
    const { added, removed } = parsed;
    const t = this.state.bindings;
    const removedRows = new Set<number>();
    for (let n = 0; n < removed.count; n++) {
      const at = this.findRow(removed, n);
      if (at < 0 || removedRows.has(at)) {
        const entry = `${source}: remove[${n}]`;
        throw new SwitchyardError('EINVAL_BINDING', `${entry} (${protocolName(removed.protocol[n]!)} ${removed.prefixText(n)} port ${removed.port[n]}): no such binding to remove`, { entry });
      }
      removedRows.add(at);
      if (n % STRIDE === STRIDE - 1) yield;
    }
    for (let j = 0; j < added.count; j++) {
      const at = this.findRow(added, j);
      if (at >= 0 && !removedRows.has(at)) {
        const b = added.binding(j);
        const entry = `${source} (add): bindings[${j}]`;
        throw new SwitchyardError('EINVAL_BINDING', `${entry} (${b.protocol} ${b.prefix} port ${b.port}): already bound to ${t.label(at)}; remove it in the same delta to relabel`, { entry });
      }
      if (j % STRIDE === STRIDE - 1) yield;
    }
    // Checked: from here on nothing throws. Each step is recorded for undo.
    const labelCountBefore = new Map<string, number>();
    const taken: Row[] = [];
    const addedRows: number[] = [];
    const undo: Array<() => void> = [];
    if (slotCount(t.count + added.count) > this.slots.length) this.rehash(slotCount(t.count + added.count));
    // Removing moves rows: find each removal again by key as it comes.
    for (let n = 0; n < removed.count; n++) {
      const at = this.findRow(removed, n);
      const label = t.label(at);
      if (!labelCountBefore.has(label)) labelCountBefore.set(label, this.labelCount(label));
      const row = this.takeRow(at);
      taken.push(row);
      undo.push(() => this.putRow(at, row));
      if (n % STRIDE === STRIDE - 1) yield;
    }
    for (let j = 0; j < added.count; j++) {
      const i = t.addFrom(added, j);
      this.insert(i);
      this.count(i, 1);
      addedRows.push(i);
      undo.push(() => this.takeRow(i));
      if (j % STRIDE === STRIDE - 1) yield;
    }
    this.cachedDigest = undefined;
    // The changes as bindings (text), made when first asked for, or a slice
    // at a time by prepareChanges(): formatting tens of thousands of
    // prefixes is a large part of a big delta's cost.
    const changes: BindingChange[] = [];
    const total = taken.length + addedRows.length;
    const change = (k: number): BindingChange => {
      if (k >= taken.length) return { binding: t.binding(addedRows[k - taken.length]!), removed: false };
      const row = taken[k]!;
      return { binding: { label: t.labels[row.labelIndex]!, protocol: protocolName(row.protocol), prefix: formatPrefix({ family: row.family as 4 | 6, words: row.addr, length: row.prefixLen }), port: row.port }, removed: true };
    };
    return {
      get changes() {
        while (changes.length < total) changes.push(change(changes.length));
        return changes;
      },
      changeCount: total,
      prepareChanges: () =>
        runSliced(
          (function* () {
            while (changes.length < total) {
              changes.push(change(changes.length));
              if (changes.length % STRIDE === 0) yield;
            }
          })(),
        ),
      addedRows,
      labelCountBefore,
      undo: () => {
        for (let k = undo.length - 1; k >= 0; k--) undo[k]!();
        this.cachedDigest = undefined;
      },
    };
  }

  /** Removes row `i` (the last row moves into its place) and returns its content. */
  private takeRow(i: number): Row {
    const t = this.state.bindings;
    const a = t.addr;
    const row: Row = { labelIndex: t.labelIndex[i]!, family: t.family[i]!, protocol: t.protocol[i]!, prefixLen: t.prefixLen[i]!, port: t.port[i]!, addr: [a[i * 4]!, a[i * 4 + 1]!, a[i * 4 + 2]!, a[i * 4 + 3]!] };
    this.count(i, -1);
    this.erase(i);
    const moved = t.removeAt(i);
    // The last binding moved into i; its (stale) columns at `moved` still hash the same.
    if (moved >= 0) this.slots[this.slotOf(moved)] = i;
    return row;
  }

  /** The inverse of takeRow(i): the row now at i goes back to the end, `row` into i. */
  private putRow(i: number, row: Row): void {
    const t = this.state.bindings;
    const end = t.count;
    const label = t.labels[row.labelIndex]!;
    if (i < end) {
      // Move row i to the end (appending its content), then overwrite i.
      const j = t.add(t.label(i), protocolName(t.protocol[i]!), t.prefix(i), t.port[i]!);
      this.slots[this.slotOf(i)] = j;
      t.setRow(i, label, row);
    } else {
      t.add(label, protocolName(row.protocol), { family: row.family as 4 | 6, words: row.addr, length: row.prefixLen }, row.port);
    }
    this.insert(i);
    this.count(i, 1);
  }

  private rehash(size: number): void {
    this.slots = new Int32Array(size).fill(EMPTY);
    for (let i = 0; i < this.state.bindings.count; i++) this.insert(i);
  }

  /**
   * The delta from this state to `after` (bindings only). O(n) hash
   * lookups: no sorting, no text.
   */
  diffTo(after: IndexedState): StateDelta {
    const { added, removed } = runSync(parsedDiffSteps(this, after))!;
    return {
      add: Array.from({ length: added.count }, (_, j) => added.binding(j)),
      remove: Array.from({ length: removed.count }, (_, n) => keyOf(removed, n)),
    };
  }
}

/**
 * diffTo as columns (no text), in slices: the delta from `before` to
 * `after`, ready for applyParsed. Stops early, answering undefined, once it
 * has more than `max` changes (the caller then takes `after` whole).
 */
export function* parsedDiffSteps(before: IndexedState, after: IndexedState, max = Infinity): Steps<ParsedDelta | undefined> {
  const a = before.state.bindings;
  const b = after.state.bindings;
  const added = new BindingTable(16);
  const removed = new BindingTable(16);
  for (let i = 0; i < a.count; i++) {
    const j = after.findRow(a, i);
    if (j < 0 || a.label(i) !== b.label(j)) removed.addFrom(a, i);
    if (i % STRIDE === STRIDE - 1) yield;
    if (removed.count > max) return undefined;
  }
  for (let j = 0; j < b.count; j++) {
    const i = before.findRow(b, j);
    if (i < 0 || b.label(j) !== a.label(i)) added.addFrom(b, j);
    if (j % STRIDE === STRIDE - 1) yield;
    if (added.count + removed.count > max) return undefined;
  }
  return { added, removed };
}

const keyOf = (t: BindingTable, i: number): BindingKey => ({ protocol: protocolName(t.protocol[i]!), prefix: t.prefixText(i), port: t.port[i]! });

/** Slots for `n` bindings: a power of two at least twice n (linear probing stays short). */
function slotCount(n: number): number {
  let size = 16;
  while (size < n * 2) size *= 2;
  return size;
}

/** sha256 digest of a state (see the module comment): what `ack`, `heartbeat` and `hello` carry. */
export function stateDigest(state: DesiredState): string {
  return IndexedState.of(state).digest;
}

/** An IndexedState over a copy of `state`'s bindings (the original stays as it is). */
export function indexedCopy(state: DesiredState): IndexedState {
  return IndexedState.of({ ...state, bindings: state.bindings.clone() });
}

/** The state after a delta, and the binding changes (for the firewall's incremental sync). */
export function applyDelta(state: DesiredState, delta: StateDelta, source = 'delta'): { state: DesiredState; changes: BindingChange[] } {
  const copy = indexedCopy(state);
  const { changes } = copy.applyDelta(delta, source);
  return { state: copy.state, changes };
}

/** The delta from `before` to `after` (bindings only). */
export function diffStates(before: DesiredState, after: DesiredState): StateDelta {
  return IndexedState.of(before).diffTo(IndexedState.of(after));
}

/** A state as a desired-state document again (snapshots, the last known good file). */
export function documentOf(state: DesiredState): unknown {
  const ranges = (r: ReadonlyArray<readonly [number, number]>) => r.map(([lo, hi]) => (lo === hi ? lo : `${lo}-${hi}`));
  return {
    bindings: [...state.bindings],
    services: Object.fromEntries([...state.services].map(([label, p]) => [label, { tcp: ranges(p.tcp), udp: ranges(p.udp) }])),
    https_only: {
      prefixes: state.httpsOnly.prefixes.map(formatPrefix),
      plaintext_ports: ranges(state.httpsOnly.plaintextPorts),
    },
    ...(state.exclusive.size > 0 ? { exclusive: Object.fromEntries([...state.exclusive].map(([label, prefixes]) => [label, prefixes.map(formatPrefix)])) } : {}),
  };
}

/**
 * documentOf(state) as JSON text, written byte by byte into one buffer: a
 * snapshot of 100,000 bindings is encoded once per version for every
 * agent; building 100,000 objects to stringify them cost ~0.3 s, a string
 * per binding joined ~0.12 s, this ~0.03 s (measured). Every byte is ASCII
 * (labels are [A-Za-z0-9._-], prefixes and ports digits and hex).
 */
const HEX = Buffer.from('0123456789abcdef', 'latin1');

export function stateJson(state: DesiredState): string {
  const t = state.bindings;
  const labels = t.labels.map((label) => Buffer.from(`{"label":${JSON.stringify(label)},"protocol":"`, 'latin1'));
  const tcp = Buffer.from('tcp","prefix":"', 'latin1');
  const udp = Buffer.from('udp","prefix":"', 'latin1');
  const portKey = Buffer.from('","port":', 'latin1');
  // The longest binding: the longest label's head, protocol, an IPv6 prefix (43), the port, punctuation.
  const most = Math.max(0, ...labels.map((l) => l.length)) + tcp.length + 43 + portKey.length + 5 + 2;
  const buf = Buffer.allocUnsafe(13 + t.count * most);
  let at = buf.write('{"bindings":[', 0, 'latin1');
  const digits = (n: number) => {
    if (n >= 10) {
      digits(Math.floor(n / 10));
      n %= 10;
    }
    buf[at++] = 48 + n;
  };
  const groups = new Uint16Array(8);
  const hex = (n: number) => {
    for (let shift = n >= 0x1000 ? 12 : n >= 0x100 ? 8 : n >= 0x10 ? 4 : 0; shift >= 0; shift -= 4) buf[at++] = HEX[(n >>> shift) & 15]!;
  };
  for (let i = 0; i < t.count; i++) {
    if (i > 0) buf[at++] = 44; // ,
    at += labels[t.labelIndex[i]!]!.copy(buf, at);
    at += (t.protocol[i] === IPPROTO.tcp ? tcp : udp).copy(buf, at);
    if (t.family[i] === 4) {
      const w = t.addr[i * 4]!;
      digits(w >>> 24);
      buf[at++] = 46;
      digits((w >>> 16) & 255);
      buf[at++] = 46;
      digits((w >>> 8) & 255);
      buf[at++] = 46;
      digits(w & 255);
      buf[at++] = 47; // /
      digits(t.prefixLen[i]!);
    } else {
      // RFC 5952, as formatAddress.
      for (let g = 0; g < 8; g++) groups[g] = (t.addr[i * 4 + (g >> 1)]! >>> (g & 1 ? 0 : 16)) & 0xffff;
      const [bestStart, bestLength] = longestZeroRun(groups);
      for (let g = 0; g < 8; g++) {
        if (g === bestStart) {
          buf[at++] = 58;
          buf[at++] = 58; // ::
          g += bestLength - 1;
          continue;
        }
        if (g > 0 && g !== bestStart + bestLength) buf[at++] = 58; // :
        hex(groups[g]!);
      }
      buf[at++] = 47;
      digits(t.prefixLen[i]!);
    }
    at += portKey.copy(buf, at);
    digits(t.port[i]!);
    buf[at++] = 125; // }
  }
  const { bindings: _, ...rest } = documentOf({ ...state, bindings: new BindingTable(0) }) as Record<string, unknown>;
  return `${buf.toString('latin1', 0, at)}],${JSON.stringify(rest).slice(1)}`;
}
