/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * tubular's data plane as both benchmark programs reproduce it: its
 * BPF_MAP_TYPE_LPM_TRIE keyed {prefixlen, protocol, port, ::ffff:a.b.c.d}
 * (sized by the harness, which passes its own map) and its two lookups per
 * packet, the exact port's and port 0's, the longer prefix winning.
 */
#ifndef BENCH_TUBULAR_H
#define BENCH_TUBULAR_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct tubular_key);
	__type(value, struct tubular_binding);
} tubular_bindings SEC(".maps");

/* The binding tubular picks for `key` (its port is overwritten), or NULL. */
static __always_inline const struct tubular_binding *tubular_match(struct tubular_key *key)
{
	const struct tubular_binding *bind, *wildcard;

	bind = bpf_map_lookup_elem(&tubular_bindings, key);
	key->port = 0;
	wildcard = bpf_map_lookup_elem(&tubular_bindings, key);
	if (!bind || (wildcard && wildcard->prefixlen > bind->prefixlen))
		return wildcard;
	return bind;
}

#endif
