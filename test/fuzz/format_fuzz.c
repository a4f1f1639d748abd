/*
 * format_fuzz.c -- libFuzzer target for the byok ciphertext format
 * (src/crypto/format.c, the code the extension runs on every byok_decrypt).
 *
 * Every input is parsed (the result must be consistent with the bytes) and,
 * when it parses, opened under the fixed key of its algorithm for the seed
 * tenant: an open that succeeds must yield the seeds' plaintext pattern,
 * anything else is a forgery.  The input is also sealed as a plaintext and
 * opened back (it must come back intact), and with one byte flipped (it
 * must be refused, with the output wiped).
 *
 *	clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Itest/fuzz \
 *		test/fuzz/format_fuzz.c src/crypto/format.c -lcrypto -o format_fuzz
 *	./format_test --write-corpus SEEDS; ./format_fuzz -max_total_time=30 NEW SEEDS
 */
#include "format_common.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	ByokHeader	hdr;
	ByokFormatError e = byok_format_parse(data, size, &hdr);
	uint8_t    *out;

	if (size > 65536)
		return 0;
	out = malloc(size + BYOK_OVERHEAD + 1);
	if (e == BYOK_FMT_OK)
	{
		EVP_CIPHER_CTX *ctx = fmt_ctx(hdr.algorithm, 0);

		if (size < BYOK_OVERHEAD || hdr.body_len != (int) (size - BYOK_OVERHEAD) ||
			hdr.version != data[0] || hdr.algorithm != data[1] || hdr.dek_id <= 0)
			abort();
		if (byok_format_open(ctx, data, size, FMT_TENANT, NULL, 0, out) &&
			!fmt_is_pattern(out, hdr.body_len))
			abort();			/* a forgery */
		EVP_CIPHER_CTX_free(ctx);
	}
	else if (size >= BYOK_OVERHEAD && data[0] == 1 && data[1] >= 1 && data[1] <= 2 &&
			 e != BYOK_FMT_BAD_DEK_ID)
		abort();				/* refused for the wrong reason */

	/* the input as a plaintext: sealed, it must open back, and not when altered */
	{
		int			algorithm = size > 0 && (data[0] & 1) ? BYOK_ALG_CHACHA20POLY1305 : BYOK_ALG_AES256GCM;
		EVP_CIPHER_CTX *enc = fmt_ctx(algorithm, 1);
		EVP_CIPHER_CTX *dec = fmt_ctx(algorithm, 0);
		uint8_t    *v = malloc(size + BYOK_OVERHEAD);
		uint8_t		nonce[BYOK_FMT_NONCE_LEN] = {0};
		size_t		at;

		memcpy(nonce, data, size < sizeof(nonce) ? size : sizeof(nonce));
		if (!byok_format_seal(enc, algorithm, 1 + (int64_t) size, nonce, FMT_TENANT, data, size,
							  data, size / 2, v))
			abort();
		if (!byok_format_open(dec, v, size + BYOK_OVERHEAD, FMT_TENANT, data, size / 2, out) ||
			(size > 0 && memcmp(out, data, size) != 0))
			abort();
		at = size > 0 ? (data[size - 1] * 131u + size) % (size + BYOK_OVERHEAD) : 0;
		v[at] ^= 0x01;
		if (byok_format_open(dec, v, size + BYOK_OVERHEAD, FMT_TENANT, data, size / 2, out))
			abort();
		for (size_t i = 0; i < size; i++)
			if (out[i] != 0)
				abort();		/* a refused open must wipe what it decrypted */
		EVP_CIPHER_CTX_free(enc);
		EVP_CIPHER_CTX_free(dec);
		free(v);
	}
	free(out);
	return 0;
}
