/*-------------------------------------------------------------------------
 *
 * crypto/keyrow.c
 *		A catalog row of byok.data_keys into a data key (see keyrow.h).
 *
 * Every length is checked before a byte is copied: the scope into the AAD
 * (at most BYOK_ROW_MAX_SCOPE bytes, checked in full, never truncated, so
 * two scopes never share an AAD), the wrapped key into the unwrap (exactly
 * BYOK_ROW_WRAPPED_LEN bytes, so the plaintext is exactly one key).  The
 * AAD is the label "byok-dek-v1" with its terminating zero, the tenant id
 * and the version (big-endian int4 each), then the scope's bytes.
 *
 * Key lifetime: the key passes only through the caller's buffer, wiped
 * here when the unwrap fails.  Nothing here allocates or raises errors.
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include <openssl/evp.h>

#include "crypto/keyrow.h"

static const char *const row_error_text[BYOK_ROW_ERROR_COUNT] = {
	[BYOK_ROW_OK] = "ok",
	[BYOK_ROW_BAD_TENANT_ID] = "the tenant id is not positive",
	[BYOK_ROW_BAD_SCOPE] = "the scope is empty, longer than 255 bytes or holds control characters",
	[BYOK_ROW_BAD_VERSION] = "the version is not positive",
	[BYOK_ROW_BAD_WRAPPED_LEN] = "the wrapped key does not have the length of a wrapped 256-bit key",
	[BYOK_ROW_AUTH_FAILED] = "the wrapped key does not authenticate under the tenant key",
};

const char *
byok_row_error_text(ByokRowError e)
{
	if ((int) e < 0 || e >= BYOK_ROW_ERROR_COUNT)
		return "unknown error";
	return row_error_text[e];
}

ByokRowError
byok_row_check_scope(const char *scope, size_t len)
{
	if (scope == NULL || len == 0 || len > BYOK_ROW_MAX_SCOPE)
		return BYOK_ROW_BAD_SCOPE;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char) scope[i] < 0x20 || scope[i] == 0x7f)
			return BYOK_ROW_BAD_SCOPE;
	return BYOK_ROW_OK;
}

static void
row_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

ByokRowError
byok_row_dek_aad(int32_t tenant_id, const char *scope, size_t scope_len,
				 int32_t version, uint8_t *aad, size_t *aad_len)
{
	ByokRowError e;
	size_t		n = sizeof(BYOK_ROW_AAD_LABEL);

	if (tenant_id <= 0)
		return BYOK_ROW_BAD_TENANT_ID;
	if (version <= 0)
		return BYOK_ROW_BAD_VERSION;
	if ((e = byok_row_check_scope(scope, scope_len)) != BYOK_ROW_OK)
		return e;
	memcpy(aad, BYOK_ROW_AAD_LABEL, n);
	row_put_be32(aad + n, (uint32_t) tenant_id);
	row_put_be32(aad + n + 4, (uint32_t) version);
	memcpy(aad + n + 8, scope, scope_len);
	*aad_len = n + 8 + scope_len;
	return BYOK_ROW_OK;
}

/* one AES-256-GCM pass over a 32-byte key; true when it (and the tag) worked */
static bool
row_gcm(bool encrypt, const uint8_t *tk, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
		const uint8_t *in, uint8_t *out, uint8_t *tag)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int			n;
	bool		ok;

	if (ctx == NULL)
		return false;
	ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt ? 1 : 0) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1 &&
		EVP_CipherInit_ex(ctx, NULL, NULL, tk, nonce, -1) == 1 &&
		EVP_CipherUpdate(ctx, NULL, &n, aad, (int) aad_len) == 1 &&
		EVP_CipherUpdate(ctx, out, &n, in, BYOK_ROW_KEY_LEN) == 1 && n == BYOK_ROW_KEY_LEN;
	if (ok && !encrypt)
		ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1 &&
			EVP_CipherFinal_ex(ctx, out + n, &n) == 1;
	else if (ok)
		ok = EVP_CipherFinal_ex(ctx, out + n, &n) == 1 &&
			EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
	EVP_CIPHER_CTX_free(ctx);
	return ok;
}

ByokRowError
byok_row_unwrap_dek(const uint8_t *tk, int32_t tenant_id,
					const char *scope, size_t scope_len, int32_t version,
					const uint8_t *wrapped, size_t wrapped_len, uint8_t *key)
{
	uint8_t		aad[BYOK_ROW_AAD_MAX];
	uint8_t		tag[16];
	size_t		aad_len;
	ByokRowError e;

	if ((e = byok_row_dek_aad(tenant_id, scope, scope_len, version, aad, &aad_len)) != BYOK_ROW_OK)
		return e;
	if (wrapped == NULL || wrapped_len != BYOK_ROW_WRAPPED_LEN)
		return BYOK_ROW_BAD_WRAPPED_LEN;
	memcpy(tag, wrapped + 12 + BYOK_ROW_KEY_LEN, sizeof(tag));
	if (!row_gcm(false, tk, wrapped, aad, aad_len, wrapped + 12, key, tag))
	{
		explicit_bzero(key, BYOK_ROW_KEY_LEN);
		return BYOK_ROW_AUTH_FAILED;
	}
	return BYOK_ROW_OK;
}

ByokRowError
byok_row_wrap_dek(const uint8_t *tk, int32_t tenant_id,
				  const char *scope, size_t scope_len, int32_t version,
				  const uint8_t *key, const uint8_t *nonce, uint8_t *wrapped)
{
	uint8_t		aad[BYOK_ROW_AAD_MAX];
	size_t		aad_len;
	ByokRowError e;

	if ((e = byok_row_dek_aad(tenant_id, scope, scope_len, version, aad, &aad_len)) != BYOK_ROW_OK)
		return e;
	memcpy(wrapped, nonce, 12);
	if (!row_gcm(true, tk, nonce, aad, aad_len, key, wrapped + 12, wrapped + 12 + BYOK_ROW_KEY_LEN))
	{
		explicit_bzero(wrapped, BYOK_ROW_WRAPPED_LEN);
		return BYOK_ROW_AUTH_FAILED;
	}
	return BYOK_ROW_OK;
}
