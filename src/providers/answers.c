/*-------------------------------------------------------------------------
 *
 * providers/answers.c
 *		What an AWS KMS or Vault Transit answer means.
 *
 * Rules every reader here keeps:
 *   - An answer is read with the bounded reader (providers/json.c) and
 *     nothing else; a text that is not JSON, too deep or too long is a bad
 *     answer, never an error raised past the provider.
 *   - "Destroyed" is only ever read from a well-formed answer of the
 *     provider's own protocol that says so: AWS's JSON error with __type
 *     NotFoundException, Vault's JSON error envelope {"errors": [...]} on a
 *     404.  An error answer that is not the provider's (an HTML page from a
 *     proxy, an empty 404) is UNAVAILABLE: the provider was not reached;
 *     one too deep or too long for the reader is a bad answer.
 *     (The poller then waits for a second such answer before it takes a
 *     destruction as final: cache/cmk.c.)
 *   - Codes and texts are printable ASCII, bounded (byok_text_sanitise), so
 *     neither a control character nor invalid UTF-8 reaches an error
 *     detail, byok_stats() or the catalog.
 *   - Numbers are read with their digits counted, never with atoi.
 *
 * Standard C only.
 *
 * Locking: none.
 * Key lifetime: values are picked into the caller's ByokJsonPick (wiped by
 * the caller); the pick used for error answers is wiped here.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <string.h>

#include "providers/answers.h"

/*
 * A provider's own text made fit for a message: printable ASCII only (other
 * bytes become '?'), at most outlen - 1 bytes, NUL-terminated.
 */
void
byok_text_sanitise(const char *in, size_t inlen, char *out, size_t outlen)
{
	size_t		n = 0;

	if (outlen == 0)
		return;
	for (size_t i = 0; in != NULL && i < inlen && n < outlen - 1; i++)
		out[n++] = (in[i] >= 0x20 && in[i] < 0x7f) ? in[i] : '?';
	out[n] = '\0';
}

static ByokKmsStatus
an_set(ByokAnswer *a, ByokKmsStatus st, const char *code, const char *text)
{
	a->status = st;
	byok_text_sanitise(code, strlen(code), a->code, sizeof(a->code));
	byok_text_sanitise(text, strlen(text), a->text, sizeof(a->text));
	return st;
}

static ByokKmsStatus
an_bad(ByokAnswer *a, const char *what, ByokJsonResult res)
{
	char		text[BYOK_ANSWER_TEXT_LEN];

	snprintf(text, sizeof(text), "The answer is %s.", res == BYOK_JSON_OK ? what : byok_json_result_text(res));
	return an_set(a, BYOK_KMS_BAD_RESPONSE, "BAD_RESPONSE", text);
}

/*
 * A string field of a successful answer ("Plaintext", "data.ciphertext"),
 * at most max_len bytes: BYOK_KMS_OK with pick->values[0] set (the caller
 * wipes the pick), or BAD_RESPONSE.
 */
ByokKmsStatus
byok_answer_string(const char *body, size_t len, const char *path, size_t max_len,
				   ByokJsonPick *pick, ByokAnswer *a)
{
	char		what[96];

	pick->npaths = 1;
	pick->paths[0] = path;
	if (!byok_json_pick(body, len, pick))
		return an_bad(a, "", pick->result);
	if (pick->kinds[0] != BYOK_JSON_STRING || pick->lens[0] == 0 || pick->lens[0] > max_len)
	{
		byok_json_pick_wipe(pick);
		snprintf(what, sizeof(what), "without a string %.60s of 1 to %zu bytes", path, max_len);
		return an_bad(a, what, BYOK_JSON_OK);
	}
	return BYOK_KMS_OK;
}

/* The class of an HTTP failure whose body is not the provider's own answer. */
static ByokKmsStatus
an_not_provider(long http_status, const char *provider, ByokAnswer *a)
{
	char		code[32];
	char		text[BYOK_ANSWER_TEXT_LEN];
	ByokKmsStatus st = http_status == 429 ? BYOK_KMS_THROTTLED : BYOK_KMS_UNAVAILABLE;

	snprintf(code, sizeof(code), "HTTP_%ld", http_status);
	snprintf(text, sizeof(text),
			 "HTTP %ld with an answer that is not %s's JSON error (a proxy or another service answered).",
			 http_status, provider);
	return an_set(a, st, code, text);
}

/* ---- AWS KMS ---- */

/*
 * A failed AWS KMS call (HTTP status other than 200): its class from the
 * JSON error's __type (the part after '#').
 */
ByokKmsStatus
byok_aws_read_error(long http_status, const char *body, size_t len, ByokAnswer *a)
{
	ByokJsonPick pick = {.npaths = 3, .paths = {"__type", "message", "Message"}};
	const char *type;
	const char *msg;
	ByokKmsStatus st;
	static const struct
	{
		const char *type;
		ByokKmsStatus st;
	}			types[] = {
		{"ThrottlingException", BYOK_KMS_THROTTLED},
		{"LimitExceededException", BYOK_KMS_THROTTLED},
		{"KeyUnavailableException", BYOK_KMS_UNAVAILABLE},
		{"DependencyTimeoutException", BYOK_KMS_UNAVAILABLE},
		{"KMSInternalException", BYOK_KMS_UNAVAILABLE},
		{"ServiceUnavailableException", BYOK_KMS_UNAVAILABLE},
		{"DisabledException", BYOK_KMS_DISABLED},
		{"KMSInvalidStateException", BYOK_KMS_DISABLED},
		{"NotFoundException", BYOK_KMS_DESTROYED},
		{"AccessDeniedException", BYOK_KMS_PERMISSION},
		{"InvalidSignatureException", BYOK_KMS_PERMISSION},
		{"UnrecognizedClientException", BYOK_KMS_PERMISSION},
		{"IncompleteSignature", BYOK_KMS_PERMISSION},
		{"IncompleteSignatureException", BYOK_KMS_PERMISSION},
		{"ExpiredTokenException", BYOK_KMS_PERMISSION},
		{"MissingAuthenticationTokenException", BYOK_KMS_PERMISSION},
	};

	if (!byok_json_pick(body, len, &pick) && pick.result != BYOK_JSON_SYNTAX)
		return an_bad(a, "", pick.result);	/* JSON, but beyond the reader's bounds */
	if (pick.result != BYOK_JSON_OK || pick.kinds[0] != BYOK_JSON_STRING)
	{
		byok_json_pick_wipe(&pick);
		return an_not_provider(http_status, "AWS KMS", a);
	}
	/* AWS JSON 1.1: cut at the first ':', then take what follows the first '#' */
	{
		char	   *t = (char *) pick.values[0];
		char	   *colon = strchr(t, ':');

		if (colon)
			*colon = '\0';
		type = strchr(t, '#');
		type = type ? type + 1 : t;
	}
	msg = pick.kinds[1] == BYOK_JSON_STRING ? pick.values[1] :
		pick.kinds[2] == BYOK_JSON_STRING ? pick.values[2] : "";
	if (http_status == 429)
		st = BYOK_KMS_THROTTLED;
	else if (http_status >= 500)
		st = BYOK_KMS_UNAVAILABLE;
	else
	{
		st = (http_status == 401 || http_status == 403) ? BYOK_KMS_PERMISSION : BYOK_KMS_BAD_RESPONSE;
		for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
			if (strcmp(type, types[i].type) == 0)
				st = types[i].st;
	}
	an_set(a, st, type[0] ? type : "UNNAMED_ERROR", msg[0] ? msg : "The request was refused.");
	byok_json_pick_wipe(&pick);
	return st;
}

/* DescribeKey's answer: KeyMetadata.KeyState "Enabled" is enabled, any other state disabled. */
ByokKmsStatus
byok_aws_read_state(const char *body, size_t len, ByokKeyState *state, ByokAnswer *a)
{
	ByokJsonPick pick = {.npaths = 1, .paths = {"KeyMetadata.KeyState"}};

	if (!byok_json_pick(body, len, &pick))
		return an_bad(a, "", pick.result);
	if (pick.kinds[0] != BYOK_JSON_STRING)
	{
		byok_json_pick_wipe(&pick);
		return an_bad(a, "without a string KeyMetadata.KeyState", BYOK_JSON_OK);
	}
	*state = strcmp(pick.values[0], "Enabled") == 0 ? BYOK_KEY_ENABLED : BYOK_KEY_DISABLED;
	byok_json_pick_wipe(&pick);
	return BYOK_KMS_OK;
}

/* ---- Vault Transit ---- */

/*
 * A failed Vault call (HTTP status other than 200 or 204).  Vault's errors
 * come in the envelope {"errors": ["text", ...]}; without it the answer is
 * not Vault's.
 */
ByokKmsStatus
byok_vault_read_error(long http_status, const char *body, size_t len, ByokAnswer *a)
{
	ByokJsonPick pick = {.npaths = 2, .paths = {"errors", "errors.0"}};
	char		code[32];
	const char *msg;
	ByokKmsStatus st;

	if (!byok_json_pick(body, len, &pick) && pick.result != BYOK_JSON_SYNTAX)
		return an_bad(a, "", pick.result);	/* JSON, but beyond the reader's bounds */
	if (pick.result != BYOK_JSON_OK || pick.kinds[0] != BYOK_JSON_ARRAY)
	{
		byok_json_pick_wipe(&pick);
		return an_not_provider(http_status, "Vault", a);
	}
	msg = pick.kinds[1] == BYOK_JSON_STRING ? pick.values[1] : "";
	if (http_status == 429)
		st = BYOK_KMS_THROTTLED;
	else if (http_status >= 500)
		st = BYOK_KMS_UNAVAILABLE;
	else if (http_status == 401 || http_status == 403)
		st = BYOK_KMS_PERMISSION;
	else if (strstr(msg, "no handler for route") != NULL)
		st = BYOK_KMS_CONFIG;	/* a wrong mount or address, not a missing key */
	else if (http_status == 404 || strstr(msg, "key not found") != NULL)
		st = BYOK_KMS_DESTROYED;
	else if (strstr(msg, "disallowed by policy") != NULL)
		st = BYOK_KMS_DISABLED;
	else
		st = BYOK_KMS_BAD_RESPONSE;
	snprintf(code, sizeof(code), "HTTP_%ld", http_status);
	an_set(a, st, code, msg[0] ? msg : "The request was refused.");
	byok_json_pick_wipe(&pick);
	return st;
}

/*
 * GET keys/<name>: disabled for byok when data.min_decryption_version (an
 * integer of at most 9 digits) is above version_hint, the version byok's
 * wrapped keys need (0: not known, then enabled).
 */
ByokKmsStatus
byok_vault_read_state(const char *body, size_t len, int32_t version_hint, ByokKeyState *state,
					  ByokAnswer *a)
{
	ByokJsonPick pick = {.npaths = 1, .paths = {"data.min_decryption_version"}};
	long		v = 0;

	if (!byok_json_pick(body, len, &pick))
		return an_bad(a, "", pick.result);
	if (pick.kinds[0] != BYOK_JSON_NUMBER || pick.lens[0] > 9 ||
		strspn(pick.values[0], "0123456789") != pick.lens[0])
	{
		byok_json_pick_wipe(&pick);
		return an_bad(a, "without an integer data.min_decryption_version of at most 9 digits", BYOK_JSON_OK);
	}
	for (const char *p = pick.values[0]; *p; p++)
		v = v * 10 + (*p - '0');
	byok_json_pick_wipe(&pick);
	*state = (version_hint > 0 && v > version_hint) ? BYOK_KEY_DISABLED : BYOK_KEY_ENABLED;
	return BYOK_KMS_OK;
}
