/**
 * Issue 15, defect 6: input is JSON, JSON objects inherit Object.prototype,
 * and a check with `in` or a lookup `table[name]` finds its names
 * (constructor, toString, valueOf, __proto__ …) in any input. Every name of
 * Object.prototype is sent here as a frame type, as a field of each frame,
 * as a key of a state file's maps and fields, in local.json, as an admin op
 * and field, in the agent's config and the rollout file, and as a command:
 * each is refused with an error that names the entry.
 *
 * `"__proto__"` is written into JSON text, never into an object literal: in
 * JSON.parse's output it is an own property like any other (which is what
 * arrives from the wire and from files), in a literal it sets the prototype.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SwitchyardError } from '../../src/errors.js';
import { PROTOTYPE_NAMES, checkDocumentFields, parseLabel } from '../../src/bindings/binding.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { ROLLOUT_LABEL, parseFrame, type Frame, type Nack } from '../../src/protocol/messages.js';
import { stateDigest } from '../../src/protocol/state.js';
import { LocalLayer } from '../../src/agent/local.js';
import { parseAdminRequest } from '../../src/agent/admin.js';
import { AgentSession } from '../../src/agent/session.js';
import { StateStore } from '../../src/agent/store.js';
import { readAgentConfig } from '../../src/agent/agent.js';
import { parseRollout } from '../../src/controlplane/rollout.js';
import { runCli } from '../support/cli.js';
import { writeAgentConfig } from '../support/agent-config.js';

const NAMES = Object.getOwnPropertyNames(Object.prototype);

/** `json` with an own field `name` added at the front of its outermost object, as the wire or a file would carry it. */
const withField = (json: string, name: string, value: unknown = 1) => json.replace(/^\{/, `{${JSON.stringify(name)}:${JSON.stringify(value)}${json === '{}' ? '' : ','}`);
/** The same inside the object at `at` (a path of keys and indices) of `doc`. */
function withFieldAt(doc: unknown, at: Array<string | number>, name: string, value: unknown = 1): unknown {
  const copy = JSON.parse(JSON.stringify(doc)) as Record<string | number, unknown>;
  if (at.length === 0) return JSON.parse(withField(JSON.stringify(copy), name, value));
  let parent: Record<string | number, unknown> = copy;
  for (const k of at.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
  const last = at[at.length - 1]!;
  parent[last] = JSON.parse(withField(JSON.stringify(parent[last]), name, value));
  return copy;
}

/** Runs `fn`, which must throw a SwitchyardError; returns it. */
function refusal(fn: () => unknown, what: string): SwitchyardError {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof SwitchyardError)) throw new Error(`${what}: threw ${String(err)}, not a SwitchyardError`);
    return err;
  }
  throw new Error(`${what}: accepted`);
}

const digest = `sha256:${'0'.repeat(64)}`;
const FRAMES: Frame[] = [
  { type: 'hello', protocol: 1, agent_id: 'edge-1', agent_version: '0.1.0', capabilities: ['delta'], have: { epoch: 'e1', version: 8, digest }, refused: { epoch: 'e1', version: 7 }, labels: { site: 'ams' } },
  { type: 'snapshot', epoch: 'e1', version: 8, digest, state: { bindings: [] }, override: { version: 8, withdrawal: true } },
  { type: 'delta', epoch: 'e1', version: 9, from_version: 8, digest, add: [], remove: [{ protocol: 'tcp', prefix: '10.0.0.0/8', port: 0 }], override: { version: 9, withdrawal: true } },
  { type: 'up-to-date', epoch: 'e1', version: 9 },
  { type: 'ack', epoch: 'e1', version: 9, digest },
  { type: 'nack', epoch: 'e1', version: 9, code: 'EWITHDRAWAL', message: 'too much', details: ['cdn: 101 of 2000'] },
  { type: 'heartbeat', epoch: 'e1', version: 9, digest, age_ms: 1200, local_overrides: 0, misses: 0, errors: 0 },
];
/** Every object inside a frame, by path: the names go into each. */
const NESTED: Record<string, Array<Array<string | number>>> = { hello: [['have'], ['refused']], snapshot: [['override']], delta: [['override'], ['remove', 0]] };

describe('own properties only: every name of Object.prototype', () => {
  it('is the list the issue names', () => {
    expect(NAMES.sort()).toEqual(['__defineGetter__', '__defineSetter__', '__lookupGetter__', '__lookupSetter__', '__proto__', 'constructor', 'hasOwnProperty', 'isPrototypeOf', 'propertyIsEnumerable', 'toLocaleString', 'toString', 'valueOf'].sort());
    expect([...PROTOTYPE_NAMES].sort()).toEqual(NAMES);
  });

  it('as a frame type, alone or with a whole frame around it: refused, naming the type', () => {
    for (const name of NAMES) {
      for (const text of [JSON.stringify({ type: name }), ...FRAMES.map((f) => JSON.stringify({ ...f, type: name }))]) {
        const err = refusal(() => parseFrame(text), text);
        expect(err.code).toBe('EINVAL_ARGUMENT');
        expect(err.message).toMatch(/^frame type: must be one of hello, snapshot, delta, up-to-date, ack, nack, heartbeat$/);
      }
    }
  });

  it('as a field of every frame type and of the objects inside frames: an unknown field, named', () => {
    for (const f of FRAMES) expect(parseFrame(JSON.stringify(f))).toEqual(f); // the frames themselves are good
    for (const f of FRAMES) {
      for (const name of NAMES) {
        const text = withField(JSON.stringify(f), name);
        const err = refusal(() => parseFrame(text), text);
        expect(err.code).toBe('EINVAL_ARGUMENT');
        expect(err.message).toBe(`frame ${f.type}.${name}: unknown field`);
        for (const at of NESTED[f.type] ?? []) {
          const nested = JSON.stringify(withFieldAt(f, at, name));
          expect(refusal(() => parseFrame(nested), nested).message).toBe(`frame ${f.type}.${at.map((k) => (typeof k === 'number' ? `[${k}]` : k)).join('.').replace('.[', '[')}.${name}: unknown field`);
        }
      }
    }
  });

  it('as a rollout label (hello\'s labels, their values, the shared ROLLOUT_LABEL): refused', () => {
    const hello = FRAMES[0]!;
    for (const name of NAMES) {
      expect(ROLLOUT_LABEL.test(name)).toBe(false);
      const key = `{"type":"hello","protocol":1,"agent_id":"edge-1","agent_version":"0.1.0","capabilities":[],"have":null,"refused":null,"labels":{${JSON.stringify(name)}:"x"}}`;
      expect(refusal(() => parseFrame(key), key).message).toMatch(new RegExp(`^frame hello\\.labels: key ${JSON.stringify(name).replace(/[$]/g, '\\$')} must be 1-64 characters`));
      const value = JSON.stringify({ ...hello, labels: { site: name } });
      expect(refusal(() => parseFrame(value), value).message).toMatch(/^frame hello\.labels\.site: must be 1-64 characters .*not a name every JavaScript object inherits/);
    }
    // Words that merely contain one are fine.
    expect(ROLLOUT_LABEL.test('constructors')).toBe(true);
    expect(ROLLOUT_LABEL.test('my_toString')).toBe(true);
  });

  describe('over the wire (the agent session)', () => {
    let dir: string;
    beforeEach(() => {
      dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sy-own-')), 'state');
    });
    afterEach(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));

    it('a withdrawal whose type is "valueOf" (or any other such name) is NACKed EINVALID, never taken for a delta', async () => {
      const sent: Frame[] = [];
      const s = new AgentSession({ agentId: 'edge-1', agentVersion: 'test', store: new StateStore(dir), send: (f) => sent.push(f), apply: async () => {}, limits: { maxBindings: 1000, withdrawalShare: 0.05, withdrawalMin: 1 } });
      const v1 = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: { cdn: { tcp: [443] } } };
      await s.receive(JSON.stringify({ type: 'snapshot', epoch: 'e1', version: 1, digest: stateDigest(parseDesiredState(v1, 'v1')), state: v1 }));
      expect(sent.pop()).toMatchObject({ type: 'ack', version: 1 });
      const empty = stateDigest(parseDesiredState({ bindings: [], services: { cdn: { tcp: [443] } } }, 'v2'));
      for (const name of NAMES) {
        await s.receive(JSON.stringify({ type: name, epoch: 'e1', version: 2, from_version: 1, digest: empty, add: [], remove: [{ protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }] }));
        const nack = sent.pop() as Nack;
        expect(nack, name).toMatchObject({ type: 'nack', code: 'EINVALID', version: 2 });
        expect(nack.message).toMatch(/^frame type: must be one of/);
      }
      expect(s.applied!.version).toBe(1);
    });
  });

  it('in a desired-state file: as a field, a label, a key of services and exclusive, a field of a policy and of https_only; refused naming the entry', () => {
    const base = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: { cdn: { tcp: [443] } }, https_only: { prefixes: ['192.0.2.0/26'] }, exclusive: { cdn: ['192.0.2.0/24'] } };
    parseDesiredState(base, 'f.json');
    for (const name of NAMES) {
      const cases: Array<[unknown, RegExp]> = [
        [withFieldAt(base, [], name), new RegExp(`^f\\.json: unknown field "${name}"$`)],
        [withFieldAt(base, ['bindings', 0], name), new RegExp(`^f\\.json: bindings\\[0\\] .*: unknown field "${name}"$`)],
        [{ ...base, bindings: [{ ...base.bindings[0], label: name }] }, new RegExp(`^f\\.json: bindings\\[0\\] .*: label "${name}" (is reserved|must be)`)],
        [{ ...base, services: withFieldAt({}, [], name, { tcp: [443] }) }, new RegExp(`^f\\.json: services\\.${name}: label "${name}" (is reserved|must be)`)],
        [withFieldAt(base, ['services', 'cdn'], name, [443]), new RegExp(`^f\\.json: services\\.cdn: unknown field "${name}"$`)],
        [withFieldAt(base, ['https_only'], name, [80]), new RegExp(`^f\\.json: https_only: unknown field "${name}"$`)],
        [{ ...base, exclusive: withFieldAt({}, [], name, ['192.0.2.0/24']) }, new RegExp(`^f\\.json: exclusive\\.${name}: label "${name}" (is reserved|must be)`)],
      ];
      for (const [doc, message] of cases) {
        const err = refusal(() => parseDesiredState(doc, 'f.json'), JSON.stringify(doc));
        expect(err.code).toMatch(/^EINVAL_(FILE|BINDING)$/);
        expect(err.message).toMatch(message);
      }
    }
  });

  it('labels everywhere (bindings, CLI, agent ids) may not be such a name; the two-underscore ones never matched the alphabet', () => {
    for (const name of NAMES) {
      const err = refusal(() => parseLabel(name, 'label'), name);
      expect(err.code).toBe('EINVAL_BINDING');
      expect(err.message).toBe(`label: label ${JSON.stringify(name)} is reserved (a name every JavaScript object inherits)`);
    }
    expect(parseLabel('constructors', 'label')).toBe('constructors');
  });

  it('checkDocumentFields: "__proto__" as JSON.parse makes it (an own property) is an unknown field', () => {
    for (const name of NAMES) {
      const doc: unknown = JSON.parse(`{${JSON.stringify(name)}: 1}`);
      expect(Object.hasOwn(doc as object, name)).toBe(true);
      const err = refusal(() => checkDocumentFields(doc, 'x.json', new Set(['bindings']), '{"bindings": [...]}'), name);
      expect(err).toMatchObject({ code: 'EINVAL_FILE', message: `x.json: unknown field ${JSON.stringify(name)}` });
    }
  });

  describe('local.json', () => {
    let dir: string;
    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-own-local-'));
    });
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
    const good = {
      overrides: [
        { kind: 'bind', key: { protocol: 'tcp', prefix: '192.0.2.10/32', port: 443 }, binding: { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.10/32', port: 443 }, by: { uid: 0, pid: 42 }, at: '2026-01-01T00:00:00.000Z' },
        { kind: 'mask', key: { protocol: 'udp', prefix: '2001:db8::/32', port: 0 }, by: { uid: 0, pid: 43 }, at: '2026-01-01T00:00:01.000Z' },
      ],
    };
    const load = (doc: unknown) => {
      fs.writeFileSync(path.join(dir, 'local.json'), JSON.stringify(doc));
      return new LocalLayer(dir);
    };

    it('as a field anywhere, or as the kind: refused with EINVAL_FILE naming the entry; a good file loads', () => {
      expect(load(good).list()).toEqual(good.overrides);
      const file = path.join(dir, 'local.json');
      const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
      for (const name of NAMES) {
        const cases: Array<[unknown, string]> = [
          [withFieldAt(good, [], name), `${file}: unknown field "${name}"`],
          [withFieldAt(good, ['overrides', 1], name), `${file}: overrides[1]: unknown field "${name}"`],
          [withFieldAt(good, ['overrides', 0, 'key'], name), `${file}: overrides[0].key: unknown field "${name}"`],
          [withFieldAt(good, ['overrides', 0, 'binding'], name), `${file}: overrides[0].binding: unknown field "${name}"`],
          [withFieldAt(good, ['overrides', 1, 'by'], name), `${file}: overrides[1].by: unknown field "${name}"`],
          [{ overrides: [{ ...good.overrides[1], kind: name }] }, `${file}: overrides[0].kind: ${JSON.stringify(name)} must be "bind" or "mask"`],
          [{ overrides: [{ ...good.overrides[0], binding: { ...good.overrides[0]!.binding, label: name } }] }, `${file}: overrides[0].binding: label ${JSON.stringify(name)}`],
        ];
        for (const [doc, message] of cases) {
          const err = refusal(() => load(doc), JSON.stringify(doc));
          expect(err.code).toBe('EINVAL_FILE');
          expect(err.message).toMatch(new RegExp(`^${esc(message)}`));
        }
      }
    });

    it('a file cut short or of another shape: refused naming the entry, not a TypeError', () => {
      const file = path.join(dir, 'local.json');
      const cases: Array<[unknown, string]> = [
        [{}, `${file}: missing field "overrides"`],
        [{ overrides: {} }, `${file}: overrides must be a list`],
        [{ overrides: [null] }, `${file}: overrides[0]: expected an object`],
        [{ overrides: [{ kind: 'bind', key: good.overrides[0]!.key, by: { uid: 0, pid: 1 }, at: 'x' }] }, `${file}: overrides[0]: missing field "binding"`],
        [{ overrides: [{ ...good.overrides[1], binding: good.overrides[0]!.binding }] }, `${file}: overrides[0].binding: a mask has no binding`],
        [{ overrides: [{ ...good.overrides[0], key: { protocol: 'tcp', prefix: '192.0.2.11/32', port: 443 } }] }, `${file}: overrides[0].binding: tcp 192.0.2.10/32 443 is not the override's key tcp 192.0.2.11/32 443`],
        [{ overrides: [{ ...good.overrides[1], key: { protocol: 'udp', prefix: '2001:db8::' } }] }, `${file}: overrides[0].key: missing field "port"`],
        [{ overrides: [{ ...good.overrides[1], by: { uid: -1, pid: 1 } }] }, `${file}: overrides[0].by.uid: -1 must be a non-negative integer`],
        [{ overrides: [{ ...good.overrides[1], at: 'yesterday' }] }, `${file}: overrides[0].at: "yesterday" must be a date`],
        [{ overrides: [good.overrides[1], good.overrides[1]] }, `${file}: overrides[1]: udp 2001:db8::/32 0 is overridden twice`],
      ];
      for (const [doc, message] of cases) {
        const err = refusal(() => load(doc), JSON.stringify(doc));
        expect(err.code).toBe('EINVAL_FILE');
        expect(err.message.startsWith(message), `${err.message} / ${message}`).toBe(true);
      }
    });
  });

  it('as an admin op, or as a field of any op: refused with EINVAL_ARGUMENT naming it', () => {
    const ops: Record<string, Record<string, unknown>> = {
      status: {},
      'local-bind': { binding: { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 } },
      'local-unbind': { key: { protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 } },
      'local-list': {},
      'local-clear': {},
      register: { label: 'cdn' },
    };
    for (const [op, fields] of Object.entries(ops)) expect(parseAdminRequest(JSON.stringify({ op, ...fields }))).toEqual({ op, ...fields });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-own-admin-'));
    const layer = new LocalLayer(dir);
    for (const name of NAMES) {
      const asOp = JSON.stringify({ op: name });
      expect(refusal(() => parseAdminRequest(asOp), asOp)).toMatchObject({ code: 'EINVAL_ARGUMENT', message: `request: unknown op ${JSON.stringify(name)} (status, local-bind, local-unbind, local-list, local-clear, register)` });
      for (const [op, fields] of Object.entries(ops)) {
        const text = withField(JSON.stringify({ op, ...fields }), name);
        expect(refusal(() => parseAdminRequest(text), text)).toMatchObject({ code: 'EINVAL_ARGUMENT', message: `request ${JSON.stringify(op)}: unknown field ${JSON.stringify(name)}` });
      }
      // The key of a local unbind is checked the same way (the agent passes it to canonicalKey).
      const key = JSON.parse(withField(JSON.stringify({ protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }), name)) as unknown;
      const cp = { find: () => -1 } as never;
      expect(refusal(() => layer.change(cp, { unbind: key }, { uid: 0, pid: 1 }), name).message).toBe(`local unbind: unknown field ${JSON.stringify(name)}`);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    expect(refusal(() => parseAdminRequest('{"op": "status"'), 'cut').message).toMatch(/^request is not JSON/);
    expect(refusal(() => parseAdminRequest('["status"]'), 'array').message).toBe('request: expected a JSON object with an "op"');
    expect(refusal(() => parseAdminRequest('{"op": "register"}'), 'no label').message).toBe('request "register": missing field "label"');
  });

  describe('the agent\'s config and the rollout file', () => {
    let dir: string;
    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-own-config-'));
    });
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('readAgentConfig: "constructor" and "__proto__" (and the others) as a field, a label key or a registration label are refused', () => {
      const file = writeAgentConfig(dir, { agentId: 'edge-1', port: 1, ca: 'ca', token: 't', netns: '/run/netns/x', bpffs: '/sys/fs/bpf', extra: { labels: { site: 'ams' }, registration: { cdn: { uids: [998] } } } });
      const good = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      expect(readAgentConfig(file)).toMatchObject({ agentId: 'edge-1', labels: { site: 'ams' } });
      const write = (doc: unknown) => {
        fs.writeFileSync(file, JSON.stringify(doc));
        return file;
      };
      for (const name of NAMES) {
        const cases: Array<[unknown, RegExp]> = [
          [withFieldAt(good, [], name), new RegExp(`agent\\.json: unknown field "${name}"`)],
          [withFieldAt(good, ['control_plane'], name), new RegExp(`agent\\.json: control_plane: unknown field "${name}"`)],
          [{ ...good, firewall: withFieldAt({}, [], name) }, new RegExp(`agent\\.json: firewall: unknown field "${name}"`)],
          [withFieldAt(good, ['registration', 'cdn'], name, [1]), new RegExp(`agent\\.json: registration\\.cdn: unknown field "${name}"`)],
          [{ ...good, registration: withFieldAt({}, [], name, { uids: [1] }) }, new RegExp(`agent\\.json: registration\\.${name}: label "${name}"`)],
          // Old code: {"__proto__": "x"} was dropped without a word (out["__proto__"] = "x"), {"constructor": "x"} kept.
          [{ ...good, labels: withFieldAt({}, [], name, 'x') }, new RegExp(`agent\\.json: labels\\.${name}:`)],
          [{ ...good, agent_id: name }, new RegExp(`agent\\.json: agent_id: label "${name}"`)],
        ];
        for (const [doc, message] of cases) {
          const err = refusal(() => readAgentConfig(write(doc)), JSON.stringify(doc));
          expect(err.code).toMatch(/^EINVAL_(FILE|BINDING)$/);
          expect(err.message).toMatch(message);
        }
      }
    });

    it('parseRollout: such a name as a stage name or a match key or value is refused', () => {
      expect(parseRollout({ stages: [{ name: 'canary', match: { canary: 'true' } }] }, 'r.json').stages).toHaveLength(1);
      for (const name of NAMES) {
        for (const doc of [{ stages: [{ name }] }, { stages: [{ name: 'canary', match: { canary: name } }] }, { stages: [{ name: 'canary', match: JSON.parse(`{${JSON.stringify(name)}: "true"}`) as unknown }] }]) {
          expect(refusal(() => parseRollout(doc, 'r.json'), JSON.stringify(doc)).message).toMatch(/^r\.json: stages\[0\]\.(name|match) must be/);
        }
      }
    });
  });

  describe('as a command or subcommand of the CLI', () => {
    const run = runCli;

    it('an unknown command (exit 2), never a TypeError from Object.prototype', async () => {
      for (const name of NAMES) {
        const r = await run([name, '--netns', '/nonexistent-sy/ns', '--bpffs', '/nonexistent-sy/bpffs']);
        expect(r, name).toMatchObject({ code: 2, stdout: '', stderr: `switchyard: unknown command ${JSON.stringify(name)}; see switchyard --help\n` });
      }
    });

    it('an unknown subcommand of agent, local, firewall and control-plane (exit 2)', async () => {
      for (const name of NAMES) {
        const socket = ['--socket', '/nonexistent-sy/admin.sock'];
        for (const [command, flags, expected] of [['agent', socket, /unexpected argument/], ['local', socket, /expected: local bind/], ['firewall', [], /unknown firewall command/], ['control-plane', [], /unexpected argument/]] as const) {
          const r = await run([command, name, ...flags, '--netns', '/nonexistent-sy/ns']);
          expect(r.code, `${command} ${name}`).toBe(2);
          expect(r.stderr).toMatch(expected);
        }
      }
    });
  });
});
