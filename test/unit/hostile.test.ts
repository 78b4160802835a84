/**
 * Hostile control-plane frames (issue 7): 12,000 of them, generated with
 * fast-check from a fixed seed — not JSON, wrong types, unknown fields,
 * huge payloads, invalid and overlapping prefixes, duplicate keys, version
 * games, deltas on the wrong base, digests that lie, changes a guard
 * refuses (with the right digest) — at an agent session
 * holding a last known good state. Each must be answered (a push with a
 * NACK naming a reason; a frame an agent does not act on, such as hello or
 * up-to-date, with nothing), nothing may throw, and the state in force (what
 * the data plane was given) must be exactly as before: no apply at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentSession } from '../../src/agent/session.js';
import { StateStore } from '../../src/agent/store.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { stateDigest } from '../../src/protocol/state.js';
import { NACK_CODES, type Frame } from '../../src/protocol/messages.js';

const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: [443] } };
const GOOD = { bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }, { label: 'spectrum', protocol: 'tcp', prefix: '192.0.2.200/32', port: 443 }], services: SERVICES };
const MAX_FRAME = 64 * 1024;

const prefix = fc.oneof(
  fc.constantFrom('192.0.2.0/24', '192.0.2.0/25', '192.0.2.0/24', '10.0.0.1/8', '::/0', '::ffff:1.2.3.4/128', '2001:db8::/33', '1.2.3.4/33', '256.1.1.1/32', '', '192.0.2.0', '0.0.0.0/0'),
  fc.string({ maxLength: 40 }),
  fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 40 })).map(([o, l]) => `${o}.0.2.0/${l}`),
);
const binding = fc.record(
  {
    label: fc.oneof(fc.constantFrom('cdn', 'spectrum', 'x'.repeat(80), '../etc', 'a b', '$(reboot)', ''), fc.string({ maxLength: 10 })),
    protocol: fc.oneof(fc.constantFrom('tcp', 'udp', 'icmp', 'TCP'), fc.anything()),
    prefix: fc.oneof(prefix, fc.anything()),
    port: fc.oneof(fc.integer({ min: -5, max: 70000 }), fc.constantFrom(0, 443, 1.5, '80', null)),
  },
  { requiredKeys: [] },
);
const stateDoc = fc.oneof(
  fc.record({ bindings: fc.array(binding, { maxLength: 6 }), services: fc.constantFrom(SERVICES, {}, { cdn: { tcp: ['99999'] } }, 'all') }, { requiredKeys: ['bindings'] }),
  // duplicate keys and overlapping prefixes among otherwise good bindings
  fc.constantFrom(
    { bindings: [...GOOD.bindings, GOOD.bindings[0]], services: SERVICES },
    { bindings: [...GOOD.bindings, { ...GOOD.bindings[0], label: 'spectrum' }], services: SERVICES },
    { bindings: [], services: SERVICES },
    { ...GOOD, extra: true },
  ),
  fc.anything(),
);
const version = fc.oneof(fc.integer({ min: -3, max: 5 }), fc.constantFrom(2 ** 53, 1.5, '2', null, 1e308));
const digest = fc.oneof(fc.constantFrom(`sha256:${'0'.repeat(64)}`, 'sha256:', 'md5:x'), fc.string({ maxLength: 20 }));
const epoch = fc.oneof(fc.constantFrom('e1', 'e2', ''), fc.string({ maxLength: 12 }));
const snapshot = fc.record({ type: fc.constant('snapshot'), epoch, version, digest, state: stateDoc, override: fc.option(fc.anything(), { nil: undefined }) }, { requiredKeys: ['type'] });
const delta = fc.record(
  { type: fc.constant('delta'), epoch, version, from_version: version, digest, add: fc.oneof(fc.array(binding, { maxLength: 4 }), fc.anything()), remove: fc.oneof(fc.array(fc.record({ protocol: fc.constantFrom('tcp', 'udp'), prefix, port: fc.integer({ min: 0, max: 443 }) }), { maxLength: 3 }), fc.anything()) },
  { requiredKeys: ['type'] },
);
// Well-formed envelopes around hostile content: these get past the frame's schema to the state's validation, the digest, the base and the guards.
const hex64 = fc.array(fc.integer({ min: 0, max: 15 }), { minLength: 64, maxLength: 64 }).map((ds) => `sha256:${ds.map((d) => d.toString(16)).join('')}`);
const shapedSnapshot = fc.record({ type: fc.constant('snapshot'), epoch: fc.constantFrom('e1', 'e2'), version: fc.integer({ min: 0, max: 4 }), digest: hex64, state: stateDoc });
const shapedDelta = fc.record({
  type: fc.constant('delta'),
  epoch: fc.constantFrom('e1', 'e2'),
  version: fc.integer({ min: 0, max: 4 }),
  from_version: fc.integer({ min: 0, max: 3 }),
  digest: hex64,
  add: fc.array(binding, { maxLength: 4 }),
  remove: fc.array(fc.record({ protocol: fc.constantFrom('tcp', 'udp'), prefix: fc.constantFrom('192.0.2.0/24', '192.0.2.200/32', '10.0.0.0/8'), port: fc.constantFrom(0, 443) }), { maxLength: 3 }),
});
// Frames whose digest is right but whose change a guard refuses: every service emptied; a plaintext port inside an HTTPS-only range.
const withDigest = (state: unknown) => ({ state, digest: stateDigest(parseDesiredState(state, 'guarded')) });
const EMPTIED = withDigest({ bindings: [], services: SERVICES });
const PLAINTEXT = withDigest({ ...GOOD, bindings: [...GOOD.bindings, { label: 'cdn', protocol: 'tcp', prefix: '192.0.2.64/26', port: 80 }], https_only: { prefixes: ['192.0.2.0/25'] } });
const guarded = fc.record({ version: fc.integer({ min: 2, max: 9 }), which: fc.constantFrom(EMPTIED, PLAINTEXT) }).map(({ version, which }) => JSON.stringify({ type: 'snapshot', epoch: 'e1', version, ...which }));
const otherType = fc.record({ type: fc.oneof(fc.constantFrom('hello', 'ack', 'nack', 'heartbeat', 'up-to-date', 'bogus', ''), fc.anything()) }).chain((head) => fc.dictionary(fc.string({ maxLength: 8 }), fc.anything(), { maxKeys: 4 }).map((rest) => ({ ...rest, ...head })));
const frameText = fc.oneof(
  { weight: 2, arbitrary: fc.string({ maxLength: 200 }) }, // not JSON, mostly
  { weight: 1, arbitrary: fc.anything().map((v) => JSON.stringify(v) ?? 'undefined') },
  { weight: 2, arbitrary: snapshot.map((f) => JSON.stringify(f)) },
  { weight: 2, arbitrary: delta.map((f) => JSON.stringify(f)) },
  { weight: 3, arbitrary: shapedSnapshot.map((f) => JSON.stringify(f)) },
  { weight: 3, arbitrary: shapedDelta.map((f) => JSON.stringify(f)) },
  { weight: 1, arbitrary: guarded },
  { weight: 1, arbitrary: otherType.map((f) => JSON.stringify(f)) },
  { weight: 1, arbitrary: fc.integer({ min: MAX_FRAME + 1, max: MAX_FRAME * 4 }).map((n) => `{"type":"snapshot","epoch":"e1","version":9,"padding":"${'x'.repeat(n)}"}`) },
);

describe('hostile control-plane frames', () => {
  let dir: string;
  beforeAll(() => {
    dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sy-hostile-')), 'state');
  });
  afterAll(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));

  it('12,000 of them: each answered, none thrown, the state in force untouched', async () => {
    const sent: Frame[] = [];
    let applies = 0;
    const session = new AgentSession({
      agentId: 'edge-1',
      agentVersion: 'test',
      store: new StateStore(dir),
      maxFrameBytes: MAX_FRAME,
      send: (f) => sent.push(f),
      apply: async () => void applies++,
    });
    const good = parseDesiredState(GOOD, 'good');
    await session.receive(JSON.stringify({ type: 'snapshot', epoch: 'e1', version: 1, digest: stateDigest(good), state: GOOD }));
    expect(sent.at(-1)).toMatchObject({ type: 'ack', version: 1 });
    const before = { ...session.applied!, indexed: undefined };
    applies = 0;
    const frames = fc.sample(frameText, { numRuns: 12_000, seed: 20261123 });
    const counts: Record<string, number> = {};
    for (const text of frames) {
      const n = sent.length;
      await expect(session.receive(text)).resolves.toBeUndefined();
      const replies = sent.slice(n);
      let type: unknown;
      try {
        type = (JSON.parse(text) as { type?: unknown } | null)?.type;
      } catch {
        type = 'not JSON';
      }
      const isPush = type === 'snapshot' || type === 'delta' || typeof type !== 'string' || !['hello', 'ack', 'nack', 'heartbeat', 'up-to-date'].includes(type);
      if (isPush || replies.length > 0) {
        if (replies.length !== 1 || replies[0]!.type !== 'nack') expect.fail(`${text.slice(0, 200)} → ${JSON.stringify(replies)}`);
        const nack = replies[0] as Extract<Frame, { type: 'nack' }>;
        if (!NACK_CODES.includes(nack.code) || nack.message.length === 0) expect.fail(`${text.slice(0, 200)} → ${JSON.stringify(nack)}`);
        counts[nack.code] = (counts[nack.code] ?? 0) + 1;
      }
    }
    if (process.env.HOSTILE_COUNTS) console.log(JSON.stringify(counts));
    expect(applies).toBe(0);
    expect({ ...session.applied!, indexed: undefined }).toEqual(before);
    expect(session.applied!.indexed.digest).toBe(stateDigest(good));
    // The generators reach every kind of refusal they aim at.
    expect(Object.keys(counts).sort()).toEqual(expect.arrayContaining(['EINVALID', 'ETOO_LARGE', 'EDIGEST', 'EGAP', 'EWITHDRAWAL', 'EINVARIANT']));
    expect(counts.EDIGEST! + counts.EGAP!).toBeGreaterThan(1000); // many got past the schema
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBeGreaterThan(10_000);
  }, 120_000);
});
