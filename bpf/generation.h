/* SPDX-License-Identifier: BSD-3-Clause OR GPL-2.0 */
/*
 * The `generation` map-of-maps and its table template, shared by the
 * dispatcher and the benchmark programs so both walk identical tables.
 */
#ifndef SWITCHYARD_GENERATION_H
#define SWITCHYARD_GENERATION_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "switchyard.h"

/*
 * Template for the per-generation table. Every table has the capacity set
 * here at load time (user space sizes it, and grows it by reloading the
 * program with a new generation map): tables of one size let the verifier
 * inline each row lookup into a bounds check and an add, where
 * BPF_F_INNER_MAP (any size) costs a helper call per row, and a call is
 * expensive with return-thunk mitigations (SRSO "Safe RET" here).
 */
struct table_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
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

#endif
