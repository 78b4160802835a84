/**
 * The binding model of system.md: (protocol, prefix, port) → label, and the
 * validation every boundary (CLI, files, control plane) goes through. A bad
 * entry is reported with the entry itself; nothing is applied.
 */
import { SwitchyardError } from '../errors.js';
import { type Family, type Prefix, formatAddress, parsePrefix } from '../net/address.js';
import { LABEL_MAX } from '../trie/layout.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../kernel/linux.js';
import { findDuplicate, sortBindings } from './order.js';

export type Protocol = 'tcp' | 'udp';
export const IPPROTO: Record<Protocol, number> = { tcp: IPPROTO_TCP, udp: IPPROTO_UDP };
export const protocolName = (ipproto: number): Protocol => (ipproto === IPPROTO_TCP ? 'tcp' : 'udp');

/** A binding as operators write it. `prefix` is canonical (`addr/len`). */
export interface Binding {
  label: string;
  protocol: Protocol;
  prefix: string;
  port: number;
}

/**
 * Labels name services; they end up in bpffs records, logs and metric names,
 * so they are restricted to a safe alphabet (no path or shell metacharacters).
 */
const LABEL_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * The names every plain object inherits (constructor, toString, __proto__,
 * …). Input is JSON, and JSON objects are plain objects: a check with `in`
 * or a lookup `table[name]` finds these names on Object.prototype even
 * when the input never had them. Validation reads own properties only
 * (Object.keys, Object.hasOwn, Maps), and names that are also keys of
 * plain objects elsewhere (labels, rollout labels) may not be one of these,
 * so that no lookup anywhere can mistake one for an entry.
 */
export const PROTOTYPE_NAMES: ReadonlySet<string> = new Set(Object.getOwnPropertyNames(Object.prototype));
export const isPrototypeName = (name: string): boolean => PROTOTYPE_NAMES.has(name);

/** An own property's value (undefined when absent or only inherited). */
export const own = (value: object, field: string): unknown => (Object.hasOwn(value, field) ? (value as Record<string, unknown>)[field] : undefined);

/** Labels repeat across millions of bindings: remember the good ones. */
const goodLabels = new Set<string>();

export function parseLabel(value: unknown, entry: string): string {
  if (typeof value === 'string' && goodLabels.has(value)) return value;
  if (typeof value === 'string' && isPrototypeName(value)) {
    throw new SwitchyardError('EINVAL_BINDING', `${entry}: label ${JSON.stringify(value)} is reserved (a name every JavaScript object inherits)`, { entry });
  }
  if (typeof value !== 'string' || !LABEL_PATTERN.test(value) || value.length > LABEL_MAX) {
    throw new SwitchyardError(
      'EINVAL_BINDING',
      `${entry}: label ${JSON.stringify(value)} must be 1-${LABEL_MAX} characters of [A-Za-z0-9._-], starting with a letter or digit`,
      { entry },
    );
  }
  if (goodLabels.size < 100_000) goodLabels.add(value);
  return value;
}

export function parseProtocol(value: unknown, entry: string): Protocol {
  if (value !== 'tcp' && value !== 'udp') {
    throw new SwitchyardError('EINVAL_BINDING', `${entry}: protocol ${JSON.stringify(value)} must be tcp or udp`, { entry });
  }
  return value;
}

/** Files and pushes must carry numbers; the CLI passes its text with `fromText`. */
export function parsePort(value: unknown, entry: string, fromText = false): number {
  const port = fromText && typeof value === 'string' && /^(0|[1-9][0-9]{0,4})$/.test(value) ? Number(value) : value;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new SwitchyardError('EINVAL_BINDING', `${entry}: port ${JSON.stringify(value)} must be an integer 0-65535 (0 = any port)`, { entry });
  }
  return port;
}

const PREFIX_PROBLEMS = {
  syntax: 'is not an IPv4 or IPv6 address or prefix',
  length: 'has a prefix length beyond the address family',
  'host-bits': 'has host bits set beyond the prefix length',
  'ipv4-mapped': 'is an IPv4-mapped IPv6 prefix; bind the IPv4 prefix instead',
} as const;

export function parseBindingPrefix(value: unknown, entry: string, allowBare = true): Prefix {
  const parsed = typeof value === 'string' ? parsePrefix(value, allowBare) : 'syntax';
  if (typeof parsed === 'string') {
    throw new SwitchyardError('EINVAL_BINDING', `${entry}: prefix ${JSON.stringify(value)} ${PREFIX_PROBLEMS[parsed]}`, { entry });
  }
  return parsed;
}

/**
 * Many bindings in columns: what the trie builder, the pinned table and the
 * file loader share. One million bindings stay a few dozen megabytes.
 */
/** A BindingTable's content, to hand to another thread. */
export interface BindingColumnsTransfer {
  count: number;
  labels: string[];
  labelIndex: Uint32Array;
  family: Uint8Array;
  protocol: Uint8Array;
  prefixLen: Uint8Array;
  port: Uint16Array;
  addr: Uint32Array;
}

export class BindingTable {
  count = 0;
  labels: string[] = [];
  private labelIds = new Map<string, number>();
  labelIndex: Uint32Array;
  family: Uint8Array;
  protocol: Uint8Array;
  prefixLen: Uint8Array;
  port: Uint16Array;
  addr: Uint32Array;
  private sorted: Uint32Array | undefined;

  constructor(capacity = 16) {
    this.labelIndex = new Uint32Array(capacity);
    this.family = new Uint8Array(capacity);
    this.protocol = new Uint8Array(capacity);
    this.prefixLen = new Uint8Array(capacity);
    this.port = new Uint16Array(capacity);
    this.addr = new Uint32Array(capacity * 4);
  }

  labelId(label: string): number {
    let id = this.labelIds.get(label);
    if (id === undefined) {
      id = this.labels.length;
      this.labels.push(label);
      this.labelIds.set(label, id);
    }
    return id;
  }

  private grow(): void {
    const grow = <T extends Uint8Array | Uint16Array | Uint32Array>(a: T, n: number): T => {
      const b = new (a.constructor as new (n: number) => T)(n);
      b.set(a);
      return b;
    };
    const cap = Math.max(16, this.family.length * 2);
    this.labelIndex = grow(this.labelIndex, cap);
    this.family = grow(this.family, cap);
    this.protocol = grow(this.protocol, cap);
    this.prefixLen = grow(this.prefixLen, cap);
    this.port = grow(this.port, cap);
    this.addr = grow(this.addr, cap * 4);
  }

  /** Indices in canonical order (see order.ts), computed once per content. */
  order(): Uint32Array {
    this.sorted ??= sortBindings(this);
    return this.sorted;
  }

  add(label: string, protocol: Protocol, prefix: Prefix, port: number): number {
    this.sorted = undefined;
    if (this.count === this.family.length) this.grow();
    const i = this.count++;
    this.labelIndex[i] = this.labelId(label);
    this.family[i] = prefix.family;
    this.protocol[i] = IPPROTO[protocol];
    this.prefixLen[i] = prefix.length;
    this.port[i] = port;
    this.addr.set(prefix.words, i * 4);
    return i;
  }

  /** Appends binding j of `from`, column by column (no Prefix or text made on the way). */
  addFrom(from: BindingTable, j: number): number {
    this.sorted = undefined;
    if (this.count === this.family.length) this.grow();
    const i = this.count++;
    this.labelIndex[i] = this.labelId(from.label(j));
    this.family[i] = from.family[j]!;
    this.protocol[i] = from.protocol[j]!;
    this.prefixLen[i] = from.prefixLen[j]!;
    this.port[i] = from.port[j]!;
    this.addr.set(from.addr.subarray(j * 4, j * 4 + 4), i * 4);
    return i;
  }

  label(i: number): string {
    return this.labels[this.labelIndex[i]!]!;
  }

  prefix(i: number): Prefix {
    const a = this.addr;
    return {
      family: this.family[i] as Family,
      words: [a[i * 4]!, a[i * 4 + 1]!, a[i * 4 + 2]!, a[i * 4 + 3]!],
      length: this.prefixLen[i]!,
    };
  }

  prefixText(i: number): string {
    const p = this.prefix(i);
    return `${formatAddress(p.family, p.words)}/${p.length}`;
  }

  /** Row i as operators read it in messages: "cdn tcp 192.0.2.0/24 port 443". */
  describe(i: number): string {
    return `${this.label(i)} ${protocolName(this.protocol[i]!)} ${this.prefixText(i)} port ${this.port[i]}`;
  }

  binding(i: number): Binding {
    return { label: this.label(i), protocol: protocolName(this.protocol[i]!), prefix: this.prefixText(i), port: this.port[i]! };
  }

  /** Index of the binding with this (protocol, prefix, port), or -1. */
  indexOf(protocol: Protocol, prefix: Prefix, port: number): number {
    const ipproto = IPPROTO[protocol];
    const w = prefix.words;
    const a = this.addr;
    for (let i = 0; i < this.count; i++) {
      if (this.port[i] !== port || this.prefixLen[i] !== prefix.length || this.protocol[i] !== ipproto || this.family[i] !== prefix.family) continue;
      if (a[i * 4] === w[0] && a[i * 4 + 1] === w[1] && a[i * 4 + 2] === w[2] && a[i * 4 + 3] === w[3]) return i;
    }
    return -1;
  }

  /** The columns and labels, as another thread can be handed them (typed arrays are transferred, not copied). */
  toColumns(): BindingColumnsTransfer {
    return { count: this.count, labels: this.labels, labelIndex: this.labelIndex, family: this.family, protocol: this.protocol, prefixLen: this.prefixLen, port: this.port, addr: this.addr };
  }

  /** A table owning columns another thread made (toColumns): nothing is parsed or copied again. */
  static fromColumns(c: BindingColumnsTransfer): BindingTable {
    const t = new BindingTable(0);
    t.count = c.count;
    t.labels = c.labels;
    t.labelIds = new Map(c.labels.map((label, i) => [label, i]));
    t.labelIndex = c.labelIndex;
    t.family = c.family;
    t.protocol = c.protocol;
    t.prefixLen = c.prefixLen;
    t.port = c.port;
    t.addr = c.addr;
    return t;
  }

  /** A copy with room for `extra` more, made column by column (a 100,000-binding table in about a millisecond). */
  clone(extra = 0): BindingTable {
    const copy = new BindingTable(Math.max(16, this.count + extra));
    copy.count = this.count;
    copy.labels = [...this.labels];
    copy.labelIds = new Map(this.labelIds);
    copy.labelIndex.set(this.labelIndex.subarray(0, this.count));
    copy.family.set(this.family.subarray(0, this.count));
    copy.protocol.set(this.protocol.subarray(0, this.count));
    copy.prefixLen.set(this.prefixLen.subarray(0, this.count));
    copy.port.set(this.port.subarray(0, this.count));
    copy.addr.set(this.addr.subarray(0, this.count * 4));
    copy.sorted = this.sorted;
    return copy;
  }

  /**
   * Removes binding `i` by moving the last one into its place (order is not
   * meaning). Returns the index that moved to `i` (-1 when `i` was last).
   */
  removeAt(i: number): number {
    this.sorted = undefined;
    const last = --this.count;
    if (i === last) return -1;
    this.labelIndex[i] = this.labelIndex[last]!;
    this.family[i] = this.family[last]!;
    this.protocol[i] = this.protocol[last]!;
    this.prefixLen[i] = this.prefixLen[last]!;
    this.port[i] = this.port[last]!;
    this.addr.copyWithin(i * 4, last * 4, last * 4 + 4);
    return last;
  }

  /** Overwrites binding `i` with a row of this table's columns (an undo puts back what removeAt took). */
  setRow(i: number, label: string, row: { family: number; protocol: number; prefixLen: number; port: number; addr: ArrayLike<number> }): void {
    this.sorted = undefined;
    this.labelIndex[i] = this.labelId(label);
    this.family[i] = row.family;
    this.protocol[i] = row.protocol;
    this.prefixLen[i] = row.prefixLen;
    this.port[i] = row.port;
    this.addr.set(row.addr, i * 4);
  }

  /** A copy without binding `skip` (all of them when skip is -1), with room for one more. */
  without(skip: number): BindingTable {
    const copy = new BindingTable(this.count + 1);
    for (let i = 0; i < this.count; i++) {
      if (i !== skip) copy.add(this.label(i), protocolName(this.protocol[i]!), this.prefix(i), this.port[i]!);
    }
    return copy;
  }

  *[Symbol.iterator](): IterableIterator<Binding> {
    for (let i = 0; i < this.count; i++) yield this.binding(i);
  }

  static from(bindings: Iterable<Binding>): BindingTable {
    const table = new BindingTable();
    let n = 0;
    for (const b of bindings) {
      const entry = `binding ${n++}`;
      table.add(parseLabel(b.label, entry), parseProtocol(b.protocol, entry), parseBindingPrefix(b.prefix, entry), parsePort(b.port, entry));
    }
    return table;
  }
}


const DOCUMENT_FIELDS = new Set(['bindings']);
const BINDING_FIELDS = new Set(['label', 'protocol', 'prefix', 'port']);

/**
 * Validates a bindings document (`{"bindings": [...]}`) before anything is
 * applied. The desired-state document (src/desired/state.ts) adds service
 * policies and HTTPS-only ranges around the same list.
 */
export function parseBindingsDocument(doc: unknown, source: string): BindingTable {
  checkDocumentFields(doc, source, DOCUMENT_FIELDS, '{"bindings": [...]}');
  return parseBindingList(own(doc, 'bindings'), source);
}

/**
 * An object with only these fields, or an error that names the first other
 * one. Own fields only: Object.keys lists `"__proto__"` when JSON.parse made
 * it an own property (it does), and a Set never answers for Object.prototype's
 * names. Read the fields afterwards with `own()` (or the object's own
 * properties): a field that is absent must not be found on the prototype.
 */
export function checkDocumentFields(
  doc: unknown,
  source: string,
  fields: ReadonlySet<string>,
  shape: string,
  code: 'EINVAL_FILE' | 'EINVAL_ARGUMENT' | 'EINVAL_BINDING' = 'EINVAL_FILE',
): asserts doc is Record<string, unknown> {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new SwitchyardError(code, `${source}: expected an object ${shape}`, { entry: source });
  }
  for (const field of Object.keys(doc)) {
    if (!fields.has(field)) {
      throw new SwitchyardError(code, `${source}: unknown field ${JSON.stringify(field)}`, { entry: field });
    }
  }
}

/** Fields `doc` must have as its own (checkDocumentFields refuses the others); the error names the first one missing. */
export function requireFields(doc: object, source: string, fields: Iterable<string>, code: 'EINVAL_FILE' | 'EINVAL_ARGUMENT' | 'EINVAL_BINDING' = 'EINVAL_FILE'): void {
  for (const field of fields) {
    if (!Object.hasOwn(doc, field)) throw new SwitchyardError(code, `${source}: missing field ${JSON.stringify(field)}`, { entry: source });
  }
}

/**
 * The "bindings" list of a document: unknown fields, bad values and duplicate
 * keys are errors that name the entry (its index and content); `keep` lets
 * duplicates through (verification lists them all as findings).
 */
export function parseBindingList(list: unknown, source: string, duplicates: 'error' | 'keep' = 'error'): BindingTable {
  if (!Array.isArray(list)) {
    throw new SwitchyardError('EINVAL_FILE', `${source}: "bindings" must be an array`, { entry: source });
  }
  const table = new BindingTable(Math.max(16, list.length));
  for (let n = 0; n < list.length; n++) {
    const item: unknown = list[n];
    const entry = `${source}: bindings[${n}]`;
    try {
      parseDocumentEntry(table, item, entry);
    } catch (err) {
      // Name the entry by its content too, built only when it is needed.
      if (err instanceof SwitchyardError && typeof item === 'object' && item !== null) {
        throw new SwitchyardError(err.code, err.message.replace(entry, `${entry} (${JSON.stringify(item)})`), { entry });
      }
      throw err;
    }
  }
  const duplicate = duplicates === 'error' ? findDuplicate(table, table.order()) : undefined;
  if (duplicate) {
    const [first, second] = duplicate;
    const entry = `${source}: bindings[${second}]`;
    throw new SwitchyardError('EINVAL_BINDING', `${entry} (${JSON.stringify(list[second])}): duplicates bindings[${first}] (same protocol, prefix and port)`, { entry });
  }
  return table;
}

function parseDocumentEntry(table: BindingTable, item: unknown, entry: string): void {
  if (typeof item !== 'object' || item === null || Array.isArray(item)) {
    throw new SwitchyardError('EINVAL_BINDING', `${entry}: expected an object with label, protocol, prefix, port`, { entry });
  }
  const b = item as Record<string, unknown>;
  // Own fields only (for…in and `in` see inherited ones): a field the entry
  // does not have must be missing, whatever its prototype holds.
  const fields = Object.keys(b);
  for (const field of fields) {
    if (!BINDING_FIELDS.has(field)) throw new SwitchyardError('EINVAL_BINDING', `${entry}: unknown field ${JSON.stringify(field)}`, { entry });
  }
  if (fields.length !== BINDING_FIELDS.size) {
    for (const field of BINDING_FIELDS) {
      if (!Object.hasOwn(b, field)) throw new SwitchyardError('EINVAL_BINDING', `${entry}: missing field "${field}"`, { entry });
    }
  }
  table.add(parseLabel(b.label, entry), parseProtocol(b.protocol, entry), parseBindingPrefix(b.prefix, entry, false), parsePort(b.port, entry));
}
