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
  };
}

/** Kernel memory charged to a BPF map (its fdinfo "memlock", the map's own accounting). */
export function mapMemory(fd: number): number {
  const m = /^memlock:\s+(\d+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}
