/*-------------------------------------------------------------------------
 *
 * ttlv_test.c
 *		Standalone test of the KMIP TTLV encoder/decoder (src/providers/kmip/ttlv.c).
 *
 * Encodes a KMIP 1.4 Encrypt request and decodes it back; rejects a set of
 * hand-built malformed inputs; round-trips every item type; and, when the
 * seed corpus made by PyKMIP's own encoder is present, compares and decodes
 * those messages too, and the responses captured from a live PyKMIP server
 * (a batch with a failed item, a wrong tag, a revoked and a destroyed key).  Prints "N passed, N failed"; exits 1 on failure.
 *
 * Build and run (from the repository root):
 *	gcc -Wall -Wextra -g -fsanitize=address,undefined -Isrc \
 *		test/fuzz/ttlv_test.c src/providers/kmip/ttlv.c -o ttlv_test
 *	./ttlv_test [test/fuzz/corpus]
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "providers/kmip/ttlv.h"
#include "minicheck.h"

static KmipDoc doc;

static const uint8_t iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static const char plain[] = "hello world";
static const uint8_t aad[] = {'a', 'a', 'd'};

/* The Encrypt request byok will send, in KMIP 1.4 field order */
static KmipError
build_encrypt_request(KmipBuf *b)
{
	kmip_buf_init(b, KMIP_MAX_MESSAGE);
	kmip_begin_struct(b, KMIP_TAG_REQUEST_MESSAGE);
	kmip_begin_struct(b, KMIP_TAG_REQUEST_HEADER);
	kmip_begin_struct(b, KMIP_TAG_PROTOCOL_VERSION);
	kmip_put_int32(b, KMIP_TAG_PROTOCOL_VERSION_MAJOR, 1);
	kmip_put_int32(b, KMIP_TAG_PROTOCOL_VERSION_MINOR, 4);
	kmip_end_struct(b);
	kmip_put_int32(b, KMIP_TAG_BATCH_COUNT, 1);
	kmip_end_struct(b);
	kmip_begin_struct(b, KMIP_TAG_BATCH_ITEM);
	kmip_put_enum(b, KMIP_TAG_OPERATION, KMIP_OP_ENCRYPT);
	kmip_begin_struct(b, KMIP_TAG_REQUEST_PAYLOAD);
	kmip_put_text(b, KMIP_TAG_UNIQUE_IDENTIFIER, "42", 2);
	kmip_begin_struct(b, KMIP_TAG_CRYPTOGRAPHIC_PARAMETERS);
	kmip_put_enum(b, KMIP_TAG_BLOCK_CIPHER_MODE, KMIP_MODE_GCM);
	kmip_put_enum(b, KMIP_TAG_CRYPTOGRAPHIC_ALGORITHM, KMIP_ALG_AES);
	kmip_put_int32(b, KMIP_TAG_TAG_LENGTH, 16);
	kmip_end_struct(b);
	kmip_put_bytes(b, KMIP_TAG_DATA, (const uint8_t *) plain, strlen(plain));
	kmip_put_bytes(b, KMIP_TAG_IV_COUNTER_NONCE, iv, sizeof(iv));
	kmip_put_bytes(b, KMIP_TAG_AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA,
				   aad, sizeof(aad));
	kmip_end_struct(b);
	kmip_end_struct(b);
	kmip_end_struct(b);
	return kmip_buf_finish(b);
}

static void
test_encrypt_request(void)
{
	KmipBuf		b;
	int			payload,
				params,
				n;
	int32_t		i32;
	uint32_t	u32;
	const uint8_t *p;
	size_t		len;
	const char *s;
	char		uid[16];
	size_t		total;
	static const uint32_t path[] = {KMIP_TAG_REQUEST_HEADER,
		KMIP_TAG_PROTOCOL_VERSION, KMIP_TAG_PROTOCOL_VERSION_MINOR};

	CHECK(build_encrypt_request(&b) == KMIP_OK);
	CHECK(b.len % 8 == 0);
	CHECK(kmip_peek_length(b.data, 8, &total) == KMIP_OK && total == b.len);
	CHECK(kmip_decode(&doc, b.data, b.len) == KMIP_OK);
	CHECK(doc.nodes[0].tag == KMIP_TAG_REQUEST_MESSAGE);
	CHECK(doc.nodes[0].type == KMIP_TYPE_STRUCTURE);
	CHECK(doc.nnodes == 17);

	n = kmip_find_path(&doc, 0, path, 3);
	CHECK(kmip_get_int32(&doc, n, &i32) == KMIP_OK && i32 == 4);
	n = kmip_find_path(&doc, 0, path, 2);
	CHECK(kmip_child_int32(&doc, n, KMIP_TAG_PROTOCOL_VERSION_MAJOR, &i32) == KMIP_OK && i32 == 1);
	n = kmip_find_child(&doc, 0, KMIP_TAG_REQUEST_HEADER);
	CHECK(kmip_child_int32(&doc, n, KMIP_TAG_BATCH_COUNT, &i32) == KMIP_OK && i32 == 1);
	n = kmip_find_child(&doc, 0, KMIP_TAG_BATCH_ITEM);
	CHECK(n > 0 && kmip_find_next(&doc, n) == -1);
	CHECK(kmip_child_enum(&doc, n, KMIP_TAG_OPERATION, &u32) == KMIP_OK && u32 == KMIP_OP_ENCRYPT);
	payload = kmip_find_child(&doc, n, KMIP_TAG_REQUEST_PAYLOAD);
	CHECK(payload > 0 && doc.nodes[payload].parent == n);
	CHECK(kmip_child_text(&doc, payload, KMIP_TAG_UNIQUE_IDENTIFIER, &s, &len) == KMIP_OK &&
		  len == 2 && memcmp(s, "42", 2) == 0);
	CHECK(kmip_get_text_copy(&doc, kmip_find_child(&doc, payload, KMIP_TAG_UNIQUE_IDENTIFIER),
							 uid, sizeof(uid)) == KMIP_OK && strcmp(uid, "42") == 0);
	CHECK(kmip_get_text_copy(&doc, kmip_find_child(&doc, payload, KMIP_TAG_UNIQUE_IDENTIFIER),
							 uid, 2) == KMIP_ERR_RANGE);
	params = kmip_find_child(&doc, payload, KMIP_TAG_CRYPTOGRAPHIC_PARAMETERS);
	CHECK(params > 0 && doc.nodes[params].depth == 3);
	CHECK(kmip_child_enum(&doc, params, KMIP_TAG_BLOCK_CIPHER_MODE, &u32) == KMIP_OK && u32 == 9);
	CHECK(kmip_child_enum(&doc, params, KMIP_TAG_CRYPTOGRAPHIC_ALGORITHM, &u32) == KMIP_OK && u32 == 3);
	CHECK(kmip_child_int32(&doc, params, KMIP_TAG_TAG_LENGTH, &i32) == KMIP_OK && i32 == 16);
	CHECK(kmip_child_bytes(&doc, payload, KMIP_TAG_DATA, &p, &len) == KMIP_OK &&
		  len == strlen(plain) && memcmp(p, plain, len) == 0);
	CHECK(kmip_child_bytes(&doc, payload, KMIP_TAG_IV_COUNTER_NONCE, &p, &len) == KMIP_OK &&
		  len == sizeof(iv) && memcmp(p, iv, len) == 0);
	CHECK(kmip_child_bytes(&doc, payload, KMIP_TAG_AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA,
						   &p, &len) == KMIP_OK && len == 3 && memcmp(p, aad, 3) == 0);
	/* type checking and misses */
	CHECK(kmip_child_enum(&doc, params, KMIP_TAG_TAG_LENGTH, &u32) == KMIP_ERR_WRONG_TYPE);
	CHECK(kmip_child_text(&doc, payload, KMIP_TAG_DATA, &s, &len) == KMIP_ERR_WRONG_TYPE);
	CHECK(kmip_child_bytes(&doc, payload, KMIP_TAG_AUTHENTICATED_ENCRYPTION_TAG, &p, &len) == KMIP_ERR_NOT_FOUND);
	CHECK(kmip_get_int32(&doc, -1, &i32) == KMIP_ERR_NOT_FOUND);
	CHECK(kmip_get_int32(&doc, doc.nnodes, &i32) == KMIP_ERR_NOT_FOUND);
	CHECK(kmip_find_child(&doc, 999, KMIP_TAG_DATA) == -1);

	/* every strict prefix and every longer buffer must be rejected */
	{
		size_t		cut;
		int			bad = 0;
		uint8_t    *big = malloc(b.len + 8);

		for (cut = 0; cut < b.len; cut++)
		{
			uint8_t    *copy = malloc(cut ? cut : 1);

			memcpy(copy, b.data, cut);
			if (kmip_decode(&doc, copy, cut) == KMIP_OK)
				bad++;
			free(copy);
		}
		CHECK(bad == 0);
		memcpy(big, b.data, b.len);
		memset(big + b.len, 0, 8);
		CHECK(kmip_decode(&doc, big, b.len + 8) == KMIP_ERR_TRAILING);
		free(big);
	}
	kmip_buf_free(&b);
	CHECK(b.data == NULL && b.len == 0);
}

/* Write an item header at p */
static void
hdr(uint8_t *p, uint32_t tag, uint8_t type, uint32_t len)
{
	p[0] = (uint8_t) (tag >> 16);
	p[1] = (uint8_t) (tag >> 8);
	p[2] = (uint8_t) tag;
	p[3] = type;
	p[4] = (uint8_t) (len >> 24);
	p[5] = (uint8_t) (len >> 16);
	p[6] = (uint8_t) (len >> 8);
	p[7] = (uint8_t) len;
}

static KmipError
dec(const uint8_t *p, size_t len)
{
	/* decode from an exact-size heap copy so ASan catches any overread */
	uint8_t    *copy = malloc(len ? len : 1);
	KmipError	err;

	memcpy(copy, p, len);
	err = kmip_decode(&doc, copy, len);
	free(copy);
	return err;
}

static void
test_malformed(void)
{
	uint8_t		m[4096];
	int			i;

	memset(m, 0, sizeof(m));

	/* truncated header / value */
	hdr(m, KMIP_TAG_BATCH_COUNT, KMIP_TYPE_INTEGER, 4);
	CHECK(dec(m, 0) == KMIP_ERR_TRUNCATED);
	CHECK(dec(m, 7) == KMIP_ERR_TRUNCATED);
	CHECK(dec(m, 8) == KMIP_ERR_TRUNCATED);
	CHECK(dec(m, 12) == KMIP_ERR_TRUNCATED);	/* value present, padding not */
	CHECK(dec(m, 16) == KMIP_OK);

	/* bad lengths for fixed-size types */
	hdr(m, KMIP_TAG_BATCH_COUNT, KMIP_TYPE_INTEGER, 8);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_LENGTH);
	hdr(m, KMIP_TAG_OPERATION, KMIP_TYPE_ENUMERATION, 2);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_LENGTH);
	hdr(m, 0x420001, KMIP_TYPE_LONG_INTEGER, 4);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_LENGTH);
	hdr(m, KMIP_TAG_TIME_STAMP, KMIP_TYPE_DATE_TIME, 4);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_LENGTH);
	hdr(m, 0x420001, KMIP_TYPE_INTERVAL, 8);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_LENGTH);
	hdr(m, 0x420001, KMIP_TYPE_BOOLEAN, 4);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_LENGTH);
	hdr(m, 0x420001, KMIP_TYPE_BIG_INTEGER, 5);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_LENGTH);
	hdr(m, 0x420001, KMIP_TYPE_BIG_INTEGER, 0);
	CHECK(dec(m, 8) == KMIP_ERR_BAD_LENGTH);
	hdr(m, KMIP_TAG_DATA, KMIP_TYPE_BYTE_STRING, 0xFFFFFFFFu);
	CHECK(dec(m, 16) == KMIP_ERR_TRUNCATED);
	hdr(m, KMIP_TAG_DATA, KMIP_TYPE_BYTE_STRING, 0xFFFFFFF9u);
	CHECK(dec(m, 16) == KMIP_ERR_TRUNCATED);

	/* boolean value other than 0/1 */
	hdr(m, 0x420001, KMIP_TYPE_BOOLEAN, 8);
	m[15] = 2;
	CHECK(dec(m, 16) == KMIP_ERR_BAD_BOOLEAN);
	m[15] = 0;
	m[8] = 1;
	CHECK(dec(m, 16) == KMIP_ERR_BAD_BOOLEAN);
	m[8] = 0;
	m[15] = 1;
	CHECK(dec(m, 16) == KMIP_OK);
	m[15] = 0;

	/* bad padding */
	hdr(m, KMIP_TAG_BATCH_COUNT, KMIP_TYPE_INTEGER, 4);
	m[13] = 0xAA;
	CHECK(dec(m, 16) == KMIP_ERR_BAD_PADDING);
	m[13] = 0;
	hdr(m, KMIP_TAG_UNIQUE_IDENTIFIER, KMIP_TYPE_TEXT_STRING, 3);
	memcpy(m + 8, "abc", 3);
	m[15] = 1;
	CHECK(dec(m, 16) == KMIP_ERR_BAD_PADDING);
	m[15] = 0;
	CHECK(dec(m, 16) == KMIP_OK);
	CHECK(dec(m, 11) == KMIP_ERR_TRUNCATED);	/* padding out of bounds */
	memset(m, 0, 16);

	/* bad tag and type */
	hdr(m, 0x430001, KMIP_TYPE_INTEGER, 4);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_TAG);
	hdr(m, 0x540001, KMIP_TYPE_INTEGER, 4);	/* extension tag is fine */
	CHECK(dec(m, 16) == KMIP_OK);
	hdr(m, 0x420001, 0, 4);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_TYPE);
	hdr(m, 0x420001, 11, 4);
	CHECK(dec(m, 16) == KMIP_ERR_BAD_TYPE);

	/* structure length mismatches: struct { Integer } */
	hdr(m, KMIP_TAG_PROTOCOL_VERSION, KMIP_TYPE_STRUCTURE, 16);
	hdr(m + 8, KMIP_TAG_PROTOCOL_VERSION_MAJOR, KMIP_TYPE_INTEGER, 4);
	CHECK(dec(m, 24) == KMIP_OK);
	CHECK(doc.nnodes == 2 && doc.nodes[1].parent == 0 && doc.nodes[0].first_child == 1);
	hdr(m, KMIP_TAG_PROTOCOL_VERSION, KMIP_TYPE_STRUCTURE, 24);	/* too long */
	CHECK(dec(m, 24) == KMIP_ERR_TRUNCATED);
	CHECK(dec(m, 32) == KMIP_ERR_BAD_TAG);	/* zeros inside: tag 0 */
	hdr(m, KMIP_TAG_PROTOCOL_VERSION, KMIP_TYPE_STRUCTURE, 8);	/* too short */
	CHECK(dec(m, 24) == KMIP_ERR_TRUNCATED);
	hdr(m, KMIP_TAG_PROTOCOL_VERSION, KMIP_TYPE_STRUCTURE, 12);	/* not x8 */
	CHECK(dec(m, 24) == KMIP_ERR_BAD_LENGTH);
	hdr(m, KMIP_TAG_PROTOCOL_VERSION, KMIP_TYPE_STRUCTURE, 16);
	CHECK(dec(m, 32) == KMIP_ERR_TRAILING);
	/* child crossing the end of a nested structure */
	hdr(m, KMIP_TAG_REQUEST_MESSAGE, KMIP_TYPE_STRUCTURE, 40);
	hdr(m + 8, KMIP_TAG_PROTOCOL_VERSION, KMIP_TYPE_STRUCTURE, 8);
	hdr(m + 16, KMIP_TAG_PROTOCOL_VERSION_MAJOR, KMIP_TYPE_INTEGER, 4);
	hdr(m + 32, KMIP_TAG_BATCH_COUNT, KMIP_TYPE_INTEGER, 4);
	CHECK(dec(m, 48) == KMIP_ERR_TRUNCATED);
	hdr(m + 8, KMIP_TAG_PROTOCOL_VERSION, KMIP_TYPE_STRUCTURE, 16);
	CHECK(dec(m, 48) == KMIP_OK);
	CHECK(doc.nnodes == 4 && doc.nodes[3].parent == 0 && doc.nodes[3].depth == 1 &&
		  doc.nodes[1].next_sibling == 3);
	memset(m, 0, 64);

	/* too deep: 17 nested structures (depth 0..16) */
	for (i = 0; i < 17; i++)
		hdr(m + 8 * i, KMIP_TAG_REQUEST_MESSAGE, KMIP_TYPE_STRUCTURE,
			(uint32_t) (8 * (16 - i)));
	CHECK(dec(m, 8 * 17) == KMIP_ERR_TOO_DEEP);
	/* 16 nested is fine */
	for (i = 0; i < 16; i++)
		hdr(m + 8 * i, KMIP_TAG_REQUEST_MESSAGE, KMIP_TYPE_STRUCTURE,
			(uint32_t) (8 * (15 - i)));
	CHECK(dec(m, 8 * 16) == KMIP_OK && doc.nnodes == 16);
	memset(m, 0, 8 * 17);

	/* too many nodes: a structure with 512 booleans = 513 nodes */
	{
		uint8_t    *big = calloc(1, 8 + 512 * 16);

		hdr(big, KMIP_TAG_REQUEST_MESSAGE, KMIP_TYPE_STRUCTURE, 512 * 16);
		for (i = 0; i < 512; i++)
			hdr(big + 8 + 16 * i, 0x420001, KMIP_TYPE_BOOLEAN, 8);
		CHECK(dec(big, 8 + 512 * 16) == KMIP_ERR_TOO_MANY_NODES);
		hdr(big, KMIP_TAG_REQUEST_MESSAGE, KMIP_TYPE_STRUCTURE, 511 * 16);
		CHECK(dec(big, 8 + 511 * 16) == KMIP_OK && doc.nnodes == 512);
		free(big);
	}

	/* too large */
	{
		size_t		n = KMIP_MAX_MESSAGE + 8;
		uint8_t    *big = calloc(1, n);
		size_t		total;

		hdr(big, KMIP_TAG_DATA, KMIP_TYPE_BYTE_STRING, (uint32_t) (n - 8));
		CHECK(dec(big, n) == KMIP_ERR_TOO_LARGE);
		CHECK(kmip_peek_length(big, 8, &total) == KMIP_ERR_TOO_LARGE);
		free(big);
	}
	CHECK(kmip_decode(&doc, NULL, 8) == KMIP_ERR_ARGUMENT);
	CHECK(kmip_decode(NULL, m, 8) == KMIP_ERR_ARGUMENT);
	CHECK(strcmp(kmip_strerror(KMIP_ERR_BAD_PADDING), "KMIP item has non-zero padding") == 0);
}

static void
test_roundtrip_types(void)
{
	KmipBuf		b;
	static const uint8_t bigpos[] = {0x01, 0x00};
	static const uint8_t bigneg[] = {0x80, 0x00, 0x00};
	static const uint8_t big16[16] = {0xFF, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
	static const uint8_t bytes9[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
	int32_t		i32;
	int64_t		i64;
	uint32_t	u32;
	int			bv;
	const uint8_t *p;
	const char *s;
	size_t		len;
	int			n;

	kmip_buf_init(&b, 0);
	kmip_begin_struct(&b, KMIP_TAG_RESPONSE_MESSAGE);
	kmip_put_int32(&b, 0x420001, INT32_MIN);
	kmip_put_int32(&b, 0x420002, -1);
	kmip_put_int64(&b, 0x420003, INT64_MIN);
	kmip_put_int64(&b, 0x420004, INT64_MAX);
	kmip_put_bigint(&b, 0x420005, bigpos, sizeof(bigpos));
	kmip_put_bigint(&b, 0x420006, bigneg, sizeof(bigneg));
	kmip_put_bigint(&b, 0x420007, big16, sizeof(big16));
	kmip_put_enum(&b, 0x420008, 0xFFFFFFFFu);
	kmip_put_bool(&b, 0x420009, 1);
	kmip_put_bool(&b, 0x42000A, 0);
	kmip_put_text(&b, 0x42000B, "", 0);
	kmip_put_text(&b, 0x42000C, "eight!!!", 8);
	kmip_put_bytes(&b, 0x42000D, bytes9, sizeof(bytes9));
	kmip_put_bytes(&b, 0x42000E, NULL, 0);
	kmip_put_datetime(&b, 0x42000F, 1700000000);
	kmip_put_interval(&b, 0x420010, 86400);
	kmip_begin_struct(&b, 0x420011);
	kmip_end_struct(&b);
	kmip_end_struct(&b);
	CHECK(kmip_buf_finish(&b) == KMIP_OK);
	CHECK(b.len == 8 + 16 * 2 + 16 * 2 + 16 + 16 + 24 + 16 + 16 * 2 + 8 + 16 + 24 + 8 + 16 * 2 + 8);
	CHECK(kmip_decode(&doc, b.data, b.len) == KMIP_OK);
	CHECK(doc.nnodes == 18);

	CHECK(kmip_child_int32(&doc, 0, 0x420001, &i32) == KMIP_OK && i32 == INT32_MIN);
	CHECK(kmip_child_int32(&doc, 0, 0x420002, &i32) == KMIP_OK && i32 == -1);
	CHECK(kmip_get_int64(&doc, kmip_find_child(&doc, 0, 0x420003), &i64) == KMIP_OK && i64 == INT64_MIN);
	CHECK(kmip_get_int64(&doc, kmip_find_child(&doc, 0, 0x420004), &i64) == KMIP_OK && i64 == INT64_MAX);
	n = kmip_find_child(&doc, 0, 0x420005);
	CHECK(kmip_get_bigint(&doc, n, &p, &len) == KMIP_OK && len == 8 &&
		  memcmp(p, "\0\0\0\0\0\0\x01\x00", 8) == 0);
	n = kmip_find_child(&doc, 0, 0x420006);
	CHECK(kmip_get_bigint(&doc, n, &p, &len) == KMIP_OK && len == 8 &&
		  memcmp(p, "\xff\xff\xff\xff\xff\x80\x00\x00", 8) == 0);
	n = kmip_find_child(&doc, 0, 0x420007);
	CHECK(kmip_get_bigint(&doc, n, &p, &len) == KMIP_OK && len == 16 && memcmp(p, big16, 16) == 0);
	CHECK(kmip_child_enum(&doc, 0, 0x420008, &u32) == KMIP_OK && u32 == 0xFFFFFFFFu);
	CHECK(kmip_get_bool(&doc, kmip_find_child(&doc, 0, 0x420009), &bv) == KMIP_OK && bv == 1);
	CHECK(kmip_get_bool(&doc, kmip_find_child(&doc, 0, 0x42000A), &bv) == KMIP_OK && bv == 0);
	CHECK(kmip_child_text(&doc, 0, 0x42000B, &s, &len) == KMIP_OK && len == 0);
	CHECK(kmip_child_text(&doc, 0, 0x42000C, &s, &len) == KMIP_OK && len == 8 &&
		  memcmp(s, "eight!!!", 8) == 0);
	CHECK(kmip_child_bytes(&doc, 0, 0x42000D, &p, &len) == KMIP_OK && len == 9 &&
		  memcmp(p, bytes9, 9) == 0);
	CHECK(kmip_child_bytes(&doc, 0, 0x42000E, &p, &len) == KMIP_OK && len == 0);
	CHECK(kmip_get_datetime(&doc, kmip_find_child(&doc, 0, 0x42000F), &i64) == KMIP_OK && i64 == 1700000000);
	CHECK(kmip_get_interval(&doc, kmip_find_child(&doc, 0, 0x420010), &u32) == KMIP_OK && u32 == 86400);
	n = kmip_find_child(&doc, 0, 0x420011);
	CHECK(n > 0 && doc.nodes[n].type == KMIP_TYPE_STRUCTURE && doc.nodes[n].vlen == 0 &&
		  doc.nodes[n].first_child == -1);
	/* getters refuse the wrong type */
	CHECK(kmip_get_int64(&doc, kmip_find_child(&doc, 0, 0x42000F), &i64) == KMIP_ERR_WRONG_TYPE);
	CHECK(kmip_get_int32(&doc, kmip_find_child(&doc, 0, 0x420008), &i32) == KMIP_ERR_WRONG_TYPE);
	CHECK(kmip_get_enum(&doc, kmip_find_child(&doc, 0, 0x420010), &u32) == KMIP_ERR_WRONG_TYPE);
	CHECK(kmip_get_bytes(&doc, kmip_find_child(&doc, 0, 0x42000C), &p, &len) == KMIP_ERR_WRONG_TYPE);
	kmip_buf_free(&b);

	/* encoder limits and misuse */
	kmip_buf_init(&b, 0);
	for (n = 0; n < KMIP_MAX_DEPTH; n++)
		kmip_begin_struct(&b, KMIP_TAG_REQUEST_MESSAGE);
	CHECK(b.err == KMIP_OK);
	CHECK(kmip_begin_struct(&b, KMIP_TAG_REQUEST_MESSAGE) == KMIP_ERR_TOO_DEEP);
	kmip_buf_free(&b);

	kmip_buf_init(&b, 0);
	kmip_begin_struct(&b, KMIP_TAG_REQUEST_MESSAGE);
	CHECK(kmip_buf_finish(&b) == KMIP_ERR_UNBALANCED);
	kmip_buf_free(&b);
	CHECK(kmip_end_struct(&b) == KMIP_ERR_UNBALANCED);
	kmip_buf_free(&b);

	kmip_buf_init(&b, 0);
	CHECK(kmip_put_int32(&b, 0x123456, 1) == KMIP_ERR_BAD_TAG);
	CHECK(kmip_put_int32(&b, KMIP_TAG_BATCH_COUNT, 1) == KMIP_ERR_BAD_TAG);	/* sticky */
	kmip_buf_free(&b);

	kmip_buf_init(&b, 0);
	{
		uint8_t    *big = calloc(1, KMIP_MAX_MESSAGE);

		CHECK(kmip_put_bytes(&b, KMIP_TAG_DATA, big, KMIP_MAX_MESSAGE - 8) == KMIP_OK);
		CHECK(b.len == KMIP_MAX_MESSAGE);
		kmip_buf_free(&b);
		CHECK(kmip_put_bytes(&b, KMIP_TAG_DATA, big, KMIP_MAX_MESSAGE - 7) == KMIP_ERR_TOO_LARGE);
		kmip_buf_free(&b);
		kmip_buf_init(&b, 1024);
		kmip_begin_struct(&b, KMIP_TAG_REQUEST_MESSAGE);
		for (n = 0; n < 100; n++)
			kmip_put_int32(&b, KMIP_TAG_BATCH_COUNT, n);
		CHECK(kmip_buf_finish(&b) == KMIP_ERR_TOO_LARGE && b.len <= 1024);
		free(big);
	}
	kmip_buf_free(&b);
}

static uint8_t *
read_file(const char *dir, const char *name, size_t *len)
{
	char		path[1024];
	FILE	   *f;
	uint8_t    *buf;
	long		n;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n > 0 ? (size_t) n : 1);
	if (fread(buf, 1, (size_t) n, f) != (size_t) n)
	{
		free(buf);
		fclose(f);
		return NULL;
	}
	fclose(f);
	*len = (size_t) n;
	return buf;
}

/* Messages produced by PyKMIP 0.10's own encoder (test/fuzz/corpus) */
static void
test_pykmip(const char *dir)
{
	uint8_t    *buf;
	size_t		len;
	int			bi,
				pl,
				n;
	uint32_t	u32;
	int32_t		i32;
	int64_t		i64;
	const uint8_t *p;
	const char *s;
	size_t		plen;
	static const uint32_t ts[] = {KMIP_TAG_RESPONSE_HEADER, KMIP_TAG_TIME_STAMP};

	buf = read_file(dir, "encrypt_response.bin", &len);
	if (buf == NULL)
	{
		printf("SKIP PyKMIP vectors: %s/encrypt_response.bin not found\n", dir);
		return;
	}
	CHECK(kmip_decode(&doc, buf, len) == KMIP_OK);
	CHECK(doc.nodes[0].tag == KMIP_TAG_RESPONSE_MESSAGE);
	CHECK(kmip_get_datetime(&doc, kmip_find_path(&doc, 0, ts, 2), &i64) == KMIP_OK && i64 == 1700000000);
	bi = kmip_find_child(&doc, 0, KMIP_TAG_BATCH_ITEM);
	CHECK(kmip_child_enum(&doc, bi, KMIP_TAG_OPERATION, &u32) == KMIP_OK && u32 == KMIP_OP_ENCRYPT);
	CHECK(kmip_child_enum(&doc, bi, KMIP_TAG_RESULT_STATUS, &u32) == KMIP_OK && u32 == KMIP_RESULT_SUCCESS);
	pl = kmip_find_child(&doc, bi, KMIP_TAG_RESPONSE_PAYLOAD);
	CHECK(kmip_child_text(&doc, pl, KMIP_TAG_UNIQUE_IDENTIFIER, &s, &plen) == KMIP_OK &&
		  plen == 2 && memcmp(s, "42", 2) == 0);
	CHECK(kmip_child_bytes(&doc, pl, KMIP_TAG_DATA, &p, &plen) == KMIP_OK && plen == 11 &&
		  p[0] == 1 && p[10] == 11);
	CHECK(kmip_child_bytes(&doc, pl, KMIP_TAG_IV_COUNTER_NONCE, &p, &plen) == KMIP_OK && plen == 12);
	CHECK(kmip_child_bytes(&doc, pl, KMIP_TAG_AUTHENTICATED_ENCRYPTION_TAG, &p, &plen) == KMIP_OK &&
		  plen == 16 && p[15] == 0xbb);
	free(buf);

	buf = read_file(dir, "error_response.bin", &len);
	if (CHECK(buf != NULL))
	{
		char		msg[64];

		CHECK(kmip_decode(&doc, buf, len) == KMIP_OK);
		bi = kmip_find_child(&doc, 0, KMIP_TAG_BATCH_ITEM);
		CHECK(kmip_child_enum(&doc, bi, KMIP_TAG_RESULT_STATUS, &u32) == KMIP_OK && u32 == KMIP_RESULT_FAILED);
		CHECK(kmip_child_enum(&doc, bi, KMIP_TAG_RESULT_REASON, &u32) == KMIP_OK &&
			  u32 == KMIP_REASON_ITEM_NOT_FOUND);
		n = kmip_find_child(&doc, bi, KMIP_TAG_RESULT_MESSAGE);
		CHECK(kmip_get_text_copy(&doc, n, msg, sizeof(msg)) == KMIP_OK &&
			  strcmp(msg, "Could not locate object: 99") == 0);
		CHECK(kmip_find_child(&doc, bi, KMIP_TAG_RESPONSE_PAYLOAD) == -1);
		free(buf);
	}

	buf = read_file(dir, "activate_response.bin", &len);
	if (CHECK(buf != NULL))
	{
		CHECK(kmip_decode(&doc, buf, len) == KMIP_OK);
		bi = kmip_find_child(&doc, 0, KMIP_TAG_BATCH_ITEM);
		CHECK(kmip_child_enum(&doc, bi, KMIP_TAG_OPERATION, &u32) == KMIP_OK && u32 == KMIP_OP_ACTIVATE);
		pl = kmip_find_child(&doc, bi, KMIP_TAG_RESPONSE_PAYLOAD);
		CHECK(kmip_child_text(&doc, pl, KMIP_TAG_UNIQUE_IDENTIFIER, &s, &plen) == KMIP_OK &&
			  plen == 1 && s[0] == '7');
		free(buf);
	}

	/* our Encrypt request must be byte-identical to PyKMIP's */
	buf = read_file(dir, "encrypt_request.bin", &len);
	if (CHECK(buf != NULL))
	{
		KmipBuf		b;
		static const uint8_t zero_iv[12] = {0};

		CHECK(kmip_decode(&doc, buf, len) == KMIP_OK);
		CHECK(kmip_child_int32(&doc, kmip_find_child(&doc, 0, KMIP_TAG_REQUEST_HEADER),
							   KMIP_TAG_BATCH_COUNT, &i32) == KMIP_OK && i32 == 1);

		kmip_buf_init(&b, 0);
		kmip_begin_struct(&b, KMIP_TAG_REQUEST_MESSAGE);
		kmip_begin_struct(&b, KMIP_TAG_REQUEST_HEADER);
		kmip_begin_struct(&b, KMIP_TAG_PROTOCOL_VERSION);
		kmip_put_int32(&b, KMIP_TAG_PROTOCOL_VERSION_MAJOR, 1);
		kmip_put_int32(&b, KMIP_TAG_PROTOCOL_VERSION_MINOR, 4);
		kmip_end_struct(&b);
		kmip_put_int32(&b, KMIP_TAG_BATCH_COUNT, 1);
		kmip_end_struct(&b);
		kmip_begin_struct(&b, KMIP_TAG_BATCH_ITEM);
		kmip_put_enum(&b, KMIP_TAG_OPERATION, KMIP_OP_ENCRYPT);
		kmip_begin_struct(&b, KMIP_TAG_REQUEST_PAYLOAD);
		kmip_put_text(&b, KMIP_TAG_UNIQUE_IDENTIFIER, "42", 2);
		kmip_begin_struct(&b, KMIP_TAG_CRYPTOGRAPHIC_PARAMETERS);
		kmip_put_enum(&b, KMIP_TAG_BLOCK_CIPHER_MODE, KMIP_MODE_GCM);
		kmip_put_enum(&b, KMIP_TAG_CRYPTOGRAPHIC_ALGORITHM, KMIP_ALG_AES);
		kmip_put_int32(&b, KMIP_TAG_TAG_LENGTH, 16);
		kmip_end_struct(&b);
		kmip_put_bytes(&b, KMIP_TAG_DATA, (const uint8_t *) plain, strlen(plain));
		kmip_put_bytes(&b, KMIP_TAG_IV_COUNTER_NONCE, zero_iv, sizeof(zero_iv));
		kmip_put_bytes(&b, KMIP_TAG_AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad, sizeof(aad));
		kmip_end_struct(&b);
		kmip_end_struct(&b);
		kmip_end_struct(&b);
		CHECK(kmip_buf_finish(&b) == KMIP_OK);
		CHECK(b.len == len && memcmp(b.data, buf, len) == 0);
		kmip_buf_free(&b);
		free(buf);
	}
}

/* The result of the first batch item of a captured response, or -1 */
static int
first_result(const char *dir, const char *name, uint32_t *reason)
{
	size_t		len;
	uint8_t    *buf = read_file(dir, name, &len);
	uint32_t	status = 99;
	int			bi;

	*reason = 0;
	if (!CHECK(buf != NULL) || !CHECK(kmip_decode(&doc, buf, len) == KMIP_OK))
	{
		free(buf);
		return -1;
	}
	bi = kmip_find_child(&doc, 0, KMIP_TAG_BATCH_ITEM);
	kmip_child_enum(&doc, bi, KMIP_TAG_RESULT_STATUS, &status);
	kmip_child_enum(&doc, bi, KMIP_TAG_RESULT_REASON, reason);
	free(buf);
	return (int) status;
}

/*
 * Responses captured from a live PyKMIP server (kmipctl.py capture-corpus):
 * the answers byok's kmip provider reads, including a batch and failures.
 */
static void
test_captured(const char *dir)
{
	uint8_t    *buf;
	size_t		len;
	uint32_t	reason;
	uint32_t	u32;
	const char *s;
	size_t		slen;
	int			bi;
	int			items = 0;

	buf = read_file(dir, "server_08_batch_get_attributes.bin", &len);
	if (buf == NULL)
	{
		printf("SKIP captured responses: %s/server_08_batch_get_attributes.bin not found\n", dir);
		return;
	}
	CHECK(kmip_decode(&doc, buf, len) == KMIP_OK);
	for (bi = kmip_find_child(&doc, 0, KMIP_TAG_BATCH_ITEM); bi >= 0; bi = kmip_find_next(&doc, bi))
	{
		const uint8_t *id;
		size_t		idlen;
		int			attr;

		CHECK(kmip_child_bytes(&doc, bi, 0x420093, &id, &idlen) == KMIP_OK && idlen == 4 &&
			  id[3] == items);
		CHECK(kmip_child_enum(&doc, bi, KMIP_TAG_RESULT_STATUS, &u32) == KMIP_OK &&
			  u32 == (items == 1 ? KMIP_RESULT_FAILED : KMIP_RESULT_SUCCESS));
		if (items == 1)
			CHECK(kmip_child_enum(&doc, bi, KMIP_TAG_RESULT_REASON, &u32) == KMIP_OK &&
				  u32 == KMIP_REASON_ITEM_NOT_FOUND);
		else
		{
			attr = kmip_find_child(&doc, kmip_find_child(&doc, bi, KMIP_TAG_RESPONSE_PAYLOAD),
								   KMIP_TAG_ATTRIBUTE);
			CHECK(kmip_child_text(&doc, attr, KMIP_TAG_ATTRIBUTE_NAME, &s, &slen) == KMIP_OK &&
				  slen == 5 && memcmp(s, "State", 5) == 0);
			CHECK(kmip_child_enum(&doc, attr, KMIP_TAG_ATTRIBUTE_VALUE, &u32) == KMIP_OK &&
				  u32 == KMIP_STATE_ACTIVE);
		}
		items++;
	}
	CHECK(items == 3);
	free(buf);

	CHECK(first_result(dir, "server_06_decrypt.bin", &reason) == KMIP_RESULT_SUCCESS);
	CHECK(first_result(dir, "server_07_decrypt.bin", &reason) == KMIP_RESULT_FAILED &&
		  reason == KMIP_REASON_GENERAL_FAILURE);	/* a wrong tag */
	CHECK(first_result(dir, "server_11_decrypt.bin", &reason) == KMIP_RESULT_FAILED &&
		  reason == KMIP_REASON_PERMISSION_DENIED);	/* a revoked key */
	CHECK(first_result(dir, "server_13_get_attributes.bin", &reason) == KMIP_RESULT_FAILED &&
		  reason == KMIP_REASON_ITEM_NOT_FOUND);	/* destroyed */
	CHECK(first_result(dir, "server_10_get_attributes.bin", &reason) == KMIP_RESULT_SUCCESS);
	CHECK(first_result(dir, "server_04_locate.bin", &reason) == KMIP_RESULT_SUCCESS);
}

int
main(int argc, char **argv)
{
	const char *corpus = argc > 1 ? argv[1] : "test/fuzz/corpus";

	test_encrypt_request();
	test_malformed();
	test_roundtrip_types();
	test_pykmip(corpus);
	test_captured(corpus);
	printf("%d passed, %d failed\n", npass, nfail);
	return nfail ? 1 : 0;
}
