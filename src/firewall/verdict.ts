/**
 * What a packet meets, two ways: `expectedVerdict` derives it from the
 * desired state by the dispatcher's precedence (the contract), `evaluate`
 * runs a firewall plan's chains and sets the way netfilter would (first
 * matching rule; a set matches by its most specific entry, `nomatch` meaning
 * not in the set). The property test holds them equal; `lookup` and
 * `firewall status` evaluate the rules and sets read back from the kernel.
 */
import { type Address, type Family, maskWords } from '../net/address.js';
import type { Protocol } from '../bindings/binding.js';
import { ReferenceLpm } from '../bindings/reference.js';
import { type DesiredState, allowedPorts, rangesContain } from '../desired/state.js';
import { MAIN_CHAIN, type Chain, type IpSet, type Rule, type Verdict } from './plan.js';

/** Most-specific-entry membership of a hash:net set. */
export class SetIndex {
  /** Per prefix length, longest first: masked address → nomatch. */
  private readonly byLength: Array<[number, Map<string, boolean>]>;

  constructor(set: Pick<IpSet, 'entries'>) {
    const lengths = new Map<number, Map<string, boolean>>();
    for (const e of set.entries) {
      let m = lengths.get(e.prefix.length);
      if (!m) lengths.set(e.prefix.length, (m = new Map()));
      m.set(e.prefix.words.join('.'), e.nomatch);
    }
    this.byLength = [...lengths].sort((a, b) => b[0] - a[0]);
  }

  has(address: Address): boolean {
    for (const [length, entries] of this.byLength) {
      const nomatch = entries.get(maskWords(address.words, length).join('.'));
      if (nomatch !== undefined) return !nomatch;
    }
    return false;
  }
}

/** The chains and sets of one family, as planned or as read back. */
export interface RuleSet {
  family: Family;
  chains: Chain[];
  sets: Array<Pick<IpSet, 'name' | 'entries'>>;
}

export interface Evaluation {
  verdict: Verdict;
  /** The rule that decided, absent when the packet fell through. */
  rule?: Rule;
  chain?: string;
}

/**
 * Our chains of one family, ready to answer many packets: chains by name
 * and each set's index are built once (a set can hold 100,000 entries), not
 * per packet. A missing set matches nothing, as a broken rule would not load.
 */
export class Evaluator {
  private readonly chains: Map<string, Chain>;
  private readonly indexes = new Map<string, SetIndex>();

  constructor(private readonly rules: RuleSet) {
    this.chains = new Map(rules.chains.map((c) => [c.name, c]));
  }

  private index(name: string): SetIndex {
    let index = this.indexes.get(name);
    if (!index) this.indexes.set(name, (index = new SetIndex(this.rules.sets.find((s) => s.name === name) ?? { entries: [] })));
    return index;
  }

  evaluate(protocol: Protocol, address: Address, port: number): Evaluation {
    if (address.family !== this.rules.family) return { verdict: 'pass' };
    return this.run(MAIN_CHAIN, 0, protocol, address, port) ?? { verdict: 'pass' };
  }

  private run(name: string, depth: number, protocol: Protocol, address: Address, port: number): Evaluation | undefined {
    const chain = this.chains.get(name);
    if (!chain || depth > 8) return undefined;
    for (const rule of chain.rules) {
      if (rule.established) continue; // the queries are new flows
      if (rule.protocol && rule.protocol !== protocol) continue;
      if (rule.dports && !rangesContain(rule.dports, port)) continue;
      if (rule.set && this.index(rule.set.name).has(address) === rule.set.negate) continue;
      switch (rule.target) {
        case 'ACCEPT':
          return { verdict: 'accept', rule, chain: name };
        case 'DROP':
          return { verdict: 'drop', rule, chain: name };
        case 'REJECT':
          return { verdict: 'reject', rule, chain: name };
        case 'RETURN':
          return undefined;
        default: {
          const decided = this.run(rule.target, depth + 1, protocol, address, port);
          if (decided) return decided;
        }
      }
    }
    return undefined;
  }
}

/** One packet's verdict (for many, keep an Evaluator). */
export function evaluate(rules: RuleSet, protocol: Protocol, address: Address, port: number): Evaluation {
  return new Evaluator(rules).evaluate(protocol, address, port);
}

/** The verdict system.md asks for, from the desired state directly. */
export function expectedVerdict(state: DesiredState, lpm: ReferenceLpm, protocol: Protocol, address: Address, port: number): Verdict {
  const httpsOnly = new SetIndex({ entries: state.httpsOnly.prefixes.map((prefix) => ({ prefix, nomatch: false })) });
  if (httpsOnly.has(address) && rangesContain(state.httpsOnly.plaintextPorts, port)) return 'reject';
  const match = lpm.lookup(protocol, address, port);
  if (match && rangesContain(allowedPorts(state, state.bindings.label(match.index), protocol), port)) return 'accept';
  const t = state.bindings;
  for (let i = 0; i < t.count; i++) {
    if (t.family[i] !== address.family) continue;
    const len = t.prefixLen[i]!;
    const p = t.prefix(i);
    if (maskWords(address.words, len).every((w, k) => w === p.words[k])) return 'drop';
  }
  return 'pass';
}
