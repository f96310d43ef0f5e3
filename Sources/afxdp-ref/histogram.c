#include "histogram.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// The values bucket `index` covers: [*low, *high].
static void bucket_range(uint32_t index, uint64_t *low, uint64_t *high)
{
	if (index < 2 * REF_HISTOGRAM_SUB) {
		*low = *high = index;
		return;
	}
	uint32_t shift = index / REF_HISTOGRAM_SUB - 1;
	uint64_t sub = index % REF_HISTOGRAM_SUB + REF_HISTOGRAM_SUB;
	*low = sub << shift;
	*high = ((sub + 1) << shift) - 1; // wraps to UINT64_MAX for the last bucket
}

uint64_t ref_histogram_percentile(const struct ref_histogram *h, double percentile)
{
	if (h->count == 0)
		return 0;
	uint64_t rank = (uint64_t)ceil(percentile / 100.0 * (double)h->count);
	if (rank < 1)
		rank = 1;
	if (rank > h->count)
		rank = h->count;
	uint64_t seen = 0;
	for (uint32_t index = 0; index < REF_HISTOGRAM_BUCKETS; index++) {
		seen += h->buckets[index];
		if (seen >= rank) {
			uint64_t low, high;
			bucket_range(index, &low, &high);
			return high < h->max ? high : h->max;
		}
	}
	return h->max;
}

int ref_histogram_self_test(void)
{
	// Every bucket's range maps back to itself, and the ranges tile uint64_t.
	uint64_t next = 0;
	for (uint32_t index = 0; index < REF_HISTOGRAM_BUCKETS; index++) {
		uint64_t low, high;
		bucket_range(index, &low, &high);
		if (low != next || high < low)
			return -1;
		if (ref_histogram_index(low) != index || ref_histogram_index(high) != index)
			return -1;
		next = high + 1;
	}
	if (next != 0) // wrapped: the last bucket ends at UINT64_MAX
		return -1;

	struct ref_histogram *h = calloc(1, sizeof(*h));
	if (!h)
		return -1;
	for (uint64_t v = 1; v <= 100000; v++)
		ref_histogram_record(h, v, 1);
	int result = 0;
	uint64_t p50 = ref_histogram_percentile(h, 50);
	uint64_t p99 = ref_histogram_percentile(h, 99);
	if (p50 < 50000 || p50 > 50000 + 50000 / 64 + 1 || p99 < 99000 || p99 > 99000 + 99000 / 64 + 1)
		result = -1;
	if (ref_histogram_percentile(h, 100) != 100000 || h->sum != 100000ull * 100001 / 2)
		result = -1;
	free(h);
	return result;
}
