import fs from 'node:fs';

let cached: number | undefined;

/** Per-CPU map values have one slot per *possible* CPU (libbpf_num_possible_cpus). */
export function possibleCpus(): number {
  if (cached !== undefined) return cached;
  const text = fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
  let n = 0;
  for (const part of text.split(',')) {
    const [a, b] = part.split('-').map(Number);
    n = Math.max(n, (b ?? a!) + 1);
  }
  cached = n;
  return n;
}
