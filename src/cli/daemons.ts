/**
 * The two long-running commands: `switchyard agent --config FILE` and
 * `switchyard control-plane --state FILE …`. Both run in the foreground
 * until SIGINT/SIGTERM and log JSON lines (pino) on stdout.
 */
import fs from 'node:fs';
import https from 'node:https';
import { pino } from 'pino';
import { SwitchyardError } from '../errors.js';
import { watchStateFile } from '../desired/watch.js';
import { readJsonFile } from '../desired/state.js';
import { Agent, readAgentConfig } from '../agent/agent.js';
import { ControlPlaneServer, type AgentStatus, type Proposed, type Publication } from '../controlplane/server.js';
import { DEFAULT_POLICY } from '../controlplane/policy.js';
import { parseRollout } from '../controlplane/rollout.js';
import { BindingsApi } from '../controlplane/api.js';
import { writeAtomic } from '../agent/store.js';

const untilSignal = () =>
  new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });

/** A secret file: readable by its owner only, or refused. */
function readSecret(file: string, what: string): string {
  const mode = fs.statSync(file).mode & 0o777;
  if (mode & 0o077) throw new SwitchyardError('EINVAL_FILE', `${file}: ${what} is mode ${mode.toString(8)}; it must be readable by its owner only (chmod 600)`, { entry: file });
  return fs.readFileSync(file, 'utf8');
}

export async function agentCommand(flags: Record<string, unknown>): Promise<number> {
  const file = flags.config as string | undefined;
  if (!file) throw new SwitchyardError('EINVAL_ARGUMENT', 'agent needs --config FILE');
  const config = readAgentConfig(file);
  readSecret(config.controlPlane.tokenFile, 'the token');
  const agent = new Agent(config);
  await agent.start();
  await untilSignal();
  agent.stop();
  return 0;
}

export async function controlPlaneCommand(flags: Record<string, unknown>): Promise<number> {
  const need = (name: string) => {
    const v = flags[name];
    if (typeof v !== 'string' || v === '') throw new SwitchyardError('EINVAL_ARGUMENT', `control-plane needs --${name}`);
    return v;
  };
  const stateFile = need('state');
  const [host, portText] = need('listen').split(/:(?=\d+$)/);
  const port = Number(portText);
  if (!host || !Number.isInteger(port) || port < 1 || port > 65535) throw new SwitchyardError('EINVAL_ARGUMENT', `--listen ${JSON.stringify(flags.listen)} must be HOST:PORT`);
  const tokens = JSON.parse(readSecret(need('tokens'), 'the agent tokens')) as Record<string, string>;
  const log = pino({ base: { component: 'control-plane' } });
  const share = flags['withdrawal-share'] === undefined ? 5 : Number(flags['withdrawal-share']);
  if (!(share >= 0 && share <= 100)) throw new SwitchyardError('EINVAL_ARGUMENT', `--withdrawal-share ${JSON.stringify(flags['withdrawal-share'])} must be a percentage 0-100`);
  const rollout = typeof flags.rollout === 'string' ? parseRollout(readJsonFile(flags.rollout), flags.rollout) : undefined;
  const server = new ControlPlaneServer({
    ...(rollout ? { rollout } : {}),
    policy: { ...DEFAULT_POLICY, limits: { ...DEFAULT_POLICY.limits, withdrawalShare: share / 100 } },
    cert: fs.readFileSync(need('cert'), 'utf8'),
    key: readSecret(need('key'), 'the TLS key'),
    tokens,
    ...(typeof flags['admin-token-file'] === 'string' ? { adminToken: readSecret(flags['admin-token-file'], 'the admin token').trim() } : {}),
    host,
    port,
  });
  let refusal = '';
  /** One log line (or a few) per proposed state, from the file or the API. */
  const logProposal = (r: Proposed, base: Record<string, unknown>) => {
    switch (r.outcome) {
      case 'published':
        log.info({ ...base, ms: r.ms, version: r.version, changes: r.summary, unreachable: r.warnings.length }, 'published');
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
    }
  };
  const watch = watchStateFile(stateFile, log, (state, why) => {
    logProposal(server.propose(state, `${stateFile} (${why})`), { why, bindings: state.bindings.count });
  });
  if (!watch.loaded || server.history.current === undefined) {
    watch.close();
    throw new SwitchyardError('EINVAL_FILE', `${stateFile}: no valid state to start from${refusal ? ` (${refusal})` : ''}`, { entry: stateFile });
  }
  // The service-bindings API writes what it publishes (or holds) back to the file: one source of truth.
  server.serveApi(
    new BindingsApi(server, { write: (doc) => writeAtomic(stateFile, `${JSON.stringify(doc, null, 2)}\n`, fs.statSync(stateFile).mode & 0o777) }, (r, what, bindings) => logProposal(r, { why: what, bindings })),
  );
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
