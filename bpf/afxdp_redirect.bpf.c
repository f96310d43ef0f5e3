// SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0)
//
// afxdp_redirect: the XDP program of swift-afxdp.
//
// Every frame that arrives on an interface queue is handed to the AF_XDP
// socket bound to that queue, through the XSKMAP. An optional EtherType
// filter lets the kernel stack keep the traffic the engine does not want.
// Per-CPU counters say what happened, without atomics on the fast path.
//
// Built by the package's EmbedXDPProgram plugin:
//   clang -target bpf -O2 -g -Wall -I/usr/include/x86_64-linux-gnu
// and embedded in the AFXDP module, so `swift build` alone is enough.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Index of each slot in afxdp_counters. Keep in step with the Swift side.
enum afxdp_counter {
	AFXDP_COUNTER_SEEN = 0,
	AFXDP_COUNTER_REDIRECTED = 1,
	AFXDP_COUNTER_PASSED = 2,
	AFXDP_COUNTER_RESERVED = 3,
	AFXDP_COUNTER_COUNT = 4,
};

// Index of each slot in afxdp_config.
enum afxdp_config_key {
	AFXDP_CONFIG_ETHERTYPE = 0, // host byte order; 0 = no filter
	// 1-4: who attached the program (PID, start time, a magic, PID
	// namespace), written by user space and never read here: see the
	// shim's CAFXDP_CONFIG_OWNER_*.
	AFXDP_CONFIG_COUNT = 8,
};

// One slot per interface queue; user space puts the socket of queue q at
// key q. 64 covers the queue counts of the NICs we expect.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} afxdp_xsks SEC(".maps");

// Written by user space before (or while) the program runs.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, AFXDP_CONFIG_COUNT);
} afxdp_config SEC(".maps");

// Per-CPU so that two queues served by two CPUs never bounce a cache line;
// user space sums the CPUs when it reads.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, AFXDP_COUNTER_COUNT);
} afxdp_counters SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&afxdp_counters, &index);

	// The verifier requires the NULL check even though an array lookup
	// with an in-range key cannot fail. Per-CPU: no atomic needed.
	if (value)
		*value += 1;
}

// The EtherType filter, or 0 when every frame is wanted.
static __always_inline __u32 ethertype_filter(void)
{
	__u32 key = AFXDP_CONFIG_ETHERTYPE;
	__u32 *value = bpf_map_lookup_elem(&afxdp_config, &key);

	return value ? *value : 0;
}

// "xdp.frags": the program may see frames in several buffers (jumbo frames,
// multi-buffer XDP). It reads only the Ethernet header, which is always in
// the first; veth refuses a program without this mark on an interface
// whose MTU is past one page.
SEC("xdp.frags")
int afxdp_redirect(struct xdp_md *ctx)
{
	__u32 filter;
	long action;

	count(AFXDP_COUNTER_SEEN);

	filter = ethertype_filter();
	if (filter != 0) {
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		struct ethhdr *eth = data;

		// The verifier rejects any read of the header it has not seen
		// bounded by data_end; a runt frame is the kernel's business.
		if ((void *)(eth + 1) > data_end ||
		    bpf_ntohs(eth->h_proto) != filter) {
			count(AFXDP_COUNTER_PASSED);
			return XDP_PASS;
		}
	}

	// The low bits of flags are the action returned when no socket is
	// bound at this queue's index: such frames go to the kernel stack
	// rather than being dropped.
	action = bpf_redirect_map(&afxdp_xsks, ctx->rx_queue_index, XDP_PASS);
	count(action == XDP_REDIRECT ? AFXDP_COUNTER_REDIRECTED
				     : AFXDP_COUNTER_PASSED);
	return (int)action;
}

// A GPL-compatible license is required by the kernel to call
// bpf_redirect_map and the other GPL-only helpers.
char LICENSE[] SEC("license") = "Dual BSD/GPL";
