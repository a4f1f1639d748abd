/*-------------------------------------------------------------------------
 *
 * providers/kmip/ttlv.c
 *		A small, bounded KMIP TTLV encoder and decoder.
 *
 * Wire format (KMIP 1.4 section 9.1).  Every item is
 *
 *		tag (3 bytes, big-endian)  type (1 byte)  length (4 bytes, big-endian)
 *		value (length bytes)  padding (zero bytes up to a multiple of 8)
 *
 * Standard tags are 0x42xxxx, extension tags 0x54xxxx.  The length counts
 * the value only, never the padding.  Fixed sizes: Integer, Enumeration and
 * Interval 4 (then 4 bytes of padding); Long Integer, Date-Time and Boolean
 * 8 (Boolean value 0 or 1).  Big Integer is a two's-complement big-endian
 * value whose length is a multiple of 8.  Text (UTF-8) and Byte Strings have
 * any length and are padded.  A Structure's value is the concatenation of
 * its children, so its length is always a multiple of 8 and never padded.
 *
 * Safety rules of the decoder.
 *	- It never recurses: structures are tracked on a fixed-size stack of end
 *	  offsets (KMIP_MAX_DEPTH), and items go into a fixed array of nodes
 *	  (KMIP_MAX_NODES) inside the caller's KmipDoc; no allocation at all.
 *	- Every header and every padded value is checked against the bytes left
 *	  in its enclosing structure (or the buffer) before it is read; lengths
 *	  are widened to 64 bits before any addition, so nothing can wrap.
 *	- Fixed-size types must have exactly their size, Booleans must be 0 or 1,
 *	  padding must be zero, a structure's children must exactly fill it, and
 *	  the top-level item must exactly fill the buffer.  Anything else is
 *	  rejected; the first error wins and doc->erroff tells where.
 *	- Error messages are static strings and never quote input bytes.
 *	- Decoded values are borrowed views into the caller's buffer; typed
 *	  getters check the item type before returning a value.
 *
 * The encoder writes directly into a malloc'd buffer with a hard cap
 * (KMIP_MAX_MESSAGE), back-patching structure lengths on end.  Errors are
 * sticky, so callers check once at kmip_buf_finish().  The buffer may hold
 * key material or plaintext: growing it copies then wipes the old block,
 * and kmip_buf_free() wipes before freeing.
 *
 * What this does not do: it knows nothing about KMIP semantics (which
 * fields are mandatory, operations, attribute values), transport (TLS,
 * framing beyond kmip_peek_length), UTF-8 validation of Text Strings, or
 * KMIP 2.0 / JSON / XML encodings.  It uses malloc, not palloc: in the
 * backend the caller must free the encoder buffer before any ereport(ERROR)
 * (or inside PG_FINALLY).  The decoder itself allocates nothing.
 *
 * Only the C standard library is used, so the file builds in the
 * extension and standalone (test/fuzz).
 *
 * Locking: none; there is no state outside the caller's KmipBuf and
 * KmipDoc.  Key lifetime: see the encoder paragraph above (growth and
 * kmip_buf_free() wipe); decoded values borrow the caller's buffer, which
 * the caller wipes.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/kmip/ttlv.h"

/* ---------------------------------------------------------------- helpers */

static uint32_t
get_be32(const uint8_t *p)
{
	return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
		((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

static uint64_t
get_be64(const uint8_t *p)
{
	return ((uint64_t) get_be32(p) << 32) | (uint64_t) get_be32(p + 4);
}

static void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

static void
put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t) (v >> 32));
	put_be32(p + 4, (uint32_t) v);
}

/* Bytes of zero padding that follow a value of 'len' bytes */
static uint64_t
pad_len(uint64_t len)
{
	return (8 - (len & 7)) & 7;
}

/* Wipe memory in a way the compiler may not elide */
static void
wipe(void *p, size_t n)
{
	volatile uint8_t *v = (volatile uint8_t *) p;

	while (n--)
		*v++ = 0;
}

static int
tag_ok(uint32_t tag)
{
	uint32_t	hi = tag >> 16;

	return tag <= 0xFFFFFF && (hi == 0x42 || hi == 0x54);
}

const char *
kmip_strerror(KmipError err)
{
	switch (err)
	{
		case KMIP_OK:
			return "success";
		case KMIP_ERR_ARGUMENT:
			return "invalid argument";
		case KMIP_ERR_NOMEM:
			return "out of memory";
		case KMIP_ERR_TOO_LARGE:
			return "KMIP message too large";
		case KMIP_ERR_TOO_DEEP:
			return "KMIP structures nested too deeply";
		case KMIP_ERR_TOO_MANY_NODES:
			return "KMIP message has too many items";
		case KMIP_ERR_TRUNCATED:
			return "KMIP item runs past the end of its container";
		case KMIP_ERR_BAD_TAG:
			return "KMIP item has an invalid tag";
		case KMIP_ERR_BAD_TYPE:
			return "KMIP item has an unknown type";
		case KMIP_ERR_BAD_LENGTH:
			return "KMIP item has an invalid length for its type";
		case KMIP_ERR_BAD_PADDING:
			return "KMIP item has non-zero padding";
		case KMIP_ERR_BAD_BOOLEAN:
			return "KMIP boolean is neither 0 nor 1";
		case KMIP_ERR_TRAILING:
			return "KMIP message has trailing bytes";
		case KMIP_ERR_UNBALANCED:
			return "KMIP structure begin/end mismatch";
		case KMIP_ERR_NOT_FOUND:
			return "KMIP item not found";
		case KMIP_ERR_WRONG_TYPE:
			return "KMIP item has an unexpected type";
		case KMIP_ERR_RANGE:
			return "KMIP value does not fit";
	}
	return "unknown KMIP error";
}

/* ---------------------------------------------------------------- encoder */

void
kmip_buf_init(KmipBuf *b, size_t max)
{
	memset(b, 0, sizeof(*b));
	b->max = (max == 0 || max > KMIP_MAX_MESSAGE) ? KMIP_MAX_MESSAGE : max;
}

void
kmip_buf_free(KmipBuf *b)
{
	size_t		max = b->max;

	if (b->data)
	{
		wipe(b->data, b->cap);
		free(b->data);
	}
	kmip_buf_init(b, max);
}

KmipError
kmip_buf_finish(KmipBuf *b)
{
	if (b->err == KMIP_OK && b->depth != 0)
		b->err = KMIP_ERR_UNBALANCED;
	return b->err;
}

/*
 * Make room for 'need' more bytes, all zeroed.  Grows by copy-and-wipe
 * rather than realloc so no stale copy of the contents is left behind.
 */
static uint8_t *
buf_reserve(KmipBuf *b, uint64_t need)
{
	uint8_t    *p;

	if (b->err != KMIP_OK)
		return NULL;
	if (need > b->max || b->len > b->max - need)
	{
		b->err = KMIP_ERR_TOO_LARGE;
		return NULL;
	}
	if (b->len + need > b->cap)
	{
		size_t		ncap = b->cap ? b->cap : 256;
		uint8_t    *nd;

		while (ncap < b->len + need)
			ncap *= 2;
		if (ncap > b->max)
			ncap = b->max;
		nd = malloc(ncap);
		if (nd == NULL)
		{
			b->err = KMIP_ERR_NOMEM;
			return NULL;
		}
		if (b->data)
		{
			memcpy(nd, b->data, b->len);
			wipe(b->data, b->cap);
			free(b->data);
		}
		b->data = nd;
		b->cap = ncap;
	}
	p = b->data + b->len;
	memset(p, 0, (size_t) need);
	b->len += (size_t) need;
	return p;
}

/* Write a header plus a zeroed, padded value area; returns the value area */
static uint8_t *
put_item(KmipBuf *b, uint32_t tag, KmipType type, uint64_t vlen)
{
	uint8_t    *p;

	if (b->err != KMIP_OK)
		return NULL;
	if (!tag_ok(tag))
	{
		b->err = KMIP_ERR_BAD_TAG;
		return NULL;
	}
	if (vlen > KMIP_MAX_MESSAGE)
	{
		b->err = KMIP_ERR_TOO_LARGE;
		return NULL;
	}
	p = buf_reserve(b, KMIP_HEADER_LEN + vlen + pad_len(vlen));
	if (p == NULL)
		return NULL;
	put_be32(p, (tag << 8) | (uint32_t) type);
	put_be32(p + 4, (uint32_t) vlen);
	return p + KMIP_HEADER_LEN;
}

KmipError
kmip_begin_struct(KmipBuf *b, uint32_t tag)
{
	size_t		off = b->len;

	if (b->err != KMIP_OK)
		return b->err;
	if (b->depth >= KMIP_MAX_DEPTH)
		return b->err = KMIP_ERR_TOO_DEEP;
	if (put_item(b, tag, KMIP_TYPE_STRUCTURE, 0) == NULL)
		return b->err;
	b->open[b->depth++] = off;
	return KMIP_OK;
}

KmipError
kmip_end_struct(KmipBuf *b)
{
	size_t		off;

	if (b->err != KMIP_OK)
		return b->err;
	if (b->depth <= 0)
		return b->err = KMIP_ERR_UNBALANCED;
	off = b->open[--b->depth];
	/* children are all padded, so this is a multiple of 8 and < max */
	put_be32(b->data + off + 4, (uint32_t) (b->len - off - KMIP_HEADER_LEN));
	return KMIP_OK;
}

KmipError
kmip_put_int32(KmipBuf *b, uint32_t tag, int32_t v)
{
	uint8_t    *p = put_item(b, tag, KMIP_TYPE_INTEGER, 4);

	if (p)
		put_be32(p, (uint32_t) v);
	return b->err;
}

KmipError
kmip_put_enum(KmipBuf *b, uint32_t tag, uint32_t v)
{
	uint8_t    *p = put_item(b, tag, KMIP_TYPE_ENUMERATION, 4);

	if (p)
		put_be32(p, v);
	return b->err;
}

KmipError
kmip_put_interval(KmipBuf *b, uint32_t tag, uint32_t v)
{
	uint8_t    *p = put_item(b, tag, KMIP_TYPE_INTERVAL, 4);

	if (p)
		put_be32(p, v);
	return b->err;
}

KmipError
kmip_put_int64(KmipBuf *b, uint32_t tag, int64_t v)
{
	uint8_t    *p = put_item(b, tag, KMIP_TYPE_LONG_INTEGER, 8);

	if (p)
		put_be64(p, (uint64_t) v);
	return b->err;
}

KmipError
kmip_put_datetime(KmipBuf *b, uint32_t tag, int64_t t)
{
	uint8_t    *p = put_item(b, tag, KMIP_TYPE_DATE_TIME, 8);

	if (p)
		put_be64(p, (uint64_t) t);
	return b->err;
}

KmipError
kmip_put_bool(KmipBuf *b, uint32_t tag, int v)
{
	uint8_t    *p = put_item(b, tag, KMIP_TYPE_BOOLEAN, 8);

	if (p)
		p[7] = v ? 1 : 0;
	return b->err;
}

KmipError
kmip_put_text(KmipBuf *b, uint32_t tag, const char *s, size_t len)
{
	uint8_t    *p;

	if (b->err == KMIP_OK && s == NULL && len != 0)
		return b->err = KMIP_ERR_ARGUMENT;
	p = put_item(b, tag, KMIP_TYPE_TEXT_STRING, len);
	if (p && len)
		memcpy(p, s, len);
	return b->err;
}

KmipError
kmip_put_bytes(KmipBuf *b, uint32_t tag, const uint8_t *data, size_t len)
{
	uint8_t    *p;

	if (b->err == KMIP_OK && data == NULL && len != 0)
		return b->err = KMIP_ERR_ARGUMENT;
	p = put_item(b, tag, KMIP_TYPE_BYTE_STRING, len);
	if (p && len)
		memcpy(p, data, len);
	return b->err;
}

/*
 * Big Integer from a two's-complement big-endian value of any non-zero
 * length; it is sign-extended on the left to a multiple of 8 bytes.
 */
KmipError
kmip_put_bigint(KmipBuf *b, uint32_t tag, const uint8_t *be, size_t len)
{
	uint64_t	full;
	uint64_t	ext;
	uint8_t    *p;

	if (b->err != KMIP_OK)
		return b->err;
	if (be == NULL || len == 0)
		return b->err = KMIP_ERR_ARGUMENT;
	if (len > KMIP_MAX_MESSAGE)
		return b->err = KMIP_ERR_TOO_LARGE;
	full = (uint64_t) len + pad_len(len);
	ext = full - len;
	p = put_item(b, tag, KMIP_TYPE_BIG_INTEGER, full);
	if (p)
	{
		memset(p, (be[0] & 0x80) ? 0xFF : 0x00, (size_t) ext);
		memcpy(p + ext, be, len);
	}
	return b->err;
}

/* ---------------------------------------------------------------- decoder */

KmipError
kmip_peek_length(const uint8_t *buf, size_t len, size_t *total)
{
	uint64_t	vlen;
	uint64_t	t;

	if (buf == NULL || total == NULL)
		return KMIP_ERR_ARGUMENT;
	if (len < KMIP_HEADER_LEN)
		return KMIP_ERR_TRUNCATED;
	if (!tag_ok(get_be32(buf) >> 8))
		return KMIP_ERR_BAD_TAG;
	vlen = get_be32(buf + 4);
	t = KMIP_HEADER_LEN + vlen + pad_len(vlen);
	if (t > KMIP_MAX_MESSAGE)
		return KMIP_ERR_TOO_LARGE;
	*total = (size_t) t;
	return KMIP_OK;
}

/* Check a value's length against its type; 'v' points at vlen bytes */
static KmipError
check_value(uint8_t type, const uint8_t *v, uint64_t vlen)
{
	switch (type)
	{
		case KMIP_TYPE_STRUCTURE:
			return (vlen & 7) ? KMIP_ERR_BAD_LENGTH : KMIP_OK;
		case KMIP_TYPE_INTEGER:
		case KMIP_TYPE_ENUMERATION:
		case KMIP_TYPE_INTERVAL:
			return vlen == 4 ? KMIP_OK : KMIP_ERR_BAD_LENGTH;
		case KMIP_TYPE_LONG_INTEGER:
		case KMIP_TYPE_DATE_TIME:
			return vlen == 8 ? KMIP_OK : KMIP_ERR_BAD_LENGTH;
		case KMIP_TYPE_BOOLEAN:
			if (vlen != 8)
				return KMIP_ERR_BAD_LENGTH;
			return get_be64(v) <= 1 ? KMIP_OK : KMIP_ERR_BAD_BOOLEAN;
		case KMIP_TYPE_BIG_INTEGER:
			return (vlen == 0 || (vlen & 7)) ? KMIP_ERR_BAD_LENGTH : KMIP_OK;
		case KMIP_TYPE_TEXT_STRING:
		case KMIP_TYPE_BYTE_STRING:
			return KMIP_OK;
		default:
			return KMIP_ERR_BAD_TYPE;
	}
}

KmipError
kmip_decode(KmipDoc *doc, const uint8_t *buf, size_t len)
{
	/* end offset and last child of each open structure */
	uint64_t	end[KMIP_MAX_DEPTH + 1];
	int			owner[KMIP_MAX_DEPTH + 1];
	int			last[KMIP_MAX_DEPTH + 1];
	int			depth = 0;		/* open structures */
	uint64_t	pos = 0;

	if (doc == NULL)
		return KMIP_ERR_ARGUMENT;
	doc->buf = buf;
	doc->len = len;
	doc->nnodes = 0;
	doc->erroff = 0;
	if (buf == NULL && len != 0)
		return KMIP_ERR_ARGUMENT;
	if (len > KMIP_MAX_MESSAGE)
		return KMIP_ERR_TOO_LARGE;
	if (len < KMIP_HEADER_LEN)
		return KMIP_ERR_TRUNCATED;

	for (;;)
	{
		uint64_t	limit;
		uint32_t	w;
		uint32_t	tag;
		uint8_t		type;
		uint64_t	vlen;
		uint64_t	pad;
		uint64_t	i;
		KmipError	err;
		KmipNode   *n;
		int			idx;

		/* close every structure that ends here */
		while (depth > 0 && pos == end[depth - 1])
			depth--;
		if (depth == 0 && doc->nnodes > 0)
			break;				/* top-level item complete */

		limit = depth > 0 ? end[depth - 1] : len;
		doc->erroff = (size_t) pos;
		if (limit - pos < KMIP_HEADER_LEN)
			return KMIP_ERR_TRUNCATED;
		if (doc->nnodes >= KMIP_MAX_NODES)
			return KMIP_ERR_TOO_MANY_NODES;

		w = get_be32(buf + pos);
		tag = w >> 8;
		type = (uint8_t) (w & 0xFF);
		vlen = get_be32(buf + pos + 4);
		if (!tag_ok(tag))
			return KMIP_ERR_BAD_TAG;
		if (type < KMIP_TYPE_STRUCTURE || type > KMIP_TYPE_INTERVAL)
			return KMIP_ERR_BAD_TYPE;
		pad = type == KMIP_TYPE_STRUCTURE ? 0 : pad_len(vlen);
		if (vlen + pad > limit - pos - KMIP_HEADER_LEN)
			return KMIP_ERR_TRUNCATED;
		err = check_value(type, buf + pos + KMIP_HEADER_LEN, vlen);
		if (err != KMIP_OK)
			return err;
		for (i = 0; i < pad; i++)
			if (buf[pos + KMIP_HEADER_LEN + vlen + i] != 0)
				return KMIP_ERR_BAD_PADDING;

		idx = doc->nnodes++;
		n = &doc->nodes[idx];
		n->tag = tag;
		n->type = type;
		n->depth = (uint8_t) depth;
		n->parent = (int16_t) (depth > 0 ? owner[depth - 1] : -1);
		n->first_child = -1;
		n->next_sibling = -1;
		n->voff = (uint32_t) (pos + KMIP_HEADER_LEN);
		n->vlen = (uint32_t) vlen;
		if (depth > 0)
		{
			if (last[depth - 1] < 0)
				doc->nodes[owner[depth - 1]].first_child = (int16_t) idx;
			else
				doc->nodes[last[depth - 1]].next_sibling = (int16_t) idx;
			last[depth - 1] = idx;
		}

		if (type == KMIP_TYPE_STRUCTURE)
		{
			if (depth >= KMIP_MAX_DEPTH)
				return KMIP_ERR_TOO_DEEP;
			end[depth] = pos + KMIP_HEADER_LEN + vlen;
			owner[depth] = idx;
			last[depth] = -1;
			depth++;
			pos += KMIP_HEADER_LEN;
		}
		else
			pos += KMIP_HEADER_LEN + vlen + pad;
	}

	doc->erroff = (size_t) pos;
	if (pos != len)
		return KMIP_ERR_TRAILING;
	doc->erroff = 0;
	return KMIP_OK;
}

/* ---------------------------------------------------------------- lookup */

static int
node_ok(const KmipDoc *doc, int node)
{
	return doc != NULL && node >= 0 && node < doc->nnodes;
}

int
kmip_find_child(const KmipDoc *doc, int parent, uint32_t tag)
{
	int			i;

	if (!node_ok(doc, parent))
		return -1;
	/* sibling links only go forward, so this terminates */
	for (i = doc->nodes[parent].first_child; i >= 0;
		 i = doc->nodes[i].next_sibling)
	{
		if (doc->nodes[i].tag == tag)
			return i;
	}
	return -1;
}

int
kmip_find_next(const KmipDoc *doc, int node)
{
	int			i;

	if (!node_ok(doc, node))
		return -1;
	for (i = doc->nodes[node].next_sibling; i >= 0;
		 i = doc->nodes[i].next_sibling)
	{
		if (doc->nodes[i].tag == doc->nodes[node].tag)
			return i;
	}
	return -1;
}

int
kmip_find_path(const KmipDoc *doc, int start, const uint32_t *tags, int ntags)
{
	int			i;
	int			cur = start;

	if (!node_ok(doc, start) || (tags == NULL && ntags > 0))
		return -1;
	for (i = 0; i < ntags && cur >= 0; i++)
		cur = kmip_find_child(doc, cur, tags[i]);
	return cur;
}

static const uint8_t *
typed_value(const KmipDoc *doc, int node, KmipType type, KmipError *err)
{
	if (!node_ok(doc, node))
	{
		*err = KMIP_ERR_NOT_FOUND;
		return NULL;
	}
	if (doc->nodes[node].type != type)
	{
		*err = KMIP_ERR_WRONG_TYPE;
		return NULL;
	}
	*err = KMIP_OK;
	return doc->buf + doc->nodes[node].voff;
}

KmipError
kmip_get_int32(const KmipDoc *doc, int node, int32_t *out)
{
	KmipError	err;
	const uint8_t *v = typed_value(doc, node, KMIP_TYPE_INTEGER, &err);

	if (v && out)
		*out = (int32_t) get_be32(v);
	return err;
}

KmipError
kmip_get_enum(const KmipDoc *doc, int node, uint32_t *out)
{
	KmipError	err;
	const uint8_t *v = typed_value(doc, node, KMIP_TYPE_ENUMERATION, &err);

	if (v && out)
		*out = get_be32(v);
	return err;
}

KmipError
kmip_get_interval(const KmipDoc *doc, int node, uint32_t *out)
{
	KmipError	err;
	const uint8_t *v = typed_value(doc, node, KMIP_TYPE_INTERVAL, &err);

	if (v && out)
		*out = get_be32(v);
	return err;
}

KmipError
kmip_get_int64(const KmipDoc *doc, int node, int64_t *out)
{
	KmipError	err;
	const uint8_t *v = typed_value(doc, node, KMIP_TYPE_LONG_INTEGER, &err);

	if (v && out)
		*out = (int64_t) get_be64(v);
	return err;
}

KmipError
kmip_get_datetime(const KmipDoc *doc, int node, int64_t *out)
{
	KmipError	err;
	const uint8_t *v = typed_value(doc, node, KMIP_TYPE_DATE_TIME, &err);

	if (v && out)
		*out = (int64_t) get_be64(v);
	return err;
}

KmipError
kmip_get_bool(const KmipDoc *doc, int node, int *out)
{
	KmipError	err;
	const uint8_t *v = typed_value(doc, node, KMIP_TYPE_BOOLEAN, &err);

	if (v && out)
		*out = v[7] ? 1 : 0;	/* decoder guarantees 0 or 1 */
	return err;
}

static KmipError
get_span(const KmipDoc *doc, int node, KmipType type,
		 const uint8_t **p, size_t *len)
{
	KmipError	err;
	const uint8_t *v = typed_value(doc, node, type, &err);

	if (v)
	{
		if (p)
			*p = v;
		if (len)
			*len = doc->nodes[node].vlen;
	}
	return err;
}

KmipError
kmip_get_text(const KmipDoc *doc, int node, const char **s, size_t *len)
{
	const uint8_t *p = NULL;
	KmipError	err = get_span(doc, node, KMIP_TYPE_TEXT_STRING, &p, len);

	if (err == KMIP_OK && s)
		*s = (const char *) p;
	return err;
}

KmipError
kmip_get_bytes(const KmipDoc *doc, int node, const uint8_t **p, size_t *len)
{
	return get_span(doc, node, KMIP_TYPE_BYTE_STRING, p, len);
}

KmipError
kmip_get_bigint(const KmipDoc *doc, int node, const uint8_t **p, size_t *len)
{
	return get_span(doc, node, KMIP_TYPE_BIG_INTEGER, p, len);
}

KmipError
kmip_get_text_copy(const KmipDoc *doc, int node, char *dst, size_t dstlen)
{
	const char *s = NULL;
	size_t		len = 0;
	KmipError	err;

	if (dst == NULL || dstlen == 0)
		return KMIP_ERR_ARGUMENT;
	dst[0] = '\0';
	err = kmip_get_text(doc, node, &s, &len);
	if (err != KMIP_OK)
		return err;
	if (len >= dstlen || (len > 0 && memchr(s, '\0', len) != NULL))
		return KMIP_ERR_RANGE;
	if (len > 0)
		memcpy(dst, s, len);
	dst[len] = '\0';
	return KMIP_OK;
}

KmipError
kmip_child_enum(const KmipDoc *doc, int parent, uint32_t tag, uint32_t *out)
{
	return kmip_get_enum(doc, kmip_find_child(doc, parent, tag), out);
}

KmipError
kmip_child_int32(const KmipDoc *doc, int parent, uint32_t tag, int32_t *out)
{
	return kmip_get_int32(doc, kmip_find_child(doc, parent, tag), out);
}

KmipError
kmip_child_bytes(const KmipDoc *doc, int parent, uint32_t tag,
				 const uint8_t **p, size_t *len)
{
	return kmip_get_bytes(doc, kmip_find_child(doc, parent, tag), p, len);
}

KmipError
kmip_child_text(const KmipDoc *doc, int parent, uint32_t tag,
				const char **s, size_t *len)
{
	return kmip_get_text(doc, kmip_find_child(doc, parent, tag), s, len);
}
