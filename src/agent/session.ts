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
import { type DesiredState, parseDesiredState } from '../desired/state.js';
import type { BindingChange } from '../firewall/incremental.js';
import { SwitchyardError } from '../errors.js';
import { checkGuards, type GuardLimits } from './guards.js';
import type { StateStore } from './store.js';
import { PROTOCOL_VERSION, parseFrame, type Delta, type Frame, type Hello, type NackCode, type Snapshot, type StateId } from '../protocol/messages.js';
import { applyDelta, documentOf, stateDigest } from '../protocol/state.js';

export interface SessionOptions {
  agentId: string;
  agentVersion: string;
  store: StateStore;
  /** Brings the data plane and the firewall to `state` (`changes`: the binding delta, when it is one). Throws when the kernel refuses. */
  apply: (state: DesiredState, changes: BindingChange[] | undefined) => Promise<void>;
  send: (frame: Frame) => void;
  limits?: GuardLimits;
  maxFrameBytes?: number;
  now?: () => number;
}

interface Current extends StateId {
  state: DesiredState;
  ackedAt: number;
}

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
  private readonly now: () => number;

  constructor(private readonly options: SessionOptions) {
    this.now = options.now ?? Date.now;
  }

  /** The state in force (last known good), for status and heartbeats. */
  get applied(): Readonly<Current> | undefined {
    return this.current;
  }

  /**
   * At start: the last known good state from disk, applied again (restart is
   * a no-op when the kernel already has it), before the agent says it is ready.
   */
  async restore(): Promise<void> {
    this.options.store.recoverFromCrash(); // a version that killed us is refused from now on (hello says which)
    const lkg = this.options.store.lastKnownGood();
    if (!lkg) return;
    const state = parseDesiredState(lkg.state, `${this.options.store.dir}/last-known-good.json`);
    await this.options.apply(state, undefined);
    this.current = { epoch: lkg.epoch, version: lkg.version, digest: lkg.digest, state, ackedAt: lkg.acked_at };
  }

  hello(capabilities: string[] = ['delta']): Hello {
    const c = this.current;
    return {
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      agent_id: this.options.agentId,
      agent_version: this.options.agentVersion,
      capabilities,
      have: c ? { epoch: c.epoch, version: c.version, digest: c.digest } : null,
      refused: this.options.store.refused() ?? null,
    };
  }

  heartbeat(): Frame | undefined {
    const c = this.current;
    return c ? { type: 'heartbeat', epoch: c.epoch, version: c.version, digest: c.digest, age_ms: Math.max(0, this.now() - c.ackedAt) } : undefined;
  }

  /** One frame's text from the control plane; pushes are handled one at a time, in order. */
  receive(text: string): Promise<void> {
    const next = this.queue.then(() => this.handle(text));
    this.queue = next.catch(() => {});
    return next;
  }

  private async handle(text: string): Promise<void> {
    let frame: Frame;
    try {
      frame = parseFrame(text, this.options.maxFrameBytes);
    } catch (err) {
      // Name what we can of the push; the control plane logs the reason.
      const id = peekId(text);
      this.options.send({ type: 'nack', epoch: id.epoch, version: id.version, code: /more than the \d+ allowed/.test((err as Error).message) ? 'ETOO_LARGE' : 'EINVALID', message: (err as Error).message, details: [] });
      return;
    }
    if (frame.type === 'up-to-date' || frame.type === 'ack' || frame.type === 'nack' || frame.type === 'heartbeat' || frame.type === 'hello') return;
    try {
      await this.push(frame);
    } catch (err) {
      const r = err instanceof Refusal ? err : new Refusal(err instanceof SwitchyardError && err.code.startsWith('EINVAL') ? 'EINVALID' : 'EAPPLY', (err as Error).message);
      this.options.send({ type: 'nack', epoch: frame.epoch, version: frame.version, code: r.code, message: r.message, details: r.details });
    }
  }

  private async push(frame: Snapshot | Delta): Promise<void> {
    const c = this.current;
    const store = this.options.store;
    if (c && c.epoch === frame.epoch && c.version === frame.version) {
      if (c.digest !== frame.digest) throw new Refusal('EDIGEST', `version ${frame.version} is applied here with digest ${c.digest}, not ${frame.digest}`);
      this.ack(c);
      return;
    }
    if (store.isRefused(frame.epoch, frame.version)) {
      throw new Refusal('EREFUSED', `version ${frame.version} of epoch ${frame.epoch} killed this agent while it was being applied; it is refused`);
    }
    let next: DesiredState;
    let changes: BindingChange[] | undefined;
    if (frame.type === 'snapshot') {
      next = parseDesiredState(frame.state, `snapshot ${frame.version}`);
    } else {
      if (!c || c.epoch !== frame.epoch || c.version !== frame.from_version) {
        throw new Refusal('EGAP', `delta ${frame.from_version} → ${frame.version} of epoch ${frame.epoch} does not start from what this agent has (${c ? `${c.epoch} ${c.version}` : 'nothing'}); send a snapshot`);
      }
      ({ state: next, changes } = applyDelta(c.state, { add: frame.add as never, remove: frame.remove }, `delta ${frame.version}`));
    }
    if (c && c.epoch === frame.epoch && frame.version <= c.version) {
      throw new Refusal('EINVALID', `version ${frame.version} is not newer than the applied ${c.version} of epoch ${frame.epoch}`);
    }
    const digest = stateDigest(next);
    if (digest !== frame.digest) throw new Refusal('EDIGEST', `the pushed state's digest is ${digest}, the push says ${frame.digest}`);
    const override = frame.override !== undefined && frame.override.version === frame.version;
    const findings = checkGuards(c?.state, next, { override, ...(this.options.limits ? { limits: this.options.limits } : {}) });
    if (findings.length > 0) {
      const f = findings[0]!;
      throw new Refusal(f.code, findings.map((x) => x.message).join('; '), findings.flatMap((x) => x.entries));
    }
    store.markApplying({ epoch: frame.epoch, version: frame.version, started_at: this.now() });
    try {
      await this.options.apply(next, changes);
    } catch (err) {
      // The kernel refused: put the last known good back (best effort) and report.
      store.clearApplying();
      if (c) await this.options.apply(c.state, undefined).catch(() => {});
      throw new Refusal('EAPPLY', `applying version ${frame.version} failed: ${(err as Error).message}; the last known good state (${c ? c.version : 'none'}) stays`);
    }
    const applied: Current = { epoch: frame.epoch, version: frame.version, digest, state: next, ackedAt: this.now() };
    store.saveLastKnownGood({ epoch: applied.epoch, version: applied.version, digest, state: documentOf(next), acked_at: applied.ackedAt });
    store.clearApplying();
    this.current = applied;
    this.ack(applied);
  }

  private ack(c: StateId): void {
    this.options.send({ type: 'ack', epoch: c.epoch, version: c.version, digest: c.digest });
  }
}

/** The epoch and version of a frame that did not validate, if they can be read at all. */
function peekId(text: string): { epoch: string; version: number } {
  try {
    const v = JSON.parse(text) as { epoch?: unknown; version?: unknown };
    return { epoch: typeof v.epoch === 'string' ? v.epoch.slice(0, 256) : '', version: typeof v.version === 'number' && Number.isSafeInteger(v.version) && v.version >= 0 ? v.version : 0 };
  } catch {
    return { epoch: '', version: 0 };
  }
}
