/*-------------------------------------------------------------------------
 *
 * ttlv_fuzz.c
 *		libFuzzer target for the KMIP TTLV decoder (src/providers/kmip/ttlv.c).
 *
 * Decodes arbitrary bytes, then exercises every lookup helper on every
 * node.  When decoding succeeds the node list is re-encoded with the
 * encoder and must reproduce the input byte for byte (the decoder only
 * accepts canonical TTLV, so decode/encode is an exact round trip).
 *
 * Build (from the repository root):
 *	clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *		test/fuzz/ttlv_fuzz.c src/providers/kmip/ttlv.c -o ttlv_fuzz
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/kmip/ttlv.h"

static KmipDoc doc;				/* large: keep off the stack */

static const uint32_t probe_tags[] = {
	KMIP_TAG_RESPONSE_HEADER, KMIP_TAG_BATCH_ITEM, KMIP_TAG_RESULT_STATUS,
	KMIP_TAG_RESPONSE_PAYLOAD, KMIP_TAG_UNIQUE_IDENTIFIER, KMIP_TAG_DATA,
	KMIP_TAG_CRYPTOGRAPHIC_PARAMETERS, KMIP_TAG_TAG_LENGTH,
};

static void
reencode(void)
{
	KmipBuf		b;
	int			i;

	kmip_buf_init(&b, KMIP_MAX_MESSAGE);
	for (i = 0; i < doc.nnodes; i++)
	{
		const KmipNode *n = &doc.nodes[i];
		const uint8_t *v = doc.buf + n->voff;

		while (b.depth > n->depth)
			kmip_end_struct(&b);
		switch (n->type)
		{
			case KMIP_TYPE_STRUCTURE:
				kmip_begin_struct(&b, n->tag);
				break;
			case KMIP_TYPE_INTEGER:
				{
					int32_t		x;

					kmip_get_int32(&doc, i, &x);
					kmip_put_int32(&b, n->tag, x);
					break;
				}
			case KMIP_TYPE_LONG_INTEGER:
				{
					int64_t		x;

					kmip_get_int64(&doc, i, &x);
					kmip_put_int64(&b, n->tag, x);
					break;
				}
			case KMIP_TYPE_BIG_INTEGER:
				kmip_put_bigint(&b, n->tag, v, n->vlen);
				break;
			case KMIP_TYPE_ENUMERATION:
				{
					uint32_t	x;

					kmip_get_enum(&doc, i, &x);
					kmip_put_enum(&b, n->tag, x);
					break;
				}
			case KMIP_TYPE_BOOLEAN:
				{
					int			x;

					kmip_get_bool(&doc, i, &x);
					kmip_put_bool(&b, n->tag, x);
					break;
				}
			case KMIP_TYPE_TEXT_STRING:
				kmip_put_text(&b, n->tag, (const char *) v, n->vlen);
				break;
			case KMIP_TYPE_BYTE_STRING:
				kmip_put_bytes(&b, n->tag, v, n->vlen);
				break;
			case KMIP_TYPE_DATE_TIME:
				{
					int64_t		x;

					kmip_get_datetime(&doc, i, &x);
					kmip_put_datetime(&b, n->tag, x);
					break;
				}
			case KMIP_TYPE_INTERVAL:
				{
					uint32_t	x;

					kmip_get_interval(&doc, i, &x);
					kmip_put_interval(&b, n->tag, x);
					break;
				}
			default:
				abort();
		}
	}
	while (b.depth > 0)
		kmip_end_struct(&b);
	if (kmip_buf_finish(&b) != KMIP_OK || b.len != doc.len ||
		memcmp(b.data, doc.buf, doc.len) != 0)
		abort();
	kmip_buf_free(&b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	KmipError	err;
	size_t		total;
	int			i;
	size_t		t;

	(void) kmip_peek_length(data, size, &total);
	err = kmip_decode(&doc, data, size);
	(void) kmip_strerror(err);
	if (err != KMIP_OK)
		return 0;
	if (doc.nnodes < 1 || doc.nodes[0].parent != -1)
		abort();

	for (i = 0; i < doc.nnodes; i++)
	{
		const KmipNode *n = &doc.nodes[i];
		int32_t		i32;
		int64_t		i64;
		uint32_t	u32;
		int			bv;
		const char *s;
		const uint8_t *p;
		size_t		len;
		char		copy[64];
		volatile uint8_t sink = 0;

		/* structural invariants */
		if ((uint64_t) n->voff + n->vlen > doc.len)
			abort();
		if (n->parent >= i || (i > 0 && n->parent < 0))
			abort();
		if (n->parent >= 0 && doc.nodes[n->parent].type != KMIP_TYPE_STRUCTURE)
			abort();

		kmip_get_int32(&doc, i, &i32);
		kmip_get_int64(&doc, i, &i64);
		kmip_get_enum(&doc, i, &u32);
		kmip_get_interval(&doc, i, &u32);
		kmip_get_datetime(&doc, i, &i64);
		if (kmip_get_bool(&doc, i, &bv) == KMIP_OK && bv != 0 && bv != 1)
			abort();
		if (kmip_get_text(&doc, i, &s, &len) == KMIP_OK && len > 0)
			sink ^= (uint8_t) s[len - 1];
		if (kmip_get_bytes(&doc, i, &p, &len) == KMIP_OK && len > 0)
			sink ^= p[len - 1];
		if (kmip_get_bigint(&doc, i, &p, &len) == KMIP_OK && len > 0)
			sink ^= p[len - 1];
		if (kmip_get_text_copy(&doc, i, copy, sizeof(copy)) == KMIP_OK &&
			strlen(copy) >= sizeof(copy))
			abort();
		kmip_find_next(&doc, i);
		for (t = 0; t < sizeof(probe_tags) / sizeof(probe_tags[0]); t++)
		{
			int			c = kmip_find_child(&doc, i, probe_tags[t]);

			if (c >= 0 && doc.nodes[c].parent != i)
				abort();
			kmip_child_enum(&doc, i, probe_tags[t], &u32);
			kmip_child_int32(&doc, i, probe_tags[t], &i32);
			kmip_child_bytes(&doc, i, probe_tags[t], &p, &len);
			kmip_child_text(&doc, i, probe_tags[t], &s, &len);
		}
		(void) sink;
	}
	kmip_find_path(&doc, 0, probe_tags, 3);
	kmip_get_int32(&doc, -1, NULL);
	kmip_get_int32(&doc, doc.nnodes, NULL);

	reencode();
	return 0;
}
