/**
 * The control-plane channel's frames, one module for both ends: types, a
 * strict parser (unknown fields, wrong types and missing fields are named;
 * a frame over the size cap is refused before it is parsed), and the NACK
 * reason codes. Shapes follow ../shared/design/protocol.md: `epoch` (a
 * history line; a new one forces a snapshot), `version` (strictly
 * increasing within an epoch), `digest` (stateDigest of the canonical
 * state, checked after apply).
 */
import { SwitchyardError } from '../errors.js';
import { PROTOTYPE_NAMES } from '../bindings/binding.js';
import type { BindingKey } from './state.js';

export const PROTOCOL_VERSION = 1;

/**
 * A rollout label's key or value (hello's `labels`, an agent's config, a
 * stage's name and `match`): a plain word, and not a name every JavaScript
 * object inherits (`__proto__` and `constructor` are words of this
 * alphabet): labels are keys of plain objects on both ends, so `labels[k]`
 * must never reach Object.prototype, and `out["__proto__"] = v` must never
 * silently drop a label.
 */
export const ROLLOUT_LABEL = new RegExp(`^(?!(?:${[...PROTOTYPE_NAMES].join('|')})$)[A-Za-z0-9._-]{1,64}$`);
const ROLLOUT_LABEL_RULE = '1-64 characters of [A-Za-z0-9._-], not a name every JavaScript object inherits (constructor, toString, __proto__, …)';
/** Frames above this are refused with a NACK (ETOO_LARGE), never parsed. */
export const DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024;

export type NackCode =
  | 'EINVALID' // the frame or its state does not validate
  | 'EGAP' // a delta not on top of the version the agent has
  | 'ETOO_LARGE'
  | 'EINVARIANT'
  | 'ECAPACITY'
  | 'EWITHDRAWAL'
  | 'EDIGEST' // the applied state's digest is not the one announced
  | 'EREFUSED' // a version that killed the agent mid-apply before
  | 'EAPPLY'; // the kernel refused the change (the last known good state stays)

export const NACK_CODES: readonly NackCode[] = ['EINVALID', 'EGAP', 'ETOO_LARGE', 'EINVARIANT', 'ECAPACITY', 'EWITHDRAWAL', 'EDIGEST', 'EREFUSED', 'EAPPLY'];

export interface StateId {
  epoch: string;
  version: number;
  digest: string;
}

export interface Hello {
  type: 'hello';
  protocol: number;
  agent_id: string;
  agent_version: string;
  capabilities: string[];
  /** What the agent serves now (its last known good), or null on a first start. */
  have: StateId | null;
  /** A version the agent refuses because it died applying it. */
  refused: { epoch: string; version: number } | null;
  /** Rollout labels from its config ({"site": "ams", "canary": "true"}): which stage it is in. */
  labels?: Record<string, string>;
}

export interface Snapshot extends StateId {
  type: 'snapshot';
  /** The whole desired-state document (src/desired/state.ts). */
  state: unknown;
  /** Present when the push is meant to withdraw beyond the budget; must name this version. */
  override?: { version: number; withdrawal: true };
}

export interface Delta extends StateId {
  type: 'delta';
  from_version: number;
  add: unknown[];
  remove: BindingKey[];
  override?: { version: number; withdrawal: true };
}

export interface UpToDate {
  type: 'up-to-date';
  epoch: string;
  version: number;
}

export interface Ack extends StateId {
  type: 'ack';
}

export interface Nack {
  type: 'nack';
  /** Null when the push could not be read far enough to name it (its JSON or its id did not parse). */
  epoch: string | null;
  version: number | null;
  code: NackCode;
  message: string;
  /** The offending entries, a few. */
  details: string[];
}

export interface Heartbeat extends StateId {
  type: 'heartbeat';
  /** Milliseconds since the applied version was acknowledged. */
  age_ms: number;
  /** Bindings overridden on this machine (local bind/unbind): the kernel deliberately differs from the version. */
  local_overrides?: number;
  /** Totals since the dispatcher was loaded, over every destination: lookups that found no socket, and errors (a rollout halts when they rise). */
  misses?: number;
  errors?: number;
}

export type Frame = Hello | Snapshot | Delta | UpToDate | Ack | Nack | Heartbeat;

const bad = (path: string, message: string) => new SwitchyardError('EINVAL_ARGUMENT', `frame ${path}: ${message}`, { entry: path });

type Check = (value: unknown, path: string) => void;
const string: Check = (v, p) => {
  if (typeof v !== 'string' || v.length === 0 || v.length > 256) throw bad(p, 'must be a non-empty string of at most 256 characters');
};
const version: Check = (v, p) => {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(p, 'must be a non-negative integer');
};
const digest: Check = (v, p) => {
  if (typeof v !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(v)) throw bad(p, 'must be "sha256:" and 64 hex digits');
};
const array: Check = (v, p) => {
  if (!Array.isArray(v)) throw bad(p, 'must be an array');
};
/**
 * An object of exactly these fields. Own properties only, and the shape is
 * a Map: `key in fields` would take `constructor` or `__proto__` (an own
 * property when JSON.parse meets it) for a known field.
 */
const object = (shape: Record<string, Check>, optional: string[] = []): Check => {
  const fields = new Map(Object.entries(shape));
  return (v, p) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(p, 'must be an object');
    for (const key of Object.keys(v)) if (!fields.has(key)) throw bad(`${p}.${key}`, 'unknown field');
    for (const [key, check] of fields) {
      const value = Object.hasOwn(v, key) ? (v as Record<string, unknown>)[key] : undefined;
      if (value === undefined) {
        if (!optional.includes(key)) throw bad(`${p}.${key}`, 'missing');
        continue;
      }
      check(value, `${p}.${key}`);
    }
  };
};
const nullable = (check: Check): Check => (v, p) => {
  if (v !== null) check(v, p);
};
const stringList: Check = (v, p) => {
  array(v, p);
  (v as unknown[]).forEach((item, i) => string(item, `${p}[${i}]`));
};
const override = object({ version, withdrawal: (v, p) => {
  if (v !== true) throw bad(p, 'must be true');
} });
const key = object({ protocol: string, prefix: string, port: version });
const stateId = { epoch: string, version, digest };

const SHAPE_OF: Record<Frame['type'], Check> = {
  hello: object({
    type: string,
    protocol: version,
    agent_id: string,
    agent_version: string,
    capabilities: stringList,
    have: nullable(object(stateId)),
    refused: nullable(object({ epoch: string, version })),
    labels: (v, p) => {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(p, 'must be an object of strings');
      const entries = Object.entries(v);
      if (entries.length > 32) throw bad(p, 'at most 32 labels');
      for (const [k, x] of entries) {
        if (!ROLLOUT_LABEL.test(k)) throw bad(p, `key ${JSON.stringify(k)} must be ${ROLLOUT_LABEL_RULE}`);
        string(x, `${p}.${k}`);
        if (!ROLLOUT_LABEL.test(x as string)) throw bad(`${p}.${k}`, `must be ${ROLLOUT_LABEL_RULE}`);
      }
    },
  }, ['labels']),
  // The state document itself is validated by parseDesiredState, which names its entries.
  snapshot: object({ type: string, ...stateId, state: () => {}, override }, ['override']),
  delta: object(
    {
      type: string,
      ...stateId,
      from_version: version,
      add: array,
      remove: (v, p) => {
        array(v, p);
        (v as unknown[]).forEach((item, i) => key(item, `${p}[${i}]`));
      },
      override,
    },
    ['override'],
  ),
  'up-to-date': object({ type: string, epoch: string, version }),
  ack: object({ type: string, ...stateId }),
  nack: object({
    type: string,
    epoch: nullable(string),
    version: nullable(version),
    code: (v, p) => {
      if (!NACK_CODES.includes(v as NackCode)) throw bad(p, `must be one of ${NACK_CODES.join(', ')}`);
    },
    message: (v, p) => {
      if (typeof v !== 'string') throw bad(p, 'must be a string');
    },
    details: stringList,
  }),
  heartbeat: object({ type: string, ...stateId, age_ms: version, local_overrides: version, misses: version, errors: version }, ['local_overrides', 'misses', 'errors']),
};
/** Looked up by the frame's `type`, which the peer chose: a Map, never `SHAPE_OF[type]` (`"constructor"` is found there). */
const SHAPES = new Map(Object.entries(SHAPE_OF));
const TYPES = [...SHAPES.keys()].join(', ');

/**
 * A frame from its wire text. Errors name the field (`frame delta.remove[3].port: …`);
 * a frame over `maxBytes` is refused unparsed.
 */
export function parseFrame(text: string, maxBytes = DEFAULT_MAX_FRAME_BYTES): Frame {
  if (Buffer.byteLength(text) > maxBytes) throw new SwitchyardError('EINVAL_ARGUMENT', `frame: ${Buffer.byteLength(text)} bytes, more than the ${maxBytes} allowed`, { entry: 'frame' });
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new SwitchyardError('EINVAL_ARGUMENT', `frame: not JSON (${(err as Error).message})`, { entry: 'frame' });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('type', `the frame must be an object with a "type", one of ${TYPES}`);
  const type = Object.hasOwn(value, 'type') ? (value as { type: unknown }).type : undefined;
  const shape = typeof type === 'string' ? SHAPES.get(type) : undefined;
  if (!shape) throw bad('type', `must be one of ${TYPES}`);
  shape(value, type as string);
  return value as Frame;
}

export const encodeFrame = (frame: Frame): string => JSON.stringify(frame);
