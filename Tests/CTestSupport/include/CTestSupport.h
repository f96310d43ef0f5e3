// Test-only helpers that need C.
#ifndef CTESTSUPPORT_H
#define CTESTSUPPORT_H

// Clears the calling thread's effective capability set (the permitted set is
// kept, so it can be raised again). Capabilities are per thread in Linux, so
// only this thread loses them. Returns 0 or -errno.
int ctest_drop_effective_capabilities(void);

// Raises the calling thread's effective set back to its permitted set.
int ctest_restore_effective_capabilities(void);

#endif
