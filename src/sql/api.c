/*-------------------------------------------------------------------------
 *
 * sql/api.c
 *		The SQL-callable functions: thin wrappers over the modules that own
 *		the logic.
 *
 * byok_encrypt and byok_decrypt are the hot path: argument unpacking, one
 * byok.tenant comparison, one handle lookup in handles/handles.h (two compares and
 * an atomic read when warm) and one AES-GCM operation in envelope.c.  No
 * catalog access, no lock and no allocation beyond the result on a warm
 * call.
 *
 * NULL in gives NULL out: a NULL tenant, value or scope returns NULL; a
 * NULL aad means "no additional authenticated data".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"

#include "crypto/envelope.h"
#include "catalog/keystore.h"
#include "guc.h"
#include "handles/handles.h"

PG_FUNCTION_INFO_V1(byok_encrypt);
PG_FUNCTION_INFO_V1(byok_decrypt);
PG_FUNCTION_INFO_V1(byok_decrypt_text);
PG_FUNCTION_INFO_V1(byok_decrypt_as);
PG_FUNCTION_INFO_V1(byok_ciphertext_info);
PG_FUNCTION_INFO_V1(byok_create_tenant);
PG_FUNCTION_INFO_V1(byok_rotate_data_key);
PG_FUNCTION_INFO_V1(byok_rotate_for_limit);
PG_FUNCTION_INFO_V1(byok_protected);
PG_FUNCTION_INFO_V1(byok_revoke_tenant);
PG_FUNCTION_INFO_V1(byok_reinstate_tenant);
PG_FUNCTION_INFO_V1(byok_cache_flush);
PG_FUNCTION_INFO_V1(byok_destroy_tenant);
PG_FUNCTION_INFO_V1(byok_needs_reencrypt);
PG_FUNCTION_INFO_V1(byok_reencrypt_value);
PG_FUNCTION_INFO_V1(byok_rotate_tenant_key);
PG_FUNCTION_INFO_V1(byok_rewrap_tenant);
PG_FUNCTION_INFO_V1(byok_catalog_changed);

static inline void
sa_check_binding(const char *tenant, int len)
{
	if (byok_tenant != NULL && byok_tenant[0] != '\0' &&
		(strlen(byok_tenant) != (size_t) len || memcmp(byok_tenant, tenant, len) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_TENANT_MISMATCH),
				 errmsg("this session is bound to tenant \"%s\"", byok_tenant),
				 errdetail("Encrypting for tenant \"%.*s\" is not allowed in this session.",
						   Min(len, BYOK_MAX_TENANT_NAME), tenant)));
}

/*
 * byok_encrypt(tenant text, plaintext bytea|text, scope text, aad bytea) -> bytea
 */
Datum
byok_encrypt(PG_FUNCTION_ARGS)
{
	text	   *tenant;
	bytea	   *plain;
	text	   *scope;
	bytea	   *aad = NULL;
	ByokLocalKey *lk;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	byok_check_loaded();
	tenant = PG_GETARG_TEXT_PP(0);
	plain = PG_GETARG_BYTEA_PP(1);
	scope = PG_GETARG_TEXT_PP(2);
	if (!PG_ARGISNULL(3))
		aad = PG_GETARG_BYTEA_PP(3);

	sa_check_binding(VARDATA_ANY(tenant), VARSIZE_ANY_EXHDR(tenant));
	lk = byok_handle_current(VARDATA_ANY(tenant), VARSIZE_ANY_EXHDR(tenant),
							VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope));
	if (unlikely(lk->encrypts >= lk->allowed))
		lk = byok_handle_reserve(lk, VARDATA_ANY(tenant), VARSIZE_ANY_EXHDR(tenant),
								VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope));
	lk->encrypts++;
	PG_RETURN_BYTEA_P(byok_envelope_seal(byok_handle_ctx(lk, byok_algorithm, true), byok_algorithm,
										 lk->dek_id, lk->tenant_id,
										 VARDATA_ANY(plain), VARSIZE_ANY_EXHDR(plain),
										 aad ? VARDATA_ANY(aad) : NULL,
										 aad ? VARSIZE_ANY_EXHDR(aad) : 0));
}

/* shared body of byok_decrypt and byok_decrypt_text */
static bytea *
sa_decrypt(FunctionCallInfo fcinfo)
{
	bytea	   *ct = PG_GETARG_BYTEA_PP(0);
	bytea	   *aad = PG_ARGISNULL(1) ? NULL : PG_GETARG_BYTEA_PP(1);
	const uint8 *data = (const uint8 *) VARDATA_ANY(ct);
	int			len = VARSIZE_ANY_EXHDR(ct);
	ByokHeader	hdr;
	ByokLocalKey *lk;
	bytea	   *plain;

	byok_check_loaded();
	byok_envelope_parse(data, len, &hdr);
	lk = byok_handle_dek(hdr.dek_id);
	plain = byok_envelope_open(byok_handle_ctx(lk, hdr.algorithm, false), data, len, lk->tenant_id,
							   aad ? VARDATA_ANY(aad) : NULL,
							   aad ? VARSIZE_ANY_EXHDR(aad) : 0);
	lk->decrypts++;
	return plain;
}

/*
 * byok_decrypt(ciphertext bytea, aad bytea) -> bytea
 */
Datum
byok_decrypt(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(sa_decrypt(fcinfo));
}

/*
 * byok_decrypt_text(ciphertext bytea, aad bytea) -> text, checked to be
 * valid in the database encoding.
 */
Datum
byok_decrypt_text(PG_FUNCTION_ARGS)
{
	bytea	   *plain;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	plain = sa_decrypt(fcinfo);
	/* pg_verifymbstr's own error would quote the offending plaintext bytes */
	if (!pg_verifymbstr(VARDATA(plain), VARSIZE(plain) - VARHDRSZ, true))
	{
		explicit_bzero(VARDATA(plain), VARSIZE(plain) - VARHDRSZ);
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("decrypted value is not valid text in encoding \"%s\"",
						GetDatabaseEncodingName()),
				 errhint("Use byok_decrypt() for binary values.")));
	}
	PG_RETURN_TEXT_P((text *) plain);
}

/*
 * byok_decrypt_as(ciphertext bytea, aad bytea, like anyelement) -> anyelement
 *
 * Decrypts a value of a protected column and reads it with the input
 * function of like's type (the column's original type; the generated views
 * pass NULL::type).  A plaintext that type refuses is an error with the
 * input function's SQLSTATE whose text never shows the value: the input
 * function's own message (e.g. invalid input syntax for type integer:
 * "...") would put the plaintext into the client's error and the server
 * log.  Cancellation and resource errors pass through unchanged.
 */
/* byok_decrypt_as's per-call-site cache: the result type's input function */
typedef struct SaInput
{
	Oid			typ;
	Oid			typioparam;
	FmgrInfo	input;
	char		typname[NAMEDATALEN * 2 + 4];	/* for the error, named before any input runs */
} SaInput;

Datum
byok_decrypt_as(PG_FUNCTION_ARGS)
{
	Oid			typ = get_fn_expr_argtype(fcinfo->flinfo, 2);
	SaInput    *in = (SaInput *) fcinfo->flinfo->fn_extra;
	bytea	   *plain;
	char	   *str;
	int			len;
	Datum		result = (Datum) 0;
	MemoryContext cxt = CurrentMemoryContext;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	if (!OidIsValid(typ))
		elog(ERROR, "byok_decrypt_as: could not determine the result type");
	if (in == NULL || in->typ != typ)
	{
		Oid			typinput;

		in = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(SaInput));
		in->typ = typ;
		getTypeInputInfo(typ, &typinput, &in->typioparam);
		fmgr_info_cxt(typinput, &in->input, fcinfo->flinfo->fn_mcxt);
		strlcpy(in->typname, format_type_be(typ), sizeof(in->typname));
		fcinfo->flinfo->fn_extra = in;
	}
	plain = sa_decrypt(fcinfo);
	len = VARSIZE(plain) - VARHDRSZ;
	str = palloc(len + 1);
	memcpy(str, VARDATA(plain), len);
	str[len] = '\0';
	explicit_bzero(VARDATA(plain), len);
	pfree(plain);
	if (!pg_verifymbstr(str, len, true) || strlen(str) != (size_t) len)
	{
		explicit_bzero(str, len);
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("decrypted value is not valid text in encoding \"%s\"",
						GetDatabaseEncodingName())));
	}
	PG_TRY();
	{
		result = InputFunctionCall(&in->input, str, in->typioparam, -1);
	}
	PG_CATCH();
	{
		ErrorData  *ed;
		int			category;
		char	   *fields[6];

		MemoryContextSwitchTo(cxt);
		explicit_bzero(str, len);
		category = ERRCODE_TO_CATEGORY(geterrcode());
		if (category == ERRCODE_OPERATOR_INTERVENTION || category == ERRCODE_INSUFFICIENT_RESOURCES)
			PG_RE_THROW();		/* a cancel or out of memory: no value in it */
		ed = CopyErrorData();
		FlushErrorState();
		/* the refused error quotes the plaintext: wipe the copy */
		fields[0] = ed->message;
		fields[1] = ed->detail;
		fields[2] = ed->detail_log;
		fields[3] = ed->hint;
		fields[4] = ed->context;
		fields[5] = ed->internalquery;
		for (int i = 0; i < (int) lengthof(fields); i++)
			if (fields[i])
				explicit_bzero(fields[i], strlen(fields[i]));
		ereport(ERROR,
				(errcode(ed->sqlerrcode),
				 errmsg("a decrypted value is not a valid %s", in->typname),
				 errdetail("The input function of type %s refused the plaintext; byok does not show it.",
						   in->typname)));
	}
	PG_END_TRY();
	explicit_bzero(str, len);
	pfree(str);
	PG_RETURN_DATUM(result);
}

/*
 * byok_ciphertext_info(ciphertext bytea) -> (version, algorithm, dek_id,
 * tenant, scope, key_version).  Needs no key; tenant, scope and key_version
 * are NULL when this database has no such DEK.
 */
Datum
byok_ciphertext_info(PG_FUNCTION_ARGS)
{
	bytea	   *ct = PG_GETARG_BYTEA_PP(0);
	ByokHeader	hdr;
	TupleDesc	tupdesc;
	Datum		values[6];
	bool		nulls[6] = {false};
	const char *tenant;
	const char *scope;
	int32		version;

	byok_check_loaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	byok_envelope_parse((const uint8 *) VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct), &hdr);
	values[0] = Int32GetDatum(hdr.version);
	values[1] = CStringGetTextDatum(byok_algorithm_name(hdr.algorithm));
	values[2] = Int64GetDatum(hdr.dek_id);
	if (byok_handle_dek_meta(hdr.dek_id, &tenant, &scope, &version))
	{
		values[3] = CStringGetTextDatum(tenant);
		values[4] = CStringGetTextDatum(scope);
		values[5] = Int32GetDatum(version);
	}
	else
		nulls[3] = nulls[4] = nulls[5] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

Datum
byok_create_tenant(PG_FUNCTION_ARGS)
{
	byok_check_loaded();
	byok_keystore_create_tenant(text_to_cstring(PG_GETARG_TEXT_PP(0)),
								text_to_cstring(PG_GETARG_TEXT_PP(1)),
								text_to_cstring(PG_GETARG_TEXT_PP(2)));
	byok_handle_forget_current();
	PG_RETURN_VOID();
}

Datum
byok_rotate_data_key(PG_FUNCTION_ARGS)
{
	int32		version;

	byok_check_loaded();
	version = byok_keystore_rotate_data_key(text_to_cstring(PG_GETARG_TEXT_PP(0)),
											text_to_cstring(PG_GETARG_TEXT_PP(1)));
	byok_handle_forget_current();
	PG_RETURN_INT32(version);
}

/*
 * The scope's DEK 'dek_id' reached byok.dek_max_encryptions on a Citus
 * node: rotate unless another node just did; the DEK to seal with now.
 * Superuser only (the workers ask the coordinator: catalog/citus.c).
 */
Datum
byok_rotate_for_limit(PG_FUNCTION_ARGS)
{
	int64		next;

	byok_check_loaded();
	next = byok_keystore_rotate_for_limit(text_to_cstring(PG_GETARG_TEXT_PP(0)),
										  text_to_cstring(PG_GETARG_TEXT_PP(1)), PG_GETARG_INT64(2));
	byok_handle_forget_current();
	PG_RETURN_INT64(next);
}

/* byok.protected(tschema, tname, col): see byok_keystore_protected (NULLs: any) */
Datum
byok_protected(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(byok_keystore_protected(PG_ARGISNULL(0) ? NULL : NameStr(*PG_GETARG_NAME(0)),
										   PG_ARGISNULL(1) ? NULL : NameStr(*PG_GETARG_NAME(1)),
										   PG_ARGISNULL(2) ? NULL : NameStr(*PG_GETARG_NAME(2))));
}

Datum
byok_revoke_tenant(PG_FUNCTION_ARGS)
{
	byok_check_loaded();
	byok_keystore_set_revoked(text_to_cstring(PG_GETARG_TEXT_PP(0)), true);
	PG_RETURN_VOID();
}

Datum
byok_reinstate_tenant(PG_FUNCTION_ARGS)
{
	byok_check_loaded();
	byok_keystore_set_revoked(text_to_cstring(PG_GETARG_TEXT_PP(0)), false);
	PG_RETURN_VOID();
}

Datum
byok_rotate_tenant_key(PG_FUNCTION_ARGS)
{
	int32		version;

	byok_check_loaded();
	version = byok_keystore_rotate_tenant_key(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	byok_handle_forget_current();
	PG_RETURN_INT32(version);
}

Datum
byok_rewrap_tenant(PG_FUNCTION_ARGS)
{
	byok_check_loaded();
	byok_keystore_rewrap(text_to_cstring(PG_GETARG_TEXT_PP(0)), text_to_cstring(PG_GETARG_TEXT_PP(1)),
						 text_to_cstring(PG_GETARG_TEXT_PP(2)));
	PG_RETURN_VOID();
}

Datum
byok_destroy_tenant(PG_FUNCTION_ARGS)
{
	char	   *cert;

	byok_check_loaded();
	cert = byok_keystore_destroy(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	byok_handle_forget_current();
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(cert)));
}

Datum
byok_cache_flush(PG_FUNCTION_ARGS)
{
	int			purged;

	byok_check_loaded();
	purged = byok_keystore_cache_flush(PG_ARGISNULL(0) ? NULL :
									   text_to_cstring(PG_GETARG_TEXT_PP(0)));
	byok_handle_release();
	PG_RETURN_INT32(purged);
}

/*
 * Statement trigger on the catalog tables: rows deleted behind byok's back.
 */
Datum
byok_catalog_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("byok.catalog_changed() must be called as a trigger")));
	byok_keystore_catalog_changed();
	return PointerGetDatum(NULL);
}

/*
 * byok_needs_reencrypt(ciphertext bytea) -> boolean: sealed under an older
 * DEK version of its scope or another algorithm than byok.algorithm.
 */
Datum
byok_needs_reencrypt(PG_FUNCTION_ARGS)
{
	bytea	   *ct = PG_GETARG_BYTEA_PP(0);

	byok_check_loaded();
	PG_RETURN_BOOL(byok_handle_needs_reencrypt((const uint8 *) VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct)));
}

/*
 * byok_reencrypt_value(ciphertext bytea, aad bytea) -> bytea: the value
 * sealed again under its scope's current DEK and byok.algorithm (the same
 * value when nothing needs to change).  NULL in, NULL out.
 */
Datum
byok_reencrypt_value(PG_FUNCTION_ARGS)
{
	bytea	   *ct;
	bytea	   *aad;
	bytea	   *result;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	byok_check_loaded();
	ct = PG_GETARG_BYTEA_PP(0);
	aad = PG_ARGISNULL(1) ? NULL : PG_GETARG_BYTEA_PP(1);
	result = byok_handle_reencrypt((const uint8 *) VARDATA_ANY(ct), VARSIZE_ANY_EXHDR(ct),
								  aad ? VARDATA_ANY(aad) : NULL, aad ? VARSIZE_ANY_EXHDR(aad) : 0);
	if (result == NULL)
		PG_RETURN_BYTEA_P(PG_GETARG_BYTEA_P_COPY(0));
	PG_RETURN_BYTEA_P(result);
}
