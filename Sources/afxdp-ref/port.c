// Opening and closing an end's ports, on the thread that will serve them:
// enter the end's network namespace (namespaces are per thread), read the
// interface's MAC address, make the UMEM and the socket (zero-copy first,
// then copy mode), load and attach the XDP program, set its EtherType filter
// and put the socket in its XSKMAP. Closing goes the other way: socket, UMEM,
// then the program is detached.
//
// F (forward mode) has two ports on one UMEM: the first (FA) registers it as
// an end's port does; the second (FB) is a second socket on it
// (XDP_SHARED_UMEM), with fill and completion rings of its own. Each has its
// own copy of the program on its own interface. The UMEM's frames are split:
// each fill ring starts with its own half, and F sends nothing of its own.
#include "ref.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif

// cafxdp_program_load collects libbpf's messages in one static buffer:
// "loads are serialised by the caller". Every port loads its own copy.
static pthread_mutex_t program_load_lock = PTHREAD_MUTEX_INITIALIZER;

__attribute__((format(printf, 2, 3)))
static int fail(struct ref_end *end, const char *format, ...)
{
	va_list arguments;
	va_start(arguments, format);
	vsnprintf(end->error, sizeof(end->error), format, arguments);
	va_end(arguments);
	return -1;
}

static int enter_namespace(struct ref_end *end)
{
	const char *name = end->options->namespace[end->index];
	end->netns_fd = -1;
	if (!name)
		return 0;
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "/var/run/netns/%s", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(end, "cannot open %s: %s (is there a namespace `ip netns add %s`?)", path,
			    strerror(errno), name);
	if (setns(fd, CLONE_NEWNET) != 0) {
		int error = errno;
		close(fd);
		return fail(end, "cannot enter network namespace %s: %s", name, strerror(error));
	}
	// Kept open until the process ends: the watchdog may need to come back
	// here to detach the programs if this thread hangs.
	end->netns_fd = fd;
	return 0;
}

// The interface's index and MAC address, asked of the kernel on this thread,
// so in the end's namespace. (/sys/class/net shows the devices of the
// namespace that mounted /sys, not of this thread's.)
static int find_interface(struct ref_end *end, struct ref_port *port)
{
	port->ifindex = (int)if_nametoindex(port->interface);
	if (port->ifindex == 0) {
		const char *ns = end->options->namespace[end->index];
		return fail(end, "no interface %s in %s%s", port->interface,
			    ns ? "network namespace " : "this network namespace", ns ? ns : "");
	}

	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(end, "socket(AF_INET): %s", strerror(errno));
	struct ifreq request;
	memset(&request, 0, sizeof(request));
	snprintf(request.ifr_name, sizeof(request.ifr_name), "%s", port->interface);
	int result = ioctl(fd, SIOCGIFHWADDR, &request);
	int error = errno;
	close(fd);
	if (result != 0)
		return fail(end, "cannot read the MAC address of %s: %s", port->interface, strerror(error));
	if (request.ifr_hwaddr.sa_family != ARPHRD_ETHER)
		return fail(end, "%s is not an Ethernet interface", port->interface);
	memcpy(port->mac, request.ifr_hwaddr.sa_data, 6);
	return 0;
}

// The UMEM (--frames frames) and the socket that registers it.
static int create_socket(struct ref_end *end, struct ref_port *port)
{
	const struct ref_options *options = end->options;

	port->area_size = (uint64_t)options->frames * options->umem_frame_size;
	port->area = mmap(NULL, port->area_size, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (port->area == MAP_FAILED) {
		port->area = NULL;
		return fail(end, "cannot map %llu bytes of UMEM: %s", (unsigned long long)port->area_size,
			    strerror(errno));
	}

	const uint16_t wakeup = options->need_wakeup ? XDP_USE_NEED_WAKEUP : 0;
	const uint16_t modes[2] = { XDP_ZEROCOPY, XDP_COPY };
	int error = 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		error = cafxdp_umem_create(&port->umem, port->area, port->area_size, options->ring_size,
					   options->ring_size, options->umem_frame_size, 0, &port->rings);
		if (error)
			return fail(end, "cannot create the UMEM: %s", strerror(-error));
		error = cafxdp_socket_create(&port->socket, port->interface, 0, port->umem,
					     options->ring_size, options->ring_size,
					     modes[attempt] | wakeup, &port->rings);
		if (!error) {
			port->zero_copy = attempt == 0;
			atomic_store(&port->fd, xsk_socket__fd(port->socket));
			return 0;
		}
		// A failed bind leaves libxdp's UMEM half set up (its fill and
		// completion rings exist): start again from a fresh one.
		xsk_umem__delete(port->umem);
		port->umem = NULL;
		port->socket = NULL;
		bool unsupported = error == -EOPNOTSUPP || error == -EINVAL || error == -EPROTONOSUPPORT;
		if (attempt == 0 && unsupported)
			continue;
		break;
	}
	return fail(end, "cannot bind an AF_XDP socket to %s queue 0: %s%s", port->interface,
		    strerror(-error), error == -EBUSY ? " (another AF_XDP socket holds the queue)" : "");
}

// F's second socket, on the UMEM `owner` registered. libxdp gives it fill
// and completion rings of its own, sized by the UMEM's configuration (so the
// same as the owner's), and the kernel gives it the owner's mode (copy or
// zero-copy, need_wakeup).
static int create_shared_socket(struct ref_end *end, struct ref_port *port, const struct ref_port *owner)
{
	const struct ref_options *options = end->options;
	int error = cafxdp_socket_create_shared(&port->socket, port->interface, 0, owner->umem, options->ring_size,
						options->ring_size, &port->rings);
	if (error) {
		port->socket = NULL;
		return fail(end, "cannot bind a second AF_XDP socket to %s queue 0 on %s's UMEM (%s): %s%s",
			    port->interface, owner->interface, owner->zero_copy ? "zero-copy" : "copy mode",
			    strerror(-error), error == -EBUSY ? " (another AF_XDP socket holds the queue)" : "");
	}
	port->zero_copy = owner->zero_copy;
	atomic_store(&port->fd, xsk_socket__fd(port->socket));
	return 0;
}

// Frames [first, first + count) of the UMEM into the port's fill ring.
static int fill_frames(struct ref_end *end, struct ref_port *port, uint32_t first, uint32_t count)
{
	const struct ref_options *options = end->options;
	port->frame_mask = ~(uint64_t)(options->umem_frame_size - 1);
	port->rx_frames = count;
	uint32_t index = 0;
	if (xsk_ring_prod__reserve(&port->rings.fill, count, &index) != count)
		return fail(end, "the fill ring (%u) has no room for %u frames", options->ring_size, count);
	for (uint32_t i = 0; i < count; i++)
		*xsk_ring_prod__fill_addr(&port->rings.fill, index + i) = (uint64_t)(first + i) * options->umem_frame_size;
	xsk_ring_prod__submit(&port->rings.fill, count);
	return 0;
}

// Frames [0, rx_frames) go to the fill ring; the rest are ours to send.
static int give_out_frames(struct ref_end *end, struct ref_port *port)
{
	const struct ref_options *options = end->options;
	if (fill_frames(end, port, 0, options->frames / 2))
		return -1;
	port->tx_frames = options->frames - port->rx_frames;

	port->tx_free = malloc(sizeof(uint64_t) * port->tx_frames);
	if (!port->tx_free)
		return fail(end, "out of memory");
	// A stack: the last pushed is sent first. Pushed from the top so that
	// the first frames sent are the lowest addresses.
	for (uint32_t i = 0; i < port->tx_frames; i++)
		port->tx_free[i] = (uint64_t)(port->rx_frames + port->tx_frames - 1 - i) * options->umem_frame_size;
	port->tx_free_count = port->tx_frames;
	return 0;
}

static int set_busy_poll(struct ref_end *end, struct ref_port *port)
{
	int fd = atomic_load(&port->fd);
	const struct {
		int option;
		int value;
		const char *name;
	} settings[] = {
		{ SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL" },
		{ SO_BUSY_POLL, 20, "SO_BUSY_POLL" },
		{ SO_BUSY_POLL_BUDGET, (int)end->options->batch, "SO_BUSY_POLL_BUDGET" },
	};
	for (unsigned i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
		if (setsockopt(fd, SOL_SOCKET, settings[i].option, &settings[i].value, sizeof(int)) != 0)
			return fail(end, "setsockopt(%s, %d): %s", settings[i].name, settings[i].value,
				    strerror(errno));
	}
	return 0;
}

static int attach_program(struct ref_end *end, struct ref_port *port)
{
	char log[4096];
	pthread_mutex_lock(&program_load_lock);
	int error = cafxdp_program_load(end->object_bytes, end->object_size, &port->program, log, sizeof(log));
	pthread_mutex_unlock(&program_load_lock);
	if (error) {
		char reason[128];
		libbpf_strerror(error, reason, sizeof(reason)); // knows libbpf's own codes (4000+) too
		size_t length = strlen(log);
		while (length > 0 && log[length - 1] == '\n')
			log[--length] = '\0';
		return fail(end, "cannot load the XDP program from %s: %s%s%s", end->options->xdp_object, reason,
			    length ? "\n" : "", log);
	}

	uint32_t existing = 0;
	if (bpf_xdp_query_id(port->ifindex, 0, &existing) == 0 && existing != 0)
		return fail(end, "%s already has an XDP program attached (id %u), perhaps left by a run that "
			    "died; remove it with `ip link set dev %s xdp off`", port->interface, existing,
			    port->interface);

	// Native first; generic where the driver has no XDP of its own.
	const uint32_t modes[2] = { XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE };
	for (int attempt = 0; attempt < 2; attempt++) {
		error = bpf_xdp_attach(port->ifindex, port->program.program_fd,
				       modes[attempt] | XDP_FLAGS_UPDATE_IF_NOEXIST, NULL);
		if (!error) {
			port->attach_mode = modes[attempt];
			port->native = modes[attempt] == XDP_FLAGS_DRV_MODE;
			break;
		}
		if (error == -EBUSY || error == -EEXIST)
			return fail(end, "%s already has an XDP program attached", port->interface);
	}
	if (!port->attach_mode)
		return fail(end, "cannot attach the XDP program to %s: %s", port->interface, strerror(-error));

	uint32_t key = 0, ethertype = 0x88B5;
	if (bpf_map_update_elem(port->program.config_map_fd, &key, &ethertype, 0) != 0)
		return fail(end, "cannot set the EtherType filter on %s: %s", port->interface, strerror(errno));
	uint32_t queue = 0, fd = (uint32_t)atomic_load(&port->fd);
	if (bpf_map_update_elem(port->program.xsks_map_fd, &queue, &fd, 0) != 0)
		return fail(end, "cannot put %s's socket in the XSKMAP at queue 0: %s", port->interface,
			    strerror(errno));
	return 0;
}

// A port's name and interface, with nothing open yet (what close expects).
static void prepare_port(struct ref_port *port, const char *name, const char *interface)
{
	memset(port, 0, sizeof(*port));
	atomic_init(&port->fd, -1);
	port->name = name;
	port->interface = interface;
}

void ref_end_init(struct ref_end *end, int index, const struct ref_options *options, const void *object_bytes,
		  size_t object_size)
{
	static const char *const names[REF_MAX_ENDS] = { "A", "B", "F" };
	memset(end, 0, sizeof(*end));
	end->index = index;
	end->name = names[index];
	end->options = options;
	end->object_bytes = object_bytes;
	end->object_size = object_size;
	end->netns_fd = -1;
	if (index == REF_F) {
		end->port_count = 2;
		prepare_port(&end->ports[0], "FA", options->interface[REF_IF_FA]);
		prepare_port(&end->ports[1], "FB", options->interface[REF_IF_FB]);
	} else {
		end->port_count = 1;
		prepare_port(&end->ports[0], end->name, options->interface[index]);
	}
	atomic_init(&end->status, REF_END_STARTING);
}

// A or B: one socket over its own UMEM, half its frames to receive into,
// half to send from.
static int open_end_port(struct ref_end *end)
{
	struct ref_port *port = &end->ports[0];
	if (find_interface(end, port) || create_socket(end, port) || give_out_frames(end, port))
		return -1;
	if (end->options->busy_poll && set_busy_poll(end, port))
		return -1;
	return attach_program(end, port);
}

// F: FA's socket registers the UMEM, FB's shares it; each fill ring gets
// half the frames (no TX frames: F sends only what it received). The
// programs go on last, once both sockets can take what they redirect.
static int open_relay_ports(struct ref_end *end)
{
	struct ref_port *fa = &end->ports[0], *fb = &end->ports[1];
	const uint32_t half = end->options->frames / 2;
	if (find_interface(end, fa) || find_interface(end, fb))
		return -1;
	if (create_socket(end, fa) || create_shared_socket(end, fb, fa))
		return -1;
	if (fill_frames(end, fa, 0, half) || fill_frames(end, fb, half, end->options->frames - half))
		return -1;
	for (int i = 0; i < 2; i++)
		if (end->options->busy_poll && set_busy_poll(end, &end->ports[i]))
			return -1;
	if (attach_program(end, fa) || attach_program(end, fb))
		return -1;
	return 0;
}

int ref_port_open(struct ref_end *end)
{
	if (enter_namespace(end) || (end->index == REF_F ? open_relay_ports(end) : open_end_port(end))) {
		ref_port_close(end);
		return -1;
	}
	return 0;
}

static void read_port_statistics(struct ref_port *port)
{
	int fd = atomic_load(&port->fd);
	if (fd >= 0)
		cafxdp_statistics(fd, &port->statistics);
	if (!port->program.object)
		return;
	int cpus = libbpf_num_possible_cpus();
	if (cpus <= 0 || cpus > 4096)
		return;
	uint64_t values[4096];
	uint64_t totals[3] = { 0, 0, 0 };
	for (uint32_t key = 0; key < 3; key++) {
		if (bpf_map_lookup_elem(port->program.counters_map_fd, &key, values) != 0)
			continue;
		for (int cpu = 0; cpu < cpus; cpu++)
			totals[key] += values[cpu];
	}
	port->program_redirected = totals[1];
	port->program_passed = totals[2];
}

void ref_port_read_statistics(struct ref_end *end)
{
	for (int i = 0; i < end->port_count; i++)
		read_port_statistics(&end->ports[i]);
}

static void detach(struct ref_port *port, uint32_t mode)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, options, .old_prog_fd = port->program.program_fd);
	bpf_xdp_detach(port->ifindex, mode, &options);
}

static void close_socket(struct ref_port *port)
{
	atomic_store(&port->fd, -1);
	if (port->socket)
		xsk_socket__delete(port->socket);
	port->socket = NULL;
}

// Only on the port that registered the UMEM (the others' umem is NULL), and
// only once no socket holds it any more.
static void close_umem(struct ref_port *port)
{
	if (port->umem)
		xsk_umem__delete(port->umem);
	port->umem = NULL;
	if (port->area)
		munmap(port->area, port->area_size);
	port->area = NULL;
}

static void detach_program(struct ref_port *port)
{
	uint32_t mode = __atomic_exchange_n(&port->attach_mode, 0, __ATOMIC_ACQ_REL);
	if (mode)
		detach(port, mode);
	cafxdp_program_close(&port->program);
}

// Sockets, then the UMEM (the sockets hold it), then the programs: nothing is
// redirected to a socket that is going away, and the interfaces are left as
// they were found. The sockets go last made first: F's shared one (FB)
// before the one that registered the UMEM (FA). Runs on the end's thread,
// still in its namespace.
void ref_port_close(struct ref_end *end)
{
	for (int i = end->port_count - 1; i >= 0; i--)
		close_socket(&end->ports[i]);
	for (int i = 0; i < end->port_count; i++)
		close_umem(&end->ports[i]);
	for (int i = 0; i < end->port_count; i++) {
		detach_program(&end->ports[i]);
		free(end->ports[i].tx_free);
		end->ports[i].tx_free = NULL;
	}
}

// From the watchdog's thread when the end's thread hangs: the process is
// about to end, which closes the sockets; the programs would stay attached.
void ref_port_emergency_detach(struct ref_end *end)
{
	uint32_t modes[2] = { 0, 0 };
	bool attached = false;
	for (int i = end->port_count - 1; i >= 0; i--) {
		struct ref_port *port = &end->ports[i];
		int fd = atomic_exchange(&port->fd, -1);
		if (fd >= 0)
			close(fd);
		modes[i] = __atomic_exchange_n(&port->attach_mode, 0, __ATOMIC_ACQ_REL);
		attached |= modes[i] != 0;
	}
	if (!attached)
		return;
	int netns = end->netns_fd >= 0 ? end->netns_fd : ref_original_netns_fd;
	if (netns >= 0 && setns(netns, CLONE_NEWNET) != 0)
		return;
	for (int i = 0; i < end->port_count; i++)
		if (modes[i])
			detach(&end->ports[i], modes[i]);
}
