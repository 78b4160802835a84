/**
 * What a push costs the agent's event loop (issue 15: a 60,000-binding delta
 * held it for 47 s, a 64-change delta of short prefixes for seconds at 1M).
 * The agent runs as in production (its own process, `switchyard agent`), the
 * control plane in this process publishes; the agent logs, per push, the
 * longest its event loop was held while handling it (monitorEventLoopDelay,
 * reset at receipt: heartbeats, pings and the systemd watchdog wait that
 * long) and the time from receipt to ACK. Pushes of every shape:
 *   - 60 bindings, then the state rewritten with 60,060 (a 60,000-add delta);
 *   - a 100,000-binding snapshot, then on it a one-binding delta, 64 short
 *     prefixes (none fits one slot: one table build), 1,000 host routes,
 *     and 20,000 removed + 20,000 added;
 *   - with --large: the same at 1,000,000 bindings.
 * Usage: node dist/bench/pushes.js [--large] [--only-large]; writes
 * bench/results/pushes.json (not with --only-large, a run for profiling).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDesiredState } from '../src/desired/state.js';
import { makeCerts } from '../test/support/certs.js';
import { projectPath } from '../src/paths.js';
import { pair } from './agent.js';
import { stateDoc } from './firewall.js';

type Doc = ReturnType<typeof stateDoc>;
type Binding = Doc['bindings'][number];

interface Row {
  push: string;
  bindings_after: number;
  kind: string;
  ack_ms: number;
  agent_ms: number;
  loop_max_ms: number;
}

/** stateDoc's random port-80 bindings that fall inside its HTTPS-only ranges are refused by the agent's guard (at 1M, a few do): left out. */
function withoutPlaintextInsideHttpsOnly(doc: Doc): Doc {
  const inside = (b: Binding) => b.port === 80 && (/^198\.1[89]\./.test(b.prefix) || /^2001:db8:ffff:/.test(b.prefix));
  return { ...doc, bindings: doc.bindings.filter((b) => !inside(b)) };
}

/** `n` prefixes of length `len` from 100.64.0.0 on (a range stateDoc never uses), for `label`. */
function prefixes(n: number, len: number, label: string, from = 0x64400000): Binding[] {
  return Array.from({ length: n }, (_, k) => {
    const a = (from + k * 2 ** (32 - len)) >>> 0;
    return { label, protocol: 'tcp', prefix: `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}/${len}`, port: 0 };
  });
}

async function run(large: boolean, onlyLarge = false): Promise<Row[]> {
  const certs = makeCerts();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-pushes-'));
  const rows: Row[] = [];
  try {
    const scenario = async (name: string, steps: Array<{ push: string; doc: Doc; override?: boolean }>) => {
      const pushes: Array<{ type: string; code: string | null; ms: number; loopMaxMs: number }> = [];
      const p = await pair(path.join(dir, name), certs, pushes);
      try {
        for (const step of steps) {
          const state = parseDesiredState(step.doc, step.push);
          const seen = pushes.length;
          const started = performance.now();
          const v = (await p.server.publish(state, { override: step.override ?? false })).version;
          await p.acked(v);
          const ack = performance.now() - started;
          while (pushes.length === seen) await new Promise((r) => setTimeout(r, 10)); // the log line follows the ACK
          const last = pushes[pushes.length - 1]!;
          rows.push({ push: step.push, bindings_after: step.doc.bindings.length, kind: last.type, ack_ms: Math.round(ack), agent_ms: last.ms, loop_max_ms: last.loopMaxMs });
          process.stderr.write(`${step.push}: ${last.type}, ACK after ${Math.round(ack)} ms, agent ${last.ms} ms, event loop held at most ${last.loopMaxMs} ms\n`);
        }
      } finally {
        await p.stop();
      }
    };

    const big = stateDoc(60_060);
    if (!onlyLarge) await scenario('grow', [
      { push: '60 bindings (snapshot)', doc: { ...big, bindings: big.bindings.slice(0, 60) } },
      { push: '60 → 60,060 bindings (delta of 60,000 adds)', doc: big },
    ]);

    for (const count of onlyLarge ? [1_000_000] : large ? [100_000, 1_000_000] : [100_000]) {
      const base = withoutPlaintextInsideHttpsOnly(stateDoc(count));
      const n = count.toLocaleString('en');
      const one = { ...base, bindings: [...base.bindings, ...prefixes(1, 32, 'spectrum')] };
      const short = { ...one, bindings: [...one.bindings, ...prefixes(64, 10, 'cdn', 0x0b000000)] };
      const hosts = { ...short, bindings: [...short.bindings, ...prefixes(1000, 32, 'spectrum', 0x64800000)] };
      const churn = { ...hosts, bindings: [...hosts.bindings.slice(20_000), ...prefixes(20_000, 32, 'dns', 0x64c00000)] };
      await scenario(`at-${count}`, [
        { push: `${n} bindings (snapshot, fresh agent)`, doc: base },
        { push: `${n}: one binding added`, doc: one },
        { push: `${n}: 64 short prefixes (/10) added`, doc: short },
        { push: `${n}: 1,000 host routes added`, doc: hosts },
        { push: `${n}: 20,000 removed + 20,000 added (with the withdrawal override)`, doc: churn, override: true },
      ]);
    }
    return rows;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(certs.dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const onlyLarge = process.argv.includes('--only-large');
  const rows = await run(process.argv.includes('--large'), onlyLarge);
  const out = projectPath('bench/results/pushes.json');
  if (!onlyLarge) fs.writeFileSync(out, `${JSON.stringify({ measured_at: new Date().toISOString(), method: 'agent in its own process; loop_max_ms: monitorEventLoopDelay (10 ms resolution) in the agent, reset when the push is received, read when it is handled; ack_ms: publish to ACK at the control plane', rows }, null, 2)}\n`);
  console.table(rows);
  if (!onlyLarge) process.stderr.write(`written to ${out}\n`);
  process.exit(0);
}
