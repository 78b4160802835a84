/**
 * `switchyard verify STATE.json` and `switchyard diff OLD.json NEW.json`:
 * the exact checks and semantic difference of src/verify/, for operators
 * before they publish (the control plane runs the same before every
 * publish).
 */
import { SwitchyardError } from '../errors.js';
import { readDesiredState, readJsonFile } from '../desired/state.js';
import { verifyDocument, type Finding } from '../verify/verify.js';
import { semanticDiff, describePorts, type SemanticDiff } from '../verify/diff.js';

export const VERIFY_USAGE = 'verify STATE.json [--json]';
export const DIFF_USAGE = 'diff OLD.json NEW.json [--json]';

/** Lines a human gets per kind of finding, and changes in a diff; --json has them all. */
const SHOWN = 25;

interface Out {
  data(value: unknown, human: () => string): void;
}

/**
 * Exit status: 0 when the state has no findings, 1 when it has some. A file
 * that cannot be read or does not validate is an error (thrown: the CLI exits
 * 2), so a script can tell "findings" from "could not check".
 */
export function verifyCommand(args: string[], out: Out): number {
  if (args.length !== 1) throw new SwitchyardError('EINVAL_ARGUMENT', `verify takes one state file: ${VERIFY_USAGE}`);
  const file = args[0]!;
  const started = performance.now();
  const { state, findings } = verifyDocument(readJsonFile(file), file);
  const ms = Math.round(performance.now() - started);
  const counts: Record<string, number> = {};
  for (const f of findings) counts[f.code] = (counts[f.code] ?? 0) + 1;
  out.data({ file, bindings: state.bindings.count, findings, counts, ms }, () => {
    if (findings.length === 0) return `${file}: ${state.bindings.count} bindings, no findings (${ms} ms)`;
    const lines = [`${file}: ${state.bindings.count} bindings, ${findings.length} finding${findings.length === 1 ? '' : 's'} (${Object.entries(counts).map(([c, n]) => `${c} ${n}`).join(', ')}; ${ms} ms)`];
    for (const code of Object.keys(counts)) {
      const of = findings.filter((f) => f.code === code);
      for (const f of of.slice(0, SHOWN)) lines.push(`${f.code}  ${f.message}`, `    witness: ${witness(f)}`);
      if (of.length > SHOWN) lines.push(`... and ${of.length - SHOWN} more ${code} (--json lists them all)`);
    }
    return lines.join('\n');
  });
  return findings.length === 0 ? 0 : 1;
}

const witness = (f: Finding) => `${f.witness.protocol} ${f.witness.address} port ${f.witness.port}`;

/** Exit status, as diff(1): 0 when nothing changes hands, 1 when something does; an unreadable or invalid file is an error (2). */
export function diffCommand(args: string[], out: Out): number {
  if (args.length !== 2) throw new SwitchyardError('EINVAL_ARGUMENT', `diff takes two state files: ${DIFF_USAGE}`);
  const [before, after] = [readDesiredState(args[0]!), readDesiredState(args[1]!)];
  const started = performance.now();
  const diff = semanticDiff(before, after);
  const ms = Math.round(performance.now() - started);
  out.data({ before: args[0], after: args[1], ...diff, ms }, () => describeDiff(diff, ms));
  return diff.entries.length === 0 ? 0 : 1;
}

export function describeDiff(diff: SemanticDiff, ms?: number): string {
  if (diff.entries.length === 0) return `no address or port changes hands${ms === undefined ? '' : ` (${ms} ms)`}`;
  const lines = [`${diff.entries.length} range${diff.entries.length === 1 ? '' : 's'} change hands${ms === undefined ? '' : ` (${ms} ms)`}:`];
  for (const s of diff.summary) lines.push(`  ${s.text}`);
  lines.push('changes:');
  for (const e of diff.entries.slice(0, SHOWN * 4)) {
    const range = e.prefix ?? `${e.first}-${e.last}`;
    lines.push(`  ${range} (${e.addresses} address${e.addresses === 1n ? '' : 'es'}) on ${describePorts(e.protocol, e.ports)}: ${e.from ?? '(unbound)'} → ${e.to ?? '(unbound)'}`);
  }
  if (diff.entries.length > SHOWN * 4) lines.push(`  ... and ${diff.entries.length - SHOWN * 4} more (--json lists them all)`);
  return lines.join('\n');
}
