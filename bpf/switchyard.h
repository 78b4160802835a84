/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The one header that defines what the dispatcher program and user space
 * share: map layouts, the trie encoding and the ABI version. Every struct here
 * has a TypeScript mirror (src/trie/layout.ts); test/unit/layout.test.ts
 * checks sizes and offsets against the compiled object's BTF.
 *
 * Bump SY_ABI_VERSION whenever the meaning of any pinned map changes: user
 * space refuses to open pinned state of another ABI instead of guessing, and
 * `load` migrates it (src/dispatcher/migrate.ts), in either direction. The
 * migration reuses every map whose name, type, sizes, max entries and flags
 * are unchanged, so a map whose values change meaning without changing shape
 * must be renamed; `sockets` and `destinations` cannot change shape at all
 * without losing the registered sockets. The table's encoding is named by
 * SY_HEADER_MAGIC: change the magic with the encoding.
 */
#ifndef SWITCHYARD_H
#define SWITCHYARD_H

#include <linux/types.h>

#define SY_ABI_VERSION 4
#define SY_META_MAGIC 0x53594431u /* "SYD1" */

#define SY_MAX_DESTINATIONS 65536
#define SY_LABEL_MAX 59

/*
 * The bindings table of one generation lives in one BPF array ("table") of
 * 64-byte rows. Rows hold either 16 u32 words or 2 nodes. Word and node
 * indexes are absolute: word w is row w/16 slot w%16, node n is row n/2 half
 * n%2, so the walk never needs a per-generation base address.
 */
#define SY_ROW_BYTES 64
#define SY_WORDS_PER_ROW 16
#define SY_NODES_PER_ROW 2

/* Row 0 is the header (user space only). Row 1 onwards: the root table. */
#define SY_HEADER_MAGIC 0x53595432u /* "SYT2" (ABI 3 wrote "SYT1": user space still decodes it) */
#define SY_ROOT_WORD SY_WORDS_PER_ROW
/* One root word per (family, protocol, port): 2 * 2 * 65536 words. */
#define SY_ROOT_SLOTS (4u << 16)

/*
 * Root word: 0 = no binding on this (family, protocol, port); otherwise the
 * trie's direct-pointing table starts at row (root & SY_ROOT_ROW_MASK) and is
 * indexed by the top (root >> SY_ROOT_BITS_SHIFT) bits of the address.
 */
#define SY_ROOT_BITS_SHIFT 27
/* ABI 3's direct tables with terminals in their rows; decoded, never walked. */
#define SY_ROOT_LEGACY_INLINE (1u << 26)
/* Set when the direct table is one of buckets (see below). */
#define SY_ROOT_BUCKETS (1u << 25)
#define SY_ROOT_ROW_MASK (SY_ROOT_BUCKETS - 1)

/*
 * A reference in the trie (direct-table slot, skip target) is either a node
 * (top bit set, low 31 bits = node index) or a leaf word (top bit clear).
 * Leaf word: bits 0..16 = destination id + 1 (0 = no binding matches),
 * bits 17..24 = the matched prefix length, used to order exact-port and
 * wildcard-port matches.
 */
#define SY_REF_NODE 0x80000000u
/*
 * An IPv4 reference with bit 30 set (and bit 31 clear) is a terminal: a lone
 * prefix under a direct-table slot or a skip, in 16 bytes instead of a
 * 32-byte skip node. Terminal t is quarter t%4 of row t/4.
 */
#define SY_REF_TERMINAL 0x40000000u
#define SY_TERMINALS_PER_ROW 4
/*
 * A bucket table: slot v is the whole row root_row + v, so a walk that
 * ends in its slot reads one cache line after the root word. A row `d`
 * address bits deep is one of:
 * - a bucket (word 0 has no bit of SY_REF_TAGS: a leaf word never has
 *   them): entries {leaf word, value}, longest prefix first; the first
 *   that matches answers, and an unused entry {0, 0} matches anything and
 *   answers "no binding". IPv4: 8 entries of 2 words, value = the prefix,
 *   matched on its top (prefix length) bits. IPv6: entries of 2 words,
 *   value = bits [d, d + 32) of the prefix, matched on their first
 *   (length - d) bits (0 when the prefix is not longer than d), or, with
 *   SY_LEAF_LONG in the leaf word, of 5 words, value = the whole prefix
 *   (4 words, most significant first).
 * - a skip row (struct sy_skip_row, word 0 a child bucket table): the
 *   prefixes below share bits [d, d + skip_len) (value/mask); an address
 *   that differs there is answered by the first matching of two entries
 *   (prefixes containing the rest, as in a bucket; an unused one is 0 and
 *   matches nothing) or else `inherited`;
 *   one that agrees goes on to the child table at d + skip_len.
 * - a row whose word 0 is a node or terminal reference (clustered prefixes
 *   past a few tables, and every slot changed in place: one u32 store
 *   switches a slot; a leaf is then stored as a terminal); word 1 keeps
 *   the slot's inherited leaf, for user space.
 */
#define SY_BUCKET_ENTRIES 8
#define SY_REF_TAGS 0xe0000000u
/*
 * A child bucket table: rows (ref & SY_BUCKET_ROW_MASK) onwards, one a slot
 * of the next `width` ((ref >> SY_BUCKET_WIDTH_SHIFT) & 31) address bits.
 */
#define SY_REF_BUCKETS 0x20000000u
#define SY_BUCKET_WIDTH_SHIFT 24
#define SY_BUCKET_ROW_MASK 0xffffffu
#define SY_LEAF_LONG (1u << 25)
#define SY_SKIP_ENTRIES 2

struct sy_skip_row {
	__u32 ref;		/* SY_REF_BUCKETS: the child table */
	__u32 inherited;	/* the answer on a mismatch no entry matches */
	__u64 value_hi;		/* bits [d, d + skip_len) of the address, in place */
	__u64 value_lo;
	__u64 mask_hi;
	__u64 mask_lo;
	__u32 skip_len;
	__u32 entry[2 * SY_SKIP_ENTRIES];	/* {leaf, value} as a bucket's short entries */
	__u32 reserved;
};
#define SY_LEAF_RESULT_MASK 0x1ffffu
#define SY_LEAF_PLEN_SHIFT 17
#define SY_LEAF_PLEN_MASK 0xffu
/* Upper bounds on a walk's steps after the direct table (a node, a child
 * bucket table's reference or its row: one step each); the builder refuses
 * to emit deeper tries, so the walk can be a bounded loop. */
#define SY_MAX_STEPS_V4 16
#define SY_MAX_STEPS_V6 40

/*
 * A node covers the next min(6, 64 - pos % 64) bits of the address at bit
 * position pos (strides never straddle the two 64-bit halves of the key).
 *
 * Multibit node (skip_len == 0), poptrie style: slot c (the next 6 bits,
 * zero-padded when the stride is shorter) descends into an internal child if
 * bit c of `vector` is set; the child is node child_base + popcount(vector
 * below c). Otherwise it is a leaf: leaf runs start at the set bits of
 * `leafvec`, the leaf is word leaf_base + popcount(leafvec up to c) - 1.
 *
 * Skip node (skip_len > 0), path compression for sparse IPv6: the next
 * skip_len bits of the current half, selected by `leafvec` as a mask, must
 * equal `vector`; then the walk continues at reference child_base, skip_len
 * bits further. Otherwise the answer is the leaf word in leaf_base.
 *
 * `inherited` (not read by the program) is the leaf word of the longest
 * prefix that ends above the node, so a subtree can be decoded and rebuilt
 * alone (src/trie/patch.ts) even where longer prefixes hide it.
 */
struct sy_node {
	__u64 vector;
	__u64 leafvec;
	__u32 child_base;
	__u32 leaf_base;
	__u32 skip_len;
	__u32 inherited;	/* the longest match above this node; user space only */
};

/* A terminal: the IPv4 address matches if (addr & mask) == value. An
 * always-matching one (mask 0) stands for a leaf in a bucket table's slot. */
struct sy_terminal {
	__u32 value;
	__u32 mask;
	__u32 leaf;		/* leaf word when it matches */
	__u32 fallback;		/* leaf word when it does not */
};

struct sy_row {
	union {
		__u32 word[SY_WORDS_PER_ROW];
		struct sy_node node[SY_NODES_PER_ROW];
		struct sy_terminal terminal[SY_TERMINALS_PER_ROW];
		struct sy_skip_row skip;
	};
};

/*
 * Row 0 of a table. Written by user space, never read by the program.
 *
 * The table is the only copy of the binding set: every binding the trie can
 * answer with is read back from the trie itself (leaf = destination and
 * prefix length, the region it covers gives the address; the root slot
 * gives family, protocol and port). Bindings no address reaches (longer
 * prefixes of the same trie tile them exactly) are listed at shadow_row:
 * that row's first word is their count, the records follow from the next row.
 */
struct sy_table_header {
	__u32 magic;
	__u32 abi_version;
	__u32 binding_count;
	__u32 shadow_row;	/* 0 = no unreachable bindings */
	__u64 serial;		/* increases with every change, published or in place */
	__u32 used_rows;	/* rows [0, used_rows) may be in use; the rest are free */
	__u32 node_count;
	__u32 word_count;
	__u32 garbage_rows;	/* rows below used_rows left behind by in-place changes */
	__u32 reserved[6];
};

/* A binding listed in full (the unreachable ones). Not read by the program. */
struct sy_binding_record {
	__u8 family;		/* 4 or 6 */
	__u8 protocol;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 prefix_len;
	__u8 reserved;
	__u16 port;		/* host order, 0 = any port */
	__u16 destination;	/* destination id */
	__u8 addr[16];		/* network order; IPv4 in the first 4 bytes */
};

/* destinations map value: who destination id N is. */
struct sy_destination {
	__u8 in_use;
	__u8 family;		/* 4 or 6 */
	__u8 protocol;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 label_len;
	char label[SY_LABEL_MAX + 1];
};

/* destination_stats map value (per CPU). */
struct sy_destination_stats {
	__u64 lookups;		/* packets that matched a binding of this destination */
	__u64 misses;		/* ... and found no socket registered */
	__u64 errors;		/* ... and the socket could not be assigned */
};

/* meta map value: identifies the ABI of a pinned state directory. */
struct sy_meta {
	__u32 magic;
	__u32 abi_version;
};

/*
 * The lookup trace: written only for lookups whose remote port is 0, which
 * real TCP never has; `switchyard lookup` runs the program with
 * BPF_PROG_TEST_RUN and a random remote address as nonce, then reads it back.
 */
#define SY_TRACE_SOCKET_FOUND 1u
struct sy_trace {
	__u32 nonce;
	__u32 exact;		/* leaf word of the exact-port walk */
	__u32 wildcard;		/* leaf word of the any-port walk */
	__u32 chosen;		/* the leaf word that decided */
	__u32 flags;
	__s32 assign_err;
};

#endif
