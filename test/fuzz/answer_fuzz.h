/*
 * answer_fuzz.h -- what the answer fuzzers (aws_answer_fuzz.c,
 * vault_answer_fuzz.c) check on every input, whichever provider reads it.
 *
 * Input layout: byte 0 chooses the HTTP status, byte 1 the Vault version
 * hint, the rest is the answer's body.  Every check aborts (a finding).
 */
#ifndef BYOK_ANSWER_FUZZ_H
#define BYOK_ANSWER_FUZZ_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/answers.h"
#include "providers/json.h"

static ByokJsonPick af_pick;	/* large: keep off the stack */
static ByokJsonPick af_pick2;
static char af_buf[(1 << 20) + 64];

static const long af_statuses[] = {200, 204, 400, 401, 403, 404, 409, 429, 500, 503};

#define AF_ASSERT(c) do { if (!(c)) abort(); } while (0)

static long
af_status(const uint8_t *d, size_t n)
{
	return n > 0 ? af_statuses[d[0] % (sizeof(af_statuses) / sizeof(af_statuses[0]))] : 200;
}

/* the body: what follows the two bytes of status and hint */
static const char *
af_body(const uint8_t *d, size_t n, size_t *len)
{
	*len = n >= 2 ? n - 2 : 0;
	return (const char *) d + (n >= 2 ? 2 : n);
}

static void
af_check_text(const char *s, size_t cap)
{
	size_t		n = strnlen(s, cap);

	AF_ASSERT(n < cap);
	for (size_t i = 0; i < n; i++)
		AF_ASSERT(s[i] >= 0x20 && s[i] < 0x7f);
}

/* a failure class in range with a printable, bounded code and text */
static void
af_check_answer(ByokKmsStatus st, const ByokAnswer *a)
{
	AF_ASSERT(st >= BYOK_KMS_OK && st < BYOK_KMS_STATUS_COUNT);
	AF_ASSERT(a->status == st);
	af_check_text(a->code, sizeof(a->code));
	af_check_text(a->text, sizeof(a->text));
}

static int
af_store_zero(const ByokJsonPick *p)
{
	for (size_t i = 0; i < sizeof(p->store); i++)
		if (p->store[i] != 0)
			return 0;
	return 1;
}

/*
 * The reader on its own: values are NUL-terminated copies of the stated
 * length inside the store, a refusal leaves nothing, a valid text stays
 * valid inside an array (depth and length permitting), and a top-level
 * scalar reads back the same inside an object, through "k".
 */
static void
af_check_reader(const char *body, size_t len, const char *const *paths, int npaths)
{
	bool		ok;
	bool		ok2;

	memset(&af_pick, 0, sizeof(af_pick));
	af_pick.npaths = npaths;
	for (int i = 0; i < npaths; i++)
		af_pick.paths[i] = paths[i];
	ok = byok_json_pick(body, len, &af_pick);
	AF_ASSERT(ok == (af_pick.result == BYOK_JSON_OK));
	if (!ok)
		AF_ASSERT(af_store_zero(&af_pick));
	for (int i = 0; i < npaths; i++)
	{
		const char *v = af_pick.values[i];

		AF_ASSERT(af_pick.kinds[i] >= BYOK_JSON_ABSENT && af_pick.kinds[i] < BYOK_JSON_KIND_COUNT);
		if (v == NULL)
			continue;
		AF_ASSERT(ok);
		AF_ASSERT(v >= af_pick.store && v + af_pick.lens[i] < af_pick.store + sizeof(af_pick.store));
		AF_ASSERT(strlen(v) == af_pick.lens[i] && af_pick.lens[i] <= BYOK_JSON_MAX_VALUE);
	}
	if (len > (1 << 20))
		return;
	/* [ body ] */
	af_buf[0] = '[';
	memcpy(af_buf + 1, body, len);
	af_buf[len + 1] = ']';
	memset(&af_pick2, 0, sizeof(af_pick2));
	af_pick2.npaths = 1;
	af_pick2.paths[0] = "0";
	ok2 = byok_json_pick(af_buf, len + 2, &af_pick2);
	if (ok && af_pick2.result != BYOK_JSON_TOO_DEEP && af_pick2.result != BYOK_JSON_TOO_LONG)
		AF_ASSERT(ok2);
	/* {"k": body}: a top-level scalar is the value of "k" */
	memset(&af_pick, 0, sizeof(af_pick));
	af_pick.npaths = 1;
	af_pick.paths[0] = "";
	ok = byok_json_pick(body, len, &af_pick);
	memcpy(af_buf, "{\"k\":", 5);
	memcpy(af_buf + 5, body, len);
	af_buf[len + 5] = '}';
	memset(&af_pick2, 0, sizeof(af_pick2));
	af_pick2.npaths = 1;
	af_pick2.paths[0] = "k";
	ok2 = byok_json_pick(af_buf, len + 6, &af_pick2);
	if (ok && af_pick.values[0] != NULL)
	{
		AF_ASSERT(ok2 && af_pick2.values[0] != NULL);
		AF_ASSERT(af_pick.lens[0] == af_pick2.lens[0] &&
				  memcmp(af_pick.values[0], af_pick2.values[0], af_pick.lens[0]) == 0);
	}
	byok_json_pick_wipe(&af_pick);
	byok_json_pick_wipe(&af_pick2);
	AF_ASSERT(af_store_zero(&af_pick) && af_pick.values[0] == NULL);
}

/* byok_answer_string on one field: a string of 1..max bytes, or a refusal with nothing kept */
static void
af_check_string(const char *body, size_t len, const char *path, size_t max)
{
	ByokAnswer	a;
	ByokKmsStatus st;

	memset(&af_pick, 0, sizeof(af_pick));
	st = byok_answer_string(body, len, path, max, &af_pick, &a);
	if (st == BYOK_KMS_OK)
	{
		AF_ASSERT(af_pick.values[0] != NULL && af_pick.kinds[0] == BYOK_JSON_STRING);
		AF_ASSERT(af_pick.lens[0] >= 1 && af_pick.lens[0] <= max);
	}
	else
	{
		AF_ASSERT(st == BYOK_KMS_BAD_RESPONSE);
		af_check_answer(st, &a);
		AF_ASSERT(af_store_zero(&af_pick));
	}
	byok_json_pick_wipe(&af_pick);
}

#endif
