/**
 * How long the kernel takes to give back the memory of a 1M-binding table,
 * ours and tubular's. Closing the last fd only queues the free (a work item
 * runs map_free later), so timing close() measures nothing; instead we poll
 * /proc/meminfo until the map's memory is returned: VmallocUsed for our
 * vmalloc-ed array, SUnreclaim (slab) for the LPM trie's nodes. fentry on
 * the free would be sharper, but tracing programs are refused on this
 * machine (EPERM as root).
 */
import fs from 'node:fs';
import { Fd } from '../src/kernel/bpf.js';
import { createTableMap } from '../src/dispatcher/table.js';
import type { BindingTable } from '../src/bindings/binding.js';
import { buildOurs, loadTubular } from './harness.js';
import { mapMemory } from './machine.js';

export interface ReleaseTime {
  /** Bytes the map held (fdinfo memlock). */
  bytes: number;
  /** From close() of the last reference until 90 % of those bytes were back, or null if not seen within the timeout. */
  ms: number | null;
  counter: string;
}

function meminfoKb(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/**
 * Waits until `counter` holds still (under 1 MB of change in 100 ms, at most
 * 5 s), so frees the previous measurements queued (the 4M table, 190 MB)
 * are not counted: right after the 4M row the same release measured 17 ms
 * (twice), alone 4-8 ms, and after this wait 6.9 ms.
 */
async function settled(counter: string): Promise<void> {
  const started = performance.now();
  let last = meminfoKb(counter);
  while (performance.now() - started < 5_000) {
    await new Promise((r) => setTimeout(r, 100));
    const now = meminfoKb(counter);
    if (Math.abs(now - last) < 1024) return;
    last = now;
  }
}

async function release(fd: Fd, counter: 'VmallocUsed' | 'SUnreclaim', timeoutMs = 30_000): Promise<ReleaseTime> {
  await settled(counter);
  const bytes = mapMemory(fd.fd);
  const before = meminfoKb(counter);
  const target = before - (0.9 * bytes) / 1024;
  const started = performance.now();
  fd.close();
  while (performance.now() - started < timeoutMs) {
    if (meminfoKb(counter) <= target) return { bytes, ms: Math.round((performance.now() - started) * 100) / 100, counter };
    await new Promise((r) => setImmediate(r));
  }
  return { bytes, ms: null, counter };
}

export async function releaseTimes(set: BindingTable): Promise<{ bindings: number; ours: ReleaseTime; tubular: ReleaseTime }> {
  const built = buildOurs(set);
  const ours = await release(createTableMap(built, built.rows), 'VmallocUsed');
  const tubular = await release(loadTubular(set).map, 'SUnreclaim');
  return { bindings: set.count, ours, tubular };
}
