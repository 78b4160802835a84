// SPDX-License-Identifier: BSD-3-Clause OR GPL-2.0
/*
 * Switchyard dispatcher: picks the socket for a new connection or datagram
 * from the bindings table, a multibit level-compressed LPM trie laid out in an
 * array map by user space (see switchyard.h for the encoding).
 *
 * Precedence (system.md): the longest matching prefix wins; for equal
 * prefixes an exact-port binding beats a wildcard-port one. Protocol, family
 * and port are exact dimensions, so each (family, protocol, port) has its own
 * trie and a packet walks at most two: its port's and port 0's.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "switchyard.h"

#define AF_INET 2
#define AF_INET6 10

/* Template for the per-generation table; BPF_F_INNER_MAP lets every
 * generation have its own size, so nothing is allocated per binding. */
struct table_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	/* Sizes rather than types: clang only emits a forward declaration of
	 * a struct referenced from an inner map definition, and libbpf then
	 * cannot size it. */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct sy_row));
};

/* Slot 0 holds the published table. Replacing it is the atomic switch: a
 * program run holds the old table until it returns, and the kernel frees
 * the old table after an RCU grace period. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct table_map);
} generation SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, SY_MAX_DESTINATIONS);
	__type(key, __u32);
	__type(value, __u64);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SY_MAX_DESTINATIONS);
	__type(key, __u32);
	__type(value, struct sy_destination_stats);
} destination_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SY_MAX_DESTINATIONS);
	__type(key, __u32);
	__type(value, struct sy_destination);
} destinations SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sy_meta);
} meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sy_trace);
} trace SEC(".maps");

static __always_inline __u32 table_word(void *table, __u32 w)
{
	__u32 row = w / SY_WORDS_PER_ROW;
	struct sy_row *r = bpf_map_lookup_elem(table, &row);

	return r ? r->word[w % SY_WORDS_PER_ROW] : 0;
}

static __always_inline struct sy_node *table_node(void *table, __u32 n)
{
	__u32 row = n / SY_NODES_PER_ROW;
	struct sy_row *r = bpf_map_lookup_elem(table, &row);

	return r ? &r->node[n % SY_NODES_PER_ROW] : 0;
}

/* Returns the leaf word for the longest prefix of this trie matching
 * (hi, lo), or 0. A malformed table ends in 0 too: traffic then takes the
 * kernel's normal path rather than a wrong socket. */
static __always_inline __u32 walk(void *table, __u32 root, __u64 hi, __u64 lo,
				  const int max_steps)
{
	__u32 bits, pos, ref;

	if (!root)
		return 0;
	bits = root >> SY_ROOT_BITS_SHIFT;
	ref = table_word(table, (root & SY_ROOT_ROW_MASK) * SY_WORDS_PER_ROW +
				       (__u32)(hi >> (64 - bits)));
	pos = bits;

	for (int step = 0; step < max_steps; step++) {
		struct sy_node *node;
		__u64 half, bit;
		__u32 off, width;

		if (!(ref & SY_REF_NODE))
			return ref;
		node = table_node(table, ref & ~SY_REF_NODE);
		if (!node)
			return 0;
		off = pos & 63;
		half = pos < 64 ? hi : lo;
		if (node->skip_len) {
			if ((half & node->leafvec) != node->vector)
				return node->leaf_base;
			pos += node->skip_len;
			ref = node->child_base;
			continue;
		}
		bit = 1ULL << ((half << off) >> 58);
		if (node->vector & bit) {
			ref = SY_REF_NODE |
			      (node->child_base + __builtin_popcountll(node->vector & (bit - 1)));
			width = 64 - off < 6 ? 64 - off : 6;
			pos += width;
			continue;
		}
		return table_word(table, node->leaf_base +
						 __builtin_popcountll(node->leafvec & (bit | (bit - 1))) - 1);
	}
	return 0;
}

static __always_inline __u32 leaf_plen(__u32 leaf)
{
	return (leaf >> SY_LEAF_PLEN_SHIFT) & SY_LEAF_PLEN_MASK;
}

static __always_inline __u32 lookup_bindings(void *table, __u32 family, __u32 proto,
					     __u32 port, __u64 hi, __u64 lo,
					     __u32 *exact, __u32 *wildcard)
{
	__u32 base = SY_ROOT_WORD + ((family * 2 + proto) << 16);
	__u32 root_exact = port ? table_word(table, base + port) : 0;
	__u32 root_any = table_word(table, base);

	if (family == 0) {
		*exact = walk(table, root_exact, hi, lo, SY_MAX_STEPS_V4);
		*wildcard = walk(table, root_any, hi, lo, SY_MAX_STEPS_V4);
	} else {
		*exact = walk(table, root_exact, hi, lo, SY_MAX_STEPS_V6);
		*wildcard = walk(table, root_any, hi, lo, SY_MAX_STEPS_V6);
	}
	/* The wildcard wins only with a strictly longer prefix. */
	if (*exact & SY_LEAF_RESULT_MASK) {
		if ((*wildcard & SY_LEAF_RESULT_MASK) && leaf_plen(*wildcard) > leaf_plen(*exact))
			return *wildcard;
		return *exact;
	}
	return *wildcard;
}

SEC("sk_lookup")
int switchyard_dispatch(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0, family, proto, chosen, exact, wildcard, dest;
	struct sy_destination_stats *stats;
	struct sy_trace *tr = 0;
	struct bpf_sock *sk;
	__u64 hi, lo, flags = 0;
	void *table;
	long err;

	if (ctx->protocol == IPPROTO_TCP)
		proto = 0;
	else if (ctx->protocol == IPPROTO_UDP)
		proto = 1;
	else
		return SK_PASS;

	if (ctx->family == AF_INET) {
		family = 0;
		hi = (__u64)bpf_ntohl(ctx->local_ip4) << 32;
		lo = 0;
	} else if (ctx->family == AF_INET6) {
		family = 1;
		hi = ((__u64)bpf_ntohl(ctx->local_ip6[0]) << 32) | bpf_ntohl(ctx->local_ip6[1]);
		lo = ((__u64)bpf_ntohl(ctx->local_ip6[2]) << 32) | bpf_ntohl(ctx->local_ip6[3]);
	} else {
		return SK_PASS;
	}

	table = bpf_map_lookup_elem(&generation, &zero);
	if (!table)
		return SK_PASS;

	chosen = lookup_bindings(table, family, proto, ctx->local_port, hi, lo, &exact, &wildcard);

	if (ctx->remote_port == 0) {
		/* Read both: the verifier refuses a ctx pointer that clang
		 * would otherwise pick with a conditional offset. */
		__u32 nonce4 = ctx->remote_ip4, nonce6 = ctx->remote_ip6[3];

		tr = bpf_map_lookup_elem(&trace, &zero);
		if (tr) {
			tr->nonce = family ? nonce6 : nonce4;
			tr->exact = exact;
			tr->wildcard = wildcard;
			tr->chosen = chosen;
			tr->flags = 0;
			tr->assign_err = 0;
		}
		/* Test runs cannot select from a reuseport group; report the
		 * group's first socket instead. */
		flags = BPF_SK_LOOKUP_F_NO_REUSEPORT;
	}

	if (!(chosen & SY_LEAF_RESULT_MASK))
		return SK_PASS; /* not ours: the kernel's normal lookup decides */

	dest = (chosen & SY_LEAF_RESULT_MASK) - 1;
	/* Traced lookups come from `switchyard lookup`, not traffic: uncounted. */
	stats = tr ? 0 : bpf_map_lookup_elem(&destination_stats, &dest);
	if (stats)
		stats->lookups++;

	sk = bpf_map_lookup_elem(&sockets, &dest);
	if (!sk) {
		/* Bound but no socket: the addresses stay reserved. */
		if (stats)
			stats->misses++;
		return SK_DROP;
	}
	if (tr)
		tr->flags |= SY_TRACE_SOCKET_FOUND;

	err = bpf_sk_assign(ctx, sk, flags);
	bpf_sk_release(sk);
	if (err) {
		if (stats)
			stats->errors++;
		if (tr)
			tr->assign_err = err;
		return SK_DROP;
	}
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
