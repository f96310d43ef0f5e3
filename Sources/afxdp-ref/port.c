// Opening and closing one port, on the thread that will serve it: enter the
// end's network namespace (namespaces are per thread), read the interface's
// MAC address, make the UMEM and the socket (zero-copy first, then copy
// mode), load and attach the XDP program, set its EtherType filter and put
// the socket in its XSKMAP. Closing goes the other way: socket, UMEM, then
// the program is detached.
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
// "loads are serialised by the caller". Both ends load their own copy.
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

static const char *interface_of(const struct ref_end *end)
{
	return end->options->interface[end->index];
}

static int enter_namespace(struct ref_end *end)
{
	const char *name = end->options->namespace[end->index];
	end->port.netns_fd = -1;
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
	// here to detach the program if this thread hangs.
	end->port.netns_fd = fd;
	return 0;
}

// The MAC address, asked of the kernel through a socket made on this thread,
// so in the end's namespace. (/sys/class/net shows the devices of the
// namespace that mounted /sys, not of this thread's.)
static int read_mac_address(struct ref_end *end)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(end, "socket(AF_INET): %s", strerror(errno));
	struct ifreq request;
	memset(&request, 0, sizeof(request));
	snprintf(request.ifr_name, sizeof(request.ifr_name), "%s", interface_of(end));
	int result = ioctl(fd, SIOCGIFHWADDR, &request);
	int error = errno;
	close(fd);
	if (result != 0)
		return fail(end, "cannot read the MAC address of %s: %s", interface_of(end), strerror(error));
	if (request.ifr_hwaddr.sa_family != ARPHRD_ETHER)
		return fail(end, "%s is not an Ethernet interface", interface_of(end));
	memcpy(end->port.mac, request.ifr_hwaddr.sa_data, 6);
	return 0;
}

static int create_socket(struct ref_end *end)
{
	const struct ref_options *options = end->options;
	struct ref_port *port = &end->port;

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
		error = cafxdp_socket_create(&port->socket, interface_of(end), 0, port->umem,
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
	return fail(end, "cannot bind an AF_XDP socket to %s queue 0: %s%s", interface_of(end),
		    strerror(-error), error == -EBUSY ? " (another AF_XDP socket holds the queue)" : "");
}

// Frames [0, rx_frames) go to the fill ring; the rest are ours to send.
static int give_out_frames(struct ref_end *end)
{
	const struct ref_options *options = end->options;
	struct ref_port *port = &end->port;
	port->frame_mask = ~(uint64_t)(options->umem_frame_size - 1);
	port->rx_frames = options->frames / 2;
	port->tx_frames = options->frames - port->rx_frames;

	uint32_t index = 0;
	if (xsk_ring_prod__reserve(&port->rings.fill, port->rx_frames, &index) != port->rx_frames)
		return fail(end, "the fill ring (%u) has no room for %u frames", options->ring_size,
			    port->rx_frames);
	for (uint32_t i = 0; i < port->rx_frames; i++)
		*xsk_ring_prod__fill_addr(&port->rings.fill, index + i) = (uint64_t)i * options->umem_frame_size;
	xsk_ring_prod__submit(&port->rings.fill, port->rx_frames);

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

static int set_busy_poll(struct ref_end *end)
{
	int fd = atomic_load(&end->port.fd);
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

static int attach_program(struct ref_end *end)
{
	struct ref_port *port = &end->port;
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
			    "died; remove it with `ip link set dev %s xdp off`", interface_of(end), existing,
			    interface_of(end));

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
			return fail(end, "%s already has an XDP program attached", interface_of(end));
	}
	if (!port->attach_mode)
		return fail(end, "cannot attach the XDP program to %s: %s", interface_of(end), strerror(-error));

	uint32_t key = 0, ethertype = 0x88B5;
	if (bpf_map_update_elem(port->program.config_map_fd, &key, &ethertype, 0) != 0)
		return fail(end, "cannot set the EtherType filter: %s", strerror(errno));
	uint32_t queue = 0, fd = (uint32_t)atomic_load(&port->fd);
	if (bpf_map_update_elem(port->program.xsks_map_fd, &queue, &fd, 0) != 0)
		return fail(end, "cannot put the socket in the XSKMAP at queue 0: %s", strerror(errno));
	return 0;
}

int ref_port_open(struct ref_end *end)
{
	struct ref_port *port = &end->port;
	memset(port, 0, sizeof(*port));
	atomic_init(&port->fd, -1);
	port->netns_fd = -1;

	if (enter_namespace(end) || read_mac_address(end))
		goto failed;
	port->ifindex = (int)if_nametoindex(interface_of(end));
	if (port->ifindex == 0) {
		const char *ns = end->options->namespace[end->index];
		fail(end, "no interface %s in %s%s", interface_of(end), ns ? "network namespace " : "this network namespace",
		     ns ? ns : "");
		goto failed;
	}
	if (create_socket(end) || give_out_frames(end))
		goto failed;
	if (end->options->busy_poll && set_busy_poll(end))
		goto failed;
	if (attach_program(end))
		goto failed;
	return 0;

failed:
	ref_port_close(end);
	return -1;
}

void ref_port_read_statistics(struct ref_end *end)
{
	struct ref_port *port = &end->port;
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

static void detach(struct ref_port *port, uint32_t mode)
{
	LIBBPF_OPTS(bpf_xdp_attach_opts, options, .old_prog_fd = port->program.program_fd);
	bpf_xdp_detach(port->ifindex, mode, &options);
}

// Socket, then UMEM (the socket holds it), then the program: nothing is
// redirected to a socket that is going away, and the interface is left as
// it was found. Runs on the end's thread, still in its namespace.
void ref_port_close(struct ref_end *end)
{
	struct ref_port *port = &end->port;
	atomic_store(&port->fd, -1);
	if (port->socket)
		xsk_socket__delete(port->socket);
	port->socket = NULL;
	if (port->umem)
		xsk_umem__delete(port->umem);
	port->umem = NULL;
	if (port->area)
		munmap(port->area, port->area_size);
	port->area = NULL;
	uint32_t mode = __atomic_exchange_n(&port->attach_mode, 0, __ATOMIC_ACQ_REL);
	if (mode)
		detach(port, mode);
	cafxdp_program_close(&port->program);
	free(port->tx_free);
	port->tx_free = NULL;
}

// From the watchdog's thread when the end's thread hangs: the process is
// about to end, which closes the sockets; the program would stay attached.
void ref_port_emergency_detach(struct ref_end *end)
{
	struct ref_port *port = &end->port;
	int fd = atomic_exchange(&port->fd, -1);
	if (fd >= 0)
		close(fd);
	uint32_t mode = __atomic_exchange_n(&port->attach_mode, 0, __ATOMIC_ACQ_REL);
	if (!mode)
		return;
	int netns = port->netns_fd >= 0 ? port->netns_fd : ref_original_netns_fd;
	if (netns >= 0 && setns(netns, CLONE_NEWNET) != 0)
		return;
	detach(port, mode);
}
