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

/* Returns the leaf word for the longest prefix of this trie matching
 * (hi, lo), or 0. A malformed table ends in 0 too: traffic then takes the
 * kernel's normal path rather than a wrong socket. */
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

static __always_inline __u32 walk(void *table, __u32 root, __u64 hi, __u64 lo,
				  const int max_steps, const int ipv4)
{
	__u32 bits, pos, ref, slot;

	if (!root)
		return 0;
	bits = root >> SY_ROOT_BITS_SHIFT;
	slot = (__u32)(hi >> (64 - bits));
	if (root & SY_ROOT_INLINE_TERMINALS)
		ref = table_word(table, ((root & SY_ROOT_ROW_MASK) + (slot >> SY_DIRECT_ROW_SHIFT)) * SY_WORDS_PER_ROW +
						(slot & (SY_DIRECT_SLOTS_PER_ROW - 1)));
	else
		ref = table_word(table, (root & SY_ROOT_ROW_MASK) * SY_WORDS_PER_ROW + slot);
	pos = bits;

	for (int step = 0; step < max_steps; step++) {
		struct sy_node *node;
		__u64 half, bit;
		__u32 off, width;

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
		*exact = walk(table, root_exact, hi, lo, SY_MAX_STEPS_V4, 1);
		*wildcard = walk(table, root_any, hi, lo, SY_MAX_STEPS_V4, 1);
	} else {
		*exact = walk(table, root_exact, hi, lo, SY_MAX_STEPS_V6, 0);
		*wildcard = walk(table, root_any, hi, lo, SY_MAX_STEPS_V6, 0);
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
