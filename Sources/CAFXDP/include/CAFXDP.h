// The engine's view of the "NIC hardware": libxdp's AF_XDP UMEM and sockets,
// and libbpf's program loading. Swift calls libxdp / libbpf directly wherever
// it can; a wrapper lives here only when Swift cannot see something, and each
// says why. Every symbol carries the `cafxdp_` prefix.
#ifndef CAFXDP_H
#define CAFXDP_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <xdp/xsk.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>

// --- The XDP program --------------------------------------------------------

// The loaded program and the file descriptors of its maps. Owned by Swift's
// XDPProgram, released by cafxdp_program_close.
typedef struct cafxdp_program {
    struct bpf_object *object;
    int program_fd;
    int xsks_map_fd;
    int config_map_fd;
    int counters_map_fd;
} cafxdp_program;

// Why a wrapper: the libbpf object-loading sequence (open from memory, find
// the program and three maps by name, load) is five calls with two error
// conventions (NULL + errno for open, -errno for load); doing it in C keeps
// the error handling in one place. Returns 0 or -errno; on failure nothing
// is left open. `log` (may be NULL) receives libbpf's verifier / loader
// messages, truncated to log_size.
int cafxdp_program_load(const void *object_bytes, size_t object_size,
                        cafxdp_program *out, char *log, size_t log_size);

// Closes the object and with it every map and program fd.
void cafxdp_program_close(cafxdp_program *program);

// Detaches `program_fd` from `ifindex` (only if it is still the attached
// program). Returns 0 or a negative errno. In C because libbpf rejects an
// options struct whose padding is not zero, and Swift leaves padding as it
// finds it.
int cafxdp_program_detach(int ifindex, uint32_t flags, int program_fd);

// Slots of the program's config map (afxdp_config) that user space writes
// and the program never reads: who attached it, so that another process can
// tell this engine's program left by a dead process (replace it) from one a
// live process uses (refuse, naming it) and from anything else (never touch).
enum {
    CAFXDP_CONFIG_OWNER_PID = 1,
    CAFXDP_CONFIG_OWNER_START = 2,  // the owner's start time, clock ticks since boot (low 32 bits)
    CAFXDP_CONFIG_OWNER_MAGIC = 3,
    CAFXDP_CONFIG_OWNER_PID_NAMESPACE = 4,  // inode of the owner's PID namespace (low 32 bits)
};
#define CAFXDP_OWNER_MAGIC 0x41465844u  // "AFXD"

// What is attached to an interface, as far as this engine can tell.
typedef struct cafxdp_attached_program {
    uint32_t program_id;
    uint32_t attach_flags;   // XDP_FLAGS_SKB_MODE or XDP_FLAGS_DRV_MODE: how it is attached
    int is_engines;          // our program's name and config map, with the owner recorded
    uint32_t owner_pid;
    uint32_t owner_start;
    uint32_t owner_pid_namespace;
} cafxdp_attached_program;

// Why a wrapper: finding a program's maps takes bpf_prog_info with a
// caller-owned array of map ids (a pointer stored as a __u64), then a fd and
// an info query per map: one place for the fds to be closed on every path.
// Returns 0 (out->program_id 0: nothing attached) or -errno.
int cafxdp_attached_program_query(int ifindex, cafxdp_attached_program *out);

// Detaches the program with `program_id` from `ifindex` if it is still the
// one attached there. Returns 0 or -errno.
int cafxdp_attached_program_detach(int ifindex, uint32_t attach_flags, uint32_t program_id);

// Why a wrapper: libbpf's print callback is variadic (va_list), which Swift
// cannot implement. Routes libbpf's messages into a buffer that the next
// cafxdp_program_load copies out, instead of libbpf writing to stderr.
void cafxdp_silence_libbpf(void);

// --- Sockets ----------------------------------------------------------------

// Why a wrapper: libxdp reads every field of the ring structs it is handed and
// does not initialise all cached indices; they must start zeroed (seen to
// corrupt completions in release builds otherwise). These wrappers allocate
// zeroed ring structs on the C side so Swift never passes uninitialised ones.
typedef struct cafxdp_rings {
    struct xsk_ring_prod fill;
    struct xsk_ring_cons completion;
    struct xsk_ring_cons rx;
    struct xsk_ring_prod tx;
} cafxdp_rings;

// Creates the UMEM over `area` (page aligned, `size` bytes). Returns 0 or -errno.
int cafxdp_umem_create(struct xsk_umem **umem, void *area, uint64_t size,
                       uint32_t fill_size, uint32_t completion_size,
                       uint32_t frame_size, uint32_t frame_headroom,
                       cafxdp_rings *rings);

// Creates the socket on ifname/queue, bound to the UMEM, without letting
// libxdp load its own program (the engine loads its own). Returns 0 or -errno.
int cafxdp_socket_create(struct xsk_socket **socket, const char *ifname,
                         uint32_t queue, struct xsk_umem *umem,
                         uint32_t rx_size, uint32_t tx_size,
                         uint16_t bind_flags, cafxdp_rings *rings);


// Creates another socket on an already registered UMEM (XDP_SHARED_UMEM): on
// a different interface or queue it gets fill and completion rings of its own,
// made on its own file descriptor and written into `rings`. Why a wrapper:
// as above, every ring struct handed to libxdp must start zeroed. Returns 0
// or -errno.
int cafxdp_socket_create_shared(struct xsk_socket **socket, const char *ifname,
                                uint32_t queue, struct xsk_umem *umem,
                                uint32_t rx_size, uint32_t tx_size,
                                cafxdp_rings *rings);

// The kernel's socket statistics (getsockopt XDP_STATISTICS).
// Why a wrapper: the option length must match the struct the kernel expects.
int cafxdp_statistics(int fd, struct xdp_statistics *out);

// --- Link state -------------------------------------------------------------

// Whether interface `ifindex` can carry frames now. Why a wrapper: struct
// ifreq is a union Swift cannot fill readably. `fd` is any socket made in the
// interface's network namespace (the ioctls answer for that namespace).
// Returns 1 (up, with carrier), 0 (down, or no carrier), or -errno (-ENODEV:
// no such interface any more).
int cafxdp_link_usable(int fd, int ifindex);

// How many queues an AF_XDP socket may bind to on interface `ifname` of the
// caller's namespace (ETHTOOL_GCHANNELS: the larger of its RX and TX counts,
// combined channels included). Why a wrapper: struct ifreq, as above. Returns
// the count or -errno (-EOPNOTSUPP: the driver does not say).
int cafxdp_queue_count(const char *ifname);

// --- Multi-buffer -----------------------------------------------------------

// Multi-buffer AF_XDP (Linux 6.6): the bind flag, which Debian 12's UAPI
// headers (6.1) predate. (The descriptor's continuation option is
// `XDPDescriptor.continues` on the Swift side.)
enum {
    CAFXDP_BIND_USE_SG = 1 << 4,  // XDP_USE_SG
};

// --- Socket options ---------------------------------------------------------

// Why here: Swift's Glibc module does not name the busy-polling options added
// in Linux 5.11; these constants carry the kernel's values to Swift. Delete
// them when Glibc exports SO_PREFER_BUSY_POLL and SO_BUSY_POLL_BUDGET.
#include <sys/socket.h>
#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif
static const int cafxdp_so_prefer_busy_poll = SO_PREFER_BUSY_POLL;
static const int cafxdp_so_busy_poll_budget = SO_BUSY_POLL_BUDGET;

// --- Namespaces -------------------------------------------------------------

// Why a wrapper: glibc declares setns() and CLONE_NEWNET only under
// _GNU_SOURCE, which Swift's Glibc module is not built with. Moves the calling
// thread into the network namespace `fd` refers to. Returns 0 or -errno.
int cafxdp_enter_network_namespace(int fd);

// --- Threads and pipes ----------------------------------------------------

// Why wrappers: glibc declares pthread_setaffinity_np, the CPU_SET macros and
// pipe2 only under _GNU_SOURCE, which Swift's Glibc module is not built with.
// Pins `thread` to `cpu`; returns 0 or an errno value (EINVAL: no such CPU).
int cafxdp_pin_thread(pthread_t thread, int cpu);
// pipe2(fds, O_CLOEXEC); returns 0 or -errno.
int cafxdp_pipe_cloexec(int fds[2]);

// --- Thread identity and handler depth --------------------------------------

// Why here: Swift has no thread-local variables of its own, and
// pthread_getspecific / pthread_setspecific are a library call each, paid on
// the hot path; a C thread-local is a plain load and store.

// A word that names the calling thread: the address of a thread-local, never
// 0, unique among the threads alive. A region's owner is recorded with it, so
// that a thread calling back into a region it already owns (from a handler,
// at any depth) is recognised instead of waiting for itself.
extern __thread char cafxdp_thread_token_storage;
static inline uintptr_t cafxdp_thread_token(void) { return (uintptr_t)&cafxdp_thread_token_storage; }

// How many engine handlers (receive, completion) the calling thread is
// inside, over every port: calls that would wait for another thread (close,
// pause) do not wait when it is above 0, since that thread may be waiting
// for one this thread holds.
extern __thread long cafxdp_handler_depth;
static inline long cafxdp_handler_depth_get(void) { return cafxdp_handler_depth; }
static inline void cafxdp_handler_depth_set(long depth) { cafxdp_handler_depth = depth; }

#endif
