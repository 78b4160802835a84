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
#include "lookup.h"
#include "generation.h"

#define AF_INET 2
#define AF_INET6 10

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
