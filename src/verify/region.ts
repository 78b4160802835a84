/**
 * Where a small change can change verdicts: the regions of the address
 * space it touches. A binding's verdict at an address depends only on the
 * bindings containing that address, and prefixes nest or are disjoint; so
 * for each changed prefix, the outermost binding containing it (in the
 * state before or after) bounds a region in which everything that can
 * change does, and outside of which every address keeps the same bindings.
 * Verifying and diffing the bindings inside the regions (with the rest of
 * the state's policies) gives exactly what verifying and diffing the
 * whole states gives there; elsewhere nothing changed.
 */
import { BindingTable } from '../bindings/binding.js';
import { type Family, parseAddress, prefixContains } from '../net/address.js';

export interface Region {
  family: Family;
  words: Uint32Array;
  length: number;
}

const familyOf = (t: BindingTable, i: number): Family => (t.family[i] === 4 ? 4 : 6);

/**
 * The regions the changed bindings (rows of `changed` tables) touch, given
 * the tables they can be contained in; undefined when there are more than
 * `maxChanges` (the caller takes the whole state then).
 */
export function changedRegions(tables: readonly BindingTable[], changed: readonly BindingTable[], maxChanges: number): Region[] | undefined {
  const count = changed.reduce((n, c) => n + c.count, 0);
  if (count > maxChanges) return undefined;
  const found: Region[] = [];
  for (const c of changed) {
    for (let k = 0; k < c.count; k++) {
      const family = familyOf(c, k);
      let words = c.addr.subarray(k * 4, k * 4 + 4);
      let length = c.prefixLen[k]!;
      for (const t of tables) {
        for (let i = 0; i < t.count; i++) {
          const l = t.prefixLen[i]!;
          if (l < length && familyOf(t, i) === family && prefixContains(t.addr, i * 4, l, c.addr, k * 4)) {
            words = t.addr.subarray(i * 4, i * 4 + 4);
            length = l;
          }
        }
      }
      found.push({ family, words: Uint32Array.from(words), length });
    }
  }
  // Nested regions: the outer one only.
  return found.filter((r, i) => !found.some((o, j) => j !== i && o.family === r.family && (o.length < r.length || (o.length === r.length && j < i)) && prefixContains(o.words, 0, o.length, r.words, 0)));
}

/** Whether the region holds the prefix (words at `at`, `length`). */
const holds = (r: Region, family: Family, words: ArrayLike<number>, at: number, length: number) => r.family === family && length >= r.length && prefixContains(r.words, 0, r.length, words, at);

/** The bindings of `t` inside the regions, as a table of their own; undefined once more than `maxRows` are. */
export function bindingsWithin(t: BindingTable, regions: readonly Region[], maxRows: number): BindingTable | undefined {
  const out = new BindingTable(16);
  for (let i = 0; i < t.count; i++) {
    const family = familyOf(t, i);
    if (!regions.some((r) => holds(r, family, t.addr, i * 4, t.prefixLen[i]!))) continue;
    if (out.count === maxRows) return undefined;
    out.addFrom(t, i);
  }
  return out;
}

/** Whether an address (as a finding's witness names it) is inside one of the regions. */
export function withinRegions(address: string, regions: readonly Region[]): boolean {
  const a = parseAddress(address);
  return a !== undefined && regions.some((r) => holds(r, a.family, a.words, 0, a.family === 4 ? 32 : 128));
}
