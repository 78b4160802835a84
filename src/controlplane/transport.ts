/**
 * The reference control plane's channel, its HTTPS side: agents
 * authenticated by a per-agent bearer token (compared in constant time;
 * the unauthenticated get 401 before the upgrade), administrators by name,
 * the WebSocket upgrade with a size cap on what agents send (`maxPayload`,
 * MAX_AGENT_FRAME_BYTES), and the routes: the service-bindings API under
 * /v1/, `GET /status` (same tokens, or the admin token: per agent the
 * applied version, the last NACK and heartbeat) and `POST /override`. An
 * authenticated connection is an agent session (agent-sessions.ts).
 *
 * It does not import the publisher (publisher.ts): what /status and
 * /override answer, and what the sessions push, it asks of its owner
 * (TransportHooks).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import crypto from 'node:crypto';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { AgentSessions, MAX_AGENT_FRAME_BYTES, type SessionHooks, type SessionOptions } from './agent-sessions.js';

export { MAX_AGENT_FRAME_BYTES, type AgentSession, type AgentStatus } from './agent-sessions.js';

/** What the transport takes of ServerOptions (documented there). */
export interface TransportOptions extends SessionOptions {
  /** PEM certificate and key of this server (agents pin the CA that signed it). */
  cert: string;
  key: string;
  /** agent id → token. */
  tokens: Record<string, string>;
  /** A token for `GET /status` only. */
  adminToken?: string;
  /** Named administrators (name → token): the API, /override and /status; the audit log records the name (`adminToken` is the one named "admin"). */
  adminTokens?: Record<string, string>;
  port?: number;
  host?: string;
}

/** What the transport asks of its owner: the sessions' hooks, and the answers of the routes beyond the agents' channel. */
export interface TransportHooks extends SessionHooks {
  /** GET /status's answer (an agent's token or an administrator's). */
  status(): unknown;
  /** POST /override, from an administrator (`actor`: its name). */
  override(req: IncomingMessage, res: ServerResponse, actor: string): void;
}

/** authorized()'s prefix for an administrator (agent ids have no colon). */
const ADMIN = 'admin:';
const isAdmin = (who: string) => who.startsWith(ADMIN);
const adminName = (who: string) => who.slice(ADMIN.length);

const tokenHash = (token: string) => crypto.createHash('sha256').update(token).digest('hex');
const sameToken = (a: string, b: string) => {
  const x = crypto.createHash('sha256').update(a).digest();
  const y = crypto.createHash('sha256').update(b).digest();
  return crypto.timingSafeEqual(x, y);
};

/** A JSON answer, as every route gives one. */
export const answerJson = (res: ServerResponse, code: number, body: unknown) => res.writeHead(code, { 'content-type': 'application/json' }).end(`${JSON.stringify(body)}\n`);

export class AgentTransport {
  /** The connected agents (events `ack`, `nack`, `stalled`). */
  readonly sessions: AgentSessions;
  private readonly https: https.Server;
  private readonly wss: WebSocketServer;
  /** sha256(token) → agent id: a connection is authenticated in one lookup, not one hash per agent. */
  private readonly tokenIndex = new Map<string, string>();
  private api: { handle(req: IncomingMessage, res: ServerResponse, actor: string): void } | undefined;

  /** Serves the service-bindings API (api.ts) under /v1/. */
  serveApi(api: { handle(req: IncomingMessage, res: ServerResponse, actor: string): void }): void {
    this.api = api;
  }

  constructor(
    private readonly options: TransportOptions,
    private readonly hooks: TransportHooks,
  ) {
    for (const [agentId, token] of Object.entries(options.tokens)) this.tokenIndex.set(tokenHash(token), agentId);
    this.sessions = new AgentSessions(options, hooks);
    this.https = https.createServer({ cert: options.cert, key: options.key }, (req, res) => {
      const json = (code: number, body: unknown) => answerJson(res, code, body);
      if (req.url?.startsWith('/v1/')) {
        const who = this.authorized(req.headers.authorization, true);
        if (!who) return void res.writeHead(401).end();
        if (!isAdmin(who)) return json(403, { error: 'the service-bindings API needs an admin token' });
        if (!this.api) return json(404, { error: 'the service-bindings API is not served here' });
        return this.api.handle(req, res, adminName(who));
      }
      if (req.url === '/status' || req.url === '/override') {
        const who = this.authorized(req.headers.authorization, true);
        if (!who) return void res.writeHead(401).end();
        if (req.method === 'GET' && req.url === '/status') return json(200, this.hooks.status());
        if (req.method === 'POST' && req.url === '/override') {
          // The operator's confirmation that the current version's withdrawal is meant: admin token only.
          if (!isAdmin(who)) return json(403, { error: 'the override needs an admin token' });
          return this.hooks.override(req, res, adminName(who));
        }
      }
      res.writeHead(404).end();
    });
    this.wss = new WebSocketServer({ noServer: true, maxPayload: options.maxFrameBytes ?? MAX_AGENT_FRAME_BYTES });
    this.https.on('upgrade', (req, socket, head) => {
      const agentId = this.authorized(req.headers.authorization, false);
      if (!agentId) {
        socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n');
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.sessions.accept(agentId, ws));
    });
  }

  /** The agent id for a valid agent token (or `admin:<name>` for an administrator's, when allowed), else undefined. */
  private authorized(header: string | undefined, adminAllowed: boolean): string | undefined {
    const token = /^Bearer (\S+)$/.exec(header ?? '')?.[1];
    if (!token) return undefined;
    if (adminAllowed) {
      // Every administrator compared, in constant time each: which one matched is not timed out of us.
      let admin: string | undefined;
      for (const [name, t] of this.admins) if (sameToken(token, t)) admin ??= `${ADMIN}${name}`;
      if (admin) return admin;
    }
    return this.tokenIndex.get(tokenHash(token));
  }

  /** Administrators by name (ServerOptions.adminTokens, and adminToken as "admin"). */
  private get admins(): Array<[string, string]> {
    return [...Object.entries(this.options.adminTokens ?? {}), ...(this.options.adminToken ? ([['admin', this.options.adminToken]] as Array<[string, string]>) : [])];
  }

  /** Listens, and looks for dead peers from then on; the port. */
  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.https.listen(this.options.port ?? 0, this.options.host ?? '127.0.0.1', resolve));
    this.sessions.startPinging();
    return (this.https.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.sessions.close();
    this.wss.close();
    const closed = new Promise<void>((resolve) => this.https.close(() => resolve()));
    // Keep-alive connections would keep it open (and serving) for as long as their clients send.
    this.https.closeAllConnections();
    await closed;
  }
}
