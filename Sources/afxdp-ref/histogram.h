// A fixed log-linear histogram of nanoseconds: values below 128 have a bucket
// each; above, every power of two is split into 64 buckets (relative error
// under 1/64, about 1.6%). 3776 buckets cover all of uint64_t, so recording
// never fails and never allocates.
#ifndef AFXDP_REF_HISTOGRAM_H
#define AFXDP_REF_HISTOGRAM_H

#include <stdint.h>

#define REF_HISTOGRAM_SUB_BITS 6
#define REF_HISTOGRAM_SUB (1u << REF_HISTOGRAM_SUB_BITS)
// Groups 0 and 1 are exact (0..127); group g >= 2 covers [64 << (g-1), 64 << g).
#define REF_HISTOGRAM_BUCKETS ((64 - REF_HISTOGRAM_SUB_BITS + 1) * REF_HISTOGRAM_SUB) // 3776

struct ref_histogram {
	uint64_t count;
	uint64_t sum;
	uint64_t max;
	uint64_t buckets[REF_HISTOGRAM_BUCKETS];
};

static inline uint32_t ref_histogram_index(uint64_t value)
{
	if (value < 2 * REF_HISTOGRAM_SUB)
		return (uint32_t)value;
	uint32_t msb = 63u - (uint32_t)__builtin_clzll(value);
	uint32_t shift = msb - REF_HISTOGRAM_SUB_BITS;
	return (shift + 1) * REF_HISTOGRAM_SUB + (uint32_t)(value >> shift) - REF_HISTOGRAM_SUB;
}

static inline void ref_histogram_record(struct ref_histogram *h, uint64_t value, uint64_t count)
{
	h->buckets[ref_histogram_index(value)] += count;
	h->count += count;
	h->sum += value * count;
	if (value > h->max)
		h->max = value;
}

// The highest value that falls in the bucket holding the given percentile
// (0 < percentile <= 100), capped at the largest value recorded; 0 if empty.
uint64_t ref_histogram_percentile(const struct ref_histogram *h, double percentile);

// Self-check of the bucket arithmetic; returns 0 when sound.
int ref_histogram_self_test(void);

#endif
