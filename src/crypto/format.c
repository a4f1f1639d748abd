/*-------------------------------------------------------------------------
 *
 * crypto/format.c
 *		The byok ciphertext format (v1): parse, seal and open.
 *
 * The byte layout is in format.h.  This file holds the parts of
 * envelope.c that touch untrusted bytes, written against the C standard
 * library and OpenSSL only, so test/fuzz builds and fuzzes exactly the
 * code the extension runs.  Nothing here allocates or raises errors:
 * envelope.c turns the results into palloc'd values and ereports.
 *
 * Safety.  The parser reads fixed offsets only after checking the length;
 * open reads the tag from the last 16 bytes and decrypts len - 38 bytes
 * into a buffer of exactly that size.  A failed open wipes its output.
 * Key bytes never pass through here: callers hand in a context with the
 * key already expanded.
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include "crypto/format.h"

static void
fmt_put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--)
	{
		p[i] = (uint8_t) v;
		v >>= 8;
	}
}

static uint64_t
fmt_get_be64(const uint8_t *p)
{
	uint64_t	v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Parse the header; BYOK_FMT_OK with *hdr filled, or why not. */
ByokFormatError
byok_format_parse(const uint8_t *data, size_t len, ByokHeader *hdr)
{
	if (len < BYOK_OVERHEAD)
		return BYOK_FMT_TOO_SHORT;
	if (len > BYOK_FMT_MAX_LEN)
		return BYOK_FMT_TOO_LONG;
	hdr->version = data[0];
	hdr->algorithm = data[1];
	if (hdr->version != BYOK_FORMAT_V1)
		return BYOK_FMT_BAD_VERSION;
	if (hdr->algorithm < 1 || hdr->algorithm > BYOK_ALG_COUNT)
		return BYOK_FMT_BAD_ALGORITHM;
	hdr->dek_id = (int64_t) fmt_get_be64(data + 2);
	if (hdr->dek_id <= 0)
		return BYOK_FMT_BAD_DEK_ID;
	hdr->body_len = (int) (len - BYOK_OVERHEAD);
	return BYOK_FMT_OK;
}

/* AAD shared by seal and open: the header, the tenant id, the caller's AAD */
static bool
fmt_feed_aad(EVP_CIPHER_CTX *ctx, const uint8_t *header, int32_t tenant_id,
			 const uint8_t *aad, size_t aad_len)
{
	uint8_t		tid[4];
	int			n;

	tid[0] = (uint8_t) ((uint32_t) tenant_id >> 24);
	tid[1] = (uint8_t) ((uint32_t) tenant_id >> 16);
	tid[2] = (uint8_t) ((uint32_t) tenant_id >> 8);
	tid[3] = (uint8_t) tenant_id;
	if (EVP_CipherUpdate(ctx, NULL, &n, header, BYOK_HEADER_LEN) != 1 ||
		EVP_CipherUpdate(ctx, NULL, &n, tid, sizeof(tid)) != 1)
		return false;
	if (aad_len > 0 && EVP_CipherUpdate(ctx, NULL, &n, aad, (int) aad_len) != 1)
		return false;
	return true;
}

bool
byok_format_seal(EVP_CIPHER_CTX *ctx, int algorithm, int64_t dek_id,
				 const uint8_t *nonce, int32_t tenant_id,
				 const uint8_t *plain, size_t plain_len,
				 const uint8_t *aad, size_t aad_len, uint8_t *out)
{
	int			n;

	if (plain_len > BYOK_FMT_MAX_LEN - BYOK_OVERHEAD || dek_id <= 0)
		return false;
	out[0] = BYOK_FORMAT_V1;
	out[1] = (uint8_t) algorithm;
	fmt_put_be64(out + 2, (uint64_t) dek_id);
	memcpy(out + 10, nonce, BYOK_FMT_NONCE_LEN);
	if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, out + 10) != 1 ||
		!fmt_feed_aad(ctx, out, tenant_id, aad, aad_len) ||
		(plain_len > 0 &&
		 EVP_EncryptUpdate(ctx, out + BYOK_HEADER_LEN, &n, plain, (int) plain_len) != 1) ||
		EVP_EncryptFinal_ex(ctx, out + BYOK_HEADER_LEN + plain_len, &n) != 1 ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, BYOK_FMT_TAG_LEN,
							out + BYOK_HEADER_LEN + plain_len) != 1)
	{
		OPENSSL_cleanse(out, plain_len + BYOK_OVERHEAD);
		return false;
	}
	return true;
}

bool
byok_format_open(EVP_CIPHER_CTX *ctx, const uint8_t *data, size_t len,
				 int32_t tenant_id, const uint8_t *aad, size_t aad_len, uint8_t *out)
{
	size_t		body_len;
	uint8_t		tag[BYOK_FMT_TAG_LEN];
	int			n;

	if (len < BYOK_OVERHEAD || len > BYOK_FMT_MAX_LEN)
		return false;
	body_len = len - BYOK_OVERHEAD;
	memcpy(tag, data + len - BYOK_FMT_TAG_LEN, BYOK_FMT_TAG_LEN);
	if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, data + 10) != 1 ||
		!fmt_feed_aad(ctx, data, tenant_id, aad, aad_len) ||
		(body_len > 0 &&
		 EVP_DecryptUpdate(ctx, out, &n, data + BYOK_HEADER_LEN, (int) body_len) != 1) ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, BYOK_FMT_TAG_LEN, tag) != 1 ||
		EVP_DecryptFinal_ex(ctx, out + body_len, &n) != 1)
	{
		/* volatile-free wipe: the compiler cannot drop a call into OpenSSL */
		OPENSSL_cleanse(out, body_len);
		return false;
	}
	return true;
}
