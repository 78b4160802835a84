import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { History } from '../../src/controlplane/history.js';
import { AgentSession } from '../../src/agent/session.js';
import { StateStore } from '../../src/agent/store.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { documentOf, stateDigest, stateJson } from '../../src/protocol/state.js';
import type { Frame, Snapshot } from '../../src/protocol/messages.js';

const SERVICES = { cdn: { tcp: [80, 443] }, spectrum: { tcp: [443] } };
const state = (n: number, extra: Array<[string, string]> = []) =>
  parseDesiredState(
    {
      bindings: [
        ...Array.from({ length: n }, (_, i) => ({ label: 'cdn', protocol: 'tcp', prefix: `10.0.${i}.0/24`, port: 0 })),
        ...extra.map(([label, prefix]) => ({ label, protocol: 'tcp', prefix, port: 443 })),
      ],
      services: SERVICES,
    },
    'test',
  );

describe('control-plane history, against a real agent session', () => {
  let dir: string;
  let agentSent: Frame[];
  beforeEach(() => {
    dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sy-history-')), 'state');
    agentSent = [];
  });
  afterEach(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));
  const agent = () => new AgentSession({ agentId: 'a', agentVersion: 't', store: new StateStore(dir), send: (f) => agentSent.push(f), apply: async () => {} });

  it('versions states (same content, same version), then sends snapshot, delta or up-to-date from the hello', async () => {
    const h = new History(4, 'epoch-1');
    expect(h.frameFor({ have: null, refused: null })).toBeUndefined();
    expect(h.publish(state(10))).toMatchObject({ version: 1, changed: true });
    expect(h.publish(state(10))).toMatchObject({ version: 1, changed: false });
    const a = agent();
    const first = h.frameFor(a.hello())!;
    expect(first.type).toBe('snapshot');
    await a.receive(JSON.stringify(first));
    expect(agentSent.pop()).toMatchObject({ type: 'ack', version: 1 });
    expect(h.frameFor(a.hello())).toEqual({ type: 'up-to-date', epoch: 'epoch-1', version: 1 });
    h.publish(state(10, [['spectrum', '10.0.3.7/32']]));
    const second = h.frameFor(a.hello())!;
    expect(second).toMatchObject({ type: 'delta', from_version: 1, version: 2, remove: [] });
    await a.receive(JSON.stringify(second));
    expect(agentSent.pop()).toMatchObject({ type: 'ack', version: 2, digest: h.current!.digest });
  });

  it('composes the deltas of several versions for an agent behind, and publishes deltas in time of the change', async () => {
    const h = new History(8, 'epoch-1');
    h.publish(state(10));
    const a = agent();
    await a.receive(JSON.stringify(h.frameFor(a.hello())));
    // Three versions later: a key added then removed is not sent; a relabel is sent as remove + add.
    h.publishDelta({ add: [{ label: 'spectrum', protocol: 'tcp', prefix: '10.0.3.7/32', port: 443 }], remove: [] });
    h.publishDelta({ add: [{ label: 'spectrum', protocol: 'tcp', prefix: '10.0.0.0/24', port: 0 }], remove: [{ protocol: 'tcp', prefix: '10.0.0.0/24', port: 0 }] });
    h.publishDelta({ add: [], remove: [{ protocol: 'tcp', prefix: '10.0.3.7/32', port: 443 }] });
    expect(() => h.publishDelta({ add: [], remove: [{ protocol: 'tcp', prefix: '10.9.9.0/24', port: 0 }] })).toThrow(/remove\[0\] \(tcp 10\.9\.9\.0\/24 port 0\): no such binding/);
    const frame = h.frameFor(a.hello())!;
    expect(frame).toMatchObject({ type: 'delta', from_version: 1, version: 4, add: [{ label: 'spectrum', prefix: '10.0.0.0/24' }], remove: [{ prefix: '10.0.0.0/24' }] });
    await a.receive(JSON.stringify(frame));
    expect(agentSent.pop()).toMatchObject({ type: 'ack', version: 4, digest: h.current!.digest });
    // A change of service policies cannot travel as a delta: a snapshot.
    h.publish(parseDesiredState({ ...(documentOf(h.current!.state) as object), services: { cdn: { tcp: [443] } } }, 'x'));
    expect(h.frameFor(a.hello())!.type).toBe('snapshot');
  });

  it('sends a snapshot to an agent of another epoch, one behind the log, or one whose digest disagrees', () => {
    const h = new History(2, 'epoch-1');
    for (let n = 1; n <= 5; n++) h.publish(state(10 + n));
    const digestOf = (n: number) => stateDigest(state(10 + n));
    expect(h.frameFor({ have: { epoch: 'epoch-0', version: 5, digest: digestOf(5) }, refused: null })!.type).toBe('snapshot');
    expect(h.frameFor({ have: { epoch: 'epoch-1', version: 2, digest: digestOf(2) }, refused: null })!.type).toBe('snapshot'); // compacted away
    expect(h.frameFor({ have: { epoch: 'epoch-1', version: 4, digest: digestOf(4) }, refused: null })!.type).toBe('delta');
    expect(h.frameFor({ have: { epoch: 'epoch-1', version: 4, digest: digestOf(3) }, refused: null })!.type).toBe('snapshot');
  });

  it('does not push again a version an agent refused; carries an override for its version only', () => {
    const h = new History(4, 'epoch-1');
    h.publish(state(3));
    expect(h.frameFor({ have: null, refused: { epoch: 'epoch-1', version: 1 } })).toBeUndefined();
    h.publish(state(4));
    expect(h.frameFor({ have: null, refused: { epoch: 'epoch-1', version: 1 } })!.type).toBe('snapshot');
    expect(h.frameFor({ have: null, refused: null }, { version: 2, withdrawal: true })).toMatchObject({ override: { version: 2, withdrawal: true } });
    expect(h.frameFor({ have: null, refused: null }, { version: 1, withdrawal: true })).not.toHaveProperty('override');
  });

  it('the snapshot text written from the columns is the document, and validates back to the same digest', () => {
    const s = parseDesiredState(
      { bindings: [{ label: 'cdn', protocol: 'udp', prefix: '2001:db8::/48', port: 53 }, { label: 'x"y'.replace('"', '-'), protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }], services: { cdn: { udp: [53, '1000-2000'] } }, https_only: { prefixes: ['2001:db8::/64'], plaintext_ports: [80] } },
      'x',
    );
    expect(JSON.parse(stateJson(s))).toEqual(documentOf(s));
    // Byte for byte as JSON.stringify would write it, on the corners of RFC 5952 and of decimal digits.
    const corners = ['::/0', '::1/128', '1::/16', '0:0:1::/48', '1:0:0:2::/64', '1:0:0:2::/128', '2001:db8::1:0:0:1/128', '1:0:0:1:0:0:1:0/128', '1:2:3:4:5:6:7:8/128', '1:0:2:3:4:5:6:7/128', 'fe80:0:0:0:a::/80', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128', '0.0.0.0/0', '10.0.0.0/8', '255.255.255.255/32', '100.64.9.0/24'];
    const c = parseDesiredState({ bindings: corners.map((prefix, i) => ({ label: `l${i}`, protocol: i % 2 ? 'udp' : 'tcp', prefix, port: [0, 1, 9, 10, 99, 100, 65535][i % 7] })) }, 'corners');
    expect(stateJson(c)).toBe(JSON.stringify(documentOf(c)));
    const h = new History(4, 'e');
    h.publish(s);
    const frame = h.frameFor({ have: null, refused: null }, { version: 1, withdrawal: true }) as Snapshot;
    const wire = JSON.parse(h.snapshotText(frame)) as Snapshot;
    expect(wire).toEqual(JSON.parse(JSON.stringify(frame)));
    expect(stateDigest(parseDesiredState(wire.state, 'wire'))).toBe(stateDigest(s));
  });

  it('snapshots carry a document that validates back to the same digest', () => {
    const s = parseDesiredState(
      { bindings: [{ label: 'cdn', protocol: 'udp', prefix: '2001:db8::/48', port: 53 }], services: { cdn: { udp: [53, '1000-2000'] } }, https_only: { prefixes: ['2001:db8::/64'], plaintext_ports: [80] } },
      'x',
    );
    expect(stateDigest(parseDesiredState(documentOf(s), 'again'))).toBe(stateDigest(s));
  });
});
