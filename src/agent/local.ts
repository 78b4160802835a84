/**
 * Local overrides: bindings changed on this machine while the agent runs
 * (`switchyard local bind|unbind`, through the admin socket), on top of
 * what the control plane pushed.
 *
 * The rule: the control plane's state is what the agent acknowledges (its
 * digest is the control plane's); the kernel gets that state with the local
 * layer on top. A local bind sets its key (protocol, prefix, port) to its
 * label whatever the control plane says for that key; a local unbind of a
 * control-plane binding masks that key. Pushes never revert an override:
 * changes the control plane makes to an overridden key wait underneath and
 * take effect when the override is removed (`local unbind` of a local bind,
 * `local clear`). Overrides persist in the state directory across restarts,
 * `status` lists them with who made them and when, and heartbeats carry
 * their count so the control plane sees the machine deliberately differs.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SwitchyardError } from '../errors.js';
import { IPPROTO, checkDocumentFields, own, parseBindingList, parseBindingPrefix, parseLabel, parsePort, parseProtocol, requireFields, type Binding, type Protocol } from '../bindings/binding.js';
import { formatPrefix } from '../net/address.js';
import type { DesiredState } from '../desired/state.js';
import type { BindingChange } from '../firewall/incremental.js';
import { IndexedState, indexedCopy, type BindingKey, type StateDelta } from '../protocol/state.js';
import { writeAtomic } from './store.js';

export interface Override {
  /** A local bind (the binding), or a mask of the control plane's binding for the key. */
  kind: 'bind' | 'mask';
  key: BindingKey;
  binding?: Binding;
  by: { uid: number; pid: number };
  at: string;
}

const FILE = 'local.json';
const keyText = (k: BindingKey) => `${k.protocol} ${k.prefix} ${k.port}`;

const KEY_FIELDS = ['protocol', 'prefix', 'port'] as const;

/**
 * A key as operators may write it (a bare address is a /32 or /128;
 * `fromText`: the port as CLI text), in canonical spelling. It comes from
 * admin requests too: exactly these own fields, nothing inherited.
 */
export function canonicalKey(key: unknown, entry: string, fromText = false, allowBare = true): BindingKey {
  checkDocumentFields(key, entry, new Set(KEY_FIELDS), '{"protocol", "prefix", "port"}', 'EINVAL_BINDING');
  requireFields(key, entry, KEY_FIELDS, 'EINVAL_BINDING');
  const protocol = parseProtocol(key.protocol, entry);
  return { protocol, prefix: formatPrefix(parseBindingPrefix(key.prefix, entry, allowBare)), port: parsePort(key.port, entry, fromText) };
}

const FILE_FIELDS = new Set(['overrides']);
const OVERRIDE_FIELDS = new Set(['kind', 'key', 'binding', 'by', 'at']);
const BINDING_FIELDS = new Set(['label', ...KEY_FIELDS]);
const BY_FIELDS = new Set(['uid', 'pid']);

/**
 * local.json as this module writes it, validated like any other input
 * before the agent acts on it (the state directory is root's, but a file
 * edited by hand or cut short must stop the agent with the entry named, not
 * with a TypeError or an override that means something else): own fields
 * only, each override once.
 */
export function parseLocalFile(doc: unknown, file: string): Override[] {
  try {
    checkDocumentFields(doc, file, FILE_FIELDS, '{"overrides": [...]}');
    requireFields(doc, file, FILE_FIELDS);
    const list = own(doc, 'overrides');
    if (!Array.isArray(list)) throw new SwitchyardError('EINVAL_FILE', `${file}: overrides must be a list`, { entry: `${file}: overrides` });
    const seen = new Set<string>();
    return list.map((item: unknown, n): Override => {
      const entry = `${file}: overrides[${n}]`;
      checkDocumentFields(item, entry, OVERRIDE_FIELDS, '{"kind", "key", "binding", "by", "at"}');
      const kind = own(item, 'kind');
      if (kind !== 'bind' && kind !== 'mask') throw new SwitchyardError('EINVAL_FILE', `${entry}.kind: ${JSON.stringify(kind)} must be "bind" or "mask"`, { entry: `${entry}.kind` });
      requireFields(item, entry, kind === 'bind' ? OVERRIDE_FIELDS : ['kind', 'key', 'by', 'at']);
      if (kind === 'mask' && Object.hasOwn(item, 'binding')) throw new SwitchyardError('EINVAL_FILE', `${entry}.binding: a mask has no binding`, { entry: `${entry}.binding` });
      // Written canonical: a bare address here was not written by the agent.
      const key = canonicalKey(own(item, 'key'), `${entry}.key`, false, false);
      let binding: Binding | undefined;
      if (kind === 'bind') {
        const b = own(item, 'binding');
        const at = `${entry}.binding`;
        checkDocumentFields(b, at, BINDING_FIELDS, '{"label", "protocol", "prefix", "port"}');
        requireFields(b, at, BINDING_FIELDS);
        const k = canonicalKey({ protocol: b.protocol, prefix: b.prefix, port: b.port }, at, false, false);
        binding = { label: parseLabel(b.label, at), protocol: k.protocol as Protocol, prefix: k.prefix, port: k.port };
        if (keyText(k) !== keyText(key)) throw new SwitchyardError('EINVAL_FILE', `${at}: ${keyText(k)} is not the override's key ${keyText(key)}`, { entry: at });
      }
      const by = own(item, 'by');
      checkDocumentFields(by, `${entry}.by`, BY_FIELDS, '{"uid", "pid"}');
      requireFields(by, `${entry}.by`, BY_FIELDS);
      for (const f of BY_FIELDS) {
        const v = by[f];
        if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new SwitchyardError('EINVAL_FILE', `${entry}.by.${f}: ${JSON.stringify(v)} must be a non-negative integer`, { entry: `${entry}.by.${f}` });
      }
      const when = own(item, 'at');
      if (typeof when !== 'string' || Number.isNaN(Date.parse(when))) throw new SwitchyardError('EINVAL_FILE', `${entry}.at: ${JSON.stringify(when)} must be a date (ISO 8601)`, { entry: `${entry}.at` });
      if (seen.has(keyText(key))) throw new SwitchyardError('EINVAL_FILE', `${entry}: ${keyText(key)} is overridden twice`, { entry });
      seen.add(keyText(key));
      return { kind, key, ...(binding ? { binding } : {}), by: { uid: by.uid as number, pid: by.pid as number }, at: when };
    });
  } catch (err) {
    // One code for the whole file, whichever helper refused the entry (its message names it).
    if (err instanceof SwitchyardError && err.code !== 'EINVAL_FILE') throw new SwitchyardError('EINVAL_FILE', err.message, { ...(err.entry ? { entry: err.entry } : {}), cause: err });
    throw err;
  }
}

export class LocalLayer {
  private readonly overrides = new Map<string, Override>();
  /** The kernel's state (control plane + overrides) while there are overrides; undefined when there are none. */
  private effectiveState: IndexedState | undefined;

  constructor(private readonly dir: string) {
    const file = path.join(dir, FILE);
    if (!fs.existsSync(file)) return;
    let doc: unknown;
    try {
      doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      throw new SwitchyardError('EINVAL_FILE', `${file}: not JSON (${(err as Error).message}); the state directory was changed by hand?`, { entry: file });
    }
    for (const o of parseLocalFile(doc, file)) this.overrides.set(keyText(o.key), o);
  }

  list(): Override[] {
    return [...this.overrides.values()];
  }

  get size(): number {
    return this.overrides.size;
  }

  has(key: BindingKey): boolean {
    return this.overrides.has(keyText(key));
  }

  private save(): void {
    writeAtomic(path.join(this.dir, FILE), JSON.stringify({ overrides: this.list() }));
  }

  /** The overrides as a delta on top of the control plane's state `cp`. */
  private deltaOn(cp: IndexedState): StateDelta {
    const remove: BindingKey[] = [];
    const add: Binding[] = [];
    for (const o of this.overrides.values()) {
      if (cp.find(IPPROTO[o.key.protocol as 'tcp' | 'udp'], parseBindingPrefix(o.key.prefix, 'local'), o.key.port) >= 0) remove.push(o.key);
      if (o.kind === 'bind') add.push(o.binding!);
    }
    return { add, remove };
  }

  /**
   * What the kernel should hold for the control plane's state `cp` (after a
   * push, or at start), and the changes to make when the push was a delta:
   * the delta without the overridden keys.
   */
  effective(cp: IndexedState, changes: BindingChange[] | undefined): { state: DesiredState; changes: BindingChange[] | undefined } {
    if (this.overrides.size === 0) {
      this.effectiveState = undefined;
      return { state: cp.state, changes };
    }
    if (changes && this.effectiveState) {
      const kept = changes.filter((c) => !this.has(c.binding));
      this.effectiveState.applyDelta({ add: kept.filter((c) => !c.removed).map((c) => c.binding), remove: kept.filter((c) => c.removed).map((c) => c.binding) }, 'delta under local overrides');
      return { state: this.effectiveState.state, changes: kept };
    }
    this.effectiveState = this.withOverrides(cp);
    return { state: this.effectiveState.state, changes: undefined };
  }

  /** What the kernel holds for the control plane's state `cp` (no rebuild while the overrides' copy is current). */
  kernelState(cp: IndexedState): DesiredState {
    if (this.overrides.size === 0) return cp.state;
    if (this.effectiveState) return this.effectiveState.state;
    // Computed, not kept: a reader (status, a resync) may come while a push
    // is being made on `cp`, and the push's own effective() must not then
    // build on a copy of a half-made state.
    return this.withOverrides(cp).state;
  }

  /** A copy of the control plane's state `cp` with the overrides made on it. */
  private withOverrides(cp: IndexedState): IndexedState {
    const copy = indexedCopy(cp.state);
    copy.applyDelta(this.deltaOn(cp), 'local overrides');
    return copy;
  }

  /**
   * A local bind (`binding`) or unbind (`key`), checked against the control
   * plane's state `cp`; persisted; returns the kernel changes to make and
   * the state the kernel then holds. Nothing changes on error.
   */
  change(cp: IndexedState, op: { bind: unknown } | { unbind: unknown }, by: Override['by']): { state: DesiredState; changes: BindingChange[]; revert: () => void } {
    const at = new Date().toISOString();
    const before = new Map(this.overrides);
    const current = (key: BindingKey): Binding | undefined => {
      const o = this.overrides.get(keyText(key));
      if (o) return o.kind === 'bind' ? o.binding : undefined;
      const i = cp.find(IPPROTO[key.protocol as 'tcp' | 'udp'], parseBindingPrefix(key.prefix, 'local'), key.port);
      return i >= 0 ? cp.bindings.binding(i) : undefined;
    };
    const changes: BindingChange[] = [];
    // `op` is built by the agent; still own properties only, as everywhere.
    if (Object.hasOwn(op, 'bind')) {
      const table = parseBindingList([(op as { bind: unknown }).bind], 'local bind');
      const binding = table.binding(0);
      const key = { protocol: binding.protocol, prefix: binding.prefix, port: binding.port };
      const was = current(key);
      if (was?.label === binding.label && !this.has(key)) throw new SwitchyardError('EINVAL_BINDING', `local bind: ${keyText(key)} is already bound to ${binding.label} by the control plane`, { entry: keyText(key) });
      if (was) changes.push({ binding: was, removed: true });
      changes.push({ binding, removed: false });
      this.overrides.set(keyText(key), { kind: 'bind', key, binding, by, at });
    } else {
      const key = canonicalKey((op as { unbind: unknown }).unbind, 'local unbind');
      const o = this.overrides.get(keyText(key));
      const i = cp.find(IPPROTO[key.protocol as 'tcp' | 'udp'], parseBindingPrefix(key.prefix, 'local'), key.port);
      const underneath = i >= 0 ? cp.bindings.binding(i) : undefined;
      if (o?.kind === 'bind') {
        // Removing a local bind: the control plane's binding for the key (if any) comes back.
        this.overrides.delete(keyText(key));
        changes.push({ binding: o.binding!, removed: true });
        if (underneath) changes.push({ binding: underneath, removed: false });
      } else if (!o && underneath) {
        this.overrides.set(keyText(key), { kind: 'mask', key, by, at });
        changes.push({ binding: underneath, removed: true });
      } else {
        throw new SwitchyardError('EINVAL_BINDING', `local unbind: no binding ${keyText(key)} ${o ? '(already masked locally)' : 'in force'}`, { entry: keyText(key) });
      }
    }
    const restore = () => {
      this.overrides.clear();
      for (const [k, v] of before) this.overrides.set(k, v);
    };
    try {
      this.save();
    } catch (err) {
      restore();
      throw err;
    }
    const revert = () => {
      restore();
      this.save();
    };
    return { ...this.effective(cp, undefined), changes, revert };
  }

  /** Drops every override (persisted); the kernel then holds the control plane's state. */
  clear(cp: IndexedState): { state: DesiredState; removed: number } {
    const removed = this.overrides.size;
    this.overrides.clear();
    this.save();
    return { state: this.effective(cp, undefined).state, removed };
  }
}
