/*
 * json_test.c -- unit test of the bounded JSON reader (src/providers/json.c)
 * and the AWS KMS and Vault answer readers (src/providers/answers.c), the
 * code the extension runs on every provider answer.
 *
 *	gcc -Wall -Wextra -g -fsanitize=address,undefined -Isrc -Itest/fuzz \
 *		test/fuzz/json_test.c src/providers/json.c src/providers/answers.c -o /tmp/json_test
 *	/tmp/json_test                        # N passed, N failed
 *	/tmp/json_test --write-corpus DIR     # seeds for the answer fuzzers
 */
#include <stdlib.h>
#include <string.h>

#include "minicheck.h"
#include "providers/answers.h"
#include "providers/json.h"

static ByokJsonPick pick;

/* pick one path of 'json'; the value or NULL; *ok the reader's verdict */
static const char *
pick1(const char *json, const char *path, bool *ok)
{
	memset(&pick, 0, sizeof(pick));
	pick.npaths = 1;
	pick.paths[0] = path;
	*ok = byok_json_pick(json, strlen(json), &pick);
	return pick.values[0];
}

static int
store_is_zero(void)
{
	for (size_t i = 0; i < sizeof(pick.store); i++)
		if (pick.store[i] != 0)
			return 0;
	return 1;
}

static int
printable(const char *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s >= 0x7f)
			return 0;
	return 1;
}

static void
test_reader(void)
{
	bool		ok;
	const char *v;
	char	   *big;
	size_t		n;

	v = pick1("{\"KeyMetadata\":{\"KeyId\":\"k\",\"KeyState\":\"Enabled\"}}", "KeyMetadata.KeyState", &ok);
	CHECK(ok && v && strcmp(v, "Enabled") == 0 && pick.kinds[0] == BYOK_JSON_STRING);
	v = pick1("{\"errors\":[\"a\",\"key not found\"]}", "errors.1", &ok);
	CHECK(ok && v && strcmp(v, "key not found") == 0);
	v = pick1("{\"errors\":[]}", "errors", &ok);
	CHECK(ok && v == NULL && pick.kinds[0] == BYOK_JSON_ARRAY);
	v = pick1("{\"data\":{\"min_decryption_version\":12}}", "data.min_decryption_version", &ok);
	CHECK(ok && v && strcmp(v, "12") == 0 && pick.kinds[0] == BYOK_JSON_NUMBER);
	v = pick1(" [ true , null , -0.5e+3 ] ", "2", &ok);
	CHECK(ok && v && strcmp(v, "-0.5e+3") == 0);
	/* raw UTF-8 in a value that is not picked is validated, and skipped whole */
	v = pick1("[\"\xd5\x9c\xe2\x82\xac\xf0\x9f\x98\x80\", \"x\"]", "1", &ok);
	CHECK(ok && v && strcmp(v, "x") == 0);
	pick1("\"\xc3\xa9\"", "a", &ok);
	CHECK(ok);
	v = pick1("[true,null]", "1", &ok);
	CHECK(ok && v && strcmp(v, "null") == 0 && pick.kinds[0] == BYOK_JSON_LITERAL);
	/* escapes, \u, surrogate pairs, raw UTF-8 */
	v = pick1("{\"a\":\"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\xc3\xa9\"}", "a", &ok);
	CHECK(ok && v && strcmp(v, "x\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80\xc3\xa9") == 0);
	/* a field of the same name at another depth is not the one asked for */
	v = pick1("{\"KeyState\":\"Enabled\",\"KeyMetadata\":{\"KeyState\":\"Disabled\"}}", "KeyMetadata.KeyState", &ok);
	CHECK(ok && v && strcmp(v, "Disabled") == 0);
	/* an empty name is a level of its own: {"": {"Plaintext": …}} is not "Plaintext" */
	v = pick1("{\"\":{\"Plaintext\":\"x\"}}", "Plaintext", &ok);
	CHECK(ok && v == NULL);
	v = pick1("{\"\":{\"Plaintext\":\"x\"}}", ".Plaintext", &ok);
	CHECK(ok && v && strcmp(v, "x") == 0);
	v = pick1("[[\"x\"]]", "0.0", &ok);
	CHECK(ok && v && strcmp(v, "x") == 0);
	/* a name holding the separator matches nothing */
	v = pick1("{\"KeyMetadata.KeyState\":\"Enabled\"}", "KeyMetadata.KeyState", &ok);
	CHECK(ok && v == NULL);
	/* a picked field twice: refused, whichever form */
	v = pick1("{\"KeyMetadata\":{\"KeyState\":\"Disabled\",\"KeyState\":\"Enabled\"}}", "KeyMetadata.KeyState", &ok);
	CHECK(!ok && v == NULL && pick.result == BYOK_JSON_DUPLICATE && store_is_zero());
	v = pick1("{\"a\":{\"b\":1},\"a\":\"x\"}", "a", &ok);
	CHECK(!ok && pick.result == BYOK_JSON_DUPLICATE);
	/* duplicates of fields not picked are the provider's business */
	v = pick1("{\"x\":1,\"x\":2,\"a\":\"v\"}", "a", &ok);
	CHECK(ok && v && strcmp(v, "v") == 0);

	/* not JSON */
	{
		static const char *const bad[] = {
			"", " ", "{", "}", "[", "[1,]", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{a:1}", "'a'",
			"\"abc", "\"a\\x\"", "\"a\\u12\"", "\"\\ud800\"", "\"\\udc00x\"", "\"\\ud800\\u0041\"",
			"\"\\u0000\"", "\"a\x01\"", "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
			"\"\xe2\x82\"", "01", "1.", ".5", "-", "1e", "tru", "nul", "[1] 2", "{} x", "[1]]",
			"<html><body>404 Not Found</body></html>",
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		{
			pick1(bad[i], "a", &ok);
			if (!CHECK(!ok && pick.result == BYOK_JSON_SYNTAX))
				printf("  accepted: %s\n", bad[i]);
		}
	}
	/* a value of the reader's own: a picked value is copied, then wiped on refusal */
	v = pick1("{\"Plaintext\":\"c2VjcmV0\",\"x\":[}", "Plaintext", &ok);
	CHECK(!ok && v == NULL && store_is_zero());

	/* depth: 32 levels are read, 33 refused, 200,000 refused without recursion */
	big = malloc(400001);
	for (int depth = 31; depth <= 33; depth++)
	{
		n = 0;
		for (int i = 0; i < depth; i++)
			big[n++] = '[';
		for (int i = 0; i < depth; i++)
			big[n++] = ']';
		big[n] = '\0';
		pick1(big, "0", &ok);
		CHECK(ok == (depth <= BYOK_JSON_MAX_DEPTH));
		if (depth > BYOK_JSON_MAX_DEPTH)
			CHECK(pick.result == BYOK_JSON_TOO_DEEP);
	}
	memset(big, '[', 200000);
	big[200000] = '\0';
	pick1(big, "0", &ok);
	CHECK(!ok && pick.result == BYOK_JSON_TOO_DEEP);

	/* length: a picked value of 8192 bytes is kept, 8193 refused; others need no room */
	for (int len = 8192; len <= 8193; len++)
	{
		n = 0;
		n += sprintf(big + n, "{\"a\":\"");
		memset(big + n, 'A', len);
		n += len;
		n += sprintf(big + n, "\"}");
		v = pick1(big, "a", &ok);
		CHECK(ok == (len <= BYOK_JSON_MAX_VALUE));
		if (ok)
			CHECK(v && strlen(v) == (size_t) len && pick.lens[0] == (size_t) len);
		else
			CHECK(pick.result == BYOK_JSON_TOO_LONG && store_is_zero());
		v = pick1(big, "b", &ok);
		CHECK(ok && v == NULL);
	}
	/* a long number too */
	n = sprintf(big, "{\"a\":");
	memset(big + n, '7', 9000);
	strcpy(big + n + 9000, "}");
	v = pick1(big, "a", &ok);
	CHECK(!ok && pick.result == BYOK_JSON_TOO_LONG);
	/* many picks fill the store: the store bounds their sum */
	{
		ByokJsonPick *p = &pick;
		char		val[8001];

		memset(val, 'B', 8000);
		val[8000] = '\0';
		n = sprintf(big, "{\"a\":\"%s\",\"b\":\"%s\",\"c\":\"%s\"}", val, val, val);
		memset(p, 0, sizeof(*p));
		p->npaths = 3;
		p->paths[0] = "a";
		p->paths[1] = "b";
		p->paths[2] = "c";
		ok = byok_json_pick(big, n, p);
		CHECK(!ok && p->result == BYOK_JSON_STORE_FULL);
		n = sprintf(big, "{\"a\":\"%s\",\"b\":\"%s\"}", val, val);
		ok = byok_json_pick(big, n, p);
		CHECK(ok && p->lens[0] == 8000 && p->lens[1] == 8000 && p->values[2] == NULL);
	}
	/* a long field name or path matches nothing, and costs nothing */
	n = sprintf(big, "{\"");
	memset(big + n, 'k', 5000);
	n += 5000;
	n += sprintf(big + n, "\":{\"a\":1},\"a\":2}");
	v = pick1(big, "a", &ok);
	CHECK(ok && v && strcmp(v, "2") == 0);
	/* input need not be NUL-terminated: the length is the bound */
	memset(&pick, 0, sizeof(pick));
	pick.npaths = 1;
	pick.paths[0] = "a";
	CHECK(byok_json_pick("{\"a\":1}xxxx", 7, &pick) && strcmp(pick.values[0], "1") == 0);
	CHECK(!byok_json_pick("{\"a\":1}", 6, &pick));
	/* wipe */
	pick1("{\"a\":\"secret\"}", "a", &ok);
	byok_json_pick_wipe(&pick);
	CHECK(pick.values[0] == NULL && store_is_zero());
	free(big);
	CHECK(strcmp(byok_json_result_text(BYOK_JSON_TOO_DEEP), "JSON nested more than 32 levels deep") == 0);
	CHECK(printable(byok_json_result_text(99)));
}

static void
test_answers(void)
{
	ByokAnswer	a;
	ByokKeyState st = BYOK_KEY_STATE_COUNT;
	char		nested[1001];
	const char *html = "<html><body><h1>404 Not Found</h1></body></html>";

	/* AWS errors */
#define AWS_ERR(status, body) byok_aws_read_error(status, body, strlen(body), &a)
	CHECK(AWS_ERR(400, "{\"__type\":\"NotFoundException\",\"message\":\"Key 'x' does not exist\"}") == BYOK_KMS_DESTROYED &&
		  strcmp(a.code, "NotFoundException") == 0 && strcmp(a.text, "Key 'x' does not exist") == 0);
	CHECK(AWS_ERR(400, "{\"__type\":\"com.amazonaws.kms#DisabledException\",\"Message\":\"m\"}") == BYOK_KMS_DISABLED &&
		  strcmp(a.code, "DisabledException") == 0 && strcmp(a.text, "m") == 0);
	CHECK(AWS_ERR(400, "{\"__type\":\"KMSInvalidStateException\"}") == BYOK_KMS_DISABLED);
	CHECK(AWS_ERR(400, "{\"__type\":\"ThrottlingException\"}") == BYOK_KMS_THROTTLED);
	CHECK(AWS_ERR(400, "{\"__type\":\"AccessDeniedException\"}") == BYOK_KMS_PERMISSION);
	CHECK(AWS_ERR(400, "{\"__type\":\"InvalidCiphertextException\"}") == BYOK_KMS_BAD_RESPONSE);
	/* AWS JSON 1.1: the type is cut at the first ':', then taken after the first '#' */
	CHECK(AWS_ERR(400, "{\"__type\":\"ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/\"}") == BYOK_KMS_THROTTLED &&
		  strcmp(a.code, "ThrottlingException") == 0);
	CHECK(AWS_ERR(400, "{\"__type\":\"aws.protocoltests#NotFoundException:http://x\"}") == BYOK_KMS_DESTROYED);
	CHECK(AWS_ERR(400, "{\"\":{\"__type\":\"NotFoundException\"}}") == BYOK_KMS_UNAVAILABLE);
	CHECK(AWS_ERR(500, "{\"__type\":\"KMSInternalException\"}") == BYOK_KMS_UNAVAILABLE);
	CHECK(AWS_ERR(503, "{\"__type\":\"NotFoundException\"}") == BYOK_KMS_UNAVAILABLE);
	/* not AWS's answer: never destroyed, never a lockout */
	CHECK(AWS_ERR(404, html) == BYOK_KMS_UNAVAILABLE && strcmp(a.code, "HTTP_404") == 0);
	CHECK(AWS_ERR(400, "") == BYOK_KMS_UNAVAILABLE);
	CHECK(AWS_ERR(400, "{\"__type\":17}") == BYOK_KMS_UNAVAILABLE);
	CHECK(AWS_ERR(429, "slow down") == BYOK_KMS_THROTTLED);
	memset(nested, '[', 1000);
	nested[1000] = '\0';
	CHECK(AWS_ERR(400, nested) == BYOK_KMS_BAD_RESPONSE && strstr(a.text, "nested") != NULL);
	/* control characters and invalid UTF-8 never reach a code or a text */
	CHECK(AWS_ERR(400, "{\"__type\":\"Not\\nFound\\u00ff\\u0007\",\"message\":\"a\\r\\nb\\u2028\"}") == BYOK_KMS_BAD_RESPONSE &&
		  printable(a.code) && printable(a.text) && strcmp(a.code, "Not?Found???") == 0);
	CHECK(AWS_ERR(400, "{\"__type\":\"Not\nFound\xff\"}") == BYOK_KMS_UNAVAILABLE && printable(a.text));
	{
		static char body[20000];
		int			n = sprintf(body, "{\"__type\":\"");

		memset(body + n, 'T', 8000);
		strcpy(body + n + 8000, "\",\"message\":\"x\"}");
		CHECK(AWS_ERR(400, body) == BYOK_KMS_BAD_RESPONSE && strlen(a.code) == BYOK_ANSWER_CODE_LEN - 1);
		memset(body + n, 'T', 9000);
		strcpy(body + n + 9000, "\"}");
		CHECK(AWS_ERR(400, body) == BYOK_KMS_BAD_RESPONSE && strstr(a.text, "longer than 8192") != NULL);
	}
	/* AWS state */
#define AWS_STATE(body) byok_aws_read_state(body, strlen(body), &st, &a)
	CHECK(AWS_STATE("{\"KeyMetadata\":{\"KeyState\":\"Enabled\"}}") == BYOK_KMS_OK && st == BYOK_KEY_ENABLED);
	CHECK(AWS_STATE("{\"KeyMetadata\":{\"KeyState\":\"PendingDeletion\"}}") == BYOK_KMS_OK && st == BYOK_KEY_DISABLED);
	CHECK(AWS_STATE("{\"KeyMetadata\":{\"KeyState\":true}}") == BYOK_KMS_BAD_RESPONSE);
	CHECK(AWS_STATE("{\"KeyMetadata\":{}}") == BYOK_KMS_BAD_RESPONSE);
	CHECK(AWS_STATE(nested) == BYOK_KMS_BAD_RESPONSE && strstr(a.text, "nested") != NULL);
	CHECK(AWS_STATE("{\"KeyMetadata\":{\"KeyState\":\"Disabled\",\"KeyState\":\"Enabled\"}}") == BYOK_KMS_BAD_RESPONSE &&
		  strstr(a.text, "twice") != NULL);

	/* Vault errors: destroyed only from Vault's envelope */
#define VT_ERR(status, body) byok_vault_read_error(status, body, strlen(body), &a)
	CHECK(VT_ERR(404, "{\"errors\":[]}") == BYOK_KMS_DESTROYED && strcmp(a.code, "HTTP_404") == 0);
	CHECK(VT_ERR(400, "{\"errors\":[\"encryption key not found\"]}") == BYOK_KMS_DESTROYED);
	CHECK(VT_ERR(404, html) == BYOK_KMS_UNAVAILABLE);
	CHECK(VT_ERR(404, "") == BYOK_KMS_UNAVAILABLE);
	CHECK(VT_ERR(404, "{\"errors\":\"x\"}") == BYOK_KMS_UNAVAILABLE);
	CHECK(VT_ERR(404, "{\"error\":[]}") == BYOK_KMS_UNAVAILABLE);
	CHECK(VT_ERR(404, "{\"errors\":[\"no handler for route \\\"transit2/keys/k\\\". route entry not found.\"]}") == BYOK_KMS_CONFIG);
	CHECK(VT_ERR(403, "{\"errors\":[\"permission denied\"]}") == BYOK_KMS_PERMISSION);
	CHECK(VT_ERR(429, "{\"errors\":[\"rate\"]}") == BYOK_KMS_THROTTLED);
	CHECK(VT_ERR(503, "{\"errors\":[\"Vault is sealed\"]}") == BYOK_KMS_UNAVAILABLE);
	CHECK(VT_ERR(400, "{\"errors\":[\"decryption disallowed by policy\"]}") == BYOK_KMS_DISABLED);
	CHECK(VT_ERR(400, "{\"errors\":[\"x\\u0000\"]}") == BYOK_KMS_UNAVAILABLE);
	CHECK(VT_ERR(400, "{\"errors\":[\"a\\nb\"]}") == BYOK_KMS_BAD_RESPONSE && strcmp(a.text, "a?b") == 0);
	CHECK(VT_ERR(404, nested) == BYOK_KMS_BAD_RESPONSE);
	/* Vault state */
#define VT_STATE(body, hint) byok_vault_read_state(body, strlen(body), hint, &st, &a)
	CHECK(VT_STATE("{\"data\":{\"min_decryption_version\":1}}", 1) == BYOK_KMS_OK && st == BYOK_KEY_ENABLED);
	CHECK(VT_STATE("{\"data\":{\"min_decryption_version\":2}}", 1) == BYOK_KMS_OK && st == BYOK_KEY_DISABLED);
	CHECK(VT_STATE("{\"data\":{\"min_decryption_version\":2}}", 0) == BYOK_KMS_OK && st == BYOK_KEY_ENABLED);
	CHECK(VT_STATE("{\"data\":{\"min_decryption_version\":999999999}}", 5) == BYOK_KMS_OK && st == BYOK_KEY_DISABLED);
	CHECK(VT_STATE("{\"data\":{\"min_decryption_version\":4294967297}}", 5) == BYOK_KMS_BAD_RESPONSE);
	CHECK(VT_STATE("{\"data\":{\"min_decryption_version\":-1}}", 5) == BYOK_KMS_BAD_RESPONSE);
	CHECK(VT_STATE("{\"data\":{\"min_decryption_version\":1.5}}", 5) == BYOK_KMS_BAD_RESPONSE);
	CHECK(VT_STATE("{\"data\":{\"min_decryption_version\":\"1\"}}", 5) == BYOK_KMS_BAD_RESPONSE);
	CHECK(VT_STATE("{\"data\":{}}", 5) == BYOK_KMS_BAD_RESPONSE);
	/* strings of a successful answer */
	{
		const char *ok_body = "{\"data\":{\"plaintext\":\"c2VjcmV0\"}}";

		memset(&pick, 0, sizeof(pick));
		CHECK(byok_answer_string(ok_body, strlen(ok_body), "data.plaintext", 100, &pick, &a) == BYOK_KMS_OK &&
			  strcmp(pick.values[0], "c2VjcmV0") == 0);
		CHECK(byok_answer_string(ok_body, strlen(ok_body), "data.plaintext", 7, &pick, &a) == BYOK_KMS_BAD_RESPONSE &&
			  store_is_zero() && printable(a.text));
		CHECK(byok_answer_string("{\"Plaintext\":5}", 15, "Plaintext", 100, &pick, &a) == BYOK_KMS_BAD_RESPONSE);
		CHECK(byok_answer_string("{\"Plaintext\":\"\"}", 16, "Plaintext", 100, &pick, &a) == BYOK_KMS_BAD_RESPONSE);
		CHECK(byok_answer_string(nested, 1000, "Plaintext", 100, &pick, &a) == BYOK_KMS_BAD_RESPONSE);
	}
	/* the sanitiser */
	{
		char		out[8];

		byok_text_sanitise("ab\ncd\xff" "efghij", 12, out, sizeof(out));
		CHECK(strcmp(out, "ab?cd?e") == 0);
		byok_text_sanitise(NULL, 5, out, sizeof(out));
		CHECK(out[0] == '\0');
	}
}

/* seeds for the answer fuzzers: one file per answer */
static int
write_corpus(const char *dir)
{
	static const char *const seeds[] = {
		"{\"__type\":\"NotFoundException\",\"message\":\"Key does not exist\"}",
		"{\"__type\":\"com.amazonaws.kms#DisabledException\",\"Message\":\"disabled\"}",
		"{\"KeyMetadata\":{\"KeyId\":\"1234abcd\",\"KeyState\":\"Enabled\",\"Enabled\":true}}",
		"{\"CiphertextBlob\":\"AQIDBA==\",\"KeyId\":\"arn:aws:kms:eu-west-1:111122223333:key/1\"}",
		"{\"Plaintext\":\"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\",\"KeyId\":\"k\"}",
		"{\"errors\":[]}",
		"{\"errors\":[\"encryption key not found\"]}",
		"{\"data\":{\"ciphertext\":\"vault:v1:abcd\"}}",
		"{\"data\":{\"plaintext\":\"c2VjcmV0\"}}",
		"{\"data\":{\"name\":\"k\",\"min_decryption_version\":1,\"latest_version\":2,\"keys\":{\"1\":1,\"2\":2}}}",
		"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
		"\"\\ud83d\\ude00\\u00e9\\n\"",
	};
	char		path[4096];

	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++)
	{
		FILE	   *f;

		snprintf(path, sizeof(path), "%s/seed%02zu.json", dir, i);
		if ((f = fopen(path, "wb")) == NULL)
			return 1;
		/* the fuzzers read the first two bytes as the HTTP status and the version hint */
		fputc((int) (i % 7), f);
		fputc(1, f);
		fwrite(seeds[i], 1, strlen(seeds[i]), f);
		fclose(f);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
		return write_corpus(argv[2]);
	test_reader();
	test_answers();
	printf("%d passed, %d failed\n", npass, nfail);
	return nfail ? 1 : 0;
}
