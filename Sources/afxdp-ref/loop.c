// The ring loop of one end: the whole data path of the reference.
//
// Per pass: reap the completion ring, send one burst of up to --batch frames
// (while running), kick the TX ring if the kernel has descriptors it has not
// taken, then receive one burst (check, count, or forward it). Nothing is
// queued in user space: a frame is either ours (free list, or not yet
// released from RX) or the kernel's.
//
// F (forward mode) runs its own loop over its two ports: a burst from one
// port's RX goes out of the other's TX as it is (same UMEM frames, no copy),
// and comes back, once sent, to the fill ring of the port it arrived on.
#include "ref.h"
#include "frame.h"

#include <errno.h>
#include <stdarg.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

// Idle passes in a row after which the thread yields its CPU once: the two
// ends share two cores with the kernel's work and with each other.
#define IDLE_PASSES_BEFORE_YIELD 64

// The hot loop's view of one port of its end, on the thread's stack.
struct loop {
	struct ref_end *end;
	struct ref_port *port;
	struct ref_loop_stats *stats;
	uint8_t *area;
	uint64_t frame_mask;
	uint32_t batch;
	uint32_t frame_length;
	int fd;
	bool need_wakeup;
	bool busy_poll;
};

__attribute__((format(printf, 2, 3)))
static void loop_fail(struct loop *loop, const char *format, ...)
{
	struct ref_end *end = loop->end;
	if (!end->error[0]) {
		va_list arguments;
		va_start(arguments, format);
		vsnprintf(end->error, sizeof(end->error), format, arguments);
		va_end(arguments);
	}
	ref_request_stop(REF_STOP_FAILURE);
}

// --- TX -----------------------------------------------------------------

// Kicks the kernel when it holds TX descriptors it has not taken yet and
// (with need_wakeup) asks to be woken. In copy mode the kernel moves at most
// 32 descriptors per kick, and only on a kick. Returns -1 on a real error.
static inline int kick(struct loop *loop)
{
	struct xsk_ring_prod *tx = &loop->port->rings.tx;
	if (tx->cached_prod == __atomic_load_n(tx->consumer, __ATOMIC_ACQUIRE))
		return 0; /* matches the kernel's release of the consumer index */
	if (loop->need_wakeup && !xsk_ring_prod__needs_wakeup(tx))
		return 0;
	loop->stats->kicks++;
	if (sendto(loop->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
		return 0;
	int error = errno;
	if (error == EAGAIN) {
		loop->stats->kick_again++; // sent its budget; the rest goes on a later kick
		return 0;
	}
	if (error == ENOBUFS || error == EBUSY || error == ENETDOWN || error == EINTR) {
		loop->stats->kick_busy++; // the kernel is busy: try again on a later pass
		return 0;
	}
	loop_fail(loop, "sendto (TX kick) failed: %s", strerror(error));
	return -1;
}

// Generator: the completion ring gives TX frames back to the free list.
static inline uint32_t reap_sent(struct loop *loop, struct ref_direction *direction)
{
	struct ref_port *port = loop->port;
	struct xsk_ring_cons *completion = &port->rings.completion;
	uint32_t index;
	uint32_t count = xsk_ring_cons__peek(completion, port->tx_frames, &index);
	if (count == 0)
		return 0;
	if (port->tx_free_count + count > port->tx_frames) {
		// More back than we sent: a frame would be owned twice.
		loop_fail(loop, "the completion ring gave back %u frames with %u of %u already free",
			  count, port->tx_free_count, port->tx_frames);
		return 0;
	}
	uint64_t *free_list = port->tx_free + port->tx_free_count;
	for (uint32_t i = 0; i < count; i++)
		free_list[i] = *xsk_ring_cons__comp_addr(completion, index + i) & loop->frame_mask;
	xsk_ring_cons__release(completion, count);
	port->tx_free_count += count;
	direction->sender.completed += count;
	atomic_store_explicit(&direction->counters.sent, direction->sender.completed, memory_order_relaxed);
	return count;
}

// Generator: one burst of fresh frames, one timestamp for the burst.
static inline uint32_t send_burst(struct loop *loop, struct ref_direction *direction)
{
	struct ref_port *port = loop->port;
	struct xsk_ring_prod *tx = &port->rings.tx;
	uint32_t count = loop->batch < port->tx_free_count ? loop->batch : port->tx_free_count;
	if (count == 0)
		return 0;
	uint32_t room = xsk_prod_nb_free(tx, count);
	if (room < count)
		count = room;
	uint32_t index;
	if (count == 0 || xsk_ring_prod__reserve(tx, count, &index) != count)
		return 0;
	const uint32_t length = loop->frame_length;
	const uint64_t timestamp = ref_now();
	uint64_t sequence = direction->sender.next_sequence;
	uint64_t *free_list = port->tx_free;
	uint32_t free_count = port->tx_free_count;
	for (uint32_t i = 0; i < count; i++) {
		uint64_t address = free_list[--free_count];
		ref_frame_write(loop->area + address, length, sequence++, timestamp);
		struct xdp_desc *descriptor = xsk_ring_prod__tx_desc(tx, index + i);
		descriptor->addr = address;
		descriptor->len = length;
		descriptor->options = 0;
	}
	xsk_ring_prod__submit(tx, count);
	port->tx_free_count = free_count;
	direction->sender.next_sequence = sequence;
	direction->sender.submitted += count;
	return count;
}

// --- RX -----------------------------------------------------------------

// An empty RX ring: wake the kernel if it asked (or always, busy polling).
static inline void receive_wakeup(struct loop *loop)
{
	if (loop->busy_poll || (loop->need_wakeup && xsk_ring_prod__needs_wakeup(&loop->port->rings.fill))) {
		loop->stats->rx_wakeups++;
		recvfrom(loop->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
	}
}

// Takes up to a batch from RX and as many fill-ring slots; 0 if either is
// not there (the RX descriptors then stay for the next pass).
static inline uint32_t receive_take(struct loop *loop, uint32_t *rx_index, uint32_t *fill_index)
{
	struct ref_port *port = loop->port;
	uint32_t count = xsk_ring_cons__peek(&port->rings.rx, loop->batch, rx_index);
	if (count == 0) {
		receive_wakeup(loop);
		return 0;
	}
	if (xsk_ring_prod__reserve(&port->rings.fill, count, fill_index) != count) {
		xsk_ring_cons__cancel(&port->rings.rx, count);
		loop->stats->fill_full++;
		return 0;
	}
	return count;
}

static inline void receive_publish(struct ref_direction *direction)
{
	struct ref_receiver *receiver = &direction->receiver;
	atomic_store_explicit(&direction->counters.received, receiver->packets, memory_order_relaxed);
	atomic_store_explicit(&direction->counters.received_bytes, receiver->bytes, memory_order_relaxed);
	atomic_store_explicit(&direction->counters.gaps, receiver->gaps, memory_order_relaxed);
}

// Receiver (duplex, tx-only, l2fwd's A): checks every frame, records its
// latency, and gives the frames straight back to the fill ring.
static inline uint32_t receive_checked(struct loop *loop, struct ref_direction *direction)
{
	struct ref_port *port = loop->port;
	uint32_t rx_index, fill_index;
	uint32_t count = receive_take(loop, &rx_index, &fill_index);
	if (count == 0)
		return 0;
	struct ref_receiver *receiver = &direction->receiver;
	const uint64_t now = ref_now();
	uint64_t expected = receiver->expected;
	uint64_t bytes = 0, gaps = 0, reordered = 0, corrupted = 0, foreign = 0;
	// Equal latencies come in runs (a burst shares one send timestamp and
	// one receive time): recorded once per run.
	uint64_t run_value = 0, run_count = 0;
	for (uint32_t i = 0; i < count; i++) {
		const struct xdp_desc *descriptor = xsk_ring_cons__rx_desc(&port->rings.rx, rx_index + i);
		uint64_t address = descriptor->addr;
		uint32_t length = descriptor->len;
		bytes += length;
		uint64_t sequence, timestamp;
		enum ref_verdict verdict = ref_frame_check(loop->area + address, length, &sequence, &timestamp);
		*xsk_ring_prod__fill_addr(&port->rings.fill, fill_index + i) = address & loop->frame_mask;
		if (verdict != REF_INTACT) {
			// A corrupted frame's sequence number and timestamp cannot be trusted.
			if (verdict == REF_FOREIGN)
				foreign++;
			else
				corrupted++;
			continue;
		}
		if (sequence == expected) {
			expected++;
		} else if (sequence > expected) {
			gaps += sequence - expected;
			expected = sequence + 1;
		} else {
			reordered++;
		}
		uint64_t latency = now > timestamp ? now - timestamp : 0;
		if (latency == run_value) {
			run_count++;
		} else {
			if (run_count)
				ref_histogram_record(&receiver->latency, run_value, run_count);
			run_value = latency;
			run_count = 1;
		}
	}
	if (run_count)
		ref_histogram_record(&receiver->latency, run_value, run_count);
	xsk_ring_prod__submit(&port->rings.fill, count);
	xsk_ring_cons__release(&port->rings.rx, count);
	receiver->expected = expected;
	receiver->packets += count;
	receiver->bytes += bytes;
	receiver->gaps += gaps;
	receiver->reordered += reordered;
	receiver->corrupted += corrupted;
	receiver->foreign += foreign;
	receive_publish(direction);
	return count;
}

// Receiver in rx-drop: counts, reads no payload, releases at once.
static inline uint32_t receive_dropped(struct loop *loop, struct ref_direction *direction)
{
	struct ref_port *port = loop->port;
	uint32_t rx_index, fill_index;
	uint32_t count = receive_take(loop, &rx_index, &fill_index);
	if (count == 0)
		return 0;
	uint64_t bytes = 0;
	for (uint32_t i = 0; i < count; i++) {
		const struct xdp_desc *descriptor = xsk_ring_cons__rx_desc(&port->rings.rx, rx_index + i);
		bytes += descriptor->len;
		*xsk_ring_prod__fill_addr(&port->rings.fill, fill_index + i) = descriptor->addr & loop->frame_mask;
	}
	xsk_ring_prod__submit(&port->rings.fill, count);
	xsk_ring_cons__release(&port->rings.rx, count);
	direction->receiver.packets += count;
	direction->receiver.bytes += bytes;
	receive_publish(direction);
	return count;
}

// --- Forwarder (l2fwd's B) ----------------------------------------------

// Forwarded frames are done: back into the fill ring.
static inline uint32_t reap_forwarded(struct loop *loop, struct ref_direction *direction)
{
	struct ref_port *port = loop->port;
	struct xsk_ring_cons *completion = &port->rings.completion;
	uint32_t index, fill_index;
	uint32_t count = xsk_ring_cons__peek(completion, port->rx_frames, &index);
	if (count == 0)
		return 0;
	if (xsk_ring_prod__reserve(&port->rings.fill, count, &fill_index) != count) {
		xsk_ring_cons__cancel(completion, count);
		loop->stats->fill_full++;
		return 0;
	}
	for (uint32_t i = 0; i < count; i++)
		*xsk_ring_prod__fill_addr(&port->rings.fill, fill_index + i) =
			*xsk_ring_cons__comp_addr(completion, index + i) & loop->frame_mask;
	xsk_ring_prod__submit(&port->rings.fill, count);
	xsk_ring_cons__release(completion, count);
	direction->forwarder.forwarded += count;
	atomic_store_explicit(&direction->counters.forwarded, direction->forwarder.forwarded, memory_order_relaxed);
	return count;
}

// Received frames go back out of the same port from the same UMEM frame,
// MAC addresses swapped in place: no copy. What the TX ring has no room for
// stays in RX for the next pass.
static inline uint32_t forward_burst(struct loop *loop, struct ref_direction *direction)
{
	struct ref_port *port = loop->port;
	uint32_t rx_index, tx_index;
	uint32_t count = xsk_ring_cons__peek(&port->rings.rx, loop->batch, &rx_index);
	if (count == 0) {
		receive_wakeup(loop);
		return 0;
	}
	uint32_t room = xsk_prod_nb_free(&port->rings.tx, count);
	if (room < count) {
		xsk_ring_cons__cancel(&port->rings.rx, count - room);
		direction->forwarder.held_back += count - room;
		count = room;
		if (count == 0)
			return 0;
	}
	if (xsk_ring_prod__reserve(&port->rings.tx, count, &tx_index) != count) {
		xsk_ring_cons__cancel(&port->rings.rx, count);
		return 0;
	}
	for (uint32_t i = 0; i < count; i++) {
		const struct xdp_desc *in = xsk_ring_cons__rx_desc(&port->rings.rx, rx_index + i);
		uint8_t *frame = loop->area + in->addr;
		if (in->len >= 12) {
			uint8_t destination[6];
			memcpy(destination, frame, 6);
			memcpy(frame, frame + 6, 6);
			memcpy(frame + 6, destination, 6);
		}
		struct xdp_desc *out = xsk_ring_prod__tx_desc(&port->rings.tx, tx_index + i);
		out->addr = in->addr;
		out->len = in->len;
		out->options = 0;
	}
	xsk_ring_prod__submit(&port->rings.tx, count);
	xsk_ring_cons__release(&port->rings.rx, count);
	return count;
}

// --- Relay (forward's F) -------------------------------------------------

// A burst from `in`'s RX goes out of `out`'s TX as it arrived: the same UMEM
// frames (both sockets share the UMEM), addresses and lengths unchanged, no
// byte of the frames read or written. What `out`'s TX ring has no room for
// stays in `in`'s RX for the next pass.
static inline uint32_t relay_burst(struct loop *in, struct loop *out, struct ref_direction *direction)
{
	struct xsk_ring_cons *rx = &in->port->rings.rx;
	struct xsk_ring_prod *tx = &out->port->rings.tx;
	uint32_t rx_index, tx_index;
	uint32_t count = xsk_ring_cons__peek(rx, in->batch, &rx_index);
	if (count == 0) {
		receive_wakeup(in);
		return 0;
	}
	uint32_t room = xsk_prod_nb_free(tx, count);
	if (room < count) {
		xsk_ring_cons__cancel(rx, count - room);
		direction->forwarder.held_back += count - room;
		count = room;
		if (count == 0)
			return 0;
	}
	if (xsk_ring_prod__reserve(tx, count, &tx_index) != count) {
		xsk_ring_cons__cancel(rx, count);
		return 0;
	}
	for (uint32_t i = 0; i < count; i++) {
		const struct xdp_desc *received = xsk_ring_cons__rx_desc(rx, rx_index + i);
		struct xdp_desc *sent = xsk_ring_prod__tx_desc(tx, tx_index + i);
		sent->addr = received->addr;
		sent->len = received->len;
		sent->options = 0;
	}
	xsk_ring_prod__submit(tx, count);
	xsk_ring_cons__release(rx, count);
	return count;
}

// Frames `out` has sent are done: back into the fill ring of `in`, the port
// they were received on (each fill ring keeps its own half of the UMEM). The
// address may carry the frame's offset: masked to the frame's start.
static inline uint32_t reap_relayed(struct loop *out, struct loop *in, struct ref_direction *direction)
{
	struct xsk_ring_cons *completion = &out->port->rings.completion;
	struct xsk_ring_prod *fill = &in->port->rings.fill;
	uint32_t index, fill_index;
	uint32_t count = xsk_ring_cons__peek(completion, in->port->rx_frames, &index);
	if (count == 0)
		return 0;
	if (xsk_ring_prod__reserve(fill, count, &fill_index) != count) {
		// The fill ring is as large as `in`'s half of the UMEM, but the
		// kernel publishes what it took from it only when it has used up
		// what it read last time: until then the frames wait here.
		xsk_ring_cons__cancel(completion, count);
		in->stats->fill_full++;
		return 0;
	}
	for (uint32_t i = 0; i < count; i++)
		*xsk_ring_prod__fill_addr(fill, fill_index + i) =
			*xsk_ring_cons__comp_addr(completion, index + i) & in->frame_mask;
	xsk_ring_prod__submit(fill, count);
	xsk_ring_cons__release(completion, count);
	direction->forwarder.forwarded += count;
	atomic_store_explicit(&direction->counters.forwarded, direction->forwarder.forwarded, memory_order_relaxed);
	return count;
}

// --- The thread ---------------------------------------------------------

static int pin(struct ref_end *end)
{
	int cpu = end->options->cpu[end->index];
	if (cpu < 0)
		return 0;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	int error = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	if (error) {
		snprintf(end->error, sizeof(end->error), "cannot pin end %s's thread to CPU %d: %s",
			 end->name, cpu, strerror(error));
		return -1;
	}
	return 0;
}

// Waits (bounded) while the phase is `phase`; returns the next one.
static int wait_while(int phase)
{
	for (;;) {
		int now = atomic_load_explicit(&ref_phase, memory_order_acquire);
		if (now != phase)
			return now;
		if (ref_now() > atomic_load_explicit(&ref_hard_deadline, memory_order_relaxed))
			return REF_STOPPED;
		ref_sleep_ns(50000);
	}
}

static void wait_until_stopped(void)
{
	while (atomic_load_explicit(&ref_phase, memory_order_acquire) < REF_STOPPED &&
	       ref_now() <= atomic_load_explicit(&ref_hard_deadline, memory_order_relaxed))
		ref_sleep_ns(50000);
}

// Addresses and EtherType into every TX frame, once. The frames go to the
// receiver, or to the forwarder's port they arrive on: l2fwd's B, forward's
// F port facing the sender.
static void write_headers(struct ref_end *end, struct ref_direction *direction, struct ref_end *ends)
{
	const uint8_t *destination = direction->forwarder_end >= 0
		? ends[direction->forwarder_end].ports[direction->forwarder_port].mac
		: ends[direction->receiver_end].ports[0].mac;
	struct ref_port *port = &end->ports[0];
	for (uint32_t i = 0; i < port->tx_free_count; i++)
		ref_frame_write_header((uint8_t *)port->area + port->tx_free[i], destination, port->mac);
}

static struct loop loop_of(struct ref_end *end, struct ref_port *port, uint8_t *area)
{
	return (struct loop){
		.end = end,
		.port = port,
		.stats = &port->stats,
		.area = area,
		.frame_mask = port->frame_mask,
		.batch = end->options->batch,
		.frame_length = end->options->frame_size,
		.fd = atomic_load(&port->fd),
		.need_wakeup = end->options->need_wakeup,
		.busy_poll = end->options->busy_poll,
	};
}

// Between two passes: yield the CPU after a run of idle ones, and give up
// at the hard deadline whatever the phase says. False: stop.
static inline bool pace(uint32_t progress, uint32_t *idle, uint64_t iterations)
{
	if (progress) {
		*idle = 0;
	} else if (++*idle >= IDLE_PASSES_BEFORE_YIELD) {
		*idle = 0;
		sched_yield();
	}
	return (iterations & 1023) != 0 ||
	       ref_now() <= atomic_load_explicit(&ref_hard_deadline, memory_order_relaxed);
}

static void run(struct ref_end *end)
{
	struct ref_port *port = &end->ports[0];
	struct loop loop = loop_of(end, port, port->area);
	struct ref_direction *sending = end->sending;
	struct ref_direction *receiving = end->receiving;
	struct ref_direction *forwarding = end->forwarding;
	const bool check = receiving && receiving->checked;
	uint32_t idle = 0;
	uint64_t iterations = 0;
	for (;;) {
		int phase = atomic_load_explicit(&ref_phase, memory_order_relaxed);
		if (phase >= REF_STOPPED || end->error[0])
			break;
		uint32_t progress = 0;
		if (sending) {
			progress += reap_sent(&loop, sending);
			if (phase == REF_RUNNING)
				progress += send_burst(&loop, sending);
			if (kick(&loop))
				break;
		}
		if (forwarding) {
			progress += reap_forwarded(&loop, forwarding);
			progress += forward_burst(&loop, forwarding);
			if (kick(&loop))
				break;
		}
		if (receiving)
			progress += check ? receive_checked(&loop, receiving) : receive_dropped(&loop, receiving);
		if (!pace(progress, &idle, ++iterations))
			break;
	}
	port->stats.iterations = iterations;
}

// F: per pass, for each port s and the other o: relay a burst from s's RX to
// o's TX, kick o's TX, and give what o has sent back to s's fill ring. It
// runs until stopped (through the drain too): F sends nothing of its own.
static void run_relay(struct ref_end *end)
{
	uint8_t *area = end->ports[0].area; // the UMEM FA registered; F never reads it
	struct loop loops[2] = { loop_of(end, &end->ports[0], area), loop_of(end, &end->ports[1], area) };
	uint32_t idle = 0;
	uint64_t iterations = 0;
	for (;;) {
		int phase = atomic_load_explicit(&ref_phase, memory_order_relaxed);
		if (phase >= REF_STOPPED || end->error[0])
			break;
		uint32_t progress = 0;
		bool failed = false;
		for (int s = 0; s < 2 && !failed; s++) {
			struct loop *in = &loops[s], *out = &loops[1 - s];
			struct ref_direction *direction = end->relaying[s];
			progress += relay_burst(in, out, direction);
			failed = kick(out) != 0;
			progress += reap_relayed(out, in, direction);
		}
		if (failed || !pace(progress, &idle, ++iterations))
			break;
	}
	loops[0].stats->iterations = loops[1].stats->iterations = iterations;
}

void *ref_end_main(void *argument)
{
	struct ref_end *end = argument;
	struct ref_end *ends = end - end->index;
	if (pin(end) || ref_port_open(end)) {
		atomic_store_explicit(&end->status, REF_END_FAILED, memory_order_release);
		return NULL;
	}
	atomic_store_explicit(&end->status, REF_END_READY, memory_order_release);

	// The main thread moves on once all ends are ready (the peers' MAC
	// addresses are known then) or stops the run.
	int phase = wait_while(REF_SETUP);
	if (phase == REF_RUNNING || phase == REF_DRAINING) {
		if (end->sending)
			write_headers(end, end->sending, ends);
		if (end->index == REF_F)
			run_relay(end);
		else
			run(end);
	}
	// Stay until the main thread has stopped reading this port's socket.
	wait_until_stopped();
	ref_port_read_statistics(end);
	ref_port_close(end);
	atomic_store_explicit(&end->status, end->error[0] ? REF_END_FAILED : REF_END_DONE, memory_order_release);
	return NULL;
}
