/**
 * `switchyard firewall plan|apply|status|cleanup`, and the firewall part of
 * `lookup`: the kernel's rules and sets read back and evaluated, so the
 * answer is what the firewall does now, not what a file says it should.
 */
import { createLogger, logLevelOption } from '../log.js';
import { SwitchyardError } from '../errors.js';
import { FirewallReconciler } from '../firewall/reconciler.js';
import { watchStateFile } from '../desired/watch.js';
import type { Address } from '../net/address.js';
import type { Protocol } from '../bindings/binding.js';
import { readDesiredState } from '../desired/state.js';
import { planFirewall, type FirewallPlan } from '../firewall/plan.js';
import { Firewall, isEmpty, planChanges, type Backend, type Observed } from '../firewall/apply.js';
import { observedRuleSet, renderChain, ruleBody } from '../firewall/netfilter.js';
import { Evaluator } from '../firewall/verdict.js';
import { ProcessRunner } from '../firewall/runner.js';

const FIREWALL_SUBCOMMANDS: ReadonlySet<string> = new Set(['plan', 'apply', 'status', 'cleanup', 'watch']);

export const FIREWALL_USAGE = 'firewall plan|apply|status|cleanup|watch [state.json] [--backend nft|legacy|auto] [--interval SECONDS] [--log-level LEVEL] [--json]';

export function openFirewall(flags: Record<string, unknown>): Firewall {
  const backend = (flags.backend as string | undefined) ?? 'auto';
  if (!['nft', 'legacy', 'auto'].includes(backend)) {
    throw new SwitchyardError('EINVAL_ARGUMENT', `--backend ${JSON.stringify(backend)} must be nft, legacy or auto`, { entry: '--backend' });
  }
  const netns = flags.netns as string | undefined;
  return new Firewall(new ProcessRunner(netns), { backend: backend as Backend | 'auto' });
}

function describePlan(plan: FirewallPlan) {
  return plan.families.map((f) => ({
    family: f.family,
    sets: f.sets.map((s) => ({ name: s.name, entries: s.entries.length, nomatch: s.entries.filter((e) => e.nomatch).length, purpose: s.purpose })),
    chains: f.chains.map((c) => ({ name: c.name, rules: renderChain(c).map((r) => ({ rule: ruleBody(r.rule).join(' '), why: r.rule.why, hash: r.hash })) })),
  }));
}

function summarizeSets(observed: Observed) {
  return [...observed.sets.values()].map((s) => ({ name: s.name, type: s.type, family: s.family, entries: s.entries.size, maxelem: s.maxelem }));
}

function summarizeRules(observed: Observed) {
  return ([4, 6] as const).map((family) => {
    const r = observed.rules[family];
    return { family, jumps: r.jumps, chains: [...r.chains.values()].map((c) => ({ name: c.name, rules: c.hashes.length, ours: c.parsed })) };
  });
}

type Out = { data(value: unknown, human: () => string): void };

export async function firewallCommand(args: string[], flags: Record<string, unknown>, out: Out): Promise<number> {
  const [sub, file, ...extra] = args;
  if (extra.length > 0 || !sub) throw new SwitchyardError('EINVAL_ARGUMENT', `expected: ${FIREWALL_USAGE}`);
  // A usage error before any file is read or any tool runs.
  if (!FIREWALL_SUBCOMMANDS.has(sub)) throw new SwitchyardError('EINVAL_ARGUMENT', `unknown firewall command ${JSON.stringify(sub)}: ${FIREWALL_USAGE}`);
  const needsFile = sub === 'plan' || sub === 'apply' || sub === 'watch';
  if (needsFile && !file) throw new SwitchyardError('EINVAL_ARGUMENT', `firewall ${sub} needs a state file: ${FIREWALL_USAGE}`);
  if (sub === 'cleanup' && file) throw new SwitchyardError('EINVAL_ARGUMENT', 'firewall cleanup takes no state file: it removes everything Switchyard created');
  if (sub === 'watch') return watch(file!, flags);
  // The other commands print their answer and log nothing: a level there would be silently ignored.
  if (flags['log-level'] !== undefined) throw new SwitchyardError('EINVAL_ARGUMENT', `--log-level applies to firewall watch only (firewall ${sub} logs nothing)`, { entry: '--log-level' });
  // Validate the whole file before touching anything.
  const plan = file ? planFirewall(readDesiredState(file)) : undefined;
  const firewall = openFirewall(flags);
  switch (sub) {
    case 'plan': {
      const observed = await firewall.observe();
      const changes = planChanges(plan!, observed);
      const value = { plan: describePlan(plan!), changes: changes.summary, inSync: isEmpty(changes) };
      out.data(value, () =>
        [
          ...value.plan.flatMap((f) => [
            `IPv${f.family}:`,
            ...f.sets.map((s) => `  set ${s.name}: ${s.entries} entries (${s.nomatch} nomatch) — ${s.purpose}`),
            ...f.chains.flatMap((c) => [`  chain ${c.name}:`, ...c.rules.map((r) => `    ${r.rule}   # ${r.why}`)]),
          ]),
          value.inSync ? 'the kernel already matches: apply would write nothing' : `apply would change: ${JSON.stringify(changes.summary)}`,
        ].join('\n'),
      );
      return 0;
    }
    case 'apply': {
      const result = await firewall.apply(plan!);
      out.data(result, () =>
        result.changed
          ? `applied (${result.backend}) in ${result.ms.toFixed(0)} ms: ${Object.entries(result.summary).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ')}`
          : `already in place (${result.backend}); nothing written (${result.ms.toFixed(0)} ms)`,
      );
      return 0;
    }
    case 'status': {
      const observed = await firewall.observe();
      const changes = plan ? planChanges(plan, observed) : undefined;
      const other = await firewall.otherBackendRules();
      const value = {
        backend: await firewall.backend(),
        otherBackendRules: other,
        rules: summarizeRules(observed),
        sets: summarizeSets(observed),
        ...(changes ? { inSync: isEmpty(changes), drift: changes.summary } : {}),
      };
      out.data(value, () =>
        [
          `backend  ${value.backend}`,
          ...(other[4] + other[6] > 0
            ? [`warning  the ${value.backend === 'nft' ? 'legacy' : 'nft'} backend holds rules too (IPv4 ${other[4]}, IPv6 ${other[6]}): they apply to every packet as well as ours`]
            : []),
          ...value.rules.map(
            (r) =>
              `IPv${r.family}     ${r.jumps.length ? `jump from INPUT at rule ${r.jumps.join(', ')}` : 'no jump from INPUT (our rules are not hooked in)'}; ${r.chains.map((c) => `${c.name} ${c.rules} rules${c.ours ? '' : ' (some not ours)'}`).join(', ') || 'no chains'}`,
          ),
          ...value.sets.map((s) => `set      ${s.name} ${s.type} ${s.family}: ${s.entries} entries (maxelem ${s.maxelem})`),
          ...(changes ? [isEmpty(changes) ? 'in sync with the state file' : `drift: apply would change ${JSON.stringify(changes.summary)}`] : []),
        ].join('\n'),
      );
      return 0;
    }
    case 'cleanup': {
      const result = await firewall.cleanup();
      out.data(result, () =>
        result.changed ? `removed: ${result.summary.jumpsFixed} jumps, ${result.summary.chainsWritten} chains, ${result.summary.setsDestroyed} sets` : 'nothing of ours to remove',
      );
      return 0;
    }
    default:
      throw new SwitchyardError('EINVAL_ARGUMENT', `unknown firewall command ${JSON.stringify(sub)}: ${FIREWALL_USAGE}`);
  }
}

export interface FirewallVerdict {
  verdict: 'accept' | 'drop' | 'reject' | 'pass' | 'unknown';
  /** The rule that decided, as iptables would print it. */
  rule?: string;
  chain?: string;
  error?: string;
}

/** Evaluates queries against the rules and sets in the kernel now. */
export async function firewallVerdicts(flags: Record<string, unknown>): Promise<(protocol: Protocol, address: Address, port: number) => FirewallVerdict> {
  let observed: Observed;
  try {
    observed = await openFirewall(flags).observe();
  } catch (err) {
    const error = (err as Error).message;
    return () => ({ verdict: 'unknown', error });
  }
  // Built once: `lookup -` asks for thousands of packets.
  const evaluators = { 4: new Evaluator(observedRuleSet(observed.rules[4], observed.sets, 4)), 6: new Evaluator(observedRuleSet(observed.rules[6], observed.sets, 6)) };
  return (protocol, address, port) => {
    if (observed.rules[address.family].jumps.length === 0) return { verdict: 'pass', error: 'no jump from INPUT to our chains' };
    const e = evaluators[address.family].evaluate(protocol, address, port);
    return { verdict: e.verdict, ...(e.rule ? { rule: ruleBody(e.rule).join(' '), chain: e.chain } : {}) };
  };
}

/**
 * `firewall watch <state.json>`: the reconciler in the foreground until
 * SIGINT/SIGTERM. Applies the file, applies it again whenever it changes
 * (no more than once a second; a file that does not validate is logged and
 * the last good state kept), and every --interval seconds (default 90) reads
 * the kernel back and repairs drift. Logs one JSON line per event (pino).
 * Stopping leaves the rules in place.
 */
async function watch(file: string, flags: Record<string, unknown>): Promise<number> {
  const interval = flags.interval === undefined ? 90 : Number(flags.interval);
  if (!Number.isFinite(interval) || interval < 1 || interval > 86_400) {
    throw new SwitchyardError('EINVAL_ARGUMENT', `--interval ${JSON.stringify(flags.interval)} must be a number of seconds, 1-86400`, { entry: '--interval' });
  }
  const log = createLogger({ component: 'firewall', state: file }, { level: logLevelOption(flags['log-level']) });
  const firewall = openFirewall(flags);
  const reconciler = new FirewallReconciler(firewall, {
    resyncMs: interval * 1000,
    // A failed apply at warn, not error: the rules in force stay and the next resync tries again.
    onResult: (r) => (r instanceof Error ? log.warn({ err: r.message }, 'apply failed; the next resync retries') : log.info({ summary: r.summary, ms: Math.round(r.ms) }, 'applied')),
  });
  const watch = watchStateFile(file, log, (state, why) => {
    log.info({ why, bindings: state.bindings.count, services: state.services.size }, 'state validated');
    reconciler.setDesired(state);
  });
  if (!watch.loaded) {
    watch.close();
    throw new SwitchyardError('EINVAL_FILE', `${file}: no valid state to start from`, { entry: file });
  }
  reconciler.start();
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  watch.close();
  await reconciler.stop();
  log.info('stopped; the rules stay in place');
  return 0;
}
