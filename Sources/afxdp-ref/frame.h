// The test frame of swift-afxdp (AFXDPTestbed's TestFrame defines it):
//
//     0   destination MAC        6 bytes
//     6   source MAC             6 bytes
//     12  EtherType 0x88B5       2 bytes, big endian
//     14  sequence number        8 bytes, little endian
//     22  send time (ns)         8 bytes, little endian, CLOCK_MONOTONIC
//     30  payload                byte i = (uint8_t)(sequence + i)
//
// Written and checked eight payload bytes at a time, as afxdp-bench's
// FrameCodec does, so that both tools do the same work per frame.
#ifndef AFXDP_REF_FRAME_H
#define AFXDP_REF_FRAME_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the frame codec stores little-endian words as they are"
#endif

#define REF_ETHERTYPE 0x88B5
#define REF_SEQUENCE_OFFSET 14
#define REF_TIMESTAMP_OFFSET 22
#define REF_PAYLOAD_OFFSET 30

// Payload word at payload byte `offset`: byte j is (uint8_t)(sequence + offset + j).
// Adds the ramp 0,1,..,7 bytewise with no carry from one byte into the next.
static inline uint64_t ref_payload_word(uint64_t sequence, uint32_t offset)
{
	const uint64_t ramp = 0x0706050403020100ull;
	const uint64_t low7 = 0x7F7F7F7F7F7F7F7Full;
	const uint64_t high1 = 0x8080808080808080ull;
	uint64_t start = (uint64_t)(uint8_t)(sequence + offset) * 0x0101010101010101ull;
	return ((start & low7) + (ramp & low7)) ^ ((start ^ ramp) & high1);
}

// Addresses and EtherType: written once per TX frame, at setup.
static inline void ref_frame_write_header(uint8_t *frame, const uint8_t destination[6],
					  const uint8_t source[6])
{
	memcpy(frame, destination, 6);
	memcpy(frame + 6, source, 6);
	frame[12] = REF_ETHERTYPE >> 8;
	frame[13] = REF_ETHERTYPE & 0xFF;
}

// Sequence, timestamp and payload: written for every frame sent.
static inline void ref_frame_write(uint8_t *frame, uint32_t length, uint64_t sequence,
				   uint64_t timestamp)
{
	memcpy(frame + REF_SEQUENCE_OFFSET, &sequence, 8);
	memcpy(frame + REF_TIMESTAMP_OFFSET, &timestamp, 8);
	uint8_t *payload = frame + REF_PAYLOAD_OFFSET;
	uint32_t count = length - REF_PAYLOAD_OFFSET;
	uint32_t offset = 0;
	for (; offset + 8 <= count; offset += 8) {
		uint64_t word = ref_payload_word(sequence, offset);
		memcpy(payload + offset, &word, 8);
	}
	uint8_t value = (uint8_t)(sequence + offset);
	for (; offset < count; offset++)
		payload[offset] = value++;
}

enum ref_verdict { REF_INTACT, REF_CORRUPTED, REF_FOREIGN };

// Reads a received frame: sequence, timestamp, and whether the EtherType and
// every payload byte are as written. Reads the whole payload (no early exit).
static inline enum ref_verdict ref_frame_check(const uint8_t *frame, uint32_t length,
					       uint64_t *sequence, uint64_t *timestamp)
{
	if (length < REF_PAYLOAD_OFFSET || frame[12] != (REF_ETHERTYPE >> 8) ||
	    frame[13] != (REF_ETHERTYPE & 0xFF))
		return REF_FOREIGN;
	uint64_t s, t;
	memcpy(&s, frame + REF_SEQUENCE_OFFSET, 8);
	memcpy(&t, frame + REF_TIMESTAMP_OFFSET, 8);
	const uint8_t *payload = frame + REF_PAYLOAD_OFFSET;
	uint32_t count = length - REF_PAYLOAD_OFFSET;
	uint32_t offset = 0;
	uint64_t difference = 0;
	for (; offset + 8 <= count; offset += 8) {
		uint64_t word;
		memcpy(&word, payload + offset, 8);
		difference |= word ^ ref_payload_word(s, offset);
	}
	uint8_t value = (uint8_t)(s + offset);
	for (; offset < count; offset++)
		difference |= (uint8_t)(payload[offset] ^ value++);
	*sequence = s;
	*timestamp = t;
	return difference == 0 ? REF_INTACT : REF_CORRUPTED;
}

// --- The byte-wise form -----------------------------------------------------
//
// TestFrame.write and TestFrame.parse as AFXDPTestbed has them, which
// `afxdp-bench instruction-loop` uses for every frame: the whole frame written
// each time (addresses and EtherType too), a byte at a time, and the payload
// checked a byte at a time up to the first difference. The instruction-loop
// mode does the same, so that both sides do the same work per frame.

static inline void ref_test_frame_write(uint8_t *frame, uint32_t length, uint64_t sequence,
					uint64_t timestamp, const uint8_t source[6],
					const uint8_t destination[6])
{
	for (int i = 0; i < 6; i++) {
		frame[i] = destination[i];
		frame[6 + i] = source[i];
	}
	frame[12] = REF_ETHERTYPE >> 8;
	frame[13] = REF_ETHERTYPE & 0xFF;
	memcpy(frame + REF_SEQUENCE_OFFSET, &sequence, 8);
	memcpy(frame + REF_TIMESTAMP_OFFSET, &timestamp, 8);
	uint8_t *payload = frame + REF_PAYLOAD_OFFSET;
	uint8_t value = (uint8_t)sequence;
	for (uint32_t i = 0; i < length - REF_PAYLOAD_OFFSET; i++)
		payload[i] = value++;
}

// False if the frame is too short or not a test frame; else its sequence,
// timestamp, and whether every payload byte is as written.
static inline bool ref_test_frame_parse(const uint8_t *frame, uint32_t length, uint64_t *sequence,
					uint64_t *timestamp, bool *intact)
{
	if (length < REF_PAYLOAD_OFFSET)
		return false;
	uint16_t ethertype;
	memcpy(&ethertype, frame + 12, 2);
	if (__builtin_bswap16(ethertype) != REF_ETHERTYPE)
		return false;
	uint64_t s, t;
	memcpy(&s, frame + REF_SEQUENCE_OFFSET, 8);
	memcpy(&t, frame + REF_TIMESTAMP_OFFSET, 8);
	uint8_t expected = (uint8_t)s;
	bool same = true;
	for (uint32_t i = REF_PAYLOAD_OFFSET; i < length; i++) {
		if (frame[i] != expected) {
			same = false;
			break;
		}
		expected++;
	}
	*sequence = s;
	*timestamp = t;
	*intact = same;
	return true;
}

// Checks the word-wise codec against the byte-wise definition over every
// length and a spread of sequence numbers; 0 when they agree.
int ref_frame_self_test(void);

#endif
