/**
 * The two long-running commands: `switchyard agent --config FILE` and
 * `switchyard control-plane --state FILE …`. Both run in the foreground
 * until SIGINT/SIGTERM and log JSON lines (pino) on stdout.
 */
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { readSecret } from './secret.js';
import { createLogger, logLevelOption } from '../log.js';
import { SwitchyardError } from '../errors.js';
import { readJsonFile, type DesiredState } from '../desired/state.js';
import { parseLabel } from '../bindings/binding.js';
import { Agent, readAgentConfig } from '../agent/agent.js';
import { ControlPlaneServer, type AgentStatus, type Proposed, type Publication } from '../controlplane/server.js';
import { DEFAULT_POLICY } from '../controlplane/policy.js';
import { parseRollout } from '../controlplane/rollout.js';
import { BindingsApi } from '../controlplane/api.js';
import { StateFile, type UnsavedChange } from '../controlplane/statefile.js';
import { openStore } from '../controlplane/store/open.js';
import { isReplicaStore } from '../controlplane/store/store.js';

const untilSignal = () =>
  new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });

export async function agentCommand(flags: Record<string, unknown>): Promise<number> {
  const file = flags.config as string | undefined;
  if (!file) throw new SwitchyardError('EINVAL_ARGUMENT', 'agent needs --config FILE');
  const config = readAgentConfig(file);
  readSecret(config.controlPlane.tokenFile, 'the token');
  const agent = new Agent(config);
  try {
    await agent.start();
  } catch (err) {
    agent.stop(); // what it opened (a socket already listening) would keep the process alive: it exits, and systemd restarts it
    throw err;
  }
  await untilSignal();
  agent.stop();
  return 0;
}

/**
 * `--listen HOST:PORT`: an IPv4 address or a host name, or an IPv6 address
 * in brackets (`[::]:8443`, as in a URL); the brackets are not part of the
 * address (kept, they made listen() look up a host named "[::]":
 * ENOTFOUND). An IPv6 address without them is refused: which colon ends
 * the address would be a guess.
 */
export function parseListen(text: string): { host: string; port: number } {
  const usage = `--listen ${JSON.stringify(text)} must be HOST:PORT (an IPv4 address or a host name), or [IPv6]:PORT`;
  const m = /^(?:\[([^\]]*)\]|([^[\]]*)):([0-9]{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new SwitchyardError('EINVAL_ARGUMENT', `${usage}; the port 1-65535`, { entry: '--listen' });
  const [, v6, name] = m;
  if (v6 !== undefined) {
    if (!net.isIPv6(v6)) throw new SwitchyardError('EINVAL_ARGUMENT', `${usage}: ${JSON.stringify(v6)} in brackets is not an IPv6 address`, { entry: '--listen' });
    return { host: v6, port };
  }
  if (name!.includes(':')) throw new SwitchyardError('EINVAL_ARGUMENT', `${usage}: an IPv6 address goes in brackets, e.g. [${name}]:${port}`, { entry: '--listen' });
  if (name === '') throw new SwitchyardError('EINVAL_ARGUMENT', `${usage}: the host is missing (0.0.0.0 or [::] for every address)`, { entry: '--listen' });
  return { host: name!, port };
}

/** A token's characters: what a `Bearer` header carries (visible ASCII, no spaces). */
const TOKEN = /^[\x21-\x7e]+$/;
/** Longer than any generated token (openssl rand -hex 32 is 64 characters), far below a header's limit. */
const TOKEN_MAX = 1024;
/** Shorter than this, a token is guessable: started with a warning. */
const TOKEN_WEAK = 16;

/** Why `token` cannot be a bearer token, or null. */
function badToken(token: unknown): string | null {
  if (typeof token !== 'string' || token === '') return 'must be a non-empty string';
  if (token.length > TOKEN_MAX) return `is ${token.length} characters long; at most ${TOKEN_MAX}`;
  if (!TOKEN.test(token)) return 'may contain visible ASCII characters only (no spaces: a Bearer header could not carry it)';
  return null;
}

/**
 * A tokens file, `{"<id>": "<token>", ...}`: the agents' (each id the one
 * its hello must say) or the administrators' (each name what the audit log
 * records). Valid JSON, each id by the label rule, each token usable in a
 * Bearer header and given to one id only (a shared token would let one
 * speak as the other, and authenticate as whichever was listed last).
 * Errors name the file and the entry (the CLI exits 2).
 */
export function parseTokens(text: string, file: string, kind: 'agent' | 'admin' = 'agent'): Record<string, string> {
  const bad = (what: string, entry = file) => new SwitchyardError('EINVAL_FILE', `${file}: ${what}`, { entry });
  const idName = kind === 'agent' ? 'agent id' : 'admin name';
  const shape = `{"<${kind === 'agent' ? 'agent-id' : 'name'}>": "<token>", ...}`;
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message}); expected ${shape}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad(`expected an object ${shape}`);
  const entries = Object.entries(doc);
  if (entries.length === 0) throw bad(kind === 'agent' ? 'no agent tokens: no agent could connect' : 'no admin tokens: nobody could use the API');
  const byToken = new Map<string, string>();
  for (const [id, token] of entries) {
    const entry = `${file}: ${JSON.stringify(id)}`;
    try {
      parseLabel(id, idName);
    } catch (err) {
      // parseLabel says `agent id: label "x" must be …`: the rule is the one for labels, the thing an id.
      throw bad(`${idName} ${(err as Error).message.slice(`${idName}: `.length).replace(/^label /, '')}`, entry);
    }
    const why = badToken(token);
    if (why) throw bad(`the token of ${id} ${why}`, entry);
    const other = byToken.get(token as string);
    if (other !== undefined) throw bad(`${id} has the same token as ${other}; every ${kind === 'agent' ? 'agent' : 'administrator'} needs its own`, entry);
    byToken.set(token as string, id);
  }
  return Object.fromEntries(entries) as Record<string, string>;
}

export async function controlPlaneCommand(flags: Record<string, unknown>): Promise<number> {
  const need = (name: string) => {
    const v = flags[name];
    if (typeof v !== 'string' || v === '') throw new SwitchyardError('EINVAL_ARGUMENT', `control-plane needs --${name}`);
    return v;
  };
  const logLevel = logLevelOption(flags['log-level']);
  const stateFile = need('state');
  const { host, port } = parseListen(need('listen'));
  const tokensFile = need('tokens');
  const tokens = parseTokens(readSecret(tokensFile, 'the agent tokens'), tokensFile);
  const adminFile = typeof flags['admin-token-file'] === 'string' ? flags['admin-token-file'] : undefined;
  const adminToken = adminFile === undefined ? undefined : readSecret(adminFile, 'the admin token').trim();
  if (adminFile !== undefined) {
    const why = badToken(adminToken);
    if (why) throw new SwitchyardError('EINVAL_FILE', `${adminFile}: the admin token ${why}`, { entry: adminFile });
  }
  // Named administrators: the audit log says which of them made each change.
  const adminsFile = typeof flags['admin-tokens'] === 'string' ? flags['admin-tokens'] : undefined;
  const adminTokens: Record<string, string> = adminsFile === undefined ? {} : parseTokens(readSecret(adminsFile, 'the admin tokens'), adminsFile, 'admin');
  if (adminToken !== undefined) {
    if (Object.hasOwn(adminTokens, 'admin')) throw new SwitchyardError('EINVAL_FILE', `${adminsFile}: "admin" is the name of --admin-token-file's token; choose another name`, { entry: adminsFile! });
    adminTokens.admin = adminToken;
  }
  for (const [name, token] of Object.entries(adminTokens)) {
    const file = name === 'admin' && adminToken !== undefined ? adminFile! : adminsFile!;
    const agent = Object.entries(tokens).find(([, t]) => t === token)?.[0];
    // The API answers admin tokens first: that agent would be an administrator.
    const whose = file === adminFile ? 'the admin token' : `the admin token of ${name}`;
    if (agent !== undefined) throw new SwitchyardError('EINVAL_FILE', `${file}: ${whose} is also ${agent}'s token in ${tokensFile}; it must be its own`, { entry: file });
    const other = Object.entries(adminTokens).find(([n, t]) => n !== name && t === token)?.[0];
    if (other !== undefined) throw new SwitchyardError('EINVAL_FILE', `${file}: the admin token of ${name} is also ${other}'s; every administrator needs its own`, { entry: file });
  }
  const log = createLogger({ component: 'control-plane' }, { level: logLevel });
  for (const [agent, token] of Object.entries(tokens)) if (token.length < TOKEN_WEAK) log.warn({ agent, file: tokensFile }, `the token of ${agent} is shorter than ${TOKEN_WEAK} characters: guessable (openssl rand -hex 24 makes a good one)`);
  const share = flags['withdrawal-share'] === undefined ? 5 : Number(flags['withdrawal-share']);
  if (!(share >= 0 && share <= 100)) throw new SwitchyardError('EINVAL_ARGUMENT', `--withdrawal-share ${JSON.stringify(flags['withdrawal-share'])} must be a percentage 0-100`);
  const rolloutFile = typeof flags.rollout === 'string' ? flags.rollout : undefined;
  const rollout = rolloutFile === undefined ? undefined : parseRollout(readJsonFile(rolloutFile), rolloutFile);
  // The state file: followed, and written (durably, before publishing) by the service-bindings API.
  const file = new StateFile(stateFile);
  const storeSpec = typeof flags.store === 'string' && flags.store !== '' ? flags.store : path.join(path.dirname(path.resolve(stateFile)), 'store');
  const store = openStore(storeSpec, (err) => log.error({ err: err.message }, 'store connection'));
  // Over PostgreSQL, any number of replicas: each needs its own name; --advertise is where the others send writers.
  const advertise = typeof flags.advertise === 'string' ? flags.advertise : null;
  if (advertise !== null && !/^https:\/\/[^/]+\/?$/.test(advertise)) throw new SwitchyardError('EINVAL_ARGUMENT', `--advertise ${JSON.stringify(advertise)} must be https://HOST:PORT (this replica's API, as the others reach it)`);
  const replicaName = typeof flags['replica-name'] === 'string' ? parseLabel(flags['replica-name'], '--replica-name') : os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 63);
  if (!isReplicaStore(store) && (flags['replica-name'] !== undefined || advertise !== null)) {
    throw new SwitchyardError('EINVAL_ARGUMENT', `--replica-name and --advertise are for replicas over PostgreSQL (--store postgres://…); ${store.description} is one control plane's`);
  }
  const replica = isReplicaStore(store) ? { name: replicaName, advertise } : undefined;
  const server = new ControlPlaneServer({
    ...(rollout ? { rollout } : {}),
    policy: { ...DEFAULT_POLICY, limits: { ...DEFAULT_POLICY.limits, withdrawalShare: share / 100 } },
    cert: fs.readFileSync(need('cert'), 'utf8'),
    key: readSecret(need('key'), 'the TLS key'),
    tokens,
    adminTokens,
    host,
    port,
    // Replicas keep the state in the database alone: a file per replica would drift apart.
    ...(replica ? {} : { stateFile: file }),
    store,
    ...(replica ? { replica } : {}),
  });
  server.on('leading', (term: number) => log.warn({ term }, 'this replica holds the publishing lease: it publishes'));
  server.on('following', (why: string) => log.warn({ why }, 'this replica does not publish: it follows the one that does'));
  server.on('store-error', (err: Error) => log.error({ store: store.description, err: err.message }, 'store'));
  server.on('unsaved', (source: string, err: UnsavedChange) => log.error({ why: source, file: stateFile, code: err.reason ?? err.code, err: err.message }, 'not saved, so not published: the current version stays'));
  server.on('stalled', (agent: string, why: string) => log.warn({ agent }, why));
  // An agent's refusal is a warning here too (it was not logged at all): that agent does not run the version.
  server.on('nack', (agent: string, nack: { version: number | null; code: string; message: string }) => log.warn({ agent, version: nack.version, code: nack.code, message: nack.message }, 'refused by an agent'));
  // One line per agent per version: debug, or a fleet floods the log.
  server.on('ack', (agent: string, version: number) => log.debug({ agent, version }, 'acknowledged by an agent'));
  let refusal = '';
  /** One log line (or a few) per proposed state, from the file or the API. */
  const logProposal = (r: Proposed, base: Record<string, unknown>) => {
    switch (r.outcome) {
      case 'published':
        log.info({ ...base, ms: r.ms, judged: r.judged, version: r.version, changes: r.summary, unreachable: r.warnings.length }, 'published');
        for (const w of r.warnings.slice(0, 20)) log.warn({ code: w.code, witness: w.witness }, w.message);
        break;
      case 'unchanged':
        log.info({ ...base, ms: r.ms, version: r.version }, 'unchanged');
        break;
      case 'held':
        log.warn({ ...base, ms: r.ms, version: r.version, reason: r.withdrawal.message, entries: r.withdrawal.entries, changes: r.summary }, `held, not published: confirm with control-plane override --version ${r.version}`);
        break;
      case 'refused':
        refusal = [...r.findings.map((f) => `${f.code} ${f.message}`), ...r.guards.map((g) => `${g.code} ${g.message}: ${g.entries.join('; ')}`)].slice(0, 5).join('; ');
        log.error({ ...base, ms: r.ms, findings: r.findings.slice(0, 50).map((f) => ({ code: f.code, message: f.message, witness: f.witness })), guards: r.guards }, 'refused by verification: not published, the current version stays');
        break;
      case 'replayed':
        log.info({ ...base, requestId: r.earlier.requestId, outcome: r.earlier.outcome, version: r.earlier.version }, 'a retried request, answered as before (nothing made again)');
        break;
    }
  };
  // What the store kept first: the file's state, when it is the one in force, is then "unchanged" (same epoch and version).
  await server.open();
  log.info({ store: server.storeDescription, version: server.history.current?.version ?? null, epoch: server.history.epoch }, 'store opened');
  let first: Promise<void> | undefined;
  let fileState: { state: DesiredState; why: string } | undefined;
  const proposeFile = (state: DesiredState, why: string) =>
    server.propose(state, `${stateFile} (${why})`, { actor: 'file', action: 'state file' }).then(
      (r) => logProposal(r, { why, bindings: state.bindings.count }),
      (err: Error) => {
        refusal = err.message;
        log.error({ why, err: err.message }, 'the state file could not be proposed');
      },
    );
  const watch = file.watch(log, (state, why) => {
    fileState = { state, why };
    // A replica's file seeds an empty store, or is an edit on the replica that publishes; elsewhere the API is the way in.
    if (replica && !server.role.leading) {
      if (why !== 'start') log.warn({ why, leader: server.role.leader }, 'the state file changed on a replica that does not publish: not proposed (change the state through the API)');
      return;
    }
    const proposed = proposeFile(state, why);
    first ??= proposed;
  });
  if (replica) {
    server.on('leading', () => {
      if (server.history.current === undefined && fileState) void proposeFile(fileState.state, 'seeding an empty store');
    });
  }
  await first;
  if (!watch.loaded || (!replica && server.history.current === undefined)) {
    watch.close();
    const why = watch.error ?? refusal;
    throw new SwitchyardError('EINVAL_FILE', `${stateFile}: no valid state to start from${why ? ` (${why})` : ''}`, { entry: stateFile });
  }
  // The service-bindings API saves what it publishes in the file first (ServerOptions.store): one source of truth.
  server.serveApi(new BindingsApi(server, (r, what, bindings) => logProposal(r, { why: what, bindings })));
  const bound = await server.listen();
  log.info({ host, port: bound, epoch: server.history.epoch, warmUpMs: Math.round(server.warmUpMs) }, 'listening');
  await untilSignal();
  watch.close();
  await server.close();
  return 0;
}

/** One HTTPS request to a control plane's API (the CA pinned, a bearer token from a 0600 file); the parsed JSON reply. */
async function controlPlaneRequest(flags: Record<string, unknown>, method: 'GET' | 'POST', route: string, payload?: unknown): Promise<unknown> {
  const need = (name: string) => {
    const v = flags[name];
    if (typeof v !== 'string' || v === '') throw new SwitchyardError('EINVAL_ARGUMENT', `control-plane ${route.slice(1)} needs --${name}`);
    return v;
  };
  const url = new URL(route, need('url'));
  if (url.protocol !== 'https:') throw new SwitchyardError('EINVAL_ARGUMENT', `--url ${JSON.stringify(flags.url)} must be https://HOST:PORT`);
  const token = readSecret(need('token-file'), 'the token').trim();
  const ca = fs.readFileSync(need('ca'), 'utf8');
  const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = https.request(url, { method, ca, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, timeout: 10_000 }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 10 s')));
    req.on('error', (err) => reject(new SwitchyardError('ECONTROL_PLANE', `${url.origin}: ${err.message}`, { entry: url.origin, cause: err })));
    req.end(payload === undefined ? undefined : JSON.stringify(payload));
  });
  if (status === 401) throw new SwitchyardError('ECONTROL_PLANE', `${url.origin}: the token was refused (401)`, { entry: url.origin });
  if (status !== 200) {
    let why = '';
    try {
      why = `: ${(JSON.parse(body) as { error?: string }).error ?? ''}`;
    } catch {
      // no JSON body
    }
    throw new SwitchyardError('ECONTROL_PLANE', `${url.origin}: ${method} ${route} answered ${status}${why}`, { entry: url.origin });
  }
  return JSON.parse(body) as unknown;
}

/**
 * `control-plane override --version N …`: the operator confirms that a
 * withdrawal is meant: a version the control plane held is published with
 * the override; the current version is pushed again, with it, to the agents
 * that refused it (admin token only).
 */
export async function controlPlaneOverride(flags: Record<string, unknown>, out: { data(value: unknown, human: () => string): void }): Promise<number> {
  const version = Number(flags.version);
  if (typeof flags.version !== 'string' || !Number.isSafeInteger(version) || version < 1) throw new SwitchyardError('EINVAL_ARGUMENT', `--version ${JSON.stringify(flags.version)} must be a version number`);
  const r = (await controlPlaneRequest(flags, 'POST', '/override', { version })) as { version: number; agents: string[] };
  out.data(r, () => `version ${r.version} confirmed: pushed with the override to ${r.agents.length === 0 ? 'no agent (none connected, or none had refused it)' : r.agents.join(', ')}`);
  return 0;
}

/**
 * `control-plane status --url https://HOST:PORT --ca FILE --token-file FILE`:
 * the control plane's view of each agent (GET /status), over the same TLS
 * the agents use (the CA pinned, a bearer token: the admin token or an
 * agent's).
 */
export async function controlPlaneStatus(flags: Record<string, unknown>, out: { data(value: unknown, human: () => string): void }): Promise<number> {
  const status = (await controlPlaneRequest(flags, 'GET', '/status')) as { publication: Publication; agents: AgentStatus[] };
  const { publication: p, agents } = status;
  out.data(status, () => {
    const now = Date.now();
    const ago = (at: number) => `${Math.round((now - at) / 1000)} s ago`;
    const head = [p.version === null ? 'nothing published yet' : `version ${p.version}: ${p.bindings} bindings`];
    if (p.last) head.push(`  published ${ago(p.last.at)} from ${p.last.source}${p.last.summary.length ? `: ${p.last.summary.slice(0, 5).join('; ')}` : ''}${p.last.warnings.length ? ` (${p.last.warnings.length} unreachable binding(s))` : ''}`);
    if (p.held) head.push(`  HELD version ${p.held.version} (${ago(p.held.since)}, ${p.held.source}): ${p.held.reason}; ${p.held.entries.join('; ')}; confirm with control-plane override --version ${p.held.version}`);
    if (p.rollout) {
      const r = p.rollout;
      head.push(`  rollout of version ${r.version ?? '-'} (bake ${r.bakeSeconds} s)${r.halted ? `: HALTED at ${r.halted.stage} by ${r.halted.agentId}: ${r.halted.why}` : ''}`);
      for (const st of r.stages) head.push(`    ${st.name}: ${st.state}, version ${st.version ?? '-'}, ${st.applied}/${st.agents} agents have it`);
    }
    if (p.refused) head.push(`  last refused ${ago(p.refused.at)} (${p.refused.source}): ${[...p.refused.findings.map((f) => `${f.code} ${f.message}`), ...p.refused.guards.map((g) => `${g.code} ${g.message}`)].slice(0, 3).join('; ')}`);
    if (agents.length === 0) return [...head, 'no agent has connected yet'].join('\n');
    const rows = agents.map((a) => [
      a.agentId,
      a.connected ? 'connected' : 'disconnected',
      a.applied ? `v${a.applied.version} (${a.applied.epoch.slice(0, 8)})` : 'nothing applied',
      a.inFlight !== null ? `pushing v${a.inFlight}` : '',
      a.lastHeartbeat !== null ? `heartbeat ${Math.round((now - a.lastHeartbeat) / 1000)} s ago` : 'no heartbeat',
      a.localOverrides > 0 ? `${a.localOverrides} local override(s)` : '',
      a.lastNack ? `last NACK v${a.lastNack.version} ${a.lastNack.code}: ${a.lastNack.message}` : '',
    ]);
    return [...head, ...rows.map((r) => r.filter((x) => x !== '').join('  '))].join('\n');
  });
  return 0;
}
