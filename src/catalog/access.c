/*-------------------------------------------------------------------------
 *
 * catalog/access.c
 *		Catalog access: SPI as the bootstrap superuser, reading catalog rows
 *		as untrusted input, looking tenants up, the checks and errors every
 *		catalog path shares, and the audit log (byok.key_events).
 *
 * src/catalog/ owns byok's catalog.  The catalog tables (schema byok, see
 * byok--1.0.sql) hold tenants, their wrapped tenant keys (TK, wrapped by
 * the tenant's CMK inside its provider) and wrapped data keys (DEK,
 * wrapped by the TK here with AES-256-GCM, the AAD binding tenant id,
 * scope and version).  Only the files of this folder read or write them:
 *
 *	access.c		SPI plumbing, row reading, tenant lookup, the audit log
 *	data_keys.c		the key-miss path, DEK creation and rotation, scopes
 *	tenants.c		tenant lifecycle: create, revoke, validate, drill, destroy,
 *					tenant-key rotation and rewrap
 *	xact.c			what a transaction changed, applied when it commits
 *	asowner.c		switching user for SPI work; byok.exec_as_owner
 *	extdrop.c		DROP EXTENSION byok refused while tenants hold keys
 *	ledger.c		the destruction ledger file
 *
 * The rest of byok sees catalog/keystore.h (and asowner.h, extdrop.h,
 * ledger.h); access.c, data_keys.c, tenants.c and xact.c share
 * catalog_internal.h.  This folder never calls the per-transaction key
 * handles (handles/): the SQL wrappers (sql/) drop their handles after a
 * lifecycle change.
 *
 * Catalog access runs through SPI as the bootstrap superuser
 * (SetUserIdAndSecContext with SECURITY_LOCAL_USERID_CHANGE), so the roles
 * that call byok_encrypt need no privilege on the tables, and every query
 * names its schema and operators explicitly, so the caller's search_path
 * cannot redirect it.  The previous user is restored on every exit; an
 * error restores it through (sub)transaction abort.  Every row read is
 * checked against its bounds: a catalog field that does not fit is corrupt
 * (XX001), never truncated.
 *
 * Locking.  No LWLock is taken here.  A tenant lookup takes a row lock on
 * its byok.tenants row when asked (KS_LOCK_*, catalog_internal.h): that
 * is how lifecycle changes of one tenant serialise.
 *
 * Key lifetime.  This file handles no key bytes: rows hold wrapped keys
 * only, and KsTenant carries the wrapped TK, never an unwrapped one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_authid_d.h"
#include "catalog/pg_type_d.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"

#include "catalog/catalog_internal.h"

Oid			ks_caller = InvalidOid;	/* user who called byok, for the audit log */
static Oid	ks_catalog = InvalidOid;
static LocalTransactionId ks_catalog_lxid = InvalidLocalTransactionId;

static SPIPlanPtr plan_tenant = NULL;
static SPIPlanPtr plan_tenant_lock = NULL;
static SPIPlanPtr plan_tenant_rekey = NULL;
static SPIPlanPtr plan_event = NULL;

/* ---- catalog access ---- */

/*
 * The oid of schema byok in this database: part of every shared key, so
 * keys of an earlier install (DROP/CREATE EXTENSION) are never confused with
 * the current one.  Looked up once per transaction.
 */
Oid
byok_keystore_catalog(void)
{
	if (ks_catalog_lxid != MyProc->lxid || !OidIsValid(ks_catalog))
	{
		ks_catalog = get_namespace_oid("byok", true);
		if (!OidIsValid(ks_catalog))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"byok\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION byok.")));
		ks_catalog_lxid = MyProc->lxid;
	}
	return ks_catalog;
}

void
ks_enter(KsAccess *acc)
{
	/* as superuser, and nothing of the caller's search_path reaches a query */
	byok_switch_user(BOOTSTRAP_SUPERUSERID, SECURITY_LOCAL_USERID_CHANGE, acc);
	ks_caller = acc->userid;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ks_citus_refresh();
}

void
ks_leave(KsAccess *acc)
{
	SPI_finish();
	byok_switch_back(acc);
}

/* Run a saved plan (prepared on first use).  Returns SPI_processed. */
uint64
ks_exec(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types,
		Datum *values, const char *nulls, bool read_only)
{
	int			rc;

	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(ks_citus_sql(sql), nargs, types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		ks_citus_keep_plan(plan);
		SPI_keepplan(p);
		*plan = p;
	}
	rc = SPI_execute_plan(*plan, values, nulls, read_only, 0);
	if (rc < 0)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

/* Run an ad-hoc statement (administrative paths only). */
uint64
ks_exec_once(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	int			rc = SPI_execute_with_args(ks_citus_sql(sql), nargs, types, values, nulls, false, 0);

	if (rc < 0)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

Datum
ks_get(int row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
}

/* A catalog field that fails its bounds: the catalog is untrusted input. */
static void
ks_corrupt_field(int col, int len, int max)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("byok catalog row is corrupt"),
			 errdetail("Field \"%s\" holds %d bytes; at most %d are allowed.",
					   SPI_fname(SPI_tuptable->tupdesc, col), len, max),
			 errhint("Restore the byok catalog from a backup; byok never writes such a value.")));
}

/*
 * A text field into 'out' (outlen bytes with the terminator).  NULL gives
 * "".  A longer value is corrupt (XX001), never truncated: two values that
 * differ after the limit must never read the same.
 */
void
ks_get_text(int row, int col, char *out, int outlen)
{
	bool		isnull;
	Datum		d = ks_get(row, col, &isnull);
	text	   *t;
	int			len;

	if (isnull)
	{
		out[0] = '\0';
		return;
	}
	t = DatumGetTextPP(d);
	len = VARSIZE_ANY_EXHDR(t);
	if (len >= outlen || memchr(VARDATA_ANY(t), '\0', len) != NULL)
		ks_corrupt_field(col, len, outlen - 1);
	memcpy(out, VARDATA_ANY(t), len);
	out[len] = '\0';
}

int
ks_get_bytea(int row, int col, uint8 *out, int outlen)
{
	bool		isnull;
	Datum		d = ks_get(row, col, &isnull);
	bytea	   *b;
	int			len;

	if (isnull)
		return 0;
	b = DatumGetByteaPP(d);
	len = VARSIZE_ANY_EXHDR(b);
	if (len > outlen)
		ks_corrupt_field(col, len, outlen);
	memcpy(out, VARDATA_ANY(b), len);
	return len;
}

static ByokTenantState
ks_state_from_text(const char *state)
{
	if (strcmp(state, "revoked") == 0)
		return BYOK_TENANT_REVOKED;
	if (strcmp(state, "destroyed") == 0)
		return BYOK_TENANT_CMK_DESTROYED;
	if (strcmp(state, "active") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("byok catalog row is corrupt"),
				 errdetail("A tenant's state is \"%s\", not active, revoked or destroyed.", state)));
	return BYOK_TENANT_ACTIVE;
}

/* Fill 'dst' from the columns tenant_id, name, state, tk_version, provider, key_ref, wrapped TK starting at 'col'. */
void
ks_read_tenant(int row, int col, KsTenant *dst)
{
	bool		isnull;
	char		state[16];

	memset(dst, 0, sizeof(*dst));
	dst->tenant_id = DatumGetInt32(ks_get(row, col, &isnull));
	ks_get_text(row, col + 1, dst->name, sizeof(dst->name));
	ks_get_text(row, col + 2, state, sizeof(state));
	dst->state = ks_state_from_text(state);
	dst->tk_version = DatumGetInt32(ks_get(row, col + 3, &isnull));
	ks_get_text(row, col + 4, dst->provider, sizeof(dst->provider));
	ks_get_text(row, col + 5, dst->key_ref, sizeof(dst->key_ref));
	dst->wrapped_len = ks_get_bytea(row, col + 6, dst->wrapped, sizeof(dst->wrapped));
}

/*
 * Look a tenant up by name (inside ks_enter) and read it into 't'; raise
 * if unknown.  'lock' is a KS_LOCK_* mode (catalog_internal.h).
 */
void
ks_find_tenant(const char *tenant, int lock, KsTenant *t)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(tenant)};

	if (lock == KS_LOCK_REKEY)
		ks_exec(&plan_tenant_rekey,
				"SELECT " TENANT_COLUMNS "FROM " TENANT_JOIN
				"WHERE t.name OPERATOR(pg_catalog.=) $1 FOR UPDATE OF t",
				1, types, values, NULL, false);
	else if (lock == KS_LOCK_CHANGE)
		ks_exec(&plan_tenant_lock,
				"SELECT " TENANT_COLUMNS "FROM " TENANT_JOIN
				"WHERE t.name OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE OF t",
				1, types, values, NULL, false);
	else
		ks_exec(&plan_tenant,
				"SELECT " TENANT_COLUMNS "FROM " TENANT_JOIN
				"WHERE t.name OPERATOR(pg_catalog.=) $1",
				1, types, values, NULL, false);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_UNKNOWN_TENANT),
				 errmsg("tenant \"%s\" does not exist", tenant)));
	ks_read_tenant(0, 1, t);
}

bytea *
ks_bytea(const uint8 *data, int len)
{
	bytea	   *b = (bytea *) palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return b;
}

void
ks_event(int32 tenant_id, const char *tenant, const char *event, const char *key_kind,
		 int32 key_version, const char *scope, const char *fingerprint, const char *detail)
{
	Oid			types[9] = {INT4OID, TEXTOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[9];
	char		nulls[9];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(tenant_id);
	if (tenant_id <= 0)
		nulls[0] = 'n';
#define TXT(i, s) do { if (s) values[i] = CStringGetTextDatum(s); else nulls[i] = 'n'; } while (0)
	TXT(1, tenant);
	TXT(2, event);
	TXT(3, key_kind);
	TXT(5, scope);
	TXT(6, fingerprint);
	TXT(7, detail);
	TXT(8, GetUserNameFromId(ks_caller, false));
#undef TXT
	values[4] = Int32GetDatum(key_version);
	if (key_version <= 0)
		nulls[4] = 'n';
	ks_exec(&plan_event,
			"INSERT INTO byok.key_events (tenant_id, tenant, event, key_kind, key_version, scope, fingerprint, detail, actor) "
			"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
			9, types, values, nulls, false);
}

/* ---- checks and errors ---- */

void
byok_check_tenant_name(const char *tenant)
{
	int			len = strlen(tenant);

	if (len == 0 || len > BYOK_MAX_TENANT_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid tenant name"),
				 errdetail("A tenant name must be 1 to %d bytes long.", BYOK_MAX_TENANT_NAME)));
	for (const char *p = tenant; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || strchr("_.:@-", *p) != NULL))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid tenant name \"%s\"", tenant),
					 errdetail("A tenant name may contain only letters, digits and the characters _ . : @ -.")));
}

void
byok_check_scope(const char *scope, int len)
{
	if (len == 0 || len > BYOK_MAX_SCOPE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid scope"),
				 errdetail("A scope must be 1 to %d bytes long.", BYOK_MAX_SCOPE)));
	for (int i = 0; i < len; i++)
		if ((unsigned char) scope[i] < 0x20 || scope[i] == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid scope"),
					 errdetail("A scope may not contain control characters.")));
}

void
byok_raise_tenant_state(ByokTenantState state, const char *tenant)
{
	switch (state)
	{
		case BYOK_TENANT_REVOKED:
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_TENANT_REVOKED),
					 errmsg("tenant \"%s\" is revoked", tenant),
					 errdetail("An administrator revoked this tenant; its keys cannot be used."),
					 errhint("byok_reinstate_tenant() restores access.")));
			break;
		case BYOK_TENANT_CMK_DISABLED:
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_CMK_DISABLED),
					 errmsg("customer master key of tenant \"%s\" is disabled", tenant),
					 errdetail("The tenant's key provider reports its key disabled; its data cannot be read or written until the customer enables it.")));
			break;
		case BYOK_TENANT_KMS_UNREACHABLE:
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_KMS_UNAVAILABLE),
					 errmsg("key provider of tenant \"%s\" is unreachable", tenant),
					 errdetail("The provider has not answered for longer than byok.unreachable_grace, and byok.unreachable_policy is fail_closed.")));
			break;
		case BYOK_TENANT_CMK_DESTROYED:
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_CMK_DESTROYED),
					 errmsg("customer master key of tenant \"%s\" is destroyed or missing", tenant),
					 errdetail("The tenant's data can no longer be decrypted.")));
			break;
		default:
			elog(ERROR, "unexpected tenant state %d", (int) state);
	}
	pg_unreachable();
}

/* A tenant destroyed by byok_destroy_tenant(): its keys are gone. */
void
ks_raise_destroyed(const char *tenant)
{
	ereport(ERROR,
			(errcode(ERRCODE_BYOK_CMK_DESTROYED),
			 errmsg("tenant \"%s\" was destroyed", tenant),
			 errdetail("byok_destroy_tenant() deleted its keys; its data can no longer be decrypted."),
			 errhint("The destruction certificate is in byok.key_events.")));
}

/* A DEK row that cannot give a key: corrupt catalog (XX001), naming the row. */
void
ks_raise_row(ByokRowError e, int64 dek_id, const char *tenant)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("data key " INT64_FORMAT " of tenant \"%s\" failed to unwrap", dek_id, tenant),
			 errdetail("byok.data_keys row with dek_id " INT64_FORMAT ": %s.", dek_id, byok_row_error_text(e))));
}
