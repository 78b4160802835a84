/**
 * The dispatcher as a library: load/unload/upgrade the program in a network
 * namespace, replace or edit the binding set, register sockets, look up.
 * The CLI and the agent both drive this module.
 *
 * Every write runs under the writer lock and follows one rule: the kernel
 * holds the state. We read what is pinned, compute the next state, and make
 * it visible in one atomic step (a generation swap, a socket map update), so
 * a process killed at any instruction leaves a dispatcher that serves either
 * the old or the new state.
 */
import fs from 'node:fs';
import path from 'node:path';
import { projectPath } from '../paths.js';
import { SwitchyardError, isKernelError } from '../errors.js';
import { BpfMap, Fd, loadObject, u32Key, ATTACH_SK_LOOKUP, LINK_TYPE_NETNS, PROG_TYPE_SK_LOOKUP } from '../kernel/bpf.js';
import { native, type SocketInfo } from '../kernel/native.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../kernel/linux.js';
import { type Family, type Prefix, formatAddress, formatPrefix, maskWords } from '../net/address.js';
import { BindingTable, IPPROTO, type Binding, type Protocol, protocolName } from '../bindings/binding.js';
import { buildTable, emptyInput, readHeader, type TrieInput } from '../trie/builder.js';
import { applyPatch, planPatch, rebuildReason } from '../trie/patch.js';
import { countChanges, findDuplicate } from '../bindings/order.js';
import { ABI_VERSION, leafDestination, leafPrefixLen, LEAF_RESULT_MASK, ROW_BYTES } from '../trie/layout.js';
import { MAPS, MAP_NAMES, MIN_CAPACITY_ROWS, PROGRAM_NAME, capacityFor, checkLoadedObject } from './maps.js';
import {
  type Location,
  PinnedState,
  isLoaded,
  metaValue,
  findStaleStates,
  moveStaleAside,
  removeAbandonedTemps,
  removeStateDir,
  staleReason,
  type StaleState,
  tempDirFor,
  withWriterLock,
  WriterLock,
} from './state.js';
import { Destinations, clearStats, readStats, type Destination, type DestinationStats } from './destinations.js';
import { createTableMap, loadWithCapacity, publishTable, readCurrentTable, swapTable, LiveTable, settleTablePins, type TableSummary } from './table.js';
import type { BuiltTable } from '../trie/builder.js';
import { ProgramLookup, type LookupQuery } from './lookup.js';
import { refuseBesideOrphan } from './orphan.js';
import { migrate, pinnedAbi, type Migration } from './migrate.js';
import { checkSocket, describeSocket } from '../sockets/sockets.js';

/** The dispatcher object this version ships (bpf/dispatcher.o). */
export function defaultObjectPath(): string {
  const file = projectPath('bpf/dispatcher.o');
  if (!fs.existsSync(file)) throw new SwitchyardError('EINVAL_ARGUMENT', `${file} not found; build it with \`npm run build:bpf\``);
  return file;
}

/** One binding as the CLI or the agent names it. */
export interface BindingSpec {
  label: string;
  protocol: Protocol;
  prefix: Prefix;
  port: number;
}

/** One change of a delta: `binding` added (or relabelled), or removed (its label is the one it had). */
export interface BindingChangeSpec {
  binding: BindingSpec;
  removed: boolean;
}

/** Builds a table off this thread; sorts the columns and refuses duplicate keys when `order` is not given. */
export type TableBuilder = (input: TrieInput, serial: bigint, order?: Uint32Array) => Promise<BuiltTable>;

/** Deltas longer than this are one replace: binding by binding they would cost more than a build. */
const IN_PLACE_MAX = 64;
/** An in-place delta gives the event loop a turn once it has held it this long. */
const YIELD_AFTER_MS = 20;

const patchKey = (b: BindingSpec) => ({ family: b.prefix.family, protocol: IPPROTO[b.protocol], port: b.port, addr: b.prefix.words, prefixLen: b.prefix.length });

/** Lets the event loop run what is due (timers, I/O) before going on. */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Adds first (a carve-out lands before what it carves from goes), then removals that are not the same key added again (a relabel). */
function inPlaceOrder(changes: readonly BindingChangeSpec[]): BindingChangeSpec[] {
  const key = (b: BindingSpec) => `${b.protocol} ${formatPrefix(b.prefix)} ${b.port}`;
  const readded = new Set(changes.filter((c) => !c.removed).map((c) => key(c.binding)));
  return [...changes.filter((c) => !c.removed), ...changes.filter((c) => c.removed && !readded.has(key(c.binding)))];
}

function duplicateError(table: BindingTable, [i, j]: [number, number]): SwitchyardError {
  const [a, b] = [i, j].map((k) => JSON.stringify(table.binding(k)));
  return new SwitchyardError('EINVAL_BINDING', `bindings ${a} and ${b} have the same protocol, prefix and port`, { entry: b });
}

export interface ApplyResult {
  serial: bigint;
  bindings: number;
  /** Against the set in force; absent where counting would cost more than the change (replaceBindingsAsync). */
  added?: number;
  removed?: number;
  tableBytes: number;
  buildMs: number;
  publishMs: number;
  /** Changed in place in the published table (src/trie/patch.ts), not by a new generation. */
  inPlace: boolean;
  /** After the switch: what could not be tidied (the change is in force; the next write finishes it). */
  warnings?: string[];
}

export interface LookupAnswer {
  protocol: Protocol;
  address: string;
  port: number;
  /** The binding that decided, or null when none matched (the kernel's own lookup applies). */
  binding: Binding | null;
  label: string | null;
  verdict: 'pass' | 'drop';
  /** What the dispatcher did: not ours, handed to a socket, refused (no socket), refused (socket unusable). */
  outcome: 'unbound' | 'socket' | 'no-socket' | 'assign-error';
  socketCookie: string | null;
  assignError?: number;
}

export interface DestinationStatus extends Destination {
  bindings: number;
  socket: string | null;
  stats: { lookups: string; misses: string; errors: string };
}

export interface Status {
  netns: string;
  netnsInode: number;
  stateDir: string;
  program: { id: number; name: string; jited: boolean; tag: string };
  link: { id: number; progId: number; netnsInode: number | undefined };
  table: TableSummary | null;
  destinations: DestinationStatus[];
}

/**
 * Loads the dispatcher into a namespace. An already loaded, compatible one
 * keeps its maps (bindings, sockets, counters); its program is moved to
 * `objectPath`'s (by default the installed object) through the pinned link
 * when the two differ (`replaced`), and nothing changes when they are the
 * same, so a restart is a no-op and a package upgrade takes effect at the
 * agent's next start. State of another ABI is migrated to this version's
 * without an outage (`migrated`, see migrate.ts). State left by a dead
 * namespace whose inode this one reused is moved aside (`staleMovedTo`),
 * never adopted.
 */
export interface LoadResult {
  created: boolean;
  staleMovedTo?: string;
  /** The loaded program differed from the object's and was replaced (see replaceProgram). */
  replaced?: ProgramChange;
  /** The state was of another ABI and was migrated to this version's (see migrate.ts). */
  migrated?: Migration;
  /** Loaded, with something the operator should know (sk_lookup programs beside it that could not be identified). */
  warnings?: string[];
}

export function load(location: Location, objectPath = defaultObjectPath()): LoadResult {
  return withWriterLock(location, () => {
    let staleMovedTo: string | undefined;
    if (isLoaded(location)) {
      if (staleReason(location) === undefined) {
        removeAbandonedTemps(location); // a migration's, too (see migrate.ts)
        finishInterruptedGrowth(location);
        finishInterruptedReplacement(location);
        const abi = pinnedAbi(location.dir);
        if (abi !== undefined && abi !== ABI_VERSION) {
          const { migration, warnings } = migrate(location, objectPath, abi);
          return { created: false, migrated: migration, ...(warnings.length ? { warnings } : {}) };
        }
        const state = PinnedState.open(location); // compatibility check
        try {
          const replaced = replaceProgram(state, objectPath, true);
          return { created: false, ...(replaced ? { replaced } : {}) };
        } finally {
          state.close();
        }
      }
      staleMovedTo = moveStaleAside(location);
    }
    try {
      return attach(location, objectPath, staleMovedTo);
    } catch (err) {
      if (staleMovedTo && err instanceof SwitchyardError) {
        throw new SwitchyardError(err.code, `${err.message} (stale state of a namespace that no longer exists was moved aside to ${staleMovedTo} first)`, { ...(err.entry !== undefined ? { entry: err.entry } : {}), cause: err });
      }
      throw err;
    }
  });
}

/** The first load of a namespace (load's second half): a program, its maps and link, built aside and renamed into place. */
function attach(location: Location, objectPath: string, staleMovedTo: string | undefined): LoadResult {
  removeAbandonedTemps(location);
  const warning = refuseBesideOrphan(location); // one still attached whose pins were lost: never a second program beside it
  const { maps, programs } = loadWithCapacity(objectPath, {}, MIN_CAPACITY_ROWS);
  const owned = [...Object.values(maps), ...Object.values(programs)].map((fd) => new Fd(fd));
  const temp = tempDirFor(location);
  try {
    const prog = checkLoadedObject(objectPath, maps, programs);
    native().mapUpdate(maps.meta!, u32Key(0), metaValue());
    const generation = new BpfMap(maps.generation!, MAPS.generation);
    fs.mkdirSync(temp, { mode: 0o700 });
    publishTable(temp, generation, buildTable(emptyInput(), 1n), MIN_CAPACITY_ROWS);
    for (const name of MAP_NAMES) native().objPin(maps[name]!, path.join(temp, name));
    native().objPin(prog, path.join(temp, 'program'));
    const netns = new Fd(fs.openSync(location.netnsPath, 'r'));
    try {
      const link = new Fd(native().linkCreateSkLookup(prog, netns.fd));
      owned.push(link);
      native().objPin(link.fd, path.join(temp, 'link'));
    } finally {
      netns.close();
    }
    // The state becomes visible only complete: one rename.
    fs.renameSync(temp, location.dir);
    return { created: true, ...(staleMovedTo ? { staleMovedTo } : {}), ...(warning ? { warnings: [warning] } : {}) };
  } catch (err) {
    if (fs.existsSync(temp)) removeStateDir(temp);
    throw err;
  } finally {
    for (const fd of owned) fd.close();
  }
}

/**
 * Removes stale states (see state.ts) under a bpffs: what `unload` of a
 * namespace that no longer exists means, since its path no longer names an
 * inode. They serve nothing: their links are attached to no namespace.
 */
export function removeStale(location: Pick<Location, 'base'>): { removed: StaleState[] } {
  if (!fs.existsSync(location.base)) return { removed: [] };
  return withWriterLock(location, () => {
    const stale = findStaleStates(location.base);
    for (const s of stale) removeStateDir(s.dir);
    return { removed: stale };
  });
}

/** Removes the dispatcher of a namespace: detaches the program and unpins everything. */
export function unload(location: Location): { removed: boolean } {
  return withWriterLock(location, () => {
    if (!fs.existsSync(location.dir)) return { removed: false };
    // Rename first so no reader opens a half-removed directory.
    const temp = tempDirFor(location);
    fs.renameSync(location.dir, temp);
    removeStateDir(temp);
    return { removed: true };
  });
}

/**
 * Replaces the program through the pinned link (BPF_LINK_UPDATE): the maps,
 * and with them every binding and socket, stay; there is no moment without
 * a program attached. Unlike load, it replaces even an identical program.
 */
export function upgrade(location: Location, objectPath = defaultObjectPath()): { programId: number; previousProgramId: number } {
  return withWriterLock(location, () => {
    finishInterruptedGrowth(location);
    finishInterruptedReplacement(location);
    const state = PinnedState.open(location);
    try {
      const { programId, previousProgramId } = replaceProgram(state, objectPath, false)!;
      return { programId, previousProgramId };
    } finally {
      state.close();
    }
  });
}

export interface ProgramChange {
  previousProgramId: number;
  programId: number;
  /** Kernel tags (hex) of the program replaced and of its replacement. */
  previousTag: string;
  tag: string;
  /** Loading (verifying) the new program, and the switch with its pins. */
  loadMs: number;
  switchMs: number;
}

/** The pin of a replacement program before the link runs it (see replaceProgram). */
const PROGRAM_NEW = 'program_new'; // bpffs refuses dots in names

/**
 * Moves the pinned link to `objectPath`'s program, verified against every
 * pinned map (the generation map too, so the table capacity the pinned
 * program was verified for stays). With `onlyIfDifferent`, nothing changes
 * when the link already runs the pinned program and that program's kernel
 * tag is the object's: the tag is the kernel's digest of the instructions
 * with map references zeroed, so it says "same code" whatever maps either
 * was loaded against (a program grown to a larger table keeps its tag), and
 * it is the same hash the kernel uses, whichever it is (SHA-256 since 6.18).
 * Comparing needs the object loaded: a verifier run at each start.
 *
 * Crash-safe under the writer lock: the new program is pinned as
 * `program_new` before the link is updated and renamed over `program`
 * after, so a writer dead at any point leaves the link running the old
 * program or the new one, both held by a pin; the next writer
 * (finishInterruptedReplacement) renames `program_new` if the link runs it
 * and removes it otherwise, and the next load compares again and redoes the
 * job if it was not done. A link found running anything other than the
 * pinned program (an old version's upgrade that died between its update and
 * its pin) counts as different too.
 */
function replaceProgram(state: PinnedState, objectPath: string, onlyIfDifferent: boolean): ProgramChange | undefined {
  const started = performance.now();
  const reuse: Record<string, number> = {};
  for (const name of MAP_NAMES) reuse[name] = state.maps[name].fd;
  const { maps, programs } = loadObject(objectPath, reuse);
  const loaded = performance.now();
  const owned = [...Object.values(maps), ...Object.values(programs)].map((fd) => new Fd(fd));
  try {
    const prog = checkLoadedObject(objectPath, maps, programs);
    const candidate = native().objInfo(prog, 'prog');
    const pinned = native().objInfo(state.program.fd, 'prog');
    const running = native().objInfo(state.link.fd, 'link').progId;
    if (onlyIfDifferent && running === pinned.id && pinned.tag === candidate.tag) return undefined;
    const dir = state.location.dir;
    const next = path.join(dir, PROGRAM_NEW);
    fs.rmSync(next, { force: true });
    native().objPin(prog, next);
    native().linkUpdate(state.link.fd, prog);
    fs.renameSync(next, path.join(dir, 'program'));
    return { previousProgramId: running, programId: candidate.id, previousTag: pinned.tag, tag: candidate.tag, loadMs: loaded - started, switchMs: performance.now() - loaded };
  } finally {
    for (const fd of owned) fd.close();
  }
}

/** Completes or discards a program replacement a dead writer left half done (see replaceProgram); true when it changed the pins. */
function finishInterruptedReplacement(location: Location): boolean {
  const pending = path.join(location.dir, PROGRAM_NEW);
  if (!fs.existsSync(pending)) return false;
  const link = new Fd(native().objGet(path.join(location.dir, 'link')));
  const prog = new Fd(native().objGet(pending));
  let live: boolean;
  try {
    live = native().objInfo(link.fd, 'link').progId === native().objInfo(prog.fd, 'prog').id;
  } finally {
    link.close();
    prog.close();
  }
  if (live) fs.renameSync(pending, path.join(location.dir, 'program'));
  else fs.rmSync(pending);
  return true;
}

/**
 * Completes or discards a growth that a dead writer left half done: if the
 * link already runs `program_next`, its generation and table are the live
 * ones and take the pinned names; otherwise they never served and go.
 * Returns true when it changed the pins. Writers call it under the lock.
 */
function finishInterruptedGrowth(location: Location): boolean {
  const dir = location.dir;
  const pending = path.join(dir, 'program_next');
  if (!fs.existsSync(pending) && !fs.existsSync(path.join(dir, 'generation_next'))) return false;
  let live = false;
  if (fs.existsSync(pending)) {
    const link = new Fd(native().objGet(path.join(dir, 'link')));
    const prog = new Fd(native().objGet(pending));
    try {
      live = native().objInfo(link.fd, 'link').progId === native().objInfo(prog.fd, 'prog').id;
    } finally {
      link.close();
      prog.close();
    }
  }
  for (const name of ['table', 'generation', 'program']) {
    const next = path.join(dir, `${name}_next`);
    if (!fs.existsSync(next)) continue;
    if (live) fs.renameSync(next, path.join(dir, name));
    else fs.rmSync(next);
  }
  return true;
}

/** An open dispatcher: handles on its pinned state. Close it when done. */
export class Dispatcher {
  private constructor(private pinned: PinnedState) {}

  get state(): PinnedState {
    return this.pinned;
  }

  static open(location: Location): Dispatcher {
    return new Dispatcher(PinnedState.open(location));
  }

  get location(): Location {
    return this.state.location;
  }

  close(): void {
    this.destinationsView?.close();
    this.destinationsView = undefined;
    this.live?.close();
    this.live = undefined;
    this.state.close();
  }

  private destinationsView: Destinations | undefined;

  /** The pinned destinations, mapped once for this Dispatcher's life (the mapping is shared, so always current). */
  private destinations(): Destinations {
    this.destinationsView ??= Destinations.read(this.state.maps.destinations);
    return this.destinationsView;
  }

  /**
   * The destination of (label, family, protocol), allocated if new. A new
   * id's counters are zeroed before any table names it, so a reused id
   * never shows the counts of the label that had it, and releasing an id
   * (after a switch, when nothing may fail) has nothing left to write.
   */
  private ensureDestination(label: string, family: Family, protocol: Protocol): Destination {
    return this.destinations().ensure(
      label,
      family,
      protocol,
      (id) => this.socketCookie(id) !== undefined,
      (id) => clearStats(this.state.maps.destination_stats, id),
    );
  }

  private socketCookie(id: number): bigint | undefined {
    const value = Buffer.alloc(8);
    return this.state.maps.sockets.lookup(u32Key(id), value) ? value.readBigUInt64LE(0) : undefined;
  }

  /** The published binding set, with labels. */
  bindings(): BindingTable {
    const current = readCurrentTable(this.location.dir, this.state.maps.generation);
    const destinations = this.destinations();
    return toBindingTable(current?.bindings, destinations);
  }

  /**
   * Makes `next` the binding set, atomically for packets. A BindingTable
   * only holds valid bindings; duplicate keys are refused here. Nothing
   * changes if anything throws before the swap.
   */
  replaceBindings(next: BindingTable): ApplyResult {
    return this.writing(() => this.replaceLocked(next));
  }

  /**
   * Every write: under the writer lock, after completing or discarding a
   * growth or a publish a dead writer left half done, so it reads the live
   * state and leaves no stray pins.
   */
  private writing<T>(fn: () => T): T {
    if (this.busy) throw new SwitchyardError('EBUSY', 'a replace of this dispatcher is under way; try again when it is done');
    return withWriterLock(this.location, () => {
      this.settle();
      return fn();
    });
  }

  /** `before` is the published set when the caller has just read it (bind, unbind). */
  private replaceLocked(next: BindingTable, before?: BindingTable): ApplyResult {
    const prepared = this.prepareReplace(next, { before });
    return this.finishReplace(prepared, buildTable(prepared.input, prepared.serial, next.order()));
  }

  /**
   * Makes `next` the binding set like replaceBindings, with the table built
   * on `builder` (another thread) while this one is free: the agent plans
   * its firewall meanwhile. The writer lock is held throughout; this
   * Dispatcher refuses other writes until it is done (EBUSY) rather than
   * wait on a lock this same thread holds.
   *
   * What this thread does is bounded by a copy of the columns, not by
   * sorting or decoding: the builder sorts and refuses duplicate keys, and
   * the change is not counted against the table in force (`added` and
   * `removed` are absent) — at a million bindings those took seconds here.
   */
  async replaceBindingsAsync(next: BindingTable, builder: TableBuilder): Promise<ApplyResult> {
    return this.writingAsync(() => this.replaceAsyncLocked(next, builder));
  }

  private async replaceAsyncLocked(next: BindingTable, builder: TableBuilder): Promise<ApplyResult> {
    const prepared = this.prepareReplace(next, { counts: false });
    await nextTurn(); // the builder's copy of the columns is the next slice of this thread's work
    const built = await builder(prepared.input, prepared.serial);
    return this.finishReplace(prepared, built);
  }

  /**
   * A delta of the binding set, `next` being the set it makes. Every change
   * is judged against the published table before the first write: when all
   * can be made in place (src/trie/patch.ts), they are, adds first (a
   * carve-out lands before what it carves from goes), then removals that
   * are not the same key added again (a relabel), yielding to the event loop
   * between changes; otherwise (a short prefix, a large delta) the whole
   * delta is one replace of `next`, built on `builder`. A table that runs
   * out of free rows part way (or a removal whose label the kernel does not
   * have) ends the in-place run with that same replace: the table then
   * holds `next` either way. One place decides, and a delta costs at most
   * one table build. The result describes the last write.
   */
  async applyChanges<T>(delta: readonly T[], spec: (change: T) => BindingChangeSpec, next: BindingTable, builder: TableBuilder): Promise<ApplyResult> {
    return this.writingAsync(async () => {
      const changes = this.specsInPlace(delta, spec);
      if (changes) {
        let published = this.unchanged();
        let slice = performance.now();
        for (const c of inPlaceOrder(changes)) {
          const started = performance.now();
          const patched = c.removed
            ? this.patch(c.binding, null, (previous) => previous !== null && this.destinations().get(previous)?.label === c.binding.label, started)
            : this.patch(c.binding, this.ensureDestination(c.binding.label, c.binding.prefix.family, c.binding.protocol).id, () => true, started);
          // No room left, or the kernel disagrees with the removal's label: `next` says what is right.
          if (patched === undefined || patched === 'refused') return this.replaceAsyncLocked(next, builder);
          published = patched.result;
          if (performance.now() - slice > YIELD_AFTER_MS) {
            await nextTurn();
            slice = performance.now();
          }
        }
        return published;
      }
      return this.replaceAsyncLocked(next, builder);
    });
  }

  /** The published table as an ApplyResult of no change (a delta of no bindings). */
  private unchanged(): ApplyResult {
    const live = this.liveTable()!;
    const header = readHeader(new DataView(live.words.buffer, live.words.byteOffset, live.words.byteLength))!;
    return { serial: header.serial, bindings: header.bindingCount, added: 0, removed: 0, tableBytes: live.capacityRows * ROW_BYTES, buildMs: 0, publishMs: 0, inPlace: true };
  }

  /**
   * The delta's changes when applyChanges would make them in place, as
   * things are now (what it decides by, also for a caller that schedules
   * around it); undefined when it would be one replace. A large delta is
   * not even converted.
   */
  specsInPlace<T>(delta: readonly T[], spec: (change: T) => BindingChangeSpec): BindingChangeSpec[] | undefined {
    if (delta.length > IN_PLACE_MAX * 2) return undefined; // a relabel is two changes, one write
    const live = this.liveTable();
    if (live === undefined) return undefined;
    const changes = delta.map(spec);
    const ordered = inPlaceOrder(changes);
    return ordered.length <= IN_PLACE_MAX && ordered.every((c) => rebuildReason(live.words, patchKey(c.binding), c.removed) === undefined) ? changes : undefined;
  }

  /** Under the lock, before a write: what a dead writer (or a growth that could not rename its pins) left half done is completed or discarded, and the handles follow the pins. */
  private settle(): void {
    const grown = finishInterruptedGrowth(this.location);
    const replaced = finishInterruptedReplacement(this.location);
    if (grown || replaced || this.mustReopen || this.pinsMoved()) this.reopen();
    settleTablePins(this.location.dir, this.state.maps.generation);
  }

  /** Like writing(), for writes that await: the lock is held across them, and this Dispatcher refuses other writes meanwhile (EBUSY). */
  private async writingAsync<T>(fn: () => Promise<T>): Promise<T> {
    if (this.busy) throw new SwitchyardError('EBUSY', 'another write of this dispatcher is under way');
    this.busy = true;
    const lock = WriterLock.acquire(this.location);
    try {
      this.settle();
      return await fn();
    } finally {
      lock.release();
      this.busy = false;
    }
  }

  private busy = false;

  /**
   * Everything before the build: checks, the table in force, destinations
   * for every (label, family, protocol). `counts: false` skips what only the
   * result's added/removed need (decoding the table in force) and the
   * duplicate check (the caller's builder makes it).
   */
  private prepareReplace(next: BindingTable, options: { before?: BindingTable; counts?: boolean } = {}) {
    const started = performance.now();
    const counts = options.counts ?? true;
    if (counts) {
      const duplicate = findDuplicate(next, next.order());
      if (duplicate) throw duplicateError(next, duplicate);
    }
    const { maps } = this.state;
    const current = readCurrentTable(this.location.dir, maps.generation, counts && options.before === undefined);
    let diff: { added: number; removed: number } | undefined;
    if (counts) {
      const previous = options.before ?? toBindingTable(current?.bindings, this.destinations());
      diff = countChanges(previous, next, (i, j) => previous.label(i) === next.label(j), previous.order(), next.order());
    }
    const referenced = new Set<number>();
    const input: TrieInput = {
      count: next.count,
      family: next.family.subarray(0, next.count),
      protocol: next.protocol.subarray(0, next.count),
      prefixLen: next.prefixLen.subarray(0, next.count),
      port: next.port.subarray(0, next.count),
      addr: next.addr.subarray(0, next.count * 4),
      destination: new Uint16Array(next.count),
    };
    // Destination per (label, family, protocol), allocated before the
    // table that names it is published; looked up once per such triple.
    const ids = new Int32Array(next.labels.length * 4).fill(-1);
    const dest = input.destination as Uint16Array;
    for (let i = 0; i < next.count; i++) {
      const slot = next.labelIndex[i]! * 4 + (next.family[i] === 6 ? 2 : 0) + (next.protocol[i] === IPPROTO_TCP ? 0 : 1);
      let id = ids[slot]!;
      if (id < 0) {
        id = this.ensureDestination(next.label(i), next.family[i] as Family, protocolName(next.protocol[i]!)).id;
        ids[slot] = id;
        referenced.add(id);
      }
      dest[i] = id;
    }
    const serial = (current?.summary.serial ?? 0n) + 1n;
    return { started, input, serial, referenced, diff, capacity: current?.summary.capacityRows ?? MIN_CAPACITY_ROWS, count: next.count };
  }

  /**
   * Publishes the built table (or grows into a new program), then frees the
   * ids it no longer names. Once the switch is made the change is in force,
   * so nothing after it throws: what could not be tidied is said in
   * `warnings` and finished by the next writer (pins) or the next replace
   * (ids).
   */
  private finishReplace(prepared: ReturnType<Dispatcher['prepareReplace']>, built: BuiltTable): ApplyResult {
    const builtAt = performance.now();
    const warnings: string[] = [];
    if (built.rows <= prepared.capacity) publishTable(this.location.dir, this.state.maps.generation, built, prepared.capacity);
    else warnings.push(...this.grow(built));
    const publishedAt = performance.now();
    try {
      // Only now may ids the new table no longer names be reused. After a
      // growth this.state is the reopened one: the handles read before it are closed.
      const destinations = this.destinations();
      for (const d of destinations.all()) {
        if (!prepared.referenced.has(d.id) && this.socketCookie(d.id) === undefined) destinations.release(d.id);
      }
    } catch (err) {
      warnings.push(`the new table is in force; ids it no longer names were not all freed (${(err as Error).message}); the next replace frees them`);
    }
    return {
      serial: prepared.serial,
      bindings: prepared.count,
      ...(prepared.diff ? { added: prepared.diff.added, removed: prepared.diff.removed } : {}),
      tableBytes: built.bytes.length,
      buildMs: builtAt - prepared.started,
      publishMs: publishedAt - builtAt,
      inPlace: false,
      ...(warnings.length ? { warnings } : {}),
    };
  }

  private reopen(): void {
    const fresh = PinnedState.open(this.location);
    this.pinned.close();
    this.pinned = fresh;
    this.mustReopen = false;
    this.live?.close();
    this.live = undefined;
    this.destinationsView?.close();
    this.destinationsView = undefined;
  }

  /**
   * Whether another process replaced the pinned generation map this
   * Dispatcher has a handle on (its growth, a migration to another ABI):
   * writes through the old handle would go where the program no longer
   * reads. Reopening then follows the pins, or fails naming the other ABI.
   */
  private pinsMoved(): boolean {
    let fd: number;
    try {
      fd = native().objGet(path.join(this.location.dir, 'generation'));
    } catch (err) {
      if (isKernelError(err, 'ENOENT')) return true;
      throw err;
    }
    try {
      return native().objInfo(fd, 'map').id !== this.state.maps.generation.info().id;
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * A table larger than the program's capacity needs a new program: the
   * capacity is part of the verified program. Load it against the pinned
   * maps and a new generation map that already holds the table, then switch
   * with BPF_LINK_UPDATE, the one atomic step. The new objects are pinned
   * under *_next names first, so a writer that dies on the way leaves
   * something finishInterruptedGrowth() can complete or discard.
   */
  private grow(built: BuiltTable): string[] {
    const dir = this.location.dir;
    const capacity = capacityFor(built.rows);
    const reuse: Record<string, number> = {};
    for (const name of MAP_NAMES) if (name !== 'generation') reuse[name] = this.state.maps[name].fd;
    const { maps, programs } = loadWithCapacity(defaultObjectPath(), reuse, capacity);
    const owned = [...Object.values(maps), ...Object.values(programs)].map((fd) => new Fd(fd));
    const warnings: string[] = [];
    try {
      const prog = programs[PROGRAM_NAME]!;
      const generation = new BpfMap(maps.generation!, MAPS.generation);
      const table = createTableMap(built, capacity);
      owned.push(table);
      swapTable(generation, table);
      for (const [fd, name] of [[table.fd, 'table'], [generation.fd, 'generation'], [prog, 'program']] as const) {
        fs.rmSync(path.join(dir, `${name}_next`), { force: true });
        native().objPin(fd, path.join(dir, `${name}_next`));
      }
      native().linkUpdate(this.state.link.fd, prog);
      // The switch is made: from here on a failure is a note, not an error.
      try {
        for (const name of ['table', 'generation', 'program']) fs.renameSync(path.join(dir, `${name}_next`), path.join(dir, name));
      } catch (err) {
        // The pins still name the old generation: reopened now, they would too.
        this.mustReopen = true;
        warnings.push(`the new program serves; its pins keep their *_next names (${(err as Error).message}) until the next write completes them`);
      }
    } finally {
      for (const fd of owned) fd.close();
    }
    this.live?.close();
    this.live = undefined;
    if (!this.mustReopen) {
      try {
        this.reopen();
      } catch (err) {
        // Handles on the old generation map would write where the program no longer reads.
        this.mustReopen = true;
        warnings.push(`the new program serves; reopening its pinned state failed (${(err as Error).message}); the next write reopens it`);
      }
    }
    return warnings;
  }

  private mustReopen = false;

  /**
   * Adds one binding, or relabels an existing (protocol, prefix, port).
   * In place when the change fits one direct-table slot (src/trie/patch.ts):
   * sub-millisecond at any table size; otherwise a full replace.
   */
  bind(binding: BindingSpec): ApplyResult & { replaced: string | null } {
    return this.writing(() => {
      const started = performance.now();
      const destinations = this.destinations();
      const d = this.ensureDestination(binding.label, binding.prefix.family, binding.protocol);
      const patched = this.patch(binding, d.id, () => true, started);
      if (patched && patched !== 'refused') return { ...patched.result, replaced: patched.previous === null ? null : (destinations.get(patched.previous)?.label ?? null) };
      const current = this.bindings();
      const at = current.indexOf(binding.protocol, binding.prefix, binding.port);
      const next = current.without(at);
      next.add(binding.label, binding.protocol, binding.prefix, binding.port);
      return { ...this.replaceLocked(next, current), replaced: at < 0 ? null : current.label(at) };
    });
  }

  /** Removes one binding; the label must match what is bound. */
  unbind(binding: BindingSpec): ApplyResult {
    return this.writing(() => {
      const started = performance.now();
      const text = `${binding.label} ${binding.protocol} ${formatPrefix(binding.prefix)} ${binding.port}`;
      const notBound = () => new SwitchyardError('EINVAL_BINDING', `no such binding: ${text}`, { entry: text });
      const destinations = this.destinations();
      let patched: ReturnType<Dispatcher['patch']>;
      const bound = (previous: number | null) => previous !== null && destinations.get(previous)?.label === binding.label;
      patched = this.patch(binding, null, bound, started);
      if (patched === 'refused') throw notBound();
      if (patched) return patched.result;
      const current = this.bindings();
      const at = current.indexOf(binding.protocol, binding.prefix, binding.port);
      if (at < 0 || current.label(at) !== binding.label) throw notBound();
      return this.replaceLocked(current.without(at), current);
    });
  }

  /** Plans binding `binding` in place and drops the plan (nothing is written): the in-place path run once off the clock. */
  rehearse(binding: BindingSpec): void {
    const live = this.liveTable();
    if (!live) return;
    planPatch(live.words, live.capacityRows, { family: binding.prefix.family, protocol: binding.protocol === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP, port: binding.port, addr: binding.prefix.words, prefixLen: binding.prefix.length }, 0);
  }

  /**
   * Binds (destination id) or unbinds (null) in place in the published
   * table, if `accept(previous destination)` agrees; undefined when the
   * change needs a full replace, 'refused' when `accept` said no.
   */
  private patch(binding: BindingSpec, destination: number | null, accept: (previous: number | null) => boolean, started: number) {
    const key = patchKey(binding);
    const live = this.liveTable();
    if (!live) return undefined;
    const table = live.words;
    const plan = planPatch(table, live.capacityRows, key, destination);
    if (plan.kind === 'full') return undefined;
    if (!accept(plan.previous)) return 'refused' as const;
    const planned = performance.now();
    if (plan.kind === 'patch') applyPatch(table, plan);
    const header = readHeader(new DataView(table.buffer, table.byteOffset, table.byteLength))!;
    const changed = plan.kind === 'patch';
    const result: ApplyResult = {
      serial: header.serial,
      bindings: header.bindingCount,
      added: changed && destination !== null ? 1 : 0,
      removed: changed && plan.previous !== null ? 1 : 0,
      tableBytes: live.capacityRows * ROW_BYTES,
      buildMs: planned - started,
      publishMs: performance.now() - planned,
      inPlace: true,
    };
    return { result, previous: plan.previous };
  }

  private live: LiveTable | undefined;

  /** The published table, mapped once while it stays the published one. */
  private liveTable(): LiveTable | undefined {
    if (this.live?.isCurrent(this.state.maps.generation)) return this.live;
    this.live?.close();
    this.live = LiveTable.open(this.location.dir, this.state.maps.generation);
    return this.live;
  }

  /**
   * Registers a socket for `label`; its family and protocol pick the
   * destination. Replaces a previously registered socket of that destination.
   */
  register(label: string, fd: number): { destination: Destination; socket: string; replaced: boolean } {
    return this.writing(() => {
      const info: SocketInfo = native().socketInfo(fd);
      const checked = checkSocket(info, this.location.netnsIno);
      const d = this.ensureDestination(label, checked.family, checked.protocol);
      const replaced = this.socketCookie(d.id) !== undefined;
      const value = Buffer.alloc(8);
      value.writeBigUInt64LE(BigInt(fd));
      this.state.maps.sockets.update(u32Key(d.id), value);
      return { destination: d, socket: describeSocket(info), replaced };
    });
  }

  unregister(label: string, family: Family, protocol: Protocol): { removed: boolean } {
    return this.writing(() => {
      const destinations = this.destinations();
      const d = destinations.find(label, family, protocol);
      if (!d) return { removed: false };
      const removed = this.state.maps.sockets.delete(u32Key(d.id));
      // Free the id if no binding names it any more.
      const current = readCurrentTable(this.location.dir, this.state.maps.generation, true);
      const named = current ? (current.bindings.destination as Uint16Array).includes(d.id) : false;
      if (!named) destinations.release(d.id);
      return { removed };
    });
  }

  /** Runs the loaded program on each query (BPF_PROG_TEST_RUN) and explains the outcome. */
  lookup(queries: Iterable<LookupQuery>): Iterable<LookupAnswer> {
    const program = new ProgramLookup(this.state.program, this.state.maps.trace);
    const destinations = this.destinations();
    const explain = (q: LookupQuery): LookupAnswer => {
      const raw = program.run(q);
      const destination = leafDestination(raw.chosen);
      const d = destination === undefined ? undefined : destinations.get(destination);
      const plen = leafPrefixLen(raw.chosen);
      const exactPort = q.port !== 0 && (raw.exact & LEAF_RESULT_MASK) !== 0 && raw.chosen === raw.exact;
      const binding: Binding | null =
        destination === undefined
          ? null
          : {
              label: d?.label ?? `#${destination}`,
              protocol: q.protocol,
              prefix: `${formatAddress(q.address.family, maskWords(q.address.words, plen))}/${plen}`,
              port: exactPort ? q.port : 0,
            };
      const outcome: LookupAnswer['outcome'] =
        destination === undefined ? 'unbound' : !raw.socketFound ? 'no-socket' : raw.assignError ? 'assign-error' : 'socket';
      const answer: LookupAnswer = {
        protocol: q.protocol,
        address: formatAddress(q.address.family, q.address.words),
        port: q.port,
        binding,
        label: binding?.label ?? null,
        verdict: raw.pass ? 'pass' : 'drop',
        outcome,
        socketCookie: raw.cookie ? raw.cookie.toString() : null,
      };
      if (raw.assignError) answer.assignError = raw.assignError;
      return answer;
    };
    return {
      *[Symbol.iterator]() {
        for (const q of queries) yield explain(q);
      },
    };
  }

  /** Per destination: its label and the BPF program's counters (no table decode: cheap enough for every scrape). */
  destinationCounters(): Array<{ label: string; family: Family; protocol: string; stats: DestinationStats }> {
    const stats = this.state.maps.destination_stats;
    return this.destinations()
      .all()
      .map((d) => ({ label: d.label, family: d.family, protocol: d.protocol, stats: readStats(stats, d.id) }));
  }

  status(): Status {
    const { maps } = this.state;
    const prog = native().objInfo(this.state.program.fd, 'prog');
    const link = native().objInfo(this.state.link.fd, 'link');
    if (link.type !== LINK_TYPE_NETNS || link.attachType !== ATTACH_SK_LOOKUP || prog.type !== PROG_TYPE_SK_LOOKUP) {
      throw new SwitchyardError('EINCOMPATIBLE_STATE', `${this.location.dir}: link or program is not an sk_lookup attachment`);
    }
    const current = readCurrentTable(this.location.dir, maps.generation, true);
    const counts = new Map<number, number>();
    if (current) for (const id of current.bindings.destination as Uint16Array) counts.set(id, (counts.get(id) ?? 0) + 1);
    const destinations = this.destinations();
    const list = destinations.all().map((d): DestinationStatus => {
      const s: DestinationStats = readStats(maps.destination_stats, d.id);
      const cookie = this.socketCookie(d.id);
      return {
        ...d,
        bindings: counts.get(d.id) ?? 0,
        socket: cookie === undefined ? null : cookie.toString(),
        stats: { lookups: s.lookups.toString(), misses: s.misses.toString(), errors: s.errors.toString() },
      };
    });
    return {
      netns: this.location.netnsPath,
      netnsInode: this.location.netnsIno,
      stateDir: this.location.dir,
      program: { id: prog.id, name: prog.name, jited: prog.jited, tag: prog.tag },
      link: { id: link.id, progId: link.progId, netnsInode: link.netnsIno },
      table: current?.summary ?? null,
      destinations: list.sort((a, b) => a.label.localeCompare(b.label) || a.family - b.family || a.protocol.localeCompare(b.protocol)),
    };
  }
}

function toBindingTable(input: TrieInput | undefined, destinations: Destinations): BindingTable {
  const table = new BindingTable(Math.max(16, input?.count ?? 0));
  if (!input) return table;
  for (let i = 0; i < input.count; i++) {
    const id = input.destination[i]!;
    const label = destinations.get(id)?.label ?? `#${id}`;
    const a = input.addr;
    table.add(label, protocolName(input.protocol[i]!), {
      family: input.family[i] as Family,
      words: [a[i * 4]!, a[i * 4 + 1]!, a[i * 4 + 2]!, a[i * 4 + 3]!],
      length: input.prefixLen[i]!,
    }, input.port[i]!);
  }
  return table;
}

