/**
 * A made-up desired state for warming up (src/agent/warmup.ts,
 * src/controlplane/warmup.ts): V8 optimises a function only after it has
 * been busy for a while, so a fresh process runs its first big push as
 * bytecode unless the same code ran on something first.
 */
import { formatAddress } from '../net/address.js';

/** Enough iterations of every hot loop to get it optimised; small enough to cost a fraction of a second. */
export const WARMUP_BINDINGS = 20_000;

const LABELS = ['warm-a', 'warm-b', 'warm-c'];

/** A made-up state shaped like a real one: both families, nested prefixes, exact and any ports, three services, an HTTPS-only range. */
export function warmupDocument(count = WARMUP_BINDINGS) {
  let seed = 0x5eed;
  const next = () => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 4294967296;
  };
  const seen = new Set<string>();
  const bindings: Array<{ label: string; protocol: string; prefix: string; port: number }> = [];
  while (bindings.length < count) {
    const nested = next() < 0.1;
    let prefix: string;
    if (next() < 0.7) {
      const length = nested ? 28 + Math.floor(next() * 5) : 16 + Math.floor(next() * 13);
      const word = (Math.floor(next() * 4294967296) & (0xffffffff << (32 - length))) >>> 0;
      prefix = `${formatAddress(4, [word, 0, 0, 0])}/${length}`;
    } else {
      const length = 32 + Math.floor(next() * 33);
      const keep = (bits: number) => (bits <= 0 ? 0 : bits >= 32 ? Math.floor(next() * 4294967296) >>> 0 : (Math.floor(next() * 4294967296) & (0xffffffff << (32 - bits))) >>> 0);
      prefix = `${formatAddress(6, [0x20010db8, keep(length - 32), keep(length - 64), 0])}/${length}`;
    }
    const protocol = next() < 0.8 ? 'tcp' : 'udp';
    const port = next() < 0.5 ? 0 : [80, 443, 53][Math.floor(next() * 3)]!;
    const key = `${protocol} ${prefix} ${port}`;
    if (seen.has(key)) continue;
    seen.add(key);
    bindings.push({ label: LABELS[Math.floor(next() * LABELS.length)]!, protocol, prefix, port });
  }
  return {
    bindings,
    services: { 'warm-a': { tcp: [80, 443], udp: [443] }, 'warm-b': { tcp: ['1-1023'] }, 'warm-c': { tcp: [53], udp: [53] } },
    https_only: { prefixes: ['198.18.0.0/15'] },
  };
}
