/**
 * Bringing the kernel's firewall to a plan: read back what is there (ours
 * only), compute the changes with a pure function, then run them in an order
 * that never opens a port a verdict should close:
 *
 *   0. `ipset restore`, both families, in two processes side by side:
 *      leftover temporaries destroyed; new sets created and filled (nothing
 *      refers to them yet).
 * Then per family (IPv4, then IPv6):
 *   1. `ipset restore`: in existing sets every change that can only narrow
 *      what matches (adding `nomatch` entries, deleting
 *      match entries); sets that change by more than a quarter are filled
 *      into a temporary and swapped in whole.
 *   2. `iptables-restore --noflush --wait`, one call per family (an earlier
 *      table's COMMIT sticks when a later one fails): only chains whose hash
 *      list differs are rewritten, and INPUT gets exactly one jump, first.
 *   3. `ipset restore` again: the widening changes (new match entries,
 *      `nomatch` entries going away), then sets no rule refers to any more
 *      are destroyed.
 *
 * So until the rules switch, a packet is accepted only if the old state
 * accepted it, and from then on only if the new one does: a port never
 * opens that neither opens (a new address may be refused for the
 * milliseconds between steps 2 and 3: fail closed). Sets swapped in whole
 * are the exception, for that one step. A failure stops the apply with an
 * error naming the object of the failed line. If it failed in step 1 or 2,
 * the family's narrowing changes are undone (its verdicts are as they were);
 * in step 3, the family is between the two states and only accepts what the
 * new one does. The next apply converges (every step is idempotent). Nothing is written when
 * everything is already right: a restart resets no counter.
 */
import { SwitchyardError } from '../errors.js';
import type { Family } from '../net/address.js';
import { type FamilyPlan, type FirewallPlan, type SetEntry, MAIN_CHAIN, temporarySetName } from './plan.js';
import {
  JUMP_COMMENT,
  type ObservedRules,
  type ObservedSet,
  createLine,
  entryDigest,
  entryText,
  ipsetFamily,
  parseIpsetSaveSteps,
  parseIptablesSave,
  renderChain,
} from './netfilter.js';
import { STRIDE, type Steps, runSliced, runSync } from '../slice.js';
import type { Runner } from './runner.js';
import { FirewallModel, type BindingChange, type SetDelta } from './incremental.js';
import type { DesiredState } from '../desired/state.js';

export type Backend = 'nft' | 'legacy';

export interface Observed {
  rules: Record<Family, ObservedRules>;
  sets: Map<string, ObservedSet>;
}

/**
 * One line of a tool's input and the object it is about (for error
 * messages). `add` lines, a hundred thousand at a time, leave `what` out:
 * describe() derives it from the text when an error needs it.
 */
export interface ScriptLine {
  text: string;
  what?: string;
  /**
   * How many input lines `text` holds (1 when absent): a set's fill is one
   * ScriptLine of an `add` per entry, not a hundred thousand objects (and
   * never a spread of them: V8's stack holds about 120,000 arguments).
   */
  lines?: number;
}

/** The input line `n` (1-based) of a script, for error messages: a line of a fill block comes out on its own. */
export function lineAt(script: ScriptLine[], n: number): ScriptLine | undefined {
  let start = 1;
  for (const line of script) {
    const count = line.lines ?? 1;
    if (n < start + count) return count === 1 ? line : { text: line.text.split('\n')[n - start]! };
    start += count;
  }
  return undefined;
}

/** Entries per block of `add` lines: one join of them takes a few ms (a million at once, most of a second). */
const FILL_BLOCK = 16384;

/** A set's entries as blocks of `add` lines. */
function* fill(name: string, entries: string[]): Steps<ScriptLine[]> {
  const out: ScriptLine[] = [];
  for (let at = 0; at < entries.length; at += FILL_BLOCK) {
    const block = entries.slice(at, at + FILL_BLOCK);
    // One join per block (no string per line): 10 ms for 90,000 entries, 25-35 line by line.
    out.push({ text: `add ${name} ${block.join(`\nadd ${name} `)}`, lines: block.length });
    yield;
  }
  return out;
}

/** Entry texts of a planned set, in slices. */
function* textsOf(entries: SetEntry[]): Steps<string[]> {
  const out: string[] = [];
  for (let k = 0; k < entries.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    out.push(entryText(entries[k]!));
  }
  return out;
}

/** `texts` less those in `without`, in slices. */
function* missing(texts: Iterable<string>, without: Set<string>): Steps<string[]> {
  const out: string[] = [];
  let k = 0;
  for (const t of texts) {
    if ((++k & (STRIDE - 1)) === 0) yield;
    if (!without.has(t)) out.push(t);
  }
  return out;
}

function* setOf(texts: string[]): Steps<Set<string>> {
  const out = new Set<string>();
  for (let k = 0; k < texts.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    out.add(texts[k]!);
  }
  return out;
}

function* digestOf(texts: string[]): Steps<number> {
  let sum = 0;
  for (let k = 0; k < texts.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    sum = (sum + entryDigest(texts[k]!)) % 0x10000000000000;
  }
  return sum;
}

/** About this many characters per piece of a tool's input (see RunOptions.inputParts). */
const PART_CHARS = 1 << 20;

/** A script's text in pieces of about PART_CHARS, each line ending in a newline; a small script is one piece. */
function* inputParts(lines: ScriptLine[]): Steps<string[]> {
  const parts: string[] = [];
  let group: string[] = [];
  let size = 0;
  for (const line of lines) {
    group.push(line.text);
    size += line.text.length;
    if (size >= PART_CHARS) {
      parts.push(`${group.join('\n')}\n`);
      group = [];
      size = 0;
      yield;
    }
  }
  if (group.length > 0) parts.push(`${group.join('\n')}\n`);
  return parts;
}

export function describe(line: ScriptLine): string {
  if (line.what) return line.what;
  const [op, name, ...entry] = line.text.split(' ');
  return op === 'add' || op === 'del' ? `set ${name} entry ${entry.join(' ')}` : line.text;
}

export interface ChangeSummary {
  setsCreated: number;
  setsReplaced: number;
  entriesAdded: number;
  entriesRemoved: number;
  chainsWritten: number;
  jumpsFixed: number;
  setsDestroyed: number;
}

/** The changes of one family, in the order they run. */
export interface FamilyChanges {
  /** Step 0: temporaries left by an interrupted apply destroyed, new sets created and filled (nothing refers to them yet). */
  creates: ScriptLine[];
  /** Step 1: narrowing changes, then swaps (from `swapFrom`). */
  sets: ScriptLine[];
  swapFrom: number;
  /** Step 2: one iptables-restore input. */
  rules: ScriptLine[];
  /** Step 3: widening changes, then sets destroyed. */
  after: ScriptLine[];
  /** The narrowing changes inverted: run when step 1 or 2 fails, so the family is as it was. */
  undo: ScriptLine[];
  /** The widening changes inverted (see execute: one call when the rules stay). */
  undoAfter: ScriptLine[];
}

export interface Changes {
  families: Record<Family, FamilyChanges>;
  summary: ChangeSummary;
}

/** A set whose change touches more entries than this share is refilled and swapped in whole. */
const SWAP_SHARE = 0.25;
const SWAP_MIN = 1000;

export function isEmpty(changes: Changes): boolean {
  return Object.values(changes.families).every((f) => f.creates.length === 0 && f.sets.length === 0 && f.rules.length === 0 && f.after.length === 0);
}

/**
 * Step 0 of both families as at most two ipset inputs of about equal size,
 * whole sets each, run side by side: filling 100,000 entries is most of a
 * first apply, and the tool is single-threaded.
 */
export function createChunks(changes: Changes): ScriptLine[][] {
  type Group = { script: ScriptLine[]; size: number };
  const groups: Group[] = [];
  for (const f of [4, 6] as const) {
    for (const line of changes.families[f].creates) {
      // Not startsWith on a fill block: a rope of 16,384 lines, flattened by the test.
      const opens = line.lines === undefined && (line.text.startsWith('create ') || line.text.startsWith('destroy '));
      if (opens || groups.length === 0) groups.push({ script: [], size: 0 });
      const group = groups[groups.length - 1]!;
      group.script.push(line);
      group.size += line.lines ?? 1;
    }
  }
  const chunks: Group[] = [
    { script: [], size: 0 },
    { script: [], size: 0 },
  ];
  for (const g of groups.sort((a, b) => b.size - a.size)) {
    const chunk = chunks[0]!.size <= chunks[1]!.size ? chunks[0]! : chunks[1]!;
    chunk.script = chunk.script.concat(g.script);
    chunk.size += g.size;
  }
  return chunks.filter((c) => c.script.length > 0).map((c) => c.script);
}

/** The inverse of a narrowing line (`add … nomatch` ↔ `del …`, `del` of a match entry ↔ `add`). */
function inverse(line: ScriptLine): ScriptLine {
  const [op, name, prefix, flag] = line.text.split(' ');
  const entry = line.what?.split(' entry ')[1] ?? '';
  if (op === 'add') return { text: `del ${name} ${prefix}`, what: `${describe(line)} (undo)` };
  return { text: `add ${name} ${entry || `${prefix}${flag ? ` ${flag}` : ''}`}`, what: `${describe(line)} (undo)` };
}

function* setChanges(family: FamilyPlan, observed: Observed, out: { create: ScriptLine[]; narrow: ScriptLine[]; widen: ScriptLine[]; swap: ScriptLine[] }, summary: ChangeSummary): Steps<void> {
  for (const set of family.sets) {
    const have = observed.sets.get(set.name);
    if (have && (have.type !== 'hash:net' || have.family !== ipsetFamily(set.family))) {
      throw new SwitchyardError(
        'EFIREWALL',
        `set ${set.name} exists as ${have.type} family ${have.family}, not hash:net family ${ipsetFamily(set.family)}: it is in our name space but not ours to change in place; remove it (switchyard firewall cleanup) and apply again`,
        { entry: set.name },
      );
    }
    const want = yield* textsOf(set.entries);
    // The common case, checked without building a Set of 100,000 strings:
    // as many entries as wanted, with the same order-free digest.
    if (have && have.list.length === set.entries.length && have.digest === (yield* digestOf(want))) continue;
    if (!have) {
      out.create.push({ text: createLine(set, want.length), what: `set ${set.name}` }, ...(yield* fill(set.name, want)));
      summary.setsCreated++;
      summary.entriesAdded += want.length;
      continue;
    }
    const adds = yield* missing(want, yield* have.entriesSteps());
    const dels = yield* missing(have.list, yield* setOf(want));
    summary.entriesAdded += adds.length;
    summary.entriesRemoved += dels.length;
    if (adds.length + dels.length > Math.max(SWAP_MIN, want.length * SWAP_SHARE) || want.length > have.maxelem) {
      const temporary = temporarySetName(set.name);
      out.swap.push(
        { text: createLine(set, want.length, temporary), what: `set ${set.name} (its replacement ${temporary})` },
        ...(yield* fill(temporary, want)),
        { text: `swap ${temporary} ${set.name}`, what: `set ${set.name} (swap)` },
        { text: `destroy ${temporary}`, what: `set ${set.name} (old content)` },
      );
      summary.setsReplaced++;
      continue;
    }
    yield* entryLines(set.name, adds, dels, out);
  }
}

/**
 * In-place changes to one set, sorted by their effect: narrowing (a new
 * nomatch entry, a match entry going away) or widening. An entry whose flag
 * flips is a delete plus an add on the same side.
 */
function* entryLines(name: string, adds: string[], dels: string[], out: { narrow: ScriptLine[]; widen: ScriptLine[] }): Steps<void> {
  // `del` takes the bare prefix: ipset refuses flags on a delete.
  // A delete keeps the entry's flag in `what`, for its inverse (undo).
  const line = (op: 'add' | 'del', e: string): ScriptLine =>
    op === 'add' ? { text: `add ${name} ${e}` } : { text: `del ${name} ${e.replace(' nomatch', '')}`, what: `set ${name} entry ${e}` };
  for (let k = 0; k < dels.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    (dels[k]!.endsWith(' nomatch') ? out.widen : out.narrow).push(line('del', dels[k]!));
  }
  for (let k = 0; k < adds.length; k++) {
    if ((k & (STRIDE - 1)) === STRIDE - 1) yield;
    (adds[k]!.endsWith(' nomatch') ? out.narrow : out.widen).push(line('add', adds[k]!));
  }
}

function* inverted(lines: ScriptLine[]): Steps<ScriptLine[]> {
  const out: ScriptLine[] = [];
  for (let k = lines.length - 1; k >= 0; k--) {
    if ((k & (STRIDE - 1)) === 0) yield;
    out.push(inverse(lines[k]!));
  }
  return out;
}

/** The kernel changes for set deltas from FirewallModel.update (rules unchanged). */
export function deltaChanges(deltas: SetDelta[]): Changes {
  return runSync(deltaChangesSteps(deltas));
}

export function* deltaChangesSteps(deltas: SetDelta[]): Steps<Changes> {
  const summary = emptySummary();
  const families = {} as Record<Family, FamilyChanges>;
  for (const f of [4, 6] as const) {
    const out = { narrow: [] as ScriptLine[], widen: [] as ScriptLine[] };
    for (const d of deltas) {
      if (d.set.family !== f) continue;
      const before = yield* textsOf(d.before);
      const after = yield* textsOf(d.after);
      const adds = yield* missing(after, yield* setOf(before));
      const dels = yield* missing(before, yield* setOf(after));
      summary.entriesAdded += adds.length;
      summary.entriesRemoved += dels.length;
      yield* entryLines(d.set.name, adds, dels, out);
    }
    families[f] = {
      creates: [],
      sets: out.narrow,
      swapFrom: out.narrow.length,
      rules: [],
      after: out.widen,
      undo: yield* inverted(out.narrow),
      undoAfter: yield* inverted(out.widen),
    };
  }
  return { families, summary };
}

function ruleChanges(family: FamilyPlan, observed: ObservedRules, summary: ChangeSummary): ScriptLine[] {
  const declare: ScriptLine[] = [];
  const body: ScriptLine[] = [];
  for (const chain of family.chains) {
    const rendered = renderChain(chain);
    const have = observed.chains.get(chain.name);
    if (have && have.hashes.length === rendered.length && have.hashes.every((h, i) => h === rendered[i]!.hash)) continue;
    // Declaring a chain in --noflush mode creates it or flushes it.
    declare.push({ text: `:${chain.name} - [0:0]`, what: `chain ${chain.name}` });
    body.push(...rendered.map((r) => ({ text: r.line, what: `chain ${chain.name} rule "${r.rule.why}"` })));
    summary.chainsWritten++;
  }
  const jumps: ScriptLine[] = [];
  if (observed.jumps.length !== 1 || observed.jumps[0] !== 1) {
    // Highest position first, so the earlier positions stay valid.
    for (const position of [...observed.jumps].sort((a, b) => b - a)) jumps.push({ text: `-D INPUT ${position}`, what: `INPUT rule ${position} (a stray jump to ${MAIN_CHAIN})` });
    jumps.push({ text: `-I INPUT 1 -m comment --comment ${JUMP_COMMENT} -j ${MAIN_CHAIN}`, what: `INPUT's jump to ${MAIN_CHAIN}` });
    summary.jumpsFixed++;
  }
  if (declare.length === 0 && jumps.length === 0) return [];
  return [{ text: '*filter', what: 'filter table' }, ...declare, ...body, ...jumps, { text: 'COMMIT', what: 'filter table' }];
}

const emptySummary = (): ChangeSummary => ({ setsCreated: 0, setsReplaced: 0, entriesAdded: 0, entriesRemoved: 0, chainsWritten: 0, jumpsFixed: 0, setsDestroyed: 0 });
const familyOfSet = (name: string): Family => (name[2] === '6' ? 6 : 4);

/** The changes that bring `observed` to `plan` (pure). */
export function planChanges(plan: FirewallPlan, observed: Observed): Changes {
  return runSync(planChangesSteps(plan, observed));
}

export function* planChangesSteps(plan: FirewallPlan, observed: Observed): Steps<Changes> {
  const summary = emptySummary();
  const families = {} as Record<Family, FamilyChanges>;
  for (const family of plan.families) {
    const f = family.family;
    const out = { create: [] as ScriptLine[], narrow: [] as ScriptLine[], widen: [] as ScriptLine[], swap: [] as ScriptLine[] };
    const leftovers: ScriptLine[] = [];
    const destroy: ScriptLine[] = [];
    const wanted = new Set(family.sets.map((s) => s.name));
    for (const name of observed.sets.keys()) {
      if (familyOfSet(name) !== f) continue;
      if (name.startsWith('sx')) leftovers.push({ text: `destroy ${name}`, what: `set ${name} (a temporary left by an interrupted apply)` });
      else if (!wanted.has(name)) {
        destroy.push({ text: `destroy ${name}`, what: `set ${name} (no longer used)` });
        summary.setsDestroyed++;
      }
    }
    yield* setChanges(family, observed, out, summary);
    const sets = [...out.narrow, ...out.swap];
    families[f] = {
      creates: [...leftovers, ...out.create],
      sets,
      swapFrom: sets.length - out.swap.length,
      rules: ruleChanges(family, observed.rules[f], summary),
      after: [...out.widen, ...destroy],
      undo: yield* inverted(out.narrow),
      undoAfter: yield* inverted(out.widen),
    };
  }
  return { families, summary };
}

/** What removes everything we own (pure): INPUT's jumps, our chains, our sets. */
export function planCleanup(observed: Observed): Changes {
  const summary = emptySummary();
  const rules = { 4: [] as ScriptLine[], 6: [] as ScriptLine[] };
  for (const family of [4, 6] as const) {
    const o = observed.rules[family];
    if (o.jumps.length === 0 && o.chains.size === 0) continue;
    const lines: ScriptLine[] = [{ text: '*filter', what: 'filter table' }];
    for (const position of [...o.jumps].sort((a, b) => b - a)) lines.push({ text: `-D INPUT ${position}`, what: `INPUT's jump to ${MAIN_CHAIN}` });
    for (const name of o.chains.keys()) lines.push({ text: `-F ${name}`, what: `chain ${name}` });
    for (const name of o.chains.keys()) lines.push({ text: `-X ${name}`, what: `chain ${name}` });
    lines.push({ text: 'COMMIT', what: 'filter table' });
    rules[family] = lines;
    summary.jumpsFixed += o.jumps.length;
    summary.chainsWritten += o.chains.size;
  }
  const destroy = (f: Family) => [...observed.sets.keys()].filter((n) => familyOfSet(n) === f).map((name) => ({ text: `destroy ${name}`, what: `set ${name}` }));
  summary.setsDestroyed = observed.sets.size;
  const only = (f: Family): FamilyChanges => ({ creates: [], sets: [], swapFrom: 0, rules: rules[f], after: destroy(f), undo: [], undoAfter: [] });
  return { families: { 4: only(4), 6: only(6) }, summary };
}

export interface ToolNames {
  save: Record<Family, string>;
  restore: Record<Family, string>;
}

export const toolNames = (backend: Backend): ToolNames => ({
  save: { 4: `iptables-${backend}-save`, 6: `ip6tables-${backend}-save` },
  restore: { 4: `iptables-${backend}-restore`, 6: `ip6tables-${backend}-restore` },
});

export interface FirewallOptions {
  /** Which iptables backend; 'auto' asks `iptables -V`. */
  backend?: Backend | 'auto';
  /** Seconds iptables-restore waits for the xtables lock (never unbounded). */
  lockWaitSeconds?: number;
  timeoutMs?: number;
}

export interface ApplyResult {
  backend: Backend;
  changed: boolean;
  summary: ChangeSummary;
  ms: number;
  /** Whether sync went the incremental way (the delta's entries only, no read-back). */
  incremental?: boolean;
}

/** Maps a tool's "line N" complaint back to the object that line was about. */
function failure(tool: string, lines: ScriptLine[], stderr: string): SwitchyardError {
  const m = /(?:Error in line|line:?|at line:?)\s*(\d+)/i.exec(stderr);
  const line = m ? lineAt(lines, Number(m[1])) : undefined;
  const detail = stderr.trim().split('\n').filter((l) => l && !l.startsWith('Try `')).join('; ');
  return new SwitchyardError('EFIREWALL', `${tool} failed${line ? ` on ${describe(line)} (${JSON.stringify(line.text)})` : ''}: ${detail}`, {
    entry: line ? describe(line) : tool,
  });
}

/** The kernel's firewall, through the tools, in one network namespace (the runner's). */
/** `writing`: called once the writes are under way in other processes (the caller may use this thread meanwhile). */
export interface SyncHooks {
  writing?: () => void;
}

export class Firewall {
  private backendFound: Backend | undefined;
  /** What the last apply put in the kernel, for changes that skip the read-back (sync with changes). */
  private model: FirewallModel | undefined;

  constructor(
    private readonly runner: Runner,
    private readonly options: FirewallOptions = {},
  ) {}

  async backend(): Promise<Backend> {
    if (this.options.backend && this.options.backend !== 'auto') return this.options.backend;
    if (this.backendFound) return this.backendFound;
    const r = await this.runner.run(['iptables', '-V'], { timeoutMs: this.options.timeoutMs });
    const m = /\((nf_tables|legacy)\)/.exec(r.stdout + r.stderr);
    if (r.code !== 0 || !m) throw new SwitchyardError('EFIREWALL', `iptables -V: cannot tell the backend (${(r.stdout + r.stderr).trim() || `exit ${r.code}`}); pass --backend nft|legacy`);
    this.backendFound = m[1] === 'legacy' ? 'legacy' : 'nft';
    return this.backendFound;
  }

  private async tool(argv: string[], spool = false): Promise<string> {
    const r = await this.runner.run(argv, { timeoutMs: this.options.timeoutMs, spool });
    if (r.code !== 0) throw new SwitchyardError('EFIREWALL', `${argv.join(' ')}: exit ${r.code}: ${r.stderr.trim()}`, { entry: argv[0] });
    return r.stdout;
  }

  /**
   * Rules the other iptables backend holds in this namespace, per family:
   * both backends' rules apply to every packet (a legacy DROP beats an nft
   * ACCEPT), so status warns about them. Legacy tables are read only when
   * the kernel already has them (reading would load the modules).
   */
  async otherBackendRules(): Promise<Record<Family, number>> {
    const backend = await this.backend();
    const other: Backend = backend === 'nft' ? 'legacy' : 'nft';
    if (other === 'legacy') {
      const names = await this.runner.run(['cat', '/proc/net/ip_tables_names'], { timeoutMs: this.options.timeoutMs });
      if (names.code !== 0 || names.stdout.trim() === '') return { 4: 0, 6: 0 };
    }
    const tools = toolNames(other);
    const count = async (family: Family) => {
      const r = await this.runner.run([tools.save[family]], { timeoutMs: this.options.timeoutMs });
      return r.code === 0 ? r.stdout.split('\n').filter((l) => l.startsWith('-A ')).length : 0;
    };
    return { 4: await count(4), 6: await count(6) };
  }

  /**
   * Reads our rules and sets back. Once the backend is known the tools are
   * started before this returns (no await first), so a caller can plan
   * while they run.
   */
  observe(): Promise<Observed> {
    const known = this.options.backend && this.options.backend !== 'auto' ? this.options.backend : this.backendFound;
    const read = (backend: Backend) => {
      const tools = toolNames(backend);
      return Promise.all([
        this.tool([tools.save[4], '-t', 'filter']),
        this.tool([tools.save[6], '-t', 'filter']),
        this.tool(['ipset', 'save'], true),
      ]).then(async ([v4, v6, sets]) => ({ rules: { 4: parseIptablesSave(v4), 6: parseIptablesSave(v6) }, sets: await runSliced(parseIpsetSaveSteps(sets)) }));
    };
    return known ? read(known) : this.backend().then(read);
  }

  private async runScript(argv: string[], lines: ScriptLine[]): Promise<void> {
    if (lines.length === 0) return;
    // A small script is ready in this turn: the tool starts before the caller's next turn (SyncHooks).
    let chars = 0;
    for (const line of lines) chars += line.text.length;
    const parts = chars <= PART_CHARS ? runSync(inputParts(lines)) : await runSliced(inputParts(lines));
    // The ProcessRunner takes the parts; a runner that knows only `input` (the tests' fake) joins them.
    const r = await this.runner.run(argv, {
      inputParts: parts,
      get input() {
        return parts.join('');
      },
      timeoutMs: this.options.timeoutMs,
    });
    if (r.code !== 0) throw failure(argv.join(' '), lines, r.stderr);
  }

  /**
   * Runs planned changes in the documented order, one family after the
   * other. When step 1 or 2 of a family fails, its narrowing changes are
   * undone, so that family's verdicts are as they were (an earlier family
   * stays fully applied); sets swapped in whole stay swapped.
   */
  async execute(changes: Changes, hooks: SyncHooks = {}): Promise<void> {
    const tools = toolNames(await this.backend());
    const wait = String(this.options.lockWaitSeconds ?? 5);
    const creating = Promise.all(createChunks(changes).map((chunk) => this.runScript(['ipset', '-exist', 'restore'], chunk)));
    hooks.writing?.(); // the bulk of the writes is running in other processes now
    await creating;
    for (const family of [4, 6] as const) {
      const f = changes.families[family];
      // With no rule change between them, narrowing and widening go in one
      // call (ipset restore runs its lines in order): one process, not two.
      const merged = f.rules.length === 0 && f.swapFrom === f.sets.length && f.after.every((l) => !l.text.startsWith('destroy '));
      try {
        if (merged) {
          await this.runScript(['ipset', '-exist', 'restore'], [...f.sets, ...f.after]);
          continue;
        }
        await this.runScript(['ipset', '-exist', 'restore'], f.sets);
        await this.runScript([tools.restore[family], '--noflush', '--wait', wait], f.rules);
      } catch (err) {
        const undo = merged ? [...f.undoAfter, ...f.undo] : f.undo;
        if (undo.length === 0) throw err;
        try {
          await this.runScript(['ipset', '-exist', 'restore'], undo);
        } catch (undoErr) {
          throw new SwitchyardError('EFIREWALL', `${(err as Error).message}; undoing the IPv${family} set changes failed too: ${(undoErr as Error).message}`, { cause: err });
        }
        throw new SwitchyardError('EFIREWALL', `${(err as Error).message} (IPv${family} set changes undone; its verdicts are as they were)`, {
          ...((err as SwitchyardError).entry ? { entry: (err as SwitchyardError).entry } : {}),
          cause: err,
        });
      }
      await this.runScript(['ipset', '-exist', 'restore'], f.after);
    }
  }

  /** Observe, plan, execute: nothing is written when nothing differs. */
  async apply(plan: FirewallPlan): Promise<ApplyResult> {
    return this.applyObserved(plan, await this.observe());
  }

  private async applyObserved(plan: FirewallPlan, observed: Observed, hooks: SyncHooks = {}): Promise<ApplyResult> {
    const started = performance.now();
    this.model = undefined;
    const changes = await runSliced(planChangesSteps(plan, observed));
    if (!isEmpty(changes)) await this.execute(changes, hooks);
    return { backend: await this.backend(), changed: !isEmpty(changes), summary: changes.summary, ms: performance.now() - started };
  }

  /**
   * Brings the firewall to `state`. With `changes` (the binding delta from
   * the state of the previous sync, policies unchanged) and a model of what
   * the last sync applied, only the entries inside the changed prefixes are
   * planned and written, without reading the kernel back: a drifted kernel
   * is repaired by the next full sync (the reconciler's resync). Otherwise,
   * or when the change reshapes the rules or is a large part of the state
   * (see FirewallModel.updating), a full apply.
   *
   * Planning runs in slices of a few ms (slice.ts): the event loop turns
   * meanwhile, whatever the size of the state or of the change.
   */
  async sync(state: DesiredState, changes?: BindingChange[], hooks: SyncHooks = {}): Promise<ApplyResult> {
    const started = performance.now();
    const update = changes && this.model ? await runSliced(this.model.updating(state, changes)) : undefined;
    if (update) {
      const delta = await runSliced(deltaChangesSteps(update.deltas));
      this.model = undefined; // until the writes are known to have gone in
      try {
        if (!isEmpty(delta)) await this.execute(delta, hooks);
        this.model = update.model;
        return { backend: await this.backend(), changed: !isEmpty(delta), summary: delta.summary, ms: performance.now() - started, incremental: true };
      } catch {
        // The kernel was not what the model said (a set full, one destroyed
        // by someone): the full apply below reads it back and repairs.
      }
    }
    // The plan below reads the bindings over many turns of the event loop;
    // the caller's table can change in place meanwhile (the agent makes the
    // next push's delta on the state in force). A copy, taken in this turn,
    // is what gets planned (a million bindings: ~10 ms).
    const snapshot: DesiredState = { ...state, bindings: state.bindings.clone() };
    // Read the kernel back while planning: the tools run in other processes
    // (started synchronously by observe once the backend is known).
    await this.backend();
    const observing = this.observe();
    observing.catch(() => {}); // awaited below; planning may throw first
    const model = await runSliced(FirewallModel.building(snapshot));
    const result = await this.applyObserved(model.plan, await observing, hooks);
    this.model = model;
    return { ...result, ms: performance.now() - started };
  }

  /**
   * Plans `changes` on top of the last sync without writing anything (the
   * result is dropped): after a full sync the incremental path runs once
   * off the clock, so the next real change does not pay for compiling it.
   */
  rehearse(state: DesiredState, changes: BindingChange[]): void {
    const update = this.model?.update(state, changes);
    if (update) deltaChanges(update.deltas);
  }

  async cleanup(): Promise<ApplyResult> {
    const started = performance.now();
    this.model = undefined;
    const changes = planCleanup(await this.observe());
    if (!isEmpty(changes)) await this.execute(changes);
    return { backend: await this.backend(), changed: !isEmpty(changes), summary: changes.summary, ms: performance.now() - started };
  }
}
