/*-------------------------------------------------------------------------
 *
 * providers/answers.h
 *		What an AWS KMS or Vault Transit answer means: the standalone
 *		readers of the HTTP providers' answers.
 *
 * Standard C only (with providers/json.c), so the code the extension runs
 * is fuzzed as it is (test/fuzz/aws_answer_fuzz.c, vault_answer_fuzz.c).
 * Every reader returns a class and fills a ByokAnswer whose code and text
 * are printable ASCII and bounded, whatever the answer held.
 *
 * Locking: none.
 * Key lifetime: a picked value (a base64 tenant key) lives in the caller's
 * ByokJsonPick, which the caller wipes (byok_json_pick_wipe).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_PROVIDERS_ANSWERS_H
#define BYOK_PROVIDERS_ANSWERS_H

#include <stddef.h>
#include <stdint.h>

#include "providers/json.h"
#include "providers/kms_status.h"

#define BYOK_ANSWER_CODE_LEN	64
#define BYOK_ANSWER_TEXT_LEN	200

/* the meaning of a failed answer: class, provider's code, provider's text */
typedef struct ByokAnswer
{
	ByokKmsStatus status;
	char		code[BYOK_ANSWER_CODE_LEN];	/* sanitised, e.g. "NotFoundException" */
	char		text[BYOK_ANSWER_TEXT_LEN];	/* sanitised */
} ByokAnswer;

extern void byok_text_sanitise(const char *in, size_t inlen, char *out, size_t outlen);

extern ByokKmsStatus byok_answer_string(const char *body, size_t len, const char *path,
										size_t max_len, ByokJsonPick *pick, ByokAnswer *a);

extern ByokKmsStatus byok_aws_read_error(long http_status, const char *body, size_t len,
										 ByokAnswer *a);
extern ByokKmsStatus byok_aws_read_state(const char *body, size_t len, ByokKeyState *state,
										 ByokAnswer *a);

extern ByokKmsStatus byok_vault_read_error(long http_status, const char *body, size_t len,
										   ByokAnswer *a);
extern ByokKmsStatus byok_vault_read_state(const char *body, size_t len, int32_t version_hint,
										   ByokKeyState *state, ByokAnswer *a);

#endif							/* BYOK_PROVIDERS_ANSWERS_H */
