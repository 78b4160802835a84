import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StateStore, writeAtomic } from '../../src/agent/store.js';

describe('agent state directory', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-store-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes atomically, owner-only, and reads the last known good back', async () => {
    const store = new StateStore(path.join(dir, 'state'));
    expect(fs.statSync(store.dir).mode & 0o777).toBe(0o700);
    expect(store.lastKnownGood()).toBeUndefined();
    const lkg = { epoch: 'e1', version: 3, digest: `sha256:${'a'.repeat(64)}`, state: { bindings: [] }, acked_at: 1 };
    await store.saveLastKnownGood(lkg);
    expect(store.lastKnownGood()).toEqual(lkg);
    expect(fs.statSync(path.join(store.dir, 'last-known-good.json')).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(store.dir).sort()).toEqual(['deltas.jsonl', 'last-known-good.json']); // no temporary left behind; an empty delta log
    expect(fs.statSync(path.join(store.dir, 'deltas.jsonl')).mode & 0o777).toBe(0o600);
    writeAtomic(path.join(store.dir, 'last-known-good.json'), '{"epoch":"e1","version":4}');
    expect(store.lastKnownGood()!.version).toBe(4);
  });

  it('refuses a state directory others can read', () => {
    const open = path.join(dir, 'open');
    fs.mkdirSync(open, { mode: 0o755 });
    fs.chmodSync(open, 0o755);
    expect(() => new StateStore(open)).toThrow(/mode 755: it must be readable by its owner only/);
  });

  it('recognises a version that killed the agent mid-apply, and refuses it from then on', () => {
    const store = new StateStore(path.join(dir, 'state'));
    store.markApplying({ epoch: 'e1', version: 7, started_at: 1 });
    // …the agent dies here; a new one starts:
    const restarted = new StateStore(store.dir);
    expect(restarted.recoverFromCrash()).toEqual({ epoch: 'e1', version: 7 });
    expect(restarted.isRefused('e1', 7)).toBe(true);
    expect(restarted.isRefused('e1', 8)).toBe(false);
    expect(fs.existsSync(path.join(store.dir, 'applying.json'))).toBe(false);
    // A clean apply leaves no marker, and nothing new is refused.
    restarted.markApplying({ epoch: 'e1', version: 8, started_at: 2 });
    restarted.clearApplying();
    expect(new StateStore(store.dir).recoverFromCrash()).toEqual({ epoch: 'e1', version: 7 });
  });

  it('names a file changed by hand', () => {
    const store = new StateStore(path.join(dir, 'state'));
    fs.writeFileSync(path.join(store.dir, 'last-known-good.json'), '{torn', { mode: 0o600 });
    expect(() => store.lastKnownGood()).toThrow(/last-known-good\.json: not JSON/);
  });
});
