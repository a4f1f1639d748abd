/*-------------------------------------------------------------------------
 *
 * providers/http.h
 *		The HTTP client shared by the network key providers, and a small
 *		JSON reader.
 *
 * Locking: none; callers hold no LWLock while calling in here.
 * Key lifetime: the buffers of a ByokHttpCall and a ByokJsonPick may hold
 * key material or credentials; byok_http_call_free() and
 * byok_json_pick_wipe() wipe them (see http.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KMS_HTTP_H
#define BYOK_KMS_HTTP_H

#include "lib/stringinfo.h"

#include "providers/answers.h"
#include "providers/json.h"
#include "providers/kms.h"

#define BYOK_HTTP_MAX_RESPONSE	(1024 * 1024)	/* larger answers are refused */
#define BYOK_HTTP_BODY_CAP		8192	/* room for every request body */

typedef struct ByokHttpCall ByokHttpCall;

/*
 * Decide what an HTTP answer means: BYOK_KMS_OK, or a failure class with
 * 'err' filled.  THROTTLED and UNAVAILABLE answers are retried (backoff with
 * full jitter, honouring Retry-After) while time remains.
 */
typedef ByokKmsStatus (*ByokHttpClassify) (ByokHttpCall *call, ByokKmsError *err);

struct ByokHttpCall
{
	/* request, set by the provider */
	char		url[1024];
	bool		post;			/* POST with body, else GET */
	StringInfoData body;		/* request body (may hold secrets: wiped) */
	struct curl_slist *headers;
	ByokHttpClassify classify;
	void	   *arg;			/* provider's own */

	/* answer */
	long		status;			/* HTTP status, 0 if none */
	StringInfoData response;	/* body (may hold secrets: wiped) */
	ByokKmsStatus result;
	TimestampTz done_at;		/* when the result became final */
	ByokKmsError err;
	int			attempts;

	/* private to http.c */
	void	   *easy;
	int			state;
	bool		too_big;
	int64		retry_at;
	int64		retry_after_us;
	char		errbuf[256];	/* curl's own error detail (CURL_ERROR_SIZE) */
	bool		headers_lost;	/* a header could not be added (out of memory) */
};

extern void byok_http_call_init(ByokHttpCall *call, const char *provider);
extern void byok_http_call_free(ByokHttpCall *call);
extern void byok_http_header(ByokHttpCall *call, const char *header);
extern void byok_http_perform(ByokHttpCall **calls, int n, int timeout_ms);
extern bool byok_http_url_allowed(const char *url, ByokKmsError *err);
extern ByokKmsStatus byok_http_run_one(ByokHttpCall *call, ByokKmsError *err);

/*
 * A provider's key-state question: how to make the HTTP call, and how to
 * read a successful answer (providers/answers.c: the state, or a failure
 * class with 'a' filled).  A BYOK_KMS_DESTROYED answer of the classify
 * callback means the key is destroyed.
 */
typedef struct ByokHttpStateQuestion
{
	bool		(*prepare) (ByokHttpCall *call, ByokKmsStateQuery *query);
	ByokKmsStatus (*read) (const char *body, size_t len, int32 version_hint,
						   ByokKeyState *state, ByokAnswer *a);
	/* NULL, or false when "not found" for this key_ref is only a lockout (disabled) */
	bool		(*not_found_final) (const char *key_ref);
} ByokHttpStateQuestion;

extern void byok_http_key_state_many(ByokKmsStateQuery *queries, int n,
									 const ByokHttpStateQuestion *question);
extern ByokKmsStatus byok_http_key_state_one(const char *key_ref, int32 version_hint,
											 ByokKeyState *state, ByokKmsError *err,
											 const ByokHttpStateQuestion *question);

extern char *byok_b64_encode(const uint8 *data, int len);
extern int	byok_b64_decode(const char *text, uint8 *out, int outlen);
extern void byok_json_escape(StringInfo buf, const char *s);
extern bool byok_read_secret_file(const char *path, const char *what, StringInfo out,
								  ByokKmsError *err);

#endif							/* BYOK_KMS_HTTP_H */
