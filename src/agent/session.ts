/**
 * The agent's side of the protocol, without the transport: frames in,
 * frames out, one push at a time. For each snapshot or delta: parse and
 * validate, refuse a version that killed the agent before (EREFUSED), a
 * delta not on top of what it has (EGAP: the control plane then sends a
 * snapshot), run the guards on the planned change (before any syscall),
 * mark, apply through the injected `apply` (dispatcher and firewall),
 * check the digest, persist the last known good state, clear the mark, and
 * only then ACK. Any refusal is a NACK naming the entries, and the last
 * known good state stays in force. A push of the version already applied is
 * acknowledged again without applying (idempotent redelivery).
 */
import { parseDesiredState, policiesText } from '../desired/state.js';
import type { BindingChange } from '../firewall/incremental.js';
import { SwitchyardError } from '../errors.js';
import { checkGuardsSliced, type GuardLimits } from '../protocol/guards.js';
import type { StateStore } from './store.js';
import { PROTOCOL_VERSION, parseFrame, type Delta, type Frame, type Hello, type Nack, type NackCode, type Snapshot, type StateId } from '../protocol/messages.js';
import { IndexedState, documentOf, parseDelta, parsedDiffSteps, type AppliedDelta } from '../protocol/state.js';
import { runSliced } from '../slice.js';
import { DECODE_OFF_THREAD_BYTES, type Decoded, type PushDecoder } from './decoder.js';
import { SNAPSHOT_GZIP, gunzipFrame, isGzip } from '../protocol/compress.js';

export interface SessionOptions {
  agentId: string;
  agentVersion: string;
  store: StateStore;
  /** Brings the data plane and the firewall to `state` (`changes`: the binding delta, when it is one). Throws when the kernel refuses. */
  apply: (next: IndexedState, changes: BindingChange[] | undefined) => Promise<void>;
  /** Bindings overridden locally, for heartbeats. */
  localOverrides?: () => number;
  /** The data plane's miss and error totals, for heartbeats (a rollout watches them). */
  counters?: () => { misses: number; errors: number };
  /** Parses and indexes large frames off the event loop (src/agent/decoder.ts); without it, everything is parsed here. */
  decoder?: PushDecoder;
  /** Rollout labels, sent in hello. */
  labels?: Record<string, string>;
  send: (frame: Frame) => void;
  limits?: GuardLimits;
  maxFrameBytes?: number;
  now?: () => number;
  /** One call per phase of each push (validated, guarded, applied, persisted), with its duration: the agent logs them. */
  phase?: (phase: 'validated' | 'guarded' | 'applied' | 'persisted', fields: { version: number; type: string; ms: number; [k: string]: unknown }) => void;
  /** Before each frame is handled (the agent starts measuring its event loop there). */
  receiving?: () => void;
  /** After each push: acknowledged (code null) or refused, and how long it took from receipt. */
  done?: (result: { type: 'snapshot' | 'delta' | 'invalid'; ms: number; code: NackCode | null }) => void;
  /** Deltas logged before the snapshot file is rewritten (default COMPACT_AFTER_DELTAS). */
  compactAfterDeltas?: number;
}

interface Current extends StateId {
  indexed: IndexedState;
  ackedAt: number;
}

/** A snapshot that differs from the state in force by at most max(this, 10 %) bindings is made as a delta. */
const SNAPSHOT_AS_DELTA_MIN = 64;

/** Deltas logged on top of the snapshot file before it is rewritten (restart replays at most this many). */
const COMPACT_AFTER_DELTAS = 256;

class Refusal extends Error {
  constructor(
    readonly code: NackCode,
    message: string,
    readonly details: string[] = [],
  ) {
    super(message);
  }
}

export class AgentSession {
  private current: Current | undefined;
  private queue: Promise<void> = Promise.resolve();
  private loggedDeltas = 0;
  private readonly now: () => number;

  constructor(private readonly options: SessionOptions) {
    this.now = options.now ?? Date.now;
  }

  /**
   * A push is being made: the state in force is changed in place while it
   * is (a delta, in slices), so what reads it for the kernel (the firewall
   * resync) waits for the next turn rather than take a half-made state.
   */
  get pushing(): boolean {
    return this.inPush;
  }

  private inPush = false;

  /** The state in force (last known good), for status and heartbeats. */
  get applied(): Readonly<Current> | undefined {
    return this.current;
  }

  /**
   * At start: the last known good state from disk, applied again (restart is
   * a no-op when the kernel already has it), before the agent says it is ready.
   */
  async restore(): Promise<void> {
    const store = this.options.store;
    store.recoverFromCrash(); // a version that killed us is refused from now on (hello says which)
    const lkg = store.lastKnownGood();
    if (!lkg) return;
    let indexed = IndexedState.of(parseDesiredState(lkg.state, `${store.dir}/last-known-good.json`));
    let id = { epoch: lkg.epoch, version: lkg.version, ackedAt: lkg.acked_at };
    const deltas = store.deltas();
    for (const d of deltas) {
      if (d.epoch !== id.epoch || d.from_version !== id.version) continue; // from before the snapshot was rewritten
      const made = indexed.applyDelta({ add: d.add as never, remove: d.remove }, `${store.dir}/deltas.jsonl: version ${d.version}`);
      if (indexed.digest !== d.digest) {
        made.undo(); // cannot happen unless the file was edited: keep what chains
        break;
      }
      id = { epoch: d.epoch, version: d.version, ackedAt: d.acked_at };
    }
    this.loggedDeltas = deltas.length;
    await this.options.apply(indexed, undefined);
    this.current = { epoch: id.epoch, version: id.version, digest: indexed.digest, indexed, ackedAt: id.ackedAt };
  }

  hello(capabilities: string[] = ['delta', SNAPSHOT_GZIP]): Hello {
    const c = this.current;
    return {
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      agent_id: this.options.agentId,
      agent_version: this.options.agentVersion,
      capabilities,
      have: c ? { epoch: c.epoch, version: c.version, digest: c.digest } : null,
      refused: this.options.store.refused() ?? null,
      ...(this.options.labels && Object.keys(this.options.labels).length > 0 ? { labels: this.options.labels } : {}),
    };
  }

  heartbeat(): Frame | undefined {
    const c = this.current;
    const local = this.options.localOverrides?.() ?? 0;
    if (!c) return undefined;
    let counters: { misses: number; errors: number } | undefined;
    try {
      counters = this.options.counters?.();
    } catch {
      // the counters are unreadable just now: the heartbeat goes without them
    }
    return { type: 'heartbeat', epoch: c.epoch, version: c.version, digest: c.digest, age_ms: Math.max(0, this.now() - c.ackedAt), ...(local > 0 ? { local_overrides: local } : {}), ...(counters ?? {}) };
  }

  /** Runs `fn` between pushes (local changes must not interleave with a push being made in place). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn);
    this.queue = next.then(
      () => {},
      () => {},
    );
    return next;
  }

  /** One frame's text from the control plane; pushes are handled one at a time, in order. */
  receive(text: string | Buffer): Promise<void> {
    const next = this.queue.then(() => this.handle(text));
    this.queue = next.catch(() => {});
    return next;
  }

  private async handle(input: string | Buffer): Promise<void> {
    this.options.receiving?.();
    const received = performance.now(); // `done` reports from here: decoding is part of what a push costs
    let frame: Frame;
    let text: string | Buffer = input;
    let decoded: Exclude<Decoded, { kind: 'frame' }> | undefined;
    try {
      const decoder = this.options.decoder;
      if (decoder && typeof input !== 'string' && (input.length >= DECODE_OFF_THREAD_BYTES || isGzip(input))) {
        // Parsed and indexed on the decoder's thread, the event loop free meanwhile.
        const d = await decoder.decode(input, this.options.maxFrameBytes);
        text = d.bytes;
        if (d.kind === 'frame') frame = d.frame;
        else {
          decoded = d;
          // What push() reads of the frame itself; the content is in `decoded`.
          frame = d.frame.type === 'snapshot' ? { ...d.frame, state: null } : { ...(d.frame as Omit<Delta, 'add' | 'remove'>), add: [], remove: [] };
        }
      } else {
        // A compressed snapshot without a decoder's thread: inflated here (and kept as its text).
        if (typeof input !== 'string' && isGzip(input)) text = gunzipFrame(input, this.options.maxFrameBytes);
        frame = parseFrame(typeof text === 'string' ? text : text.toString('utf8'), this.options.maxFrameBytes);
      }
    } catch (err) {
      // Name what we can of the push; the control plane logs the reason.
      const id = typeof input === 'string' || (input.length < DECODE_OFF_THREAD_BYTES && !isGzip(input)) ? peekId(input.toString()) : { epoch: null, version: null };
      // Not a SwitchyardError: the decoder's thread failed, not the frame (transient: EAPPLY).
      const code = !(err instanceof SwitchyardError) ? 'EAPPLY' : /more than the \d+ allowed/.test(err.message) ? 'ETOO_LARGE' : 'EINVALID';
      this.options.send(nack(id.epoch, id.version, code, (err as Error).message, []));
      this.options.done?.({ type: 'invalid', ms: 0, code });
      return;
    }
    if (frame.type === 'up-to-date' || frame.type === 'ack' || frame.type === 'nack' || frame.type === 'heartbeat' || frame.type === 'hello') return;
    const started = received;
    const decodeMs = performance.now() - received;
    await nextTurn(); // the parse was this turn's work
    this.inPush = true;
    try {
      await this.push(frame, text, decoded, decodeMs);
      this.options.done?.({ type: frame.type, ms: performance.now() - started, code: null });
    } catch (err) {
      const r = err instanceof Refusal ? err : new Refusal(err instanceof SwitchyardError && err.code.startsWith('EINVAL') ? 'EINVALID' : 'EAPPLY', (err as Error).message);
      this.options.send(nack(frame.epoch, frame.version, r.code, r.message, r.details));
      this.options.done?.({ type: frame.type, ms: performance.now() - started, code: r.code });
    } finally {
      this.inPush = false;
    }
  }

  /** `decoded`: the snapshot's state as the decoder's thread indexed it (or why it is invalid). */
  private async push(frame: Snapshot | Delta, text: string | Buffer, decoded: Exclude<Decoded, { kind: 'frame' }> | undefined, decodeMs: number): Promise<void> {
    const c = this.current;
    const store = this.options.store;
    let clock = performance.now();
    const phase = (name: Parameters<NonNullable<SessionOptions['phase']>>[0], fields: Record<string, unknown> = {}) => {
      const now = performance.now();
      this.options.phase?.(name, { version: frame.version, type: frame.type, ms: Math.round((now - clock) * 10) / 10, ...fields });
      clock = now;
    };
    if (c && c.epoch === frame.epoch && c.version === frame.version) {
      if (c.digest !== frame.digest) throw new Refusal('EDIGEST', `version ${frame.version} is applied here with digest ${c.digest}, not ${frame.digest}`);
      this.ack(c);
      return;
    }
    if (store.isRefused(frame.epoch, frame.version)) {
      throw new Refusal('EREFUSED', `version ${frame.version} of epoch ${frame.epoch} killed this agent while it was being applied; it is refused`);
    }
    if (c && c.epoch === frame.epoch && frame.version <= c.version) {
      throw new Refusal('EINVALID', `version ${frame.version} is not newer than the applied ${c.version} of epoch ${frame.epoch}`);
    }
    // A snapshot is a new state; a delta is made in place on the current one
    // (O(change), not O(bindings)) and undone if anything below refuses it.
    let next: IndexedState;
    let made: AppliedDelta | undefined;
    if (frame.type === 'snapshot') {
      if (decoded?.kind === 'invalid') throw decoded.error;
      next = decoded?.kind === 'snapshot' ? decoded.indexed : IndexedState.of(parseDesiredState(frame.state, `snapshot ${frame.version}`));
      // A snapshot close to what is in force (a control plane that restarted,
      // an agent that reconnects) is made as the delta between them: an
      // unchanged state costs no kernel write at all.
      if (c && policiesText(c.indexed.state) === policiesText(next.state)) {
        const delta = await runSliced(parsedDiffSteps(c.indexed, next, Math.max(SNAPSHOT_AS_DELTA_MIN, c.indexed.bindings.count / 10)));
        if (delta) {
          made = await c.indexed.applyParsedSliced(delta, `snapshot ${frame.version} (as a delta)`);
          next = c.indexed;
        }
      }
    } else {
      if (!c || c.epoch !== frame.epoch || c.version !== frame.from_version) {
        throw new Refusal('EGAP', `delta ${frame.from_version} → ${frame.version} of epoch ${frame.epoch} does not start from what this agent has (${c ? `${c.epoch} ${c.version}` : 'nothing'}); send a snapshot`);
      }
      if (decoded?.kind === 'invalid') throw decoded.error;
      const source = `delta ${frame.version}`;
      made = await c.indexed.applyParsedSliced(decoded?.kind === 'delta' ? decoded.parsed : parseDelta({ add: frame.add as never, remove: frame.remove }, source), source);
      next = c.indexed;
    }
    const override = frame.override !== undefined && frame.override.version === frame.version;
    let digest: string;
    let changes: BindingChange[] | undefined;
    try {
      phase('validated', { bindings: next.bindings.count, changes: made?.changeCount ?? null, decodeMs: Math.round(decodeMs) });
      await nextTurn();
      await made?.prepareChanges();
      changes = made?.changes;
      digest = next.digest;
      if (digest !== frame.digest) throw new Refusal('EDIGEST', `the pushed state's digest is ${digest}, the push says ${frame.digest}`);
      const findings = await checkGuardsSliced(made ?? c?.indexed, next, { override, ...(this.options.limits ? { limits: this.options.limits } : {}) });
      if (findings.length > 0) {
        const f = findings[0]!;
        throw new Refusal(f.code, findings.map((x) => x.message).join('; '), findings.flatMap((x) => x.entries));
      }
    } catch (err) {
      made?.undo();
      throw err;
    }
    phase('guarded', { override });
    await nextTurn();
    store.markApplying({ epoch: frame.epoch, version: frame.version, started_at: this.now() });
    try {
      await this.options.apply(next, changes);
    } catch (err) {
      // The kernel refused: put the last known good back (best effort) and report.
      // With none (a first state), the kernel goes back to no bindings: the
      // dispatcher may hold what was half applied, while status says nothing is.
      made?.undo();
      store.clearApplying();
      await this.options.apply(c ? c.indexed : emptyState(), undefined).catch(() => {});
      throw new Refusal('EAPPLY', `applying version ${frame.version} failed: ${(err as Error).message}; the last known good state (${c ? c.version : 'none'}) stays${c ? '' : '; the kernel was put back to no bindings'}`);
    }
    phase('applied');
    const applied: Current = { epoch: frame.epoch, version: frame.version, digest, indexed: next, ackedAt: this.now() };
    try {
      if (frame.type === 'snapshot') {
        await store.saveSnapshotFrame(text, applied.ackedAt);
        this.loggedDeltas = 0;
      } else {
        await store.appendDeltaFrame(text, applied.ackedAt);
        this.loggedDeltas++;
      }
      store.clearApplying();
    } catch (err) {
      // Not persisted (a full disk): acknowledging it would leave a restart
      // with another state than the kernel's, so the kernel goes back to the
      // last known good (nothing, on a first state) and the push is refused.
      made?.undo();
      try {
        store.clearApplying();
      } catch {
        // the marker stays: at restart the version is refused, which is right too
      }
      await this.options.apply(c ? c.indexed : emptyState(), undefined).catch(() => {});
      throw new Refusal('EAPPLY', `version ${frame.version} was applied but could not be persisted (${(err as Error).message}); the last known good state (${c ? c.version : 'none'}) is put back`);
    }
    phase('persisted', { deltasLogged: this.loggedDeltas });
    this.current = applied;
    this.ack(applied);
    if (this.loggedDeltas >= (this.options.compactAfterDeltas ?? COMPACT_AFTER_DELTAS)) {
      // After the ACK, before the next push: the log folded into a new snapshot file.
      this.queue = this.queue.then(() => this.compact()).catch(() => {}); // a failed rewrite is tried again after the next delta
    }
  }

  private async compact(): Promise<void> {
    const c = this.current;
    if (!c) return;
    await this.options.store.saveLastKnownGood({ epoch: c.epoch, version: c.version, digest: c.digest, state: documentOf(c.indexed.state), acked_at: c.ackedAt });
    this.loggedDeltas = 0;
  }

  private ack(c: StateId): void {
    this.options.send({ type: 'ack', epoch: c.epoch, version: c.version, digest: c.digest });
  }
}

/** Lets the event loop run what is due (heartbeats, pings, the watchdog) between a push's phases. */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** What the kernel holds before any state was accepted. */
const emptyState = () => IndexedState.of(parseDesiredState({ bindings: [] }, 'no state'));

/**
 * The epoch and version of a frame that did not validate, each null when it
 * cannot be read (the peer's parser takes a NACK of nothing it can name, and
 * refuses a made-up empty epoch).
 */
function peekId(text: string): { epoch: string | null; version: number | null } {
  try {
    const v = JSON.parse(text) as { epoch?: unknown; version?: unknown };
    if (typeof v !== 'object' || v === null) return { epoch: null, version: null };
    const epoch = Object.hasOwn(v, 'epoch') && typeof v.epoch === 'string' && v.epoch.length > 0 && v.epoch.length <= 256 ? v.epoch : null;
    const version = Object.hasOwn(v, 'version') && typeof v.version === 'number' && Number.isSafeInteger(v.version) && v.version >= 0 ? v.version : null;
    return { epoch, version };
  } catch {
    return { epoch: null, version: null };
  }
}

/** Kept far below the control plane's 64 KiB frame limit: a tool's stderr in a message is cut, not the connection. */
const NACK_MESSAGE_MAX = 4096;
const NACK_DETAILS_MAX = 20;
const NACK_DETAIL_MAX = 256;

function nack(epoch: string | null, version: number | null, code: NackCode, message: string, details: string[]): Nack {
  const cut = (text: string, max: number) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);
  const shown = details.slice(0, NACK_DETAILS_MAX).map((d) => cut(d, NACK_DETAIL_MAX));
  if (details.length > NACK_DETAILS_MAX) shown.push(`… and ${details.length - NACK_DETAILS_MAX} more`);
  return { type: 'nack', epoch, version, code, message: cut(message, NACK_MESSAGE_MAX), details: shown };
}
