#define _GNU_SOURCE
#include "CAFXDP.h"

#include <pthread.h>
#include <sched.h>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>

// Swift's XDPDescriptor mirrors struct xdp_desc; keep them in step.
_Static_assert(sizeof(struct xdp_desc) == 16, "xdp_desc layout changed");
_Static_assert(sizeof(struct xdp_statistics) == 48, "xdp_statistics layout changed");

// libbpf's messages since the last load. libbpf and libxdp call the print
// callback from any thread (socket creation too), so it is locked.
static char libbpf_messages[4096];
static size_t libbpf_messages_length;
static pthread_mutex_t libbpf_messages_lock = PTHREAD_MUTEX_INITIALIZER;

static int collect_libbpf_message(enum libbpf_print_level level, const char *format, va_list args)
{
    if (level == LIBBPF_DEBUG)
        return 0;
    pthread_mutex_lock(&libbpf_messages_lock);
    if (libbpf_messages_length + 1 < sizeof(libbpf_messages)) {
        size_t room = sizeof(libbpf_messages) - libbpf_messages_length;
        int written = vsnprintf(libbpf_messages + libbpf_messages_length, room, format, args);
        if (written > 0)
            libbpf_messages_length += (size_t)written < room ? (size_t)written : room - 1;
    }
    pthread_mutex_unlock(&libbpf_messages_lock);
    return 0;
}

void cafxdp_silence_libbpf(void)
{
    libbpf_set_print(collect_libbpf_message);
}

static int map_fd(struct bpf_object *object, const char *name)
{
    struct bpf_map *map = bpf_object__find_map_by_name(object, name);
    return map ? bpf_map__fd(map) : -ENOENT;
}

int cafxdp_program_load(const void *object_bytes, size_t object_size,
                        cafxdp_program *out, char *log, size_t log_size)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&libbpf_messages_lock);
    libbpf_messages_length = 0;
    libbpf_messages[0] = '\0';
    pthread_mutex_unlock(&libbpf_messages_lock);

    LIBBPF_OPTS(bpf_object_open_opts, options, .object_name = "afxdp_redirect");
    struct bpf_object *object = bpf_object__open_mem(object_bytes, object_size, &options);
    int error = 0;
    if (!object) {
        error = -errno;
        goto out;
    }
    error = bpf_object__load(object);
    if (error)
        goto close;

    struct bpf_program *program = bpf_object__find_program_by_name(object, "afxdp_redirect");
    if (!program) {
        error = -ENOENT;
        goto close;
    }
    out->program_fd = bpf_program__fd(program);
    out->xsks_map_fd = map_fd(object, "afxdp_xsks");
    out->config_map_fd = map_fd(object, "afxdp_config");
    out->counters_map_fd = map_fd(object, "afxdp_counters");
    if (out->program_fd < 0 || out->xsks_map_fd < 0 || out->config_map_fd < 0 || out->counters_map_fd < 0) {
        error = -ENOENT;
        goto close;
    }
    out->object = object;
    goto out;

close:
    bpf_object__close(object);
    memset(out, 0, sizeof(*out));
out:
    if (log && log_size) {
        pthread_mutex_lock(&libbpf_messages_lock);
        size_t n = libbpf_messages_length < log_size - 1 ? libbpf_messages_length : log_size - 1;
        memcpy(log, libbpf_messages, n);
        log[n] = '\0';
        pthread_mutex_unlock(&libbpf_messages_lock);
    }
    return error;
}

void cafxdp_program_close(cafxdp_program *program)
{
    if (program->object)
        bpf_object__close(program->object);
    memset(program, 0, sizeof(*program));
}

int cafxdp_program_detach(int ifindex, uint32_t flags, int program_fd)
{
    LIBBPF_OPTS(bpf_xdp_attach_opts, options, .old_prog_fd = program_fd);
    return bpf_xdp_detach(ifindex, flags, &options);
}

int cafxdp_attached_program_query(int ifindex, cafxdp_attached_program *out)
{
    memset(out, 0, sizeof(*out));
    LIBBPF_OPTS(bpf_xdp_query_opts, query);
    int error = bpf_xdp_query(ifindex, 0, &query);
    if (error)
        return error;
    if (query.attach_mode == XDP_ATTACHED_NONE || query.prog_id == 0)
        return 0;
    out->program_id = query.prog_id;
    out->attach_flags = query.attach_mode == XDP_ATTACHED_SKB ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE;

    int program_fd = bpf_prog_get_fd_by_id(query.prog_id);
    if (program_fd < 0)
        return 0;  // gone meanwhile, or not ours to read: not the engine's
    uint32_t map_ids[8] = {0};
    struct bpf_prog_info info;
    memset(&info, 0, sizeof(info));
    info.nr_map_ids = 8;
    info.map_ids = (uint64_t)(uintptr_t)map_ids;
    uint32_t length = sizeof(info);
    if (bpf_obj_get_info_by_fd(program_fd, &info, &length) == 0 && strcmp(info.name, "afxdp_redirect") == 0) {
        uint32_t maps = info.nr_map_ids < 8 ? info.nr_map_ids : 8;
        for (uint32_t i = 0; i < maps; i++) {
            int map_fd = bpf_map_get_fd_by_id(map_ids[i]);
            if (map_fd < 0)
                continue;
            struct bpf_map_info map_info;
            memset(&map_info, 0, sizeof(map_info));
            uint32_t map_length = sizeof(map_info);
            if (bpf_obj_get_info_by_fd(map_fd, &map_info, &map_length) == 0 && strcmp(map_info.name, "afxdp_config") == 0) {
                uint32_t key, magic = 0, pid = 0, start = 0, pid_namespace = 0;
                key = CAFXDP_CONFIG_OWNER_PID_NAMESPACE;
                bpf_map_lookup_elem(map_fd, &key, &pid_namespace);
                key = CAFXDP_CONFIG_OWNER_MAGIC;
                bpf_map_lookup_elem(map_fd, &key, &magic);
                key = CAFXDP_CONFIG_OWNER_PID;
                bpf_map_lookup_elem(map_fd, &key, &pid);
                key = CAFXDP_CONFIG_OWNER_START;
                bpf_map_lookup_elem(map_fd, &key, &start);
                if (magic == CAFXDP_OWNER_MAGIC && pid != 0) {
                    out->is_engines = 1;
                    out->owner_pid = pid;
                    out->owner_start = start;
                    out->owner_pid_namespace = pid_namespace;
                }
            }
            close(map_fd);
        }
    }
    close(program_fd);
    return 0;
}

int cafxdp_attached_program_detach(int ifindex, uint32_t attach_flags, uint32_t program_id)
{
    int program_fd = bpf_prog_get_fd_by_id(program_id);
    if (program_fd < 0)
        return -errno;
    int error = cafxdp_program_detach(ifindex, attach_flags, program_fd);
    close(program_fd);
    return error;
}

int cafxdp_umem_create(struct xsk_umem **umem, void *area, uint64_t size,
                       uint32_t fill_size, uint32_t completion_size,
                       uint32_t frame_size, uint32_t frame_headroom,
                       cafxdp_rings *rings)
{
    memset(&rings->fill, 0, sizeof(rings->fill));
    memset(&rings->completion, 0, sizeof(rings->completion));
    struct xsk_umem_config config = {
        .fill_size = fill_size,
        .comp_size = completion_size,
        .frame_size = frame_size,
        .frame_headroom = frame_headroom,
        .flags = 0,
    };
    return xsk_umem__create(umem, area, size, &rings->fill, &rings->completion, &config);
}

int cafxdp_socket_create(struct xsk_socket **socket, const char *ifname,
                         uint32_t queue, struct xsk_umem *umem,
                         uint32_t rx_size, uint32_t tx_size,
                         uint16_t bind_flags, cafxdp_rings *rings)
{
    memset(&rings->rx, 0, sizeof(rings->rx));
    memset(&rings->tx, 0, sizeof(rings->tx));
    struct xsk_socket_config config = {
        .rx_size = rx_size,
        .tx_size = tx_size,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
        .xdp_flags = 0,
        .bind_flags = bind_flags,
    };
    return xsk_socket__create(socket, ifname, queue, umem, &rings->rx, &rings->tx, &config);
}

int cafxdp_socket_create_shared(struct xsk_socket **socket, const char *ifname,
                                uint32_t queue, struct xsk_umem *umem,
                                uint32_t rx_size, uint32_t tx_size,
                                cafxdp_rings *rings)
{
    memset(rings, 0, sizeof(*rings));
    struct xsk_socket_config config = {
        .rx_size = rx_size,
        .tx_size = tx_size,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
        .xdp_flags = 0,
        // A socket sharing a UMEM takes its mode (copy or zero-copy, need
        // wakeup) from the UMEM's first socket: the kernel refuses flags here.
        .bind_flags = 0,
    };
    return xsk_socket__create_shared(socket, ifname, queue, umem, &rings->rx, &rings->tx,
                                     &rings->fill, &rings->completion, &config);
}

int cafxdp_statistics(int fd, struct xdp_statistics *out)
{
    socklen_t length = sizeof(*out);
    memset(out, 0, sizeof(*out));
    if (getsockopt(fd, SOL_XDP, XDP_STATISTICS, out, &length) != 0)
        return -errno;
    return 0;
}

int cafxdp_link_usable(int fd, int ifindex)
{
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    request.ifr_ifindex = ifindex;
    // By index, then by the name it has now: the interface may be renamed.
    if (ioctl(fd, SIOCGIFNAME, &request) != 0)
        return -errno;
    if (ioctl(fd, SIOCGIFFLAGS, &request) != 0)
        return -errno;
    // The kernel transmits only on a device that is up and has carrier.
    if (!(request.ifr_flags & IFF_UP))
        return 0;
    // Carrier as the transmit path sees it, at once (IFF_RUNNING follows
    // it only after the kernel's link-watch work, up to a second later).
    struct ethtool_value link = { .cmd = ETHTOOL_GLINK };
    request.ifr_data = (void *)&link;
    if (ioctl(fd, SIOCETHTOOL, &request) == 0)
        return link.data ? 1 : 0;
    // A driver without ETHTOOL_GLINK: the flag, late or not.
    if (ioctl(fd, SIOCGIFFLAGS, &request) != 0)
        return -errno;
    return (request.ifr_flags & IFF_RUNNING) ? 1 : 0;
}

int cafxdp_queue_count(const char *ifname)
{
    const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct ethtool_channels channels = { .cmd = ETHTOOL_GCHANNELS };
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    strncpy(request.ifr_name, ifname, IFNAMSIZ - 1);
    request.ifr_data = (void *)&channels;
    int result;
    if (ioctl(fd, SIOCETHTOOL, &request) == 0) {
        const unsigned rx = channels.rx_count + channels.combined_count;
        const unsigned tx = channels.tx_count + channels.combined_count;
        result = (int)(rx > tx ? rx : tx);
    } else {
        result = -errno;
    }
    close(fd);
    return result;
}

int cafxdp_enter_network_namespace(int fd)
{
    return setns(fd, CLONE_NEWNET) == 0 ? 0 : -errno;
}

int cafxdp_pin_thread(pthread_t thread, int cpu)
{
    if (cpu < 0 || cpu >= CPU_SETSIZE)
        return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(thread, sizeof(set), &set);
}

int cafxdp_pipe_cloexec(int fds[2])
{
    return pipe2(fds, O_CLOEXEC) == 0 ? 0 : -errno;
}

__thread char cafxdp_thread_token_storage;
__thread long cafxdp_handler_depth;
