/*-------------------------------------------------------------------------
 *
 * providers/kmip/ttlv.h
 *		A small, bounded KMIP TTLV encoder and decoder.
 *
 * Depends only on the C standard library so it can be built inside the
 * extension and standalone (tests, fuzzing).  See ttlv.c for the wire
 * format, the safety rules and what this code does not do.
 *
 * Locking: none; no state outside the caller's KmipBuf and KmipDoc.
 * Key lifetime: an encoder buffer may hold key material; kmip_buf_free()
 * wipes it.  A decoded value is a view into the caller's buffer.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KMIP_TTLV_H
#define BYOK_KMIP_TTLV_H

#include <stddef.h>
#include <stdint.h>

/* Hard limits (both directions) */
#define KMIP_MAX_DEPTH			16		/* structure nesting, root = depth 0 */
#define KMIP_MAX_NODES			512		/* items in one decoded message */
#define KMIP_MAX_MESSAGE		65536	/* bytes in one message, header included */
#define KMIP_HEADER_LEN			8		/* tag(3) type(1) length(4) */

/* Item types (KMIP 1.4 section 9.1.1.2) */
typedef enum KmipType
{
	KMIP_TYPE_STRUCTURE = 0x01,
	KMIP_TYPE_INTEGER = 0x02,
	KMIP_TYPE_LONG_INTEGER = 0x03,
	KMIP_TYPE_BIG_INTEGER = 0x04,
	KMIP_TYPE_ENUMERATION = 0x05,
	KMIP_TYPE_BOOLEAN = 0x06,
	KMIP_TYPE_TEXT_STRING = 0x07,
	KMIP_TYPE_BYTE_STRING = 0x08,
	KMIP_TYPE_DATE_TIME = 0x09,
	KMIP_TYPE_INTERVAL = 0x0A
} KmipType;

/*
 * Tags (KMIP 1.4 section 9.1.3.1).  Verified against the KMIP 1.2/1.4 tag
 * table and PyKMIP 0.10 kmip/core/enums.py (Tags).  Note Tag Length is
 * 0x4200CE; 0x4200CF is Fixed Field Length.
 */
#define KMIP_TAG_ATTRIBUTE					0x420008
#define KMIP_TAG_ATTRIBUTE_NAME				0x42000A
#define KMIP_TAG_ATTRIBUTE_VALUE			0x42000B
#define KMIP_TAG_BATCH_COUNT				0x42000D
#define KMIP_TAG_BATCH_ITEM					0x42000F
#define KMIP_TAG_BLOCK_CIPHER_MODE			0x420011
#define KMIP_TAG_CRYPTOGRAPHIC_ALGORITHM	0x420028
#define KMIP_TAG_CRYPTOGRAPHIC_LENGTH		0x42002A
#define KMIP_TAG_CRYPTOGRAPHIC_PARAMETERS	0x42002B
#define KMIP_TAG_CRYPTOGRAPHIC_USAGE_MASK	0x42002C
#define KMIP_TAG_IV_COUNTER_NONCE			0x42003D
#define KMIP_TAG_MAXIMUM_RESPONSE_SIZE		0x420050
#define KMIP_TAG_NAME						0x420053
#define KMIP_TAG_NAME_TYPE					0x420054
#define KMIP_TAG_NAME_VALUE					0x420055
#define KMIP_TAG_OBJECT_TYPE				0x420057
#define KMIP_TAG_OPERATION					0x42005C
#define KMIP_TAG_PROTOCOL_VERSION			0x420069
#define KMIP_TAG_PROTOCOL_VERSION_MAJOR		0x42006A
#define KMIP_TAG_PROTOCOL_VERSION_MINOR		0x42006B
#define KMIP_TAG_REQUEST_HEADER				0x420077
#define KMIP_TAG_REQUEST_MESSAGE			0x420078
#define KMIP_TAG_REQUEST_PAYLOAD			0x420079
#define KMIP_TAG_RESPONSE_HEADER			0x42007A
#define KMIP_TAG_RESPONSE_MESSAGE			0x42007B
#define KMIP_TAG_RESPONSE_PAYLOAD			0x42007C
#define KMIP_TAG_RESULT_MESSAGE				0x42007D
#define KMIP_TAG_RESULT_REASON				0x42007E
#define KMIP_TAG_RESULT_STATUS				0x42007F
#define KMIP_TAG_REVOCATION_REASON			0x420081
#define KMIP_TAG_REVOCATION_REASON_CODE		0x420082
#define KMIP_TAG_STATE						0x42008D
#define KMIP_TAG_TEMPLATE_ATTRIBUTE			0x420091
#define KMIP_TAG_TIME_STAMP					0x420092
#define KMIP_TAG_UNIQUE_IDENTIFIER			0x420094
#define KMIP_TAG_DATA						0x4200C2
#define KMIP_TAG_TAG_LENGTH					0x4200CE
#define KMIP_TAG_AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA	0x4200FE
#define KMIP_TAG_AUTHENTICATED_ENCRYPTION_TAG	0x4200FF

/* Operations (KMIP 1.4 section 9.1.3.2.27) */
#define KMIP_OP_CREATE				1
#define KMIP_OP_LOCATE				8
#define KMIP_OP_GET					10
#define KMIP_OP_GET_ATTRIBUTES		11
#define KMIP_OP_ACTIVATE			18
#define KMIP_OP_REVOKE				19
#define KMIP_OP_DESTROY				20
#define KMIP_OP_ENCRYPT				31
#define KMIP_OP_DECRYPT				32

/* A few enumeration values byok needs */
#define KMIP_RESULT_SUCCESS			0
#define KMIP_RESULT_FAILED			1
#define KMIP_RESULT_PENDING			2
#define KMIP_RESULT_UNDONE			3
#define KMIP_REASON_ITEM_NOT_FOUND	1
#define KMIP_REASON_AUTH_FAILED		3
#define KMIP_REASON_PERMISSION_DENIED	12
#define KMIP_REASON_GENERAL_FAILURE	256
#define KMIP_STATE_PRE_ACTIVE		1
#define KMIP_STATE_ACTIVE			2
#define KMIP_STATE_DEACTIVATED		3
#define KMIP_STATE_COMPROMISED		4
#define KMIP_STATE_DESTROYED		5
#define KMIP_STATE_DESTROYED_COMPROMISED	6
#define KMIP_ALG_AES				3
#define KMIP_MODE_GCM				9
#define KMIP_OBJECT_SYMMETRIC_KEY	2

typedef enum KmipError
{
	KMIP_OK = 0,
	KMIP_ERR_ARGUMENT,			/* NULL pointer, bad index, misuse */
	KMIP_ERR_NOMEM,				/* malloc failed (encoder) */
	KMIP_ERR_TOO_LARGE,			/* message exceeds KMIP_MAX_MESSAGE */
	KMIP_ERR_TOO_DEEP,			/* nesting exceeds KMIP_MAX_DEPTH */
	KMIP_ERR_TOO_MANY_NODES,	/* more than KMIP_MAX_NODES items */
	KMIP_ERR_TRUNCATED,			/* item header or value runs past its container */
	KMIP_ERR_BAD_TAG,			/* tag not in 0x42xxxx or 0x54xxxx */
	KMIP_ERR_BAD_TYPE,			/* unknown item type */
	KMIP_ERR_BAD_LENGTH,		/* length wrong for the item type */
	KMIP_ERR_BAD_PADDING,		/* padding bytes not zero */
	KMIP_ERR_BAD_BOOLEAN,		/* boolean value other than 0 or 1 */
	KMIP_ERR_TRAILING,			/* bytes after the top-level item */
	KMIP_ERR_UNBALANCED,		/* encoder: begin/end structure mismatch */
	KMIP_ERR_NOT_FOUND,			/* lookup: no such item */
	KMIP_ERR_WRONG_TYPE,		/* lookup: item has another type */
	KMIP_ERR_RANGE				/* lookup: value does not fit the output */
} KmipError;

extern const char *kmip_strerror(KmipError err);

/* ---------------------------------------------------------------- encoder */

typedef struct KmipBuf
{
	uint8_t    *data;			/* malloc'd; NULL until first write */
	size_t		len;
	size_t		cap;
	size_t		max;			/* hard cap, <= KMIP_MAX_MESSAGE */
	int			depth;			/* open structures */
	size_t		open[KMIP_MAX_DEPTH];	/* header offsets of open structures */
	KmipError	err;			/* sticky: first error wins */
} KmipBuf;

extern void kmip_buf_init(KmipBuf *b, size_t max);
extern void kmip_buf_free(KmipBuf *b);	/* wipes, frees, re-inits */
extern KmipError kmip_buf_finish(KmipBuf *b);	/* err, or UNBALANCED */

/*
 * All put functions are no-ops once b->err is set and return it, so a
 * message can be built with unchecked calls and checked once at the end
 * with kmip_buf_finish().
 */
extern KmipError kmip_begin_struct(KmipBuf *b, uint32_t tag);
extern KmipError kmip_end_struct(KmipBuf *b);
extern KmipError kmip_put_int32(KmipBuf *b, uint32_t tag, int32_t v);
extern KmipError kmip_put_int64(KmipBuf *b, uint32_t tag, int64_t v);
extern KmipError kmip_put_bigint(KmipBuf *b, uint32_t tag,
								 const uint8_t *be, size_t len);
extern KmipError kmip_put_enum(KmipBuf *b, uint32_t tag, uint32_t v);
extern KmipError kmip_put_bool(KmipBuf *b, uint32_t tag, int v);
extern KmipError kmip_put_text(KmipBuf *b, uint32_t tag,
							   const char *s, size_t len);
extern KmipError kmip_put_bytes(KmipBuf *b, uint32_t tag,
								const uint8_t *p, size_t len);
extern KmipError kmip_put_datetime(KmipBuf *b, uint32_t tag, int64_t t);
extern KmipError kmip_put_interval(KmipBuf *b, uint32_t tag, uint32_t v);

/* ---------------------------------------------------------------- decoder */

typedef struct KmipNode
{
	uint32_t	tag;
	uint8_t		type;			/* KmipType */
	uint8_t		depth;			/* 0 for the top-level item */
	int16_t		parent;			/* -1 for the top-level item */
	int16_t		first_child;	/* structures only, -1 if none */
	int16_t		next_sibling;	/* -1 if last */
	uint32_t	voff;			/* value offset in the buffer */
	uint32_t	vlen;			/* value length, without padding */
} KmipNode;

typedef struct KmipDoc
{
	const uint8_t *buf;			/* borrowed: must outlive the KmipDoc */
	size_t		len;
	int			nnodes;
	size_t		erroff;			/* offset of the offending item on error */
	KmipNode	nodes[KMIP_MAX_NODES];
} KmipDoc;

/*
 * Total size (header + padded value) of the message whose first bytes are
 * in buf; needs KMIP_HEADER_LEN bytes.  For framing reads off a socket.
 */
extern KmipError kmip_peek_length(const uint8_t *buf, size_t len,
								  size_t *total);

/* Parse exactly one top-level item spanning buf[0..len).  Node 0 is root. */
extern KmipError kmip_decode(KmipDoc *doc, const uint8_t *buf, size_t len);

/* First child of 'parent' with 'tag', or -1 */
extern int	kmip_find_child(const KmipDoc *doc, int parent, uint32_t tag);
/* Next sibling after 'node' with the same tag as 'node', or -1 */
extern int	kmip_find_next(const KmipDoc *doc, int node);
/* Follow a chain of first-child lookups from 'start', or -1 */
extern int	kmip_find_path(const KmipDoc *doc, int start,
						   const uint32_t *tags, int ntags);

/* Typed getters: KMIP_ERR_NOT_FOUND for a bad index, WRONG_TYPE on mismatch */
extern KmipError kmip_get_int32(const KmipDoc *doc, int node, int32_t *out);
extern KmipError kmip_get_int64(const KmipDoc *doc, int node, int64_t *out);
extern KmipError kmip_get_enum(const KmipDoc *doc, int node, uint32_t *out);
extern KmipError kmip_get_interval(const KmipDoc *doc, int node, uint32_t *out);
extern KmipError kmip_get_datetime(const KmipDoc *doc, int node, int64_t *out);
extern KmipError kmip_get_bool(const KmipDoc *doc, int node, int *out);
/* Borrowed pointers into doc->buf; text is NOT NUL-terminated */
extern KmipError kmip_get_text(const KmipDoc *doc, int node,
							   const char **s, size_t *len);
extern KmipError kmip_get_bytes(const KmipDoc *doc, int node,
								const uint8_t **p, size_t *len);
extern KmipError kmip_get_bigint(const KmipDoc *doc, int node,
								 const uint8_t **p, size_t *len);
/* Copy text into dst[dstlen] with a NUL; RANGE if too long or contains NUL */
extern KmipError kmip_get_text_copy(const KmipDoc *doc, int node,
									char *dst, size_t dstlen);

/* find_child + get, for the common case */
extern KmipError kmip_child_enum(const KmipDoc *doc, int parent,
								 uint32_t tag, uint32_t *out);
extern KmipError kmip_child_int32(const KmipDoc *doc, int parent,
								  uint32_t tag, int32_t *out);
extern KmipError kmip_child_bytes(const KmipDoc *doc, int parent, uint32_t tag,
								  const uint8_t **p, size_t *len);
extern KmipError kmip_child_text(const KmipDoc *doc, int parent, uint32_t tag,
								 const char **s, size_t *len);

#endif							/* BYOK_KMIP_TTLV_H */
