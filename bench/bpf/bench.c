// SPDX-License-Identifier: BSD-3-Clause OR GPL-2.0
/*
 * Benchmark programs, never attached: run with BPF_PROG_TEST_RUN.
 *
 * Each program run takes the next query from `queries` (a large random
 * array, so a run measures cold-ish caches rather than one hot key) and
 * resolves it:
 *   bench_floor    only fetches the query: the floor every figure is net of;
 *   bench_ours     walks our bindings table with the dispatcher's own code
 *                  (bpf/lookup.h);
 *   bench_tubular  tubular's data plane exactly: a BPF_MAP_TYPE_LPM_TRIE keyed
 *                  {prefixlen, protocol, port (host order), IPv4 as
 *                  ::ffff:a.b.c.d}, value {id, prefixlen}, two lookups (exact
 *                  port, then port 0), the wildcard winning only with a
 *                  strictly longer prefix.
 * check_ours and check_tubular store each query's answer (destination + 1,
 * 0 = none) in `results`, so the harness can compare both before timing.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
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
};

struct bench_state {
	__u32 next;
	__u32 count;
	__u64 sink;
};

struct tubular_key {
	__u32 prefixlen;
	__u8 protocol;
	__u16 port;
	__u32 ip[4];
} __attribute__((packed));

struct tubular_binding {
	__u32 id;
	__u32 prefixlen;
};

/* Sized by the harness (it passes its own maps). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct tubular_key);
	__type(value, struct tubular_binding);
} tubular_bindings SEC(".maps");

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

static __always_inline struct bench_query *next_query(struct bench_state **st, __u32 *index)
{
	__u32 zero = 0;

	*st = bpf_map_lookup_elem(&state, &zero);
	if (!*st || !(*st)->count)
		return 0;
	*index = (*st)->next;
	(*st)->next = *index + 1 >= (*st)->count ? 0 : *index + 1;
	return bpf_map_lookup_elem(&queries, index);
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
	const struct tubular_binding *bind, *wildcard;

	key.ip[0] = q->ip[0];
	key.ip[1] = q->ip[1];
	key.ip[2] = q->ip[2];
	key.ip[3] = q->ip[3];
	bind = bpf_map_lookup_elem(&tubular_bindings, &key);
	key.port = 0;
	wildcard = bpf_map_lookup_elem(&tubular_bindings, &key);
	if (bind) {
		if (wildcard && wildcard->prefixlen > bind->prefixlen)
			return wildcard->id;
		return bind->id;
	}
	return wildcard ? wildcard->id : 0;
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

/* A timed program: resolve the next query, fold the answer into the sink. */
#define BENCH_PROGRAM(name, resolve)                                     \
	SEC("sk_lookup")                                                 \
	int name(struct bpf_sk_lookup *ctx)                              \
	{                                                                \
		struct bench_state *st;                                  \
		__u32 index;                                             \
		struct bench_query *q = next_query(&st, &index);         \
		if (q)                                                   \
			st->sink += resolve(q);                          \
		return SK_PASS;                                          \
	}

/* A checking program: store the next query's answer in `results`. */
#define CHECK_PROGRAM(name, resolve)                                     \
	SEC("sk_lookup")                                                 \
	int name(struct bpf_sk_lookup *ctx)                              \
	{                                                                \
		struct bench_state *st;                                  \
		__u32 index, *out;                                       \
		struct bench_query *q = next_query(&st, &index);         \
		if (q) {                                                 \
			out = bpf_map_lookup_elem(&results, &index);     \
			if (out)                                         \
				*out = resolve(q);                       \
		}                                                        \
		return SK_PASS;                                          \
	}

static __always_inline __u32 floor_only(struct bench_query *q)
{
	return q->port;
}

BENCH_PROGRAM(bench_floor, floor_only)
BENCH_PROGRAM(bench_ours, ours)
BENCH_PROGRAM(bench_tubular, tubular)
BENCH_PROGRAM(bench_single, single)
CHECK_PROGRAM(check_ours, ours)
CHECK_PROGRAM(check_tubular, tubular)
CHECK_PROGRAM(check_single, single)

char _license[] SEC("license") = "Dual BSD/GPL";
