/*-------------------------------------------------------------------------
 *
 * catalog/access.c
 *		The catalog of wrapped keys, the key-miss path and tenant lifecycle.
 *
 * The catalog tables (schema byok, see byok--1.0.sql) hold tenants, their
 * wrapped tenant keys (TK, wrapped by the tenant's CMK inside its provider)
 * and wrapped data keys (DEK, wrapped by the TK here with AES-256-GCM, the
 * AAD binding tenant id, scope and version).  This file is the only one that
 * reads or writes them.
 *
 * Catalog access runs through SPI as the bootstrap superuser
 * (SetUserIdAndSecContext with SECURITY_LOCAL_USERID_CHANGE), so the roles
 * that call byok_encrypt need no privilege on the tables, and every query
 * names its schema and operators explicitly, so the caller's search_path
 * cannot redirect it.  The previous user is restored on every exit; an
 * error restores it through (sub)transaction abort.
 *
 * The miss path.  byok_keystore_load_dek() reads one DEK row with its
 * tenant and TK, attaches the tenant's shared slot (which raises if the
 * tenant is locked out), gets the TK from the shared cache or else from the
 * provider, unwraps the DEK and installs both in the shared cache.  No lock
 * is held while the provider works; byok_cache_put() refuses to install a
 * key if the tenant's generation moved meanwhile (revoked mid-flight).
 *
 * Key lifetime.  TK and DEK bytes pass through stack buffers only, wiped in
 * PG_FINALLY blocks on every path.  Catalog rows hold wrapped keys only.
 *
 * Transactions.  Tenant state changes (revoke, reinstate) take effect in
 * shared memory when their transaction commits (XACT_EVENT_COMMIT), so an
 * aborted revoke changes nothing.  DEKs created by the running transaction
 * stay out of the shared cache until it commits, so an aborted creation
 * leaves no key behind.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid_d.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "port/pg_bswap.h"
#include "portability/instr_time.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "catalog/asowner.h"
#include "crypto/envelope.h"
#include "keycache.h"
#include "crypto/keyrow.h"
#include "catalog/keystore.h"
#include "kms.h"
#include "catalog/ledger.h"
#include "handles/handles.h"

/* a tenant and its current TK, as the catalog records them */
typedef struct KsTenant
{
	int32		tenant_id;
	char		name[NAMEDATALEN];
	ByokTenantState state;		/* catalog state mapped to a slot state */
	int32		tk_version;
	char		provider[32];
	char		key_ref[BYOK_MAX_KEY_REF + 1];
	uint8		wrapped[BYOK_MAX_WRAPPED];	/* TK wrapped by the CMK */
	int			wrapped_len;
	int			slot;			/* shared slot, once attached */
	uint64		generation;		/* slot generation at attach */
} KsTenant;

/* a state change waiting for commit */
typedef struct KsPending
{
	int			slot;
	int32		tenant_id;
	ByokTenantState state;
	bool		rekeyed;		/* no state change: wipe its keys, forget its CMK */
	SubTransactionId subid;
} KsPending;

typedef ByokUserSwitch KsAccess;

static Oid	ks_caller = InvalidOid;	/* user who called byok, for the audit log */
static List *ks_pending = NIL;	/* KsPending, in TopTransactionContext */
static int64 *ks_created = NULL;	/* DEK ids created by this transaction */
static int	ks_ncreated = 0;
static int	ks_created_cap = 0;
static bool ks_bump_epoch = false;
static bool ks_flush_at_commit = false;	/* keys deleted: wipe this database's cache */
static StringInfo ks_ledger_lines = NULL;	/* to append to the ledger at commit */
static Oid	ks_catalog = InvalidOid;
static LocalTransactionId ks_catalog_lxid = InvalidLocalTransactionId;

static SPIPlanPtr plan_load_dek = NULL;
static SPIPlanPtr plan_current = NULL;
static SPIPlanPtr plan_tenant = NULL;
static SPIPlanPtr plan_tenant_lock = NULL;
static SPIPlanPtr plan_tenant_rekey = NULL;
static SPIPlanPtr plan_tenant_share = NULL;
static SPIPlanPtr plan_event = NULL;
static SPIPlanPtr plan_scope = NULL;

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

static void
ks_enter(KsAccess *acc)
{
	/* as superuser, and nothing of the caller's search_path reaches a query */
	byok_switch_user(BOOTSTRAP_SUPERUSERID, SECURITY_LOCAL_USERID_CHANGE, acc);
	ks_caller = acc->userid;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
ks_leave(KsAccess *acc)
{
	SPI_finish();
	byok_switch_back(acc);
}

/* Run a saved plan (prepared on first use).  Returns SPI_processed. */
static uint64
ks_exec(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types,
		Datum *values, const char *nulls, bool read_only)
{
	int			rc;

	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	rc = SPI_execute_plan(*plan, values, nulls, read_only, 0);
	if (rc < 0)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

/* Run an ad-hoc statement (administrative paths only). */
static uint64
ks_exec_once(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc < 0)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

static Datum
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
static void
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

static int
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

static void
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
static void
ks_raise_destroyed(const char *tenant)
{
	ereport(ERROR,
			(errcode(ERRCODE_BYOK_CMK_DESTROYED),
			 errmsg("tenant \"%s\" was destroyed", tenant),
			 errdetail("byok_destroy_tenant() deleted its keys; its data can no longer be decrypted."),
			 errhint("The destruction certificate is in byok.key_events.")));
}

/* ---- keys ---- */

/* A DEK row that cannot give a key: corrupt catalog (XX001), naming the row. */
static void
ks_raise_row(ByokRowError e, int64 dek_id, const char *tenant)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("data key " INT64_FORMAT " of tenant \"%s\" failed to unwrap", dek_id, tenant),
			 errdetail("byok.data_keys row with dek_id " INT64_FORMAT ": %s.", dek_id, byok_row_error_text(e))));
}

/* AAD binding a wrapped DEK to its tenant, scope and version (keyrow.c) */
static int
ks_dek_aad(int32 tenant_id, const char *scope, int32 version, uint8 *aad)
{
	size_t		len = 0;
	ByokRowError e = byok_row_dek_aad(tenant_id, scope, strlen(scope), version, aad, &len);

	if (e != BYOK_ROW_OK)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("byok catalog row is corrupt"),
				 errdetail("A data key of tenant id %d: %s.", tenant_id, byok_row_error_text(e))));
	return (int) len;
}

/* Attach the tenant's shared slot; raise if it is locked out. */
static void
ks_attach(KsTenant *t)
{
	ByokTenantState st;

	t->slot = byok_tenant_attach(MyDatabaseId, byok_keystore_catalog(), t->tenant_id,
								 t->name, t->state, &t->generation);
	st = pg_atomic_read_u32(&byok_tenant_slot(t->slot)->state);
	if (st != BYOK_TENANT_ACTIVE)
		byok_raise_tenant_state(st, t->name);
}

/*
 * Ask the provider to unwrap the tenant's TK (no lock held), count the call,
 * and act on the answer: install the TK and register its CMK with the
 * poller on success; lock the tenant out in every backend at once when the
 * provider says the CMK is disabled or destroyed.  Returns the status;
 * 'err' describes a failure.
 */
static ByokKmsStatus
ks_fetch_tk(KsTenant *t, const ByokCacheKey *ck, uint8 *tk, ByokKmsError *err)
{
	const ByokKmsRoutine *r = byok_kms_lookup(t->provider, false);
	ByokKmsContext ctx;
	ByokKmsStatus st;
	uint8		buf[BYOK_MAX_WRAPPED];
	int			len = 0;
	instr_time	start;
	instr_time	elapsed;

	char		fp[BYOK_LEDGER_FP_LEN + 1];

	/* a key the destruction ledger lists is never unwrapped again */
	byok_ledger_fingerprint(t->wrapped, t->wrapped_len, fp);
	if (byok_ledger_contains(fp))
	{
		ByokStateChange ch;

		if (byok_tenant_provider_state(t->slot, t->tenant_id, BYOK_TENANT_CMK_DESTROYED,
									   "destruction ledger", &ch) >= 0)
			byok_state_change_report(&ch, "backend");
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CMK_DESTROYED),
				 errmsg("tenant \"%s\" was destroyed", t->name),
				 errdetail("Its tenant key is listed in byok.destruction_ledger: this cluster holds a copy made before the destruction.")));
	}
	ctx.tenant = t->name;
	ctx.tk_version = t->tk_version;
	INSTR_TIME_SET_CURRENT(start);
	st = byok_kms_unwrap(r, t->key_ref, &ctx, t->wrapped, t->wrapped_len, buf, &len, err);
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	if (st == BYOK_KMS_OK && len != BYOK_KEY_LEN)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_KEY_LENGTH",
						   "The unwrapped tenant key is %d bytes long, not %d.", len, BYOK_KEY_LEN);
		st = err->status;
	}
	if (st == BYOK_KMS_OK)
		memcpy(tk, buf, BYOK_KEY_LEN);
	explicit_bzero(buf, sizeof(buf));
	byok_tenant_record_call(t->slot, st, INSTR_TIME_GET_MICROSEC(elapsed));

	if (st == BYOK_KMS_DISABLED || st == BYOK_KMS_DESTROYED)
	{
		ByokStateChange ch;

		byok_cmk_register(t->slot, t->provider, t->key_ref, 0);
		if (byok_tenant_provider_state(t->slot, t->tenant_id,
									   st == BYOK_KMS_DISABLED ? BYOK_TENANT_CMK_DISABLED : BYOK_TENANT_CMK_DESTROYED,
									   st == BYOK_KMS_DISABLED ? "unwrap: CMK disabled" : "unwrap: CMK destroyed",
									   &ch) >= 0)
			byok_state_change_report(&ch, "backend");
	}
	else if (st == BYOK_KMS_OK)
	{
		if (!byok_cache_put(ck, t->slot, t->generation, tk, 0))
		{
			explicit_bzero(tk, BYOK_KEY_LEN);
			byok_kms_set_error(err, BYOK_KMS_OK, "", "The tenant changed state during the unwrap.");
			return BYOK_KMS_STATUS_COUNT;	/* tenant changed meanwhile */
		}
		byok_cmk_register(t->slot, t->provider, t->key_ref,
						  byok_kms_wrapped_version(r, t->wrapped, t->wrapped_len));
		byok_tenant_set_fp(t->slot, t->tenant_id, fp);
	}
	return st;
}

/*
 * The tenant's current TK into 'tk': from the shared cache, or unwrapped by
 * the provider and installed.  When several backends miss the same TK at
 * once, one calls the provider and the others wait for it (single flight,
 * bounded by byok.kms_timeout, interruptible).  The tenant must be
 * attached.  No lock is held across the provider call.
 */
static void
ks_tenant_key(KsTenant *t, uint8 *tk)
{
	ByokCacheKey ck;
	int			slot;
	uint64		gen;
	int			flight = -1;
	uint64		seq = 0;
	ByokKmsError err;
	ByokKmsStatus st = BYOK_KMS_OK;

	byok_cache_key_init(&ck, MyDatabaseId, byok_keystore_catalog(), BYOK_CACHE_TK,
						t->tenant_id, t->tk_version);
	if (byok_cache_get(&ck, tk, &slot, &gen, NULL) && slot == t->slot)
		return;
	pg_atomic_fetch_add_u64(&byok_tenant_slot(t->slot)->stats.cache_misses, 1);

	for (int attempt = 0; attempt < 3; attempt++)
	{
		ByokFlightRole role;
		ByokTenantState ts;

		memset(&err, 0, sizeof(err));
		if (byok_tenant_fail_fast(t->slot))
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_KMS_UNAVAILABLE),
					 errmsg("key provider is unavailable for tenant \"%s\"", t->name),
					 errdetail("The provider failed less than a second ago; byok does not call it again sooner.")));

		role = byok_cache_ttl > 0 ?
			byok_flight_begin(&ck, tk, &slot, &gen, &flight, &seq) : BYOK_FLIGHT_NONE;
		if (role == BYOK_FLIGHT_HIT && slot == t->slot)
			return;
		if (role == BYOK_FLIGHT_WAITER)
		{
			if (!byok_flight_wait(flight, seq, byok_kms_timeout, &err))
				ereport(ERROR,
						(errcode(ERRCODE_BYOK_KMS_UNAVAILABLE),
						 errmsg("key provider is unavailable for tenant \"%s\"", t->name),
						 errdetail("Another session's call to the provider did not finish within byok.kms_timeout (%d ms).",
								   byok_kms_timeout)));
			st = err.status;
		}
		else
		{
			PG_TRY();
			{
				st = ks_fetch_tk(t, &ck, tk, &err);
			}
			PG_CATCH();
			{
				if (role == BYOK_FLIGHT_LEADER)
				{
					ByokKmsError fail;

					memset(&fail, 0, sizeof(fail));
					fail.status = BYOK_KMS_UNAVAILABLE;
					strlcpy(fail.message, "The call was interrupted.", sizeof(fail.message));
					byok_flight_end(flight, &fail);
				}
				PG_RE_THROW();
			}
			PG_END_TRY();
			if (role == BYOK_FLIGHT_LEADER)
				byok_flight_end(flight, st == BYOK_KMS_OK ? NULL : &err);
			if (st == BYOK_KMS_OK)
				return;
		}

		/* the provider's own words first: they say the most */
		if (st != BYOK_KMS_OK && st != BYOK_KMS_STATUS_COUNT)
			byok_kms_throw(&err, t->name);
		ts = pg_atomic_read_u32(&byok_tenant_slot(t->slot)->state);
		if (ts != BYOK_TENANT_ACTIVE)
			byok_raise_tenant_state(ts, t->name);
		/* the leader installed it (or the tenant was purged meanwhile): look again */
		if (byok_cache_get(&ck, tk, &slot, &gen, NULL) && slot == t->slot)
			return;
		t->generation = pg_atomic_read_u64(&byok_tenant_slot(t->slot)->generation);
	}
	ereport(ERROR,
			(errcode(ERRCODE_BYOK_KMS_UNAVAILABLE),
			 errmsg("could not obtain the tenant key of tenant \"%s\"", t->name),
			 errdetail("The key kept being purged while it was fetched.")));
}

/* Fill 'dst' from the columns tenant_id, name, state, tk_version, provider, key_ref, wrapped TK starting at 'col'. */
static void
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

#define TENANT_COLUMNS \
	"t.tenant_id, t.name, t.state, tk.version, tk.provider, tk.key_ref, tk.wrapped_key "
#define TENANT_JOIN \
	"byok.tenants t JOIN byok.tenant_keys tk ON tk.tenant_id OPERATOR(pg_catalog.=) t.tenant_id " \
	"AND tk.version OPERATOR(pg_catalog.=) t.tk_version "

/*
 * Look a tenant up by name (inside ks_enter); raise if unknown.  Lock modes:
 * KS_LOCK_NONE; KS_LOCK_CHANGE (FOR NO KEY UPDATE: DEK rotation, revocation
 * and the like serialise per tenant); KS_LOCK_REKEY (FOR UPDATE: rotating
 * or moving the tenant key also waits for transactions creating a DEK,
 * which hold FOR KEY SHARE, so no DEK is ever wrapped under a tenant key
 * whose wrapped copy is being deleted).
 */
#define KS_LOCK_NONE	0
#define KS_LOCK_CHANGE	1
#define KS_LOCK_REKEY	2

static void
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

/*
 * The miss path for one DEK: catalog row, tenant slot, TK, unwrap, install.
 * Writes the DEK to 'key' and where it came from to 'ref'.  Raises
 * ERRCODE_BYOK_MALFORMED_CIPHERTEXT for an unknown DEK id and the tenant's
 * state error when it is locked out.
 */
void
byok_keystore_load_dek(int64 dek_id, uint8 *key, ByokDekRef *ref)
{
	KsAccess	acc;
	KsTenant	t;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(dek_id)};
	char		scope[BYOK_MAX_SCOPE + 1];
	int32		version;
	uint8		wrapped[BYOK_MAX_WRAPPED];
	int			wrapped_len;
	uint8		tk[BYOK_KEY_LEN];
	uint8		aad[BYOK_ROW_AAD_MAX];
	size_t		aad_len;
	bool		isnull;
	ByokRowError e;

	ks_enter(&acc);
	ks_exec(&plan_load_dek,
			"SELECT " TENANT_COLUMNS ", d.scope, d.version, d.wrapped_key, d.encryptions "
			"FROM byok.data_keys d JOIN byok.tenants t ON t.tenant_id OPERATOR(pg_catalog.=) d.tenant_id "
			"LEFT JOIN byok.tenant_keys tk ON tk.tenant_id OPERATOR(pg_catalog.=) d.tenant_id "
			"AND tk.version OPERATOR(pg_catalog.=) d.tk_version "
			"WHERE d.dek_id OPERATOR(pg_catalog.=) $1",
			1, types, values, NULL, false);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_MALFORMED_CIPHERTEXT),
				 errmsg("malformed byok ciphertext"),
				 errdetail("No data key with id " INT64_FORMAT " exists in this database.", dek_id)));
	ks_read_tenant(0, 1, &t);
	byok_session_check_bound(t.name);	/* nothing more of another tenant */
	ks_get_text(0, 8, scope, sizeof(scope));
	version = DatumGetInt32(ks_get(0, 9, &isnull));
	if (isnull)
		version = 0;
	wrapped_len = ks_get_bytea(0, 10, wrapped, sizeof(wrapped));
	{
		int64		used = DatumGetInt64(ks_get(0, 11, &isnull));

		ref->used = (isnull || used < 0) ? 0 : (uint64) used;
	}
	ks_leave(&acc);
	/* the row's fields, checked before any provider call */
	e = byok_row_dek_aad(t.tenant_id, scope, strlen(scope), version, aad, &aad_len);
	if (e == BYOK_ROW_OK && wrapped_len != 0 && wrapped_len != BYOK_ROW_WRAPPED_LEN)
		e = BYOK_ROW_BAD_WRAPPED_LEN;
	if (e != BYOK_ROW_OK)
		ks_raise_row(e, dek_id, t.name);
	if (t.state == BYOK_TENANT_CMK_DESTROYED || t.wrapped_len == 0)
		ks_raise_destroyed(t.name);
	if (wrapped_len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CMK_DESTROYED),
				 errmsg("data key version %d of scope \"%s\" of tenant \"%s\" was retired", version, scope, t.name),
				 errdetail("byok_retire_data_key() destroyed it; values sealed under it can no longer be decrypted.")));

	ks_attach(&t);
	PG_TRY();
	{
		ks_tenant_key(&t, tk);
		e = byok_row_unwrap_dek(tk, t.tenant_id, scope, strlen(scope), version, wrapped, wrapped_len, key);
	}
	PG_FINALLY();
	{
		explicit_bzero(tk, sizeof(tk));
		explicit_bzero(wrapped, sizeof(wrapped));
	}
	PG_END_TRY();
	if (e != BYOK_ROW_OK)
		ks_raise_row(e, dek_id, t.name);

	ref->dek_id = dek_id;
	ref->tenant_id = t.tenant_id;
	ref->slot = t.slot;
	ref->generation = t.generation;
	for (int i = 0; i < ks_ncreated; i++)
		if (ks_created[i] == dek_id)
			return;				/* not committed yet: keep it out of the shared cache */
	{
		ByokCacheKey ck;

		byok_cache_key_init(&ck, MyDatabaseId, byok_keystore_catalog(), BYOK_CACHE_DEK, dek_id, 0);
		if (!byok_cache_put(&ck, t.slot, t.generation, key, ref->used))
		{
			ByokTenantState st = pg_atomic_read_u32(&byok_tenant_slot(t.slot)->state);

			if (st != BYOK_TENANT_ACTIVE)
			{
				explicit_bzero(key, BYOK_KEY_LEN);
				byok_raise_tenant_state(st, t.name);
			}
			/* flushed meanwhile but active: use the key, uncached */
			ref->generation = pg_atomic_read_u64(&byok_tenant_slot(t.slot)->generation);
		}
	}
}

/*
 * Make, wrap and insert a new DEK for (tenant, scope, version) under the
 * tenant's TK (inside ks_enter; tenant attached).  Returns the new dek_id,
 * or 0 if a concurrent session inserted that version first.
 */
/* A fresh DEK, wrapped under 'tk' into 'wrapped', its fingerprint into 'fp'; wiped after. */
static void
ks_make_dek(const uint8 *tk, const uint8 *aad, int aad_len, uint8 *wrapped, char *fp)
{
	uint8		dek[BYOK_KEY_LEN];

	PG_TRY();
	{
		byok_random_bytes(dek, BYOK_KEY_LEN);
		byok_gcm_wrap(tk, aad, aad_len, dek, BYOK_KEY_LEN, wrapped);
		byok_key_fingerprint(dek, BYOK_KEY_LEN, fp);
	}
	PG_FINALLY();
	{
		explicit_bzero(dek, sizeof(dek));
	}
	PG_END_TRY();
}

static int64
ks_insert_dek(KsTenant *t, const char *scope, int32 version, const uint8 *tk, bool on_conflict,
			  const char *detail)
{
	uint8		wrapped[BYOK_WRAPPED_LEN(BYOK_KEY_LEN)];
	uint8		aad[BYOK_ROW_AAD_MAX];
	char		fp[BYOK_FINGERPRINT_LEN];
	bytea	   *wb;
	Oid			types[6] = {INT4OID, TEXTOID, INT4OID, INT4OID, BYTEAOID, TEXTOID};
	Datum		values[6];
	int64		dek_id = 0;
	bool		isnull;

	ks_make_dek(tk, aad, ks_dek_aad(t->tenant_id, scope, version, aad), wrapped, fp);

	wb = (bytea *) palloc(VARHDRSZ + sizeof(wrapped));
	SET_VARSIZE(wb, VARHDRSZ + sizeof(wrapped));
	memcpy(VARDATA(wb), wrapped, sizeof(wrapped));
	values[0] = Int32GetDatum(t->tenant_id);
	values[1] = CStringGetTextDatum(scope);
	values[2] = Int32GetDatum(version);
	values[3] = Int32GetDatum(t->tk_version);
	values[4] = PointerGetDatum(wb);
	values[5] = CStringGetTextDatum(fp);
	ks_exec_once(on_conflict ?
				 "INSERT INTO byok.data_keys (tenant_id, scope, version, tk_version, wrapped_key, fingerprint) "
				 "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, scope, version) DO NOTHING "
				 "RETURNING dek_id" :
				 "INSERT INTO byok.data_keys (tenant_id, scope, version, tk_version, wrapped_key, fingerprint) "
				 "VALUES ($1, $2, $3, $4, $5, $6) RETURNING dek_id",
				 6, types, values, NULL);
	if (SPI_processed == 1)
	{
		dek_id = DatumGetInt64(ks_get(0, 1, &isnull));
		if (ks_ncreated == ks_created_cap)
		{
			int			cap = Max(8, ks_created_cap * 2);
			int64	   *grown = MemoryContextAlloc(TopTransactionContext, cap * sizeof(int64));

			if (ks_ncreated > 0)
				memcpy(grown, ks_created, ks_ncreated * sizeof(int64));
			ks_created = grown;
			ks_created_cap = cap;
		}
		ks_created[ks_ncreated++] = dek_id;
		ks_event(t->tenant_id, t->name, version == 1 ? "data_key_created" : "data_key_rotated",
				 "dek", version, scope, fp, detail);
	}
	return dek_id;
}

/*
 * Whether 'scope' is declared: in byok.scopes, or as the scope of a
 * protected column (byok.protected_columns) (inside ks_enter).  A
 * database still on the 1.0 catalog has no such table: every scope is.
 */
static bool
ks_scope_declared(const char *scope)
{
	Oid			nsp = get_namespace_oid("byok", true);
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(scope)};

	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("scopes", nsp)))
		return true;
	ks_exec(&plan_scope,
			"SELECT 1 FROM byok.scopes WHERE scope OPERATOR(pg_catalog.=) $1 UNION ALL "
			"SELECT 1 FROM byok.protected_columns WHERE scope OPERATOR(pg_catalog.=) $1 LIMIT 1",
			1, types, values, NULL, false);
	return SPI_processed > 0;
}

/* Declare 'scope' (an administrator rotating a new scope's key declares it). */
static void
ks_declare_scope(const char *scope)
{
	Oid			nsp = get_namespace_oid("byok", true);
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	if (strcmp(scope, "default") == 0 || !OidIsValid(nsp) || !OidIsValid(get_relname_relid("scopes", nsp)))
		return;
	values[0] = CStringGetTextDatum(scope);
	values[1] = CStringGetTextDatum(GetUserNameFromId(ks_caller, false));
	ks_exec_once("INSERT INTO byok.scopes (scope, declared_by) VALUES ($1, $2) ON CONFLICT DO NOTHING",
				 2, types, values, NULL);
}

/*
 * The DEK id that new encryptions for (tenant, scope) use: the scope's
 * highest version, or a version 1 made now if the scope is new.  Raises
 * ERRCODE_BYOK_UNKNOWN_TENANT for an unknown tenant and the tenant's state
 * error when it is locked out.
 */
int64
byok_keystore_current_dek(const char *tenant, const char *scope)
{
	KsAccess	acc;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(tenant), CStringGetTextDatum(scope)};
	int64		dek_id = 0;
	bool		isnull;
	KsTenant	t;
	uint8		tk[BYOK_KEY_LEN];

	ks_enter(&acc);
	ks_exec(&plan_current,
			"SELECT t.tenant_id, t.state, "
			"(SELECT d.dek_id FROM byok.data_keys d WHERE d.tenant_id OPERATOR(pg_catalog.=) t.tenant_id "
			" AND d.scope OPERATOR(pg_catalog.=) $2 ORDER BY d.version DESC LIMIT 1) "
			"FROM byok.tenants t WHERE t.name OPERATOR(pg_catalog.=) $1",
			2, types, values, NULL, false);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_UNKNOWN_TENANT),
				 errmsg("tenant \"%s\" does not exist", tenant)));
	{
		Datum		d = ks_get(0, 3, &isnull);
		char		state[16];

		if (!isnull)
			dek_id = DatumGetInt64(d);
		ks_get_text(0, 2, state, sizeof(state));
		if (strcmp(state, "destroyed") == 0)
			ks_raise_destroyed(tenant);
	}
	if (dek_id != 0)
	{
		ks_leave(&acc);
		return dek_id;
	}

	/*
	 * A new scope: make its first DEK, racing safely with other sessions.
	 * FOR KEY SHARE first, so a tenant-key rotation in flight finishes
	 * before we read the tenant key to wrap under (and waits for us).
	 */
	ks_exec(&plan_tenant_share,
			"SELECT 1 FROM byok.tenants WHERE name OPERATOR(pg_catalog.=) $1 FOR KEY SHARE",
			1, types, values, NULL, false);
	ks_find_tenant(tenant, KS_LOCK_NONE, &t);
	ks_attach(&t);				/* a locked-out tenant says so first */
	/*
	 * A new scope for this tenant: only a declared one (byok.scopes, made by
	 * byok_declare_scope or byok_protect_column; 'default' always is), so
	 * no caller of byok_encrypt can make byok write a catalog row for every
	 * string it invents.
	 */
	if (strcmp(scope, "default") != 0 && !ks_scope_declared(scope))
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_UNDECLARED_SCOPE),
				 errmsg("scope \"%s\" is not declared", scope),
				 errdetail("byok makes data keys only for declared scopes."),
				 errhint("An administrator declares it with byok_declare_scope(); byok_protect_column declares its own.")));
	PG_TRY();
	{
		ks_tenant_key(&t, tk);
		dek_id = ks_insert_dek(&t, scope, 1, tk, true, NULL);
	}
	PG_FINALLY();
	{
		explicit_bzero(tk, sizeof(tk));
	}
	PG_END_TRY();
	if (dek_id == 0)
	{
		ks_exec(&plan_current, NULL, 2, types, values, NULL, false);
		if (SPI_processed == 1)
		{
			Datum		d = ks_get(0, 3, &isnull);

			if (!isnull)
				dek_id = DatumGetInt64(d);
		}
		if (dek_id == 0)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not create the first data key of scope \"%s\" for tenant \"%s\"",
							scope, tenant),
					 errdetail("Another transaction created it concurrently."),
					 errhint("Retry the transaction.")));
	}
	ks_leave(&acc);
	return dek_id;
}

/* ---- tenant lifecycle ---- */

void
byok_keystore_create_tenant(const char *tenant, const char *provider, const char *key_ref)
{
	const ByokKmsRoutine *r;
	ByokKmsError err;
	ByokKmsContext ctx;
	KsAccess	acc;
	KsTenant	t;
	uint8		tk[BYOK_KEY_LEN];
	uint8		wrapped[BYOK_MAX_WRAPPED];
	int			wrapped_len = 0;
	char		fp[BYOK_FINGERPRINT_LEN];
	char		detail[512];
	instr_time	start;
	instr_time	elapsed;
	Oid			types[6] = {TEXTOID, TEXTOID, TEXTOID, INT4OID, BYTEAOID, TEXTOID};
	Datum		values[6];
	bytea	   *wb;
	bool		isnull;
	ByokKmsStatus st;

	byok_check_tenant_name(tenant);
	r = byok_kms_lookup(provider, false);
	if (byok_kms_check_key_ref(r, key_ref, &err) != BYOK_KMS_OK)
		byok_kms_throw(&err, tenant);

	ks_enter(&acc);
	values[0] = CStringGetTextDatum(tenant);
	ks_exec_once("SELECT 1 FROM byok.tenants WHERE name OPERATOR(pg_catalog.=) $1",
				 1, types, values, NULL);
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("tenant \"%s\" already exists", tenant)));

	/* the onboarding round trip, before anything is written */
	ctx.tenant = tenant;
	ctx.tk_version = 1;
	PG_TRY();
	{
		byok_random_bytes(tk, BYOK_KEY_LEN);
		INSTR_TIME_SET_CURRENT(start);
		st = byok_kms_validate(r, key_ref, &ctx, tk, wrapped, &wrapped_len, &err);
		INSTR_TIME_SET_CURRENT(elapsed);
		INSTR_TIME_SUBTRACT(elapsed, start);
		if (st != BYOK_KMS_OK)
			byok_kms_throw(&err, tenant);
		byok_key_fingerprint(tk, BYOK_KEY_LEN, fp);

		values[1] = CStringGetTextDatum(provider);
		values[2] = CStringGetTextDatum(key_ref);
		ks_exec_once("INSERT INTO byok.tenants (name, provider, key_ref) VALUES ($1, $2, $3) "
					 "RETURNING tenant_id", 3, types, values, NULL);
		memset(&t, 0, sizeof(t));
		t.tenant_id = DatumGetInt32(ks_get(0, 1, &isnull));
		strlcpy(t.name, tenant, sizeof(t.name));
		t.tk_version = 1;

		wb = (bytea *) palloc(VARHDRSZ + wrapped_len);
		SET_VARSIZE(wb, VARHDRSZ + wrapped_len);
		memcpy(VARDATA(wb), wrapped, wrapped_len);
		values[0] = Int32GetDatum(t.tenant_id);
		values[3] = Int32GetDatum(1);
		values[4] = PointerGetDatum(wb);
		values[5] = CStringGetTextDatum(fp);
		types[0] = INT4OID;
		ks_exec_once("INSERT INTO byok.tenant_keys (tenant_id, provider, key_ref, version, wrapped_key, fingerprint) "
					 "VALUES ($1, $2, $3, $4, $5, $6)", 6, types, values, NULL);

		snprintf(detail, sizeof(detail), "provider %s, key %s, round trip %.3f ms",
				 provider, key_ref, INSTR_TIME_GET_MILLISEC(elapsed));
		values[0] = Int32GetDatum(t.tenant_id);
		values[1] = Float8GetDatum(INSTR_TIME_GET_MILLISEC(elapsed));
		types[1] = FLOAT8OID;
		ks_exec_once("UPDATE byok.tenants SET validated_at = pg_catalog.now(), latency_baseline_ms = $2 "
					 "WHERE tenant_id OPERATOR(pg_catalog.=) $1", 2, types, values, NULL);
		ks_event(t.tenant_id, tenant, "tenant_created", NULL, 0, NULL, NULL, detail);
		ks_event(t.tenant_id, tenant, "tenant_key_created", "tk", 1, NULL, fp, NULL);

		byok_tenant_reset(MyDatabaseId, byok_keystore_catalog(), t.tenant_id, tenant);
		ks_insert_dek(&t, "default", 1, tk, false, NULL);
	}
	PG_FINALLY();
	{
		explicit_bzero(tk, sizeof(tk));
	}
	PG_END_TRY();
	ks_leave(&acc);
	ks_bump_epoch = true;
	byok_handle_forget_current();
}

/*
 * A new DEK version for (tenant, scope); returns it.  Serialised per tenant
 * by a row lock on its byok.tenants row.
 */
int32
byok_keystore_rotate_data_key(const char *tenant, const char *scope)
{
	KsAccess	acc;
	KsTenant	t;
	uint8		tk[BYOK_KEY_LEN];
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];
	int32		version;
	bool		isnull;

	byok_check_scope(scope, strlen(scope));
	ks_enter(&acc);
	ks_find_tenant(tenant, KS_LOCK_CHANGE, &t);
	ks_attach(&t);
	ks_declare_scope(scope);
	values[0] = Int32GetDatum(t.tenant_id);
	values[1] = CStringGetTextDatum(scope);
	ks_exec_once("SELECT COALESCE(pg_catalog.max(version), 0) OPERATOR(pg_catalog.+) 1 FROM byok.data_keys "
				 "WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND scope OPERATOR(pg_catalog.=) $2",
				 2, types, values, NULL);
	version = DatumGetInt32(ks_get(0, 1, &isnull));
	PG_TRY();
	{
		ks_tenant_key(&t, tk);
		ks_insert_dek(&t, scope, version, tk, false, NULL);
	}
	PG_FINALLY();
	{
		explicit_bzero(tk, sizeof(tk));
	}
	PG_END_TRY();
	ks_leave(&acc);
	ks_bump_epoch = true;
	byok_handle_forget_current();
	return version;
}

/*
 * An administrator's lockout (revoke = true) or its end.  The catalog
 * changes now; shared memory follows when the transaction commits.
 */
void
byok_keystore_set_revoked(const char *tenant, bool revoke)
{
	KsAccess	acc;
	KsTenant	t;
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];
	KsPending  *p;
	MemoryContext old;

	ks_enter(&acc);
	ks_find_tenant(tenant, KS_LOCK_CHANGE, &t);
	if (t.state == BYOK_TENANT_CMK_DESTROYED)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CMK_DESTROYED),
				 errmsg("tenant \"%s\" is destroyed", tenant)));
	if ((t.state == BYOK_TENANT_REVOKED) == revoke)
	{
		ks_leave(&acc);
		ereport(NOTICE,
				(errmsg("tenant \"%s\" is already %s", tenant, revoke ? "revoked" : "active")));
		return;
	}
	values[0] = Int32GetDatum(t.tenant_id);
	values[1] = CStringGetTextDatum(revoke ? "revoked" : "active");
	ks_exec_once("UPDATE byok.tenants SET state = $2, state_changed_at = pg_catalog.now() "
				 "WHERE tenant_id OPERATOR(pg_catalog.=) $1", 2, types, values, NULL);
	ks_event(t.tenant_id, tenant, revoke ? "tenant_revoked" : "tenant_reinstated",
			 NULL, 0, NULL, NULL, NULL);
	ks_leave(&acc);

	/* the slot must exist at commit, so the change reaches every backend */
	t.slot = byok_tenant_attach(MyDatabaseId, byok_keystore_catalog(), t.tenant_id, t.name,
								t.state, &t.generation);
	old = MemoryContextSwitchTo(TopTransactionContext);
	p = palloc(sizeof(KsPending));
	p->slot = t.slot;
	p->tenant_id = t.tenant_id;
	p->state = revoke ? BYOK_TENANT_REVOKED : BYOK_TENANT_ACTIVE;
	p->rekeyed = false;
	p->subid = GetCurrentSubTransactionId();
	ks_pending = lappend(ks_pending, p);
	MemoryContextSwitchTo(old);
}

/*
 * Wipe the cached keys of one tenant, or of every tenant of this database
 * when 'tenant' is NULL; returns the number of entries wiped.
 */
int
byok_keystore_cache_flush(const char *tenant)
{
	KsAccess	acc;
	KsTenant	t;
	int			purged = 0;
	char		detail[64];
	bool		can_write = !RecoveryInProgress() && !XactReadOnly;

	ks_enter(&acc);
	if (tenant != NULL)
	{
		int			slot;

		ks_find_tenant(tenant, KS_LOCK_NONE, &t);
		slot = byok_tenant_find(MyDatabaseId, byok_keystore_catalog(), t.tenant_id);
		if (slot >= 0)
			purged = byok_tenant_purge(slot);
	}
	else
		purged = byok_cache_flush_database(MyDatabaseId);
	snprintf(detail, sizeof(detail), "%d cache entries wiped", purged);
	if (can_write)
		ks_event(tenant ? t.tenant_id : 0, tenant, "cache_flushed", NULL, 0, NULL, NULL, detail);
	ks_leave(&acc);
	byok_handle_release();
	return purged;
}

/* ---- transaction hooks ---- */

/*
 * End of the top-level transaction: on commit, apply pending tenant state
 * changes to shared memory and bump the catalog epoch if DEKs changed.
 * Never raises an error.
 */
void
byok_keystore_xact_end(bool commit)
{
	ListCell   *lc;

	if (commit)
	{
		foreach(lc, ks_pending)
		{
			KsPending  *p = lfirst(lc);

			if (p->rekeyed)
				byok_tenant_rekeyed(p->slot, p->tenant_id);
			else
				byok_tenant_set_state(p->slot, p->tenant_id, p->state);
		}
		if (ks_flush_at_commit)
			byok_cache_flush_database(MyDatabaseId);
		if (ks_bump_epoch || ks_flush_at_commit)
			byok_catalog_epoch_bump();
	}
	ks_pending = NIL;
	ks_ledger_lines = NULL;
	ks_created = NULL;
	ks_ncreated = ks_created_cap = 0;
	ks_bump_epoch = false;
	ks_flush_at_commit = false;
}

/*
 * Catalog rows were deleted outside byok's functions: at commit, wipe every
 * cached key of this database and make every backend look up its current
 * DEKs again.
 */
void
byok_keystore_catalog_changed(void)
{
	ks_flush_at_commit = true;
}

/* A subtransaction aborted: drop the state changes it made. */
void
byok_keystore_subxact_abort(SubTransactionId subid)
{
	ListCell   *lc;

	foreach(lc, ks_pending)
	{
		KsPending  *p = lfirst(lc);

		if (p->subid == subid)
			ks_pending = foreach_delete_current(ks_pending, lc);
	}
}

bool
byok_keystore_has_pending(void)
{
	return ks_pending != NIL;
}

/*
 * The revocation drill for 'tenant' (see byok_tenant_drill), recorded in
 * the audit log.  Refuses a tenant that is already locked out.
 */
void
byok_keystore_drill(const char *tenant, ByokDrillResult *result)
{
	KsAccess	acc;
	KsTenant	t;
	char		detail[256];
	ByokTenantState st;

	ks_enter(&acc);
	ks_find_tenant(tenant, KS_LOCK_NONE, &t);
	t.slot = byok_tenant_attach(MyDatabaseId, byok_keystore_catalog(), t.tenant_id,
								t.name, t.state, &t.generation);
	st = pg_atomic_read_u32(&byok_tenant_slot(t.slot)->state);
	if (st != BYOK_TENANT_ACTIVE)
		byok_raise_tenant_state(st, t.name);
	byok_handle_release();		/* our own handles must not count as stale */
	byok_tenant_drill(t.slot, t.tenant_id, result);
	snprintf(detail, sizeof(detail),
			 "lockout %.3f ms, %d cached keys wiped, %d residual, %d stale handles",
			 result->lockout_us / 1000.0, result->purged, result->residual,
			 result->stale_handles);
	if (!RecoveryInProgress() && !XactReadOnly)
		ks_event(t.tenant_id, t.name, "revocation_drill", NULL, 0, NULL, NULL, detail);
	ks_leave(&acc);
}

/* fill one check's outcome */
static void
ks_check(ByokCheck *c, const char *name, bool ok, instr_time start, const char *fmt,...)
	pg_attribute_printf(5, 6);

static void
ks_check(ByokCheck *c, const char *name, bool ok, instr_time start, const char *fmt,...)
{
	va_list		ap;
	instr_time	took;

	INSTR_TIME_SET_CURRENT(took);
	INSTR_TIME_SUBTRACT(took, start);
	c->check = name;
	c->ok = ok;
	c->ms = INSTR_TIME_GET_MILLISEC(took);
	va_start(ap, fmt);
	vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
	va_end(ap);
}

static void
ks_check_err(ByokCheck *c, const char *name, instr_time start, const ByokKmsError *err)
{
	ks_check(c, name, false, start, "%s: %s: %s", byok_kms_status_name(err->status),
			 err->remote_code, err->message);
}

/*
 * byok_validate_tenant(): the onboarding checks again, on demand, against
 * the tenant's provider, whatever the tenant's state: the key reference,
 * the CMK's state, a wrap and an unwrap of a throw-away key, and an unwrap
 * of the tenant's own TK checked against its recorded fingerprint.  Records
 * the round trip as the tenant's latency baseline.
 */
void
byok_keystore_validate(const char *tenant, ByokCheck *checks)
{
	KsAccess	acc;
	KsTenant	t;
	const ByokKmsRoutine *r;
	ByokKmsError err;
	ByokKmsContext ctx;
	ByokKeyState state = BYOK_KEY_ENABLED;
	instr_time	start;
	uint8		probe[BYOK_KEY_LEN];
	uint8		wrapped[BYOK_MAX_WRAPPED];
	uint8		back[BYOK_MAX_WRAPPED];
	int			wlen = 0;
	int			blen = 0;
	char		fp[BYOK_FINGERPRINT_LEN];
	char		want_fp[BYOK_FINGERPRINT_LEN];
	volatile double baseline = 0;
	volatile int passed = 0;
	Oid			types[2] = {INT4OID, FLOAT8OID};
	Datum		values[2];
	char		detail[128];

	ks_enter(&acc);
	ks_find_tenant(tenant, KS_LOCK_NONE, &t);
	values[0] = Int32GetDatum(t.tenant_id);
	values[1] = Int32GetDatum(t.tk_version);
	types[1] = INT4OID;
	ks_exec_once("SELECT fingerprint FROM byok.tenant_keys WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
				 "AND version OPERATOR(pg_catalog.=) $2", 2, types, values, NULL);
	want_fp[0] = '\0';
	if (SPI_processed == 1)
		ks_get_text(0, 1, want_fp, sizeof(want_fp));
	r = byok_kms_lookup(t.provider, false);
	ctx.tenant = t.name;
	ctx.tk_version = t.tk_version;
	memset(checks, 0, sizeof(ByokCheck) * BYOK_VALIDATE_CHECKS);

	INSTR_TIME_SET_CURRENT(start);
	if (byok_kms_check_key_ref(r, t.key_ref, &err) == BYOK_KMS_OK)
		ks_check(&checks[0], "key_reference", true, start, "provider %s, key %s", t.provider, t.key_ref);
	else
		ks_check_err(&checks[0], "key_reference", start, &err);

	INSTR_TIME_SET_CURRENT(start);
	if (byok_kms_key_state(r, t.key_ref, byok_kms_wrapped_version(r, t.wrapped, t.wrapped_len),
						   &state, &err) != BYOK_KMS_OK)
		ks_check_err(&checks[1], "key_state", start, &err);
	else
		ks_check(&checks[1], "key_state", state == BYOK_KEY_ENABLED, start, "the key is %s",
				 state == BYOK_KEY_ENABLED ? "enabled" :
				 state == BYOK_KEY_DISABLED ? "disabled" : "destroyed");

	PG_TRY();
	{
		byok_random_bytes(probe, BYOK_KEY_LEN);
		INSTR_TIME_SET_CURRENT(start);
		if (byok_kms_wrap(r, t.key_ref, &ctx, probe, BYOK_KEY_LEN, wrapped, &wlen, &err) != BYOK_KMS_OK)
			ks_check_err(&checks[2], "wrap", start, &err);
		else
			ks_check(&checks[2], "wrap", true, start, "a throw-away key wrapped into %d bytes", wlen);

		INSTR_TIME_SET_CURRENT(start);
		if (!checks[2].ok)
			ks_check(&checks[3], "unwrap", false, start, "skipped: nothing was wrapped");
		else if (byok_kms_unwrap(r, t.key_ref, &ctx, wrapped, wlen, back, &blen, &err) != BYOK_KMS_OK)
			ks_check_err(&checks[3], "unwrap", start, &err);
		else
			ks_check(&checks[3], "unwrap", blen == BYOK_KEY_LEN && memcmp(back, probe, BYOK_KEY_LEN) == 0,
					 start, blen == BYOK_KEY_LEN && memcmp(back, probe, BYOK_KEY_LEN) == 0 ?
					 "the throw-away key came back intact" : "the key that came back differs");
		if (checks[2].ok && checks[3].ok)
			baseline = checks[2].ms + checks[3].ms;

		INSTR_TIME_SET_CURRENT(start);
		blen = 0;
		if (byok_kms_unwrap(r, t.key_ref, &ctx, t.wrapped, t.wrapped_len, back, &blen, &err) != BYOK_KMS_OK)
			ks_check_err(&checks[4], "tenant_key", start, &err);
		else
		{
			byok_key_fingerprint(back, Min(blen, BYOK_KEY_LEN), fp);
			ks_check(&checks[4], "tenant_key", blen == BYOK_KEY_LEN && strcmp(fp, want_fp) == 0, start,
					 "tenant key version %d %s its recorded fingerprint %s", t.tk_version,
					 strcmp(fp, want_fp) == 0 ? "unwraps to" : "does NOT match", want_fp);
		}
	}
	PG_FINALLY();
	{
		explicit_bzero(probe, sizeof(probe));
		explicit_bzero(back, sizeof(back));
	}
	PG_END_TRY();

	for (int i = 0; i < BYOK_VALIDATE_CHECKS; i++)
		passed += checks[i].ok ? 1 : 0;
	snprintf(detail, sizeof(detail), "%d of %d checks passed; round trip %.3f ms",
			 passed, BYOK_VALIDATE_CHECKS, baseline);
	if (!RecoveryInProgress() && !XactReadOnly)
	{
		if (baseline > 0)
		{
			values[0] = Int32GetDatum(t.tenant_id);
			values[1] = Float8GetDatum(baseline);
			types[1] = FLOAT8OID;
			ks_exec_once("UPDATE byok.tenants SET validated_at = pg_catalog.now(), latency_baseline_ms = $2 "
						 "WHERE tenant_id OPERATOR(pg_catalog.=) $1", 2, types, values, NULL);
		}
		ks_event(t.tenant_id, t.name, "tenant_validated", NULL, 0, NULL, NULL, detail);
	}
	ks_leave(&acc);
}

/*
 * byok_destroy_tenant(): crypto-shredding.  The wrapped TKs and DEKs of the
 * tenant are deleted (their catalog rows stay as tombstones, so
 * byok_ciphertext_info() and the audit trail keep their meaning), the
 * tenant is marked destroyed, and every backend locks it out for good when
 * the transaction commits.  Returns the destruction certificate (JSON
 * text), also stored in byok.key_events; the fingerprints of the destroyed
 * tenant keys go to byok.destruction_ledger at commit.
 */
char *
byok_keystore_destroy(const char *tenant)
{
	KsAccess	acc;
	KsTenant	t;
	Oid			types[6] = {INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[6];
	char	   *cert;
	char	   *lines;
	bool		isnull;
	KsPending  *p;
	MemoryContext old;
	static const char remains[] =
		"Backups, dumps and replicas taken before this destruction still hold the wrapped tenant key "
		"and stay readable for as long as the customer's CMK exists, unless the cluster that restores "
		"them has byok.destruction_ledger listing this key. To make them unreadable everywhere, the "
		"customer must also disable or delete its CMK.";

	ks_enter(&acc);
	ks_find_tenant(tenant, KS_LOCK_CHANGE, &t);
	if (t.state == BYOK_TENANT_CMK_DESTROYED)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CMK_DESTROYED),
				 errmsg("tenant \"%s\" is already destroyed", tenant)));
	values[0] = Int32GetDatum(t.tenant_id);
	values[1] = CStringGetTextDatum(t.name);
	values[2] = CStringGetTextDatum(GetUserNameFromId(acc.userid, false));
	values[3] = CStringGetTextDatum(byok_destruction_ledger ? byok_destruction_ledger : "");
	values[4] = CStringGetTextDatum(remains);
	values[5] = CStringGetTextDatum(t.provider);
	ks_exec_once(
		"SELECT pg_catalog.jsonb_build_object("
		" 'certificate', 'byok destruction certificate v1',"
		" 'tenant', $2, 'tenant_id', $1, 'database', pg_catalog.current_database(),"
		" 'provider', t.provider, 'key_ref', t.key_ref,"
		" 'destroyed_at', pg_catalog.now(), 'destroyed_by', $3, 'session_user', SESSION_USER,"
		" 'tenant_keys', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object("
		"     'version', k.version, 'provider', k.provider, 'key_ref', k.key_ref,"
		"     'fingerprint', k.fingerprint,"
		"     'wrapped_key_sha256', pg_catalog.encode(pg_catalog.sha256(k.wrapped_key), 'hex')) ORDER BY k.version), '[]')"
		"   FROM byok.tenant_keys k WHERE k.tenant_id OPERATOR(pg_catalog.=) $1 AND k.wrapped_key IS NOT NULL),"
		" 'data_keys', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object("
		"     'dek_id', d.dek_id, 'scope', d.scope, 'version', d.version, 'fingerprint', d.fingerprint,"
		"     'wrapped_key_sha256', pg_catalog.encode(pg_catalog.sha256(d.wrapped_key), 'hex')) ORDER BY d.dek_id), '[]')"
		"   FROM byok.data_keys d WHERE d.tenant_id OPERATOR(pg_catalog.=) $1 AND d.wrapped_key IS NOT NULL),"
		" 'destruction_ledger', CASE WHEN $4 OPERATOR(pg_catalog.=) '' THEN NULL ELSE $4 END,"
		" 'what_remains', $5)::pg_catalog.text,"
		" (SELECT pg_catalog.string_agg(pg_catalog.encode(pg_catalog.sha256(k.wrapped_key), 'hex') OPERATOR(pg_catalog.||) ' '"
		"     OPERATOR(pg_catalog.||) pg_catalog.date_part('epoch', pg_catalog.now())::pg_catalog.int8::pg_catalog.text OPERATOR(pg_catalog.||) ' '"
		"     OPERATOR(pg_catalog.||) (SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())::pg_catalog.text"
		"     OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) $2 OPERATOR(pg_catalog.||) E'\\n', '')"
		"   FROM byok.tenant_keys k WHERE k.tenant_id OPERATOR(pg_catalog.=) $1 AND k.wrapped_key IS NOT NULL)"
		" FROM byok.tenants t WHERE t.tenant_id OPERATOR(pg_catalog.=) $1 AND $6 IS NOT NULL",
		6, types, values, NULL);
	cert = TextDatumGetCString(ks_get(0, 1, &isnull));
	{
		Datum		d = ks_get(0, 2, &isnull);

		lines = isnull ? pstrdup("") : TextDatumGetCString(d);
	}
	cert = MemoryContextStrdup(CurTransactionContext, cert);
	ks_exec_once("UPDATE byok.data_keys SET wrapped_key = NULL WHERE tenant_id OPERATOR(pg_catalog.=) $1",
				 1, types, values, NULL);
	ks_exec_once("UPDATE byok.tenant_keys SET wrapped_key = NULL WHERE tenant_id OPERATOR(pg_catalog.=) $1",
				 1, types, values, NULL);
	ks_exec_once("UPDATE byok.tenants SET state = 'destroyed', state_changed_at = pg_catalog.now() "
				 "WHERE tenant_id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL);
	ks_event(t.tenant_id, t.name, "tenant_destroyed", NULL, 0, NULL, NULL, cert);
	ks_leave(&acc);

	/* at commit: every backend locks the tenant out for good, the ledger learns the keys */
	t.slot = byok_tenant_attach(MyDatabaseId, byok_keystore_catalog(), t.tenant_id, t.name,
								BYOK_TENANT_ACTIVE, &t.generation);
	old = MemoryContextSwitchTo(TopTransactionContext);
	p = palloc(sizeof(KsPending));
	p->slot = t.slot;
	p->tenant_id = t.tenant_id;
	p->state = BYOK_TENANT_CMK_DESTROYED;
	p->rekeyed = false;
	p->subid = GetCurrentSubTransactionId();
	ks_pending = lappend(ks_pending, p);
	if (ks_ledger_lines == NULL)
		ks_ledger_lines = makeStringInfo();
	appendStringInfoString(ks_ledger_lines, lines);
	MemoryContextSwitchTo(old);
	ks_bump_epoch = true;
	byok_handle_forget_current();
	return cert;
}

/*
 * Just before commit: write what must be durable outside the database
 * first (the destruction ledger).  An error here aborts the transaction.
 */
void
byok_keystore_pre_commit(void)
{
	if (ks_ledger_lines != NULL && ks_ledger_lines->len > 0)
		byok_ledger_append(ks_ledger_lines->data);
}

/* At commit, wipe the tenant's cached keys and forget its CMK (see callers). */
static void
ks_pending_rekeyed(KsTenant *t)
{
	KsPending  *p;
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

	p = palloc(sizeof(KsPending));
	p->slot = t->slot;
	p->tenant_id = t->tenant_id;
	p->state = BYOK_TENANT_ACTIVE;
	p->rekeyed = true;
	p->subid = GetCurrentSubTransactionId();
	ks_pending = lappend(ks_pending, p);
	MemoryContextSwitchTo(old);
}

static bytea *
ks_bytea(const uint8 *data, int len)
{
	bytea	   *b = (bytea *) palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return b;
}

/*
 * byok_rotate_tenant_key(): a new TK version, wrapped by the CMK (one
 * provider wrap); every DEK of the tenant unwrapped with the old TK (from
 * the cache, or one provider unwrap) and wrapped again under the new one,
 * in this transaction, with no data rewritten; the old TK's wrapped copy is
 * then deleted.  Returns the new version.
 */
int32
byok_keystore_rotate_tenant_key(const char *tenant)
{
	KsAccess	acc;
	KsTenant	t;
	const ByokKmsRoutine *r;
	ByokKmsContext ctx;
	ByokKmsError err;
	uint8		old_tk[BYOK_KEY_LEN];
	uint8		new_tk[BYOK_KEY_LEN];
	uint8		wrapped[BYOK_MAX_WRAPPED];
	int			wlen = 0;
	char		fp[BYOK_FINGERPRINT_LEN];
	char		detail[128];
	volatile int ndeks = 0;
	int32		version;
	Oid			types[6] = {INT4OID, INT4OID, TEXTOID, TEXTOID, BYTEAOID, TEXTOID};
	Datum		values[6];

	ks_enter(&acc);
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("byok_rotate_tenant_key() must run at READ COMMITTED"),
				 errdetail("It must see every data key committed while it waited for its lock.")));
	ks_find_tenant(tenant, KS_LOCK_REKEY, &t);
	if (t.state == BYOK_TENANT_CMK_DESTROYED || t.wrapped_len == 0)
		ks_raise_destroyed(t.name);
	ks_attach(&t);
	r = byok_kms_lookup(t.provider, false);
	version = t.tk_version + 1;
	ctx.tenant = t.name;
	ctx.tk_version = version;
	PG_TRY();
	{
		ks_tenant_key(&t, old_tk);
		byok_random_bytes(new_tk, BYOK_KEY_LEN);
		if (byok_kms_wrap(r, t.key_ref, &ctx, new_tk, BYOK_KEY_LEN, wrapped, &wlen, &err) != BYOK_KMS_OK)
			byok_kms_throw(&err, t.name);
		byok_key_fingerprint(new_tk, BYOK_KEY_LEN, fp);
		values[0] = Int32GetDatum(t.tenant_id);
		values[1] = Int32GetDatum(version);
		values[2] = CStringGetTextDatum(t.provider);
		values[3] = CStringGetTextDatum(t.key_ref);
		values[4] = PointerGetDatum(ks_bytea(wrapped, wlen));
		values[5] = CStringGetTextDatum(fp);
		ks_exec_once("INSERT INTO byok.tenant_keys (tenant_id, version, provider, key_ref, wrapped_key, fingerprint) "
					 "VALUES ($1, $2, $3, $4, $5, $6)", 6, types, values, NULL);

		/* every DEK: unwrap with the old TK, wrap with the new one */
		ks_exec_once("SELECT dek_id, scope, version, wrapped_key FROM byok.data_keys "
					 "WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND wrapped_key IS NOT NULL ORDER BY dek_id",
					 1, types, values, NULL);
		{
			SPITupleTable *deks = SPI_tuptable;
			uint64		n = SPI_processed;

			for (uint64 i = 0; i < n; i++)
			{
				bool		n1, n2, n3, n4;
				int64		dek_id = DatumGetInt64(SPI_getbinval(deks->vals[i], deks->tupdesc, 1, &n1));
				Datum		sd = SPI_getbinval(deks->vals[i], deks->tupdesc, 2, &n2);
				int32		dver = DatumGetInt32(SPI_getbinval(deks->vals[i], deks->tupdesc, 3, &n3));
				Datum		wd = SPI_getbinval(deks->vals[i], deks->tupdesc, 4, &n4);
				text	   *st = n2 ? NULL : DatumGetTextPP(sd);
				bytea	   *w = n4 ? NULL : DatumGetByteaPP(wd);
				const char *scope = st ? VARDATA_ANY(st) : NULL;
				size_t		slen = st ? VARSIZE_ANY_EXHDR(st) : 0;
				uint8		aad[BYOK_ROW_AAD_MAX];
				size_t		aad_len;
				uint8		dek[BYOK_KEY_LEN];
				uint8		rew[BYOK_WRAPPED_LEN(BYOK_KEY_LEN)];
				Oid			utypes[3] = {INT8OID, BYTEAOID, INT4OID};
				Datum		uvalues[3];
				ByokRowError e;

				if (n1 || n3)
					ks_raise_row(BYOK_ROW_BAD_VERSION, n1 ? 0 : dek_id, t.name);
				e = byok_row_unwrap_dek(old_tk, t.tenant_id, scope, slen, dver,
										w ? (uint8 *) VARDATA_ANY(w) : NULL, w ? VARSIZE_ANY_EXHDR(w) : 0, dek);
				if (e == BYOK_ROW_OK)
					e = byok_row_dek_aad(t.tenant_id, scope, slen, dver, aad, &aad_len);
				if (e != BYOK_ROW_OK)
					ks_raise_row(e, dek_id, t.name);
				byok_gcm_wrap(new_tk, aad, (int) aad_len, dek, BYOK_KEY_LEN, rew);
				explicit_bzero(dek, sizeof(dek));
				uvalues[0] = Int64GetDatum(dek_id);
				uvalues[1] = PointerGetDatum(ks_bytea(rew, sizeof(rew)));
				uvalues[2] = Int32GetDatum(version);
				ks_exec_once("UPDATE byok.data_keys SET wrapped_key = $2, tk_version = $3 "
							 "WHERE dek_id OPERATOR(pg_catalog.=) $1", 3, utypes, uvalues, NULL);
				ndeks++;
			}
		}
	}
	PG_FINALLY();
	{
		explicit_bzero(old_tk, sizeof(old_tk));
		explicit_bzero(new_tk, sizeof(new_tk));
	}
	PG_END_TRY();

	ks_exec_once("UPDATE byok.tenant_keys SET wrapped_key = NULL "
				 "WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.<) $2",
				 2, types, values, NULL);
	ks_exec_once("UPDATE byok.tenants SET tk_version = $2 WHERE tenant_id OPERATOR(pg_catalog.=) $1",
				 2, types, values, NULL);
	snprintf(detail, sizeof(detail), "%d data keys rewrapped; tenant key version %d deleted",
			 ndeks, version - 1);
	ks_event(t.tenant_id, t.name, "tenant_key_rotated", "tk", version, NULL, fp, detail);
	ks_leave(&acc);
	ks_pending_rekeyed(&t);
	ks_bump_epoch = true;
	byok_handle_forget_current();
	return version;
}

/*
 * byok_rewrap_tenant(): move a tenant to another CMK (same or another
 * provider).  The new CMK is validated as onboarding does; the TK is
 * unwrapped under the old CMK (from the cache, or one provider unwrap) and
 * wrapped under the new one (one provider wrap).  No DEK and no data
 * changes.  At commit the tenant's cached keys are wiped and its old CMK
 * forgotten, so the poller watches the new one from the next unwrap on and
 * the old CMK can be disabled without loss.
 */
void
byok_keystore_rewrap(const char *tenant, const char *provider, const char *key_ref)
{
	KsAccess	acc;
	KsTenant	t;
	const ByokKmsRoutine *r;
	ByokKmsContext ctx;
	ByokKmsError err;
	uint8		tk[BYOK_KEY_LEN];
	uint8		probe[BYOK_KEY_LEN];
	uint8		wrapped[BYOK_MAX_WRAPPED];
	int			wlen = 0;
	char		detail[BYOK_MAX_KEY_REF * 2 + 64];
	Oid			types[4] = {INT4OID, TEXTOID, TEXTOID, BYTEAOID};
	Datum		values[4];

	r = byok_kms_lookup(provider, false);
	ks_enter(&acc);
	ks_find_tenant(tenant, KS_LOCK_CHANGE, &t);
	if (t.state == BYOK_TENANT_CMK_DESTROYED || t.wrapped_len == 0)
		ks_raise_destroyed(t.name);
	ks_attach(&t);
	ctx.tenant = t.name;
	ctx.tk_version = t.tk_version;
	PG_TRY();
	{
		/* the new CMK must pass the onboarding checks first */
		byok_random_bytes(probe, BYOK_KEY_LEN);
		if (byok_kms_validate(r, key_ref, &ctx, probe, wrapped, &wlen, &err) != BYOK_KMS_OK)
			byok_kms_throw(&err, t.name);
		ks_tenant_key(&t, tk);
		if (byok_kms_wrap(r, key_ref, &ctx, tk, BYOK_KEY_LEN, wrapped, &wlen, &err) != BYOK_KMS_OK)
			byok_kms_throw(&err, t.name);
	}
	PG_FINALLY();
	{
		explicit_bzero(tk, sizeof(tk));
		explicit_bzero(probe, sizeof(probe));
	}
	PG_END_TRY();
	values[0] = Int32GetDatum(t.tenant_id);
	values[1] = CStringGetTextDatum(provider);
	values[2] = CStringGetTextDatum(key_ref);
	values[3] = PointerGetDatum(ks_bytea(wrapped, wlen));
	ks_exec_once("UPDATE byok.tenant_keys SET provider = $2, key_ref = $3, wrapped_key = $4 "
				 "WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) "
				 "(SELECT tk_version FROM byok.tenants WHERE tenant_id OPERATOR(pg_catalog.=) $1)",
				 4, types, values, NULL);
	ks_exec_once("UPDATE byok.tenants SET provider = $2, key_ref = $3 WHERE tenant_id OPERATOR(pg_catalog.=) $1",
				 3, types, values, NULL);
	snprintf(detail, sizeof(detail), "from %s key %s to %s key %s", t.provider, t.key_ref, provider, key_ref);
	ks_event(t.tenant_id, t.name, "tenant_rewrapped", "tk", t.tk_version, NULL, NULL, detail);
	ks_leave(&acc);
	ks_pending_rekeyed(&t);
}

/*
 * For re-encryption: the tenant and scope of DEK 'dek_id' and the id of
 * the DEK new encryptions of that scope use.  False if the DEK is unknown.
 */
bool
byok_keystore_dek_scope(int64 dek_id, char *tenant, char *scope, int32 *version, int64 *current)
{
	KsAccess	acc;
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(dek_id)};
	bool		isnull;
	bool		found;

	byok_keystore_catalog();
	ks_enter(&acc);
	ks_exec_once("SELECT t.name, d.scope, (SELECT c.dek_id FROM byok.data_keys c "
				 "  WHERE c.tenant_id OPERATOR(pg_catalog.=) d.tenant_id AND c.scope OPERATOR(pg_catalog.=) d.scope "
				 "  ORDER BY c.version DESC LIMIT 1), d.version "
				 "FROM byok.data_keys d JOIN byok.tenants t ON t.tenant_id OPERATOR(pg_catalog.=) d.tenant_id "
				 "WHERE d.dek_id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL);
	found = SPI_processed == 1;
	if (found)
	{
		ks_get_text(0, 1, tenant, NAMEDATALEN);
		ks_get_text(0, 2, scope, BYOK_MAX_SCOPE + 1);
		*current = DatumGetInt64(ks_get(0, 3, &isnull));
		*version = DatumGetInt32(ks_get(0, 4, &isnull));
	}
	ks_leave(&acc);
	return found;
}

/*
 * Persist a DEK's usage count (values sealed under it), never lowering it.
 * In the committing transaction; skipped where nothing can be written.
 */
void
byok_keystore_save_usage(int64 dek_id, uint64 used)
{
	KsAccess	acc;
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2] = {Int64GetDatum(dek_id), Int64GetDatum((int64) used)};

	if (RecoveryInProgress() || XactReadOnly)
		return;
	/* called just before commit, where no snapshot is active any more */
	PushActiveSnapshot(GetTransactionSnapshot());
	ks_enter(&acc);
	ks_exec_once("UPDATE byok.data_keys SET encryptions = GREATEST(encryptions, $2) "
				 "WHERE dek_id OPERATOR(pg_catalog.=) $1", 2, types, values, NULL);
	ks_leave(&acc);
	PopActiveSnapshot();
}

/*
 * The usage limit of DEK 'dek_id' of (tenant, scope) is reached: make the
 * next version, unless another session already did.  Returns the DEK id new
 * encryptions now use.
 */
int64
byok_keystore_rotate_for_limit(const char *tenant, const char *scope, int64 dek_id)
{
	KsAccess	acc;
	KsTenant	t;
	uint8		tk[BYOK_KEY_LEN];
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];
	bool		isnull;
	int64		current;
	int32		version;

	ks_enter(&acc);
	ks_find_tenant(tenant, KS_LOCK_CHANGE, &t);	/* serialises rotations of this tenant */
	values[0] = Int32GetDatum(t.tenant_id);
	values[1] = CStringGetTextDatum(scope);
	ks_exec_once("SELECT dek_id, version FROM byok.data_keys WHERE tenant_id OPERATOR(pg_catalog.=) $1 "
				 "AND scope OPERATOR(pg_catalog.=) $2 ORDER BY version DESC LIMIT 1", 2, types, values, NULL);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("byok catalog row is corrupt"),
				 errdetail("Tenant \"%s\" has no data key row for scope \"%s\" any more.", tenant, scope)));
	current = DatumGetInt64(ks_get(0, 1, &isnull));
	version = DatumGetInt32(ks_get(0, 2, &isnull));
	if (isnull || version <= 0 || version == PG_INT32_MAX)
		ks_raise_row(BYOK_ROW_BAD_VERSION, current, tenant);
	version++;
	if (current == dek_id)
	{
		ks_attach(&t);
		PG_TRY();
		{
			ks_tenant_key(&t, tk);
			current = ks_insert_dek(&t, scope, version, tk, false,
									"automatic: byok.dek_max_encryptions reached");
		}
		PG_FINALLY();
		{
			explicit_bzero(tk, sizeof(tk));
		}
		PG_END_TRY();
		ks_bump_epoch = true;
	}
	ks_leave(&acc);
	return current;
}
