/**
 * A deliberately plain longest-prefix match over a BindingTable: one hash
 * map per (protocol, family, port, prefix length), probed from the longest
 * length down. Slow and obviously right; the trie and the BPF program are
 * checked against it.
 */
import { type Address, maskWords, familyBits } from '../net/address.js';
import { BindingTable, IPPROTO, type Protocol } from './binding.js';

export interface ReferenceMatch {
  index: number;
  exactPort: boolean;
}

export class ReferenceLpm {
  private readonly byKey = new Map<string, number>();
  private readonly lengths = new Map<string, number[]>();

  constructor(private readonly table: BindingTable) {
    for (let i = 0; i < table.count; i++) {
      const group = `${table.protocol[i]}|${table.family[i]}|${table.port[i]}`;
      const p = table.prefix(i);
      this.byKey.set(`${group}|${p.length}|${p.words.join('.')}`, i);
      const lens = this.lengths.get(group) ?? [];
      if (!lens.includes(p.length)) lens.push(p.length);
      this.lengths.set(group, lens);
    }
    for (const lens of this.lengths.values()) lens.sort((a, b) => b - a);
  }

  private longest(protocol: Protocol, address: Address, port: number): number | undefined {
    const group = `${IPPROTO[protocol]}|${address.family}|${port}`;
    for (const len of this.lengths.get(group) ?? []) {
      if (len > familyBits(address.family)) continue;
      const i = this.byKey.get(`${group}|${len}|${maskWords(address.words, len).join('.')}`);
      if (i !== undefined) return i;
    }
    return undefined;
  }

  /** system.md precedence: longest prefix; on equal length the exact port. */
  lookup(protocol: Protocol, address: Address, port: number): ReferenceMatch | undefined {
    const exact = port === 0 ? undefined : this.longest(protocol, address, port);
    const any = this.longest(protocol, address, 0);
    if (exact === undefined) return any === undefined ? undefined : { index: any, exactPort: false };
    if (any !== undefined && this.table.prefixLen[any]! > this.table.prefixLen[exact]!) return { index: any, exactPort: false };
    return { index: exact, exactPort: true };
  }
}
