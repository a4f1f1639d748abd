/*-------------------------------------------------------------------------
 *
 * catalog/tenants.c
 *		Tenant lifecycle: the writes of byok.tenants and byok.tenant_keys.
 *
 * Onboarding (byok_create_tenant: a provider round trip before anything is
 * written), revocation and reinstatement, the cache flush, the revocation
 * drill, validation against the provider, destruction (crypto-shredding,
 * with a certificate), tenant-key rotation (every DEK rewrapped, no data
 * rewritten) and the move to another CMK (rewrap).
 *
 * Transactions.  Tenant state changes (revoke, reinstate, destroy) take
 * effect in shared memory when their transaction commits
 * (XACT_EVENT_COMMIT, xact.c), so an aborted revoke changes nothing; so do
 * the wipes after a tenant-key rotation or rewrap, and the destruction
 * ledger's lines (written just before commit).  The callers in sql/ drop
 * this backend's key handles after a change, since they may hold a key or
 * DEK id the change made stale.
 *
 * Locking.  No LWLock is held here across anything; no provider call runs
 * under a lock.  Row locks on the tenant's byok.tenants row: revoke,
 * destroy and rewrap take KS_LOCK_CHANGE (FOR NO KEY UPDATE), so changes
 * of one tenant serialise; a tenant-key rotation takes KS_LOCK_REKEY (FOR
 * UPDATE), which also waits for sessions making a first DEK (FOR KEY
 * SHARE), and runs at READ COMMITTED only, so it sees every DEK committed
 * while it waited.
 *
 * Key lifetime.  TK, DEK and probe-key bytes pass through stack buffers
 * only, wiped in PG_FINALLY blocks on every path (a rotation wipes each
 * DEK as soon as it is rewrapped).  Catalog rows hold wrapped keys only;
 * a destroyed tenant's wrapped keys are deleted, their rows kept as
 * tombstones.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type_d.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "cache/wal.h"
#include "catalog/catalog_internal.h"
#include "crypto/envelope.h"
#include "guc.h"
#include "providers/kms.h"

/* ---- onboarding, lockout, flush ---- */

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
	p->catalog = byok_keystore_catalog();
	strlcpy(p->name, t.name, sizeof(p->name));
	p->state = revoke ? BYOK_TENANT_REVOKED : BYOK_TENANT_ACTIVE;
	p->rekeyed = false;
	p->ledger = NULL;
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
	int32		flushed;
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
	/* the standbys wipe the same keys (cache/wal.c; nothing on a standby itself) */
	flushed = tenant ? t.tenant_id : 0;
	byok_wal_flush(MyDatabaseId, flushed ? byok_keystore_catalog() : InvalidOid, flushed, false);
	snprintf(detail, sizeof(detail), "%d cache entries wiped", purged);
	if (can_write)
		ks_event(tenant ? t.tenant_id : 0, tenant, "cache_flushed", NULL, 0, NULL, NULL, detail);
	ks_leave(&acc);
	/* a Citus coordinator: every worker too, as the caller */
	ks_citus_flush_workers(tenant);
	return purged;
}

/*
 * The revocation drill for 'tenant' (see byok_tenant_drill), recorded in
 * the audit log.  Refuses a tenant that is already locked out.  The caller
 * releases this backend's own key handles first: they must not count as
 * stale.
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
	byok_tenant_drill(t.slot, t.tenant_id, result);
	snprintf(detail, sizeof(detail),
			 "lockout %.3f ms, %d cached keys wiped, %d residual, %d stale handles",
			 result->lockout_us / 1000.0, result->purged, result->residual,
			 result->stale_handles);
	if (!RecoveryInProgress() && !XactReadOnly)
		ks_event(t.tenant_id, t.name, "revocation_drill", NULL, 0, NULL, NULL, detail);
	ks_leave(&acc);
}

/* ---- validation ---- */

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
		/* (a Citus worker checks its own access; the catalog is the coordinator's) */
		if (baseline > 0 && !ks_citus_worker())
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

/* ---- destruction and tenant-key changes ---- */

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
	p->catalog = byok_keystore_catalog();
	strlcpy(p->name, t.name, sizeof(p->name));
	p->state = BYOK_TENANT_CMK_DESTROYED;
	p->rekeyed = false;
	p->ledger = pstrdup(lines);	/* dropped with the change if its subtransaction aborts */
	p->subid = GetCurrentSubTransactionId();
	ks_pending = lappend(ks_pending, p);
	MemoryContextSwitchTo(old);
	ks_bump_epoch = true;
	return cert;
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
