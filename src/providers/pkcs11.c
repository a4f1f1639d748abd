/*-------------------------------------------------------------------------
 *
 * providers/pkcs11.c
 *		The "pkcs11" key provider: CMKs are AES-256 secret keys on a PKCS#11
 *		token (an HSM, or SoftHSM2 for tests).
 *
 * This file holds the operations (key lookup, AES-GCM wrap and unwrap, key
 * state, the poller's one-scan key_state_many) and the provider routine.
 * The module, the logged-in session, retries and the helper thread that
 * bounds every call are pkcs11/session.c's: each operation here fills a
 * P11Job and runs its P11Op through p11_dispatch() (pkcs11/session.h).
 *
 * Set-up comes from three GUCs: byok.pkcs11_module (the PKCS#11 library,
 * an absolute path, loaded with dlopen), byok.pkcs11_token_label (the token,
 * found by its label because slot ids are not stable) and
 * byok.pkcs11_pin_file (a file holding the user PIN on its first line).
 * A key reference is the CKA_LABEL of a secret AES key on that token:
 *
 *   key found, CKA_ENCRYPT and CKA_DECRYPT true   -> ENABLED
 *   key found, either of them false               -> DISABLED
 *   no secret key with that label                 -> DESTROYED
 *
 * A token that cannot be found, or a module that cannot be loaded, makes
 * the provider unavailable: that is never a revocation.  Two secret keys
 * with the same label are a configuration error, never a guess.  Object
 * handles are never kept across calls: every call looks the key up by
 * label again, so a key disabled or destroyed by another process is seen
 * at once; a key found missing is confirmed on a re-initialised module
 * before it counts as DESTROYED (p11_run, session.c).  The poller's
 * key_state_many answers all its questions from one scan of the token's
 * secret keys: a SoftHSM lookup costs about 12 us per object on the
 * token, so asking key by key would cost O(N^2) per round.
 *
 * Wrapping is CKM_AES_GCM inside the token (C_Encrypt/C_Decrypt; the CMK
 * never leaves it) with a 12-byte IV from C_GenerateRandom, a 128-bit tag
 * and AAD binding the tenant name and TK version.  The wrapped form is a
 * format byte followed by IV, ciphertext and tag.  Headers disagree on
 * CK_GCM_PARAMS: the p11-kit (2.40) and 3.x ones have ulIvBits, some older
 * ones do not, and a module checks ulParameterLen against its own.  The
 * other layout is tried once when the first is refused with
 * CKR_ARGUMENTS_BAD or CKR_MECHANISM_PARAM_INVALID, and remembered.
 * SoftHSM 2.6.1 wants the layout with ulIvBits (48 bytes on LP64).  A bad
 * GCM tag is CKR_GENERAL_ERROR on SoftHSM (CKR_ENCRYPTED_DATA_INVALID per
 * the standard); both become UNWRAP_FAILED.
 *
 * Locking: none here.  Callers hold no LWLock while calling in.
 *
 * Key lifetime: the CMK never leaves the token.  A plaintext TK passes
 * through the caller's buffers and the job's (copied in before the call,
 * out after it), which p11_job_free() wipes; an abandoned call's job is
 * wiped by its thread.  The PIN is session.c's and never seen here.
 * Messages name the module, token and key labels and PKCS#11 return codes,
 * never a PIN or key byte.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "portability/instr_time.h"

#include "providers/pkcs11/session.h"

#define P11_WRAP_FORMAT		1

/* CK_GCM_PARAMS as headers without ulIvBits declare it */
typedef struct P11GcmParamsNoBits
{
	CK_BYTE_PTR pIv;
	CK_ULONG	ulIvLen;
	CK_BYTE_PTR pAAD;
	CK_ULONG	ulAADLen;
	CK_ULONG	ulTagBits;
} P11GcmParamsNoBits;


/*
 * Look up the secret key labelled call->key_ref; sets call->nfound (0, 1,
 * or 2 meaning "more than one") and *key when one is found.
 */
static CK_RV
p11_find_key(P11Call *call, CK_OBJECT_HANDLE *key)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_LABEL, (void *) call->key_ref, strlen(call->key_ref)},
	};
	CK_OBJECT_HANDLE found[2];
	CK_ULONG	n = 0;
	CK_RV		rv;

	call->nfound = 0;
	rv = p11.fn->C_FindObjectsInit(p11.session, tmpl, lengthof(tmpl));
	if (rv != CKR_OK)
	{
		call->failed = "C_FindObjectsInit";
		return rv;
	}
	rv = p11.fn->C_FindObjects(p11.session, found, lengthof(found), &n);
	(void) p11.fn->C_FindObjectsFinal(p11.session);
	if (rv != CKR_OK)
	{
		call->failed = "C_FindObjects";
		return rv;
	}
	call->nfound = (int) Min(n, 2);
	if (n >= 1)
		*key = found[0];
	return CKR_OK;
}

static CK_RV
p11_op_state(P11Call *call)
{
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_KEY_TYPE, &call->key_type, sizeof(call->key_type)},
		{CKA_ENCRYPT, &call->can_encrypt, sizeof(call->can_encrypt)},
		{CKA_DECRYPT, &call->can_decrypt, sizeof(call->can_decrypt)},
	};
	CK_RV		rv;

	if ((rv = p11_find_key(call, &key)) != CKR_OK || call->nfound != 1)
		return rv;
	rv = p11.fn->C_GetAttributeValue(p11.session, key, tmpl, lengthof(tmpl));
	if (rv == CKR_OBJECT_HANDLE_INVALID)
	{
		/* destroyed between the lookup and now */
		call->nfound = 0;
		return CKR_OK;
	}
	if (rv != CKR_OK)
		call->failed = "C_GetAttributeValue";
	return rv;
}

/*
 * C_EncryptInit / C_DecryptInit with CKM_AES_GCM, in the CK_GCM_PARAMS
 * layout the module accepts (see the file header).
 */
static CK_RV
p11_gcm_init(P11Call *call, CK_OBJECT_HANDLE key, bool encrypt, const uint8 *iv)
{
	CK_GCM_PARAMS params;
	P11GcmParamsNoBits params_nobits;
	CK_MECHANISM mech;
	CK_RV		rv = CKR_OK;

	params.pIv = (CK_BYTE_PTR) iv;
	params.ulIvLen = P11_IV_LEN;
	params.ulIvBits = P11_IV_LEN * 8;
	params.pAAD = (CK_BYTE_PTR) call->aad;
	params.ulAADLen = call->aad_len;
	params.ulTagBits = P11_TAG_LEN * 8;
	params_nobits.pIv = params.pIv;
	params_nobits.ulIvLen = params.ulIvLen;
	params_nobits.pAAD = params.pAAD;
	params_nobits.ulAADLen = params.ulAADLen;
	params_nobits.ulTagBits = params.ulTagBits;

	for (int attempt = 0; attempt < 2; attempt++)
	{
		bool		no_bits = p11.gcm_no_bits != (attempt == 1);

		mech.mechanism = CKM_AES_GCM;
		mech.pParameter = no_bits ? (void *) &params_nobits : (void *) &params;
		mech.ulParameterLen = no_bits ? sizeof(params_nobits) : sizeof(params);
		rv = encrypt ? p11.fn->C_EncryptInit(p11.session, &mech, key)
			: p11.fn->C_DecryptInit(p11.session, &mech, key);
		if (rv == CKR_OK)
			p11.gcm_no_bits = no_bits;
		if (rv != CKR_ARGUMENTS_BAD && rv != CKR_MECHANISM_PARAM_INVALID)
			break;
	}
	if (rv != CKR_OK)
		call->failed = encrypt ? "C_EncryptInit" : "C_DecryptInit";
	return rv;
}

/* wrap: out = IV || ciphertext || tag */
static CK_RV
p11_op_wrap(P11Call *call)
{
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG	ct_len = call->out_len - P11_IV_LEN;
	CK_RV		rv;

	if ((rv = p11_find_key(call, &key)) != CKR_OK || call->nfound != 1)
		return rv;
	rv = p11.fn->C_GenerateRandom(p11.session, call->out, P11_IV_LEN);
	if (rv == CKR_RANDOM_NO_RNG || rv == CKR_FUNCTION_NOT_SUPPORTED)
		rv = pg_strong_random(call->out, P11_IV_LEN) ? CKR_OK : CKR_RANDOM_NO_RNG;
	if (rv != CKR_OK)
	{
		call->failed = "C_GenerateRandom";
		return rv;
	}
	if ((rv = p11_gcm_init(call, key, true, call->out)) != CKR_OK)
		return rv;
	rv = p11.fn->C_Encrypt(p11.session, (CK_BYTE_PTR) call->in, call->in_len,
						   call->out + P11_IV_LEN, &ct_len);
	if (rv != CKR_OK)
	{
		call->failed = "C_Encrypt";
		return rv;
	}
	if (ct_len != (CK_ULONG) call->in_len + P11_TAG_LEN)
	{
		call->failed = "C_Encrypt";
		return CKR_GENERAL_ERROR;
	}
	call->out_len = P11_IV_LEN + ct_len;
	return CKR_OK;
}

/* unwrap: in = IV || ciphertext || tag */
static CK_RV
p11_op_unwrap(P11Call *call)
{
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG	len = call->out_len;
	CK_RV		rv;

	if ((rv = p11_find_key(call, &key)) != CKR_OK || call->nfound != 1)
		return rv;
	if ((rv = p11_gcm_init(call, key, false, call->in)) != CKR_OK)
		return rv;
	rv = p11.fn->C_Decrypt(p11.session, (CK_BYTE_PTR) call->in + P11_IV_LEN,
						   call->in_len - P11_IV_LEN, call->out, &len);
	if (rv != CKR_OK)
	{
		call->failed = "C_Decrypt";
		return rv;
	}
	call->out_len = len;
	return CKR_OK;
}

/* a lookup that did not find exactly one key: DESTROYED or CONFIG */
static ByokKmsStatus
p11_not_one(P11Call *call, ByokKmsError *err)
{
	if (call->nfound == 0)
		byok_kms_set_error(err, BYOK_KMS_DESTROYED, "NOT_FOUND",
						   "Token \"%s\" holds no secret key labelled \"%s\".",
						   p11.token, call->key_ref);
	else
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "AMBIGUOUS_KEY",
						   "Token \"%s\" holds more than one secret key labelled \"%s\".",
						   p11.token, call->key_ref);
	return err->status;
}

/* AAD binding a wrapped TK to its tenant and version */
static int
p11_aad(const ByokKmsContext *ctx, uint8 *aad)
{
	return byok_kms_context_aad("byok-pkcs11-v1", ctx, aad);
}

static ByokKmsStatus
p11_check_context(const ByokKmsContext *ctx, ByokKmsError *err)
{
	if (ctx == NULL || ctx->tenant == NULL || strlen(ctx->tenant) > BYOK_MAX_TENANT_NAME)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CONTEXT",
						   "A tenant name of at most %d bytes is required.", BYOK_MAX_TENANT_NAME);
		return err->status;
	}
	return BYOK_KMS_OK;
}

/*
 * A key reference is a CKA_LABEL: 1 to 255 printable bytes (UTF-8 allowed,
 * no control characters).  Also checks the module and token GUCs.
 */
static ByokKmsStatus
p11_check_key_ref(const char *key_ref, ByokKmsError *err)
{
	for (const unsigned char *p = (const unsigned char *) key_ref; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7f)
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_LABEL",
							   "A PKCS#11 key label may not contain control characters.");
			return err->status;
		}
	}
	return p11_check_config(err);
}

/*
 * The CMK's state from its usage attributes.  version_hint is unused: a
 * PKCS#11 key has no provider-side versions.
 */
static ByokKmsStatus
p11_key_state(const char *key_ref, int32 version_hint, ByokKeyState *state, ByokKmsError *err)
{
	P11Job	   *job = NULL;
	P11Call    *call;
	ByokKmsStatus st = BYOK_KMS_OK;

	if (p11_check_key_ref(key_ref, err) != BYOK_KMS_OK ||
		(job = p11_job_new(key_ref, 0, err)) == NULL ||
		p11_dispatch(p11_op_state, &job, err) != BYOK_KMS_OK)
	{
		if (job)
			p11_job_free(job);
		return err->status;
	}
	call = &job->call;
	if (call->nfound > 1)
		st = p11_not_one(call, err);
	else if (call->nfound == 0)
		*state = BYOK_KEY_DESTROYED;
	else if (call->key_type != CKK_AES)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NOT_AES_KEY",
						   "Key \"%s\" on token \"%s\" is not an AES key.", key_ref, p11.token);
		st = err->status;
	}
	else if (call->can_encrypt && call->can_decrypt)
		*state = BYOK_KEY_ENABLED;
	else
		*state = BYOK_KEY_DISABLED;
	p11_job_free(job);
	return st;
}

/*
 * key_state_many's scan: every secret key on the token, once.  SoftHSM's
 * file store checks each object on disk at every lookup, so one lookup
 * costs about 12 us per object on the token; asking for N keys one by one
 * would cost O(N^2) per poll.  Handles are collected first (the find
 * operation is closed before any attribute is read) and not kept.
 */
static CK_RV
p11_op_scan(P11Call *call)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}};
	CK_OBJECT_HANDLE *handles;
	CK_ULONG	nhandles = 0;
	CK_ULONG	room = 64;
	CK_RV		rv;

	for (int i = 0; i < call->nqueries; i++)
		call->matches[i].nfound = 0;
	call->nfound = 1;
	if ((rv = p11.fn->C_FindObjectsInit(p11.session, tmpl, lengthof(tmpl))) != CKR_OK)
	{
		call->failed = "C_FindObjectsInit";
		return rv;
	}
	/* malloc, not palloc: this runs in a helper thread */
	handles = malloc(room * sizeof(CK_OBJECT_HANDLE));
	for (;;)
	{
		CK_ULONG	n = 0;

		if (handles != NULL && nhandles == room)
		{
			CK_OBJECT_HANDLE *more = realloc(handles, 2 * room * sizeof(CK_OBJECT_HANDLE));

			if (more == NULL)
				free(handles);
			handles = more;
			room *= 2;
		}
		if (handles == NULL)
		{
			(void) p11.fn->C_FindObjectsFinal(p11.session);
			call->failed = "malloc";
			return CKR_HOST_MEMORY;
		}
		rv = p11.fn->C_FindObjects(p11.session, handles + nhandles, room - nhandles, &n);
		if (rv != CKR_OK || n == 0)
			break;
		nhandles += n;
	}
	(void) p11.fn->C_FindObjectsFinal(p11.session);
	if (rv != CKR_OK)
	{
		free(handles);
		call->failed = "C_FindObjects";
		return rv;
	}

	for (CK_ULONG h = 0; h < nhandles; h++)
	{
		char		label[BYOK_MAX_KEY_REF + 1];
		CK_KEY_TYPE key_type = 0;
		CK_BBOOL	enc = CK_FALSE,
					dec = CK_FALSE;
		CK_ATTRIBUTE attrs[] = {
			{CKA_LABEL, label, BYOK_MAX_KEY_REF},
			{CKA_KEY_TYPE, &key_type, sizeof(key_type)},
			{CKA_ENCRYPT, &enc, sizeof(enc)},
			{CKA_DECRYPT, &dec, sizeof(dec)},
		};

		rv = p11.fn->C_GetAttributeValue(p11.session, handles[h], attrs, lengthof(attrs));
		/*
		 * One object that cannot be read (destroyed meanwhile, a label too
		 * long to match, an attribute sensitive or unknown to the module) is
		 * skipped, not the scan: were it the key asked about, the lookup by
		 * label that confirms a missing key (p11_run) finds it.  A length the
		 * module reports beyond the buffer is not believed.
		 */
		if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_BUFFER_TOO_SMALL ||
			rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID ||
			(rv == CKR_OK && attrs[0].ulValueLen > BYOK_MAX_KEY_REF))
			continue;
		if (rv != CKR_OK)
		{
			free(handles);
			call->failed = "C_GetAttributeValue";
			return rv;
		}
		label[attrs[0].ulValueLen] = '\0';
		for (int i = 0; i < call->nqueries; i++)
		{
			P11Match   *m = &call->matches[i];

			if (m->skip || strcmp(call->refs + (size_t) i * P11_REF_ROOM, label) != 0)
				continue;
			if (m->nfound++ == 0)
			{
				m->key_type = key_type;
				m->can_encrypt = enc;
				m->can_decrypt = dec;
			}
		}
	}
	free(handles);
	for (int i = 0; i < call->nqueries; i++)
		if (!call->matches[i].skip && call->matches[i].nfound == 0)
			call->nfound = 0;	/* p11_run confirms a missing key */
	return CKR_OK;
}

/*
 * The poller's batch: all states from one scan of the token.  Each query
 * gets the batch's duration.
 */
static void
p11_key_state_many(ByokKmsStateQuery *queries, int n)
{
	P11Job	   *job;
	ByokKmsError err;
	ByokKmsStatus st;
	instr_time	start;
	instr_time	took;
	bool		any = false;

	INSTR_TIME_SET_CURRENT(start);
	memset(&err, 0, sizeof(err));
	strlcpy(err.provider, n > 0 ? queries[0].err.provider : "pkcs11", sizeof(err.provider));
	job = p11_job_new("*", Max(n, 1), &err);
	for (int i = 0; i < n; i++)
	{
		queries[i].status = p11_check_key_ref(queries[i].key_ref, &queries[i].err);
		if (job == NULL && queries[i].status == BYOK_KMS_OK)
		{
			queries[i].status = err.status;
			queries[i].err = err;
			continue;
		}
		if (job == NULL)
			continue;
		if (queries[i].status == BYOK_KMS_OK && strlen(queries[i].key_ref) >= P11_REF_ROOM)
		{
			byok_kms_set_error(&queries[i].err, BYOK_KMS_CONFIG, "BAD_KEY_LABEL",
							   "A PKCS#11 key label is at most %d bytes.", P11_REF_ROOM - 1);
			queries[i].status = BYOK_KMS_CONFIG;
		}
		job->matches[i].skip = queries[i].status != BYOK_KMS_OK;
		if (!job->matches[i].skip)
			strlcpy(job->refs + (size_t) i * P11_REF_ROOM, queries[i].key_ref, P11_REF_ROOM);
		any |= !job->matches[i].skip;
	}
	if (job != NULL && any)
	{
		job->call.nqueries = n;
		st = p11_dispatch(p11_op_scan, &job, &err);
		for (int i = 0; i < n; i++)
		{
			P11Match   *m = job ? &job->matches[i] : NULL;
			ByokKmsStateQuery *q = &queries[i];
			P11Call		one = {.key_ref = q->key_ref};

			if (q->status != BYOK_KMS_OK || (m && m->skip))
				continue;
			if (m)
				one.nfound = m->nfound;
			q->status = st;
			if (st != BYOK_KMS_OK || m == NULL)
				q->err = err;
			else if (m->nfound == 0)
				q->state = BYOK_KEY_DESTROYED;
			else if (m->nfound > 1)
				q->status = p11_not_one(&one, &q->err);
			else if (m->key_type != CKK_AES)
			{
				byok_kms_set_error(&q->err, BYOK_KMS_CONFIG, "NOT_AES_KEY",
								   "Key \"%s\" on token \"%s\" is not an AES key.",
								   q->key_ref, p11.token);
				q->status = BYOK_KMS_CONFIG;
			}
			else
				q->state = (m->can_encrypt && m->can_decrypt) ? BYOK_KEY_ENABLED : BYOK_KEY_DISABLED;
		}
	}
	if (job != NULL)
		p11_job_free(job);
	INSTR_TIME_SET_CURRENT(took);
	INSTR_TIME_SUBTRACT(took, start);
	for (int i = 0; i < n; i++)
		queries[i].us = INSTR_TIME_GET_MICROSEC(took);
}

static ByokKmsStatus
p11_wrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *plain, int plain_len,
		 uint8 *out, int *out_len, ByokKmsError *err)
{
	P11Job	   *job;
	ByokKmsStatus st = BYOK_KMS_OK;

	if (plain_len <= 0 || 1 + P11_IV_LEN + plain_len + P11_TAG_LEN > BYOK_MAX_WRAPPED)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "TOO_LONG", "The key to wrap is empty or too long.");
		return err->status;
	}
	if (p11_check_key_ref(key_ref, err) != BYOK_KMS_OK ||
		p11_check_context(ctx, err) != BYOK_KMS_OK)
		return err->status;
	if ((job = p11_job_new(key_ref, 0, err)) == NULL)
		return err->status;
	job->call.aad = job->aad;
	job->call.aad_len = p11_aad(ctx, job->aad);
	memcpy(job->in, plain, plain_len);
	job->call.in = job->in;
	job->call.in_len = plain_len;
	job->call.out = job->out;
	job->call.out_len = BYOK_MAX_WRAPPED - 1;
	if (p11_dispatch(p11_op_wrap, &job, err) != BYOK_KMS_OK)
		st = err->status;
	else if (job->call.nfound != 1)
		st = p11_not_one(&job->call, err);
	else
	{
		out[0] = P11_WRAP_FORMAT;
		memcpy(out + 1, job->out, job->call.out_len);
		*out_len = 1 + (int) job->call.out_len;
	}
	if (job != NULL)
		p11_job_free(job);
	return st;
}

static ByokKmsStatus
p11_unwrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *wrapped, int wrapped_len,
		   uint8 *out, int *out_len, ByokKmsError *err)
{
	P11Job	   *job;
	ByokKmsStatus st = BYOK_KMS_OK;

	if (wrapped_len < 1 + P11_IV_LEN + 1 + P11_TAG_LEN || wrapped_len > BYOK_MAX_WRAPPED ||
		wrapped[0] != P11_WRAP_FORMAT)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_WRAPPED_KEY",
						   "The wrapped key is not in the pkcs11 provider's format.");
		return err->status;
	}
	if (p11_check_key_ref(key_ref, err) != BYOK_KMS_OK ||
		p11_check_context(ctx, err) != BYOK_KMS_OK)
		return err->status;
	if ((job = p11_job_new(key_ref, 0, err)) == NULL)
		return err->status;
	job->call.aad = job->aad;
	job->call.aad_len = p11_aad(ctx, job->aad);
	memcpy(job->in, wrapped + 1, wrapped_len - 1);
	job->call.in = job->in;
	job->call.in_len = wrapped_len - 1;
	job->call.out = job->out;
	job->call.out_len = BYOK_MAX_WRAPPED;
	if (p11_dispatch(p11_op_unwrap, &job, err) != BYOK_KMS_OK)
		st = err->status;
	else if (job->call.nfound != 1)
		st = p11_not_one(&job->call, err);
	else if (job->call.out_len != (CK_ULONG) (wrapped_len - 1 - P11_IV_LEN - P11_TAG_LEN))
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_LENGTH",
						   "C_Decrypt returned a key of unexpected length.");
		st = err->status;
	}
	else
	{
		memcpy(out, job->out, job->call.out_len);
		*out_len = (int) job->call.out_len;
	}
	if (job != NULL)
		p11_job_free(job);
	return st;
}

static const ByokKmsRoutine pkcs11_routine = {
	.name = "pkcs11",
	.check_key_ref = p11_check_key_ref,
	.wrap = p11_wrap,
	.unwrap = p11_unwrap,
	.key_state = p11_key_state,
	.key_state_many = p11_key_state_many,
};

void
byok_kms_pkcs11_install(void)
{
	byok_kms_register(&pkcs11_routine);
}
