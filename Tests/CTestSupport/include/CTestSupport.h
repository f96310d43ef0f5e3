// Test-only helpers that need C.
#ifndef CTESTSUPPORT_H
#define CTESTSUPPORT_H

// Clears the calling thread's effective capability set (the permitted set is
// kept, so it can be raised again). Capabilities are per thread in Linux, so
// only this thread loses them. Returns 0 or -errno.
int ctest_drop_effective_capabilities(void);

// Clears one capability (e.g. 14, CAP_IPC_LOCK) from the calling thread's
// effective set. Returns 0 or -errno.
int ctest_drop_effective_capability(int capability);

// Sets the process's soft RLIMIT_MEMLOCK (why C: Swift's Glibc does not name
// RLIMIT_MEMLOCK); the old soft limit goes to *previous. Returns 0 or -errno.
int ctest_set_memlock_soft_limit(unsigned long long bytes, unsigned long long *previous);

// Raises the calling thread's effective set back to its permitted set.
int ctest_restore_effective_capabilities(void);

#endif
