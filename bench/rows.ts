/**
 * The rows of the benchmark's result tables, as latest.json holds them: one
 * module that bench/run.ts, bench/traffic.ts and bench/chart.ts import, so
 * none of them imports another for a type.
 */
import type { SetName } from './sets.js';

export type TrafficSetName = SetName | 'dual';
export type TrafficKind = 'spread' | 'hot';

/** One program's phase of one round (bench/traffic.ts). */
export interface ProgramSample {
  /** Δrun_time_ns / Δrun_cnt of the candidate and of the empty program beside it. */
  candidate_ns: number;
  empty_ns: number;
  net_ns: number;
  runs: number;
  empty_runs: number;
  datagrams: number;
  elapsed_ms: number;
}

/** One (set, size, traffic kind) of the real-traffic benchmark (bench/traffic.ts). */
export interface TrafficRow {
  set: TrafficSetName;
  family: '4' | '6' | 'dual';
  bindings: number;
  kind: TrafficKind;
  /** Entries of the destination list the datagrams cycle through, and how many are distinct (address, port). */
  destinations: number;
  distinct_destinations: number;
  /** Share of the destinations answered by an exact-port binding (the rest: port 0). */
  exact_share: number;
  /** Datagrams per measured phase. */
  datagrams: number;
  rounds: number;
  ours_ns: number;
  tubular_ns: number;
  assign_ns: number;
  probe_ns: number;
  probe2_ns: number;
  /** Rows of our table (its map's max_entries), hence of the probes' array. */
  table_rows: number;
  /**
   * Rows the published table uses: the walks read only these, while the
   * probes spread over all table_rows (a small set's table has the minimum
   * capacity, many times its rows), so for small sets probe is an upper bound.
   */
  table_rows_used: number;
  /** Each dispatcher object of `oursObjects`, by file name: ns net of empty (the first is ours_ns). */
  ours_variants?: Record<string, number>;
  /** The empty program's own ns per run (median over every phase): what the kernel's clock charges any program. */
  floor_ns: number;
  ratio: number;
  ours_minus_assign: number;
  /** One dependent access to a table of our size after the stack ran (and probe2's two). */
  probe_minus_assign: number;
  probe2_minus_assign: number;
  delivered: number;
  misrouted: number;
  /** By phase: tubular, assign, probe, probe2, and ours or ours:<file name> per dispatcher object. */
  samples: Record<string, ProgramSample[]>;
  sender_cpu: number;
  receiver_cpu: number;
}

/** One set of the test-run lookup table (bench/run.ts). */
export interface LookupRow {
  set: SetName;
  family: 4 | 6;
  bindings: number;
  queries: number;
  hits: number;
  floor_ns: number;
  ours_ns: number;
  tubular_ns: number | null;
  ratio: number | null;
  ours_build_ms: number;
  ours_publish_ms: number;
  tubular_insert_ms: number | null;
  tubular_insert: 'batch' | 'one by one' | null;
  ours_bytes: number;
  ours_trie_bytes: number;
  tubular_bytes: number | null;
  /** How the test-run figures were taken: each run's query depends on the previous run's answer (a latency; issue 17). */
  testrun_method: 'dependent';
  /** Distinct queries each timed test run visited (all of them: the dependent order is checked to be sequential). */
  testrun_distinct: number;
  /** The single-walk prototype (bench/single.ts), when run (--single). */
  single_ns?: number;
  single_bytes?: number;
}
