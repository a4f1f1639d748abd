/*-------------------------------------------------------------------------
 *
 * providers/aws.c
 *		The "aws-kms" key provider: AWS KMS's JSON API over HTTPS.
 *
 * Operations: TrentService.Encrypt (wrap), Decrypt (unwrap) and DescribeKey
 * (state), each a POST of application/x-amz-json-1.1 to byok.aws_endpoint
 * (default https://kms.<byok.aws_region>.amazonaws.com/), signed with
 * Signature Version 4 by byok itself (providers/sigv4.c: the secret never
 * enters libcurl).  key_ref is a key id,
 * key ARN, alias/<name> or alias ARN.  Every Encrypt and Decrypt carries an
 * encryption context binding the tenant and the TK version, so a wrapped
 * key moved to another tenant does not decrypt.
 *
 * Credentials come from byok.aws_credentials_file, in the AWS
 * shared-credentials format (profile byok.aws_profile; aws_access_key_id,
 * aws_secret_access_key, optional aws_session_token), a file the server's
 * OS user alone may read.  They are read for each call, held in palloc'd
 * buffers wiped right after, and never appear in a message.
 *
 * States: Enabled -> ENABLED; Disabled, PendingDeletion, PendingImport,
 * Unavailable and other non-usable states -> DISABLED; NotFoundException ->
 * DESTROYED.  Errors: ThrottlingException / HTTP 429 -> throttled (retried);
 * 5xx, timeouts -> unavailable (retried within byok.kms_timeout);
 * AccessDenied, InvalidSignature, UnrecognizedClient, expired tokens ->
 * permission; InvalidCiphertext -> bad response.
 *
 * Wrapped form: a format byte (1) followed by the CiphertextBlob.
 *
 * Locking: none; callers hold no LWLock while calling in here.
 *
 * Key lifetime: a TK to wrap is base64-encoded into the request body; the
 * base64 copy is wiped at once and the body with the call
 * (byok_http_call_free).  An unwrapped TK is decoded from the answer
 * straight into the caller's buffer; the picked JSON values and the answer
 * are wiped (byok_json_pick_wipe, byok_http_call_free).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "utils/timestamp.h"

#include "guc.h"
#include "providers/http.h"
#include "providers/sigv4.h"

#define AWS_WRAP_FORMAT 1

typedef struct AwsCreds
{
	StringInfoData file;		/* the whole file: wiped */
	const char *secret;			/* into 'file' */
	char	   *session_token;	/* or NULL: wiped */
	char		akid[64];		/* the access key id (not secret) */
} AwsCreds;

static void
aws_creds_free(AwsCreds *c)
{
	if (c->file.data)
	{
		explicit_bzero(c->file.data, c->file.maxlen);
		pfree(c->file.data);
		c->file.data = NULL;
	}
	if (c->session_token)
	{
		explicit_bzero(c->session_token, strlen(c->session_token));
		pfree(c->session_token);
		c->session_token = NULL;
	}
	c->secret = NULL;
}

/* Trim spaces in place; returns the start. */
static char *
aws_trim(char *s)
{
	char	   *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		*--end = '\0';
	return s;
}

/* Is 's' 1 to 'max' bytes of printable ASCII other than space? */
static bool
aws_token_ok(const char *s, size_t max)
{
	size_t		n = strlen(s);

	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] >= 0x7f)
			return false;
	return true;
}

/*
 * Read the profile's credentials.  On failure 'err' says why (naming the
 * file and the missing setting, never a value).
 */
static bool
aws_load_creds(AwsCreds *c, ByokKmsError *err)
{
	char	   *line;
	char	   *save = NULL;
	bool		in_profile = false;
	char	   *akid = NULL;
	char	   *secret = NULL;
	char		want[128];

	memset(c, 0, sizeof(*c));
	initStringInfo(&c->file);
	if (!byok_read_secret_file(byok_aws_credentials_file, "byok.aws_credentials_file",
							   &c->file, err))
		return false;
	snprintf(want, sizeof(want), "[%s]", byok_aws_profile ? byok_aws_profile : "default");
	for (line = strtok_r(c->file.data, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char	   *l = aws_trim(line);
		char	   *eq;

		if (l[0] == '[')
		{
			in_profile = strcmp(l, want) == 0;
			continue;
		}
		if (!in_profile || (eq = strchr(l, '=')) == NULL)
			continue;
		*eq = '\0';
		l = aws_trim(l);
		if (strcmp(l, "aws_access_key_id") == 0)
			akid = aws_trim(eq + 1);
		else if (strcmp(l, "aws_secret_access_key") == 0)
			secret = aws_trim(eq + 1);
		else if (strcmp(l, "aws_session_token") == 0)
		{
			/* a repeated line: the last one counts, the earlier copy is wiped */
			if (c->session_token)
			{
				explicit_bzero(c->session_token, strlen(c->session_token));
				pfree(c->session_token);
			}
			c->session_token = pstrdup(aws_trim(eq + 1));
		}
	}
	if (akid == NULL || secret == NULL || akid[0] == '\0' || secret[0] == '\0')
	{
		aws_creds_free(c);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_CREDENTIALS",
						   "Profile %s of byok.aws_credentials_file lacks aws_access_key_id or aws_secret_access_key.",
						   want);
		return false;
	}
	/* they travel in a header and a signature: no control character, no space */
	if (!aws_token_ok(akid, 63) || !aws_token_ok(secret, 512) ||
		(c->session_token && !aws_token_ok(c->session_token, 3000)))
	{
		aws_creds_free(c);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CREDENTIALS",
						   "Profile %s of byok.aws_credentials_file holds a key id, secret or session token that is too long or has characters other than printable ASCII.",
						   want);
		return false;
	}
	strlcpy(c->akid, akid, sizeof(c->akid));
	c->secret = secret;
	return true;
}

/* The endpoint URL into buf; false if it does not fit. */
static bool
aws_endpoint(char *buf, size_t len)
{
	if (byok_aws_endpoint && byok_aws_endpoint[0])
		return strlcpy(buf, byok_aws_endpoint, len) < len;
	return snprintf(buf, len, "https://kms.%s.amazonaws.com/", byok_aws_region) < (int) len;
}

/* Decide what an answer means (providers/answers.c reads its JSON). */
static ByokKmsStatus
aws_classify(ByokHttpCall *call, ByokKmsError *err)
{
	ByokAnswer	a;

	if (call->status == 200)
		return BYOK_KMS_OK;
	byok_aws_read_error(call->status, call->response.data, call->response.len, &a);
	byok_kms_set_error(err, a.status, a.code, "%s", a.text);
	return a.status;
}

/*
 * Prepare a call of operation 'op' (a string constant); false (err set)
 * when the set-up is wrong.  The caller builds the body, then signs the
 * call (aws_sign).
 */
static bool
aws_prepare(ByokHttpCall *call, const char *op, ByokKmsError *err)
{
	byok_http_call_init(call, "aws-kms");
	if (!aws_endpoint(call->url, sizeof(call->url)))
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "URL_TOO_LONG",
						   "The AWS KMS endpoint URL is longer than %d bytes.", (int) sizeof(call->url) - 1);
		return false;
	}
	if (!byok_http_url_allowed(call->url, err))
		return false;
	call->post = true;
	call->classify = aws_classify;
	call->arg = (void *) op;
	byok_http_header(call, "Expect:");
	return true;
}

/*
 * Sign a prepared call whose body is complete, with the credentials read
 * now (and wiped at once); false (err set) when they are missing or bad.
 */
static bool
aws_sign(ByokHttpCall *call, ByokKmsError *err)
{
	AwsCreds	creds;
	char		target[64];
	ByokSigV4Request rq;
	bool		ok;

	if (!aws_load_creds(&creds, err))
		return false;
	snprintf(target, sizeof(target), "TrentService.%s", (const char *) call->arg);
	memset(&rq, 0, sizeof(rq));
	rq.url = call->url;
	rq.region = byok_aws_region;
	rq.service = "kms";
	rq.target = target;
	rq.content_type = "application/x-amz-json-1.1";
	rq.body = call->body.data;
	rq.body_len = call->body.len;
	rq.akid = creds.akid;
	rq.secret = creds.secret;
	rq.token = creds.session_token;
	ok = byok_sigv4_sign(&rq, &call->headers, err);
	aws_creds_free(&creds);
	return ok;
}

static void
aws_context_json(StringInfo body, const ByokKmsContext *ctx)
{
	char		ver[16];

	snprintf(ver, sizeof(ver), "%d", ctx->tk_version);
	appendStringInfoString(body, "\"EncryptionContext\":{\"byok:tenant\":");
	byok_json_escape(body, ctx->tenant);
	appendStringInfo(body, ",\"byok:tk_version\":\"%s\"}", ver);
}

static ByokKmsStatus
aws_check_key_ref(const char *key_ref, ByokKmsError *err)
{
	for (const char *p = key_ref; *p; p++)
		if (*p <= ' ' || *p >= 0x7f || *p == '"' || *p == '\\')
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_REF",
							   "An AWS KMS key reference is a key id, key ARN or alias without spaces or quotes.");
			return err->status;
		}
	/*
	 * An ARN of another region would be answered NotFoundException by this
	 * region's endpoint: a configuration error, never a destroyed key.
	 */
	if (strncmp(key_ref, "arn:", 4) == 0)
	{
		const char *part = strchr(key_ref + 4, ':');	/* after the partition */
		const char *region = part && strncmp(part, ":kms:", 5) == 0 ? part + 5 : NULL;
		const char *end = region ? strchr(region, ':') : NULL;

		if (end == NULL || byok_aws_region == NULL ||
			strlen(byok_aws_region) != (size_t) (end - region) ||
			strncmp(region, byok_aws_region, end - region) != 0)
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "WRONG_REGION",
							   "The key ARN does not name a KMS key of region %s (byok.aws_region).",
							   byok_aws_region ? byok_aws_region : "");
			return err->status;
		}
	}
	return BYOK_KMS_OK;
}

/*
 * AWS answers NotFoundException for a missing alias too, while the key it
 * named may live on (renamed, deleted alias): for an alias that is a
 * lockout that ends when the alias names a key again, never a final
 * destruction.
 */
static bool
aws_is_alias(const char *key_ref)
{
	return strncmp(key_ref, "alias/", 6) == 0 ||
		(strncmp(key_ref, "arn:", 4) == 0 && strstr(key_ref, ":alias/") != NULL);
}

static ByokKmsStatus
aws_alias_not_final(const char *key_ref, ByokKmsStatus st, ByokKmsError *err)
{
	if (st == BYOK_KMS_DESTROYED && aws_is_alias(key_ref))
	{
		err->status = BYOK_KMS_DISABLED;
		snprintf(err->message, sizeof(err->message),
				 "The alias names no key (deleted or renamed): locked out until it names one again.");
		return BYOK_KMS_DISABLED;
	}
	return st;
}

static ByokKmsStatus
aws_wrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *plain, int plain_len,
		 uint8 *out, int *out_len, ByokKmsError *err)
{
	ByokHttpCall call;
	char	   *b64;
	ByokKmsStatus st;
	ByokJsonPick pick = {.npaths = 1, .paths = {"CiphertextBlob"}};

	if (aws_check_key_ref(key_ref, err) != BYOK_KMS_OK)
		return err->status;
	if (!aws_prepare(&call, "Encrypt", err))
	{
		byok_http_call_free(&call);
		return err->status;
	}
	b64 = byok_b64_encode(plain, plain_len);
	appendStringInfoString(&call.body, "{\"KeyId\":");
	byok_json_escape(&call.body, key_ref);
	appendStringInfo(&call.body, ",\"Plaintext\":\"%s\",", b64);
	explicit_bzero(b64, strlen(b64));
	aws_context_json(&call.body, ctx);
	appendStringInfoChar(&call.body, '}');
	if (!aws_sign(&call, err))
	{
		byok_http_call_free(&call);
		return err->status;
	}

	st = aws_alias_not_final(key_ref, byok_http_run_one(&call, err), err);
	if (st == BYOK_KMS_OK)
	{
		int			n = -1;
		ByokAnswer	a;

		if (byok_answer_string(call.response.data, call.response.len, "CiphertextBlob",
							   2 * BYOK_MAX_WRAPPED, &pick, &a) != BYOK_KMS_OK)
			st = (byok_kms_set_error(err, a.status, a.code, "Encrypt: %s", a.text), err->status);
		else if ((n = byok_b64_decode(pick.values[0], out + 1, BYOK_MAX_WRAPPED - 1)) <= 0)
			st = (byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_RESPONSE",
									 "Encrypt returned no usable CiphertextBlob."), err->status);
		else
		{
			out[0] = AWS_WRAP_FORMAT;
			*out_len = n + 1;
		}
		byok_json_pick_wipe(&pick);
	}
	byok_http_call_free(&call);
	return st;
}

static ByokKmsStatus
aws_unwrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *wrapped, int wrapped_len,
		   uint8 *out, int *out_len, ByokKmsError *err)
{
	ByokHttpCall call;
	char	   *b64;
	ByokKmsStatus st;
	ByokJsonPick pick = {.npaths = 1, .paths = {"Plaintext"}};

	if (wrapped_len < 2 || wrapped[0] != AWS_WRAP_FORMAT)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_WRAPPED_KEY",
						   "The wrapped key is not in the aws-kms provider's format.");
		return err->status;
	}
	if (aws_check_key_ref(key_ref, err) != BYOK_KMS_OK)
		return err->status;
	if (!aws_prepare(&call, "Decrypt", err))
	{
		byok_http_call_free(&call);
		return err->status;
	}
	b64 = byok_b64_encode(wrapped + 1, wrapped_len - 1);
	appendStringInfo(&call.body, "{\"CiphertextBlob\":\"%s\",\"KeyId\":", b64);
	byok_json_escape(&call.body, key_ref);
	appendStringInfoChar(&call.body, ',');
	aws_context_json(&call.body, ctx);
	appendStringInfoChar(&call.body, '}');
	if (!aws_sign(&call, err))
	{
		byok_http_call_free(&call);
		return err->status;
	}

	st = aws_alias_not_final(key_ref, byok_http_run_one(&call, err), err);
	if (st == BYOK_KMS_OK)
	{
		int			n = -1;
		ByokAnswer	a;

		if (byok_answer_string(call.response.data, call.response.len, "Plaintext",
							   2 * BYOK_MAX_WRAPPED, &pick, &a) != BYOK_KMS_OK)
			st = (byok_kms_set_error(err, a.status, a.code, "Decrypt: %s", a.text), err->status);
		else if ((n = byok_b64_decode(pick.values[0], out, BYOK_MAX_WRAPPED)) <= 0)
			st = (byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_RESPONSE",
									 "Decrypt returned no usable Plaintext."), err->status);
		else
			*out_len = n;
		byok_json_pick_wipe(&pick);
	}
	else if (st == BYOK_KMS_BAD_RESPONSE && strcmp(err->remote_code, "InvalidCiphertextException") == 0)
		snprintf(err->message, sizeof(err->message),
				 "The wrapped key does not decrypt under this key with this tenant's encryption context.");
	byok_http_call_free(&call);
	return st;
}

static ByokKmsStatus
aws_state_read(const char *body, size_t len, int32 version_hint, ByokKeyState *state, ByokAnswer *a)
{
	return byok_aws_read_state(body, len, state, a);
}

static bool
aws_state_prepare(ByokHttpCall *call, ByokKmsStateQuery *q)
{
	if (aws_check_key_ref(q->key_ref, &q->err) != BYOK_KMS_OK ||
		!aws_prepare(call, "DescribeKey", &q->err))
		return false;
	appendStringInfoString(&call->body, "{\"KeyId\":");
	byok_json_escape(&call->body, q->key_ref);
	appendStringInfoChar(&call->body, '}');
	return aws_sign(call, &q->err);
}

static bool
aws_not_found_final(const char *key_ref)
{
	return !aws_is_alias(key_ref);
}

static const ByokHttpStateQuestion aws_state_question = {
	.prepare = aws_state_prepare,
	.read = aws_state_read,
	.not_found_final = aws_not_found_final,
};

/* The poller's batch: every DescribeKey at once over the shared connections. */
static void
aws_key_state_many(ByokKmsStateQuery *queries, int n)
{
	byok_http_key_state_many(queries, n, &aws_state_question);
}

static ByokKmsStatus
aws_key_state(const char *key_ref, int32 version_hint, ByokKeyState *state, ByokKmsError *err)
{
	return byok_http_key_state_one(key_ref, version_hint, state, err, &aws_state_question);
}

static const ByokKmsRoutine aws_routine = {
	.name = "aws-kms",
	.check_key_ref = aws_check_key_ref,
	.wrap = aws_wrap,
	.unwrap = aws_unwrap,
	.key_state = aws_key_state,
	.key_state_many = aws_key_state_many,
};

void
byok_kms_aws_install(void)
{
	byok_kms_register(&aws_routine);
}
