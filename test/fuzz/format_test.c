/*-------------------------------------------------------------------------
 *
 * format_test.c
 *		Standalone test of the byok ciphertext format (src/crypto/format.c): the
 *		code the extension runs to parse, seal and open values.
 *
 * Seals and opens values of many lengths under both algorithms; checks
 * that every single-bit flip, every truncation, another tenant, another
 * AAD and another key are refused with the output wiped; checks every
 * parse error.  With --write-corpus DIR it writes the fuzzer's seeds.
 * Prints "N passed, N failed"; exits 1 on failure.
 *
 *	gcc -Wall -Wextra -g -fsanitize=address,undefined -Isrc -Itest/fuzz \
 *		test/fuzz/format_test.c src/crypto/format.c -lcrypto -o format_test
 *	./format_test [--write-corpus DIR]
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>

#include "format_common.h"
#include "minicheck.h"


static int
opens(int algorithm, const uint8_t *v, size_t len, int32_t tenant, const uint8_t *aad,
	  size_t aad_len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = fmt_ctx(algorithm, 0);
	int			ok = byok_format_open(ctx, v, len, tenant, aad, aad_len, out);

	EVP_CIPHER_CTX_free(ctx);
	return ok;
}

static int
all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

static void
test_roundtrip(int algorithm)
{
	static const size_t lens[] = {0, 1, 15, 16, 17, 32, 100, 4096};
	static const uint8_t aad[] = "row 42";

	for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++)
	{
		size_t		n = lens[k];
		size_t		len = n + BYOK_OVERHEAD;
		uint8_t    *v = fmt_seed(algorithm, 99, n, aad, sizeof(aad));
		uint8_t    *out = malloc(n + 1);
		ByokHeader	hdr;
		int			flips_refused = 1;

		CHECK(byok_format_parse(v, len, &hdr) == BYOK_FMT_OK && hdr.version == 1 &&
			  hdr.algorithm == algorithm && hdr.dek_id == 99 && hdr.body_len == (int) n);
		CHECK(opens(algorithm, v, len, FMT_TENANT, aad, sizeof(aad), out) && fmt_is_pattern(out, n));
		/* every bit of every byte: header, nonce, body and tag are all authenticated */
		for (size_t i = 0; i < len && i < 200; i++)
			for (int b = 0; b < 8; b++)
			{
				v[i] ^= (uint8_t) (1 << b);
				memset(out, 0xAA, n + 1);
				if (opens(algorithm, v, len, FMT_TENANT, aad, sizeof(aad), out) || !all_zero(out, n))
					flips_refused = 0;
				v[i] ^= (uint8_t) (1 << b);
			}
		CHECK(flips_refused);
		CHECK(!opens(algorithm, v, len - 1, FMT_TENANT, aad, sizeof(aad), out));
		CHECK(!opens(algorithm, v, len, FMT_TENANT + 1, aad, sizeof(aad), out));
		CHECK(!opens(algorithm, v, len, FMT_TENANT, aad, sizeof(aad) - 1, out));
		CHECK(!opens(algorithm, v, len, FMT_TENANT, NULL, 0, out));
		CHECK(!opens(algorithm == 1 ? 2 : 1, v, len, FMT_TENANT, aad, sizeof(aad), out));
		free(v);
		free(out);
	}
}

static void
test_parse_errors(void)
{
	uint8_t		v[BYOK_OVERHEAD + 4] = {0};
	ByokHeader	hdr;

	v[0] = 1;
	v[1] = 1;
	v[9] = 5;
	CHECK(byok_format_parse(v, sizeof(v), &hdr) == BYOK_FMT_OK && hdr.dek_id == 5 && hdr.body_len == 4);
	CHECK(byok_format_parse(v, BYOK_OVERHEAD - 1, &hdr) == BYOK_FMT_TOO_SHORT);
	CHECK(byok_format_parse(v, 0, &hdr) == BYOK_FMT_TOO_SHORT);
	CHECK(byok_format_parse(v, (size_t) BYOK_FMT_MAX_LEN + 1, &hdr) == BYOK_FMT_TOO_LONG);
	v[0] = 2;
	CHECK(byok_format_parse(v, sizeof(v), &hdr) == BYOK_FMT_BAD_VERSION);
	v[0] = 1;
	v[1] = 0;
	CHECK(byok_format_parse(v, sizeof(v), &hdr) == BYOK_FMT_BAD_ALGORITHM);
	v[1] = 3;
	CHECK(byok_format_parse(v, sizeof(v), &hdr) == BYOK_FMT_BAD_ALGORITHM);
	v[1] = 2;
	v[9] = 0;
	CHECK(byok_format_parse(v, sizeof(v), &hdr) == BYOK_FMT_BAD_DEK_ID);
	v[2] = 0x80;				/* negative as int64 */
	CHECK(byok_format_parse(v, sizeof(v), &hdr) == BYOK_FMT_BAD_DEK_ID);
}

static int
write_corpus(const char *dir)
{
	static const size_t lens[] = {0, 1, 16, 32, 57};
	int			k = 0;

	for (int algorithm = 1; algorithm <= BYOK_ALG_COUNT; algorithm++)
		for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
		{
			char		path[512];
			uint8_t    *v = fmt_seed(algorithm, 1000 + k, lens[i], NULL, 0);
			FILE	   *f;

			snprintf(path, sizeof(path), "%s/seed_alg%d_len%zu.bin", dir, algorithm, lens[i]);
			f = fopen(path, "wb");
			if (f == NULL || fwrite(v, 1, lens[i] + BYOK_OVERHEAD, f) != lens[i] + BYOK_OVERHEAD)
			{
				perror(path);
				return 1;
			}
			fclose(f);
			free(v);
			k++;
		}
	printf("wrote %d seeds to %s\n", k, dir);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
		return write_corpus(argv[2]);
	test_parse_errors();
	test_roundtrip(BYOK_ALG_AES256GCM);
	test_roundtrip(BYOK_ALG_CHACHA20POLY1305);
	printf("%d passed, %d failed\n", npass, nfail);
	return nfail ? 1 : 0;
}
