/*-------------------------------------------------------------------------
 *
 * crypto/keyrow.h
 *		Turning a catalog row of byok.data_keys into a data key: the checks
 *		every field must pass, the AAD that binds a wrapped DEK to its
 *		tenant, scope and version, and the unwrap into a 32-byte key.
 *		Standard C and OpenSSL only, so test/fuzz builds and fuzzes the code
 *		the extension runs.
 *
 * The catalog is untrusted input (an edited dump, a superuser's mistake,
 * replication): a field that fails its check is reported, never copied.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KEYROW_H
#define BYOK_KEYROW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BYOK_ROW_KEY_LEN		32	/* a DEK or TK */
#define BYOK_ROW_MAX_SCOPE		255 /* bytes of a scope */
#define BYOK_ROW_WRAPPED_LEN	(12 + BYOK_ROW_KEY_LEN + 16)	/* nonce || key || tag */
#define BYOK_ROW_AAD_LABEL		"byok-dek-v1"
#define BYOK_ROW_AAD_MAX		(sizeof(BYOK_ROW_AAD_LABEL) + 8 + BYOK_ROW_MAX_SCOPE)

/* why a catalog row cannot give a key */
typedef enum ByokRowError
{
	BYOK_ROW_OK = 0,
	BYOK_ROW_BAD_TENANT_ID,		/* tenant id not positive */
	BYOK_ROW_BAD_SCOPE,			/* scope empty, over 255 bytes, or with control characters */
	BYOK_ROW_BAD_VERSION,		/* version not positive */
	BYOK_ROW_BAD_WRAPPED_LEN,	/* wrapped key not exactly BYOK_ROW_WRAPPED_LEN bytes */
	BYOK_ROW_AUTH_FAILED,		/* does not authenticate under the tenant key */
	BYOK_ROW_ERROR_COUNT
} ByokRowError;

extern const char *byok_row_error_text(ByokRowError e);
extern ByokRowError byok_row_check_scope(const char *scope, size_t len);

/* the AAD of a wrapped DEK into aad (BYOK_ROW_AAD_MAX bytes); its length into *aad_len */
extern ByokRowError byok_row_dek_aad(int32_t tenant_id, const char *scope, size_t scope_len,
									 int32_t version, uint8_t *aad, size_t *aad_len);

/* unwrap a DEK row under tenant key tk into key (BYOK_ROW_KEY_LEN bytes; wiped on failure) */
extern ByokRowError byok_row_unwrap_dek(const uint8_t *tk, int32_t tenant_id,
										const char *scope, size_t scope_len, int32_t version,
										const uint8_t *wrapped, size_t wrapped_len, uint8_t *key);

/* wrap key under tk with the given nonce into wrapped (BYOK_ROW_WRAPPED_LEN bytes) */
extern ByokRowError byok_row_wrap_dek(const uint8_t *tk, int32_t tenant_id,
									  const char *scope, size_t scope_len, int32_t version,
									  const uint8_t *key, const uint8_t *nonce, uint8_t *wrapped);

#endif							/* BYOK_KEYROW_H */
