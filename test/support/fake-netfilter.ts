/**
 * An in-memory stand-in for iptables-{nft}-save/restore and ipset, speaking
 * their text formats, for unit tests of the applier: `ipset restore` stops
 * at its first error keeping what it did (as the real one does),
 * `iptables-restore` commits a table or nothing, a rule naming a missing set
 * fails its line. `fail` injects a failure at a chosen input line.
 */
import type { Family } from '../../src/net/address.js';
import { formatPrefix, parsePrefix } from '../../src/net/address.js';
import type { RunResult, Runner } from '../../src/firewall/runner.js';

interface FakeSet {
  type: string;
  family: string;
  maxelem: number;
  entries: Set<string>;
}

interface Table {
  chains: Map<string, string[]>;
}

const clone = (t: Table): Table => ({ chains: new Map([...t.chains].map(([k, v]) => [k, [...v]])) });
const ok = (stdout = ''): RunResult => ({ code: 0, stdout, stderr: '' });

export class FakeNetfilter implements Runner {
  sets = new Map<string, FakeSet>();
  tables: Record<Family, Table> = { 4: { chains: new Map([['INPUT', []]]) }, 6: { chains: new Map([['INPUT', []]]) } };
  /** Rules the legacy backend holds (per family), for the mixed-backend warning. */
  legacyRules = 0;
  /** Restore calls that ran (the writes). */
  writes: string[][] = [];
  /** Makes the next matching call fail at this input line (1-based), or fail outright (line 0). */
  fail: { tool: RegExp; line: number; message?: string } | undefined;

  async run(argv: readonly string[], options: { input?: string } = {}): Promise<RunResult> {
    const tool = argv.join(' ');
    const input = options.input ?? '';
    if (tool === 'iptables -V') return ok('iptables v1.8.9 (nf_tables)\n');
    if (tool === 'cat /proc/net/ip_tables_names') return this.legacyRules > 0 ? ok('filter\n') : { code: 1, stdout: '', stderr: 'No such file or directory\n' };
    if (/^ip6?tables-legacy-save$/.test(tool)) return ok(`*filter\n${'-A INPUT -j DROP\n'.repeat(this.legacyRules)}COMMIT\n`);
    const injected = this.fail && this.fail.tool.test(tool) ? this.fail : undefined;
    if (injected) this.fail = undefined;
    const failAt = injected?.line;
    if (failAt === 0) return { code: 1, stdout: '', stderr: injected?.message ?? 'injected failure\n' };
    const save = /^ip(6?)tables-(nft|legacy)-save -t filter$/.exec(tool);
    if (save) return ok(this.save(save[1] ? 6 : 4));
    if (tool === 'ipset save') return ok(this.ipsetSave());
    const restore = /^ip(6?)tables-(nft|legacy)-restore --noflush --wait \d+$/.exec(tool);
    if (restore) {
      this.writes.push([...argv]);
      return this.iptablesRestore(restore[1] ? 6 : 4, input, failAt);
    }
    if (tool === 'ipset -exist restore' || tool === 'ipset restore') {
      this.writes.push([...argv]);
      return this.ipsetRestore(input, tool.includes('-exist'), failAt);
    }
    return { code: 127, stdout: '', stderr: `fake: unknown command ${tool}\n` };
  }

  save(family: Family): string {
    const t = this.tables[family];
    const lines = ['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]'];
    for (const name of t.chains.keys()) if (name !== 'INPUT') lines.push(`:${name} - [0:0]`);
    for (const [name, rules] of t.chains) for (const r of rules) lines.push(`-A ${name} ${r.replace(/--comment (\S+)/, '--comment "$1"')}`);
    lines.push('COMMIT');
    return `${lines.join('\n')}\n`;
  }

  ipsetSave(): string {
    const lines: string[] = [];
    for (const [name, s] of this.sets) {
      lines.push(`create ${name} ${s.type} family ${s.family} hashsize 1024 maxelem ${s.maxelem} bucketsize 12 initval 0x1`);
      // ipset prints host entries without their length, as the real one does.
      for (const e of s.entries) lines.push(`add ${name} ${e.replace(e.includes(':') ? /\/128(?= |$)/ : /\/32(?= |$)/, '')}`);
    }
    return `${lines.join('\n')}\n`;
  }

  private iptablesRestore(family: Family, input: string, failAt: number | undefined): RunResult {
    const t = clone(this.tables[family]);
    const lines = input.split('\n');
    const error = (n: number, why: string): RunResult => ({ code: 1, stdout: '', stderr: `iptables-restore: ${why}\nError occurred at line: ${n}\n` });
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      const n = i + 1;
      if (n === failAt) return error(n, 'injected failure');
      if (line === '' || line === '*filter') continue;
      if (line === 'COMMIT') {
        this.tables[family] = t;
        continue;
      }
      const w = line.split(' ');
      if (line.startsWith(':')) t.chains.set(line.slice(1).split(' ')[0]!, []);
      else if (w[0] === '-A' || w[0] === '-I') {
        const chain = t.chains.get(w[1]!);
        if (!chain) return error(n, `chain ${w[1]} does not exist`);
        const rest = w.slice(w[0] === '-I' ? 3 : 2).join(' ');
        const set = /--match-set (\S+)/.exec(rest)?.[1];
        if (set && !this.sets.has(set)) return error(n, `Set ${set} doesn't exist.`);
        const target = /-j (\S+)/.exec(rest)?.[1];
        if (target && !['ACCEPT', 'DROP', 'REJECT', 'RETURN'].includes(target) && !t.chains.has(target)) return error(n, `chain ${target} does not exist`);
        if (w[0] === '-I') chain.splice(Number(w[2]) - 1, 0, rest);
        else chain.push(rest);
      } else if (w[0] === '-D') {
        const chain = t.chains.get(w[1]!)!;
        const at = Number(w[2]) - 1;
        if (!(at >= 0 && at < chain.length)) return error(n, 'Index of deletion too big');
        chain.splice(at, 1);
      } else if (w[0] === '-F') t.chains.set(w[1]!, []);
      else if (w[0] === '-X') t.chains.delete(w[1]!);
      else return error(n, `unknown line ${line}`);
    }
    return ok();
  }

  private ipsetRestore(input: string, exist: boolean, failAt: number | undefined): RunResult {
    const lines = input.split('\n');
    const error = (n: number, why: string): RunResult => ({ code: 1, stdout: '', stderr: `ipset v7.17: Error in line ${n}: ${why}\n` });
    for (let i = 0; i < lines.length; i++) {
      const n = i + 1;
      const w = lines[i]!.split(' ');
      if (n === failAt) return error(n, 'injected failure');
      if (w[0] === '') continue;
      const set = this.sets.get(w[1]!);
      switch (w[0]) {
        case 'create':
          if (set && !exist) return error(n, 'Set cannot be created: set with the same name already exists');
          if (!set) this.sets.set(w[1]!, { type: w[2]!, family: w[w.indexOf('family') + 1]!, maxelem: Number(w[w.indexOf('maxelem') + 1]), entries: new Set() });
          break;
        case 'add':
        case 'del': {
          if (!set) return error(n, "The set with the given name does not exist");
          const p = parsePrefix(w[2]!, true);
          if (typeof p === 'string') return error(n, `cannot parse ${w[2]}`);
          if (w[0] === 'del' && w.length > 3) return error(n, `Unknown argument: \`${w[3]}'`); // as ipset 7.17 says
          const key = `${formatPrefix(p)}${w[3] === 'nomatch' ? ' nomatch' : ''}`;
          const other = w[3] === 'nomatch' ? formatPrefix(p) : `${formatPrefix(p)} nomatch`;
          if (w[0] === 'add') {
            if (set.entries.has(other) || (set.entries.has(key) && !exist)) return error(n, "Element cannot be added to the set: it's already added");
            if (set.entries.size >= set.maxelem) return error(n, 'Hash is full, cannot add more elements');
            set.entries.add(key);
          } else if (!set.entries.delete(key) && !set.entries.delete(other) && !exist) return error(n, "Element cannot be deleted from the set: it's not added");
          break;
        }
        case 'swap': {
          const other = this.sets.get(w[2]!);
          if (!set || !other) return error(n, 'The set with the given name does not exist');
          this.sets.set(w[1]!, other);
          this.sets.set(w[2]!, set);
          break;
        }
        case 'destroy': {
          if (!set) return error(n, 'The set with the given name does not exist');
          for (const t of Object.values(this.tables)) {
            for (const rules of t.chains.values()) if (rules.some((r) => r.includes(`--match-set ${w[1]} `))) return error(n, 'Set cannot be destroyed: it is in use by a kernel component');
          }
          this.sets.delete(w[1]!);
          break;
        }
        default:
          return error(n, `unknown command ${w[0]}`);
      }
    }
    return ok();
  }
}
