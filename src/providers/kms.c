/*-------------------------------------------------------------------------
 *
 * providers/kms.c
 *		The provider registry, the dispatch wrappers and the one error path.
 *
 * Providers register a static ByokKmsRoutine from _PG_init.  Everything
 * else reaches a provider through the byok_kms_* wrappers here, which reset
 * the error struct, tag it with the provider's name, and keep callers from
 * depending on a routine's layout.  byok_kms_throw() is the only place a
 * provider failure becomes an ereport: class -> SQLSTATE, the provider's
 * own code and sanitised text -> errdetail.
 *
 * No function here holds a lock; callers must not hold an LWLock across any
 * of them (a provider call can take seconds).  The registry is filled in
 * _PG_init and only read afterwards, per process.
 *
 * Key lifetime: wrap and unwrap pass the caller's TK buffers straight to
 * the provider.  byok_kms_validate()'s round trip unwraps into a stack
 * buffer that is wiped before it returns, on every path.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "portability/instr_time.h"
#include "postmaster/interrupt.h"

#include "providers/answers.h"
#include "providers/kms.h"

#define MAX_PROVIDERS 8

static const ByokKmsRoutine *providers[MAX_PROVIDERS];
static int	nproviders = 0;

void
byok_kms_register(const ByokKmsRoutine *routine)
{
	if (nproviders >= MAX_PROVIDERS)
		elog(ERROR, "too many byok key providers");
	providers[nproviders++] = routine;
}

/*
 * Find a provider by name; raise an error naming the known ones unless
 * missing_ok.
 */
const ByokKmsRoutine *
byok_kms_lookup(const char *name, bool missing_ok)
{
	StringInfoData known;

	for (int i = 0; i < nproviders; i++)
		if (strcmp(providers[i]->name, name) == 0)
			return providers[i];
	if (missing_ok)
		return NULL;

	initStringInfo(&known);
	for (int i = 0; i < nproviders; i++)
		appendStringInfo(&known, "%s%s", i > 0 ? ", " : "", providers[i]->name);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown key provider \"%s\"", name),
			 errhint("Known providers: %s.", known.data)));
	return NULL;				/* keep compiler quiet */
}

static void
kms_reset(const ByokKmsRoutine *r, ByokKmsError *err)
{
	memset(err, 0, sizeof(*err));
	strlcpy(err->provider, r->name, sizeof(err->provider));
}

ByokKmsStatus
byok_kms_check_key_ref(const ByokKmsRoutine *r, const char *key_ref, ByokKmsError *err)
{
	kms_reset(r, err);
	if (key_ref[0] == '\0' || strlen(key_ref) > BYOK_MAX_KEY_REF)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_REF",
						   "A key reference must be 1 to %d bytes long.", BYOK_MAX_KEY_REF);
		return err->status;
	}
	return r->check_key_ref(key_ref, err);
}

ByokKmsStatus
byok_kms_wrap(const ByokKmsRoutine *r, const char *key_ref, const ByokKmsContext *ctx,
			  const uint8 *plain, int plain_len, uint8 *out, int *out_len,
			  ByokKmsError *err)
{
	kms_reset(r, err);
	return r->wrap(key_ref, ctx, plain, plain_len, out, out_len, err);
}

ByokKmsStatus
byok_kms_unwrap(const ByokKmsRoutine *r, const char *key_ref, const ByokKmsContext *ctx,
				const uint8 *wrapped, int wrapped_len, uint8 *out, int *out_len,
				ByokKmsError *err)
{
	kms_reset(r, err);
	return r->unwrap(key_ref, ctx, wrapped, wrapped_len, out, out_len, err);
}

ByokKmsStatus
byok_kms_key_state(const ByokKmsRoutine *r, const char *key_ref, int32 version_hint,
				   ByokKeyState *state, ByokKmsError *err)
{
	kms_reset(r, err);
	return r->key_state(key_ref, version_hint, state, err);
}

/*
 * Many key states at once: concurrently when the provider can, else one
 * after the other.  Each query gets its status, state, error and duration.
 */
void
byok_kms_key_state_many(const ByokKmsRoutine *r, ByokKmsStateQuery *queries, int n)
{
	for (int i = 0; i < n; i++)
		kms_reset(r, &queries[i].err);
	if (r->key_state_many)
	{
		r->key_state_many(queries, n);
		return;
	}
	for (int i = 0; i < n; i++)
	{
		instr_time	start;
		instr_time	took;

		INSTR_TIME_SET_CURRENT(start);
		queries[i].state = BYOK_KEY_ENABLED;
		queries[i].status = r->key_state(queries[i].key_ref, queries[i].version_hint,
										 &queries[i].state, &queries[i].err);
		INSTR_TIME_SET_CURRENT(took);
		INSTR_TIME_SUBTRACT(took, start);
		queries[i].us = INSTR_TIME_GET_MICROSEC(took);
	}
}

int32
byok_kms_wrapped_version(const ByokKmsRoutine *r, const uint8 *wrapped, int len)
{
	return r->wrapped_version ? r->wrapped_version(wrapped, len) : 0;
}

/*
 * The onboarding round trip: the CMK must be enabled, must wrap 'key' and
 * must unwrap the result back to exactly 'key'.  On success 'wrapped' holds
 * the wrapped key.
 */
ByokKmsStatus
byok_kms_validate(const ByokKmsRoutine *r, const char *key_ref, const ByokKmsContext *ctx,
				  const uint8 *key, uint8 *wrapped, int *wrapped_len, ByokKmsError *err)
{
	ByokKeyState state;
	uint8		check[BYOK_MAX_WRAPPED];
	int			check_len = 0;
	ByokKmsStatus st;

	if ((st = byok_kms_check_key_ref(r, key_ref, err)) != BYOK_KMS_OK)
		return st;
	if ((st = byok_kms_key_state(r, key_ref, 0, &state, err)) != BYOK_KMS_OK)
		return st;
	if (state != BYOK_KEY_ENABLED)
	{
		kms_reset(r, err);
		byok_kms_set_error(err, state == BYOK_KEY_DISABLED ? BYOK_KMS_DISABLED : BYOK_KMS_DESTROYED,
						   state == BYOK_KEY_DISABLED ? "DISABLED" : "NOT_FOUND",
						   "The customer master key is %s.",
						   state == BYOK_KEY_DISABLED ? "disabled" : "destroyed or missing");
		return err->status;
	}
	if ((st = byok_kms_wrap(r, key_ref, ctx, key, BYOK_KEY_LEN, wrapped, wrapped_len, err)) != BYOK_KMS_OK)
		return st;
	st = byok_kms_unwrap(r, key_ref, ctx, wrapped, *wrapped_len, check, &check_len, err);
	if (st == BYOK_KMS_OK &&
		(check_len != BYOK_KEY_LEN || memcmp(check, key, BYOK_KEY_LEN) != 0))
	{
		kms_reset(r, err);
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "ROUND_TRIP",
						   "The key unwrapped by the provider differs from the key it wrapped.");
		st = err->status;
	}
	explicit_bzero(check, sizeof(check));
	return st;
}

/*
 * Record a failure in 'err'.  The text must already be free of secrets;
 * callers pass only names, codes and lengths.
 */
void
byok_kms_set_error(ByokKmsError *err, ByokKmsStatus status, const char *remote_code,
				   const char *fmt,...)
{
	va_list		ap;

	char		buf[sizeof(err->message)];

	err->status = status;
	/* whatever a provider sent: printable ASCII, bounded, before any message or view */
	byok_text_sanitise(remote_code, remote_code ? strlen(remote_code) : 0,
					   err->remote_code, sizeof(err->remote_code));
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	byok_text_sanitise(buf, strlen(buf), err->message, sizeof(err->message));
}

/*
 * Should a provider call in flight stop now?  A cancel (pg_cancel_backend,
 * statement_timeout), a termination or a shutdown request is pending.  The
 * provider then cleans up and runs CHECK_FOR_INTERRUPTS.
 */
bool
byok_kms_interrupt_pending(void)
{
	return QueryCancelPending || ProcDiePending || ShutdownRequestPending;
}

const char *
byok_kms_status_name(ByokKmsStatus status)
{
	static const char *const names[BYOK_KMS_STATUS_COUNT] = {
		"ok", "disabled", "destroyed", "permission", "throttled",
		"unavailable", "bad_response", "config"
	};

	if (status < 0 || status >= BYOK_KMS_STATUS_COUNT)
		return "unknown";
	return names[status];
}

/*
 * Raise the error 'err' describes, for 'tenant' (may be NULL).
 */
void
byok_kms_throw(const ByokKmsError *err, const char *tenant)
{
	int			code;
	const char *what;

	switch (err->status)
	{
		case BYOK_KMS_DISABLED:
			code = ERRCODE_BYOK_CMK_DISABLED;
			what = "customer master key of tenant \"%s\" is disabled";
			break;
		case BYOK_KMS_DESTROYED:
			code = ERRCODE_BYOK_CMK_DESTROYED;
			what = "customer master key of tenant \"%s\" is destroyed or missing";
			break;
		case BYOK_KMS_PERMISSION:
			code = ERRCODE_BYOK_KMS_PERMISSION;
			what = "key provider refused access for tenant \"%s\"";
			break;
		case BYOK_KMS_THROTTLED:
			code = ERRCODE_BYOK_KMS_THROTTLED;
			what = "key provider is throttling requests for tenant \"%s\"";
			break;
		case BYOK_KMS_UNAVAILABLE:
			code = ERRCODE_BYOK_KMS_UNAVAILABLE;
			what = "key provider is unavailable for tenant \"%s\"";
			break;
		case BYOK_KMS_CONFIG:
			code = ERRCODE_BYOK_PROVIDER_CONFIG;
			what = "key provider configuration is invalid for tenant \"%s\"";
			break;
		case BYOK_KMS_BAD_RESPONSE:
		default:
			code = ERRCODE_BYOK_KMS_BAD_RESPONSE;
			what = "key provider returned an unusable response for tenant \"%s\"";
			break;
	}

	ereport(ERROR,
			(errcode(code),
			 errmsg_internal(what, tenant ? tenant : "?"),
			 errdetail("Provider \"%s\" reported %s: %s", err->provider,
					   err->remote_code[0] ? err->remote_code : "an error",
					   err->message)));
	pg_unreachable();
}

/*
 * The AAD a provider binds a wrapped TK to, for providers that take raw
 * AAD: label || NUL || tenant || NUL || TK version (big-endian).  'out'
 * needs 64 + NAMEDATALEN bytes.  Returns its length.
 */
int
byok_kms_context_aad(const char *label, const ByokKmsContext *ctx, uint8 *out)
{
	int			llen = strlen(label) + 1;
	int			tlen = strlen(ctx->tenant) + 1;
	uint32		ver = pg_hton32((uint32) ctx->tk_version);

	Assert(llen + tlen + 4 <= 64 + NAMEDATALEN);
	memcpy(out, label, llen);
	memcpy(out + llen, ctx->tenant, tlen);
	memcpy(out + llen + tlen, &ver, sizeof(ver));
	return llen + tlen + sizeof(ver);
}
