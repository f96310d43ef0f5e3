// instruction-loop: a fixed amount of work on one thread, with no clock, for
// callgrind (scripts/perf-check counts the user-space instructions of
// `instruction_loop` and everything it calls). The same work as
// `afxdp-bench instruction-loop` does through the engine
// (Sources/afxdp-bench/InstructionLoop.swift), done on the bare libxdp rings:
//
// - N frames A->B in bursts of exactly --batch (the engine sends whole lists,
//   so the last burst may take the count past N), a burst only while fewer
//   than 256 frames are in flight (sent - received: veth's queue towards an
//   XDP peer), every frame written whole, a byte at a time, as
//   TestFrame.write does (addresses, EtherType, sequence, timestamp 0,
//   payload), its descriptor given its length;
// - A's TX kicked as the threaded loop does (once a pass, when the kernel has
//   descriptors it has not taken and the ring asks to be woken), A's
//   completion ring reaped into its free list;
// - B's RX read a burst at a time, every frame parsed and checked as
//   TestFrame.parse does (length, EtherType, every payload byte) and counted
//   as the Swift loop counts it (corrupted; out of order when the sequence is
//   not the last one plus one), and the frames given back to B's fill ring.
//
// Ports are opened on this thread: each end's namespace is entered in turn
// (namespaces are per thread; a socket keeps the one it was made in), and
// entered again to detach the program at the end.
#include "ref.h"
#include "frame.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

// Frames sent and not yet received, at most: what veth queues for an XDP peer.
#define IN_FLIGHT_LIMIT 256
// Passes in a row without progress after which the loop gives up (as the Swift loop).
#define IDLE_PASS_LIMIT 1000000
#define ERROR_TEXT 256

struct instruction_work {
	uint64_t packets;
	uint32_t batch;
	uint32_t frame_length;
	bool need_wakeup;
	const uint8_t *source;      // A's MAC address
	const uint8_t *destination; // B's MAC address
};

// Kept on the loop's stack (in registers once inlined), copied out at the end.
struct tally {
	uint64_t received, corrupted, out_of_order;
	uint64_t kicks, kick_again, kick_busy;
};

struct instruction_counts {
	uint64_t sent, passes;
	struct tally tally;
	char error[ERROR_TEXT];
};

// A's TX: kick when the kernel has descriptors it has not taken and (with
// need_wakeup) the ring asks for it. Copy mode moves at most 32 a kick.
static inline int kick(struct ref_port *port, int fd, bool need_wakeup, struct tally *tally, char *error_text)
{
	struct xsk_ring_prod *tx = &port->rings.tx;
	if (tx->cached_prod == __atomic_load_n(tx->consumer, __ATOMIC_ACQUIRE))
		return 0;
	if (need_wakeup && !xsk_ring_prod__needs_wakeup(tx))
		return 0;
	tally->kicks++;
	if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
		return 0;
	int error = errno;
	if (error == EAGAIN) {
		tally->kick_again++;
		return 0;
	}
	if (error == ENOBUFS || error == EBUSY || error == ENETDOWN || error == EINTR) {
		tally->kick_busy++;
		return 0;
	}
	snprintf(error_text, ERROR_TEXT, "sendto (TX kick) failed: %s", strerror(error));
	return -1;
}

// A's completion ring: the frames back on its free list.
static inline int reap(struct ref_port *port, char *error_text)
{
	struct xsk_ring_cons *completion = &port->rings.completion;
	uint32_t index;
	uint32_t count = xsk_ring_cons__peek(completion, port->tx_frames, &index);
	if (count == 0)
		return 0;
	if (port->tx_free_count + count > port->tx_frames) {
		snprintf(error_text, ERROR_TEXT, "the completion ring gave back %u frames with %u of %u already free", count,
			 port->tx_free_count, port->tx_frames);
		return -1;
	}
	uint64_t *free_list = port->tx_free + port->tx_free_count;
	for (uint32_t i = 0; i < count; i++)
		free_list[i] = *xsk_ring_cons__comp_addr(completion, index + i) & port->frame_mask;
	xsk_ring_cons__release(completion, count);
	port->tx_free_count += count;
	return (int)count;
}

// A's TX: one burst of exactly `batch` frames, sequences from `sequence` on;
// false if the free list or the TX ring has no room for a whole one.
static inline bool send_burst(struct ref_port *port, const struct instruction_work *work, uint64_t sequence)
{
	struct xsk_ring_prod *tx = &port->rings.tx;
	const uint32_t count = work->batch, length = work->frame_length;
	uint32_t index;
	if (port->tx_free_count < count || xsk_ring_prod__reserve(tx, count, &index) != count)
		return false;
	uint8_t *area = port->area;
	uint64_t *free_list = port->tx_free;
	uint32_t free_count = port->tx_free_count;
	for (uint32_t i = 0; i < count; i++) {
		uint64_t address = free_list[--free_count];
		ref_test_frame_write(area + address, length, sequence++, 0, work->source, work->destination);
		struct xdp_desc *descriptor = xsk_ring_prod__tx_desc(tx, index + i);
		descriptor->addr = address;
		descriptor->len = length;
		descriptor->options = 0;
	}
	xsk_ring_prod__submit(tx, count);
	port->tx_free_count = free_count;
	return true;
}

// B's RX: up to a batch, each frame checked, then all back to the fill ring.
// 0 if nothing arrived, or the fill ring has no room (they stay in RX).
static inline uint32_t receive(struct ref_port *port, int fd, const struct instruction_work *work,
			       struct tally *tally, uint64_t *next)
{
	uint32_t rx_index, fill_index;
	uint32_t count = xsk_ring_cons__peek(&port->rings.rx, work->batch, &rx_index);
	if (count == 0) {
		if (work->need_wakeup && xsk_ring_prod__needs_wakeup(&port->rings.fill))
			recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
		return 0;
	}
	if (xsk_ring_prod__reserve(&port->rings.fill, count, &fill_index) != count) {
		xsk_ring_cons__cancel(&port->rings.rx, count);
		return 0;
	}
	const uint8_t *area = port->area;
	uint64_t expected = *next, received = 0, corrupted = 0, out_of_order = 0;
	for (uint32_t i = 0; i < count; i++) {
		const struct xdp_desc *descriptor = xsk_ring_cons__rx_desc(&port->rings.rx, rx_index + i);
		uint64_t address = descriptor->addr;
		uint64_t sequence, timestamp;
		bool intact;
		bool parsed = ref_test_frame_parse(area + address, descriptor->len, &sequence, &timestamp, &intact);
		*xsk_ring_prod__fill_addr(&port->rings.fill, fill_index + i) = address & port->frame_mask;
		if (!parsed) {
			corrupted++; // not a test frame: counted, not received (as the Swift loop)
			continue;
		}
		if (!intact)
			corrupted++;
		if (sequence != expected)
			out_of_order++;
		expected = sequence + 1;
		received++;
	}
	xsk_ring_prod__submit(&port->rings.fill, count);
	xsk_ring_cons__release(&port->rings.rx, count);
	*next = expected;
	tally->received += received;
	tally->corrupted += corrupted;
	tally->out_of_order += out_of_order;
	return count;
}

// The measured part: callgrind --toggle-collect=instruction_loop. 0, or -1
// with counts->error set.
__attribute__((noinline))
int instruction_loop(struct ref_port *a, struct ref_port *b, const struct instruction_work *work,
		     struct instruction_counts *counts)
{
	const int fd_a = atomic_load_explicit(&a->fd, memory_order_relaxed);
	const int fd_b = atomic_load_explicit(&b->fd, memory_order_relaxed);
	const uint64_t packets = work->packets;
	// Whole bursts, as the engine sends whole lists.
	const uint64_t total = (packets + work->batch - 1) / work->batch * work->batch;
	struct tally tally = { 0 };
	uint64_t sent = 0, next = 0, passes = 0;
	uint32_t idle = 0;
	int result = 0;
	while (tally.received < total) {
		passes++;
		int reaped = reap(a, counts->error);
		if (reaped < 0) {
			result = -1;
			break;
		}
		bool moved = reaped > 0;
		while (sent < packets && sent - tally.received < IN_FLIGHT_LIMIT && send_burst(a, work, sent)) {
			sent += work->batch;
			moved = true;
		}
		if (kick(a, fd_a, work->need_wakeup, &tally, counts->error)) {
			result = -1;
			break;
		}
		if (receive(b, fd_b, work, &tally, &next))
			moved = true;
		if (moved) {
			idle = 0;
		} else if (++idle > IDLE_PASS_LIMIT || atomic_load_explicit(&ref_stop_reason, memory_order_relaxed)) {
			snprintf(counts->error, sizeof(counts->error), "no progress: sent %llu, received %llu",
				 (unsigned long long)sent, (unsigned long long)tally.received);
			result = -1;
			break;
		}
	}
	counts->sent = sent;
	counts->passes = passes;
	counts->tally = tally;
	return result;
}

// Enters end i's namespace, or the one the process started in if it has none.
static int enter(struct ref_end *end)
{
	int fd = end->netns_fd >= 0 ? end->netns_fd : ref_original_netns_fd;
	if (fd >= 0 && setns(fd, CLONE_NEWNET) != 0) {
		snprintf(end->error, sizeof(end->error), "cannot enter the namespace of end %s: %s", end->name,
			 strerror(errno));
		return -1;
	}
	return 0;
}

int ref_instruction_loop_main(const struct ref_options *options, const void *object, size_t object_size)
{
	struct ref_end ends[2];
	for (int i = 0; i < 2; i++)
		ref_end_init(&ends[i], i, options, object, object_size);
	int opened = 0, exit_code = 0;
	for (int i = 0; i < 2; i++) {
		struct ref_end *end = &ends[i];
		// A port without a namespace is made where the process started,
		// not in the other end's namespace, which this thread may be in.
		if ((!options->namespace[i] && enter(end)) || ref_port_open(end)) {
			fprintf(stderr, "afxdp-ref: end %s (%s): %s\n", end->name, options->interface[i], end->error);
			exit_code = 2;
			goto out;
		}
		opened = i + 1;
	}

	struct instruction_work work = {
		.packets = options->packets,
		.batch = options->batch,
		.frame_length = options->frame_size,
		.need_wakeup = options->need_wakeup,
		.source = ends[0].ports[0].mac,
		.destination = ends[1].ports[0].mac,
	};
	struct instruction_counts counts;
	memset(&counts, 0, sizeof(counts));
	int result = instruction_loop(&ends[0].ports[0], &ends[1].ports[0], &work, &counts);
	const struct tally *tally = &counts.tally;
	printf("instruction-loop: %llu of %llu frames received, %llu corrupted, %llu out of order\n",
	       (unsigned long long)tally->received, (unsigned long long)counts.sent,
	       (unsigned long long)tally->corrupted, (unsigned long long)tally->out_of_order);
	printf("instruction-loop: %llu passes, %llu kicks (%llu EAGAIN, %llu busy)\n",
	       (unsigned long long)counts.passes, (unsigned long long)tally->kicks,
	       (unsigned long long)tally->kick_again, (unsigned long long)tally->kick_busy);
	int reason = atomic_load(&ref_stop_reason);
	if (reason) {
		exit_code = 128 + reason;
	} else if (result) {
		fprintf(stderr, "afxdp-ref: instruction-loop: %s\n", counts.error);
		exit_code = 2;
	} else if (tally->received != counts.sent || tally->corrupted || tally->out_of_order) {
		exit_code = 1;
	}

out:
	// Each port closed in its own namespace: the program is detached there.
	for (int i = opened - 1; i >= 0; i--) {
		if (enter(&ends[i])) {
			// Not in its namespace: detaching by index could hit another interface.
			ends[i].ports[0].attach_mode = 0;
			fprintf(stderr, "afxdp-ref: %s; the XDP program stays on %s\n", ends[i].error,
				options->interface[i]);
			if (!exit_code)
				exit_code = 2;
		}
		ref_port_close(&ends[i]);
	}
	for (int i = 0; i < 2; i++)
		if (ends[i].netns_fd >= 0)
			close(ends[i].netns_fd);
	return exit_code;
}
