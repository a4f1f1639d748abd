/*-------------------------------------------------------------------------
 *
 * providers/vault.c
 *		The "vault-transit" key provider: HashiCorp Vault's Transit engine.
 *
 * Operations: POST <byok.vault_address>/v1/<byok.vault_mount>/encrypt/<key>
 * (wrap), .../decrypt/<key> (unwrap), GET .../keys/<key> (state).  The
 * token comes from byok.vault_token_file (first line; a file the server's
 * OS user alone may read) and travels in X-Vault-Token; byok.vault_namespace,
 * when set, in X-Vault-Namespace.  key_ref is the Transit key name.  Every
 * encrypt and decrypt carries associated_data binding the tenant and the TK
 * version (AEAD additional data), so a wrapped key moved to another tenant
 * does not decrypt.
 *
 * Transit keys cannot be disabled as such; a customer cuts byok off by
 * raising min_decryption_version above the version that wrapped byok's
 * tenant key (-> DISABLED: the poller compares it with the version recorded
 * from the wrapped key, see wrapped_version), by revoking the token's policy
 * (HTTP 403 -> permission), or by deleting the key (404 -> DESTROYED).
 * 429 -> throttled, 5xx (sealed, standby) -> unavailable, both retried.
 *
 * Wrapped form: a format byte (1) followed by Vault's "vault:vN:..." text.
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

#define VAULT_WRAP_FORMAT 1

/*
 * N of "N:..." (the version in "vault:vN:..."): 1 to 9 digits followed by
 * ':', else -1.
 */
static int32
vt_version(const char *s)
{
	int32		v = 0;
	int			n = 0;

	while (s[n] >= '0' && s[n] <= '9' && n < 9)
		v = v * 10 + (s[n++] - '0');
	return (n > 0 && s[n] == ':') ? v : -1;
}

static ByokKmsStatus
vt_check_key_ref(const char *key_ref, ByokKmsError *err)
{
	/* "." and ".." would name another route once curl normalises the path */
	if (key_ref[0] == '\0' || strcmp(key_ref, ".") == 0 || strcmp(key_ref, "..") == 0)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_REF",
						   "A Vault Transit key name may not be empty, \".\" or \"..\".");
		return err->status;
	}
	for (const char *p = key_ref; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.'))
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_REF",
							   "A Vault Transit key name may contain only letters, digits, \"_\", \"-\" and \".\".");
			return err->status;
		}
	return BYOK_KMS_OK;
}

/* Decide what an answer means (providers/answers.c reads its JSON envelope). */
static ByokKmsStatus
vt_classify(ByokHttpCall *call, ByokKmsError *err)
{
	ByokAnswer	a;

	if (call->status == 200 || call->status == 204)
		return BYOK_KMS_OK;
	byok_vault_read_error(call->status, call->response.data, call->response.len, &a);
	byok_kms_set_error(err, a.status, a.code, "%s", a.text);
	return a.status;
}

/* Prepare a call to 'path' under the Transit mount; false (err set) on bad set-up. */
static bool
vt_prepare(ByokHttpCall *call, const char *path, const char *key_ref, bool post,
		   ByokKmsError *err)
{
	StringInfoData tok;
	char	   *nl;
	char		hdr[512];

	byok_http_call_init(call, "vault-transit");
	if (byok_vault_address == NULL || byok_vault_address[0] == '\0')
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_ADDRESS", "byok.vault_address is not set.");
		return false;
	}
	{
		int			alen = strlen(byok_vault_address);

		while (alen > 0 && byok_vault_address[alen - 1] == '/')
			alen--;
		if (snprintf(call->url, sizeof(call->url), "%.*s/v1/%s/%s/%s", alen, byok_vault_address,
					 byok_vault_mount, path, key_ref) >= (int) sizeof(call->url))
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "URL_TOO_LONG",
							   "The Vault URL of this key is longer than %d bytes.",
							   (int) sizeof(call->url) - 1);
			return false;
		}
	}
	if (!byok_http_url_allowed(call->url, err))
		return false;
	initStringInfo(&tok);
	if (!byok_read_secret_file(byok_vault_token_file, "byok.vault_token_file", &tok, err))
	{
		pfree(tok.data);
		return false;
	}
	if ((nl = strpbrk(tok.data, "\r\n")) != NULL)
		*nl = '\0';
	if (tok.data[0] == '\0' || strlen(tok.data) > 400)
	{
		explicit_bzero(tok.data, tok.maxlen);
		pfree(tok.data);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_TOKEN",
						   "byok.vault_token_file holds no usable token on its first line.");
		return false;
	}
	snprintf(hdr, sizeof(hdr), "X-Vault-Token: %s", tok.data);
	byok_http_header(call, hdr);
	explicit_bzero(hdr, sizeof(hdr));
	explicit_bzero(tok.data, tok.maxlen);
	pfree(tok.data);
	if (byok_vault_namespace && byok_vault_namespace[0])
	{
		snprintf(hdr, sizeof(hdr), "X-Vault-Namespace: %s", byok_vault_namespace);
		byok_http_header(call, hdr);
	}
	byok_http_header(call, "Content-Type: application/json");
	byok_http_header(call, "Expect:");
	call->post = post;
	call->classify = vt_classify;
	return true;
}

static char *
vt_aad(const ByokKmsContext *ctx)
{
	char	   *aad = psprintf("byok:%s:%d", ctx->tenant, ctx->tk_version);
	char	   *b64 = byok_b64_encode((const uint8 *) aad, strlen(aad));

	pfree(aad);
	return b64;
}

static ByokKmsStatus
vt_wrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *plain, int plain_len,
		uint8 *out, int *out_len, ByokKmsError *err)
{
	ByokHttpCall call;
	char	   *b64;
	ByokKmsStatus st;
	ByokJsonPick pick = {.npaths = 1, .paths = {"data.ciphertext"}};

	if (vt_check_key_ref(key_ref, err) != BYOK_KMS_OK)
		return err->status;
	if (!vt_prepare(&call, "encrypt", key_ref, true, err))
	{
		byok_http_call_free(&call);
		return err->status;
	}
	b64 = byok_b64_encode(plain, plain_len);
	appendStringInfo(&call.body, "{\"plaintext\":\"%s\",\"associated_data\":\"%s\"}", b64, vt_aad(ctx));
	explicit_bzero(b64, strlen(b64));

	st = byok_http_run_one(&call, err);
	if (st == BYOK_KMS_OK)
	{
		const char *ct = NULL;
		ByokAnswer	a;

		if (byok_answer_string(call.response.data, call.response.len, "data.ciphertext",
							   BYOK_MAX_WRAPPED - 1, &pick, &a) != BYOK_KMS_OK)
			st = (byok_kms_set_error(err, a.status, a.code, "encrypt: %s", a.text), err->status);
		else if (strncmp((ct = pick.values[0]), "vault:v", 7) != 0 || vt_version(ct + 7) <= 0)
			st = (byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_RESPONSE",
									 "encrypt returned no usable ciphertext."), err->status);
		else
		{
			out[0] = VAULT_WRAP_FORMAT;
			memcpy(out + 1, ct, strlen(ct));
			*out_len = strlen(ct) + 1;
		}
		byok_json_pick_wipe(&pick);
	}
	byok_http_call_free(&call);
	return st;
}

static ByokKmsStatus
vt_unwrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *wrapped, int wrapped_len,
		  uint8 *out, int *out_len, ByokKmsError *err)
{
	ByokHttpCall call;
	ByokKmsStatus st;
	ByokJsonPick pick = {.npaths = 1, .paths = {"data.plaintext"}};
	char	   *ct;

	if (wrapped_len < 9 || wrapped[0] != VAULT_WRAP_FORMAT)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_WRAPPED_KEY",
						   "The wrapped key is not in the vault-transit provider's format.");
		return err->status;
	}
	if (vt_check_key_ref(key_ref, err) != BYOK_KMS_OK)
		return err->status;
	if (!vt_prepare(&call, "decrypt", key_ref, true, err))
	{
		byok_http_call_free(&call);
		return err->status;
	}
	ct = pnstrdup((const char *) wrapped + 1, wrapped_len - 1);
	appendStringInfoString(&call.body, "{\"ciphertext\":");
	byok_json_escape(&call.body, ct);
	appendStringInfo(&call.body, ",\"associated_data\":\"%s\"}", vt_aad(ctx));

	st = byok_http_run_one(&call, err);
	if (st == BYOK_KMS_OK)
	{
		int			n = -1;
		ByokAnswer	a;

		if (byok_answer_string(call.response.data, call.response.len, "data.plaintext",
							   2 * BYOK_MAX_WRAPPED, &pick, &a) != BYOK_KMS_OK)
			st = (byok_kms_set_error(err, a.status, a.code, "decrypt: %s", a.text), err->status);
		else if ((n = byok_b64_decode(pick.values[0], out, BYOK_MAX_WRAPPED)) <= 0)
			st = (byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_RESPONSE",
									 "decrypt returned no usable plaintext."), err->status);
		else
			*out_len = n;
		byok_json_pick_wipe(&pick);
	}
	byok_http_call_free(&call);
	return st;
}

/* Disabled for byok when min_decryption_version is above the version byok's TKs need. */
static ByokKmsStatus
vt_state_read(const char *body, size_t len, int32 version_hint, ByokKeyState *state, ByokAnswer *a)
{
	return byok_vault_read_state(body, len, version_hint, state, a);
}

static bool
vt_state_prepare(ByokHttpCall *call, ByokKmsStateQuery *q)
{
	return vt_check_key_ref(q->key_ref, &q->err) == BYOK_KMS_OK &&
		vt_prepare(call, "keys", q->key_ref, false, &q->err);
}

static const ByokHttpStateQuestion vt_state_question = {
	.prepare = vt_state_prepare,
	.read = vt_state_read,
};

static void
vt_key_state_many(ByokKmsStateQuery *queries, int n)
{
	byok_http_key_state_many(queries, n, &vt_state_question);
}

static ByokKmsStatus
vt_key_state(const char *key_ref, int32 version_hint, ByokKeyState *state, ByokKmsError *err)
{
	return byok_http_key_state_one(key_ref, version_hint, state, err, &vt_state_question);
}

/* The Transit key version a wrapped key needs: N of "vault:vN:". */
static int32
vt_wrapped_version(const uint8 *wrapped, int len)
{
	char		head[16];

	if (len > 8 && wrapped[0] == VAULT_WRAP_FORMAT &&
		memcmp(wrapped + 1, "vault:v", 7) == 0)
	{
		int			n = Min(len - 8, (int) sizeof(head) - 1);

		memcpy(head, wrapped + 8, n);
		head[n] = '\0';
		return Max(vt_version(head), 0);
	}
	return 0;
}

static const ByokKmsRoutine vault_routine = {
	.name = "vault-transit",
	.check_key_ref = vt_check_key_ref,
	.wrap = vt_wrap,
	.unwrap = vt_unwrap,
	.key_state = vt_key_state,
	.key_state_many = vt_key_state_many,
	.wrapped_version = vt_wrapped_version,
};

void
byok_kms_vault_install(void)
{
	byok_kms_register(&vault_routine);
}
