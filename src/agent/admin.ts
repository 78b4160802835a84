/**
 * The agent's Unix sockets. One request per connection: a JSON object on
 * one line, possibly with file descriptors (SCM_RIGHTS); one JSON reply,
 * then the agent closes.
 *
 *   - the admin socket (mode 0600, and the peer must be uid 0: checked with
 *     SO_PEERCRED, not trusted from the request): `status`, `local-bind`,
 *     `local-unbind`, `local-list`, `local-clear`, `register`;
 *   - the registration socket (mode 0666): `register` only, for services
 *     that hand over their own listening sockets; the peer's uid or gid must
 *     be allowed for the label in the agent's config
 *     (`"registration": {"cdn": {"uids": [998], "gids": [998]}}`), root
 *     always is.
 *
 * Descriptors that arrive with a request the agent refuses are closed.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { SwitchyardError } from '../errors.js';
import { checkDocumentFields, requireFields } from '../bindings/binding.js';
import { native } from '../kernel/native.js';

export interface Peer {
  pid: number;
  uid: number;
  gid: number;
}

export interface AdminRequest {
  op: string;
  [field: string]: unknown;
}

export type AdminReply = { ok: true; [field: string]: unknown } | { ok: false; code: string; message: string };

/** label → the uids and gids that may register sockets for it. */
export type RegistrationAllowList = Record<string, { uids: number[]; gids: number[] }>;

export interface AdminHandlers {
  /** Runs an admin request (the peer is root); may throw a SwitchyardError (its code and message are the reply). */
  handle(request: AdminRequest, peer: Peer, fds: number[]): Promise<Record<string, unknown>>;
}

const MAX_REQUEST_BYTES = 64 * 1024;
const REQUEST_TIMEOUT_MS = 5_000;

/**
 * Each op and the fields its request carries besides "op" (all required;
 * their values are checked by the op's handler). A Map keyed by the peer's
 * string: `OPS[op]` on a plain object would find "constructor".
 */
const ADMIN_OPS: ReadonlyMap<string, readonly string[]> = new Map([
  ['status', []],
  ['local-bind', ['binding']],
  ['local-unbind', ['key']],
  ['local-list', []],
  ['local-clear', []],
  ['register', ['label']],
]);

/**
 * A request's text as the agent receives it: a JSON object whose own "op" is
 * one of ADMIN_OPS and whose other own fields are exactly that op's. Nothing
 * inherited counts, and "__proto__" (an own property after JSON.parse) is an
 * unknown field like any other.
 */
export function parseAdminRequest(text: string): AdminRequest {
  let request: unknown;
  try {
    request = JSON.parse(text);
  } catch (err) {
    throw new SwitchyardError('EINVAL_ARGUMENT', `request is not JSON: ${(err as Error).message}`, { entry: 'request' });
  }
  if (typeof request !== 'object' || request === null || Array.isArray(request) || !Object.hasOwn(request, 'op')) {
    throw new SwitchyardError('EINVAL_ARGUMENT', 'request: expected a JSON object with an "op"', { entry: 'request' });
  }
  const op = (request as { op: unknown }).op;
  const fields = typeof op === 'string' ? ADMIN_OPS.get(op) : undefined;
  if (!fields) throw new SwitchyardError('EINVAL_ARGUMENT', `request: unknown op ${JSON.stringify(op)} (${[...ADMIN_OPS.keys()].join(', ')})`, { entry: 'op' });
  const entry = `request ${JSON.stringify(op)}`;
  checkDocumentFields(request, entry, new Set(['op', ...fields]), `{"op"${fields.map((f) => `, "${f}"`).join('')}}`, 'EINVAL_ARGUMENT');
  requireFields(request, entry, fields, 'EINVAL_ARGUMENT');
  return request as AdminRequest;
}

export function mayRegister(allow: RegistrationAllowList, label: string, peer: Peer): boolean {
  if (peer.uid === 0) return true;
  const entry = Object.prototype.hasOwnProperty.call(allow, label) ? allow[label] : undefined;
  return entry !== undefined && (entry.uids.includes(peer.uid) || entry.gids.includes(peer.gid));
}

export class AdminServer {
  private readonly servers: net.Server[] = [];

  constructor(
    private readonly handlers: AdminHandlers,
    private readonly options: { adminPath: string; registerPath?: string; allow: RegistrationAllowList; log: (fields: Record<string, unknown>, msg: string) => void },
  ) {}

  async listen(): Promise<void> {
    await this.listenOn(this.options.adminPath, true);
    if (this.options.registerPath) await this.listenOn(this.options.registerPath, false);
  }

  private async listenOn(file: string, admin: boolean): Promise<void> {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
    // A socket file left by a previous agent (killed): nobody answers on it.
    if (fs.existsSync(file)) {
      if (!fs.statSync(file).isSocket()) throw new SwitchyardError('EINVAL_ARGUMENT', `${file} exists and is not a socket; refusing to replace it`, { entry: file });
      fs.rmSync(file);
    }
    const server = net.createServer({ pauseOnConnect: true }, (socket) => void this.serve(socket, admin));
    // Created owner-only (umask), then opened up only for the registration socket.
    const umask = process.umask(0o077);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(file, resolve);
      });
    } finally {
      process.umask(umask);
    }
    fs.chmodSync(file, admin ? 0o600 : 0o666);
    this.servers.push(server);
  }

  private async serve(socket: net.Socket, admin: boolean): Promise<void> {
    let fds: number[] = [];
    const reply = (r: AdminReply) => socket.end(`${JSON.stringify(r)}\n`);
    try {
      // The descriptor under the paused handle: the peer's credentials and
      // SCM_RIGHTS need recvmsg, which Node does not offer.
      const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
      const peer = native().peerCred(fd);
      const received = await native().receiveRequest(fd, MAX_REQUEST_BYTES, REQUEST_TIMEOUT_MS);
      fds = received.fds;
      const request = parseAdminRequest(received.data.toString('utf8'));
      if (admin && peer.uid !== 0) throw new SwitchyardError('EINVAL_ARGUMENT', `the admin socket is for root; uid ${peer.uid} refused`);
      if (!admin) {
        if (request.op !== 'register') throw new SwitchyardError('EINVAL_ARGUMENT', `the registration socket only takes "register", not ${JSON.stringify(request.op)}`);
        if (typeof request.label !== 'string' || !mayRegister(this.options.allow, request.label, peer)) {
          this.options.log({ peer, label: request.label }, 'registration refused');
          throw new SwitchyardError('EINVAL_ARGUMENT', `uid ${peer.uid} gid ${peer.gid} may not register sockets for ${JSON.stringify(request.label)}`);
        }
      }
      const result = await this.handlers.handle(request, peer, fds);
      this.options.log({ op: request.op, peer }, 'admin request');
      reply({ ok: true, ...result });
    } catch (err) {
      const code = err instanceof SwitchyardError ? err.code : ((err as NodeJS.ErrnoException).code ?? 'EINTERNAL');
      reply({ ok: false, code, message: (err as Error).message });
    } finally {
      for (const fd of fds) fs.closeSync(fd); // registered sockets are held by the dispatcher's map, not by these
    }
  }

  close(): void {
    for (const s of this.servers) s.close();
  }
}

/** The CLI's side: one request (with descriptors), the reply; errors come back as SwitchyardError. */
export function adminRequest(socketPath: string, request: AdminRequest, fds: readonly number[] = []): Record<string, unknown> {
  let text: string;
  try {
    text = native().unixRequest(socketPath, Buffer.from(`${JSON.stringify(request)}\n`), fds, 30_000).toString('utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' || code === 'ECONNREFUSED' ? 'no agent is running there' : code === 'EACCES' ? 'permission denied (the admin socket is for root)' : (err as Error).message;
    throw new SwitchyardError('EINVAL_ARGUMENT', `${socketPath}: ${why}`, { entry: socketPath, cause: err });
  }
  let reply: AdminReply;
  try {
    reply = JSON.parse(text) as AdminReply;
    if (typeof reply !== 'object' || reply === null || !Object.hasOwn(reply, 'ok') || typeof reply.ok !== 'boolean') throw new Error('no "ok"');
  } catch {
    throw new SwitchyardError('EINVAL_ARGUMENT', `${socketPath}: not an agent's reply: ${JSON.stringify(text.slice(0, 200))}`, { entry: socketPath });
  }
  if (!reply.ok) {
    const code = typeof reply.code === 'string' && /^E[A-Z_]+$/.test(reply.code) ? reply.code : 'EINVAL_ARGUMENT';
    throw new SwitchyardError(code as 'EINVAL_ARGUMENT', String(reply.message));
  }
  return reply;
}
