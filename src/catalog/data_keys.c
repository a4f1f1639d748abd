/*-------------------------------------------------------------------------
 *
 * catalog/data_keys.c
 *		The key-miss path and data keys: byok.data_keys, the reads of
 *		byok.tenant_keys it needs, and byok.scopes.
 *
 * The miss path.  byok_keystore_load_dek() reads one DEK row with its
 * tenant and TK, attaches the tenant's shared slot (which raises if the
 * tenant is locked out), gets the TK from the shared cache or else from the
 * provider, unwraps the DEK and installs both in the shared cache.  No lock
 * is held while the provider works; byok_cache_put() refuses to install a
 * key if the tenant's generation moved meanwhile (revoked mid-flight).
 * When several backends miss the same TK at once, one calls the provider
 * and the others wait for it (single flight, bounded by byok.kms_timeout).
 * A TK listed in the destruction ledger is never unwrapped again.
 *
 * Data keys.  byok_keystore_current_dek() names the DEK new encryptions of
 * (tenant, scope) use, making version 1 of a declared scope on first use;
 * rotation (by an administrator, or when byok.dek_max_encryptions is
 * reached) makes the next version.
 *
 * Locking.  No LWLock is held here across anything: the shared cache takes
 * its own, briefly, and never across a provider call.  Row locks on the
 * tenant's byok.tenants row: making a scope's first DEK takes FOR KEY
 * SHARE, so a tenant-key rotation in flight finishes first (and waits for
 * it); a rotation takes KS_LOCK_CHANGE, so rotations of a tenant
 * serialise.
 *
 * Key lifetime.  TK and DEK bytes pass through stack buffers only, wiped in
 * PG_FINALLY blocks on every path.  Catalog rows hold wrapped keys only.
 * DEKs created by the running transaction stay out of the shared cache
 * until it commits (ks_created, xact.c), so an aborted creation leaves no
 * key behind.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "catalog/catalog_internal.h"
#include "catalog/ledger.h"
#include "crypto/envelope.h"
#include "guc.h"
#include "providers/kms.h"

static SPIPlanPtr plan_load_dek = NULL;
static SPIPlanPtr plan_current = NULL;
static SPIPlanPtr plan_tenant_share = NULL;
static SPIPlanPtr plan_scope = NULL;

/* ---- the tenant key ---- */

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
void
ks_attach(KsTenant *t)
{
	ByokTenantState st;

	t->slot = byok_tenant_attach(MyDatabaseId, byok_keystore_catalog(), t->tenant_id,
								 t->name, t->state, &t->generation);
	ks_citus_converge(t);
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

		if (byok_tenant_provider_state(t->slot, t->tenant_id, BYOK_TENANT_CMK_DESTROYED, true,
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
									   false,
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
void
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

/* ---- data keys ---- */

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

int64
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
	return version;
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
	/* on Citus the coordinator's count is what every node reserved (citus.c) */
	if (!ks_citus_active())
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
	if (ks_citus_worker())
	{
		/* a worker writes no catalog: the coordinator rotates, every copy shows it */
		current = ks_citus_rotate_on_coordinator(tenant, scope, dek_id);
		ks_leave(&acc);
		return current;
	}
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

/*
 * Does byok.protected_columns register a column of table 'tschema'.'tname'
 * (any table when NULL; with 'col', that column, protected)?  For the
 * event triggers: through ks_exec they read this node's own copy of the
 * registry, never through Citus (a query on a shard may not start a
 * distributed one, and Citus answers no rows while an ALTER TABLE runs).
 */
bool
byok_keystore_protected(const char *tschema, const char *tname, const char *col)
{
	static SPIPlanPtr plan_any = NULL;
	static SPIPlanPtr plan_table = NULL;
	static SPIPlanPtr plan_column = NULL;
	KsAccess	acc;
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	uint64		n;

	ks_enter(&acc);
	/* (a node still waiting for its copy has no table of its own protected) */
	if (ks_citus_missing("protected_columns"))
		n = 0;
	else if (tschema == NULL || tname == NULL)
		n = ks_exec(&plan_any, "SELECT 1 FROM byok.protected_columns LIMIT 1", 0, NULL, NULL, NULL, true);
	else
	{
		values[0] = CStringGetTextDatum(tschema);
		values[1] = CStringGetTextDatum(tname);
		if (col == NULL)
			n = ks_exec(&plan_table, "SELECT 1 FROM byok.protected_columns "
						"WHERE table_schema::pg_catalog.text OPERATOR(pg_catalog.=) $1 "
						"AND table_name::pg_catalog.text OPERATOR(pg_catalog.=) $2 LIMIT 1",
						2, types, values, NULL, true);
		else
		{
			values[2] = CStringGetTextDatum(col);
			n = ks_exec(&plan_column, "SELECT 1 FROM byok.protected_columns "
						"WHERE table_schema::pg_catalog.text OPERATOR(pg_catalog.=) $1 "
						"AND table_name::pg_catalog.text OPERATOR(pg_catalog.=) $2 "
						"AND column_name::pg_catalog.text OPERATOR(pg_catalog.=) $3 "
						"AND state OPERATOR(pg_catalog.=) 'protected' LIMIT 1",
						3, types, values, NULL, true);
		}
	}
	ks_leave(&acc);
	return n > 0;
}
