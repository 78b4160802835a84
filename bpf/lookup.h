/* SPDX-License-Identifier: BSD-3-Clause OR GPL-2.0 */
/*
 * The bindings-table walk, shared by the dispatcher and the benchmark
 * programs (bench/bpf) so what is measured is what serves traffic.
 * `table` is the published generation's array map (see switchyard.h).
 */
#ifndef SWITCHYARD_LOOKUP_H
#define SWITCHYARD_LOOKUP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "switchyard.h"

/* Row `row` of the table, or NULL past its end. */
static __always_inline struct sy_row *sy_table_row(void *table, __u32 row)
{
	return bpf_map_lookup_elem(table, &row);
}

static __always_inline __u32 table_word(void *table, __u32 w)
{
	struct sy_row *r = sy_table_row(table, w / SY_WORDS_PER_ROW);

	return r ? r->word[w % SY_WORDS_PER_ROW] : 0;
}

static __always_inline struct sy_node *table_node(void *table, __u32 n)
{
	__u32 row = n / SY_NODES_PER_ROW;
	struct sy_row *r = bpf_map_lookup_elem(table, &row);

	return r ? &r->node[n % SY_NODES_PER_ROW] : 0;
}

/* The leaf word of terminal reference `ref` for the IPv4 address in hi. */
static __always_inline __u32 terminal(void *table, __u32 ref, __u64 hi)
{
	__u32 t = ref & ~SY_REF_TERMINAL;
	struct sy_row *r = sy_table_row(table, t / SY_TERMINALS_PER_ROW);
	struct sy_terminal *term;

	if (!r)
		return 0;
	term = &r->terminal[t % SY_TERMINALS_PER_ROW];
	return ((__u32)(hi >> 32) & term->mask) == term->value ? term->leaf : term->fallback;
}

/* The answer of a bucket row (switchyard.h) for IPv4 address a. */
static __always_inline __u32 bucket(struct sy_row *r, __u32 a)
{
	for (int k = 0; k < SY_BUCKET_ENTRIES; k++) {
		__u32 leaf = r->word[2 * k];
		__u32 plen = (leaf >> SY_LEAF_PLEN_SHIFT) & SY_LEAF_PLEN_MASK;
		/* Top plen bits; plen 0 (an unused entry) masks nothing. */
		__u32 mask = (__u32)(~0ULL << ((32 - plen) & 63));

		if ((a & mask) == r->word[2 * k + 1])
			return leaf;
	}
	return 0;
}

/*
 * The first load of a walk: the row holding the direct-table slot of the
 * address, and in *word the slot's word in it. Split from the rest so both
 * walks of a lookup issue their first (cache-missing) load before either
 * waits for it.
 */
static __always_inline struct sy_row *slot_row(void *table, __u32 root, __u64 hi, __u32 *word)
{
	__u32 bits = root >> SY_ROOT_BITS_SHIFT;
	__u32 slot = (__u32)(hi >> (64 - bits));

	if (!root)
		return 0;
	if (root & SY_ROOT_BUCKETS) {
		*word = 0;
		return sy_table_row(table, (root & SY_ROOT_ROW_MASK) + slot);
	}
	*word = slot % SY_WORDS_PER_ROW;
	return sy_table_row(table, (root & SY_ROOT_ROW_MASK) + slot / SY_WORDS_PER_ROW);
}

/*
 * Returns the leaf word for the longest prefix of this trie matching
 * (hi, lo), or 0, given the slot's row r and the slot's word w read from it.
 * A malformed table ends in 0 too: traffic then takes the kernel's normal
 * path rather than a wrong socket.
 */
static __always_inline __u32 walk_slot(void *table, __u32 root, struct sy_row *r, __u32 w, __u64 hi, __u64 lo,
				  const int max_steps, const int ipv4)
{
	__u32 pos, ref = w;

	if (!r)
		return 0;
	if (ipv4 && (root & SY_ROOT_BUCKETS) && !(w & SY_REF_TAGS))
		return bucket(r, (__u32)(hi >> 32));
	pos = root >> SY_ROOT_BITS_SHIFT;

	for (int step = 0; step < max_steps; step++) {
		struct sy_node *node;
		__u64 half, bit;
		__u32 off, width;

		if (ipv4 && (ref & SY_REF_TAGS) == SY_REF_BUCKETS) {
			__u32 a = (__u32)(hi >> 32);
			__u32 width = (ref >> SY_BUCKET_WIDTH_SHIFT) & 31;
			/* pos < 32 and pos + width <= 32 in a well-formed table. */
			__u32 v = (__u32)((__u64)(a << (pos & 31)) >> ((32 - width) & 63));
			struct sy_row *child = sy_table_row(table, (ref & SY_BUCKET_ROW_MASK) + v);

			if (!child)
				return 0;
			if (!(child->word[0] & SY_REF_TAGS))
				return bucket(child, a);
			ref = child->word[0];
			pos += width;
			continue;
		}
		if (!(ref & SY_REF_NODE))
			return ipv4 && (ref & SY_REF_TERMINAL) ? terminal(table, ref, hi) : ref;
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

/* A whole walk of the trie whose root word is `root`. */
static __always_inline __u32 walk(void *table, __u32 root, __u64 hi, __u64 lo, const int max_steps, const int ipv4)
{
	__u32 w = 0;
	struct sy_row *r = slot_row(table, root, hi, &w);

	if (r)
		w = r->word[w % SY_WORDS_PER_ROW];
	return walk_slot(table, root, r, w, hi, lo, max_steps, ipv4);
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
	__u32 we = 0, wa = 0;
	struct sy_row *re = slot_row(table, root_exact, hi, &we);
	struct sy_row *ra = slot_row(table, root_any, hi, &wa);

	/* Both slots' loads before either walk goes on. */
	if (re)
		we = re->word[we % SY_WORDS_PER_ROW];
	if (ra)
		wa = ra->word[wa % SY_WORDS_PER_ROW];
	if (family == 0) {
		*exact = walk_slot(table, root_exact, re, we, hi, lo, SY_MAX_STEPS_V4, 1);
		*wildcard = walk_slot(table, root_any, ra, wa, hi, lo, SY_MAX_STEPS_V4, 1);
	} else {
		*exact = walk_slot(table, root_exact, re, we, hi, lo, SY_MAX_STEPS_V6, 0);
		*wildcard = walk_slot(table, root_any, ra, wa, hi, lo, SY_MAX_STEPS_V6, 0);
	}
	/* The wildcard wins only with a strictly longer prefix. */
	if (*exact & SY_LEAF_RESULT_MASK) {
		if ((*wildcard & SY_LEAF_RESULT_MASK) && leaf_plen(*wildcard) > leaf_plen(*exact))
			return *wildcard;
		return *exact;
	}
	return *wildcard;
}

#endif
