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

/* Bits [pos, pos + 32) of the address (zeros past its end). */
static __always_inline __u32 window32(__u64 hi, __u64 lo, __u32 pos, const int ipv4)
{
	if (ipv4)
		return (__u32)((hi << (pos & 63)) >> 32);
	if (pos < 64)
		return (__u32)(((hi << pos) | ((lo >> 1) >> (63 - pos))) >> 32);
	return (__u32)((lo << ((pos - 64) & 63)) >> 32);
}

/*
 * Whether a bucket's 2-word entry {leaf, value} matches `win`, the address's
 * bits [w, w + 32): on the prefix's bits past w (w is 0 for IPv4).
 */
static __always_inline int entry_matches(__u32 leaf, __u32 value, __u32 win, __u32 w)
{
	__u32 plen = (leaf >> SY_LEAF_PLEN_SHIFT) & SY_LEAF_PLEN_MASK;
	__u32 rel = plen > w ? plen - w : 0;
	/* Top rel bits; rel 0 (an unused entry, a shorter prefix) masks nothing. */
	__u32 mask = (__u32)(~0ULL << ((32 - rel) & 63));

	return (win & mask) == value;
}

/* The answer of an IPv4 bucket row for address a. */
static __always_inline __u32 bucket4(struct sy_row *r, __u32 a)
{
#pragma clang loop unroll(disable)
	for (int k = 0; k < SY_BUCKET_ENTRIES; k++) {
		if (entry_matches(r->word[2 * k], r->word[2 * k + 1], a, 0))
			return r->word[2 * k];
	}
	return 0;
}

/* The answer of an IPv6 bucket row `d` bits deep for (hi, lo). */
static __always_inline __u32 bucket6(struct sy_row *r, __u64 hi, __u64 lo, __u32 d)
{
	__u32 win = window32(hi, lo, d, 0), k = 0;

#pragma clang loop unroll(disable)
	for (int e = 0; e < SY_BUCKET_ENTRIES && k < SY_WORDS_PER_ROW; e++) {
		__u32 leaf = r->word[k & 15];

		if (leaf & SY_LEAF_LONG) {
			__u32 plen = (leaf >> SY_LEAF_PLEN_SHIFT) & SY_LEAF_PLEN_MASK;
			__u64 vhi = ((__u64)r->word[(k + 1) & 15] << 32) | r->word[(k + 2) & 15];
			__u64 vlo = ((__u64)r->word[(k + 3) & 15] << 32) | r->word[(k + 4) & 15];
			/* Long entries are longer than 32 bits. */
			__u64 mhi = plen >= 64 ? ~0ULL : ~0ULL << ((64 - plen) & 63);
			__u64 mlo = plen > 64 ? ~0ULL << ((128 - plen) & 63) : 0;

			if (!(((hi ^ vhi) & mhi) | ((lo ^ vlo) & mlo)))
				return leaf & ~SY_LEAF_LONG;
			k += 5;
		} else {
			if (entry_matches(leaf, r->word[(k + 1) & 15], win, d))
				return leaf;
			k += 2;
		}
	}
	return 0;
}

static __always_inline __u32 bucket(struct sy_row *r, __u64 hi, __u64 lo, __u32 d, const int ipv4)
{
	return ipv4 ? bucket4(r, (__u32)(hi >> 32)) : bucket6(r, hi, lo, d);
}

/*
 * The first load of a walk: the row holding the direct-table slot of the
 * address, and in *word the slot's word in it. Split from the rest so both
 * walks of a lookup issue their first (cache-missing) load before either
 * waits for it.
 */
static __always_inline __u32 slot_index(__u32 root, __u64 hi, __u32 *word)
{
	__u32 bits = root >> SY_ROOT_BITS_SHIFT;
	__u32 slot = (__u32)(hi >> (64 - bits));

	if (root & SY_ROOT_BUCKETS) {
		*word = 0;
		return (root & SY_ROOT_ROW_MASK) + slot;
	}
	*word = slot % SY_WORDS_PER_ROW;
	return (root & SY_ROOT_ROW_MASK) + slot / SY_WORDS_PER_ROW;
}

/*
 * Returns the leaf word for the longest prefix of this trie matching
 * (hi, lo), or 0, given the index of the slot's row and the slot's word w
 * read from it.
 * A malformed table ends in 0 too: traffic then takes the kernel's normal
 * path rather than a wrong socket.
 */
static __always_inline __u32 walk_slot(void *table, __u32 root, __u32 row, __u32 w, __u64 hi, __u64 lo,
				       const int max_steps, const int ipv4)
{
	__u32 pos = root >> SY_ROOT_BITS_SHIFT, ref = w;
	int bucket_row = (root & SY_ROOT_BUCKETS) != 0, mismatch = 0;
	struct sy_row *scan = 0;

	if (!root)
		return 0;
	/* Rolled: one copy of the code per family keeps the program small in
	 * the instruction cache, which the network stack has just used. The
	 * loop only finds the row whose entries answer; they are scanned once,
	 * after it (the verifier walks each step's paths, not a scan's too). */
#pragma clang loop unroll(disable)
	for (int step = 0; step < max_steps; step++) {
		struct sy_node *node;
		struct sy_row *r;
		__u64 half, bit;
		__u32 off, width;

		/* The same bounds every step, so the verifier prunes the paths
		 * that reach a step alike instead of walking each on its own. */
		pos &= 127;
		if (bucket_row) {
			/* Row `row` of a bucket table, pos bits deep; ref its word 0
			 * (looked up again: the line is in the cache). */
			bucket_row = 0;
			r = sy_table_row(table, row);
			if (!r)
				return 0;
			if (!(ref & SY_REF_TAGS)) {
				scan = r;
				break;
			}
			if ((ref & SY_REF_TAGS) == SY_REF_BUCKETS && r->skip.skip_len) {
				if (((hi ^ r->skip.value_hi) & r->skip.mask_hi) | ((lo ^ r->skip.value_lo) & r->skip.mask_lo)) {
					scan = r;
					mismatch = 1;
					break;
				}
				pos += r->skip.skip_len;
			}
			continue;
		}
		if ((ref & SY_REF_TAGS) == SY_REF_BUCKETS) {
			width = (ref >> SY_BUCKET_WIDTH_SHIFT) & 31;
			row = (ref & SY_BUCKET_ROW_MASK) + (window32(hi, lo, pos, ipv4) >> ((32 - width) & 63));
			r = sy_table_row(table, row);
			if (!r)
				return 0;
			ref = r->word[0];
			pos += width;
			bucket_row = 1;
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
	if (!scan)
		return 0;
	if (mismatch) {
		/* A skip row the address leaves: its entries (unused ones are 0
		 * and skipped: in a bucket they would match), else what it inherits. */
		__u32 base = ipv4 ? 0 : pos, win = window32(hi, lo, base, ipv4);

		if (scan->skip.entry[0] && entry_matches(scan->skip.entry[0], scan->skip.entry[1], win, base))
			return scan->skip.entry[0];
		if (scan->skip.entry[2] && entry_matches(scan->skip.entry[2], scan->skip.entry[3], win, base))
			return scan->skip.entry[2];
		return scan->skip.inherited;
	}
	return bucket(scan, hi, lo, pos, ipv4);
}

/* A whole walk of the trie whose root word is `root`. */
static __always_inline __u32 walk(void *table, __u32 root, __u64 hi, __u64 lo, const int max_steps, const int ipv4)
{
	__u32 w = 0, row = root ? slot_index(root, hi, &w) : 0;
	struct sy_row *r = root ? sy_table_row(table, row) : 0;

	if (!r)
		return 0;
	w = r->word[w % SY_WORDS_PER_ROW];
	return walk_slot(table, root, row, w, hi, lo, max_steps, ipv4);
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
	__u32 ie = root_exact ? slot_index(root_exact, hi, &we) : 0;
	__u32 ia = root_any ? slot_index(root_any, hi, &wa) : 0;
	struct sy_row *re = root_exact ? sy_table_row(table, ie) : 0;
	struct sy_row *ra = root_any ? sy_table_row(table, ia) : 0;

	/* Both slots' loads before either walk goes on. */
	we = re ? re->word[we % SY_WORDS_PER_ROW] : 0;
	wa = ra ? ra->word[wa % SY_WORDS_PER_ROW] : 0;
	/* One copy of each family's walk serves both (rolled loop). */
#pragma clang loop unroll(disable)
	for (int i = 0; i < 2; i++) {
		__u32 root = i ? (ra ? root_any : 0) : (re ? root_exact : 0);
		__u32 row = i ? ia : ie, w = i ? wa : we, leaf;

		if (family == 0)
			leaf = walk_slot(table, root, row, w, hi, lo, SY_MAX_STEPS_V4, 1);
		else
			leaf = walk_slot(table, root, row, w, hi, lo, SY_MAX_STEPS_V6, 0);
		if (i)
			*wildcard = leaf;
		else
			*exact = leaf;
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
