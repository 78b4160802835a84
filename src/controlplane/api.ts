/**
 * The service-bindings API (`/v1/…` on the control plane's HTTPS port,
 * admin token): bind a subnet to a service, remove it, set a service's
 * policy or the HTTPS-only ranges, in a few HTTP requests. Every change is
 * made on the state in force, validated with the same code as a file
 * (a bad field is a 400 naming it), then goes through the publishing
 * policy exactly like a file change (ControlPlaneServer.propose: verified,
 * diffed, published, held for confirmation, or refused). A change to be
 * published is first saved in the state file, durably, which stays the one
 * source of truth (its watcher then finds nothing new); one that cannot be
 * saved is not published (507, naming the file and the reason). A refused
 * change is not written, nor a held one: the file keeps the state in
 * force until the hold is confirmed (POST /override), when it is saved
 * and then published. Bodies are read by their own properties only: a
 * field named like one of Object.prototype's (`constructor`, `toString`,
 * `__proto__` …) is an unknown field. GET /v1/openapi.json describes it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SwitchyardError } from '../errors.js';
import { IPPROTO, parseBindingPrefix, parseLabel, parsePort, parseProtocol, type Binding } from '../bindings/binding.js';
import { parseDesiredState, type DesiredState } from '../desired/state.js';
import { documentOf, indexedCopy, type IndexedState, type StateDelta } from '../protocol/state.js';
import type { ControlPlaneServer, Proposed } from './server.js';
import { UnsavedChange } from './statefile.js';
import { NotLeader, notLeaderAnswer } from './lease.js';
import crypto from 'node:crypto';
import { ApiError, readBody, requestIdOf } from './http.js';
import type { AuditEntry } from './store/store.js';

type Doc = { bindings: Array<{ label: string; protocol: string; prefix: string; port: number }>; services: Record<string, unknown>; https_only: unknown; exclusive?: unknown };

/** Who asked, for the audit log. */
interface RequestContext {
  actor: string;
  remote: string | null;
  requestId: string | null;
  /** If-Match: the version the change was made against (412 when another is current). */
  ifMatch: number | null;
  /** ?dry_run=1: judged and answered, nothing saved or published. */
  dryRun: boolean;
  /** The request's digest (method, path, body): with requestId, what makes a retry the same request. */
  request: string;
}

/** If-Match: "N" (an ETag of GET), N or W/"N"; anything else is a 400 naming the header. */
function ifMatchOf(req: IncomingMessage): number | null {
  const v = req.headers['if-match'];
  if (v === undefined) return null;
  const m = /^\s*(?:W\/)?"?(\d{1,15})"?\s*$/.exec(v);
  if (!m) throw new ApiError(400, `If-Match must be a version as GET's ETag gives it ("3"), not ${JSON.stringify(v)}`, 'If-Match');
  return Number(m[1]);
}

function dryRunOf(url: URL): boolean {
  const v = url.searchParams.get('dry_run');
  if (v === null || v === '0' || v === 'false') return false;
  if (v === '1' || v === 'true' || v === '') return true;
  throw new ApiError(400, `dry_run must be 1 or 0, not ${JSON.stringify(v)}`, 'dry_run');
}

/** An own property's value: a field absent from the body is never found on Object.prototype. */
const own = (value: object, field: string): unknown => (Object.hasOwn(value, field) ? (value as Record<string, unknown>)[field] : undefined);

/** `value` as an object with only these fields (own ones; `required` among them), or a 400 naming the first other one. */
function fields(value: unknown, entry: string | undefined, allowed: readonly string[], required: readonly string[], shape: string): Record<string, unknown> {
  const where = entry ? `${entry}: ` : 'the body ';
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ApiError(400, `${where}must be ${shape}`, entry);
  for (const key of Object.keys(value)) if (!allowed.includes(key)) throw new ApiError(400, `${where}has an unknown field ${JSON.stringify(key)}: it must be ${shape}`, entry ?? key);
  for (const key of required) if (!Object.hasOwn(value, key)) throw new ApiError(400, `${where}misses the field ${JSON.stringify(key)}: it must be ${shape}`, entry ?? key);
  return value as Record<string, unknown>;
}

export class BindingsApi {
  /**
   * Changes are saved through the server's store (ServerOptions.store)
   * before they are published. `onProposed` is told of every change
   * proposed through the API (the control plane logs it).
   */
  constructor(
    private readonly server: ControlPlaneServer,
    private readonly onProposed?: (result: Proposed, what: string, bindings: number) => void,
  ) {}

  /** Answers one /v1/ request (the caller has checked the token: `actor` is the administrator's name). */
  handle(req: IncomingMessage, res: ServerResponse, actor = 'admin'): void {
    const send = (status: number, body: unknown) => {
      // The version a read saw, for If-Match on the write that follows it.
      const version = (body as { version?: unknown } | null)?.version;
      const etag = req.method === 'GET' && typeof version === 'number' ? { etag: `"${version}"` } : {};
      res.writeHead(status, { 'content-type': 'application/json', ...etag }).end(`${JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
    };
    const url = new URL(req.url ?? '/', 'https://control-plane');
    const route = `${req.method} ${url.pathname.replace(/^\/v1\/services\/[^/]+$/, '/v1/services/{label}')}`;
    readBody(req)
      .then((body) => {
        const request = crypto.createHash('sha256').update(`${req.method} ${url.pathname}\n${JSON.stringify(body ?? null)}`).digest('hex');
        return this.route(route, url, body, { actor, remote: req.socket.remoteAddress ?? null, requestId: requestIdOf(req), ifMatch: ifMatchOf(req), dryRun: dryRunOf(url), request });
      })
      .then(([status, value]) => send(status, value))
      .catch((err: unknown) => {
        if (err instanceof NotLeader) return notLeaderAnswer(err, req, res);
        if (err instanceof ApiError) return send(err.status, { error: err.message, ...(err.field ? { field: err.field } : {}) });
        // Not saved, so not published (the server has logged it): the reason is the system's.
        if (err instanceof UnsavedChange) return send(507, { outcome: 'unsaved', error: err.message, code: err.reason ?? err.code });
        if (err instanceof SwitchyardError) return send(400, { error: err.message, ...(err.entry ? { field: err.entry } : {}) });
        send(500, { error: (err as Error).message });
      });
  }

  private route(route: string, url: URL, body: unknown, ctx: RequestContext): [number, unknown] | Promise<[number, unknown]> {
    const label = route.endsWith('/{label}') ? serviceLabel(url.pathname.split('/')[3] ?? '') : '';
    switch (route) {
      case 'GET /v1/openapi.json':
        return [200, OPENAPI];
      case 'GET /v1/audit': {
        const number = (name: string, fallback: number, max: number) => {
          const text = url.searchParams.get(name);
          if (text === null) return fallback;
          const n = Number(text);
          if (!/^\d+$/.test(text) || n > max) throw new ApiError(400, `${name} must be a whole number 0-${max}`, name);
          return n;
        };
        return this.server.auditLog({ after: number('after', 0, Number.MAX_SAFE_INTEGER), limit: number('limit', 1000, 10_000) }).then((entries): [number, unknown] => [200, { entries }]);
      }
      case 'GET /v1/state':
        return [200, { version: this.server.history.current?.version ?? null, state: this.document() }];
      case 'GET /v1/bindings': {
        const q = (name: string) => url.searchParams.get(name);
        const bindings = this.document().bindings.filter((b) => (!q('label') || b.label === q('label')) && (!q('protocol') || b.protocol === q('protocol')) && (!q('prefix') || b.prefix === q('prefix')));
        return [200, { version: this.server.history.current?.version ?? null, bindings }];
      }
      case 'POST /v1/bindings':
        return this.changeBindings(ctx, 'POST /v1/bindings', () => {
          const added = list(body, 'bindings');
          const live = this.server.history.indexed;
          added.forEach((b, n) => {
            const entry = `bindings[${n}]`;
            const f = fields(b, entry, ['label', 'protocol', 'prefix', 'port'], ['label', 'protocol', 'prefix', 'port'], '{"label", "protocol", "prefix", "port"}');
            const [protocol, prefix, port] = [own(f, 'protocol'), own(f, 'prefix'), own(f, 'port')];
            parseLabel(own(f, 'label'), entry);
            const at = live?.find(IPPROTO[parseProtocol(protocol, entry)], parseBindingPrefix(prefix, entry, false), parsePort(port, entry)) ?? -1;
            if (at >= 0) throw new ApiError(409, `${entry}: ${String(protocol)} ${String(prefix)} port ${String(port)} is already bound to ${live!.bindings.label(at)}; DELETE it first to move it`, entry);
          });
          return { add: added as Binding[], remove: [] };
        });
      case 'DELETE /v1/bindings':
        return this.changeBindings(ctx, 'DELETE /v1/bindings', () => {
          const keys = list(body, 'bindings');
          const live = this.server.history.indexed;
          const gone = new Set<number>();
          keys.forEach((k, n) => {
            const entry = `bindings[${n}]`;
            // A label may be given (GET lists bindings with theirs): it must be the one bound there.
            const f = fields(k, entry, ['protocol', 'prefix', 'port', 'label'], ['protocol', 'prefix', 'port'], '{"protocol", "prefix", "port"} (and optionally the "label" bound there)');
            const [protocol, prefix, port, given] = [own(f, 'protocol'), own(f, 'prefix'), own(f, 'port'), own(f, 'label')];
            const at = live?.find(IPPROTO[parseProtocol(protocol, entry)], parseBindingPrefix(prefix, entry, false), parsePort(port, entry)) ?? -1;
            if (at < 0) throw new ApiError(404, `${entry}: nothing is bound to ${String(protocol)} ${String(prefix)} port ${String(port)}`, entry);
            if (given !== undefined && given !== live!.bindings.label(at)) throw new ApiError(409, `${entry}: ${String(protocol)} ${String(prefix)} port ${String(port)} is bound to ${live!.bindings.label(at)}, not ${JSON.stringify(given)}`, entry);
            gone.add(at);
          });
          const t = live!.bindings;
          return { add: [], remove: [...gone].map((at) => ({ protocol: t.binding(at).protocol, prefix: t.prefixText(at), port: t.port[at]! })) };
        });
      case 'GET /v1/services':
        return [200, { version: this.server.history.current?.version ?? null, services: this.document().services }];
      case 'PUT /v1/services/{label}':
        return this.change(ctx, `PUT /v1/services/${label}`, (doc) => {
          // A computed key in a literal is always an own data property (an assignment could reach a setter).
          doc.services = { ...doc.services, [label]: body };
        });
      case 'DELETE /v1/services/{label}':
        return this.change(ctx, `DELETE /v1/services/${label}`, (doc) => {
          // Own properties only: `"toString" in services` is true for every object.
          if (!Object.hasOwn(doc.services, label)) throw new ApiError(404, `no service policy for ${JSON.stringify(label)}`, 'label');
          delete doc.services[label];
        });
      case 'GET /v1/https-only':
        return [200, { version: this.server.history.current?.version ?? null, https_only: this.document().https_only }];
      case 'PUT /v1/https-only':
        return this.change(ctx, 'PUT /v1/https-only', (doc) => {
          doc.https_only = body;
        });
      case 'POST /v1/https-only':
      case 'DELETE /v1/https-only':
        return this.change(ctx, route, (doc) => {
          // Ranges one by one, as written in the state (canonical text: GET shows it).
          const given = list(body, 'prefixes');
          const current = doc.https_only as { prefixes: string[]; plaintext_ports: unknown };
          given.forEach((p, n) => {
            if (typeof p !== 'string') throw new ApiError(400, `prefixes[${n}]: expected a prefix`, `prefixes[${n}]`);
            const known = current.prefixes.includes(p);
            if (route.startsWith('POST') && known) throw new ApiError(409, `prefixes[${n}]: ${p} is already HTTPS-only`, `prefixes[${n}]`);
            if (route.startsWith('DELETE') && !known) throw new ApiError(404, `prefixes[${n}]: ${p} is not an HTTPS-only range (GET /v1/https-only lists them)`, `prefixes[${n}]`);
          });
          current.prefixes = route.startsWith('POST') ? [...current.prefixes, ...(given as string[])] : current.prefixes.filter((p) => !given.includes(p));
        });
      default:
        throw new ApiError(404, `no such route: ${route} (GET /v1/openapi.json lists them)`);
    }
  }

  private document(): Doc {
    const c = this.server.history.current;
    if (!c) throw new ApiError(409, 'nothing is published yet');
    return documentOf(c.state) as Doc;
  }

  /** A change made against a version other than the current one (If-Match) is refused: 412. */
  private checkIfMatch(ctx: RequestContext): void {
    const current = this.server.history.current?.version ?? null;
    if (ctx.ifMatch !== null && ctx.ifMatch !== current) {
      throw new ApiError(412, `If-Match: the change was made against version ${ctx.ifMatch}, but version ${current ?? 'none'} is current; read it again and retry`, 'If-Match');
    }
  }

  /**
   * The state in force, changed by `edit`, validated, then proposed like a
   * file change — judged, saved, and only then published (propose's `save`).
   */
  private change(ctx: RequestContext, what: string, edit: (doc: Doc) => void): Promise<[number, unknown]> {
    return this.proposeEdit(ctx, what, () => {
      const doc = this.document();
      edit(doc);
      return parseDesiredState(doc, 'request');
    });
  }

  /**
   * A change of bindings only, made on a copy of the state in force's
   * columns: nothing else of the state is written out and parsed again
   * (at 100,000 bindings that was most of a one-binding change's cost).
   */
  private changeBindings(ctx: RequestContext, what: string, delta: () => StateDelta): Promise<[number, unknown]> {
    return this.proposeEdit(ctx, what, () => {
      const live = this.server.history.indexed;
      if (!live) throw new ApiError(409, 'nothing is published yet');
      const copy = indexedCopy(live.state);
      copy.applyDelta(delta(), 'request');
      return copy;
    });
  }

  private async proposeEdit(ctx: RequestContext, what: string, make: () => DesiredState | IndexedState): Promise<[number, unknown]> {
    let bindings = 0;
    // Read, checked against If-Match, edited and judged in the control
    // plane's turn: a concurrent change lands before or after, never lost.
    const edited = () => {
      this.checkIfMatch(ctx);
      const state = make();
      bindings = state.bindings.count;
      return state;
    };
    const options = { save: true, action: what, remote: ctx.remote, requestId: ctx.requestId, actor: ctx.actor, request: ctx.request };
    if (ctx.dryRun) {
      const j = await this.server.judgeOnly(edited, `api ${what}`, options);
      return [200, { dry_run: true, ...j }];
    }
    const r: Proposed = await this.server.propose(edited, `api ${what}`, options);
    this.onProposed?.(r, `api ${what}`, bindings);
    switch (r.outcome) {
      case 'published':
        return [200, { outcome: r.outcome, version: r.version, changes: r.summary, unreachable: r.warnings.map((w) => w.message) }];
      case 'unchanged':
        return [200, { outcome: r.outcome, version: r.version }];
      case 'held':
        return [202, { outcome: r.outcome, version: r.version, reason: r.withdrawal.message, entries: r.withdrawal.entries, changes: r.summary, confirm: `POST /override {"version": ${r.version}}` }];
      case 'refused':
        return [422, { outcome: r.outcome, findings: r.findings.map(({ code, message, witness }) => ({ code, message, witness })), guards: r.guards }];
      case 'replayed':
        return replayed(r.earlier, ctx);
    }
  }
}

/**
 * A retried request answered from its record (X-Request-Id, the same
 * method, path and body): the outcome it had, `replayed: true`. The same
 * id with another request is refused: ids name one request.
 */
function replayed(earlier: AuditEntry, ctx: RequestContext): [number, unknown] {
  if (earlier.request !== ctx.request) {
    throw new ApiError(422, `X-Request-Id ${JSON.stringify(ctx.requestId)} was used for another request (${earlier.action}); use a new id for a new request`, 'X-Request-Id');
  }
  const body = { outcome: earlier.outcome, version: earlier.version, changes: earlier.summary, replayed: true };
  if (earlier.outcome === 'held') return [202, { ...body, confirm: `POST /override {"version": ${earlier.version}}` }];
  if (earlier.outcome === 'refused') return [422, { outcome: 'refused', findings: earlier.summary.map((message) => ({ message })), replayed: true }];
  return [200, body];
}

/** The body's one field, a list: `{"<field>": [...]}` and nothing else. */
function list(body: unknown, field: string): unknown[] {
  const value = own(fields(body, undefined, [field], [field], `{"${field}": [...]}`), field);
  if (!Array.isArray(value)) throw new ApiError(400, `the body must be {"${field}": [...]}`, field);
  return value;
}

/** The {label} of /v1/services/{label}: a label, or a 400 naming it. */
function serviceLabel(segment: string): string {
  let label: string;
  try {
    label = decodeURIComponent(segment);
  } catch {
    throw new ApiError(400, `the label in the path is not valid percent-encoding: ${JSON.stringify(segment)}`, 'label');
  }
  try {
    return parseLabel(label, 'label');
  } catch (err) {
    throw new ApiError(400, (err as Error).message, 'label');
  }
}

const change = {
  '200': { description: 'published (or unchanged): {outcome, version, changes: [who gains and loses what]}; with ?dry_run=1: {dry_run: true, outcome (what it would be), version, changes, findings, guards}, nothing saved or published' },
  '412': { description: 'If-Match names a version that is no longer current: {error, field: "If-Match"}; nothing changed' },
  '202': { description: 'held: it withdraws more of a service than the budget; {outcome, version, reason, entries, confirm}; not written to the state file. POST /override {"version": N} saves and publishes it' },
  '400': { description: 'a bad field: {error, field}' },
  '401': { description: 'no or wrong token' },
  '403': { description: 'not the admin token' },
  '422': { description: 'refused by verification: {outcome, findings: [{code, message, witness}], guards}; nothing published' },
  '507': { description: 'not saved: the state file could not be written durably, {outcome: "unsaved", error, code (EROFS, EACCES, ENOSPC …)}; nothing published' },
};
const bindingSchema = { type: 'object', required: ['label', 'protocol', 'prefix', 'port'], properties: { label: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' }, protocol: { enum: ['tcp', 'udp'] }, prefix: { type: 'string', example: '192.0.2.0/24' }, port: { type: 'integer', minimum: 0, maximum: 65535, description: '0: any port' } } };
const keySchema = { type: 'object', required: ['protocol', 'prefix', 'port'], properties: { protocol: { enum: ['tcp', 'udp'] }, prefix: { type: 'string' }, port: { type: 'integer' } } };
const ports = { type: 'array', items: { oneOf: [{ type: 'integer', minimum: 1, maximum: 65535 }, { type: 'string', pattern: '^[0-9]+-[0-9]+$' }] } };
const body = (schema: unknown) => ({ required: true, content: { 'application/json': { schema } } });
/** Every write takes these. */
const writeParameters = [
  { name: 'If-Match', in: 'header', schema: { type: 'string', example: '"3"' }, description: "the version the change was made against (GET's ETag): 412 when another is current" },
  { name: 'X-Request-Id', in: 'header', schema: { type: 'string', maxLength: 128 }, description: 'kept in the audit log; a write retried with the same id (same method, path and body) is answered with the outcome it had (replayed: true), not made again; the same id with another request: 422' },
  { name: 'dry_run', in: 'query', schema: { type: 'integer', enum: [0, 1] }, description: 'judge only: verification findings and the semantic diff, nothing saved or published' },
];

export const OPENAPI = {
  openapi: '3.0.3',
  info: { title: 'Switchyard control plane: service bindings', version: '1', description: 'Every change is verified, diffed and rolled out exactly like a change of the state file. Bearer auth with the admin token.' },
  components: {
    securitySchemes: { admin: { type: 'http', scheme: 'bearer' } },
    schemas: {
      // Its properties are the fields parseDesiredState accepts (test/unit/openapi.test.ts checks).
      State: {
        type: 'object',
        required: ['bindings'],
        properties: {
          bindings: { type: 'array', items: bindingSchema },
          services: { type: 'object', additionalProperties: { type: 'object', properties: { tcp: ports, udp: ports } }, description: 'label → the ports its traffic may reach' },
          https_only: { type: 'object', properties: { prefixes: { type: 'array', items: { type: 'string' } }, plaintext_ports: ports } },
          exclusive: { type: 'object', additionalProperties: { type: 'array', items: { type: 'string' } }, description: 'label → prefixes where only that service may receive traffic' },
        },
      },
    },
  },
  security: [{ admin: [] }],
  paths: {
    '/v1/openapi.json': { get: { summary: 'this document', responses: { '200': { description: 'OpenAPI 3.0' } } } },
    '/status': {
      get: {
        summary: 'what the control plane publishes, holds and refused, its rollout and replica role, and every agent (an agent token sees the same)',
        responses: { '200': { description: '{publication: {version, digest, bindings, last, held, refused, rollout, replica, store}, agents: [...]}' } },
      },
    },
    '/override': {
      post: {
        summary: "confirm that a version's withdrawal is meant: a held version is saved and published with the guard override; the current one is pushed again to the agents whose guard refused it",
        parameters: writeParameters.filter((p) => p.name === 'X-Request-Id'),
        requestBody: body({ type: 'object', required: ['version'], properties: { version: { type: 'integer' } } }),
        responses: { '200': { description: '{version, agents}' }, '400': { description: 'the body is not {"version": N}' }, '307': { description: 'sent to the replica that publishes' }, '409': { description: 'not the held or current version' }, '507': change['507'] },
      },
    },
    '/v1/audit': {
      get: {
        summary: 'who changed what: every proposal, confirmation and refusal, oldest first',
        parameters: [
          { name: 'after', in: 'query', schema: { type: 'integer', minimum: 0 }, description: 'skip this many entries' },
          { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 0, maximum: 10000, default: 1000 } },
        ],
        responses: { '200': { description: '{entries: [{at, actor, remote, requestId, action, outcome, version, summary}]}' } },
      },
    },
    '/v1/state': { get: { summary: 'the desired state in force and its version', responses: { '200': { description: '{version, state}', content: { 'application/json': { schema: { type: 'object', properties: { version: { type: 'integer' }, state: { $ref: '#/components/schemas/State' } } } } } } } } },
    '/v1/bindings': {
      get: { summary: 'bindings, filtered by label, protocol or prefix', parameters: ['label', 'protocol', 'prefix'].map((name) => ({ name, in: 'query', schema: { type: 'string' } })), responses: { '200': { description: '{version, bindings}' } } },
      post: { parameters: writeParameters, summary: 'bind prefixes to services', requestBody: body({ type: 'object', required: ['bindings'], properties: { bindings: { type: 'array', items: bindingSchema } } }), responses: { ...change, '409': { description: 'a key is already bound' } } },
      delete: { parameters: writeParameters, summary: 'remove bindings by key', requestBody: body({ type: 'object', required: ['bindings'], properties: { bindings: { type: 'array', items: keySchema } } }), responses: { ...change, '404': { description: 'a key is not bound' } } },
    },
    '/v1/services': { get: { summary: 'service policies', responses: { '200': { description: '{version, services}' } } } },
    '/v1/services/{label}': {
      parameters: [{ name: 'label', in: 'path', required: true, schema: { type: 'string' } }],
      put: { parameters: writeParameters, summary: "set a service's policy: the ports its traffic may reach", requestBody: body({ type: 'object', properties: { tcp: ports, udp: ports } }), responses: change },
      delete: { parameters: writeParameters, summary: "remove a service's policy (its traffic is then dropped: refused while it has bindings)", responses: { ...change, '404': { description: 'no such policy' } } },
    },
    '/v1/https-only': {
      get: { summary: 'HTTPS-only ranges and the plaintext ports they refuse', responses: { '200': { description: '{version, https_only}' } } },
      put: { parameters: writeParameters, summary: 'replace them', requestBody: body({ type: 'object', properties: { prefixes: { type: 'array', items: { type: 'string' } }, plaintext_ports: ports } }), responses: change },
      post: { parameters: writeParameters, summary: 'add HTTPS-only ranges', requestBody: body({ type: 'object', required: ['prefixes'], properties: { prefixes: { type: 'array', items: { type: 'string' } } } }), responses: { ...change, '409': { description: 'a range is already HTTPS-only' } } },
      delete: { parameters: writeParameters, summary: 'remove HTTPS-only ranges (as GET lists them)', requestBody: body({ type: 'object', required: ['prefixes'], properties: { prefixes: { type: 'array', items: { type: 'string' } } } }), responses: { ...change, '404': { description: 'not an HTTPS-only range' } } },
    },
  },
};
