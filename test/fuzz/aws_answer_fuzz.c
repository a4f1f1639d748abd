/*
 * aws_answer_fuzz.c -- libFuzzer target for the AWS KMS answer readers
 * (src/providers/answers.c over src/providers/json.c): every input is read
 * as an error answer, a DescribeKey answer, an Encrypt and a Decrypt
 * answer; see answer_fuzz.h for the checks.  "Destroyed" must only come
 * from a JSON error whose __type names NotFoundException (AWS JSON 1.1:
 * before the first ':', after the first '#').
 *
 *	clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Itest/fuzz \
 *		test/fuzz/aws_answer_fuzz.c src/providers/json.c src/providers/answers.c -o aws_answer_fuzz
 */
#include "answer_fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const paths[] = {"__type", "message", "KeyMetadata.KeyState", "Plaintext",
	"CiphertextBlob", ""};
	long		status = af_status(data, size);
	size_t		len;
	const char *body = af_body(data, size, &len);
	ByokAnswer	a;
	ByokKmsStatus st;
	ByokKeyState state = BYOK_KEY_STATE_COUNT;

	af_check_reader(body, len, paths, 6);

	st = byok_aws_read_error(status, body, len, &a);
	af_check_answer(st, &a);
	AF_ASSERT(st != BYOK_KMS_OK);
	if (st == BYOK_KMS_DESTROYED)
	{
		const char *type;

		memset(&af_pick, 0, sizeof(af_pick));
		af_pick.npaths = 1;
		af_pick.paths[0] = "__type";
		AF_ASSERT(byok_json_pick(body, len, &af_pick) && af_pick.kinds[0] == BYOK_JSON_STRING);
		{
			char	   *t = (char *) af_pick.values[0];
			char	   *colon = strchr(t, ':');

			if (colon)
				*colon = '\0';
			type = strchr(t, '#');
			AF_ASSERT(strcmp(type ? type + 1 : t, "NotFoundException") == 0);
		}
		AF_ASSERT(status != 429 && status < 500);
		byok_json_pick_wipe(&af_pick);
	}

	st = byok_aws_read_state(body, len, &state, &a);
	if (st == BYOK_KMS_OK)
		AF_ASSERT(state == BYOK_KEY_ENABLED || state == BYOK_KEY_DISABLED);
	else
	{
		AF_ASSERT(st == BYOK_KMS_BAD_RESPONSE);
		af_check_answer(st, &a);
	}

	af_check_string(body, len, "Plaintext", 2048);
	af_check_string(body, len, "CiphertextBlob", 2048);
	return 0;
}
