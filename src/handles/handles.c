/*-------------------------------------------------------------------------
 *
 * handles/handles.c
 *		Per-backend handles on the DEKs a transaction is using.
 *
 * The hot path of byok_encrypt/byok_decrypt ends here.  A handle holds one
 * DEK and, made on first use, an OpenSSL context per algorithm and
 * direction with the key schedule expanded, the DEK's
 * tenant slot and the slot generation seen when the key was fetched.  Each
 * use compares that generation with the slot's (one atomic read): any
 * revocation, provider lockout, flush or purge bumps it, so a transaction
 * that already holds a key stops using it at its very next call.  The
 * byok.tenant binding is checked when the handle is made and again whenever
 * the setting changes (byok_tenant_guc_epoch).
 *
 * Key lifetime.  Handles live only until the end of the transaction:
 * byok_handle_release() frees every context (EVP_CIPHER_CTX_free wipes the
 * key schedule) and wipes the handle's copy of the DEK, from the
 * transaction callback, on commit and abort alike.
 *
 * A second, longer-lived map takes (tenant, scope) to the DEK id new
 * encryptions use.  It holds no key material; it is trusted only while the
 * shared catalog epoch (bumped by every commit that creates or rotates a
 * DEK) is unchanged, and is dropped when a (sub)transaction aborts, since
 * it may name a DEK created by the aborted work.
 *
 * No locks are taken here except through the cache (src/cache/) and the
 * catalog (src/catalog/).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "crypto/envelope.h"
#include "catalog/keystore.h"
#include "guc.h"
#include "handles/handles.h"

#define CURRENT_KEY_LEN		(NAMEDATALEN + 1 + BYOK_MAX_SCOPE + 1)

typedef struct LkCurrent
{
	char		key[CURRENT_KEY_LEN];	/* tenant \x1f scope, NUL-terminated */
	int64		dek_id;			/* DEK new encryptions use */
	uint64		epoch;			/* catalog epoch when looked up */
} LkCurrent;

ByokLocalKey *byok_handle_last = NULL;

static HTAB *lk_keys = NULL;
static Oid	ks_catalog_for_drop = InvalidOid;	/* catalog of the handles held */
static int	lk_nkeys = 0;
static HTAB *lk_current = NULL;
static LkCurrent *lk_current_last = NULL;
static int	lk_current_tlen = 0;

static void
lk_init(void)
{
	HASHCTL		ctl;

	if (lk_keys != NULL)
		return;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(ByokLocalKey);
	ctl.hcxt = TopMemoryContext;
	lk_keys = hash_create("byok local keys", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = CURRENT_KEY_LEN;
	ctl.entrysize = sizeof(LkCurrent);
	ctl.hcxt = TopMemoryContext;
	lk_current = hash_create("byok current data keys", 64, &ctl,
							 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/*
 * Bring the DEK's shared count in line with what this handle sealed: add
 * values sealed without a reservation (the DEK was not in the shared
 * cache), give back reservations left unused.  Returns the shared count
 * afterwards (this handle's own view when the DEK is not cached).
 */
static uint64
lk_settle(ByokLocalKey *lk)
{
	ByokCacheKey ck;
	uint64		total;

	byok_cache_key_init(&ck, MyDatabaseId, ks_catalog_for_drop, BYOK_CACHE_DEK, lk->dek_id, 0);
	total = byok_cache_add_use(&ck, (int64) lk->encrypts - (int64) lk->reserved, lk->used + lk->encrypts);
	lk->reserved = lk->allowed = lk->encrypts;
	return total;
}

static void
lk_drop(ByokLocalKey *lk)
{
	int64		id = lk->dek_id;

	/* an aborted transaction's values count all the same: their nonces were used */
	if (lk->encrypts != lk->reserved)
		(void) lk_settle(lk);
	for (int a = 0; a <= BYOK_ALG_COUNT; a++)
		for (int e = 0; e < 2; e++)
			if (lk->ctx[a][e])
			{
				EVP_CIPHER_CTX_free(lk->ctx[a][e]);
				lk->ctx[a][e] = NULL;
			}
	explicit_bzero(lk->key, sizeof(lk->key));
	byok_tenant_handle(lk->slot, -1, lk->encrypts, lk->decrypts);
	if (byok_handle_last == lk)
		byok_handle_last = NULL;
	hash_search(lk_keys, &id, HASH_REMOVE, NULL);
	lk_nkeys--;
}

/*
 * The slow path of byok_handle_dek(): find or make the handle for 'dek_id',
 * fetching the key from the shared cache or, on a miss, from the catalog and
 * the provider.  Raises the tenant's state error if it is locked out, and
 * ERRCODE_BYOK_TENANT_MISMATCH if byok.tenant names another tenant.
 */
ByokLocalKey *
byok_handle_dek_slow(int64 dek_id)
{
	ByokLocalKey *lk;
	ByokTenantSlot *ts;
	bool		found;

	lk_init();
	lk = hash_search(lk_keys, &dek_id, HASH_FIND, NULL);
	if (lk != NULL)
	{
		ts = byok_tenant_slot(lk->slot);
		if (pg_atomic_read_u64(&ts->generation) != lk->generation)
		{
			ByokTenantState st = pg_atomic_read_u32(&ts->state);
			bool		same = ts->tenant_id == lk->tenant_id;

			lk_drop(lk);
			lk = NULL;
			if (same && st != BYOK_TENANT_ACTIVE)
				byok_raise_tenant_state(st, ts->name);
		}
	}

	if (lk == NULL)
	{
		uint8		key[BYOK_KEY_LEN];
		ByokCacheKey ck;
		ByokDekRef	ref;

		ks_catalog_for_drop = byok_keystore_catalog();
		byok_cache_key_init(&ck, MyDatabaseId, ks_catalog_for_drop, BYOK_CACHE_DEK, dek_id, 0);
		ref.dek_id = dek_id;
		PG_TRY();
		{
			if (byok_cache_get(&ck, key, &ref.slot, &ref.generation, &ref.used))
			{
				ts = byok_tenant_slot(ref.slot);
				ref.tenant_id = ts->tenant_id;
				byok_session_check_bound(ts->name);
			}
			else
				byok_keystore_load_dek(dek_id, key, &ref);
			lk = hash_search(lk_keys, &dek_id, HASH_ENTER, &found);
			memcpy(lk->key, key, BYOK_KEY_LEN);
		}
		PG_FINALLY();
		{
			explicit_bzero(key, sizeof(key));
		}
		PG_END_TRY();

		memset(lk->ctx, 0, sizeof(lk->ctx));
		lk->tenant_id = ref.tenant_id;
		lk->slot = ref.slot;
		lk->generation = ref.generation;
		lk->bind_epoch = 0;
		lk->encrypts = lk->decrypts = 0;
		lk->used = ref.used;
		lk->reserved = lk->allowed = 0;
		lk->persist = false;
		lk_nkeys++;
		byok_tenant_handle(lk->slot, +1, 0, 0);
	}

	if (lk->bind_epoch != byok_tenant_guc_epoch)
	{
		ts = byok_tenant_slot(lk->slot);
		if (byok_tenant != NULL && byok_tenant[0] != '\0' &&
			strcmp(ts->name, byok_tenant) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_TENANT_MISMATCH),
					 errmsg("this session is bound to tenant \"%s\"", byok_tenant),
					 errdetail("The value belongs to another tenant.")));
		lk->bind_epoch = byok_tenant_guc_epoch;
	}
	byok_handle_last = lk;
	return lk;
}

/*
 * Make the handle's context for 'algorithm' and direction (the first value
 * of a transaction that uses it).
 */
EVP_CIPHER_CTX *
byok_handle_ctx_slow(ByokLocalKey *lk, int algorithm, bool encrypt)
{
	lk->ctx[algorithm][encrypt ? 1 : 0] = byok_aead_context(algorithm, lk->key, encrypt);
	return lk->ctx[algorithm][encrypt ? 1 : 0];
}

/*
 * The handle of the DEK that new encryptions for (tenant, scope) use,
 * creating the scope's first DEK if it has none yet.
 */
ByokLocalKey *
byok_handle_current(const char *tenant, int tenant_len, const char *scope, int scope_len)
{
	LkCurrent  *cur = lk_current_last;
	uint64		epoch = byok_catalog_epoch();

	if (likely(cur != NULL && cur->epoch == epoch &&
			   lk_current_tlen == tenant_len &&
			   memcmp(cur->key, tenant, tenant_len) == 0 &&
			   cur->key[tenant_len] == '\x1f' &&
			   memcmp(cur->key + tenant_len + 1, scope, scope_len) == 0 &&
			   cur->key[tenant_len + 1 + scope_len] == '\0'))
		return byok_handle_dek(cur->dek_id);

	{
		char		key[CURRENT_KEY_LEN];
		char	   *tname;
		char	   *sname;
		bool		found;

		if (tenant_len > BYOK_MAX_TENANT_NAME || tenant_len == 0)
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_UNKNOWN_TENANT),
					 errmsg("tenant \"%.*s\" does not exist", Min(tenant_len, BYOK_MAX_TENANT_NAME), tenant)));
		byok_check_scope(scope, scope_len);
		lk_init();
		memset(key, 0, sizeof(key));
		memcpy(key, tenant, tenant_len);
		key[tenant_len] = '\x1f';
		memcpy(key + tenant_len + 1, scope, scope_len);

		cur = hash_search(lk_current, key, HASH_FIND, NULL);
		if (cur == NULL || cur->epoch != epoch)
		{
			int64		dek_id;

			tname = pnstrdup(tenant, tenant_len);
			sname = pnstrdup(scope, scope_len);
			dek_id = byok_keystore_current_dek(tname, sname);
			pfree(tname);
			pfree(sname);
			cur = hash_search(lk_current, key, HASH_ENTER, &found);
			cur->dek_id = dek_id;
			cur->epoch = epoch;
		}
		lk_current_last = cur;
		lk_current_tlen = tenant_len;
		return byok_handle_dek(cur->dek_id);
	}
}

/* Forget which DEK is current for every (tenant, scope). */
void
byok_handle_forget_current(void)
{
	HASH_SEQ_STATUS scan;
	LkCurrent  *cur;

	lk_current_last = NULL;
	if (lk_current == NULL)
		return;
	hash_seq_init(&scan, lk_current);
	while ((cur = hash_seq_search(&scan)) != NULL)
		hash_search(lk_current, cur->key, HASH_REMOVE, NULL);
}

/*
 * Transaction end: free every handle, wiping the expanded keys.
 */
void
byok_handle_release(void)
{
	HASH_SEQ_STATUS scan;
	ByokLocalKey *lk;

	byok_handle_last = NULL;
	if (lk_keys == NULL || lk_nkeys == 0)
		return;
	hash_seq_init(&scan, lk_keys);
	while ((lk = hash_seq_search(&scan)) != NULL)
		lk_drop(lk);
}

/* what re-encryption needs to know of a DEK, cached per backend */
typedef struct LkScope
{
	int64		dek_id;			/* hash key */
	char		tenant[NAMEDATALEN];
	char		scope[BYOK_MAX_SCOPE + 1];
	int32		version;		/* the DEK's version (never changes) */
	int64		current;		/* DEK new encryptions of this scope use */
	uint64		epoch;			/* catalog epoch when looked up */
	Oid			catalog;		/* install of the extension it belongs to */
} LkScope;

static HTAB *lk_scopes = NULL;

static ByokLocalKey *lk_rotate_for_limit(ByokLocalKey *lk, const char *tenant, int tenant_len,
										 const char *scope, int scope_len);

/*
 * The tenant and scope of DEK 'dek_id' and the DEK new encryptions of that
 * scope use; NULL when the DEK is unknown here.  Cached while the catalog
 * epoch stands.
 */
static LkScope *
lk_scope(int64 dek_id)
{
	LkScope    *e;
	bool		found;
	uint64		epoch = byok_catalog_epoch();
	Oid			catalog = byok_keystore_catalog();

	if (lk_scopes == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(LkScope);
		ctl.hcxt = TopMemoryContext;
		lk_scopes = hash_create("byok data key scopes", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(lk_scopes, &dek_id, HASH_FIND, NULL);
	/* trusted until the catalog changes (any rotation, creation or deletion) */
	if (e != NULL && e->catalog == catalog && e->epoch == epoch)
		return e;
	{
		char		tenant[NAMEDATALEN];
		char		scope[BYOK_MAX_SCOPE + 1];
		int64		current = 0;
		int32		version = 0;

		if (!byok_keystore_dek_scope(dek_id, tenant, scope, &version, &current))
			return NULL;
		e = hash_search(lk_scopes, &dek_id, HASH_ENTER, &found);
		strlcpy(e->tenant, tenant, sizeof(e->tenant));
		strlcpy(e->scope, scope, sizeof(e->scope));
		e->version = version;
		e->current = current;
		e->epoch = epoch;
		e->catalog = catalog;
	}
	return e;
}

/*
 * A session bound to a tenant (byok.tenant) learns nothing of the others:
 * the DEK of another tenant looks like one this database does not have.
 */
static LkScope *
lk_scope_visible(int64 dek_id)
{
	LkScope    *sc = lk_scope(dek_id);

	if (sc != NULL && !byok_session_bound_to(sc->tenant))
		return NULL;
	return sc;
}

/*
 * Does this ciphertext need re-encrypting: sealed under a DEK that is no
 * longer its scope's current one, or under another algorithm than
 * byok.algorithm?  Raises the malformed error for a value that is not a
 * byok ciphertext.
 */
bool
byok_handle_needs_reencrypt(const uint8 *data, int len)
{
	ByokHeader	hdr;
	LkScope    *sc;

	byok_envelope_parse(data, len, &hdr);
	sc = lk_scope_visible(hdr.dek_id);
	if (hdr.algorithm != byok_algorithm)
		return true;
	return sc == NULL || sc->current != hdr.dek_id;
}

/*
 * Re-encrypt a ciphertext under its scope's current DEK and byok.algorithm,
 * with the same tenant, scope and AAD; returns NULL when nothing needs to
 * change.  The plaintext exists only inside this call and is wiped.
 */
bytea *
byok_handle_reencrypt(const uint8 *data, int len, const char *aad, int aad_len)
{
	ByokHeader	hdr;
	LkScope    *sc;
	ByokLocalKey *lk;
	ByokLocalKey *to;
	bytea	   *plain;
	bytea	   *result;

	byok_envelope_parse(data, len, &hdr);
	sc = lk_scope_visible(hdr.dek_id);
	if (sc != NULL && hdr.algorithm == byok_algorithm && sc->current == hdr.dek_id)
		return NULL;			/* already current: nothing to change */
	if (sc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_MALFORMED_CIPHERTEXT),
				 errmsg("malformed byok ciphertext"),
				 errdetail("No data key with id " INT64_FORMAT " exists in this database.", hdr.dek_id)));
	lk = byok_handle_dek(hdr.dek_id);
	plain = byok_envelope_open(byok_handle_ctx(lk, hdr.algorithm, false), data, len, lk->tenant_id,
							   aad, aad_len);
	PG_TRY();
	{
		to = byok_handle_current(sc->tenant, strlen(sc->tenant), sc->scope, strlen(sc->scope));
		if (unlikely(to->encrypts >= to->allowed))
			to = byok_handle_reserve(to, sc->tenant, strlen(sc->tenant), sc->scope, strlen(sc->scope));
		result = byok_envelope_seal(byok_handle_ctx(to, byok_algorithm, true), byok_algorithm,
									to->dek_id, to->tenant_id,
									VARDATA(plain), VARSIZE(plain) - VARHDRSZ, aad, aad_len);
		to->encrypts++;
	}
	PG_FINALLY();
	{
		explicit_bzero(VARDATA(plain), VARSIZE(plain) - VARHDRSZ);
	}
	PG_END_TRY();
	pfree(plain);
	return result;
}

/*
 * The commit re-check (at PRE_COMMIT and PRE_PREPARE): a transaction that
 * used a tenant's keys does not commit once that tenant is locked out
 * (revoked, disabled, destroyed, unreachable under fail_closed), even if
 * it touched only other tenants since.  Raising here aborts the
 * transaction: nothing it sealed lands.
 */
void
byok_handle_check_lockouts(void)
{
	HASH_SEQ_STATUS scan;
	ByokLocalKey *lk;

	if (lk_keys == NULL || lk_nkeys == 0)
		return;
	hash_seq_init(&scan, lk_keys);
	while ((lk = hash_seq_search(&scan)) != NULL)
	{
		ByokTenantSlot *ts = byok_tenant_slot(lk->slot);
		ByokTenantState st = pg_atomic_read_u32(&ts->state);

		if (ts->tenant_id == lk->tenant_id && st != BYOK_TENANT_ACTIVE)
		{
			char		name[NAMEDATALEN];

			strlcpy(name, ts->name, sizeof(name));
			hash_seq_term(&scan);
			byok_raise_tenant_state(st, name);
		}
	}
}

/*
 * Before commit: add the values this transaction sealed to each DEK's
 * shared usage count, and persist the count whenever it crosses another
 * thousandth of byok.dek_max_encryptions (so a restart loses at most that
 * much of it; the limit leaves a factor of four below the 2^32 bound).
 */
void
byok_handle_pre_commit(void)
{
	HASH_SEQ_STATUS scan;
	ByokLocalKey *lk;
	uint64		step = Max(1, (uint64) byok_dek_max_encryptions / 1000);

	if (lk_keys == NULL || lk_nkeys == 0)
		return;
	byok_handle_check_lockouts();

	hash_seq_init(&scan, lk_keys);
	while ((lk = hash_seq_search(&scan)) != NULL)
	{
		uint64		unreserved;
		uint64		total;

		if (lk->encrypts == 0 && lk->reserved == 0)
			continue;
		/* values sealed without a reservation are added now: did they cross a step? */
		unreserved = lk->encrypts > lk->reserved ? lk->encrypts - lk->reserved : 0;
		total = lk_settle(lk);
		if (lk->persist || (unreserved > 0 && total / step != (total - Min(unreserved, total)) / step))
			byok_keystore_save_usage(lk->dek_id, total);
		lk->persist = false;
	}
}

/*
 * byok.dek_max_encryptions is one limit for every backend: before sealing
 * beyond what it may, a handle reserves a small batch from its DEK's count
 * in the shared cache, and when the DEK is exhausted the scope rotates and
 * the handle of the next DEK reserves instead.  A DEK that is not in the
 * shared cache (byok.cache_ttl = 0, evicted, or made by this transaction)
 * falls back to this backend's own count.  On a Citus cluster the count
 * is the coordinator's, for every node together (catalog/citus.c).
 * Returns the handle to seal with; it may seal at least one more value.
 */
ByokLocalKey *
byok_handle_reserve(ByokLocalKey *lk, const char *tenant, int tenant_len,
				   const char *scope, int scope_len)
{
	uint64		limit = (uint64) byok_dek_max_encryptions;
	uint64		batch = Max(1, Min(64, limit / 1024));
	uint64		step = Max(1, limit / 1000);
	bool		citus = byok_keystore_citus_counts();

	for (int tries = 0; tries < 8; tries++)
	{
		ByokCacheKey ck;
		bool		tracked;
		uint64		granted;
		uint64		before;

		byok_cache_key_init(&ck, MyDatabaseId, ks_catalog_for_drop, BYOK_CACHE_DEK, lk->dek_id, 0);
		if (citus)
		{
			/*
			 * Citus: only what this node reserved on the coordinator, in
			 * blocks of a thousandth of the limit for the node's cached DEK
			 * (a batch for this handle alone when the DEK is not cached)
			 */
			granted = byok_cache_reserve_node(&ck, batch, &tracked, &before);
			if (granted == 0)
			{
				uint64		got = (uint64) byok_keystore_citus_reserve(lk->dek_id,
																	 tracked ? Max(batch, step) : batch);

				/* (the DEK left the cache meanwhile: this handle seals what was reserved) */
				if (tracked && got > 0 && byok_cache_allow(&ck, got))
					granted = byok_cache_reserve_node(&ck, batch, &tracked, &before);
				else
				{
					tracked = false;
					granted = got;
				}
			}
			if (tracked)
				lk->reserved += granted;
		}
		else
		{
			granted = byok_cache_reserve(&ck, batch, limit, &tracked, &before);
			if (tracked)
			{
				lk->reserved += granted;
				if (before / step != (before + granted) / step)
					lk->persist = true;
			}
			else
			{
				uint64		seen = lk->used + lk->encrypts;

				granted = seen >= limit ? 0 : Min(batch, limit - seen);
			}
		}
		lk->allowed = lk->encrypts + granted;
		if (granted > 0)
			return lk;
		lk = lk_rotate_for_limit(lk, tenant, tenant_len, scope, scope_len);
		if (lk->encrypts < lk->allowed)
			return lk;
	}
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not reserve encryptions under a data key of scope \"%.*s\"", scope_len, scope),
			 errdetail("Other sessions exhausted every new version at once."),
			 errhint("Retry the transaction.")));
}

/*
 * The DEK of 'lk' reached byok.dek_max_encryptions: rotate (unless another
 * session just did) and return the handle of the DEK to use instead.
 */
static ByokLocalKey *
lk_rotate_for_limit(ByokLocalKey *lk, const char *tenant, int tenant_len,
					const char *scope, int scope_len)
{
	char	   *t = pnstrdup(tenant, tenant_len);
	char	   *s = pnstrdup(scope, scope_len);
	int64		next;

	next = byok_keystore_rotate_for_limit(t, s, lk->dek_id);
	pfree(t);
	pfree(s);
	byok_handle_forget_current();
	if (next == lk->dek_id)
		return lk;
	return byok_handle_current(tenant, tenant_len, scope, scope_len);
}

/*
 * What the catalog says about a DEK (for byok_ciphertext_info and the
 * protected-column guard): tenant, scope and version, cached per backend.
 * False if this database has no such DEK.
 */
bool
byok_handle_dek_meta(int64 dek_id, const char **tenant, const char **scope, int32 *version)
{
	LkScope    *sc = lk_scope_visible(dek_id);

	if (sc == NULL)
		return false;
	*tenant = sc->tenant;
	*scope = sc->scope;
	*version = sc->version;
	return true;
}
