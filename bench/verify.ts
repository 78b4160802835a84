/**
 * Verification and semantic diff at scale (issue 6's figure: two states of
 * 1,000,000 bindings, verified and diffed in ≤ 5 s). The states: the
 * firewall bench's generator (both families, /16-/28 and /32-/64 prefixes,
 * a tenth nested, any port or 80/443/53, three services), and the same with
 * 10,000 changes (5,000 relabelled, 2,000 removed, 3,000 added). Parsing
 * the documents is timed apart; verify is of the new state (the control
 * plane verifies what it is about to publish), diff is old → new. Medians
 * of three.
 */
import { fileURLToPath } from 'node:url';
import { parseDesiredState } from '../src/desired/state.js';
import { verifyState } from '../src/verify/verify.js';
import { semanticDiff } from '../src/verify/diff.js';
import { stateDoc } from './firewall.js';

export interface VerifyBench {
  bindings: number;
  changes: number;
  parse_ms: number;
  verify_ms: number;
  verify_samples: number[];
  diff_ms: number;
  diff_samples: number[];
  verify_and_diff_ms: number;
  findings: Record<string, number>;
  diff_ranges: number;
  diff_summary: string[];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export function verifyBench(count = 1_000_000): VerifyBench {
  const doc = stateDoc(count);
  const bindings = doc.bindings.slice();
  for (let i = 0; i < 5000; i++) {
    const k = i * 97;
    bindings[k] = { ...bindings[k]!, label: bindings[k]!.label === 'cdn' ? 'spectrum' : 'cdn' };
  }
  const removed = new Set(Array.from({ length: 2000 }, (_, i) => i * 331 + 5));
  const next = bindings.filter((_, i) => !removed.has(i));
  for (let i = 0; i < 3000; i++) next.push({ label: 'dns', protocol: 'udp', prefix: `203.0.${i >> 8}.${i & 255}/32`, port: 53 });
  let started = performance.now();
  const before = parseDesiredState(doc, 'before');
  const after = parseDesiredState({ ...doc, bindings: next }, 'after');
  const parseMs = Math.round((performance.now() - started) / 2);
  const verifySamples: number[] = [];
  const diffSamples: number[] = [];
  let findings: Record<string, number> = {};
  let diff = semanticDiff(before, before);
  for (let k = 0; k < 3; k++) {
    started = performance.now();
    const found = verifyState(after);
    verifySamples.push(Math.round(performance.now() - started));
    findings = {};
    for (const f of found) findings[f.code] = (findings[f.code] ?? 0) + 1;
    started = performance.now();
    diff = semanticDiff(before, after);
    diffSamples.push(Math.round(performance.now() - started));
  }
  return {
    bindings: count,
    changes: 10_000,
    parse_ms: parseMs,
    verify_ms: median(verifySamples),
    verify_samples: verifySamples,
    diff_ms: median(diffSamples),
    diff_samples: diffSamples,
    verify_and_diff_ms: median(verifySamples.map((v, i) => v + diffSamples[i]!)),
    findings,
    diff_ranges: diff.entries.length,
    diff_summary: diff.summary.slice(0, 5).map((s) => s.text),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(`${JSON.stringify(verifyBench())}\n`);
}
