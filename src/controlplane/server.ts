/**
 * The reference control plane, composed of three concerns that do not
 * import one another:
 *   - transport.ts (with agent-sessions.ts): HTTPS + WebSocket, agents
 *     authenticated, their sessions and what is pushed to them;
 *   - publisher.ts (on ledger.ts): what is proposed, judged, made durable
 *     in the store and published, under the lease when there are replicas;
 *   - rollout-health.ts: the rollout's judgement of the agents' health.
 * This class builds them and wires each one's hooks to the others (the
 * layers point one way: transport ← server → publisher); its surface is
 * what the CLI, the API (api.ts), the tests and the benchmarks use.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { warmUpHistory } from './warmup.js';
import { ApiError, readBody, requestIdOf } from './http.js';
import { UnsavedChange } from './statefile.js';
import type { History } from './history.js';
import { NotLeader, notLeaderAnswer } from './lease.js';
import { AgentTransport, answerJson, type AgentStatus, type TransportOptions } from './transport.js';
import { Publisher, type Publication } from './publisher.js';
import type { PublisherOptions } from './ledger.js';
import { RolloutHealth } from './rollout-health.js';

export { MAX_AGENT_FRAME_BYTES, type AgentStatus } from './transport.js';
export type { Proposed, Publication } from './publisher.js';

/** The transport's options (transport.ts, agent-sessions.ts: certificate, tokens, listener, limits) and the publisher's (ledger.ts: state file, store, replica, policy, rollout). */
export interface ServerOptions extends TransportOptions, PublisherOptions {}

/** `from`'s events told again by `to`, as they happen (the server's events are its parts'). */
function relay(from: EventEmitter, to: EventEmitter, events: string[]): void {
  for (const event of events) from.on(event, (...args: unknown[]) => to.emit(event, ...args));
}

/**
 * Events: `ack` (agentId, version) and `nack` (agentId, { version, code,
 * message }), as the answers arrive; `stalled` (agentId, why): a
 * connection ended by the write deadline; `unsaved` (source, UnsavedChange):
 * a change not published because it could not be saved; replicas:
 * `leading` (term), `following` (why), `store-error` (Error).
 */
export class ControlPlaneServer extends EventEmitter {
  private readonly transport: AgentTransport;
  private readonly publisher: Publisher;
  private readonly health: RolloutHealth;

  /** Serves the service-bindings API (api.ts) under /v1/. */
  serveApi(api: { handle(req: IncomingMessage, res: ServerResponse, actor: string): void }): void {
    this.transport.serveApi(api);
  }

  constructor(options: ServerOptions) {
    super();
    this.publisher = new Publisher(options, {
      pushAll: () => this.transport.sessions.pushWhere(() => true),
      pushNacked: (version, code) => this.transport.sessions.pushNacked(version, code),
      agentIds: () => this.transport.sessions.agentIds(),
      rolloutStarted: () => this.health.rolloutStarted(),
      followed: () => this.health.judgeAfresh(),
      replicating: () => this.health.share(),
      views: () => this.health.views(),
    });
    this.health = new RolloutHealth(this.publisher.rollout, options, {
      agents: () => this.transport.sessions.agents(),
      epoch: () => this.publisher.history.epoch,
      leading: () => this.publisher.publishing,
      retain: () => this.publisher.retain(),
      recordRollout: () => this.publisher.recordRollout(),
      push: (pick) => this.transport.sessions.pushWhere(pick),
    });
    this.transport = new AgentTransport(options, {
      frameFor: (hello) => this.publisher.frameFor(hello),
      snapshotText: (frame) => this.publisher.history.snapshotText(frame),
      answered: (agent, frame, judged) => this.health.answered(agent, frame, judged),
      heartbeat: (agentId, counters) => this.health.heartbeatCounters(agentId, counters),
      status: () => ({ publication: this.publicationStatus(), agents: this.status() }),
      override: (req, res, actor) => this.override(req, res, actor),
    });
    relay(this.transport.sessions, this, ['ack', 'nack', 'stalled']);
    relay(this.publisher, this, ['unsaved', 'leading', 'following', 'store-error']);
    relay(this.health, this, ['store-error']);
  }

  /** The versions (replaced by open() with what the store kept): always the current ones. */
  get history(): History {
    return this.publisher.history;
  }

  /** How long compiling the push path took before listening (warmup.ts). */
  warmUpMs = 0;

  async listen(): Promise<number> {
    await this.open();
    this.warmUpMs = warmUpHistory().ms;
    const port = await this.transport.listen();
    this.health.start();
    return port;
  }

  /** `release: false` keeps the lease until it runs out, as a killed replica would (tests). */
  async close(options: { release?: boolean } = {}): Promise<void> {
    this.health.stop();
    await this.transport.close();
    await this.publisher.close(options.release ?? true);
  }

  /** Where versions are kept (`file:DIR`, a PostgreSQL URL without its password, or memory). */
  get storeDescription(): string {
    return this.publisher.storeDescription;
  }

  /** Opens the store and takes up where the last run left off (Publisher.open). Call before listen(). */
  open(): Promise<void> {
    return this.publisher.open();
  }

  /** Who publishes: this control plane, or (a follower) the replica holding the lease. */
  get role(): Publisher['role'] {
    return this.publisher.role;
  }

  /** Publishes a validated state (Publisher.publish). */
  publish(...args: Parameters<Publisher['publish']>): ReturnType<Publisher['publish']> {
    return this.publisher.publish(...args);
  }

  /** A new desired state under the publishing policy: published, held or refused (Publisher.propose). */
  propose(...args: Parameters<Publisher['propose']>): ReturnType<Publisher['propose']> {
    return this.publisher.propose(...args);
  }

  /** What propose() would do, nothing saved or published: the API's ?dry_run=1 (Publisher.judgeOnly). */
  judgeOnly(...args: Parameters<Publisher['judgeOnly']>): ReturnType<Publisher['judgeOnly']> {
    return this.publisher.judgeOnly(...args);
  }

  /** Publishes a change of bindings on top of the current version (Publisher.publishDelta). */
  publishDelta(...args: Parameters<Publisher['publishDelta']>): ReturnType<Publisher['publishDelta']> {
    return this.publisher.publishDelta(...args);
  }

  /** Confirms that the current (or held) version may withdraw beyond the agents' budget (Publisher.allowWithdrawal). */
  allowWithdrawal(...args: Parameters<Publisher['allowWithdrawal']>): ReturnType<Publisher['allowWithdrawal']> {
    return this.publisher.allowWithdrawal(...args);
  }

  /** The audit log (the store's; empty without one). */
  auditLog(...args: Parameters<Publisher['auditLog']>): ReturnType<Publisher['auditLog']> {
    return this.publisher.auditLog(...args);
  }

  /** The publishing side of GET /status. */
  publicationStatus(): Publication {
    return this.publisher.publicationStatus();
  }

  /** The agents' side of GET /status. */
  status(): AgentStatus[] {
    return this.transport.sessions.status();
  }

  /** POST /override {"version": N}: the operator's confirmation (allowWithdrawal), from an administrator `actor`. */
  private override(req: IncomingMessage, res: ServerResponse, actor: string): void {
    const json = (code: number, body: unknown) => answerJson(res, code, body);
    readBody(req, 4096)
      .then((body) => {
        // Own properties only: {"constructor": …} is an unknown field, not Object.prototype's.
        const ok = typeof body === 'object' && body !== null && !Array.isArray(body) && Object.keys(body).length === 1 && Object.hasOwn(body, 'version');
        const version = ok ? (body as { version: unknown }).version : undefined;
        if (typeof version !== 'number' || !Number.isSafeInteger(version)) return json(400, { error: 'the body must be {"version": N}', field: 'version' });
        return this.allowWithdrawal(version, { actor, remote: req.socket.remoteAddress ?? null, requestId: requestIdOf(req) }).then((agents) => json(200, { version, agents }));
      })
      .catch((err: Error) => {
        if (err instanceof NotLeader) return notLeaderAnswer(err, req, res);
        if (err instanceof ApiError) return json(err.status, { error: err.message, ...(err.field ? { field: err.field } : {}) });
        if (err instanceof UnsavedChange) return json(507, { error: err.message, code: err.reason ?? err.code });
        json(409, { error: err.message });
      });
  }
}
