/*
 * vault_answer_fuzz.c -- libFuzzer target for the Vault Transit answer
 * readers (src/providers/answers.c over src/providers/json.c): every input
 * is read as an error answer, a keys/<name> answer (with the version hint
 * from byte 1), an encrypt and a decrypt answer; see answer_fuzz.h for the
 * checks.  "Destroyed" must only come from Vault's JSON error envelope.
 *
 *	clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Itest/fuzz \
 *		test/fuzz/vault_answer_fuzz.c src/providers/json.c src/providers/answers.c -o vault_answer_fuzz
 */
#include "answer_fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const paths[] = {"errors", "errors.0", "data.min_decryption_version",
	"data.plaintext", "data.ciphertext", "data"};
	long		status = af_status(data, size);
	int32_t		hint = size >= 2 ? data[1] % 8 : 0;
	size_t		len;
	const char *body = af_body(data, size, &len);
	ByokAnswer	a;
	ByokKmsStatus st;
	ByokKeyState state = BYOK_KEY_STATE_COUNT;

	af_check_reader(body, len, paths, 6);

	st = byok_vault_read_error(status, body, len, &a);
	af_check_answer(st, &a);
	AF_ASSERT(st != BYOK_KMS_OK);
	if (st == BYOK_KMS_DESTROYED)
	{
		memset(&af_pick, 0, sizeof(af_pick));
		af_pick.npaths = 1;
		af_pick.paths[0] = "errors";
		AF_ASSERT(byok_json_pick(body, len, &af_pick) && af_pick.kinds[0] == BYOK_JSON_ARRAY);
		AF_ASSERT(status != 429 && status < 500 && status != 401 && status != 403);
		byok_json_pick_wipe(&af_pick);
	}

	st = byok_vault_read_state(body, len, hint, &state, &a);
	if (st == BYOK_KMS_OK)
	{
		AF_ASSERT(state == BYOK_KEY_ENABLED || state == BYOK_KEY_DISABLED);
		if (hint == 0)
			AF_ASSERT(state == BYOK_KEY_ENABLED);
	}
	else
	{
		AF_ASSERT(st == BYOK_KMS_BAD_RESPONSE);
		af_check_answer(st, &a);
	}

	af_check_string(body, len, "data.plaintext", 2048);
	af_check_string(body, len, "data.ciphertext", 1023);
	return 0;
}
