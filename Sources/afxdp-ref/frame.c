#include "frame.h"

int ref_frame_self_test(void)
{
	static const uint64_t sequences[] = {
		0, 1, 7, 8, 127, 128, 200, 255, 256, 0x1234567890ull, UINT64_MAX - 300, UINT64_MAX,
	};
	static const uint8_t a[6] = { 2, 0, 0, 0, 0, 1 }, b[6] = { 2, 0, 0, 0, 0, 2 };
	uint8_t frame[1514];
	for (uint32_t length = REF_PAYLOAD_OFFSET; length <= sizeof(frame); length++) {
		for (unsigned k = 0; k < sizeof(sequences) / sizeof(sequences[0]); k++) {
			uint64_t sequence = sequences[k];
			memset(frame, 0xEE, sizeof(frame));
			ref_frame_write_header(frame, a, b);
			ref_frame_write(frame, length, sequence, 42);
			// The definition, byte by byte.
			if (frame[12] != 0x88 || frame[13] != 0xB5)
				return -1;
			for (int i = 0; i < 8; i++) {
				if (frame[14 + i] != (uint8_t)(sequence >> (8 * i)) ||
				    frame[22 + i] != (uint8_t)(42ull >> (8 * i)))
					return -1;
			}
			for (uint32_t i = 0; i < length - REF_PAYLOAD_OFFSET; i++) {
				if (frame[REF_PAYLOAD_OFFSET + i] != (uint8_t)(sequence + i))
					return -1;
			}
			if (length < sizeof(frame) && frame[length] != 0xEE)
				return -1; // wrote past the end
			uint64_t s, t;
			if (ref_frame_check(frame, length, &s, &t) != REF_INTACT || s != sequence || t != 42)
				return -1;
			// The byte-wise form writes the same bytes and reads the frame the same.
			uint8_t copy[1514];
			memset(copy, 0xEE, sizeof(copy));
			ref_test_frame_write(copy, length, sequence, 42, b, a);
			if (memcmp(copy, frame, sizeof(frame)) != 0)
				return -1;
			bool intact = false;
			if (!ref_test_frame_parse(frame, length, &s, &t, &intact) || !intact || s != sequence || t != 42)
				return -1;
			if (length > REF_PAYLOAD_OFFSET) {
				// One flipped bit anywhere in the payload is seen.
				uint32_t at = REF_PAYLOAD_OFFSET + (uint32_t)((sequence + length) % (length - REF_PAYLOAD_OFFSET));
				frame[at] ^= 0x10;
				if (ref_frame_check(frame, length, &s, &t) != REF_CORRUPTED)
					return -1;
				if (!ref_test_frame_parse(frame, length, &s, &t, &intact) || intact || s != sequence)
					return -1;
			}
		}
	}
	frame[12] = 0x08;
	uint64_t s, t;
	if (ref_frame_check(frame, 64, &s, &t) != REF_FOREIGN || ref_frame_check(frame, 29, &s, &t) != REF_FOREIGN)
		return -1;
	bool intact;
	if (ref_test_frame_parse(frame, 64, &s, &t, &intact) || ref_test_frame_parse(frame, 29, &s, &t, &intact))
		return -1;
	return 0;
}
