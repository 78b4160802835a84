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
import type { Logger } from 'pino';
import { SwitchyardError } from '../errors.js';
import { checkDocumentFields, protocolName } from '../bindings/binding.js';
import { parseBindingPrefix, parseLabel, parsePort, parseProtocol } from '../bindings/binding.js';
import type { DesiredState } from '../desired/state.js';
import { locate } from '../dispatcher/state.js';
import { Dispatcher, load, type ApplyResult, type BindingChangeSpec, type TableBuilder } from '../dispatcher/dispatcher.js';
import { TableBuildThread } from '../dispatcher/build-worker.js';
import { PushDecoder } from './decoder.js';
import { LoopHold } from './loop-hold.js';
import { Firewall, type SyncHooks } from '../firewall/apply.js';
import { ProcessRunner } from '../firewall/runner.js';
import type { BindingChange } from '../firewall/incremental.js';
import { encodeFrame } from '../protocol/messages.js';
import { AgentSession } from './session.js';
import { StateStore } from './store.js';
import { ControlPlaneClient } from './client.js';
import { notify, watchdogPingMs } from './systemd.js';
import { ServiceStatus } from './status.js';
import { AgentMetrics, parseListen } from './metrics.js';
import { warmUp } from './warmup.js';
import { DEFAULT_LIMITS, checkGuards } from '../protocol/guards.js';
import { AdminServer, type AdminRequest, type Peer, type RegistrationAllowList } from './admin.js';
import { LocalLayer, canonicalKey } from './local.js';
import { IndexedState } from '../protocol/state.js';
import { parseDesiredState } from '../desired/state.js';
import { ROLLOUT_LABEL } from '../protocol/messages.js';
import { switchyardVersion } from '../version.js';
import { LOG_LEVEL_RULE, createLogger, isLogLevel, type LogLevel } from '../log.js';

export interface AgentConfig {
  agentId: string;
  stateDir: string;
  /** `url`: the first of `urls` (the replicas, tried in turn). */
  controlPlane: { url: string; urls: string[]; caFile: string; tokenFile: string };
  netns?: string;
  bpffs?: string;
  /** `toolTimeoutSeconds`: a firewall tool that has not finished by then is killed and its apply fails (NACK, last known good put back). */
  firewall: { backend: 'nft' | 'legacy' | 'auto'; resyncSeconds: number; toolTimeoutSeconds: number };
  heartbeatSeconds: number;
  /** The most bindings a state may hold here (ECAPACITY above it): what this machine was sized for. */
  maxBindings: number;
  /** Prometheus metrics address (host:port); none when absent. */
  metricsListen?: string;
  /** The admin socket (root only) and the registration socket (the allow-list below). */
  adminSocket: string;
  registrationSocket: string;
  registration: RegistrationAllowList;
  /** Rollout labels sent to the control plane ({"site": "ams", "canary": "true"}). */
  labels?: Record<string, string>;
  /** The least level logged (pino's names; default info). */
  logLevel: LogLevel;
}

export const DEFAULT_ADMIN_SOCKET = '/run/switchyard/admin.sock';
export const DEFAULT_REGISTRATION_SOCKET = '/run/switchyard/register.sock';

const invalid = (file: string, what: string) => new SwitchyardError('EINVAL_FILE', `${file}: ${what}`, { entry: file });

/** The agent's configuration file, validated; unknown fields refused. */
function parseLabels(value: unknown, file: string): Record<string, string> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(file, 'labels must be an object of strings ({"site": "ams", "canary": "true"})');
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) {
    if (!ROLLOUT_LABEL.test(k) || typeof v !== 'string' || !ROLLOUT_LABEL.test(v)) throw invalid(file, `labels.${k}: keys and values are 1-64 characters of [A-Za-z0-9._-]`);
    out[k] = v;
  }
  return out;
}

export function readAgentConfig(file: string, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw invalid(file, (err as Error).message);
  }
  checkDocumentFields(doc, file, new Set(['agent_id', 'state_dir', 'control_plane', 'netns', 'bpffs', 'firewall', 'heartbeat_seconds', 'metrics_listen', 'admin_socket', 'registration_socket', 'registration', 'labels', 'max_bindings', 'log_level']), '{"agent_id", "state_dir", "control_plane": {...}}');
  const str = (v: unknown, what: string) => {
    if (typeof v !== 'string' || v === '') throw invalid(file, `${what} must be a non-empty string`);
    return v;
  };
  const cp = doc.control_plane;
  checkDocumentFields(cp, `${file}: control_plane`, new Set(['url', 'urls', 'ca_file', 'token_file']), '{"url" or "urls", "ca_file", "token_file"}');
  // One control plane (url), or its replicas (urls): the agent moves to the next when one goes away.
  if ((cp.url === undefined) === (cp.urls === undefined)) throw invalid(file, 'control_plane needs "url" (one control plane) or "urls" (its replicas), not both');
  const urls = cp.urls === undefined ? [str(cp.url, 'control_plane.url')] : Array.isArray(cp.urls) && cp.urls.length > 0 && cp.urls.length <= 16 ? cp.urls.map((u: unknown, i: number) => str(u, `control_plane.urls[${i}]`)) : [];
  if (urls.length === 0) throw invalid(file, 'control_plane.urls must list 1-16 wss:// URLs');
  for (const [i, u] of urls.entries()) {
    const what = cp.urls === undefined ? 'control_plane.url' : `control_plane.urls[${i}]`;
    if (!u.startsWith('wss://')) throw invalid(file, `${what} must be wss:// (the channel is always TLS)`);
  }
  const url = urls[0]!;
  const fw = (doc.firewall ?? {}) as Record<string, unknown>;
  checkDocumentFields(fw, `${file}: firewall`, new Set(['backend', 'resync_seconds', 'tool_timeout_seconds']), '{"backend", "resync_seconds", "tool_timeout_seconds"}');
  const backend = fw.backend ?? 'auto';
  if (backend !== 'nft' && backend !== 'legacy' && backend !== 'auto') throw invalid(file, 'firewall.backend must be nft, legacy or auto');
  const seconds = (v: unknown, what: string, fallback: number) => {
    const n = v ?? fallback;
    if (typeof n !== 'number' || !(n >= 1 && n <= 86_400)) throw invalid(file, `${what} must be 1-86400 seconds`);
    return n;
  };
  // Under a unit with StateDirectory= (the packaged one), systemd names the directory it made.
  const systemdState = env.STATE_DIRECTORY?.split(':')[0];
  if (doc.state_dir === undefined && !systemdState) throw invalid(file, 'state_dir must be a non-empty string (it may be left out only under a unit with StateDirectory=)');
  const stateDir = doc.state_dir === undefined ? systemdState! : str(doc.state_dir, 'state_dir');
  const logLevel = doc.log_level === undefined ? 'info' : doc.log_level; // null is a value, and not a level
  if (!isLogLevel(logLevel)) throw new SwitchyardError('EINVAL_FILE', `${file}: log_level ${JSON.stringify(logLevel)} ${LOG_LEVEL_RULE}`, { entry: `${file}: log_level` });
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
    stateDir,
    controlPlane: { url, urls, caFile: str(cp.ca_file, 'control_plane.ca_file'), tokenFile: str(cp.token_file, 'control_plane.token_file') },
    ...(doc.netns !== undefined ? { netns: str(doc.netns, 'netns') } : {}),
    ...(doc.bpffs !== undefined ? { bpffs: str(doc.bpffs, 'bpffs') } : {}),
    firewall: { backend, resyncSeconds: seconds(fw.resync_seconds, 'firewall.resync_seconds', 90), toolTimeoutSeconds: seconds(fw.tool_timeout_seconds, 'firewall.tool_timeout_seconds', 30) },
    heartbeatSeconds: seconds(doc.heartbeat_seconds, 'heartbeat_seconds', 10),
    maxBindings: maxBindings(doc.max_bindings, file),
    ...(metricsListen !== undefined ? { metricsListen } : {}),
    adminSocket: doc.admin_socket === undefined ? DEFAULT_ADMIN_SOCKET : str(doc.admin_socket, 'admin_socket'),
    registrationSocket: doc.registration_socket === undefined ? DEFAULT_REGISTRATION_SOCKET : str(doc.registration_socket, 'registration_socket'),
    registration: parseAllowList(doc.registration, file),
    ...(doc.labels === undefined ? {} : { labels: parseLabels(doc.labels, file) }),
    logLevel,
  };
}

function maxBindings(value: unknown, file: string): number {
  if (value === undefined) return DEFAULT_LIMITS.maxBindings;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > DEFAULT_LIMITS.maxBindings) throw invalid(file, `max_bindings must be an integer 1-${DEFAULT_LIMITS.maxBindings}`);
  return value;
}

/** `"registration": {"<label>": {"uids": [...], "gids": [...]}}`: who may hand over sockets for a label. */
function parseAllowList(value: unknown, file: string): RegistrationAllowList {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(file, 'registration must be an object {"<label>": {"uids": [...], "gids": [...]}}');
  const out: RegistrationAllowList = {};
  for (const [label, entry] of Object.entries(value)) {
    const at = `${file}: registration.${label}`;
    parseLabel(label, at);
    checkDocumentFields(entry, at, new Set(['uids', 'gids']), '{"uids": [...], "gids": [...]}');
    const ids = (v: unknown, what: string) => {
      if (v === undefined) return [];
      if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32)) throw invalid(file, `registration.${label}.${what} must be a list of numeric ids`);
      return v as number[];
    };
    out[label] = { uids: ids(entry.uids, 'uids'), gids: ids(entry.gids, 'gids') };
  }
  return out;
}

/** A change of a delta as the dispatcher takes it (the state's bindings were validated when it was indexed). */
function changeSpec(c: BindingChange): BindingChangeSpec {
  return {
    removed: c.removed,
    binding: {
      label: parseLabel(c.binding.label, 'delta'),
      protocol: parseProtocol(c.binding.protocol, 'delta'),
      prefix: parseBindingPrefix(c.binding.prefix, 'delta', true),
      port: parsePort(c.binding.port, 'delta'),
    },
  };
}

export class Agent {
  readonly log: Logger;
  private readonly dispatcher: Dispatcher;
  private readonly firewall: Firewall;
  readonly session: AgentSession;
  readonly metrics: AgentMetrics;
  private readonly client: ControlPlaneClient;
  private readonly local: LocalLayer;
  private readonly admin: AdminServer;
  private readonly location: ReturnType<typeof locate>;
  private readonly tableBuilder = new TableBuildThread();
  private readonly decoder = new PushDecoder();
  private firewallChain: Promise<unknown> = Promise.resolve();
  private readonly loopHold = new LoopHold();
  private resync: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private readonly status: ServiceStatus;

  constructor(readonly config: AgentConfig) {
    this.log = createLogger({ component: 'agent', agent: config.agentId }, { level: config.logLevel });
    this.status = new ServiceStatus(this.log);
    const location = locate({ netns: config.netns, bpffs: config.bpffs });
    this.location = location;
    const loaded = load(location);
    // An upgrade's new program or new ABI, taken over at start: said once, with what it kept.
    if (loaded.replaced) this.log.info({ ...loaded.replaced }, 'dispatcher program replaced through the pinned link');
    if (loaded.migrated) this.log.info({ ...loaded.migrated }, 'dispatcher migrated to this ABI');
    // Loaded, with something to know (sk_lookup programs beside it that could not be identified with the unit's capabilities).
    for (const warning of loaded.warnings ?? []) this.log.warn({ warning }, 'dispatcher loaded with a warning');
    this.dispatcher = Dispatcher.open(location);
    const store = new StateStore(config.stateDir);
    this.local = new LocalLayer(config.stateDir);
    this.firewall = new Firewall(new ProcessRunner(config.netns), { backend: config.firewall.backend, timeoutMs: config.firewall.toolTimeoutSeconds * 1000 });
    const token = fs.readFileSync(config.controlPlane.tokenFile, 'utf8').trim();
    this.session = new AgentSession({
      agentId: config.agentId,
      agentVersion: switchyardVersion(),
      store,
      decoder: this.decoder,
      apply: async (indexed, changes) => {
        const kernel = this.local.effective(indexed, changes);
        const inPlace = await this.kernelApply(kernel.state, kernel.changes);
        if (!inPlace) this.rehearse(indexed); // a new table: the next delta's path warmed on it
      },
      localOverrides: () => this.local.size,
      labels: config.labels,
      limits: { ...DEFAULT_LIMITS, maxBindings: config.maxBindings },
      counters: () => {
        let misses = 0n;
        let errors = 0n;
        for (const d of this.dispatcher.destinationCounters()) {
          misses += d.stats.misses;
          errors += d.stats.errors;
        }
        return { misses: Number(misses), errors: Number(errors) };
      },
      phase: (phase, fields) => this.log.info(fields, phase),
      receiving: () => this.loopHold.take(),
      done: ({ type, ms, code }) => {
        // The longest the event loop was held while the push was handled:
        // heartbeats, pings and the watchdog wait that long.
        this.log.info({ type, ms: Math.round(ms), code, loopMaxMs: Math.round(this.loopHold.take()) }, 'push handled');
        if (code) this.metrics.nacks.inc({ code });
        else if (type !== 'invalid') this.metrics.applyDuration.observe({ kind: type }, ms / 1000);
      },
      send: (frame) => {
        this.client.send(encodeFrame(frame));
        // Logged (a NACK at warn) and shown in systemd's STATUS=; after the send: nothing here may hold it back.
        this.status.answered(frame, this.session.applied);
      },
    });
    this.metrics = new AgentMetrics({
      counters: () => this.dispatcher.destinationCounters(),
      bindingsPerLabel: () => this.session.applied?.indexed.labelCounts() ?? new Map(),
      applied: () => this.session.applied,
      connected: () => this.client.connected,
    });
    this.admin = new AdminServer(
      { handle: (request, peer, fds) => this.handleAdmin(request, peer, fds) },
      { adminPath: config.adminSocket, registerPath: config.registrationSocket, allow: config.registration, log: (fields, msg) => this.log.info(fields, msg) },
    );
    this.client = new ControlPlaneClient(this.session, {
      urls: config.controlPlane.urls,
      ca: fs.readFileSync(config.controlPlane.caFile, 'utf8'),
      token,
      heartbeatMs: config.heartbeatSeconds * 1000,
      onEvent: (event, detail) => this.log.info({ event, detail }, 'control plane'),
    });
  }

  /** Firewall work one at a time (pushes and the periodic resync). */
  private firewallSync(state: DesiredState, changes?: BindingChange[], hooks?: SyncHooks) {
    const next = this.firewallChain.then(() => this.firewall.sync(state, changes, hooks));
    this.firewallChain = next.catch(() => {});
    return next;
  }

  /**
   * The dispatcher and the firewall brought to `state`, both of them, using
   * both CPUs. A small delta: the firewall plans and starts its one `ipset`
   * run, then this thread makes the dispatcher's in-place writes. A full
   * apply: the dispatcher's table is built on its own thread while this one
   * plans the firewall, whose tools then write (from files, at their own
   * pace) while the table is published. Either way, for a moment one may be
   * ahead of the other: a connection then goes to the old service or the
   * new one, never to neither. Both are awaited before the result: the
   * caller puts the last known good back only once both are idle.
   */
  /** Returns whether the dispatcher's part was made in place (no new table). */
  private async kernelApply(state: DesiredState, changes: BindingChange[] | undefined): Promise<boolean> {
    const started = performance.now();
    const build: TableBuilder = (input, serial, order) => this.tableBuilder.build(input, serial, order);
    let dispatcher: Promise<ApplyResult | undefined>;
    let firewall: ReturnType<Agent['firewallSync']>;
    let dispatched = started;
    if (changes !== undefined && this.dispatcher.specsInPlace(changes, changeSpec)) {
      // Small writes both: the firewall's one ipset run is spawned first, so
      // the two land within a moment of each other.
      let writing!: () => void;
      const writesStarted = new Promise<void>((resolve) => (writing = resolve));
      firewall = this.firewallSync(state, changes, { writing });
      await Promise.race([writesStarted, firewall.then(() => {}, () => {})]);
      await new Promise((resolve) => setImmediate(resolve)); // the one small write: spawned in the same turn
      dispatcher = this.dispatcher.applyChanges(changes, changeSpec, state.bindings, build);
    } else if (changes !== undefined) {
      // A table build on its thread while this one plans the firewall.
      dispatcher = this.dispatcher.applyChanges(changes, changeSpec, state.bindings, build);
      firewall = this.firewallSync(state, changes);
    } else {
      dispatcher = this.dispatcher.replaceBindingsAsync(state.bindings, build);
      firewall = this.firewallSync(state, changes);
    }
    dispatcher = dispatcher.then((r) => {
      dispatched = performance.now();
      return r;
    });
    const [d, f] = await Promise.allSettled([dispatcher, firewall]);
    if (d.status === 'rejected') throw d.reason;
    if (f.status === 'rejected') throw f.reason;
    // The count in the table's header after the writes: a delta that did not
    // land as the state says is caught here, without reading the table again.
    if (d.value && d.value.bindings !== state.bindings.count) {
      throw new SwitchyardError('EKERNEL', `the dispatcher holds ${d.value.bindings} bindings after the apply, the state has ${state.bindings.count}`);
    }
    for (const warning of d.value?.warnings ?? []) this.log.warn({ warning }, 'dispatcher');
    const inPlace = d.value?.inPlace ?? false;
    this.log.info({ bindings: state.bindings.count, delta: changes?.length ?? null, inPlace, dispatcherMs: Math.round(dispatched - started), firewallMs: Math.round(f.value.ms), totalMs: Math.round(performance.now() - started), firewall: f.value.summary }, 'kernel updated');
    return inPlace;
  }

  /**
   * After a full apply, before it is acknowledged: the delta path (index,
   * guards, firewall planning, dispatcher planning) run once on a made-up
   * binding and undone, nothing written. The first one-binding change after
   * a snapshot otherwise pays for compiling that code (30-60 ms instead of
   * 10-15 measured); the snapshot, seconds long, pays it instead.
   */
  private rehearse(indexed: IndexedState): void {
    if (indexed.bindings.count === 0 || this.local.size > 0) return;
    const t = indexed.bindings;
    const full = t.family[0] === 4 ? 32 : 128;
    const probe = { label: t.label(0), protocol: protocolName(t.protocol[0]!), prefix: `${t.prefixText(0).split('/')[0]}/${full}`, port: t.port[0]! === 0 ? 1 : 0 };
    let made;
    try {
      made = indexed.applyDelta({ add: [probe], remove: [] }, 'rehearsal');
    } catch {
      return; // that key is bound: no rehearsal this time
    }
    try {
      checkGuards(made, indexed);
      this.firewall.rehearse(indexed.state, made.changes);
      this.dispatcher.rehearse({ label: probe.label, protocol: probe.protocol, prefix: parseBindingPrefix(probe.prefix, 'rehearsal', true), port: probe.port });
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'rehearsal failed (nothing was written)');
    } finally {
      made.undo();
    }
  }

  /** The control plane's state in force (an empty one before the first push). */
  private controlPlaneState(): IndexedState {
    return this.session.applied?.indexed ?? IndexedState.of(parseDesiredState({ bindings: [] }, 'no state yet'));
  }

  /** A request on the admin socket (root) or the registration socket (allowed peers, `register` only). */
  private async handleAdmin(request: AdminRequest, peer: Peer, fds: number[]): Promise<Record<string, unknown>> {
    const by = { uid: peer.uid, pid: peer.pid };
    switch (request.op) {
      case 'status': {
        const c = this.session.applied;
        const cp = this.controlPlaneState();
        return {
          agent_id: this.config.agentId,
          dispatcher: { netns: this.location.netnsPath, state_dir: this.location.dir },
          control_plane: { url: this.client.url, connected: this.client.connected },
          applied: c ? { epoch: c.epoch, version: c.version, digest: c.digest, acked_at: new Date(c.ackedAt).toISOString() } : null,
          refused: this.session.hello().refused,
          bindings: { control_plane: cp.bindings.count, kernel: this.local.kernelState(cp).bindings.count, local_overrides: this.local.size },
          overrides: this.local.list(),
        };
      }
      case 'local-list':
        return { overrides: this.local.list() };
      case 'local-bind':
      case 'local-unbind':
        return this.session.exclusive(async () => {
          const cp = this.controlPlaneState();
          const op = request.op === 'local-bind' ? { bind: request.binding } : { unbind: canonicalKey((request.key ?? {}) as never, 'local unbind') };
          const change = this.local.change(cp, op, by);
          try {
            await this.kernelApply(change.state, change.changes);
          } catch (err) {
            change.revert();
            await this.kernelApply(this.local.effective(cp, undefined).state, undefined).catch(() => {}); // rebuilt: the reverted overrides
            throw err;
          }
          this.log.warn({ op: request.op, by, changes: change.changes.length }, 'local override changed');
          return { kernel_bindings: change.state.bindings.count, local_overrides: this.local.size };
        });
      case 'local-clear':
        return this.session.exclusive(async () => {
          const r = this.local.clear(this.controlPlaneState());
          await this.kernelApply(r.state, undefined);
          this.log.warn({ by, removed: r.removed }, 'local overrides cleared');
          return { removed: r.removed, kernel_bindings: r.state.bindings.count };
        });
      case 'register': {
        const label = parseLabel(request.label, 'register: label');
        if (fds.length === 0) throw new SwitchyardError('ENO_SOCKETS', 'register: no sockets were passed with the request (SCM_RIGHTS)');
        // Between pushes: a full apply holds the dispatcher's writer lock across its table build.
        return this.session.exclusive(async () => {
          const registered = fds.map((fd) => {
            const r = this.dispatcher.register(label, fd);
            return { label, family: r.destination.family, protocol: r.destination.protocol, socket: r.socket, replaced: r.replaced };
          });
          this.log.info({ label, by, registered: registered.map((r) => r.socket) }, 'sockets registered');
          return { registered };
        });
      }
      default:
        throw new SwitchyardError('EINVAL_ARGUMENT', `unknown op ${JSON.stringify(request.op)} (status, local-bind, local-unbind, local-list, local-clear, register)`);
    }
  }

  /**
   * Restores the last known good state, opens the admin and registration
   * sockets (and metrics), then tells systemd it is ready — a unit ordered
   * After= the agent may register at once — then connects.
   */
  async start(): Promise<void> {
    await this.session.restore();
    const lkg = this.session.applied;
    this.log.info({ version: lkg?.version ?? null, epoch: lkg?.epoch ?? null }, lkg ? 'last known good state restored' : 'no last known good state yet');
    await this.admin.listen();
    if (this.config.metricsListen) {
      const port = await this.metrics.serve(this.config.metricsListen);
      this.log.info({ listen: this.config.metricsListen, port }, 'metrics served');
    }
    this.status.ready(lkg);
    const ping = watchdogPingMs();
    if (ping) {
      this.watchdog = setInterval(() => notify('WATCHDOG=1'), ping);
      this.watchdog.unref();
    }
    this.resync = setInterval(() => {
      const c = this.session.applied;
      if (!c || this.session.pushing) return; // a push syncs the firewall itself
      this.firewallSync(this.local.kernelState(c.indexed)).then(
        (result) => {
          if (!result.changed) return;
          this.metrics.firewallRepairs.inc();
          this.log.warn({ firewall: result.summary }, 'firewall drift repaired');
        },
        // warn, not error: the rules in force stay and the next resync tries again (a push's failure is its NACK).
        (err: Error) => this.log.warn({ err: err.message }, 'firewall resync failed; the next resync retries'),
      );
    }, this.config.firewall.resyncSeconds * 1000);
    this.resync.unref();
    try {
      this.log.info({ ms: Math.round(await warmUp(this.tableBuilder, this.decoder)) }, 'warmed up (the push path compiled on a made-up state; nothing written)');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'warm-up failed (nothing was written; the first push runs cold)');
    }
    this.client.start();
  }

  stop(): void {
    notify('STOPPING=1');
    clearInterval(this.watchdog);
    clearInterval(this.resync);
    this.client.stop();
    this.metrics.close();
    this.admin.close();
    this.tableBuilder.close();
    this.decoder.close();
    this.loopHold.stop();
    this.dispatcher.close();
    this.log.info('stopped; the data plane and the firewall stay as they are');
  }
}
