// SPDX-License-Identifier: BSD-3-Clause OR GPL-2.0
/*
 * Never loaded: compiled only so its BTF describes every struct of
 * switchyard.h (and the kernel's struct bpf_sk_lookup) exactly as clang lays
 * them out. test/unit/layout.test.ts compares the TypeScript mirrors with it.
 */
#include <linux/bpf.h>
#include "switchyard.h"

struct sy_layouts {
	struct sy_node node;
	struct sy_terminal terminal;
	struct sy_row row;
	struct sy_skip_row skip_row;
	struct sy_table_header header;
	struct sy_binding_record record;
	struct sy_destination destination;
	struct sy_destination_stats stats;
	struct sy_meta meta;
	struct sy_trace trace;
	struct bpf_sk_lookup sk_lookup;
} sy_layouts;
