/**
 * The rollout's judgement of the agents (rollout.ts holds its stages): per
 * agent its heartbeats' counters and, once it has the version rolling out,
 * the baseline its health is judged from; a NACK of that version halts the
 * rollout; the next stage is released when it is due, on this replica's
 * agents and (replicas) the others' as their replicas last shared them.
 *
 * It does not import the transport nor the publisher: it reads the agents,
 * saves the rollout's record and pushes through HealthHooks.
 */
import { EventEmitter } from 'node:events';
import type { Ack, Hello, Nack } from '../protocol/messages.js';
import type { AgentView, Rollout } from './rollout.js';
import { isReplicaStore, type ControlPlaneStore, type SharedAgentView } from './store/store.js';
import type { LeaseOptions } from './lease.js';

interface Counters {
  misses: number;
  errors: number;
  at: number;
}

/** How often a rollout looks whether the next stage is due. */
const ROLLOUT_TICK_MS = 250;
/** Replicas write their agents' views this often… */
const SHARE_MS = 1_000;
/** …and a view older than this is of an agent (or a replica) gone. */
const SHARE_FRESH_MS = 3 * SHARE_MS;

/** An agent as its session has it (agent-sessions.ts): what the judgement reads of it. */
export interface JudgedAgent {
  readonly status: {
    agentId: string;
    connected: boolean;
    applied: { epoch: string; version: number } | null;
    lastNack: { version: number | null; code: string; message: string } | null;
  };
  readonly hello: Pick<Hello, 'labels'>;
}

/** What the judgement asks of its owner. */
export interface HealthHooks {
  /** This replica's agents (their hello registered). */
  agents(): Iterable<JudgedAgent>;
  /** The epoch an agent's applied version must be of to count (the history's). */
  epoch(): string;
  /** Whether this replica publishes (Publisher.publishing). */
  leading(): boolean;
  /** The history keeps the states the rollout's stages are still to have (Publisher.retain). */
  retain(): void;
  /** The rollout's record saved (Publisher.recordRollout; a failure is told, the step stands). */
  recordRollout(): Promise<void>;
  /** Each agent that `pick` chooses gets its next push. */
  push(pick: (agent: JudgedAgent) => boolean): void;
}

/** Events: `store-error` (Error): sharing the agents' views failed. */
export class RolloutHealth extends EventEmitter {
  /** Replicas: the other replicas' agents, as the publishing one last read them. */
  private remoteAgents: Array<SharedAgentView & { replica: string }> = [];
  private shareTimer: NodeJS.Timeout | undefined;
  /** When the last read of the others' agents was issued, and when the version rolling out started (monotonic ms). */
  private remoteReadAt = 0;
  private rolloutStartedAt = 0;
  private rolloutTimer: NodeJS.Timeout | undefined;
  /** Per agent, its last two heartbeats' counters and, once it has the version rolling out, the baseline they are judged from. */
  private readonly health = new Map<string, { last?: Counters; prev?: Counters; baseline?: Counters & { rate: number }; pending?: boolean }>();

  constructor(
    private readonly rollout: Rollout | undefined,
    private readonly options: { store?: ControlPlaneStore; replica?: LeaseOptions },
    private readonly hooks: HealthHooks,
  ) {
    super();
  }

  /** Looks whether the next stage is due from now on (listening). */
  start(): void {
    if (this.rollout) {
      this.rolloutTimer = setInterval(() => this.checkRollout(), ROLLOUT_TICK_MS);
      this.rolloutTimer.unref();
    }
  }

  /** Replicas: this one's agents shared from now on (shareAgents), when there is a rollout to judge them (nothing else reads them). */
  share(): void {
    if (!this.rollout) return;
    this.shareTimer = setInterval(() => void this.shareAgents(), SHARE_MS);
    this.shareTimer.unref();
  }

  stop(): void {
    clearInterval(this.shareTimer);
    clearInterval(this.rolloutTimer);
  }

  /** A version started rolling out here: its stages are timed from now. */
  rolloutStarted(): void {
    this.rolloutStartedAt = performance.now();
    this.judgeAfresh();
  }

  /** Health is judged afresh for each version: from when an agent has it. */
  judgeAfresh(): void {
    for (const h of this.health.values()) {
      h.baseline = undefined;
      h.pending = false;
    }
  }

  /** An agent's ACK or NACK of `judged`: of the version rolling out, its health is judged from now, or the rollout halts. */
  answered(agent: JudgedAgent, frame: Ack | Nack, judged: number | null): void {
    if (this.rollout && judged === this.rollout.rollingOut) {
      if (frame.type === 'ack') this.startBaseline(agent.status.agentId);
      else if (this.rollout.halt(this.view(agent), `NACK ${frame.code}: ${frame.message}`)) void this.hooks.recordRollout();
      this.checkRollout();
    }
  }

  private view(peer: JudgedAgent): AgentView {
    const s = peer.status;
    return { agentId: s.agentId, labels: peer.hello.labels, connected: s.connected, applied: s.applied?.epoch === this.hooks.epoch() ? s.applied.version : null, unhealthy: this.unhealthy(s.agentId) };
  }

  /** The agents a rollout is judged over: this replica's, and (replicas) the others' as they last wrote them. */
  views(): AgentView[] {
    const own = [...this.hooks.agents()].map((p) => this.view(p));
    if (this.remoteAgents.length === 0) return own;
    const here = new Set(own.map((v) => v.agentId));
    return [...own, ...this.remoteAgents.filter((v) => !here.has(v.agentId))];
  }

  /**
   * Replicas: every SHARE_MS, this replica writes its connected agents'
   * views to the store, and the one that publishes reads the others'
   * (rows older than SHARE_FRESH_MS are of agents gone or of a replica gone).
   */
  private async shareAgents(): Promise<void> {
    const store = this.options.store;
    const replica = this.options.replica;
    if (!isReplicaStore(store) || !replica) return;
    const views: SharedAgentView[] = [...this.hooks.agents()].map((p) => {
      const n = p.status.lastNack;
      return { ...this.view(p), nack: n && n.version !== null ? { version: n.version, why: `NACK ${n.code}: ${n.message}` } : null };
    });
    try {
      await store.putAgents(replica.name, views);
      if (this.hooks.leading()) {
        const readAt = performance.now();
        const all = await store.agents(SHARE_FRESH_MS);
        this.remoteAgents = all.filter((a) => a.replica !== replica.name);
        this.remoteReadAt = readAt;
      } else this.remoteAgents = [];
    } catch (err) {
      this.emit('store-error', err);
    }
  }

  /** Releases the next stage when it is due; pushes to its agents. */
  private checkRollout(): void {
    // Stages are released by the replica that publishes.
    if (!this.rollout || !this.hooks.leading()) return;
    // Durations (the bake, miss rates) on the monotonic clock: a wall clock
    // stepped back would hold a rollout for as long, stepped forward skip the bake.
    const halted = this.rollout.halted;
    // A NACK an agent of another replica sent (its replica wrote it down).
    for (const a of this.remoteAgents) if (a.nack && a.nack.version === this.rollout.rollingOut) this.rollout.halt(a, `${a.nack.why} (via replica ${a.replica})`);
    // Replicas: no stage goes on what the others said before it started (an
    // agent of theirs unknown here would make its stage look empty, so done):
    // only on a read made once each has had a turn to write since.
    if (this.options.replica && this.remoteReadAt < this.rolloutStartedAt + SHARE_MS) {
      if (this.rollout.halted !== halted) void this.hooks.recordRollout();
      return;
    }
    const released = this.rollout.advance(this.views(), performance.now());
    if (released === null) {
      if (this.rollout.halted !== halted) void this.hooks.recordRollout();
      return;
    }
    this.hooks.retain();
    const rollout = this.rollout;
    const push = () => this.hooks.push((peer) => rollout.stageOf(peer.hello.labels) === released);
    // The stage's release is in the store before its agents hear of it.
    if (this.options.store) void this.hooks.recordRollout().then(push);
    else push();
  }

  /** A heartbeat's counters (the agent's last two kept). */
  heartbeatCounters(agentId: string, now: Counters): void {
    const h = this.health.get(agentId) ?? {};
    h.prev = h.last;
    h.last = now;
    if (h.pending) {
      h.baseline = { ...now, rate: 0 };
      h.pending = false;
    }
    this.health.set(agentId, h);
    this.checkRollout();
  }

  /** The agent has the version rolling out: its counters are judged from here on. */
  private startBaseline(agentId: string): void {
    const h = this.health.get(agentId) ?? {};
    if (h.last && h.prev && h.last.at > h.prev.at) h.baseline = { ...h.last, rate: ((h.last.misses - h.prev.misses) * 1000) / (h.last.at - h.prev.at) };
    else if (h.last) h.baseline = { ...h.last, rate: 0 };
    else h.pending = true;
    this.health.set(agentId, h);
  }

  /** Errors risen, or misses climbing faster than before (at least 1/s, and twice the rate before), since the baseline. */
  private unhealthy(agentId: string): string | null {
    const h = this.health.get(agentId);
    const b = h?.baseline;
    const last = h?.last;
    if (!b || !last || last.at <= b.at) return null;
    if (last.errors > b.errors) return `errors rose from ${b.errors} to ${last.errors}`;
    const rate = ((last.misses - b.misses) * 1000) / (last.at - b.at);
    if (rate > Math.max(1, 2 * b.rate)) return `misses climb ${rate.toFixed(1)}/s (before: ${b.rate.toFixed(1)}/s)`;
    return null;
  }
}
