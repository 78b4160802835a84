// SPDX-License-Identifier: BSD-3-Clause OR GPL-2.0
/*
 * Benchmark programs, never attached: run with BPF_PROG_TEST_RUN.
 *
 * Each timed program run resolves one query of `queries` (a large random
 * array, so a run measures cold-ish caches rather than one hot key):
 *   bench_floor    only fetches the query: the floor every figure is net of;
 *   bench_ours     walks our bindings table with the dispatcher's own code
 *                  (bpf/lookup.h);
 *   bench_tubular  tubular's data plane exactly: a BPF_MAP_TYPE_LPM_TRIE keyed
 *                  {prefixlen, protocol, port (host order), IPv4 as
 *                  ::ffff:a.b.c.d}, value {id, prefixlen}, two lookups (exact
 *                  port, then port 0), the wildcard winning only with a
 *                  strictly longer prefix.
 * The timed programs measure latency, not throughput: the index of the next
 * run's query is computed from this run's answer, so the CPU cannot fetch
 * the next query, let alone start its walk, before this walk has produced
 * its final loaded value. With independent queries (the order until issue
 * 17) consecutive runs overlapped their cache misses, and a 1M-binding
 * lookup looked cheaper than the one a packet pays.
 * The dependence is next = index + 1 + (answer ^ expected answer): the
 * harness writes each query's answer (from the check programs, where ours
 * and tubular agree) into the query, so the xor is 0 when the program is
 * right and the order is exactly sequential (every query once per `count`
 * runs), yet no CPU can know it is 0 until the answer is loaded. Any
 * nonzero xor is summed into `sink`; the harness rejects a run whose sink
 * is not 0. The floor's answer is the query's expected answer, loaded, so
 * the floor pays the same chain (state → query → answer → state).
 * The dependence runs through the answer's value: where a program returns a
 * constant after a predicted branch (a miss in the LPM helper returns NULL),
 * the CPU can go on speculatively; what bounds it then is the branch
 * resolving, which waits on the same loads.
 * check_ours and check_tubular store each query's answer (destination + 1,
 * 0 = none) in `results`, in sequential order, so the harness can compare
 * both before timing.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "tubular.h"
#include "../../bpf/switchyard.h"
#include "../../bpf/lookup.h"
#include "../../bpf/generation.h"

/* One query, pre-decoded: family 0 = IPv4, 1 = IPv6; proto 0 = TCP, 1 = UDP. */
struct bench_query {
	__u32 family;
	__u32 proto;
	__u32 port;
	__u32 ipproto;
	__u64 hi;
	__u64 lo;
	__u32 ip[4]; /* network order, IPv4 as ::ffff:a.b.c.d (tubular's key) */
	__u32 expect; /* this query's answer, written by the harness after the check */
	__u32 pad;
};

struct bench_state {
	__u32 next;  /* index of the next run's query */
	__u32 count; /* queries; 0 = not set up (the program does nothing) */
	__u64 sink;  /* sum of answer ^ expect over timed runs: 0 when all were right */
	__u32 runs;  /* timed runs on this CPU since the harness's rewind */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_query);
} queries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} results SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_state);
} state SEC(".maps");

static __always_inline struct bench_query *this_query(struct bench_state **st, __u32 *index)
{
	__u32 zero = 0;

	*st = bpf_map_lookup_elem(&state, &zero);
	if (!*st || !(*st)->count)
		return 0;
	*index = (*st)->next;
	return bpf_map_lookup_elem(&queries, index);
}

/* The check programs' order: every query once, sequentially. */
static __always_inline void advance(struct bench_state *st, __u32 index)
{
	st->next = index + 1 >= st->count ? 0 : index + 1;
}

/*
 * The timed programs' order: the next index is a data dependence on this
 * run's answer (see the top of the file). `expect` is read with a volatile
 * load so that the floor's answer (the same field) is two loads the
 * compiler cannot fold into a constant 0.
 */
static __always_inline void advance_after(struct bench_state *st, __u32 index, struct bench_query *q, __u32 answer)
{
	__u32 diff = answer ^ *(volatile __u32 *)&q->expect;
	__u32 next = index + 1 + diff;

	st->sink += diff;
	st->runs++;
	st->next = next >= st->count ? 0 : next;
}

static __always_inline __u32 ours(struct bench_query *q)
{
	__u32 zero = 0, exact, wildcard;
	void *table = bpf_map_lookup_elem(&generation, &zero);

	if (!table)
		return 0;
	return lookup_bindings(table, q->family, q->proto, q->port, q->hi, q->lo, &exact, &wildcard) &
	       SY_LEAF_RESULT_MASK;
}

static __always_inline __u32 tubular(struct bench_query *q)
{
	struct tubular_key key = {
		.prefixlen = (sizeof(struct tubular_key) - 4) * 8,
		.protocol = q->ipproto,
		.port = q->port,
	};
	const struct tubular_binding *bind;

	key.ip[0] = q->ip[0];
	key.ip[1] = q->ip[1];
	key.ip[2] = q->ip[2];
	key.ip[3] = q->ip[3];
	bind = tubular_match(&key);
	return bind ? bind->id : 0;
}

/*
 * The single-walk prototype (bench/single.ts): one trie per (family,
 * protocol); the leaf answers for all ports, one port class, or names a row
 * listing the any-port answer and the port answers that beat it.
 */
#define SINGLE_LIST 63u
static __always_inline __u32 single(struct bench_query *q)
{
	__u32 zero = 0, base, root, cls, leaf, c, any;
	void *table = bpf_map_lookup_elem(&generation, &zero);
	struct sy_row *r;

	if (!table)
		return 0;
	base = SY_ROOT_WORD + ((q->family * 2 + q->proto) << 16);
	root = table_word(table, base);
	cls = q->port ? table_word(table, base + q->port) : 0;
	if (q->family == 0)
		leaf = walk(table, root, q->hi, q->lo, SY_MAX_STEPS_V4, 1);
	else
		leaf = walk(table, root, q->hi, q->lo, SY_MAX_STEPS_V6, 0);
	c = (leaf >> 24) & 63;
	if (c == 0)
		return leaf & 0xffff;
	if (c != SINGLE_LIST)
		return c == cls ? leaf & 0xffff : 0;
	r = sy_table_row(table, leaf & 0xffffff);
	if (!r)
		return 0;
	any = r->word[0];
	for (int k = 1; k < SY_WORDS_PER_ROW; k++) {
		__u32 e = r->word[k];

		if (!e)
			break;
		if (cls && ((e >> 24) & 63) == cls) {
			if ((any & 0xffff) && ((any >> 16) & 0xff) > ((e >> 16) & 0xff))
				return any & 0xffff;
			return e & 0xffff;
		}
	}
	return any & 0xffff;
}

/* A timed program: resolve this query; its answer picks the next one. */
#define BENCH_PROGRAM(name, resolve)                                     \
	SEC("sk_lookup")                                                 \
	int name(struct bpf_sk_lookup *ctx)                              \
	{                                                                \
		struct bench_state *st;                                  \
		__u32 index;                                             \
		struct bench_query *q = this_query(&st, &index);         \
		if (q)                                                   \
			advance_after(st, index, q, resolve(q));         \
		return SK_PASS;                                          \
	}

/* A checking program: store this query's answer in `results`, go to the next. */
#define CHECK_PROGRAM(name, resolve)                                     \
	SEC("sk_lookup")                                                 \
	int name(struct bpf_sk_lookup *ctx)                              \
	{                                                                \
		struct bench_state *st;                                  \
		__u32 index, *out;                                       \
		struct bench_query *q = this_query(&st, &index);         \
		if (q) {                                                 \
			out = bpf_map_lookup_elem(&results, &index);     \
			if (out)                                         \
				*out = resolve(q);                       \
			advance(st, index);                              \
		}                                                        \
		return SK_PASS;                                          \
	}

/* The floor's answer: a load from the query, like a walk's first loads. */
static __always_inline __u32 floor_only(struct bench_query *q)
{
	return *(volatile __u32 *)&q->expect;
}

BENCH_PROGRAM(bench_floor, floor_only)
BENCH_PROGRAM(bench_ours, ours)
BENCH_PROGRAM(bench_tubular, tubular)
BENCH_PROGRAM(bench_single, single)
CHECK_PROGRAM(check_ours, ours)
CHECK_PROGRAM(check_tubular, tubular)
CHECK_PROGRAM(check_single, single)

char _license[] SEC("license") = "Dual BSD/GPL";
