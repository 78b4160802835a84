/**
 * The CLI while an agent runs: `agent status`, `local bind|unbind|list|clear`
 * (local overrides, see src/agent/local.ts), `register --agent-socket` (hand
 * sockets over with SCM_RIGHTS), and the guard that keeps `bind`, `unbind`
 * and `load-bindings` from writing behind the agent's back.
 */
import { SwitchyardError } from '../errors.js';
import { parseLabel } from '../bindings/binding.js';
import { adminRequest } from '../agent/admin.js';
import { DEFAULT_ADMIN_SOCKET } from '../agent/agent.js';
import { canonicalKey, type Override } from '../agent/local.js';
import type { Location } from '../dispatcher/state.js';

type Out = { data(value: unknown, human: () => string): void };

export const LOCAL_USAGE = 'local bind <label> <tcp|udp> <prefix|ip> <port> | local unbind <tcp|udp> <prefix|ip> <port> | local list | local clear [--socket PATH]';

const socketOf = (flags: Record<string, unknown>) => (typeof flags.socket === 'string' ? flags.socket : DEFAULT_ADMIN_SOCKET);

const describeOverride = (o: Override) =>
  `${o.kind === 'bind' ? `bind  ${o.binding!.label} ${o.key.protocol} ${o.key.prefix} port ${o.key.port === 0 ? 'any' : o.key.port}` : `mask  ${o.key.protocol} ${o.key.prefix} port ${o.key.port === 0 ? 'any' : o.key.port} (the control plane's binding is not in force)`}  by uid ${o.by.uid} (pid ${o.by.pid}) at ${o.at}`;

export function agentStatus(flags: Record<string, unknown>, out: Out): number {
  const s = adminRequest(socketOf(flags), { op: 'status' }) as {
    agent_id: string;
    control_plane: { url: string; connected: boolean };
    applied: { epoch: string; version: number; acked_at: string } | null;
    refused: { epoch: string; version: number } | null;
    bindings: { control_plane: number; kernel: number; local_overrides: number };
    overrides: Override[];
  };
  const { ok: _ok, ...status } = s as unknown as Record<string, unknown>;
  out.data(status, () => {
    const lines = [
      `agent ${s.agent_id}: control plane ${s.control_plane.url} ${s.control_plane.connected ? 'connected' : 'not connected'}`,
      s.applied ? `applied: version ${s.applied.version} of epoch ${s.applied.epoch}, acknowledged ${s.applied.acked_at}` : 'applied: nothing yet',
      `bindings: ${s.bindings.control_plane} from the control plane, ${s.bindings.kernel} in the kernel, ${s.bindings.local_overrides} local override(s)`,
    ];
    if (s.refused) lines.push(`refused: version ${s.refused.version} of epoch ${s.refused.epoch} (it killed the agent mid-apply)`);
    if (s.overrides.length > 0) lines.push('local overrides (pushes do not revert them; `switchyard local unbind` or `local clear` does):', ...s.overrides.map((o) => `  ${describeOverride(o)}`));
    return lines.join('\n');
  });
  return 0;
}

export function localCommand(args: string[], flags: Record<string, unknown>, out: Out): number {
  const socket = socketOf(flags);
  const [sub, ...rest] = args;
  const expect = (n: number) => {
    if (rest.length !== n) throw new SwitchyardError('EINVAL_ARGUMENT', `expected: ${LOCAL_USAGE}`);
  };
  const key = (protocol: string, prefix: string, port: string, entry: string) => canonicalKey({ protocol, prefix, port }, entry, true);
  switch (sub) {
    case 'bind': {
      expect(4);
      const entry = `binding "${rest.join(' ')}"`;
      const binding = { label: parseLabel(rest[0], entry), ...key(rest[1]!, rest[2]!, rest[3]!, entry) };
      const r = adminRequest(socket, { op: 'local-bind', binding });
      out.data(r, () => `bound locally (the control plane's pushes do not revert it); ${String(r.kernel_bindings)} bindings in the kernel, ${String(r.local_overrides)} local override(s)`);
      return 0;
    }
    case 'unbind': {
      expect(3);
      const r = adminRequest(socket, { op: 'local-unbind', key: key(rest[0]!, rest[1]!, rest[2]!, `key "${rest.join(' ')}"`) });
      out.data(r, () => `unbound locally; ${String(r.kernel_bindings)} bindings in the kernel, ${String(r.local_overrides)} local override(s)`);
      return 0;
    }
    case 'list': {
      expect(0);
      const r = adminRequest(socket, { op: 'local-list' }) as { overrides: Override[] };
      out.data({ overrides: r.overrides }, () => (r.overrides.length === 0 ? 'no local overrides' : r.overrides.map(describeOverride).join('\n')));
      return 0;
    }
    case 'clear': {
      expect(0);
      const r = adminRequest(socket, { op: 'local-clear' });
      out.data(r, () => `${String(r.removed)} local override(s) removed; the kernel holds the control plane's state (${String(r.kernel_bindings)} bindings)`);
      return 0;
    }
    default:
      throw new SwitchyardError('EINVAL_ARGUMENT', `expected: ${LOCAL_USAGE}`);
  }
}

/**
 * Refuses a direct write to a dispatcher that a running agent manages: the
 * agent's next full apply would silently undo it. (Only an agent whose
 * admin socket answers, for this very dispatcher, counts; a non-root caller
 * cannot ask and cannot write the dispatcher either.)
 */
export function refuseIfAgentManages(location: Location, flags: Record<string, unknown>, command: string): void {
  const socket = typeof flags['admin-socket'] === 'string' ? flags['admin-socket'] : DEFAULT_ADMIN_SOCKET;
  let status: { dispatcher?: { state_dir?: string } };
  try {
    status = adminRequest(socket, { op: 'status' });
  } catch {
    return;
  }
  if (status.dispatcher?.state_dir === location.dir) {
    throw new SwitchyardError(
      'EINVAL_ARGUMENT',
      `an agent manages this dispatcher (${socket}): its next push would undo a direct ${command}; use \`switchyard local bind|unbind\` (a local override the pushes keep) or change the control plane's state`,
    );
  }
}
