/**
 * `switchyard agent --config FILE`: the long-running daemon. At start it
 * loads (or opens) the dispatcher, restores the last known good state and
 * brings the dispatcher and the firewall to it (a no-op when they already
 * are), then connects to the control plane. Each push is applied to the
 * dispatcher (small deltas in place, binding by binding; anything else as
 * one atomic table switch) and to the firewall (the delta's regions only,
 * or a full read-back and repair), and acknowledged after both; the
 * firewall is also read back every `resync_seconds` to repair drift.
 * Stopping closes the channel and leaves the data plane and the rules as
 * they are.
 */
import fs from 'node:fs';
import { pino, type Logger } from 'pino';
import { SwitchyardError } from '../errors.js';
import { checkDocumentFields } from '../bindings/binding.js';
import { parseBindingPrefix, parseLabel, parsePort, parseProtocol } from '../bindings/binding.js';
import type { DesiredState } from '../desired/state.js';
import { locate } from '../dispatcher/state.js';
import { Dispatcher, load, type ApplyResult } from '../dispatcher/dispatcher.js';
import { Firewall } from '../firewall/apply.js';
import { ProcessRunner } from '../firewall/runner.js';
import type { BindingChange } from '../firewall/incremental.js';
import { encodeFrame } from '../protocol/messages.js';
import { AgentSession } from './session.js';
import { StateStore } from './store.js';
import { ControlPlaneClient } from './client.js';
import { notify, watchdogPingMs } from './systemd.js';
import { AgentMetrics, parseListen } from './metrics.js';

export interface AgentConfig {
  agentId: string;
  stateDir: string;
  controlPlane: { url: string; caFile: string; tokenFile: string };
  netns?: string;
  bpffs?: string;
  firewall: { backend: 'nft' | 'legacy' | 'auto'; resyncSeconds: number };
  heartbeatSeconds: number;
  /** Prometheus metrics address (host:port); none when absent. */
  metricsListen?: string;
}

const invalid = (file: string, what: string) => new SwitchyardError('EINVAL_FILE', `${file}: ${what}`, { entry: file });

/** The agent's configuration file, validated; unknown fields refused. */
export function readAgentConfig(file: string): AgentConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw invalid(file, (err as Error).message);
  }
  checkDocumentFields(doc, file, new Set(['agent_id', 'state_dir', 'control_plane', 'netns', 'bpffs', 'firewall', 'heartbeat_seconds', 'metrics_listen']), '{"agent_id", "state_dir", "control_plane": {...}}');
  const str = (v: unknown, what: string) => {
    if (typeof v !== 'string' || v === '') throw invalid(file, `${what} must be a non-empty string`);
    return v;
  };
  const cp = doc.control_plane;
  checkDocumentFields(cp, `${file}: control_plane`, new Set(['url', 'ca_file', 'token_file']), '{"url", "ca_file", "token_file"}');
  const url = str(cp.url, 'control_plane.url');
  if (!url.startsWith('wss://')) throw invalid(file, 'control_plane.url must be wss:// (the channel is always TLS)');
  const fw = (doc.firewall ?? {}) as Record<string, unknown>;
  checkDocumentFields(fw, `${file}: firewall`, new Set(['backend', 'resync_seconds']), '{"backend", "resync_seconds"}');
  const backend = fw.backend ?? 'auto';
  if (backend !== 'nft' && backend !== 'legacy' && backend !== 'auto') throw invalid(file, 'firewall.backend must be nft, legacy or auto');
  const seconds = (v: unknown, what: string, fallback: number) => {
    const n = v ?? fallback;
    if (typeof n !== 'number' || !(n >= 1 && n <= 86_400)) throw invalid(file, `${what} must be 1-86400 seconds`);
    return n;
  };
  const metricsListen = doc.metrics_listen === undefined ? undefined : str(doc.metrics_listen, 'metrics_listen');
  if (metricsListen !== undefined) {
    try {
      parseListen(metricsListen);
    } catch (err) {
      throw invalid(file, `metrics_listen: ${(err as Error).message}`);
    }
  }
  return {
    agentId: parseLabel(doc.agent_id, `${file}: agent_id`),
    stateDir: str(doc.state_dir, 'state_dir'),
    controlPlane: { url, caFile: str(cp.ca_file, 'control_plane.ca_file'), tokenFile: str(cp.token_file, 'control_plane.token_file') },
    ...(doc.netns !== undefined ? { netns: str(doc.netns, 'netns') } : {}),
    ...(doc.bpffs !== undefined ? { bpffs: str(doc.bpffs, 'bpffs') } : {}),
    firewall: { backend, resyncSeconds: seconds(fw.resync_seconds, 'firewall.resync_seconds', 90) },
    heartbeatSeconds: seconds(doc.heartbeat_seconds, 'heartbeat_seconds', 10),
    ...(metricsListen !== undefined ? { metricsListen } : {}),
  };
}

/** Deltas up to this size go to the dispatcher binding by binding (in place); bigger ones as one table. */
const IN_PLACE_MAX = 64;

export class Agent {
  readonly log: Logger;
  private readonly dispatcher: Dispatcher;
  private readonly firewall: Firewall;
  readonly session: AgentSession;
  readonly metrics: AgentMetrics;
  private readonly client: ControlPlaneClient;
  private firewallChain: Promise<unknown> = Promise.resolve();
  private resync: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;

  constructor(readonly config: AgentConfig) {
    this.log = pino({ base: { component: 'agent', agent: config.agentId } });
    const location = locate({ netns: config.netns, bpffs: config.bpffs });
    load(location);
    this.dispatcher = Dispatcher.open(location);
    this.firewall = new Firewall(new ProcessRunner(config.netns), { backend: config.firewall.backend });
    const token = fs.readFileSync(config.controlPlane.tokenFile, 'utf8').trim();
    this.session = new AgentSession({
      agentId: config.agentId,
      agentVersion: process.env.npm_package_version ?? '0.1.0',
      store: new StateStore(config.stateDir),
      apply: (state, changes) => this.apply(state, changes),
      phase: (phase, fields) => this.log.info(fields, phase),
      done: ({ type, ms, code }) => {
        if (code) this.metrics.nacks.inc({ code });
        else if (type !== 'invalid') this.metrics.applyDuration.observe({ kind: type }, ms / 1000);
      },
      send: (frame) => {
        if (frame.type === 'ack' || frame.type === 'nack') this.log.info({ frame: frame.type, version: frame.version, ...(frame.type === 'nack' ? { code: frame.code, message: frame.message } : {}) }, frame.type === 'ack' ? 'acknowledged' : 'refused');
        this.client.send(encodeFrame(frame));
      },
    });
    this.metrics = new AgentMetrics({
      counters: () => this.dispatcher.destinationCounters(),
      bindingsPerLabel: () => this.session.applied?.indexed.labelCounts() ?? new Map(),
      applied: () => this.session.applied,
      connected: () => this.client.connected,
    });
    this.client = new ControlPlaneClient(this.session, {
      url: config.controlPlane.url,
      ca: fs.readFileSync(config.controlPlane.caFile, 'utf8'),
      token,
      heartbeatMs: config.heartbeatSeconds * 1000,
      onEvent: (event, detail) => this.log.info({ event, detail }, 'control plane'),
    });
  }

  /** Firewall work one at a time (pushes and the periodic resync). */
  private firewallSync(state: DesiredState, changes?: BindingChange[]) {
    const next = this.firewallChain.then(() => this.firewall.sync(state, changes));
    this.firewallChain = next.catch(() => {});
    return next;
  }

  private async apply(state: DesiredState, changes: BindingChange[] | undefined): Promise<void> {
    const started = performance.now();
    // The firewall first: its planning runs now (microtasks) and its tools in
    // other processes, on the other CPU, while this thread updates the
    // dispatcher. (For a moment the firewall may already pass traffic the
    // dispatcher still sends to the old service: old or new, never neither.)
    const firewall = this.firewallSync(state, changes);
    firewall.catch(() => {}); // awaited below, after the dispatcher
    await new Promise((resolve) => setImmediate(resolve));
    const dispatchStarted = performance.now();
    // In-place writes report the count in the table's header afterwards: a
    // delta that did not land as the state says is caught here, without
    // reading the table again. (A full replace publishes the state's own table.)
    let published: ApplyResult | undefined;
    let dispatched = dispatchStarted;
    try {
      if (changes && changes.length <= IN_PLACE_MAX) {
        // Adds first (a carve-out lands before what it carves from goes), then
        // the removals that are not the same key added again (a relabel).
        const key = (c: BindingChange) => `${c.binding.protocol} ${c.binding.prefix} ${c.binding.port}`;
        const readded = new Set(changes.filter((c) => !c.removed).map(key));
        const spec = (c: BindingChange, entry: string) => ({
          label: parseLabel(c.binding.label, entry),
          protocol: parseProtocol(c.binding.protocol, entry),
          prefix: parseBindingPrefix(c.binding.prefix, entry, true),
          port: parsePort(c.binding.port, entry),
        });
        for (const c of changes) if (!c.removed) published = this.dispatcher.bind(spec(c, 'delta'));
        for (const c of changes) if (c.removed && !readded.has(key(c))) published = this.dispatcher.unbind(spec(c, 'delta'));
      } else {
        published = this.dispatcher.replaceBindings(state.bindings);
      }
      if (published && published.bindings !== state.bindings.count) {
        throw new SwitchyardError('EKERNEL', `the dispatcher holds ${published.bindings} bindings after the apply, the state has ${state.bindings.count}`);
      }
      dispatched = performance.now();
    } finally {
      await firewall.catch(() => {}); // the caller puts the last known good back only once the firewall is idle
    }
    const fw = await firewall;
    this.log.info({ bindings: state.bindings.count, delta: changes?.length ?? null, dispatcherMs: Math.round(dispatched - dispatchStarted), firewallMs: Math.round(fw.ms), totalMs: Math.round(performance.now() - started), firewall: fw.summary }, 'kernel updated');
  }

  /** Restores the last known good state, tells systemd it is ready, then connects. */
  async start(): Promise<void> {
    await this.session.restore();
    const lkg = this.session.applied;
    this.log.info({ version: lkg?.version ?? null, epoch: lkg?.epoch ?? null }, lkg ? 'last known good state restored' : 'no last known good state yet');
    notify(`READY=1\nSTATUS=${lkg ? `serving version ${lkg.version} of epoch ${lkg.epoch}` : 'no state yet'}`);
    const ping = watchdogPingMs();
    if (ping) {
      this.watchdog = setInterval(() => notify('WATCHDOG=1'), ping);
      this.watchdog.unref();
    }
    this.resync = setInterval(() => {
      const c = this.session.applied;
      if (!c) return;
      this.firewallSync(c.state).then(
        (result) => {
          if (!result.changed) return;
          this.metrics.firewallRepairs.inc();
          this.log.warn({ firewall: result.summary }, 'firewall drift repaired');
        },
        (err: Error) => this.log.error({ err: err.message }, 'firewall resync failed'),
      );
    }, this.config.firewall.resyncSeconds * 1000);
    this.resync.unref();
    if (this.config.metricsListen) {
      const port = await this.metrics.serve(this.config.metricsListen);
      this.log.info({ listen: this.config.metricsListen, port }, 'metrics served');
    }
    this.client.start();
  }

  stop(): void {
    notify('STOPPING=1');
    clearInterval(this.watchdog);
    clearInterval(this.resync);
    this.client.stop();
    this.metrics.close();
    this.dispatcher.close();
    this.log.info('stopped; the data plane and the firewall stay as they are');
  }
}
