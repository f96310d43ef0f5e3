#include "CTestSupport.h"

#include <errno.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/resource.h>

// Why C: capget/capset have no glibc wrappers and syscall() is variadic.
static int read_caps(struct __user_cap_header_struct *header, struct __user_cap_data_struct data[2])
{
    header->version = _LINUX_CAPABILITY_VERSION_3;
    header->pid = 0;
    return syscall(SYS_capget, header, data) == 0 ? 0 : -errno;
}

int ctest_drop_effective_capabilities(void)
{
    struct __user_cap_header_struct header;
    struct __user_cap_data_struct data[2];
    int error = read_caps(&header, data);
    if (error)
        return error;
    data[0].effective = 0;
    data[1].effective = 0;
    return syscall(SYS_capset, &header, data) == 0 ? 0 : -errno;
}

int ctest_restore_effective_capabilities(void)
{
    struct __user_cap_header_struct header;
    struct __user_cap_data_struct data[2];
    int error = read_caps(&header, data);
    if (error)
        return error;
    data[0].effective = data[0].permitted;
    data[1].effective = data[1].permitted;
    return syscall(SYS_capset, &header, data) == 0 ? 0 : -errno;
}

int ctest_drop_effective_capability(int capability)
{
    struct __user_cap_header_struct header;
    struct __user_cap_data_struct data[2];
    int error = read_caps(&header, data);
    if (error)
        return error;
    data[capability / 32].effective &= ~(1u << (capability % 32));
    return syscall(SYS_capset, &header, data) == 0 ? 0 : -errno;
}

int ctest_set_memlock_soft_limit(unsigned long long bytes, unsigned long long *previous)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0)
        return -errno;
    *previous = limit.rlim_cur;
    limit.rlim_cur = bytes < limit.rlim_max ? bytes : limit.rlim_max;
    return setrlimit(RLIMIT_MEMLOCK, &limit) == 0 ? 0 : -errno;
}
