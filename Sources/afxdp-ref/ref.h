// afxdp-ref: the reference the swift-afxdp engine is measured against.
//
// Two AF_XDP ports, one per end of a veth pair, each in its own network
// namespace and served by its own thread, running the bare libxdp ring loop
// (no engine): the same traffic, frame format and checks as afxdp-bench.
// In forward mode a third end, F, sits between them (A - F - B, two veth
// pairs): one thread, two sockets on one shared UMEM, each passing what it
// receives out of the other, from the frame it arrived in.
//
// Ownership: each `ref_end` (its ports, and the sender / receiver / forwarder
// state of the directions it serves) is touched only by its own thread while
// traffic runs. The main thread reads `ref_flow_counters` (relaxed atomics,
// one writer each) once a second, and everything else only after the threads
// are joined. Nothing allocates per packet.
#ifndef AFXDP_REF_H
#define AFXDP_REF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>

#include "CAFXDP.h"
#include "histogram.h"

#define REF_CACHE_LINE 64

// REF_INSTRUCTION_LOOP: one thread, a fixed number of frames A->B, for
// callgrind (instruction.c); the others run an end per thread for --seconds.
// REF_FORWARD: A and B as in duplex, through F (three ends, three threads).
enum ref_mode { REF_DUPLEX, REF_TX_ONLY, REF_RX_DROP, REF_L2FWD, REF_FORWARD, REF_INSTRUCTION_LOOP };

// The ends, as indices of ends[], options.namespace[] and options.cpu[].
enum ref_end_index { REF_A = 0, REF_B = 1, REF_F = 2, REF_MAX_ENDS = 3 };
// The interfaces, as indices of options.interface[]: F's FA is paired with
// A's interface, FB with B's.
enum ref_interface_index { REF_IF_A = 0, REF_IF_B = 1, REF_IF_FA = 2, REF_IF_FB = 3, REF_MAX_INTERFACES = 4 };

struct ref_options {
	enum ref_mode mode;
	const char *interface[REF_MAX_INTERFACES]; // FA and FB: forward only
	const char *namespace[REF_MAX_ENDS]; // NULL: stay in the namespace we were started in
	int cpu[REF_MAX_ENDS];               // -1: not pinned
	double seconds;
	uint64_t packets;         // instruction-loop: frames to move
	uint32_t frame_size;      // bytes on the wire, without FCS
	uint32_t batch;           // descriptors per burst
	uint32_t ring_size;       // all four rings
	uint32_t umem_frame_size; // 2048 or 4096
	uint32_t frames;          // UMEM frames per port: half fill ring, half TX (F: half per socket)
	bool need_wakeup;
	bool busy_poll;
	bool json;
	const char *xdp_object;
};

// --- Run control --------------------------------------------------------

// The main thread moves the phase forward; the end threads follow.
enum ref_phase { REF_SETUP, REF_RUNNING, REF_DRAINING, REF_STOPPED };

// Why the run stops early: 0 while nobody asked, else a signal number or:
#define REF_STOP_WATCHDOG 1000
#define REF_STOP_FAILURE 1001

extern _Atomic int ref_phase;
extern _Atomic int ref_stop_reason;
// CLOCK_MONOTONIC ns after which no loop runs, whatever the main thread does.
extern _Atomic uint64_t ref_hard_deadline;
// The namespace the process started in (for ports given no namespace).
extern int ref_original_netns_fd;

void ref_request_stop(int reason);
uint64_t ref_now(void);
void ref_sleep_ns(uint64_t ns);

// --- Flows --------------------------------------------------------------

// What each thread publishes for the per-second lines and the drain: totals,
// stored (not added) by their one writer, each group on its own cache line.
struct ref_flow_counters {
	// Written by the sender's thread.
	_Alignas(REF_CACHE_LINE) _Atomic uint64_t sent;
	// Written by the receiver's thread.
	_Alignas(REF_CACHE_LINE) _Atomic uint64_t received;
	_Atomic uint64_t received_bytes;
	_Atomic uint64_t gaps;
	// Written by the forwarder's thread (l2fwd's B, forward's F).
	_Alignas(REF_CACHE_LINE) _Atomic uint64_t forwarded;
};

// Owned by the thread of the sending end.
struct ref_sender {
	_Alignas(REF_CACHE_LINE) uint64_t next_sequence;
	uint64_t completed; // TX descriptors the completion ring gave back
	uint64_t submitted;
};

// Owned by the thread of the receiving end.
struct ref_receiver {
	_Alignas(REF_CACHE_LINE) uint64_t expected; // next sequence number expected
	uint64_t packets;
	uint64_t bytes;
	uint64_t gaps;      // sequence numbers skipped when a later one arrived
	uint64_t reordered; // below one seen before: late or duplicated
	uint64_t corrupted; // EtherType right, payload not as written
	uint64_t foreign;   // not a test frame at all
	struct ref_histogram latency; // send timestamp to receive, ns
};

// Owned by the thread of the forwarding end (l2fwd: B; forward: F).
struct ref_forwarder {
	_Alignas(REF_CACHE_LINE) uint64_t forwarded; // completed TX of received frames
	uint64_t held_back; // RX descriptors left for later: TX ring full
};

struct ref_direction {
	const char *name;
	int sender_end;
	int receiver_end;
	int forwarder_end; // -1 unless l2fwd (B) or forward (F)
	int forwarder_port; // the forwarder's port the sender's frames arrive on (F's port facing the sender)
	bool checked;      // false in rx-drop: frames are counted, not read
	struct ref_flow_counters counters;
	struct ref_sender sender;
	struct ref_receiver receiver;
	struct ref_forwarder forwarder;
};

// --- Ports --------------------------------------------------------------

// Loop counters of one port (owned by its end's thread).
struct ref_loop_stats {
	uint64_t kicks;
	uint64_t kick_again;  // EAGAIN: the kernel's budget per kick (32 in copy mode) ran out, more to send
	uint64_t kick_busy;   // ENOBUFS / EBUSY / ENETDOWN: try later
	uint64_t rx_wakeups;  // recvfrom on an empty RX ring
	uint64_t fill_full;   // RX descriptors put back: no room in the fill ring
	uint64_t iterations;  // passes of the end's loop
};

// One AF_XDP socket on queue 0 of an interface, with the project's XDP
// program attached to that interface. Over its own UMEM, except F's second
// port (on FB), which shares the first one's: its area and umem stay NULL.
struct ref_port {
	const char *name;      // "A", "B", "FA", "FB"
	const char *interface;
	int ifindex;
	uint8_t mac[6];
	void *area;
	uint64_t area_size;
	struct xsk_umem *umem; // NULL on a port that shares another's UMEM
	struct xsk_socket *socket;
	cafxdp_rings rings; // zeroed before libxdp sees them (DESIGN.md)
	_Atomic int fd;     // -1 once closed; read by the main thread for statistics
	cafxdp_program program;
	uint32_t attach_mode; // XDP_FLAGS_DRV_MODE or XDP_FLAGS_SKB_MODE; 0: not attached
	bool zero_copy;
	bool native; // attached with XDP_FLAGS_DRV_MODE (kept after detaching, for the report)
	// rx_frames frames start in the fill ring; the rest, if any, in tx_free.
	uint32_t rx_frames;
	uint32_t tx_frames;
	uint64_t *tx_free; // a stack of UMEM addresses of TX frames that are ours
	uint32_t tx_free_count;
	uint64_t frame_mask; // ~(umem_frame_size - 1): an address to its frame
	struct ref_loop_stats stats;
	// Filled in before teardown.
	struct xdp_statistics statistics;
	uint64_t program_redirected;
	uint64_t program_passed;
};

enum ref_end_status { REF_END_STARTING, REF_END_READY, REF_END_FAILED, REF_END_DONE };

struct ref_end {
	int index;  // enum ref_end_index
	const char *name;
	const struct ref_options *options;
	struct ref_direction *sending;    // the direction whose frames this end generates
	struct ref_direction *receiving;  // the direction whose frames this end checks / drops
	struct ref_direction *forwarding; // l2fwd: the direction this end sends back
	struct ref_direction *relaying[2]; // forward, F: the direction arriving on ports[i], leaving by the other
	const void *object_bytes;
	size_t object_size;
	int netns_fd; // -1 when no namespace was given
	// A, B: ports[0]. F: ports[0] on FA, which registered the UMEM, and
	// ports[1] on FB, a second socket on that UMEM.
	struct ref_port ports[2];
	int port_count;
	_Atomic int status;
	char error[512];
	pthread_t thread;
};

// How many ends the mode has: A and B, and F in forward mode.
static inline int ref_end_count(const struct ref_options *options)
{
	return options->mode == REF_FORWARD ? 3 : 2;
}

// port.c. Before the end's thread starts: its index, name, options, and its
// ports named, with nothing open.
void ref_end_init(struct ref_end *end, int index, const struct ref_options *options, const void *object_bytes,
		  size_t object_size);
// Called on the end's own thread, for all the end's ports.
int ref_port_open(struct ref_end *end);   // 0, or -1 with end->error set
void ref_port_read_statistics(struct ref_end *end);
void ref_port_close(struct ref_end *end);
// For the watchdog when a thread hangs: detach what is attached, from any thread.
void ref_port_emergency_detach(struct ref_end *end);

// loop.c: the body of an end's thread (F's too).
void *ref_end_main(void *argument);

// instruction.c: the instruction-loop mode, all of it on the calling thread.
// Returns the exit code.
int ref_instruction_loop_main(const struct ref_options *options, const void *object, size_t object_size);

// report.c; `ends` holds ref_end_count(options) ends.
void ref_report_header(const struct ref_options *options, struct ref_end *ends);

struct ref_sample {
	uint64_t sent, received, received_bytes, gaps, forwarded, socket_drops;
};
void ref_sample_direction(const struct ref_direction *direction, struct ref_end *ends,
			  enum ref_mode mode, struct ref_sample *out);
void ref_report_interval(const struct ref_options *options, struct ref_direction *directions,
			 int count, uint64_t elapsed, uint64_t interval,
			 const struct ref_sample *previous, const struct ref_sample *current);
void ref_report_summary(const struct ref_options *options, struct ref_direction *directions,
			int count, struct ref_end *ends, double seconds,
			const struct ref_sample *at_stop, int stop_reason);

const char *ref_mode_name(enum ref_mode mode);

#endif
