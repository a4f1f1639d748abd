/*-------------------------------------------------------------------------
 *
 * crypto/format.h
 *		The byok ciphertext format (v1): parse, seal and open into caller
 *		buffers.  Standard C and OpenSSL only, so the same code builds in
 *		the extension (envelope.c wraps it) and standalone (test/fuzz).
 *
 * Format v1 (DESIGN §3):
 *   0  version (1)   1  algorithm (1 = AES-256-GCM, 2 = ChaCha20-Poly1305)
 *   2..9  DEK id (big-endian, > 0)   10..21  nonce
 *   22..22+n-1  ciphertext           last 16 bytes  tag
 * AAD = bytes 0..21 || tenant id (big-endian int4) || caller AAD.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_FORMAT_H
#define BYOK_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define BYOK_FORMAT_V1			1
#define BYOK_ALG_AES256GCM		1
#define BYOK_ALG_CHACHA20POLY1305	2
#define BYOK_ALG_COUNT			2	/* algorithms are 1 .. BYOK_ALG_COUNT */
#define BYOK_FMT_NONCE_LEN		12
#define BYOK_FMT_TAG_LEN		16
#define BYOK_HEADER_LEN			22
#define BYOK_OVERHEAD			(BYOK_HEADER_LEN + BYOK_FMT_TAG_LEN)
#define BYOK_FMT_MAX_LEN		0x3FFFFFFF	/* below PostgreSQL's 1 GB varlena limit */

typedef struct ByokHeader
{
	int			version;		/* format version byte */
	int			algorithm;		/* algorithm byte */
	int64_t		dek_id;			/* data key id */
	int			body_len;		/* bytes of ciphertext between header and tag */
} ByokHeader;

/* why a value is not a well-formed v1 ciphertext */
typedef enum ByokFormatError
{
	BYOK_FMT_OK = 0,
	BYOK_FMT_TOO_SHORT,			/* fewer than BYOK_OVERHEAD bytes */
	BYOK_FMT_TOO_LONG,			/* more than BYOK_FMT_MAX_LEN bytes */
	BYOK_FMT_BAD_VERSION,		/* version byte not 1 */
	BYOK_FMT_BAD_ALGORITHM,		/* algorithm byte not 1 .. BYOK_ALG_COUNT */
	BYOK_FMT_BAD_DEK_ID,		/* DEK id not positive */
	BYOK_FMT_ERROR_COUNT
} ByokFormatError;

extern ByokFormatError byok_format_parse(const uint8_t *data, size_t len, ByokHeader *hdr);

/*
 * Seal plain into out (plain_len + BYOK_OVERHEAD bytes) with the context's
 * key and the given nonce.  ctx is an encryption context of the algorithm.
 */
extern bool byok_format_seal(EVP_CIPHER_CTX *ctx, int algorithm, int64_t dek_id,
							 const uint8_t *nonce, int32_t tenant_id,
							 const uint8_t *plain, size_t plain_len,
							 const uint8_t *aad, size_t aad_len, uint8_t *out);

/*
 * Open a parsed value into out (len - BYOK_OVERHEAD bytes); false when the
 * tag does not verify, with out wiped.  ctx is a decryption context.
 */
extern bool byok_format_open(EVP_CIPHER_CTX *ctx, const uint8_t *data, size_t len,
							 int32_t tenant_id, const uint8_t *aad, size_t aad_len,
							 uint8_t *out);

#endif							/* BYOK_FORMAT_H */
