/*
 * keyrow_fuzz.c -- libFuzzer target for src/crypto/keyrow.c: the code that turns
 * a catalog row of byok.data_keys (tenant id, scope, version, wrapped key)
 * into an AAD and a 32-byte data key.  The catalog is untrusted input, so
 * every field comes from the fuzzer:
 *
 *   bytes 0..3 tenant id, 4..7 version, 8..9 scope length (big-endian),
 *   then the scope, then the wrapped key (the rest).
 *
 * Invariants: the AAD is built only for a valid row and never exceeds
 * BYOK_ROW_AAD_MAX; an unwrap writes only the 32-byte key (ASan catches
 * anything past it) and succeeds only for a row that was wrapped under the
 * fuzzer's fixed tenant key with the same fields; a valid row, wrapped and
 * unwrapped, gives its key back, and with one wrapped byte flipped is
 * refused with the key wiped.
 *
 *	clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *		test/fuzz/keyrow_fuzz.c src/crypto/keyrow.c -lcrypto -o keyrow_fuzz
 */
#include <stdlib.h>
#include <string.h>

#include "crypto/keyrow.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t tk[BYOK_ROW_KEY_LEN] = {
	1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
	17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static int32_t
get_be32(const uint8_t *p)
{
	return (int32_t) (((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int32_t		tenant_id,
				version;
	size_t		slen;
	char	   *scope;
	const uint8_t *wrapped;
	size_t		wlen;
	uint8_t		aad[BYOK_ROW_AAD_MAX];
	size_t		aad_len = 0;
	uint8_t    *key;
	ByokRowError e,
				a;

	if (size < 10)
		return 0;
	tenant_id = get_be32(data);
	version = get_be32(data + 4);
	slen = ((size_t) data[8] << 8) | data[9];
	if (10 + slen > size)
		slen = size - 10;
	/* the scope in a buffer of exactly its length, so ASan sees any over-read */
	scope = malloc(slen ? slen : 1);
	memcpy(scope, data + 10, slen);
	wrapped = data + 10 + slen;
	wlen = size - 10 - slen;

	a = byok_row_dek_aad(tenant_id, scope, slen, version, aad, &aad_len);
	if (a == BYOK_ROW_OK && (aad_len > BYOK_ROW_AAD_MAX || aad_len != sizeof(BYOK_ROW_AAD_LABEL) + 8 + slen))
		abort();
	if (a == BYOK_ROW_OK && (tenant_id <= 0 || version <= 0 || slen == 0 || slen > BYOK_ROW_MAX_SCOPE))
		abort();

	/* the key buffer is exactly 32 bytes on the heap: any overflow is caught */
	key = malloc(BYOK_ROW_KEY_LEN);
	e = byok_row_unwrap_dek(tk, tenant_id, scope, slen, version, wrapped, wlen, key);
	if (e == BYOK_ROW_OK && (a != BYOK_ROW_OK || wlen != BYOK_ROW_WRAPPED_LEN))
		abort();
	if (a != BYOK_ROW_OK && e != a)
		abort();				/* refused for the wrong reason */

	if (a == BYOK_ROW_OK)
	{
		uint8_t		mine[BYOK_ROW_KEY_LEN];
		uint8_t		w[BYOK_ROW_WRAPPED_LEN];
		uint8_t		nonce[12] = {0};

		for (int i = 0; i < BYOK_ROW_KEY_LEN; i++)
			mine[i] = (uint8_t) (i * 7 + size);
		if (byok_row_wrap_dek(tk, tenant_id, scope, slen, version, mine, nonce, w) != BYOK_ROW_OK)
			abort();
		if (byok_row_unwrap_dek(tk, tenant_id, scope, slen, version, w, sizeof(w), key) != BYOK_ROW_OK ||
			memcmp(key, mine, sizeof(mine)) != 0)
			abort();
		w[size % sizeof(w)] ^= 0x01;
		if (byok_row_unwrap_dek(tk, tenant_id, scope, slen, version, w, sizeof(w), key) != BYOK_ROW_AUTH_FAILED)
			abort();
		for (int i = 0; i < BYOK_ROW_KEY_LEN; i++)
			if (key[i] != 0)
				abort();		/* a refused key is wiped */
		/* the same key wrapped for another version or tenant does not unwrap */
		w[size % sizeof(w)] ^= 0x01;
		if (version < 0x7fffffff &&
			byok_row_unwrap_dek(tk, tenant_id, scope, slen, version + 1, w, sizeof(w), key) == BYOK_ROW_OK)
			abort();
	}
	free(key);
	free(scope);
	return 0;
}
