import { describe, expect, it } from 'vitest';
import { warmUp } from '../../src/agent/warmup.js';
import { warmupDocument } from '../../src/desired/warmup.js';
import { warmUpHistory } from '../../src/controlplane/warmup.js';
import { PushDecoder } from '../../src/agent/decoder.js';
import { TableBuildThread } from '../../src/dispatcher/build-worker.js';
import { parseDesiredState } from '../../src/desired/state.js';

describe('warm-up', () => {
  it('makes a valid state of the size asked, both families, exact and any ports', () => {
    const state = parseDesiredState(warmupDocument(3000), 'warm-up');
    const t = state.bindings;
    expect(t.count).toBe(3000);
    const families = new Set(Array.from(t.family.subarray(0, t.count)));
    const anyPort = Array.from(t.port.subarray(0, t.count)).filter((p) => p === 0).length;
    expect([...families].sort()).toEqual([4, 6]);
    expect(anyPort).toBeGreaterThan(0);
    expect(anyPort).toBeLessThan(3000);
  });

  it('the control plane publishes, changes and encodes it on a history of its own', () => {
    expect(warmUpHistory().changes).toBeGreaterThanOrEqual(45);
  });

  it('runs the push path on it without a kernel, the decoder included', async () => {
    const builder = new TableBuildThread();
    const decoder = new PushDecoder();
    try {
      await expect(warmUp(builder, decoder, 2000)).resolves.toBeGreaterThan(0);
    } finally {
      builder.close();
      decoder.close();
    }
  });
});
