/**
 * The publisher: what the state file and the API propose, judged under the
 * publishing policy (policy.ts, on a thread of its own: judge-thread.ts),
 * then published, held for an operator's confirmation, or refused; and the
 * operator's confirmations. Every step runs in turn (Ledger.serial) and is
 * durable in the state file and the store (ledger.ts) before any agent can
 * see it.
 *
 * It does not import the transport (transport.ts, agent-sessions.ts): it
 * tells its owner to push (PublisherHooks).
 */
import { judgeOffThread } from './judge-thread.js';
import type { Judged } from './policy.js';
import { UnsavedChange } from './statefile.js';
import { documentOf, indexedCopy, stateJson, type IndexedState, type StateDelta } from '../protocol/state.js';
import type { Finding } from '../verify/verify.js';
import type { GuardFinding } from '../protocol/guards.js';
import type { DesiredState } from '../desired/state.js';
import type { AuditEntry, StoredVersion } from './store/store.js';
import { storesDocument } from './store/replay.js';
import { Ledger, brief, type Brief, type Publication } from './ledger.js';

export { type Brief, type Publication, type PublisherHooks, type PublisherOptions } from './ledger.js';

export type Proposed =
  | { outcome: 'published'; ms: number; version: number; summary: string[]; warnings: Finding[]; judged: Judged }
  | { outcome: 'unchanged'; ms: number; version: number }
  | { outcome: 'held'; ms: number; version: number; withdrawal: GuardFinding; summary: string[] }
  | { outcome: 'refused'; ms: number; findings: Finding[]; guards: GuardFinding[] }
  /** The same request (X-Request-Id and digest) was made before: what was recorded of it, nothing made again. */
  | { outcome: 'replayed'; ms: number; earlier: AuditEntry };

export class Publisher extends Ledger {
  /** Publishes a validated state; `override` lets this version withdraw beyond the agents' budget. */
  publish(state: DesiredState | IndexedState, options: { override?: boolean; source?: string; actor?: string } = {}): Promise<{ version: number; changed: boolean }> {
    return this.serial(async () => {
      this.assertLeader();
      const source = options.source ?? 'publish';
      return this.commitAndPublish(this.history.plan(state), { source, actor: options.actor ?? source, summary: [], ...(options.override ? { override: true } : {}) });
    });
  }

  /**
   * A new desired state under the publishing policy (policy.ts): verified,
   * compared with the current version, then published, held for an
   * operator's confirmation (a withdrawal over budget), or refused. What
   * happened is kept for GET /status, in the store when there is one, with
   * an audit entry.
   *
   * `save` (a change from the API): judged first without publishing
   * anything, then saved durably in the state file and the store, then
   * published — no agent sees a change that is not saved. One that cannot
   * be saved throws UnsavedChange and changes nothing here (the state file
   * is put back when the store failed after it). A refused change is not
   * saved in the state file; nor is a held one: the file keeps the state in
   * force (a restart publishes what the agents have), and the held state
   * is saved when it is confirmed, before it goes out.
   */
  propose(
    given: DesiredState | IndexedState | (() => DesiredState | IndexedState),
    source: string,
    options: { save?: boolean; actor?: string; remote?: string | null; requestId?: string | null; request?: string; action?: string } = {},
  ): Promise<Proposed> {
    return this.serial(async () => {
      this.assertLeader();
      const actor = options.actor ?? source;
      // A retry of a request already answered (its answer lost, say) is answered
      // from the record, before its edit is made again on the state as it is now.
      if (options.requestId && options.request && this.options.store) {
        let earlier: AuditEntry | undefined;
        try {
          earlier = await this.options.store.findRequest(actor, options.requestId);
        } catch (err) {
          throw this.unsaved(source, err);
        }
        if (earlier) return { outcome: 'replayed', ms: 0, earlier };
      }
      // A function is called in this step's turn: it edits the state in force as it is then.
      const state = typeof given === 'function' ? given() : given;
      const live = this.history.indexed;
      const started = performance.now();
      const j = await judgeOffThread(live, state, this.options.policy);
      const ms = Math.round(performance.now() - started);
      const at = Date.now();
      const audit = (outcome: string, version: number | null, summary: string[]): AuditEntry => ({
        at,
        actor,
        remote: options.remote ?? null,
        requestId: options.requestId ?? null,
        action: options.action ?? source,
        outcome,
        version,
        summary,
        request: options.request ?? null,
      });
      if (j.verdict === 'refuse') {
        const before = this.publication.refused;
        this.publication.refused = { at, source, findings: j.findings.map(brief), guards: j.guards };
        const lines = [...j.findings.map((f) => `${f.code} ${f.message}`), ...j.guards.map((g) => `${g.code} ${g.message}`)].slice(0, 20);
        try {
          await this.recordOrThrow(source, audit('refused', null, lines));
        } catch (err) {
          this.publication.refused = before;
          throw err;
        }
        return { outcome: 'refused', ms, findings: j.findings, guards: j.guards };
      }
      if (live && live.digest === j.indexed.digest) {
        // Back to what is in force: nothing waits any more.
        const before = [this.held, this.publication.held] as const;
        this.held = undefined;
        this.publication.held = null;
        try {
          await this.recordOrThrow(source, audit('unchanged', this.history.current!.version, []));
        } catch (err) {
          [this.held, this.publication.held] = before;
          throw err;
        }
        return { outcome: 'unchanged', ms, version: this.history.current!.version };
      }
      const summary = j.summary.map((x) => x.text);
      if (j.verdict === 'hold') {
        const version = (this.history.current?.version ?? 0) + 1;
        const before = [this.held, this.publication.held] as const;
        try {
          await this.options.store?.putDocument(j.indexed.digest, stateJson(j.indexed.state));
        } catch (err) {
          throw this.unsaved(source, err);
        }
        this.held = { version, indexed: j.indexed, save: options.save === true, actor };
        this.publication.held = { version, since: at, source, reason: j.withdrawal.message, entries: j.withdrawal.entries, summary };
        try {
          await this.recordOrThrow(source, audit('held', version, summary));
        } catch (err) {
          [this.held, this.publication.held] = before;
          throw err;
        }
        return { outcome: 'held', ms, version, withdrawal: j.withdrawal, summary };
      }
      if (options.save) this.save(j.indexed.state, source);
      const planned = this.history.plan(j.indexed);
      const last = { version: planned.version, at, source, summary, ranges: j.ranges, warnings: j.warnings.map(brief) };
      let r: { version: number; changed: boolean };
      try {
        r = await this.commitAndPublish(planned, { source, actor, summary, audit: audit('published', planned.version, summary), last });
      } catch (err) {
        // The file was written, the store refused: the file gets the state in force back.
        if (options.save && live) this.putBack(live.state);
        throw err;
      }
      this.held = undefined;
      this.publication.held = null;
      this.publication.last = last;
      return { outcome: 'published', ms, version: r.version, summary, warnings: j.warnings, judged: j.judged };
    });
  }

  /**
   * What propose() would do with a state (verification findings, the
   * semantic diff, the verdict), in the same turn as the proposals, with
   * nothing saved or published: the API's ?dry_run=1. Audited as such.
   */
  judgeOnly(
    given: () => DesiredState | IndexedState,
    source: string,
    options: { actor?: string; remote?: string | null; requestId?: string | null; action?: string } = {},
  ): Promise<{ outcome: 'published' | 'unchanged' | 'held' | 'refused'; version: number | null; changes: string[]; findings: Brief[]; guards: GuardFinding[]; withdrawal: GuardFinding | null }> {
    return this.serial(async () => {
      const state = given();
      const live = this.history.indexed;
      const j = await judgeOffThread(live, state, this.options.policy, { learn: false });
      const current = this.history.current?.version ?? null;
      const outcome = j.verdict === 'refuse' ? 'refused' : live && live.digest === j.indexed.digest ? 'unchanged' : j.verdict === 'hold' ? 'held' : 'published';
      const changes = j.verdict === 'refuse' ? [] : j.summary.map((x) => x.text);
      const findings = j.verdict === 'refuse' ? j.findings.map(brief) : j.warnings.map(brief);
      const guards = j.verdict === 'refuse' ? j.guards : [];
      const withdrawal = j.verdict === 'hold' ? j.withdrawal : null;
      const audit: AuditEntry = { at: Date.now(), actor: options.actor ?? source, remote: options.remote ?? null, requestId: options.requestId ?? null, action: options.action ?? source, outcome: `dry run: ${outcome}`, version: current, summary: changes };
      try {
        await this.options.store?.audit(audit);
      } catch (err) {
        throw this.unsaved(source, err);
      }
      return { outcome, version: current, changes, findings, guards, withdrawal };
    });
  }

  /**
   * `state` into the state file, durably, or UnsavedChange (also emitted as
   * `unsaved` (source, error), for the log): nothing is published then.
   */
  private save(state: DesiredState, source: string): void {
    const file = this.options.stateFile;
    if (!file) return;
    try {
      file.write(documentOf(state));
    } catch (err) {
      throw this.unsaved(source, err instanceof UnsavedChange ? err : new UnsavedChange(`the change could not be saved (${(err as Error).message}); it was not published, the current version stays`, undefined, err));
    }
  }

  /** The state in force back into the state file after the store refused a change written there first. */
  private putBack(state: DesiredState): void {
    try {
      this.options.stateFile?.write(documentOf(state));
    } catch (err) {
      this.emit('unsaved', 'put back', new UnsavedChange(`the state file holds a change the store refused, and putting the state in force back failed (${(err as Error).message}); a restart would publish it`, undefined, err));
    }
  }

  /** The publishing side of GET /status. */
  publicationStatus(): Publication {
    const c = this.history.current;
    const rollout = this.rollout ? this.rollout.status(this.hooks.views()) : null;
    const replica = this.options.replica ? { name: this.options.replica.name, ...this.role } : null;
    return { version: c?.version ?? null, digest: c?.digest ?? null, bindings: this.history.indexed?.bindings.count ?? 0, ...this.publication, rollout, replica, store: this.storeDescription };
  }

  /** Publishes a change of bindings on top of the current version (validated against it; a bad entry throws, naming it). */
  publishDelta(delta: StateDelta, options: { override?: boolean; source?: string; actor?: string } = {}): Promise<{ version: number; changed: boolean }> {
    return this.serial(async () => {
      this.assertLeader();
      const source = options.source ?? 'delta';
      if (!this.options.store) return this.published(this.history.publishDelta(delta), options);
      const planned = this.history.planDelta(delta);
      if (!planned.changed) return { version: planned.after, changed: false };
      const version: StoredVersion = {
        epoch: this.history.epoch,
        version: planned.after + 1,
        digest: planned.digest,
        delta: planned.delta,
        document: false,
        source,
        actor: options.actor ?? source,
        at: Date.now(),
        summary: [],
      };
      if (storesDocument(this.stored, planned.delta, this.history.indexed!.bindings.count)) {
        // Due a whole document: worked out on a copy (the state in force changes only once it is saved).
        const copy = indexedCopy(this.history.indexed!.state);
        copy.applyDelta(delta, source);
        return this.commitAndPublish(this.history.plan(copy), { source, actor: version.actor, summary: [], ...(options.override ? { override: true } : {}) });
      }
      try {
        await this.options.store.commit(version, undefined, this.records({ rollout: this.rolloutAfter(version.version), override: options.override ? version.version : null, held: null }), undefined);
      } catch (err) {
        throw this.unsaved(source, err);
      }
      this.stored.push(version);
      return this.published(this.history.publishDelta(delta), options);
    });
  }

  /**
   * Confirms that the current version `version` may withdraw beyond the
   * agents' budget: it is pushed again, with the override, to the agents
   * that refused it for that reason. Returns those agents.
   */
  allowWithdrawal(version: number, options: { actor?: string; remote?: string | null; requestId?: string | null } = {}): Promise<string[]> {
    return this.serial(async () => {
      this.assertLeader();
      const actor = options.actor ?? 'admin';
      const audit = (outcome: string, summary: string[]): AuditEntry => ({ at: Date.now(), actor, remote: options.remote ?? null, requestId: options.requestId ?? null, action: 'override', outcome, version, summary });
      if (this.held?.version === version) {
        // A held state, confirmed: saved first (one from the API; the file's
        // own is in the file already), then published with the override to
        // every agent. Unsaved, it stays held.
        const { indexed, save } = this.held;
        const live = this.history.indexed;
        if (save) this.save(indexed.state, 'confirmed');
        const summary = this.publication.held?.summary ?? [];
        const last = { version, at: Date.now(), source: 'confirmed', summary, ranges: 0, warnings: [] };
        try {
          await this.commitAndPublish(this.history.plan(indexed), { source: 'confirmed', actor, summary, override: true, audit: audit('published', summary), last });
        } catch (err) {
          if (save && live) this.putBack(live.state);
          throw err;
        }
        this.held = undefined;
        this.publication.held = null;
        this.publication.last = last;
        return this.hooks.agentIds();
      }
      const current = this.history.current?.version;
      if (current !== version) throw new Error(`version ${version} is not the current version (${current ?? 'none'}); only the current version can be confirmed`);
      const before = this.override;
      this.override = { version, withdrawal: true };
      try {
        await this.recordOrThrow('override', audit('confirmed', []));
      } catch (err) {
        this.override = before;
        throw err;
      }
      return this.hooks.pushNacked(version, 'EWITHDRAWAL');
    });
  }

  /** The audit log (the store's; empty without one). */
  async auditLog(options: { after?: number; limit?: number } = {}): Promise<AuditEntry[]> {
    return this.options.store ? this.options.store.readAudit(options) : [];
  }
}
