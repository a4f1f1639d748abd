/*
 * format_common.h -- fixed keys and helpers shared by format_test.c and
 * format_fuzz.c (test/fuzz): contexts for both algorithms, the plaintext
 * pattern every seed carries, and a seed maker.
 */
#ifndef BYOK_FORMAT_COMMON_H
#define BYOK_FORMAT_COMMON_H

#include <stdlib.h>
#include <string.h>

#include "crypto/format.h"

#define FMT_TENANT	7

static const uint8_t fmt_key[32] = {
	0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d, 0x77, 0x81,
	0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4
};

/* a context of 'algorithm' with the fixed key, for sealing or opening */
static EVP_CIPHER_CTX *
fmt_ctx(int algorithm, int encrypt)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	const EVP_CIPHER *c = algorithm == BYOK_ALG_CHACHA20POLY1305 ?
		EVP_chacha20_poly1305() : EVP_aes_256_gcm();

	if (ctx == NULL || EVP_CipherInit_ex(ctx, c, NULL, fmt_key, NULL, encrypt) != 1)
		abort();
	return ctx;
}

/* the plaintext every seed carries: byte i is (i * 7 + 3) mod 256 */
static int
fmt_is_pattern(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t) (i * 7 + 3))
			return 0;
	return 1;
}

/* seal the pattern of length n; returns a malloc'd value of n + BYOK_OVERHEAD bytes */
static uint8_t *
fmt_seed(int algorithm, int64_t dek_id, size_t n, const uint8_t *aad, size_t aad_len)
{
	EVP_CIPHER_CTX *ctx = fmt_ctx(algorithm, 1);
	uint8_t    *plain = malloc(n + 1);
	uint8_t    *out = malloc(n + BYOK_OVERHEAD);
	uint8_t		nonce[BYOK_FMT_NONCE_LEN];

	for (size_t i = 0; i < n; i++)
		plain[i] = (uint8_t) (i * 7 + 3);
	for (int i = 0; i < BYOK_FMT_NONCE_LEN; i++)
		nonce[i] = (uint8_t) (n + i * 31 + algorithm);
	if (!byok_format_seal(ctx, algorithm, dek_id, nonce, FMT_TENANT, plain, n, aad, aad_len, out))
		abort();
	EVP_CIPHER_CTX_free(ctx);
	free(plain);
	return out;
}

#endif
