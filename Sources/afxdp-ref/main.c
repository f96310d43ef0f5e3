// afxdp-ref: the bare libxdp ring loop that the swift-afxdp engine is
// compared against. See ref.h for the shape, `afxdp-ref --help` for use.
//
// The main thread parses options, starts one thread per end (A and B, and
// in forward mode F between them), prints a line a second, stops the sending, lets what is in flight arrive, stops the
// threads and reports. Every way out closes the sockets and detaches the
// programs: the normal end, an error, SIGINT / SIGTERM (a flag the loops
// see), and a watchdog at --seconds + 10 s that exits non-zero, detaching
// the programs itself if a thread hangs. The instruction-loop mode is
// different: no threads, no clock; instruction.c runs it on the main thread.
#include "ref.h"
#include "frame.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Atomic int ref_phase = REF_SETUP;
_Atomic int ref_stop_reason = 0;
_Atomic uint64_t ref_hard_deadline = UINT64_MAX;
int ref_original_netns_fd = -1;

// Seconds past --seconds after which the watchdog stops the run, and after
// which it gives up on an orderly teardown.
#define WATCHDOG_EXTRA_SECONDS 10
#define WATCHDOG_GRACE_SECONDS 3
// Drain: stop once nothing has moved for this long, or after the limit.
#define DRAIN_QUIET_NS 30000000ull
#define DRAIN_LIMIT_NS 1000000000ull

uint64_t ref_now(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

void ref_sleep_ns(uint64_t ns)
{
	struct timespec request = { .tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull) };
	nanosleep(&request, NULL);
}

void ref_request_stop(int reason)
{
	int expected = 0;
	atomic_compare_exchange_strong(&ref_stop_reason, &expected, reason);
}

static void on_signal(int number)
{
	ref_request_stop(number); // async-signal-safe: a lock-free atomic
}

// --- Options --------------------------------------------------------------

static void usage(FILE *out)
{
	fprintf(out,
		"usage: afxdp-ref MODE --interface-a IF --interface-b IF [options]\n"
		"       afxdp-ref forward --interface-a IF --interface-b IF --interface-fa IF --interface-fb IF\n"
		"                 --namespace-f NS [options]\n"
		"\n"
		"The bare libxdp AF_XDP ring loop, the reference afxdp-bench is compared against.\n"
		"Two ports, one per end of an existing veth pair, one thread each; in forward mode\n"
		"a third end F between them (A - F - B, two existing veth pairs), on a thread of its own.\n"
		"\n"
		"modes:\n"
		"  duplex    A sends to B and B to A at once; each end checks what it receives\n"
		"  tx-only   A sends; B receives and checks (B's count is the measure)\n"
		"  rx-drop   A sends; B receives and releases at once, without reading payloads\n"
		"  l2fwd     A sends; B sends the same UMEM frames back, MACs swapped; A checks\n"
		"  forward   as duplex, through F: A's frames go to FA, B's to FB; F's two sockets share\n"
		"            one UMEM, and F sends what one receives out of the other from the same\n"
		"            frames (no copy, no MAC swap); B checks A->F->B, A checks B->F->A\n"
		"  instruction-loop  one thread moves --packets frames A->B, at most 256 in flight,\n"
		"            writing and checking each as afxdp-bench instruction-loop does; for\n"
		"            valgrind --tool=callgrind --toggle-collect=instruction_loop\n"
		"\n"
		"options:\n"
		"  --interface-a IF, --interface-b IF   the two ends (required)\n"
		"  --namespace-a NS, --namespace-b NS   their network namespaces (/var/run/netns/NS)\n"
		"  --cpu-a N, --cpu-b N                 pin each end's thread to a CPU\n"
		"  --interface-fa IF, --interface-fb IF forward: F's interfaces, FA paired with A's,\n"
		"                                       FB with B's (required in forward, only there)\n"
		"  --namespace-f NS     forward: F's network namespace (required in forward, only there)\n"
		"  --cpu-f N            forward: pin F's thread to a CPU\n"
		"  --seconds S          how long to send (default 10)\n"
		"  --packets N          instruction-loop: frames to move (default 200000)\n"
		"  --frame-size N       Ethernet frame length without FCS, 64..1514 (default 64)\n"
		"  --batch N            descriptors per burst (default 64)\n"
		"  --ring-size N        size of all four rings, a power of two (default 4096, as afxdp-bench)\n"
		"  --umem-frame-size N  2048 or 4096 (default 4096)\n"
		"  --frames N           UMEM frames per port: half fill ring, half TX (default 4096);\n"
		"                       F: one UMEM of N frames, half for each socket's fill ring\n"
		"  --no-need-wakeup     kick whenever TX has work, instead of when the ring asks\n"
		"  --busy-poll          SO_PREFER_BUSY_POLL, SO_BUSY_POLL 20 us, budget --batch\n"
		"  --xdp-object PATH    the compiled bpf/afxdp_redirect.bpf.c (default: afxdp_redirect.bpf.o\n"
		"                       next to this binary)\n"
		"  --json               print every figure as one JSON object on the last line\n");
}

__attribute__((format(printf, 1, 2), noreturn))
static void usage_error(const char *format, ...)
{
	va_list arguments;
	va_start(arguments, format);
	fprintf(stderr, "afxdp-ref: ");
	vfprintf(stderr, format, arguments);
	fprintf(stderr, "\n(afxdp-ref --help for the options)\n");
	va_end(arguments);
	exit(64);
}

static unsigned long parse_unsigned(const char *option, const char *text, unsigned long low, unsigned long high)
{
	char *rest = NULL;
	errno = 0;
	unsigned long value = strtoul(text, &rest, 10);
	if (errno || !rest || *rest || text[0] == '-' || text[0] == '\0' || value < low || value > high)
		usage_error("--%s must be a whole number from %lu to %lu, not '%s'", option, low, high, text);
	return value;
}

static char default_object_path[PATH_MAX];

static void parse_options(int argc, char **argv, struct ref_options *options)
{
	*options = (struct ref_options){
		.cpu = { -1, -1, -1 },
		.seconds = 10,
		.packets = 200000,
		.frame_size = 64,
		.batch = 64,
		.ring_size = 4096,
		.umem_frame_size = 4096,
		.frames = 4096,
		.need_wakeup = true,
	};
	enum {
		INTERFACE_A = 256, INTERFACE_B, NAMESPACE_A, NAMESPACE_B, CPU_A, CPU_B, SECONDS, FRAME_SIZE,
		BATCH, RING_SIZE, UMEM_FRAME_SIZE, FRAMES, NO_NEED_WAKEUP, BUSY_POLL, JSON, XDP_OBJECT, HELP,
		PACKETS, INTERFACE_FA, INTERFACE_FB, NAMESPACE_F, CPU_F,
	};
	static const struct option long_options[] = {
		{ "interface-a", required_argument, NULL, INTERFACE_A },
		{ "interface-b", required_argument, NULL, INTERFACE_B },
		{ "namespace-a", required_argument, NULL, NAMESPACE_A },
		{ "namespace-b", required_argument, NULL, NAMESPACE_B },
		{ "cpu-a", required_argument, NULL, CPU_A },
		{ "cpu-b", required_argument, NULL, CPU_B },
		{ "seconds", required_argument, NULL, SECONDS },
		{ "frame-size", required_argument, NULL, FRAME_SIZE },
		{ "batch", required_argument, NULL, BATCH },
		{ "ring-size", required_argument, NULL, RING_SIZE },
		{ "umem-frame-size", required_argument, NULL, UMEM_FRAME_SIZE },
		{ "frames", required_argument, NULL, FRAMES },
		{ "no-need-wakeup", no_argument, NULL, NO_NEED_WAKEUP },
		{ "busy-poll", no_argument, NULL, BUSY_POLL },
		{ "json", no_argument, NULL, JSON },
		{ "xdp-object", required_argument, NULL, XDP_OBJECT },
		{ "help", no_argument, NULL, HELP },
		{ "packets", required_argument, NULL, PACKETS },
		{ "interface-fa", required_argument, NULL, INTERFACE_FA },
		{ "interface-fb", required_argument, NULL, INTERFACE_FB },
		{ "namespace-f", required_argument, NULL, NAMESPACE_F },
		{ "cpu-f", required_argument, NULL, CPU_F },
		{ NULL, 0, NULL, 0 },
	};
	// Options that only one kind of mode takes.
	const char *timed_only = NULL, *instruction_only = NULL, *forward_only = NULL;
	int option;
	while ((option = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
		switch (option) {
		case INTERFACE_A: options->interface[0] = optarg; break;
		case INTERFACE_B: options->interface[1] = optarg; break;
		case NAMESPACE_A: options->namespace[0] = optarg; break;
		case NAMESPACE_B: options->namespace[1] = optarg; break;
		case INTERFACE_FA: options->interface[REF_IF_FA] = optarg; forward_only = "--interface-fa"; break;
		case INTERFACE_FB: options->interface[REF_IF_FB] = optarg; forward_only = "--interface-fb"; break;
		case NAMESPACE_F: options->namespace[REF_F] = optarg; forward_only = "--namespace-f"; break;
		case CPU_F:
			options->cpu[REF_F] = (int)parse_unsigned("cpu-f", optarg, 0, 1023);
			forward_only = "--cpu-f";
			break;
		case CPU_A:
			options->cpu[0] = (int)parse_unsigned("cpu-a", optarg, 0, 1023);
			timed_only = "--cpu-a";
			break;
		case CPU_B:
			options->cpu[1] = (int)parse_unsigned("cpu-b", optarg, 0, 1023);
			timed_only = "--cpu-b";
			break;
		case PACKETS:
			options->packets = parse_unsigned("packets", optarg, 1, 1ul << 40);
			instruction_only = "--packets";
			break;
		case SECONDS: {
			timed_only = "--seconds";
			char *rest = NULL;
			options->seconds = strtod(optarg, &rest);
			if (!rest || *rest || !(options->seconds > 0 && options->seconds <= 86400))
				usage_error("--seconds must be more than 0 and at most 86400, not '%s'", optarg);
			break;
		}
		case FRAME_SIZE: options->frame_size = (uint32_t)parse_unsigned("frame-size", optarg, 64, 1514); break;
		case BATCH: options->batch = (uint32_t)parse_unsigned("batch", optarg, 1, 65536); break;
		case RING_SIZE: options->ring_size = (uint32_t)parse_unsigned("ring-size", optarg, 8, 65536); break;
		case UMEM_FRAME_SIZE:
			options->umem_frame_size = (uint32_t)parse_unsigned("umem-frame-size", optarg, 2048, 4096);
			break;
		case FRAMES: options->frames = (uint32_t)parse_unsigned("frames", optarg, 2, 1u << 20); break;
		case NO_NEED_WAKEUP: options->need_wakeup = false; break;
		case BUSY_POLL: options->busy_poll = true; break;
		case JSON: options->json = true; timed_only = "--json"; break;
		case XDP_OBJECT: options->xdp_object = optarg; break;
		case HELP:
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); exit(64);
		}
	}
	if (optind != argc - 1)
		usage_error(optind == argc ? "give a mode: duplex, tx-only, rx-drop, l2fwd, forward or instruction-loop"
					   : "one mode only, and options after it start with --");
	const char *mode = argv[optind];
	if (!strcmp(mode, "duplex"))
		options->mode = REF_DUPLEX;
	else if (!strcmp(mode, "tx-only"))
		options->mode = REF_TX_ONLY;
	else if (!strcmp(mode, "rx-drop"))
		options->mode = REF_RX_DROP;
	else if (!strcmp(mode, "l2fwd"))
		options->mode = REF_L2FWD;
	else if (!strcmp(mode, "forward"))
		options->mode = REF_FORWARD;
	else if (!strcmp(mode, "instruction-loop"))
		options->mode = REF_INSTRUCTION_LOOP;
	else
		usage_error("unknown mode '%s': use duplex, tx-only, rx-drop, l2fwd, forward or instruction-loop", mode);
	if (options->mode == REF_INSTRUCTION_LOOP && timed_only)
		usage_error("%s is not for instruction-loop (one thread, a fixed number of frames)", timed_only);
	if (options->mode != REF_INSTRUCTION_LOOP && instruction_only)
		usage_error("%s is for instruction-loop only", instruction_only);
	if (options->mode != REF_FORWARD && forward_only)
		usage_error("%s is for forward mode only (F, between A and B)", forward_only);

	const bool forward = options->mode == REF_FORWARD;
	static const char *const interface_options[REF_MAX_INTERFACES] = { "a", "b", "fa", "fb" };
	for (int i = 0; i < (forward ? REF_MAX_INTERFACES : 2); i++) {
		const char *which = interface_options[i];
		if (!options->interface[i])
			usage_error(i < 2 ? "--interface-%s is required" : "--interface-%s is required in forward mode",
				    which);
		size_t length = strlen(options->interface[i]);
		if (length == 0 || length > 15)
			usage_error("--interface-%s '%s' must be 1 to 15 characters", which, options->interface[i]);
	}
	if (forward && !options->namespace[REF_F])
		usage_error("--namespace-f is required in forward mode");
	if (forward && !strcmp(options->interface[REF_IF_FA], options->interface[REF_IF_FB]))
		usage_error("--interface-fa and --interface-fb must be two interfaces, not both '%s'",
			    options->interface[REF_IF_FA]);
	static const char *const namespace_options[REF_MAX_ENDS] = { "a", "b", "f" };
	for (int i = 0; i < REF_MAX_ENDS; i++) {
		if (options->namespace[i] && (!options->namespace[i][0] || strchr(options->namespace[i], '/')))
			usage_error("--namespace-%s must be a name under /var/run/netns, not '%s'", namespace_options[i],
				    options->namespace[i]);
	}
	if (options->ring_size & (options->ring_size - 1))
		usage_error("--ring-size %u is not a power of two", options->ring_size);
	if (options->umem_frame_size != 2048 && options->umem_frame_size != 4096)
		usage_error("--umem-frame-size must be 2048 or 4096, not %u", options->umem_frame_size);
	if (options->batch > options->ring_size)
		usage_error("--batch %u is larger than --ring-size %u", options->batch, options->ring_size);
	if (options->frames % 2)
		usage_error("--frames %u must be even (half fill ring, half TX)", options->frames);
	if (options->frames / 2 > options->ring_size)
		usage_error("--frames %u: half of them (%u) must fit in the fill ring and the completion ring "
			    "(--ring-size %u)", options->frames, options->frames / 2, options->ring_size);
	if (options->frames / 2 < options->batch)
		usage_error("--frames %u: half of them must hold at least one --batch (%u)", options->frames,
			    options->batch);

	if (!options->xdp_object) {
		char executable[PATH_MAX];
		ssize_t length = readlink("/proc/self/exe", executable, sizeof(executable) - 1);
		if (length <= 0)
			usage_error("cannot find this binary's directory; give --xdp-object");
		executable[length] = '\0';
		snprintf(default_object_path, sizeof(default_object_path), "%s/afxdp_redirect.bpf.o",
			 dirname(executable));
		options->xdp_object = default_object_path;
	}
}

static void *read_file(const char *path, size_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat info;
	void *bytes = NULL;
	if (fstat(fd, &info) == 0 && info.st_size > 0 && info.st_size < (64 << 20) &&
	    (bytes = malloc((size_t)info.st_size))) {
		size_t done = 0;
		while (done < (size_t)info.st_size) {
			ssize_t n = read(fd, (char *)bytes + done, (size_t)info.st_size - done);
			if (n <= 0) {
				free(bytes);
				bytes = NULL;
				break;
			}
			done += (size_t)n;
		}
		*size = done;
	}
	int error = errno;
	close(fd);
	errno = error;
	return bytes;
}

// --- Watchdog -------------------------------------------------------------

static struct ref_end ends[REF_MAX_ENDS];
static int end_count;
static _Atomic bool finished = false;
static uint64_t watchdog_deadline;

static void *watchdog_main(void *unused)
{
	(void)unused;
	uint64_t give_up = UINT64_MAX;
	while (!atomic_load(&finished)) {
		ref_sleep_ns(50000000);
		uint64_t now = ref_now();
		if (now >= watchdog_deadline && give_up == UINT64_MAX) {
			fprintf(stderr, "afxdp-ref: watchdog: the run exceeded --seconds + %d s; stopping it\n",
				WATCHDOG_EXTRA_SECONDS);
			atomic_store(&ref_stop_reason, REF_STOP_WATCHDOG);
			atomic_store(&ref_phase, REF_STOPPED);
			give_up = now + WATCHDOG_GRACE_SECONDS * 1000000000ull;
		}
		if (now >= give_up && !atomic_load(&finished)) {
			fprintf(stderr, "afxdp-ref: watchdog: no orderly end %d s later; closing the sockets, "
				"detaching the XDP programs and exiting\n", WATCHDOG_GRACE_SECONDS);
			for (int i = 0; i < end_count; i++)
				ref_port_emergency_detach(&ends[i]);
			_exit(3);
		}
	}
	return NULL;
}

// --- The run ----------------------------------------------------------------

static struct ref_direction directions[2];

static int plan(const struct ref_options *options)
{
	int count = 0;
	struct ref_direction *d = directions;
	switch (options->mode) {
	case REF_DUPLEX:
		d[0] = (struct ref_direction){ .name = "A->B", .sender_end = 0, .receiver_end = 1, .forwarder_end = -1 };
		d[1] = (struct ref_direction){ .name = "B->A", .sender_end = 1, .receiver_end = 0, .forwarder_end = -1 };
		count = 2;
		break;
	case REF_TX_ONLY:
	case REF_RX_DROP:
		d[0] = (struct ref_direction){ .name = "A->B", .sender_end = 0, .receiver_end = 1, .forwarder_end = -1 };
		count = 1;
		break;
	case REF_L2FWD:
		d[0] = (struct ref_direction){ .name = "A->B->A", .sender_end = 0, .receiver_end = 0, .forwarder_end = 1 };
		count = 1;
		break;
	case REF_FORWARD:
		// Each sender's frames arrive on F's port facing it (FA is F's
		// port 0, FB its port 1) and leave by the other.
		d[0] = (struct ref_direction){ .name = "A->F->B", .sender_end = REF_A, .receiver_end = REF_B,
					       .forwarder_end = REF_F, .forwarder_port = 0 };
		d[1] = (struct ref_direction){ .name = "B->F->A", .sender_end = REF_B, .receiver_end = REF_A,
					       .forwarder_end = REF_F, .forwarder_port = 1 };
		count = 2;
		break;
	case REF_INSTRUCTION_LOOP: // instruction.c, not these threads
		break;
	}
	for (int i = 0; i < count; i++) {
		d[i].checked = options->mode != REF_RX_DROP;
		ends[d[i].sender_end].sending = &d[i];
		ends[d[i].receiver_end].receiving = &d[i];
		if (options->mode == REF_FORWARD)
			ends[REF_F].relaying[d[i].forwarder_port] = &d[i];
		else if (d[i].forwarder_end >= 0)
			ends[d[i].forwarder_end].forwarding = &d[i];
	}
	return count;
}

static void sample_all(const struct ref_options *options, int count, struct ref_sample *out)
{
	for (int i = 0; i < count; i++)
		ref_sample_direction(&directions[i], ends, options->mode, &out[i]);
}

static bool samples_equal(const struct ref_sample *a, const struct ref_sample *b, int count)
{
	for (int i = 0; i < count; i++) {
		if (a[i].sent != b[i].sent || a[i].received != b[i].received || a[i].forwarded != b[i].forwarded)
			return false;
	}
	return true;
}

static void join_ends(void)
{
	atomic_store_explicit(&ref_phase, REF_STOPPED, memory_order_release);
	for (int i = 0; i < end_count; i++) {
		if (ends[i].thread) {
			pthread_join(ends[i].thread, NULL);
			ends[i].thread = 0;
		}
	}
}

// Every end ready (true), or one failed or a stop was asked for (false).
static bool wait_until_ready(void)
{
	while (!atomic_load(&ref_stop_reason)) {
		int ready = 0;
		for (int i = 0; i < end_count; i++) {
			int status = atomic_load_explicit(&ends[i].status, memory_order_acquire);
			if (status == REF_END_FAILED)
				return false;
			ready += status == REF_END_READY;
		}
		if (ready == end_count)
			return true;
		ref_sleep_ns(1000000);
	}
	return false;
}

// "fwa", or F's "fwfa, fwfb": for the error lines.
static void print_end_error(const struct ref_end *end)
{
	fprintf(stderr, "afxdp-ref: end %s (%s%s%s): %s\n", end->name, end->ports[0].interface,
		end->port_count > 1 ? ", " : "", end->port_count > 1 ? end->ports[1].interface : "", end->error);
}

int main(int argc, char **argv)
{
	struct ref_options options;
	parse_options(argc, argv, &options);
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (ref_frame_self_test() || ref_histogram_self_test()) {
		fprintf(stderr, "afxdp-ref: self-test of the frame codec or the histogram failed\n");
		return 70;
	}
	size_t object_size = 0;
	void *object = read_file(options.xdp_object, &object_size);
	if (!object) {
		fprintf(stderr,
			"afxdp-ref: cannot read the XDP object %s: %s\n"
			"compile it with: clang -target bpf -O2 -g -I/usr/include/x86_64-linux-gnu "
			"-c bpf/afxdp_redirect.bpf.c -o afxdp_redirect.bpf.o, and give --xdp-object\n",
			options.xdp_object, strerror(errno));
		return 66;
	}
	ref_original_netns_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	cafxdp_silence_libbpf();

	struct sigaction action;
	memset(&action, 0, sizeof(action));
	action.sa_handler = on_signal;
	sigemptyset(&action.sa_mask);
	sigaction(SIGINT, &action, NULL);
	sigaction(SIGTERM, &action, NULL);

	if (options.mode == REF_INSTRUCTION_LOOP) {
		int code = ref_instruction_loop_main(&options, object, object_size);
		free(object);
		return code;
	}

	// Before the watchdog starts: it reads the ends when it has to detach.
	end_count = ref_end_count(&options);
	for (int i = 0; i < end_count; i++)
		ref_end_init(&ends[i], i, &options, object, object_size);

	const uint64_t begin = ref_now();
	const uint64_t run_ns = (uint64_t)(options.seconds * 1e9);
	watchdog_deadline = begin + run_ns + WATCHDOG_EXTRA_SECONDS * 1000000000ull;
	// The loops stop on their own a second before the watchdog would.
	atomic_store(&ref_hard_deadline, watchdog_deadline - 1000000000ull);
	pthread_t watchdog;
	if (pthread_create(&watchdog, NULL, watchdog_main, NULL) != 0) {
		fprintf(stderr, "afxdp-ref: cannot start the watchdog thread\n");
		return 71;
	}

	int count = plan(&options);
	int exit_code = 0;
	for (int i = 0; i < end_count; i++) {
		int error = pthread_create(&ends[i].thread, NULL, ref_end_main, &ends[i]);
		if (error) {
			ends[i].thread = 0;
			snprintf(ends[i].error, sizeof(ends[i].error), "pthread_create: %s", strerror(error));
			atomic_store(&ends[i].status, REF_END_FAILED);
		}
	}

	if (!wait_until_ready()) {
		join_ends();
		for (int i = 0; i < end_count; i++)
			if (ends[i].error[0])
				print_end_error(&ends[i]);
		int reason = atomic_load(&ref_stop_reason);
		exit_code = reason == REF_STOP_WATCHDOG ? 3 : reason && reason < REF_STOP_WATCHDOG ? 128 + reason : 1;
		goto out;
	}

	ref_report_header(&options, ends);
	struct ref_sample previous[2], current[2], at_stop[2];
	sample_all(&options, count, previous);
	const uint64_t start = ref_now();
	atomic_store_explicit(&ref_phase, REF_RUNNING, memory_order_release);
	const uint64_t end = start + run_ns;
	uint64_t next_tick = start + 1000000000ull, previous_tick = start;
	while (!atomic_load(&ref_stop_reason)) {
		uint64_t now = ref_now();
		if (now >= end) {
			if (now - previous_tick >= 500000000ull) { // the last interval, unless a sliver
				sample_all(&options, count, current);
				ref_report_interval(&options, directions, count, now - start, now - previous_tick,
						    previous, current);
			}
			break;
		}
		if (now >= next_tick) {
			sample_all(&options, count, current);
			ref_report_interval(&options, directions, count, now - start, now - previous_tick, previous,
					    current);
			memcpy(previous, current, sizeof(current));
			previous_tick = now;
			next_tick += 1000000000ull;
		}
		uint64_t wake = next_tick < end ? next_tick : end;
		ref_sleep_ns(wake - now < 20000000ull ? wake - now : 20000000ull);
	}

	// Stop sending; let what is in flight arrive (unless told to stop at once).
	const uint64_t stopped = ref_now();
	sample_all(&options, count, at_stop);
	atomic_store_explicit(&ref_phase, REF_DRAINING, memory_order_release);
	struct ref_sample last[2];
	memcpy(last, at_stop, sizeof(last));
	uint64_t quiet_since = ref_now();
	for (;;) {
		int reason = atomic_load(&ref_stop_reason);
		if (reason && reason != REF_STOP_FAILURE)
			break;
		ref_sleep_ns(5000000);
		uint64_t now = ref_now();
		sample_all(&options, count, current);
		if (!samples_equal(current, last, count)) {
			memcpy(last, current, sizeof(last));
			quiet_since = now;
		}
		if (now - quiet_since >= DRAIN_QUIET_NS || now - stopped >= DRAIN_LIMIT_NS)
			break;
	}
	join_ends();

	int reason = atomic_load(&ref_stop_reason);
	ref_report_summary(&options, directions, count, ends, (double)(stopped - start) / 1e9, at_stop, reason);
	bool failed = false;
	for (int i = 0; i < end_count; i++)
		failed |= ends[i].error[0] != '\0';
	if (reason == REF_STOP_WATCHDOG)
		exit_code = 3;
	else if (failed)
		exit_code = 2;
	else if (reason)
		exit_code = 128 + reason;

out:
	atomic_store(&finished, true);
	pthread_join(watchdog, NULL);
	for (int i = 0; i < end_count; i++)
		if (ends[i].netns_fd >= 0)
			close(ends[i].netns_fd);
	free(object);
	return exit_code;
}
