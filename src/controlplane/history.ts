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
import type { DesiredState } from '../desired/state.js';
import type { Delta, Frame, Hello, Snapshot } from '../protocol/messages.js';
import { diffStates, documentOf, stateDigest } from '../protocol/state.js';

interface Version {
  version: number;
  digest: string;
  state: DesiredState;
}

export class History {
  readonly epoch: string;
  private readonly log: Version[] = [];

  /** `limit`: how many versions deltas can start from. */
  constructor(
    private readonly limit = 64,
    epoch: string = crypto.randomUUID(),
  ) {
    this.epoch = epoch;
  }

  get current(): Readonly<Version> | undefined {
    return this.log[this.log.length - 1];
  }

  /** Publishes a state: a new version unless it is the current state already. */
  publish(state: DesiredState): { version: number; digest: string; changed: boolean } {
    const digest = stateDigest(state);
    const c = this.current;
    if (c && c.digest === digest) return { version: c.version, digest, changed: false };
    const version = (c?.version ?? 0) + 1;
    this.log.push({ version, digest, state });
    if (this.log.length > this.limit) this.log.shift();
    return { version, digest, changed: true };
  }

  /** What to send an agent, from its hello (undefined: nothing published yet, or only a version it refused). */
  frameFor(hello: Pick<Hello, 'have' | 'refused'>, override?: { version: number; withdrawal: true }): Frame | undefined {
    const c = this.current;
    if (!c) return undefined;
    const refused = hello.refused;
    if (refused && refused.epoch === this.epoch && refused.version === c.version) return undefined;
    const have = hello.have;
    if (have && have.epoch === this.epoch && have.version === c.version && have.digest === c.digest) {
      return { type: 'up-to-date', epoch: this.epoch, version: c.version };
    }
    const base = have && have.epoch === this.epoch ? this.log.find((v) => v.version === have.version && v.digest === have.digest) : undefined;
    const withOverride = override && override.version === c.version ? { override } : {};
    if (base && base.version < c.version) {
      const delta: Delta = { type: 'delta', epoch: this.epoch, version: c.version, from_version: base.version, digest: c.digest, ...diffStates(base.state, c.state), ...withOverride };
      // A delta bigger than the state itself is not worth it.
      if (delta.add.length + delta.remove.length < c.state.bindings.count) return delta;
    }
    const snapshot: Snapshot = { type: 'snapshot', epoch: this.epoch, version: c.version, digest: c.digest, state: documentOf(c.state), ...withOverride };
    return snapshot;
  }
}
