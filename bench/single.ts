/**
 * A prototype measured by the benchmark, not used by the dispatcher: one
 * trie per (family, protocol) instead of one per port, so a packet costs one
 * walk instead of two (the exact-port walk and the any-port walk are paid
 * one after the other today; at 1M bindings each is two or three cache
 * misses). Each region's leaf says who answers for every port:
 * - one binding for all ports (port 0, class 0), or
 * - one binding for one port class and nothing for the others, or
 * - a row listing the any-port binding and the port bindings that beat it.
 * A port's class is stored in the root word of (family, protocol, port),
 * read as today. Leaf: bits 0-15 destination + 1, 16-23 prefix length,
 * 24-29 class (63 = list: bits 0-23 are then the list's row).
 */
import type { BindingTable } from '../src/bindings/binding.js';
import { sortBindings } from '../src/bindings/order.js';
import { prefixContains } from '../src/net/address.js';
import { buildTable, type BuiltTable, type TrieInput } from '../src/trie/builder.js';
import { ROOT_WORD, ROW_BYTES, WORDS_PER_ROW, rootSlot } from '../src/trie/layout.js';

const LIST = 63;
const leafOf = (dest: number, plen: number, cls: number) => ((dest + 1) | (plen << 16) | (cls << 24)) >>> 0;
const plenOf = (leaf: number) => (leaf >>> 16) & 0xff;

interface Vector {
  any: number; // leaf of the any-port binding, 0 = none
  ports: Map<number, number>; // class -> leaf
}

export function buildSingle(table: BindingTable): BuiltTable {
  const n = table.count;
  const cols = { ...table, count: n, port: new Uint16Array(n) }; // every port in one trie
  const order = sortBindings(cols);
  // Port classes per (family, protocol).
  const classes = new Map<number, Map<number, number>>();
  const classOf = (i: number) => {
    if (table.port[i] === 0) return 0;
    const group = rootSlot(table.family[i] as 4 | 6, table.protocol[i]!, 0);
    let m = classes.get(group);
    if (!m) classes.set(group, (m = new Map()));
    let c = m.get(table.port[i]!);
    if (c === undefined) {
      c = m.size + 1;
      if (c >= LIST) throw new Error('prototype: more than 62 ports in one (family, protocol)');
      m.set(table.port[i]!, c);
    }
    return c;
  };
  // One entry per distinct prefix; its leaf encodes the vector of answers
  // below it: its own bindings over those of its nearest enclosing prefix.
  const merged: number[] = [];
  const leaves: number[] = [];
  const lists: number[][] = [];
  const stack: Array<{ i: number; v: Vector }> = [];
  const contains = (a: number, b: number) => {
    const len = table.prefixLen[a]!;
    if (table.family[a] !== table.family[b] || table.protocol[a] !== table.protocol[b] || table.prefixLen[b]! < len) return false;
    return prefixContains(table.addr, a * 4, len, table.addr, b * 4);
  };
  for (let k = 0; k < n; ) {
    const i = order[k]!;
    let j = k + 1;
    while (j < n && contains(i, order[j]!) && table.prefixLen[order[j]!] === table.prefixLen[i]) j++;
    while (stack.length && !contains(stack[stack.length - 1]!.i, i)) stack.pop();
    const parent = stack[stack.length - 1]?.v;
    const v: Vector = { any: parent?.any ?? 0, ports: new Map(parent?.ports) };
    for (let x = k; x < j; x++) {
      const b = order[x]!;
      const cls = classOf(b);
      const leaf = leafOf(table.labelIndex[b]!, table.prefixLen[b]!, cls);
      if (cls === 0) v.any = leaf;
      else v.ports.set(cls, leaf);
    }
    stack.push({ i, v });
    // Port bindings the any-port one beats (strictly longer) never answer.
    const live = [...v.ports.values()].filter((e) => !v.any || plenOf(e) >= plenOf(v.any));
    let leaf: number;
    if (live.length === 0) leaf = v.any; // class 0, or none
    else if (live.length === 1 && !v.any) leaf = live[0]!;
    else {
      if (live.length > WORDS_PER_ROW - 1) throw new Error('prototype: list longer than a row');
      lists.push([v.any, ...live]);
      leaf = -1; // list, patched once the table's size is known
    }
    merged.push(i);
    leaves.push(leaf === -1 ? -lists.length : leaf);
    k = j;
  }
  const input: TrieInput = {
    count: merged.length,
    family: Uint8Array.from(merged, (i) => table.family[i]!),
    protocol: Uint8Array.from(merged, (i) => table.protocol[i]!),
    prefixLen: Uint8Array.from(merged, (i) => table.prefixLen[i]!),
    port: new Uint16Array(merged.length),
    addr: (() => {
      const a = new Uint32Array(merged.length * 4);
      merged.forEach((i, m) => a.set(table.addr.subarray(i * 4, i * 4 + 4), m * 4));
      return a;
    })(),
    destination: new Uint16Array(merged.length),
    leaf: new Uint32Array(merged.length),
  };
  // Lists go after the trie: their rows are known once it is laid out, and
  // the trie does not depend on the leaf values' meaning, so lay it out twice.
  // (Placeholders equal where the final leaves are: the same runs, the same layout.)
  const first = buildTable({ ...input, leaf: Uint32Array.from(leaves, (l) => (l < 0 ? ((LIST << 24) | (-l - 1)) >>> 0 : l)) });
  const listRow = first.rows;
  const leafWords = Uint32Array.from(leaves, (l) => (l < 0 ? ((LIST << 24) | (listRow + (-l - 1))) >>> 0 : l));
  const built = buildTable({ ...input, leaf: leafWords });
  if (built.rows !== listRow) throw new Error('prototype: layout changed with leaf values');
  const bytes = new Uint8Array((built.rows + lists.length) * ROW_BYTES);
  bytes.set(built.bytes);
  const words = new Uint32Array(bytes.buffer);
  lists.forEach((list, x) => words.set(list, (listRow + x) * WORDS_PER_ROW));
  for (const [group, m] of classes) for (const [port, cls] of m) words[ROOT_WORD + group + port] = cls;
  return { ...built, bytes, rows: built.rows + lists.length };
}
