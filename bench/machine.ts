/** What the figures were measured on. */
import fs from 'node:fs';
import os from 'node:os';
import { execFileSync } from 'node:child_process';

export interface Machine {
  cpu: string;
  cpus: number;
  caches: Record<string, string>;
  kernel: string;
  bpfJit: string;
  mitigations: Record<string, string>;
  node: string;
  /** ns per dependent load by buffer size (loadLatency). */
  loadLatencyNs: Record<string, number>;
}

export function describeMachine(): Machine {
  const caches: Record<string, string> = {};
  try {
    for (const line of execFileSync('lscpu', { encoding: 'utf8' }).split('\n')) {
      const m = /^(L\d\w? cache):\s+(.*)$/.exec(line.trim());
      if (m) caches[m[1]!] = m[2]!;
    }
  } catch {
    /* lscpu missing: leave caches empty */
  }
  const read = (p: string) => {
    try {
      return fs.readFileSync(p, 'utf8').trim();
    } catch {
      return 'unknown';
    }
  };
  const mitigations: Record<string, string> = {};
  for (const name of ['spec_rstack_overflow', 'spectre_v2', 'retbleed']) mitigations[name] = read(`/sys/devices/system/cpu/vulnerabilities/${name}`);
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cpus: os.cpus().length,
    caches,
    kernel: os.release(),
    bpfJit: read('/proc/sys/net/core/bpf_jit_enable'),
    mitigations,
    node: process.version,
    loadLatencyNs: loadLatency(),
  };
}

/** Kernel memory charged to a BPF map (its fdinfo "memlock", the map's own accounting). */
export function mapMemory(fd: number): number {
  const m = /^memlock:\s+(\d+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/**
 * Dependent-load latency (ns per load) chasing a random cycle through one
 * 64-byte line after another in buffers of these sizes: how far the machine's
 * caches and TLBs really reach. A trie lookup at a million bindings costs
 * about one such load per level that misses, so this bounds the lookup rows.
 */
export function loadLatency(sizesMiB = [1, 4, 16, 64, 256]): Record<string, number> {
  const result: Record<string, number> = {};
  for (const mib of sizesMiB) {
    const words = (mib << 20) / 4;
    const lines = words / 16;
    const chase = new Int32Array(words);
    const order = new Int32Array(lines);
    for (let i = 0; i < lines; i++) order[i] = i;
    // Sattolo's shuffle: one cycle through every line, so no short loop stays cached.
    let seed = 0x9e3779b9;
    for (let i = lines - 1; i > 0; i--) {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      const j = seed % i;
      const t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    for (let i = 0; i < lines; i++) chase[order[i]! * 16] = order[(i + 1) % lines]! * 16;
    const loads = 2_000_000;
    let at = 0;
    for (let i = 0; i < loads / 10; i++) at = chase[at]!; // warm the path
    const started = process.hrtime.bigint();
    for (let i = 0; i < loads; i++) at = chase[at]!;
    const ns = Number(process.hrtime.bigint() - started) / loads;
    result[`${mib} MiB`] = Math.round(ns * 10) / 10 + (at < 0 ? 1 : 0);
  }
  return result;
}
