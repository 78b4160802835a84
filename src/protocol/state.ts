/**
 * The desired state as the control plane and the agent exchange it: its
 * canonical form and digest (so both ends can tell they hold the same
 * state), and deltas (bindings added and removed on top of a version).
 * Pure; both ends use this module.
 */
import crypto from 'node:crypto';
import { SwitchyardError } from '../errors.js';
import { BindingTable, IPPROTO, parseBindingList, parseBindingPrefix, parsePort, parseProtocol, type Binding } from '../bindings/binding.js';
import { compareKeys } from '../bindings/order.js';
import { formatPrefix } from '../net/address.js';
import type { DesiredState, PortRanges } from '../desired/state.js';
import type { BindingChange } from '../firewall/incremental.js';

const rangesText = (r: PortRanges) => r.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)).join(',');

/**
 * The canonical text of a state: bindings in key order (family, protocol,
 * port, address, length), services by label, HTTPS-only prefixes sorted.
 * Two states with the same meaning have the same text, whatever the order
 * or spelling (`2001:DB8::/32`, `"80-80"`) of the documents they came from.
 */
export function canonicalLines(state: DesiredState): string[] {
  const t = state.bindings;
  const lines: string[] = [];
  for (const i of t.order()) lines.push(`binding ${t.label(i)} ${t.protocol[i] === IPPROTO.tcp ? 'tcp' : 'udp'} ${t.prefixText(i)} ${t.port[i]}`);
  for (const [label, policy] of [...state.services].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    lines.push(`service ${label} tcp ${rangesText(policy.tcp)} udp ${rangesText(policy.udp)}`);
  }
  for (const p of state.httpsOnly.prefixes.map(formatPrefix).sort()) lines.push(`https-only ${p}`);
  lines.push(`plaintext-ports ${rangesText(state.httpsOnly.plaintextPorts)}`);
  return lines;
}

/** sha256 of the canonical text: what `ack`, `heartbeat` and `hello` carry. */
export function stateDigest(state: DesiredState): string {
  const hash = crypto.createHash('sha256');
  for (const line of canonicalLines(state)) hash.update(`${line}\n`);
  return `sha256:${hash.digest('hex')}`;
}

/** A binding's key as a delta names it for removal. */
export interface BindingKey {
  protocol: string;
  prefix: string;
  port: number;
}

export interface StateDelta {
  /** Bindings added (a key not in the state, or one removed in the same delta). */
  add: Binding[];
  /** Keys removed (each must be in the state). */
  remove: BindingKey[];
}

/**
 * The state after a delta, and the binding changes (for the firewall's
 * incremental sync). Services and HTTPS-only ranges stay; a delta that
 * names a key it cannot remove, or adds one that is already bound, is an
 * error naming the entry (the state is not changed).
 */
export function applyDelta(state: DesiredState, delta: StateDelta, source = 'delta'): { state: DesiredState; changes: BindingChange[] } {
  const t = state.bindings;
  // Index the current keys once: "protocol prefix port" → binding index.
  const index = new Map<string, number>();
  for (let i = 0; i < t.count; i++) index.set(`${t.protocol[i] === IPPROTO.tcp ? 'tcp' : 'udp'} ${t.prefixText(i)} ${t.port[i]}`, i);
  const removed = new Set<number>();
  const changes: BindingChange[] = [];
  delta.remove.forEach((key, n) => {
    const entry = `${source}: remove[${n}]`;
    const protocol = parseProtocol(key.protocol, entry);
    const prefix = formatPrefix(parseBindingPrefix(key.prefix, entry, false));
    const port = parsePort(key.port, entry);
    const at = index.get(`${protocol} ${prefix} ${port}`);
    if (at === undefined || removed.has(at)) {
      throw new SwitchyardError('EINVAL_BINDING', `${entry} (${protocol} ${prefix} port ${port}): no such binding to remove`, { entry });
    }
    removed.add(at);
    changes.push({ binding: t.binding(at), removed: true });
  });
  // Validated like a file's list (named entries, duplicates within the adds).
  const added = parseBindingList(delta.add, `${source} (add)`);
  const next = new BindingTable(t.count - removed.size + added.count + 1);
  for (let i = 0; i < t.count; i++) if (!removed.has(i)) next.add(t.label(i), t.protocol[i] === IPPROTO.tcp ? 'tcp' : 'udp', t.prefix(i), t.port[i]!);
  for (let j = 0; j < added.count; j++) {
    const b = added.binding(j);
    const at = index.get(`${b.protocol} ${b.prefix} ${b.port}`);
    if (at !== undefined && !removed.has(at)) {
      const entry = `${source} (add): bindings[${j}]`;
      throw new SwitchyardError('EINVAL_BINDING', `${entry} (${b.protocol} ${b.prefix} port ${b.port}): already bound to ${t.label(at)}; remove it in the same delta to relabel`, { entry });
    }
    next.add(b.label, b.protocol, added.prefix(j), b.port);
    changes.push({ binding: b, removed: false });
  }
  return { state: { ...state, bindings: next }, changes };
}

/** The delta from `before` to `after` (bindings only), in key order. */
export function diffStates(before: DesiredState, after: DesiredState): StateDelta {
  const a = before.bindings;
  const b = after.bindings;
  const x = a.order();
  const y = b.order();
  const add: Binding[] = [];
  const remove: BindingKey[] = [];
  const key = (t: BindingTable, i: number): BindingKey => ({ protocol: t.protocol[i] === IPPROTO.tcp ? 'tcp' : 'udp', prefix: t.prefixText(i), port: t.port[i]! });
  let i = 0;
  let j = 0;
  while (i < a.count || j < b.count) {
    const c = i >= a.count ? 1 : j >= b.count ? -1 : compareKeys(a, x[i]!, b, y[j]!);
    if (c < 0) remove.push(key(a, x[i++]!));
    else if (c > 0) add.push(b.binding(y[j++]!));
    else {
      if (a.label(x[i]!) !== b.label(y[j]!)) {
        remove.push(key(a, x[i]!));
        add.push(b.binding(y[j]!));
      }
      i++;
      j++;
    }
  }
  return { add, remove };
}

/** A state as a desired-state document again (snapshots, the last known good file). */
export function documentOf(state: DesiredState): unknown {
  const ranges = (r: ReadonlyArray<readonly [number, number]>) => r.map(([lo, hi]) => (lo === hi ? lo : `${lo}-${hi}`));
  return {
    bindings: [...state.bindings],
    services: Object.fromEntries([...state.services].map(([label, p]) => [label, { tcp: ranges(p.tcp), udp: ranges(p.udp) }])),
    https_only: {
      prefixes: state.httpsOnly.prefixes.map(formatPrefix),
      plaintext_ports: ranges(state.httpsOnly.plaintextPorts),
    },
  };
}

