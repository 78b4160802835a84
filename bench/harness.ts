/**
 * Loads the benchmark programs (bench/bpf/bench.c) with one binding set in
 * both layouts, ours and tubular's, checks that they agree on every query,
 * then times them with BPF_PROG_TEST_RUN: a latency, each run's query
 * chosen by the previous run's answer (see bench.c).
 */
import { projectPath } from '../src/paths.js';
import { BpfMap, Fd, MapType, u32Key } from '../src/kernel/bpf.js';
import { native } from '../src/kernel/native.js';
import { possibleCpus } from '../src/kernel/cpus.js';
import { BindingTable } from '../src/bindings/binding.js';
import { buildTable, type BuiltTable, type TrieInput } from '../src/trie/builder.js';
import { createTableMap, loadWithCapacity, swapTable } from '../src/dispatcher/table.js';
import { encodeContext } from '../src/dispatcher/lookup.js';
import { MAPS } from '../src/dispatcher/maps.js';
import { PORTS } from './sets.js';
import { rng } from '../test/support/random.js';
import { maskWords, type Family, type Words } from '../src/net/address.js';
import { mapMemory } from './machine.js';

export const BENCH_OBJECT = projectPath('bench/bpf/bench.o');

const LPM_TRIE = 11;
const NO_PREALLOC = 1;
const TUBULAR_KEY = 23; // packed {u32 prefixlen; u8 protocol; u16 port; u32 ip[4]}
const QUERY_BYTES = 56; // struct bench_query
const QUERY_EXPECT = 48; // bench_query.expect
const STATE_BYTES = 24; // struct bench_state {u32 next, count; u64 sink; u32 runs, pad}

/** Destination of binding i: its label's index (the same id in both layouts). */
function inputOf(table: BindingTable): TrieInput {
  return { ...table, count: table.count, destination: table.labelIndex };
}

export function buildOurs(table: BindingTable): BuiltTable {
  return buildTable(inputOf(table), 1n, table.order());
}

/** tubular's key for binding i: the prefix length counts protocol and port bits, IPv4 is ::ffff:a.b.c.d. */
export function tubularEntries(table: BindingTable): { keys: Buffer; values: Buffer } {
  const keys = Buffer.alloc(TUBULAR_KEY * table.count);
  const values = Buffer.alloc(8 * table.count);
  for (let i = 0; i < table.count; i++) {
    const at = i * TUBULAR_KEY;
    const v4 = table.family[i] === 4;
    const prefixlen = 8 + 16 + (v4 ? 96 : 0) + table.prefixLen[i]!;
    keys.writeUInt32LE(prefixlen, at);
    keys.writeUInt8(table.protocol[i]!, at + 4);
    keys.writeUInt16LE(table.port[i]!, at + 5);
    if (v4) {
      keys.writeUInt32BE(0xffff, at + 7 + 8);
      keys.writeUInt32BE(table.addr[i * 4]!, at + 7 + 12);
    } else {
      for (let w = 0; w < 4; w++) keys.writeUInt32BE(table.addr[i * 4 + w]!, at + 7 + w * 4);
    }
    values.writeUInt32LE(table.labelIndex[i]! + 1, i * 8);
    values.writeUInt32LE(prefixlen, i * 8 + 4);
  }
  return { keys, values };
}

/** Creates tubular's LPM trie and inserts every binding; returns the map and the insert time. */
export function loadTubular(table: BindingTable): { map: Fd; insertMs: number; batch: boolean } {
  const map = new Fd(native().mapCreate(LPM_TRIE, TUBULAR_KEY, 8, Math.max(1, table.count), NO_PREALLOC, 'tubular_lpm'));
  const { keys, values } = tubularEntries(table);
  const started = performance.now();
  let batch = true;
  try {
    native().mapUpdateBatch(map.fd, keys, values, table.count);
  } catch {
    // LPM tries have no batch update on some kernels: one syscall per entry.
    batch = false;
    for (let i = 0; i < table.count; i++) {
      native().mapUpdate(map.fd, keys.subarray(i * TUBULAR_KEY, (i + 1) * TUBULAR_KEY), values.subarray(i * 8, (i + 1) * 8));
    }
  }
  return { map, insertMs: performance.now() - started, batch };
}

export interface QuerySet {
  count: number;
  /** struct bench_query × count; `expect` is 0 until expect() has written the answers. */
  buffer: Buffer;
  /** Whether `buffer` holds every query's answer (the timed programs' order depends on it). */
  expected?: boolean;
}

/** How the timed programs chose their queries in one test run (read back from their per-CPU state). */
export interface RunOrder {
  runs: number;
  /** Distinct queries the runs visited. */
  distinct: number;
  /** Runs whose answer was not the expected one (0, or the run is rejected). */
  mismatches: number;
}

/**
 * Half the queries fall inside a random binding's prefix (random host bits),
 * half anywhere in the family's space; ports from the bound ones plus two
 * unbound; protocols like the bindings'.
 */
export function makeQueries(table: BindingTable, family: Family, count: number, seed = 99): QuerySet {
  const r = rng(seed);
  const u32 = () => Math.floor(r() * 4294967296) >>> 0;
  const buffer = Buffer.alloc(count * QUERY_BYTES);
  const ports = [...PORTS, 22, 53];
  for (let k = 0; k < count; k++) {
    let words: Words;
    if (r() < 0.5 && table.count > 0) {
      const i = Math.floor(r() * table.count);
      const p = table.prefix(i);
      const keep = maskWords(p.words, p.length);
      const host = maskWords([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], p.length).map((m) => ~m);
      words = keep.map((w, j) => (w | (u32() & host[j]!)) >>> 0) as Words;
      if (family === 4) words = [words[0], 0, 0, 0];
    } else {
      words = family === 4 ? [u32(), 0, 0, 0] : [u32(), u32(), u32(), u32()];
    }
    const udp = r() < 0.1;
    const at = k * QUERY_BYTES;
    buffer.writeUInt32LE(family === 4 ? 0 : 1, at);
    buffer.writeUInt32LE(udp ? 1 : 0, at + 4);
    buffer.writeUInt32LE(ports[Math.floor(r() * ports.length)]!, at + 8);
    buffer.writeUInt32LE(udp ? 17 : 6, at + 12);
    buffer.writeBigUInt64LE((BigInt(words[0]) << 32n) | BigInt(words[1]), at + 16);
    buffer.writeBigUInt64LE((BigInt(words[2]) << 32n) | BigInt(words[3]), at + 24);
    if (family === 4) {
      buffer.writeUInt32BE(0xffff, at + 40);
      buffer.writeUInt32BE(words[0], at + 44);
    } else {
      for (let w = 0; w < 4; w++) buffer.writeUInt32BE(words[w]!, at + 32 + w * 4);
    }
  }
  return { count, buffer };
}

/** The benchmark programs loaded against one binding set and one query set. */
export class LookupBench {
  private readonly owned: Fd[] = [];
  readonly programs: Record<string, number>;
  private readonly maps: Record<string, number>;
  private readonly table: BpfMap;

  constructor(built: BuiltTable, tubular: Fd, queries: QuerySet) {
    const create = (type: number, key: number, value: number, max: number, name: string) => {
      const fd = new Fd(native().mapCreate(type, key, value, max, 0, name));
      this.owned.push(fd);
      return fd.fd;
    };
    const queriesFd = create(MapType.ARRAY, 4, QUERY_BYTES, queries.count, 'bench_queries');
    const resultsFd = create(MapType.ARRAY, 4, 4, queries.count, 'bench_results');
    this.queriesFd = queriesFd;
    this.queries = queries;
    this.upload();
    const loaded = loadWithCapacity(BENCH_OBJECT, { tubular_bindings: tubular.fd, queries: queriesFd, results: resultsFd }, built.rows);
    for (const fd of [...Object.values(loaded.maps), ...Object.values(loaded.programs)]) this.owned.push(new Fd(fd));
    this.programs = loaded.programs;
    this.maps = loaded.maps;
    const started = performance.now();
    this.table = createTableMap(built, built.rows);
    this.owned.push(this.table);
    swapTable(new BpfMap(this.maps.generation!, MAPS.generation), this.table);
    this.publishMs = performance.now() - started;
    const state = Buffer.alloc(STATE_BYTES * possibleCpus());
    for (let c = 0; c < possibleCpus(); c++) state.writeUInt32LE(queries.count, c * STATE_BYTES + 4);
    this.stateValue = state;
    this.results = resultsFd;
  }

  /** Creating the table map, writing it through mmap and swapping it in. */
  readonly publishMs: number;
  private readonly stateValue: Buffer;
  private readonly queries: QuerySet;
  private readonly queriesFd: number;
  private readonly results: number;
  private readonly ctx = encodeContext({ protocol: 'tcp', address: { family: 4, words: [0x0a000001, 0, 0, 0] }, port: 80 }, 1);

  /** Resets every CPU's query cursor to the first query. */
  private rewind(): void {
    native().mapUpdate(this.maps.state!, u32Key(0), this.stateValue);
  }

  /**
   * Writes each query's answer into the queries (shared with later benches
   * made from the same QuerySet), for the timed programs' dependent order.
   */
  expect(answers: Uint32Array): void {
    if (answers.length !== this.queries.count) throw new Error(`expect: ${answers.length} answers for ${this.queries.count} queries`);
    for (let i = 0; i < answers.length; i++) this.queries.buffer.writeUInt32LE(answers[i]!, i * QUERY_BYTES + QUERY_EXPECT);
    this.queries.expected = true;
    this.upload();
  }

  private upload(): void {
    const keys = Buffer.alloc(4 * this.queries.count);
    for (let i = 0; i < this.queries.count; i++) keys.writeUInt32LE(i, i * 4);
    native().mapUpdateBatch(this.queriesFd, keys, this.queries.buffer, this.queries.count);
  }

  /**
   * The order the last timed run took, from the per-CPU state. A run
   * answers with next = index + 1 + (answer ^ expected), so with no
   * mismatch every step is 1 and the runs visit min(runs, count) distinct
   * queries: all of them in a run of `count`.
   */
  lastOrder(): RunOrder {
    const cpus = possibleCpus();
    const value = Buffer.alloc(STATE_BYTES * cpus);
    if (!native().mapLookup(this.maps.state!, u32Key(0), value)) throw new Error('bench state: no value');
    let runs = 0;
    let sink = 0n;
    let next = 0;
    for (let c = 0; c < cpus; c++) {
      const at = c * STATE_BYTES;
      const r = value.readUInt32LE(at + 16);
      if (r > 0) next = value.readUInt32LE(at);
      runs += r;
      sink += value.readBigUInt64LE(at + 8);
    }
    if (sink !== 0n) return { runs, distinct: -1, mismatches: Number(sink) };
    if (next !== runs % this.queries.count) throw new Error(`bench state: ${runs} runs ended at query ${next}, not ${runs % this.queries.count}`);
    return { runs, distinct: Math.min(runs, this.queries.count), mismatches: 0 };
  }

  /** Runs a check program over every query once and returns the answers. */
  answers(program: 'check_ours' | 'check_tubular' | 'check_single'): Uint32Array {
    this.rewind();
    native().progTestRun(this.programs[program]!, this.ctx, this.queries.count);
    const out = new Uint32Array(this.queries.count);
    const keys = Buffer.alloc(4 * this.queries.count);
    const values = Buffer.alloc(4 * this.queries.count);
    const token = Buffer.alloc(4);
    const r = native().mapLookupBatch(this.results, null, token, keys, values, this.queries.count);
    for (let i = 0; i < r.count; i++) out[keys.readUInt32LE(i * 4)] = values.readUInt32LE(i * 4);
    return out;
  }

  /**
   * Average ns per program run over `repeat` runs (BPF_PROG_TEST_RUN's own
   * clock), each run's query chosen by the previous run's answer: a
   * latency. Throws unless every run gave its query's expected answer.
   */
  time(program: 'bench_floor' | 'bench_ours' | 'bench_tubular' | 'bench_single', repeat: number): number {
    if (!this.queries.expected) throw new Error(`${program}: no expected answers (call expect() after the check)`);
    this.rewind();
    const ns = native().progTestRun(this.programs[program]!, this.ctx, repeat).duration;
    const order = this.lastOrder();
    if (order.mismatches) throw new Error(`${program}: answers differ from the check's (xor sum ${order.mismatches}); the timed order is not the checked one`);
    if (order.runs !== repeat) throw new Error(`${program}: ${order.runs} runs counted, ${repeat} asked`);
    return ns;
  }

  /** Kernel memory of our table map (fdinfo memlock). */
  tableMemory(): number {
    return mapMemory(this.table.fd);
  }

  close(): void {
    for (const fd of this.owned) fd.close();
  }
}
