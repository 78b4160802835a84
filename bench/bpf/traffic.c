// SPDX-License-Identifier: BSD-3-Clause OR GPL-2.0
/*
 * Programs of the real-traffic benchmark (bench/traffic.ts), attached to a
 * scratch namespace's sk_lookup hook while real UDP datagrams go through it;
 * their cost is read from the kernel's run-time statistics (BPF_ENABLE_STATS).
 *
 *   traffic_empty    returns SK_PASS: the floor. Attached beside every
 *                    candidate, so each figure is net of what the kernel
 *                    charges a program run (the stats' own clock reads).
 *   traffic_tubular  tubular's dispatcher (ebpf/inet-kern.c): the
 *                    BPF_MAP_TYPE_LPM_TRIE lookup of bench.c's tubular()
 *                    (exact port, then port 0, the wildcard winning only with
 *                    a strictly longer prefix), its per-CPU metrics counter,
 *                    then its SOCKMAP (id - 1 -> socket), bpf_sk_assign and
 *                    bpf_sk_release, dropping when the socket is missing or
 *                    refused, as tubular does.
 *   traffic_assign   what any sk_lookup dispatcher pays: one SOCKMAP lookup
 *                    of a fixed key (0 for IPv4, 1 for IPv6: a socket must be
 *                    of the packet's family), bpf_sk_assign, bpf_sk_release.
 *   traffic_probe    assign, after one dependent load from a table of our
 *                    size (issue 17, item 5): probe_rows is an mmapable
 *                    array of 64-byte rows (vmalloc'd, like the dispatcher's
 *                    table) that the harness sizes to the published table's
 *                    rows; the row comes from a hash of the destination
 *                    (address, port), so spread traffic reads spread rows and
 *                    hot traffic at most 256; the loaded word (always 0)
 *                    joins the SOCKMAP key, so the lookup waits for it.
 *                    probe - assign is the cost of one dependent access to a
 *                    table of that size right after the network stack ran.
 *   traffic_probe2   the same with two independent loads from two rows (the
 *                    destination's, and its port-0 one): the dispatcher walks
 *                    two tries, the exact port's and port 0's.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "tubular.h"

#define AF_INET 2
#define AF_INET6 10
#define TRAFFIC_SOCKETS 1024

/* tubular's struct destination_metrics. */
struct tubular_metrics {
	__u64 lookups;
	__u64 misses;
	__u64 errors;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, TRAFFIC_SOCKETS);
	__type(key, __u32);
	__type(value, __u64);
} tubular_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TRAFFIC_SOCKETS);
	__type(key, __u32);
	__type(value, struct tubular_metrics);
} tubular_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} assign_sockets SEC(".maps");

/* Sized by the harness to the dispatcher's table (rows = its max_entries). */
struct probe_row {
	__u64 word[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct probe_row);
} probe_rows SEC(".maps");

/* probe_rows' max_entries, written by the harness (the program cannot read
 * it); a global, so reading it is one load from a line every run touches. */
volatile __u32 probe_row_count;

SEC("sk_lookup")
int traffic_empty(struct bpf_sk_lookup *ctx)
{
	return SK_PASS;
}

SEC("sk_lookup")
int traffic_tubular(struct bpf_sk_lookup *ctx)
{
	struct tubular_key key = {
		.prefixlen = (sizeof(struct tubular_key) - 4) * 8,
		.protocol = ctx->protocol,
		.port = ctx->local_port,
	};
	const struct tubular_binding *bind;
	struct tubular_metrics *metrics;
	struct bpf_sock *sk;
	__u32 dest;
	long err;

	/* The empty asm keeps each branch's ctx load in its branch: clang would
	 * otherwise sink both into one load through a computed ctx pointer,
	 * which the verifier refuses (tubular reads ctx through volatiles). */
	if (ctx->family == AF_INET) {
		__u32 ip4 = ctx->local_ip4;

		asm volatile("" : "+r"(ip4));
		key.ip[2] = bpf_htonl(0x0000ffff);
		key.ip[3] = ip4;
	} else {
		__u32 ip6 = ctx->local_ip6[3];

		asm volatile("" : "+r"(ip6));
		key.ip[0] = ctx->local_ip6[0];
		key.ip[1] = ctx->local_ip6[1];
		key.ip[2] = ctx->local_ip6[2];
		key.ip[3] = ip6;
	}
	bind = tubular_match(&key);
	if (!bind)
		return SK_PASS;

	dest = bind->id - 1;
	metrics = bpf_map_lookup_elem(&tubular_metrics, &dest);
	if (!metrics)
		return SK_DROP;
	metrics->lookups++;
	sk = bpf_map_lookup_elem(&tubular_sockets, &dest);
	if (!sk) {
		metrics->misses++;
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		metrics->errors++;
		return SK_DROP;
	}
	return SK_PASS;
}

SEC("sk_lookup")
int traffic_assign(struct bpf_sk_lookup *ctx)
{
	__u32 key = ctx->family == AF_INET6;
	struct bpf_sock *sk = bpf_map_lookup_elem(&assign_sockets, &key);
	long err;

	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

/* A row of probe_rows from (destination address, port): a multiplicative hash
 * reduced to the row count by multiply-shift (uniform, and no division). */
static __always_inline __u32 probe_row(__u32 address, __u32 port)
{
	__u32 h = (address ^ (port * 0x85ebca6bu)) * 0x9e3779b1u;

	h ^= h >> 15;
	return ((__u64)h * probe_row_count) >> 32;
}

/* The destination address folded to 32 bits (IPv6: the xor of its words). */
static __always_inline __u32 probe_address(struct bpf_sk_lookup *ctx)
{
	__u32 a;

	/* As in traffic_tubular: one ctx load per branch. */
	if (ctx->family == AF_INET) {
		a = ctx->local_ip4;
		asm volatile("" : "+r"(a));
	} else {
		__u32 w3 = ctx->local_ip6[3];

		asm volatile("" : "+r"(w3));
		a = ctx->local_ip6[0] ^ ctx->local_ip6[1] ^ ctx->local_ip6[2] ^ w3;
	}
	return a;
}

/* assign_sockets' key made to depend on a loaded word: the word is anded
 * with 0 inside asm, so clang can neither drop the load nor fold the key,
 * and the SOCKMAP lookup cannot start before the load completes. */
static __always_inline int probe_assign(struct bpf_sk_lookup *ctx, __u64 loaded)
{
	struct bpf_sock *sk;
	__u32 key;
	long err;

	asm volatile("%0 &= 0" : "+r"(loaded));
	key = (ctx->family == AF_INET6) + (__u32)loaded;
	sk = bpf_map_lookup_elem(&assign_sockets, &key);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

SEC("sk_lookup")
int traffic_probe(struct bpf_sk_lookup *ctx)
{
	__u32 index = probe_row(probe_address(ctx), ctx->local_port);
	const struct probe_row *row = bpf_map_lookup_elem(&probe_rows, &index);

	if (!row)
		return SK_DROP;
	return probe_assign(ctx, row->word[0]);
}

SEC("sk_lookup")
int traffic_probe2(struct bpf_sk_lookup *ctx)
{
	__u32 address = probe_address(ctx);
	__u32 exact = probe_row(address, ctx->local_port);
	__u32 wildcard = probe_row(address, 0);
	const struct probe_row *a = bpf_map_lookup_elem(&probe_rows, &exact);
	const struct probe_row *b = bpf_map_lookup_elem(&probe_rows, &wildcard);

	if (!a || !b)
		return SK_DROP;
	return probe_assign(ctx, a->word[0] + b->word[0]);
}

char _license[] SEC("license") = "Dual BSD/GPL";
