/*-------------------------------------------------------------------------
 *
 * crypto/envelope.h
 *		Sealing and opening byok values (format.h has the format) and the
 *		AES-256-GCM key-wrapping primitives.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_ENVELOPE_H
#define BYOK_ENVELOPE_H

#include <openssl/evp.h>

#include "byok_defs.h"

#include "crypto/format.h"

/* wrapped key made by byok_gcm_wrap: nonce || ciphertext || tag */
#define BYOK_WRAPPED_LEN(n)		(BYOK_GCM_NONCE_LEN + (n) + BYOK_GCM_TAG_LEN)

extern void byok_envelope_parse(const uint8 *data, int len, ByokHeader *hdr);
extern bool byok_envelope_try_parse(const uint8 *data, int len, ByokHeader *hdr);
extern bytea *byok_envelope_seal(EVP_CIPHER_CTX *ctx, int algorithm, int64 dek_id, int32 tenant_id,
								 const char *plain, int plain_len,
								 const char *aad, int aad_len);
extern bytea *byok_envelope_open(EVP_CIPHER_CTX *ctx, const uint8 *data, int len,
								 int32 tenant_id, const char *aad, int aad_len);

extern const char *byok_algorithm_name(int algorithm);
extern EVP_CIPHER_CTX *byok_aead_context(int algorithm, const uint8 *key, bool encrypt);
extern void byok_random_bytes(uint8 *out, int len);
extern int	byok_gcm_wrap(const uint8 *key, const uint8 *aad, int aad_len,
						  const uint8 *plain, int plain_len, uint8 *out);
extern bool byok_gcm_unwrap(const uint8 *key, const uint8 *aad, int aad_len,
							const uint8 *in, int in_len, uint8 *out, int out_cap, int *out_len);
extern void byok_key_fingerprint(const uint8 *key, int len, char *out);

#define BYOK_FINGERPRINT_LEN	17	/* 16 hex digits and a terminator */

#endif							/* BYOK_ENVELOPE_H */
