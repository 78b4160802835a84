/**
 * A large proposal judged on a thread of its own (judge-thread.ts): the
 * same judgement as in place (verdict, diff, findings, the new state's
 * digest), errors keep their code, and the event loop turns meanwhile.
 * The compiled modules (dist/) are used: the thread's script is the
 * compiled judge-thread.js.
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import { projectPath } from '../../src/paths.js';

const built = fs.existsSync(projectPath('dist/src/controlplane/judge-thread.js'));

type Doc = { bindings: Array<{ label: string; protocol: string; prefix: string; port: number }>; services: Record<string, unknown>; https_only?: unknown };
const doc = (n: number, label = 'cdn'): Doc => ({
  bindings: Array.from({ length: n }, (_, i) => ({ label: i % 3 === 0 ? 'spectrum' : label, protocol: 'tcp', prefix: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}/32`, port: i % 2 ? 0 : 443 })),
  services: { cdn: { tcp: [443] }, spectrum: { tcp: [443] }, other: { tcp: [443] } },
});

describe.skipIf(!built)('judging a large proposal on a thread', () => {
  const load = async () => {
    const thread = (await import(projectPath('dist/src/controlplane/judge-thread.js'))) as typeof import('../../src/controlplane/judge-thread.js');
    const policy = (await import(projectPath('dist/src/controlplane/policy.js'))) as typeof import('../../src/controlplane/policy.js');
    const state = (await import(projectPath('dist/src/desired/state.js'))) as typeof import('../../src/desired/state.js');
    const indexed = (await import(projectPath('dist/src/protocol/state.js'))) as typeof import('../../src/protocol/state.js');
    return { ...thread, ...policy, ...state, ...indexed };
  };

  it('gives the judgement made in place, while the event loop turns', async () => {
    const m = await load();
    const live = m.IndexedState.of(m.parseDesiredState(doc(60_000), 'live'));
    const next = doc(60_000);
    // A third of cdn moves to other: a withdrawal over budget, held.
    next.bindings.forEach((b, i) => i % 3 === 1 && (b.label = 'other'));
    const proposal = m.parseDesiredState(next, 'proposal');
    let turns = 0;
    const ticker = setInterval(() => turns++, 1);
    const off = await m.judgeOffThread(live, proposal, undefined);
    clearInterval(ticker);
    const inPlace = m.judge(live, proposal);
    expect(off.verdict).toBe('hold');
    expect(inPlace.verdict).toBe('hold');
    if (off.verdict === 'refuse' || inPlace.verdict === 'refuse') throw new Error('refused');
    expect(off.indexed.digest).toBe(inPlace.indexed.digest);
    expect(off.summary).toEqual(inPlace.summary);
    expect(off.ranges).toBe(inPlace.ranges);
    expect(off.indexed.bindings.count).toBe(60_000);
    // The caller's states are whole after the copy.
    expect(live.bindings.count).toBe(60_000);
    expect(proposal.bindings.count).toBe(60_000);
    expect(turns).toBeGreaterThan(5);
  });

  it('refusals and errors come back as they are made in place', async () => {
    const m = await load();
    const live = m.IndexedState.of(m.parseDesiredState(doc(10_000), 'live'));
    const plaintext = doc(10_000);
    plaintext.https_only = { prefixes: ['10.0.0.0/16'], plaintext_ports: [80] };
    plaintext.bindings.push({ label: 'cdn', protocol: 'tcp', prefix: '10.0.0.0/24', port: 80 });
    const refused = await m.judgeOffThread(live, m.parseDesiredState(plaintext, 'p'), undefined);
    expect(refused.verdict).toBe('refuse');
    if (refused.verdict !== 'refuse') throw new Error('not refused');
    expect(refused.findings.map((f) => f.code)).toContain('EPLAINTEXT');
    const twice = m.parseDesiredState(doc(10_000), 't');
    // A table with a binding listed twice (parse refuses it; the thread's indexing must too, with its code).
    const t = twice.bindings;
    t.add(t.label(0), t.binding(0).protocol, t.prefix(0), t.port[0]!);
    await expect(m.judgeOffThread(live, twice, undefined)).rejects.toMatchObject({ code: 'EINVAL_BINDING' });
  });
});
