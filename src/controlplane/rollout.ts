/**
 * Staged rollout: a new version goes to the first stage (the canaries),
 * then to each next one once every connected agent of the stage before has
 * acknowledged it and stayed healthy for the bake time. Any NACK of it, or
 * an agent whose errors rise or whose misses climb faster than before it
 * (heartbeat counters), halts the rollout: every later stage stays on the
 * version it had. Rolling back is publishing the previous content as a new
 * version: it starts from the first stage like any other.
 *
 * Agents say their labels in hello ({"site": "ams", "canary": "true"}); an
 * agent is in the first stage whose `match` its labels contain, else in the
 * last stage.
 */
import { SwitchyardError } from '../errors.js';
import { ROLLOUT_LABEL } from '../protocol/messages.js';

export interface RolloutConfig {
  stages: Array<{ name: string; match: Record<string, string> }>;
  bakeMs: number;
}

/** An own property's value: a field absent from the file is never found on Object.prototype. */
const own = (value: object, field: string): unknown => (Object.hasOwn(value, field) ? (value as Record<string, unknown>)[field] : undefined);

export function parseRollout(doc: unknown, source: string): RolloutConfig {
  const bad = (what: string) => new SwitchyardError('EINVAL_FILE', `${source}: ${what}`, { entry: source });
  const shape = 'expected {"stages": [{"name": "canary", "match": {"canary": "true"}}, ...], "bake_seconds": N}';
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad(shape);
  const list = own(doc, 'stages');
  if (!Array.isArray(list) || list.length === 0) throw bad(shape);
  for (const key of Object.keys(doc)) if (key !== 'stages' && key !== 'bake_seconds') throw bad(`unknown field ${JSON.stringify(key)}`);
  const bake = own(doc, 'bake_seconds') ?? 60;
  if (typeof bake !== 'number' || !(bake >= 0 && bake <= 86400)) throw bad('bake_seconds must be a number of seconds, 0-86400');
  const names = new Set<string>();
  const stages = list.map((stage: unknown, i) => {
    if (typeof stage !== 'object' || stage === null || Array.isArray(stage)) throw bad(`stages[${i}] must be {"name": "...", "match": {...}}`);
    // A misspelt "match" would put every agent in the stage: refused, like any unknown field.
    for (const key of Object.keys(stage)) if (key !== 'name' && key !== 'match') throw bad(`stages[${i}]: unknown field ${JSON.stringify(key)}`);
    const name = own(stage, 'name');
    if (typeof name !== 'string' || !ROLLOUT_LABEL.test(name)) throw bad(`stages[${i}].name must be 1-64 characters of [A-Za-z0-9._-]`);
    if (names.has(name)) throw bad(`stages[${i}]: ${name} is listed twice`);
    names.add(name);
    const match = own(stage, 'match') ?? {};
    if (typeof match !== 'object' || match === null || Array.isArray(match) || Object.entries(match).some(([k, v]) => !ROLLOUT_LABEL.test(k) || typeof v !== 'string' || !ROLLOUT_LABEL.test(v))) {
      throw bad(`stages[${i}].match must be an object of labels: keys and values of 1-64 characters of [A-Za-z0-9._-]`);
    }
    return { name, match: match as Record<string, string> };
  });
  return { stages, bakeMs: bake * 1000 };
}

/** What the rollout needs to know of one agent. */
export interface AgentView {
  agentId: string;
  labels: Record<string, string> | undefined;
  connected: boolean;
  applied: number | null;
  /** Since it acknowledged the version rolling out: errors rose, or misses climbed faster than before. */
  unhealthy: string | null;
}

export interface StageStatus {
  name: string;
  version: number | null;
  agents: number;
  applied: number;
  state: 'done' | 'baking' | 'rolling' | 'waiting' | 'halted';
}

export class Rollout {
  /** Per stage, the version its agents are to have (null: nothing published yet). */
  private readonly allowed: Array<number | null>;
  /** The version rolling out, the last stage it is released to and since when. */
  private version: number | null = null;
  private released = -1;
  /** When every agent of the released stage had it (the bake starts). */
  private appliedAt: number | null = null;
  halted: { stage: string; agentId: string; why: string; at: number } | null = null;

  constructor(readonly config: RolloutConfig) {
    this.allowed = config.stages.map((): number | null => null);
  }

  /** What a store keeps (the bake's start is not kept: after a restart a stage bakes afresh). */
  snapshot(): { allowed: Array<number | null>; version: number | null; released: number; halted: Rollout['halted'] } {
    return { allowed: [...this.allowed], version: this.version, released: this.released, halted: this.halted && { ...this.halted } };
  }

  /** Takes a snapshot() back; one of another set of stages (the file changed) is ignored: the next version starts afresh. */
  restore(s: ReturnType<Rollout['snapshot']>): boolean {
    if (s.allowed.length !== this.allowed.length || s.released >= this.allowed.length) return false;
    this.allowed.splice(0, this.allowed.length, ...s.allowed);
    this.version = s.version;
    this.released = s.released;
    this.halted = s.halted;
    this.appliedAt = null;
    return true;
  }

  /** The version rolling out (or rolled out), if any. */
  get rollingOut(): number | null {
    return this.version;
  }

  stageOf(labels: Record<string, string> | undefined): number {
    // Own labels only: a stage matching {"constructor": …} must not find Object.prototype's.
    const i = this.config.stages.findIndex((s) => Object.entries(s.match).every(([k, v]) => labels !== undefined && Object.hasOwn(labels, k) && labels[k] === v));
    return i < 0 ? this.config.stages.length - 1 : i;
  }

  /** The version an agent with these labels is to have. */
  target(labels: Record<string, string> | undefined): number | null {
    return this.allowed[this.stageOf(labels)] ?? null;
  }

  /** Versions some stage is to have (the history keeps their states). */
  versions(): Set<number> {
    return new Set(this.allowed.filter((v): v is number => v !== null));
  }

  /** A new version: to the first stage now (the very first version goes to every stage: there is nothing to protect yet). */
  start(version: number): void {
    const first = !this.allowed.some((v) => v !== null);
    this.version = version;
    this.halted = null;
    this.appliedAt = null;
    if (first) {
      this.allowed.fill(version);
      this.released = this.allowed.length - 1;
    } else {
      this.allowed[0] = version;
      this.released = 0;
    }
  }

  /** A NACK of the version rolling out, or an unhealthy agent, in a stage it reached: nothing goes further. */
  halt(agent: AgentView, why: string): boolean {
    if (this.halted || this.version === null) return false;
    const stage = this.stageOf(agent.labels);
    if (stage > this.released) return false;
    this.halted = { stage: this.config.stages[stage]!.name, agentId: agent.agentId, why, at: Date.now() };
    return true;
  }

  /** Releases the next stage when the current one has the version and baked healthy; returns its index. `now`: monotonic milliseconds, never the wall clock. */
  advance(agents: AgentView[], now: number): number | null {
    if (this.halted || this.version === null || this.released >= this.allowed.length - 1) return null;
    const inStage = agents.filter((a) => a.connected && this.stageOf(a.labels) === this.released);
    const sick = agents.find((a) => a.connected && a.unhealthy && this.stageOf(a.labels) <= this.released);
    if (sick) {
      this.halt(sick, sick.unhealthy!);
      return null;
    }
    if (!inStage.every((a) => a.applied === this.version)) return null;
    this.appliedAt ??= now;
    if (now - this.appliedAt < this.config.bakeMs) return null;
    this.released++;
    this.allowed[this.released] = this.version;
    this.appliedAt = null;
    return this.released;
  }

  status(agents: AgentView[]): { version: number | null; bakeSeconds: number; halted: Rollout['halted']; stages: StageStatus[] } {
    const stages = this.config.stages.map((s, i): StageStatus => {
      const members = agents.filter((a) => a.connected && this.stageOf(a.labels) === i);
      const version = this.allowed[i] ?? null;
      const applied = members.filter((a) => a.applied === version).length;
      let state: StageStatus['state'];
      if (this.version === null || version !== this.version) state = this.halted ? 'halted' : 'waiting';
      else if (i < this.released) state = 'done';
      else if (applied < members.length) state = 'rolling';
      else state = this.halted ? 'halted' : i === this.allowed.length - 1 ? 'done' : 'baking';
      return { name: s.name, version, agents: members.length, applied, state };
    });
    return { version: this.version, bakeSeconds: this.config.bakeMs / 1000, halted: this.halted, stages };
  }
}
