/**
 * The control plane's versions: each published state gets the next version
 * of the epoch, and a bounded log keeps the recent ones so an agent that is
 * a few versions behind gets a delta instead of the whole state. What to
 * send an agent follows from what its hello says it has:
 *   - the current version with the current digest: up-to-date;
 *   - an older version of this epoch still in the log: a delta from it;
 *   - anything else (another epoch, compacted away, a digest that does not
 *     match, nothing at all): a snapshot.
 * A version the agent refused (it died applying it) is never pushed to it
 * again as is; it gets the next version when there is one. Pure.
 */
import crypto from 'node:crypto';
import { policiesText, type DesiredState } from '../desired/state.js';
import type { Delta, Frame, Hello, Snapshot } from '../protocol/messages.js';
import { IndexedState, documentOf, indexedCopy, stateJson, type BindingKey, type StateDelta } from '../protocol/state.js';
import type { Binding } from '../bindings/binding.js';

interface Version {
  version: number;
  digest: string;
  /** The change from the version before, in canonical spelling; undefined when services or HTTPS-only ranges changed too (snapshot only). */
  delta: StateDelta | undefined;
}

/** Versions kept for deltas hold at most this many binding changes in all (memory stays bounded). */
const MAX_LOGGED_CHANGES = 1_000_000;

const keyText = (b: BindingKey) => `${b.protocol} ${b.prefix} ${b.port}`;

/**
 * The net delta of several consecutive changes: a key removed then added
 * again is sent as removed and added (a relabel, or the same binding); a
 * key added then removed is not sent at all.
 */
function compose(steps: StateDelta[]): StateDelta {
  const net = new Map<string, { removed?: BindingKey; added?: Binding }>();
  // Within a step removals come first (a relabel is a removal and an addition of the key).
  for (const step of steps) {
    for (const key of step.remove) {
      const k = keyText(key);
      const e = net.get(k);
      if (!e) net.set(k, { removed: key });
      else if (e.removed) delete e.added;
      else net.delete(k); // added within the window, gone again: nothing to send
    }
    for (const binding of step.add) net.set(keyText(binding), { ...net.get(keyText(binding)), added: binding });
  }
  const add: Binding[] = [];
  const remove: BindingKey[] = [];
  for (const e of net.values()) {
    if (e.removed) remove.push(e.removed);
    if (e.added) add.push(e.added);
  }
  return { add, remove };
}

/** A version worked out by History.plan(), not yet published. */
export interface PlannedVersion {
  indexed: IndexedState;
  version: number;
  digest: string;
  delta: StateDelta | undefined;
  changed: boolean;
  /** The version current when it was planned. */
  after: number;
}

export class History {
  readonly epoch: string;
  private readonly log: Version[] = [];
  private live: IndexedState | undefined;
  /** States of earlier versions a rollout stage is still to have (by version). */
  private readonly retained = new Map<number, IndexedState>();
  /** The versions to keep when the state in force changes (the rollout's: Rollout.versions()). */
  retainFor: ReadonlySet<number> = new Set();
  private snapshotDoc: { version: number; doc: unknown } | undefined;

  /** `limit`: how many versions deltas can start from. */
  constructor(
    private readonly limit = 64,
    epoch: string = crypto.randomUUID(),
  ) {
    this.epoch = epoch;
  }

  /** The state in force, indexed (read it, do not change it). */
  get indexed(): IndexedState | undefined {
    return this.live;
  }

  get current(): (Readonly<Version> & { state: DesiredState }) | undefined {
    const v = this.log[this.log.length - 1];
    return v && this.live ? { ...v, state: this.live.state } : undefined;
  }

  /** Publishes a whole state: a new version unless it is the current state already. */
  publish(given: DesiredState | IndexedState): { version: number; digest: string; changed: boolean } {
    return this.commit(this.plan(given));
  }

  /**
   * What publishing `given` would make, without publishing it: the next
   * version, its digest and its delta from the current one (undefined when
   * services or HTTPS-only ranges change too). commit() publishes it, as
   * long as nothing was published in between.
   */
  plan(given: DesiredState | IndexedState): PlannedVersion {
    const next = given instanceof IndexedState ? given : IndexedState.of(given);
    const live = this.live;
    const current = this.log[this.log.length - 1]?.version ?? 0;
    if (live && live.digest === next.digest) return { indexed: next, version: current, digest: next.digest, delta: undefined, changed: false, after: current };
    const delta = live && policiesText(live.state) === policiesText(next.state) ? live.diffTo(next) : undefined;
    return { indexed: next, version: current + 1, digest: next.digest, delta, changed: true, after: current };
  }

  commit(planned: PlannedVersion): { version: number; digest: string; changed: boolean } {
    const current = this.log[this.log.length - 1]?.version ?? 0;
    if (planned.after !== current) throw new Error(`version ${planned.version} was planned after version ${planned.after}, but version ${current} is current`);
    if (!planned.changed) return { version: planned.version, digest: planned.digest, changed: false };
    this.keepCurrent(false);
    return this.push(planned.indexed, planned.delta);
  }

  /**
   * The change a delta makes on top of the current version, worked out and
   * undone (nothing visible changes): validated (a bad entry throws, naming
   * it), with the digest it leads to. publishPlannedDelta() makes it.
   */
  planDelta(delta: StateDelta, source = 'delta'): { digest: string; changed: boolean; delta: StateDelta; after: number } {
    if (!this.live) throw new Error('nothing published yet: publish a whole state first');
    const live = this.live;
    const before = live.digest;
    const made = live.applyDelta(delta, source);
    const digest = live.digest;
    made.undo();
    const key = ({ protocol, prefix, port }: BindingKey): BindingKey => ({ protocol, prefix, port });
    const net = { remove: made.changes.filter((c) => c.removed).map((c) => key(c.binding)), add: made.changes.filter((c) => !c.removed).map((c) => c.binding) };
    return { digest, changed: digest !== before, delta: net, after: this.log[this.log.length - 1]!.version };
  }

  /**
   * Rebuilds the history a store kept: the versions of `epoch` (the last
   * `limit` for deltas), the state in force, and earlier states a rollout
   * stage is still to have.
   */
  static restore(
    limit: number,
    epoch: string,
    versions: ReadonlyArray<{ version: number; digest: string; delta: StateDelta | null }>,
    live: IndexedState | undefined,
    retained: ReadonlyMap<number, IndexedState>,
  ): History {
    const h = new History(limit, epoch);
    for (const v of versions.slice(-limit)) h.log.push({ version: v.version, digest: v.digest, delta: v.delta ?? undefined });
    h.live = live;
    for (const [version, state] of retained) h.retained.set(version, state);
    return h;
  }

  /**
   * Publishes a change of bindings on top of the current version, in time
   * proportional to the change (the service-bindings path). The delta is
   * validated against the current state: a bad entry is an error naming it,
   * and nothing is published.
   */
  publishDelta(delta: StateDelta, source = 'delta'): { version: number; digest: string; changed: boolean } {
    if (!this.live) throw new Error('nothing published yet: publish a whole state first');
    const live = this.live;
    const before = live.digest;
    this.keepCurrent(true);
    const made = live.applyDelta(delta, source);
    if (live.digest === before) {
      made.undo(); // nothing changed (e.g. a binding removed and added back as it was)
      return { version: this.log[this.log.length - 1]!.version, digest: before, changed: false };
    }
    this.snapshotDoc = undefined;
    const key = ({ protocol, prefix, port }: BindingKey): BindingKey => ({ protocol, prefix, port });
    return this.push(live, { remove: made.changes.filter((c) => c.removed).map((c) => key(c.binding)), add: made.changes.filter((c) => !c.removed).map((c) => c.binding) });
  }

  /** Before the state in force changes: kept if a stage is still to have it (copied when it is about to change in place). */
  private keepCurrent(inPlace: boolean): void {
    const c = this.log[this.log.length - 1];
    if (!c || !this.live || !this.retainFor.has(c.version) || this.retained.has(c.version)) return;
    this.retained.set(c.version, inPlace ? indexedCopy(this.live.state) : this.live);
  }

  /** Drops the kept states no stage is to have any more. */
  prune(): void {
    for (const v of this.retained.keys()) if (!this.retainFor.has(v)) this.retained.delete(v);
  }

  private push(next: IndexedState, delta: StateDelta | undefined): { version: number; digest: string; changed: true } {
    const version = (this.log[this.log.length - 1]?.version ?? 0) + 1;
    this.live = next;
    this.log.push({ version, digest: next.digest, delta });
    const size = (v: Version) => (v.delta ? v.delta.add.length + v.delta.remove.length : 0);
    let logged = 0;
    for (const v of this.log) logged += size(v);
    while (this.log.length > this.limit || (this.log.length > 1 && logged > MAX_LOGGED_CHANGES)) logged -= size(this.log.shift()!);
    return { version, digest: next.digest, changed: true };
  }

  /**
   * What to send an agent, from its hello (undefined: nothing published yet,
   * or only a version it refused): the version in force, or `target`, an
   * earlier one its rollout stage is still to have.
   */
  frameFor(hello: Pick<Hello, 'have' | 'refused'>, override?: { version: number; withdrawal: true }, target?: number): Frame | undefined {
    const latest = this.log[this.log.length - 1];
    if (!latest || !this.live) return undefined;
    const older = target !== undefined && target !== latest.version ? this.retained.get(target) : undefined;
    const source = older ?? this.live;
    const c = older ? (this.log.find((v) => v.version === target) ?? { version: target!, digest: older.digest, delta: undefined }) : latest;
    const refused = hello.refused;
    if (refused && refused.epoch === this.epoch && refused.version === c.version) return undefined;
    const have = hello.have;
    if (have && have.epoch === this.epoch && have.version === c.version && have.digest === c.digest) {
      return { type: 'up-to-date', epoch: this.epoch, version: c.version };
    }
    const at = have && have.epoch === this.epoch ? this.log.findIndex((v) => v.version === have.version && v.digest === have.digest) : -1;
    const until = this.log.findIndex((v) => v.version === c.version);
    const withOverride = override && override.version === c.version ? { override } : {};
    const steps = at >= 0 && until > at ? this.log.slice(at + 1, until + 1).map((v) => v.delta) : [];
    if (steps.length > 0 && steps.every((x) => x !== undefined)) {
      const delta: Delta = { type: 'delta', epoch: this.epoch, version: c.version, from_version: have!.version, digest: c.digest, ...compose(steps as StateDelta[]), ...withOverride };
      // A delta bigger than the state itself is not worth it.
      if (delta.add.length + delta.remove.length < source.bindings.count) return delta;
    }
    // The document only when someone reads it (the server sends snapshotText instead).
    const state = (): unknown => {
      if (older) return documentOf(older.state);
      if (this.snapshotDoc?.version !== c.version) this.snapshotDoc = { version: c.version, doc: documentOf(this.live!.state) };
      return this.snapshotDoc.doc;
    };
    const snapshot = { type: 'snapshot', epoch: this.epoch, version: c.version, digest: c.digest, ...withOverride } as Snapshot;
    Object.defineProperty(snapshot, 'state', { get: state, enumerable: true });
    return snapshot;
  }

  /** A snapshot frame's wire text, the state written straight from the columns. */
  snapshotText(frame: Snapshot): string {
    const head = JSON.stringify({ type: 'snapshot', epoch: frame.epoch, version: frame.version, digest: frame.digest, ...(frame.override ? { override: frame.override } : {}) });
    const source = frame.version === this.log[this.log.length - 1]?.version ? this.live : this.retained.get(frame.version);
    if (!source) return JSON.stringify(frame);
    return `${head.slice(0, -1)},"state":${stateJson(source.state)}}`;
  }
}
