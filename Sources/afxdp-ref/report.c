// What afxdp-ref prints, in afxdp-bench's shapes: a header, a line per second
// per direction, the summary tables, and with --json one JSON object (with
// afxdp-bench's field names) as the last line. Ports are listed end by end:
// A0, B0, and in forward mode F's FA0 and FB0.
#include "ref.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

const char *ref_mode_name(enum ref_mode mode)
{
	switch (mode) {
	case REF_DUPLEX: return "duplex";
	case REF_TX_ONLY: return "tx-only";
	case REF_RX_DROP: return "rx-drop";
	case REF_L2FWD: return "l2fwd";
	case REF_FORWARD: return "forward";
	case REF_INSTRUCTION_LOOP: return "instruction-loop";
	}
	return "?";
}

static void format_mac(const uint8_t mac[6], char out[18])
{
	snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

// Every port of every end, in order, for the per-port lists.
#define FOR_EACH_PORT(ends, end_count, end, port)                                                   \
	for (const struct ref_end *end = (ends); end < (ends) + (end_count); end++)                 \
		for (const struct ref_port *port = end->ports; port < end->ports + end->port_count; port++)

void ref_report_header(const struct ref_options *options, struct ref_end *ends)
{
	const int end_count = ref_end_count(options);
	for (int i = 0; i < end_count; i++) {
		printf("end %s:", ends[i].name);
		for (int p = 0; p < ends[i].port_count; p++) {
			char mac[18];
			format_mac(ends[i].ports[p].mac, mac);
			printf("%s %s %s", p ? "," : "", ends[i].ports[p].interface, mac);
		}
		if (options->namespace[i])
			printf(" (namespace %s)", options->namespace[i]);
		if (ends[i].port_count > 1)
			printf(", one UMEM");
		if (options->cpu[i] >= 0)
			printf(", thread on CPU %d", options->cpu[i]);
		printf("\n");
	}
	FOR_EACH_PORT(ends, end_count, end, port) {
		printf("port %s0: %s, %s XDP%s\n", port->name, port->zero_copy ? "zero-copy" : "copy mode",
		       port->native ? "native" : "generic",
		       end->port_count == 1 ? "" : port == end->ports ? ", its socket registered the UMEM"
								   : ", a second socket on that UMEM");
	}
	printf("%s: %.1f s, %u-byte frames, %u per burst, rings %u, UMEM frames %u x %u, need_wakeup %s, "
	       "busy poll %s\n",
	       ref_mode_name(options->mode), options->seconds, options->frame_size, options->batch,
	       options->ring_size, options->frames, options->umem_frame_size, options->need_wakeup ? "on" : "off",
	       options->busy_poll ? "on" : "off");
	printf("rates are what arrived; Gbit/s counts frame bytes only (no FCS, preamble or inter-frame gap); "
	       "tx: sends completed; drops: %s\n",
	       options->mode == REF_RX_DROP ? "frames the receiving socket dropped (XDP_STATISTICS)"
					    : "sequence numbers missing at the receiver");
	fflush(stdout);
}

void ref_sample_direction(const struct ref_direction *direction, struct ref_end *ends, enum ref_mode mode,
			  struct ref_sample *out)
{
	const struct ref_flow_counters *counters = &direction->counters;
	out->sent = atomic_load_explicit(&counters->sent, memory_order_relaxed);
	out->received = atomic_load_explicit(&counters->received, memory_order_relaxed);
	out->received_bytes = atomic_load_explicit(&counters->received_bytes, memory_order_relaxed);
	out->gaps = atomic_load_explicit(&counters->gaps, memory_order_relaxed);
	out->forwarded = atomic_load_explicit(&counters->forwarded, memory_order_relaxed);
	out->socket_drops = 0;
	if (mode == REF_RX_DROP) {
		// The socket stays open until the main thread says stop.
		int fd = atomic_load(&ends[direction->receiver_end].ports[0].fd);
		struct xdp_statistics statistics;
		if (fd >= 0 && cafxdp_statistics(fd, &statistics) == 0)
			out->socket_drops = statistics.rx_dropped;
	}
}

void ref_report_interval(const struct ref_options *options, struct ref_direction *directions, int count,
			 uint64_t elapsed, uint64_t interval, const struct ref_sample *previous,
			 const struct ref_sample *current)
{
	double seconds = (double)interval / 1e9;
	for (int i = 0; i < count; i++) {
		const struct ref_sample *now = &current[i], *before = &previous[i];
		uint64_t packets = now->received - before->received;
		uint64_t bytes = now->received_bytes - before->received_bytes;
		uint64_t drops = options->mode == REF_RX_DROP ? now->socket_drops - before->socket_drops
							      : now->gaps - before->gaps;
		printf("[%3.0fs] %-8s %7.3f Mpps  %7.3f Gbit/s  tx %7.3f Mpps  ", (double)elapsed / 1e9,
		       directions[i].name, (double)packets / seconds / 1e6, (double)bytes * 8 / seconds / 1e9,
		       (double)(now->sent - before->sent) / seconds / 1e6);
		if (directions[i].forwarder_end >= 0)
			printf("fwd %7.3f Mpps  ", (double)(now->forwarded - before->forwarded) / seconds / 1e6);
		printf("drops %llu\n", (unsigned long long)drops);
	}
	fflush(stdout);
}

// --- Summary --------------------------------------------------------------

struct direction_result {
	uint64_t sent, packets, bytes, gaps, reordered, corrupted, foreign;
	int64_t lost;
	double loss_percent, tx_mpps, mpps, gbps;
	bool latency;
	double p50, p90, p99, p999, max, mean;
	uint64_t samples;
};

static double round_to(double value, int decimals)
{
	double scale = pow(10, decimals);
	return round(value * scale) / scale;
}

static void compute(const struct ref_direction *direction, double seconds, const struct ref_sample *at_stop,
		    struct direction_result *r)
{
	memset(r, 0, sizeof(*r));
	const struct ref_receiver *receiver = &direction->receiver;
	r->sent = direction->sender.completed;
	r->packets = receiver->packets;
	r->bytes = receiver->bytes;
	r->gaps = receiver->gaps;
	r->reordered = receiver->reordered;
	r->corrupted = receiver->corrupted;
	r->foreign = receiver->foreign;
	r->lost = (int64_t)r->sent - (int64_t)r->packets;
	r->loss_percent = round_to(r->sent ? (double)r->lost * 100 / (double)r->sent : 0, 4);
	r->tx_mpps = round_to((double)at_stop->sent / seconds / 1e6, 6);
	r->mpps = round_to((double)at_stop->received / seconds / 1e6, 6);
	r->gbps = round_to((double)at_stop->received_bytes * 8 / seconds / 1e9, 6);
	const struct ref_histogram *h = &receiver->latency;
	if (direction->checked && h->count > 0) {
		r->latency = true;
		r->samples = h->count;
		r->p50 = (double)ref_histogram_percentile(h, 50) / 1000;
		r->p90 = (double)ref_histogram_percentile(h, 90) / 1000;
		r->p99 = (double)ref_histogram_percentile(h, 99) / 1000;
		r->p999 = (double)ref_histogram_percentile(h, 99.9) / 1000;
		r->max = (double)h->max / 1000;
		r->mean = round_to((double)h->sum / (double)h->count / 1000, 3);
	}
}

static const char *stop_reason_text(int reason, char *buffer, size_t size)
{
	switch (reason) {
	case 0: return NULL;
	case REF_STOP_WATCHDOG: return "the watchdog";
	case REF_STOP_FAILURE: return "an error in a traffic thread";
	case SIGINT: return "SIGINT";
	case SIGTERM: return "SIGTERM";
	default: snprintf(buffer, size, "signal %d", reason); return buffer;
	}
}

// Frames a port sent on for the forwarder it belongs to: l2fwd's B sends
// them back from the port they came in on, F from its other port.
static uint64_t forwarded_from(const struct ref_end *end, const struct ref_port *port,
			       const struct ref_direction *directions, int count)
{
	uint64_t total = 0;
	int index = (int)(port - end->ports);
	for (int i = 0; i < count; i++) {
		const struct ref_direction *d = &directions[i];
		if (d->forwarder_end != end->index)
			continue;
		int leaving = end->port_count > 1 ? 1 - d->forwarder_port : d->forwarder_port;
		if (leaving == index)
			total += d->forwarder.forwarded;
	}
	return total;
}

static void print_json(const struct ref_options *options, struct ref_direction *directions, int count,
		       struct ref_end *ends, double seconds, const struct direction_result *results,
		       int stop_reason)
{
	const int end_count = ref_end_count(options);
	bool zero_copy = true;
	FOR_EACH_PORT(ends, end_count, end, port)
		zero_copy &= port->zero_copy;
	printf("{\"tool\":\"afxdp-ref\",\"mode\":\"%s\",\"seconds\":%.6f,\"requestedSeconds\":%.6f,"
	       "\"frameSize\":%u,\"batch\":%u,\"ringSize\":%u,\"umemFrameSize\":%u,\"frames\":%u,"
	       "\"queues\":1,\"zeroCopy\":%s,\"needWakeup\":%s,\"busyPoll\":%s,\"gbpsIncludesPreambleAndGap\":false,",
	       ref_mode_name(options->mode), seconds, options->seconds, options->frame_size, options->batch,
	       options->ring_size, options->umem_frame_size, options->frames,
	       zero_copy ? "true" : "false",
	       options->need_wakeup ? "true" : "false", options->busy_poll ? "true" : "false");
	// F passes on the frames it received, from the UMEM frames they arrived
	// in: it never copies packet data (afxdp-bench's field, same meaning).
	if (options->mode == REF_FORWARD)
		printf("\"copies\":0,");
	char buffer[32];
	const char *reason = stop_reason_text(stop_reason, buffer, sizeof(buffer));
	if (reason)
		printf("\"stoppedEarlyBy\":\"%s\",", reason);
	printf("\"directions\":[");
	for (int i = 0; i < count; i++) {
		const struct direction_result *r = &results[i];
		printf("%s{\"name\":\"%s\",\"sentPackets\":%llu,\"sentBytes\":%llu,\"packets\":%llu,\"bytes\":%llu,"
		       "\"lost\":%lld,\"lossPercent\":%.4f,\"gaps\":%llu,\"reordered\":%llu,\"corrupted\":%llu,"
		       "\"foreign\":%llu,\"checked\":%s,\"txMpps\":%.6f,\"mpps\":%.6f,\"gbps\":%.6f",
		       i ? "," : "", directions[i].name, (unsigned long long)r->sent,
		       (unsigned long long)(r->sent * options->frame_size), (unsigned long long)r->packets,
		       (unsigned long long)r->bytes, (long long)r->lost, r->loss_percent, (unsigned long long)r->gaps,
		       (unsigned long long)r->reordered, (unsigned long long)r->corrupted,
		       (unsigned long long)r->foreign, directions[i].checked ? "true" : "false", r->tx_mpps, r->mpps,
		       r->gbps);
		if (directions[i].forwarder_end >= 0)
			printf(",\"forwardedPackets\":%llu", (unsigned long long)directions[i].forwarder.forwarded);
		if (r->latency)
			printf(",\"latencyMicroseconds\":{\"samples\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
			       "\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f}",
			       (unsigned long long)r->samples, r->p50, r->p90, r->p99, r->p999, r->max, r->mean);
		printf("}");
	}
	printf("],\"ports\":[");
	int n = 0;
	FOR_EACH_PORT(ends, end_count, end, port) {
		const struct ref_loop_stats *stats = &port->stats;
		printf("%s{\"end\":\"%s\",\"interface\":\"%s\",\"queue\":0,\"zeroCopy\":%s,\"nativeXDP\":%s,"
		       "\"iterations\":%llu,\"kicks\":%llu,\"kickAgain\":%llu,\"kickBusy\":%llu,\"rxWakeups\":%llu,\"fillFull\":%llu,"
		       "\"socketReceiveDropped\":%llu,\"socketReceiveRingFull\":%llu,\"fillRingEmpty\":%llu,"
		       "\"invalidDescriptors\":%llu,\"programRedirected\":%llu,\"programPassed\":%llu,"
		       "\"forwardedPackets\":%llu}",
		       n++ ? "," : "", end->name, port->interface, port->zero_copy ? "true" : "false",
		       port->native ? "true" : "false", (unsigned long long)stats->iterations,
		       (unsigned long long)stats->kicks, (unsigned long long)stats->kick_again,
		       (unsigned long long)stats->kick_busy,
		       (unsigned long long)stats->rx_wakeups, (unsigned long long)stats->fill_full,
		       (unsigned long long)port->statistics.rx_dropped,
		       (unsigned long long)port->statistics.rx_ring_full,
		       (unsigned long long)port->statistics.rx_fill_ring_empty_descs,
		       (unsigned long long)(port->statistics.rx_invalid_descs + port->statistics.tx_invalid_descs),
		       (unsigned long long)port->program_redirected, (unsigned long long)port->program_passed,
		       (unsigned long long)forwarded_from(end, port, directions, count));
	}
	printf("],\"errors\":[");
	n = 0;
	for (int i = 0; i < end_count; i++) {
		if (!ends[i].error[0])
			continue;
		printf("%s\"end %s: ", n++ ? "," : "", ends[i].name);
		for (const char *c = ends[i].error; *c; c++) {
			if (*c == '"' || *c == '\\')
				printf("\\%c", *c);
			else if ((unsigned char)*c < 0x20)
				printf("\\u%04x", *c);
			else
				putchar(*c);
		}
		printf("\"");
	}
	printf("]}\n");
}

static void print_row(const char *const cells[], const int widths[], int columns)
{
	for (int c = 0; c < columns; c++)
		printf(c == 0 ? "%-*s" : "  %*s", widths[c], cells[c]);
	printf("\n");
}

void ref_report_summary(const struct ref_options *options, struct ref_direction *directions, int count,
			struct ref_end *ends, double seconds, const struct ref_sample *at_stop, int stop_reason)
{
	const int end_count = ref_end_count(options);
	struct direction_result results[2];
	for (int i = 0; i < count; i++)
		compute(&directions[i], seconds, &at_stop[i], &results[i]);

	char buffer[32];
	const char *reason = stop_reason_text(stop_reason, buffer, sizeof(buffer));
	printf("\nsummary: %s, %.3f s of sending%s%s%s; Gbit/s of frame bytes\n", ref_mode_name(options->mode), seconds,
	       reason ? " (stopped early by " : "", reason ? reason : "", reason ? ")" : "");
	{
		const char *header[] = { "direction", "sent", "received", "lost", "loss %", "reordered",
					 "corrupted", "tx Mpps", "rx Mpps", "rx Gbit/s" };
		enum { COLUMNS = 10 };
		char cells[2][COLUMNS][32];
		int widths[COLUMNS];
		for (int c = 0; c < COLUMNS; c++)
			widths[c] = (int)strlen(header[c]);
		for (int i = 0; i < count; i++) {
			const struct direction_result *r = &results[i];
			bool checked = directions[i].checked;
			snprintf(cells[i][0], 32, "%s", directions[i].name);
			snprintf(cells[i][1], 32, "%llu", (unsigned long long)r->sent);
			snprintf(cells[i][2], 32, "%llu", (unsigned long long)r->packets);
			snprintf(cells[i][3], 32, "%lld", (long long)r->lost);
			snprintf(cells[i][4], 32, "%.3f", r->loss_percent);
			snprintf(cells[i][5], 32, checked ? "%llu" : "n/a", (unsigned long long)r->reordered);
			snprintf(cells[i][6], 32, checked ? "%llu" : "n/a", (unsigned long long)(r->corrupted + r->foreign));
			snprintf(cells[i][7], 32, "%.3f", r->tx_mpps);
			snprintf(cells[i][8], 32, "%.3f", r->mpps);
			snprintf(cells[i][9], 32, "%.3f", r->gbps);
			for (int c = 0; c < COLUMNS; c++)
				if ((int)strlen(cells[i][c]) > widths[c])
					widths[c] = (int)strlen(cells[i][c]);
		}
		print_row(header, widths, COLUMNS);
		for (int i = 0; i < count; i++) {
			const char *row[COLUMNS];
			for (int c = 0; c < COLUMNS; c++)
				row[c] = cells[i][c];
			print_row(row, widths, COLUMNS);
		}
	}

	printf("\n");
	if (options->mode == REF_RX_DROP) {
		printf("latency: not measured in rx-drop (frames are not read)\n");
	} else {
		printf("latency in microseconds (%s):\n",
		       options->mode == REF_L2FWD     ? "round trip, A's send timestamp to A's receive"
		       : options->mode == REF_FORWARD ? "send timestamp to receive, through F"
						      : "send timestamp to receive");
		const char *header[] = { "direction", "samples", "p50", "p90", "p99", "p99.9", "max", "mean" };
		enum { COLUMNS = 8 };
		char cells[2][COLUMNS][32];
		int widths[COLUMNS];
		for (int c = 0; c < COLUMNS; c++)
			widths[c] = (int)strlen(header[c]);
		for (int i = 0; i < count; i++) {
			const struct direction_result *r = &results[i];
			snprintf(cells[i][0], 32, "%s", directions[i].name);
			snprintf(cells[i][1], 32, "%llu", (unsigned long long)r->samples);
			double values[6] = { r->p50, r->p90, r->p99, r->p999, r->max, r->mean };
			for (int v = 0; v < 6; v++)
				snprintf(cells[i][2 + v], 32, r->latency ? "%.1f" : "-", values[v]);
			for (int c = 0; c < COLUMNS; c++)
				if ((int)strlen(cells[i][c]) > widths[c])
					widths[c] = (int)strlen(cells[i][c]);
		}
		print_row(header, widths, COLUMNS);
		for (int i = 0; i < count; i++) {
			const char *row[COLUMNS];
			for (int c = 0; c < COLUMNS; c++)
				row[c] = cells[i][c];
			print_row(row, widths, COLUMNS);
		}
	}
	for (int i = 0; i < count; i++) {
		const struct direction_result *r = &results[i];
		const struct ref_direction *d = &directions[i];
		if (options->mode == REF_FORWARD) {
			const struct ref_end *f = &ends[d->forwarder_end];
			printf("%s: F passed on %llu from %s to %s, no copy (%llu RX descriptors waited for TX room)\n",
			       d->name, (unsigned long long)d->forwarder.forwarded,
			       f->ports[d->forwarder_port].interface, f->ports[1 - d->forwarder_port].interface,
			       (unsigned long long)d->forwarder.held_back);
		} else if (d->forwarder_end >= 0) {
			printf("%s: B sent back %llu (%llu RX descriptors waited for TX room)\n", d->name,
			       (unsigned long long)d->forwarder.forwarded, (unsigned long long)d->forwarder.held_back);
		}
		if (directions[i].checked && r->gaps != (uint64_t)(r->lost > 0 ? r->lost : 0))
			printf("%s: sequence gaps %llu\n", directions[i].name, (unsigned long long)r->gaps);
		if (r->foreign)
			printf("%s: not test frames: %llu\n", directions[i].name, (unsigned long long)r->foreign);
		uint64_t in_flight = directions[i].sender.submitted - directions[i].sender.completed;
		if (in_flight)
			printf("%s: %llu frames sent but not completed when the threads stopped (not counted as sent)\n",
			       directions[i].name, (unsigned long long)in_flight);
	}

	printf("\nper port:\n");
	{
		const char *header[] = { "port", "iterations", "kicks", "kick again", "kick busy", "rx wakeups",
					 "fill full", "sock drop", "rx full", "fill empty", "invalid", "xdp redir",
					 "xdp pass" };
		enum { COLUMNS = 13, ROWS = REF_MAX_ENDS + 1 }; // F has two ports
		char cells[ROWS][COLUMNS][32];
		int widths[COLUMNS];
		for (int c = 0; c < COLUMNS; c++)
			widths[c] = (int)strlen(header[c]);
		int rows = 0;
		FOR_EACH_PORT(ends, end_count, end, port) {
			const int i = rows++;
			const struct ref_loop_stats *stats = &port->stats;
			uint64_t values[12] = {
				stats->iterations, stats->kicks, stats->kick_again, stats->kick_busy, stats->rx_wakeups, stats->fill_full,
				port->statistics.rx_dropped, port->statistics.rx_ring_full,
				port->statistics.rx_fill_ring_empty_descs,
				port->statistics.rx_invalid_descs + port->statistics.tx_invalid_descs,
				port->program_redirected, port->program_passed,
			};
			snprintf(cells[i][0], 32, "%s0", port->name);
			for (int v = 0; v < 12; v++)
				snprintf(cells[i][1 + v], 32, "%llu", (unsigned long long)values[v]);
			for (int c = 0; c < COLUMNS; c++)
				if ((int)strlen(cells[i][c]) > widths[c])
					widths[c] = (int)strlen(cells[i][c]);
		}
		print_row(header, widths, COLUMNS);
		for (int i = 0; i < rows; i++) {
			const char *row[COLUMNS];
			for (int c = 0; c < COLUMNS; c++)
				row[c] = cells[i][c];
			print_row(row, widths, COLUMNS);
		}
	}
	for (int i = 0; i < end_count; i++)
		if (ends[i].error[0])
			printf("ERROR: end %s: %s\n", ends[i].name, ends[i].error);
	if (options->json)
		print_json(options, directions, count, ends, seconds, results, stop_reason);
	fflush(stdout);
}
