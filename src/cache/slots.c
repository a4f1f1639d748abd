/*-------------------------------------------------------------------------
 *
 * cache/slots.c
 *		Tenant slots: finding and attaching them, their states and
 *		generations, lockouts (by an administrator, the provider, the
 *		destruction ledger), their statistics and the revocation drill.
 *
 * One slot per tenant in use (byok.max_tenants of them), found through the
 * "byok tenants" hash (database, catalog, tenant id) -> slot.  When every
 * slot is taken, the least recently used active slot with no cached keys
 * and no handles is given to the newcomer (byok_tenant_attach).
 *
 * Locking protocol.  kc_lock (cache/shmem.c) guards the hash and every
 * non-atomic field of a slot; lookups take it shared, everything that
 * changes a slot takes it exclusive.  A slot's 'state' and 'generation' are
 * atomics written only under the exclusive lock and read without any lock
 * on the hot path: every change of state, and every purge, bumps the
 * generation, so a backend holding (slot, generation) knows in one atomic
 * read whether what it holds is still good.  'handles' and the per-tenant
 * use counts are atomics changed without the lock.  kc_change_state is
 * called with the lock held exclusive (here, and from cmk.c).
 *
 * Key lifetime.  A state change or purge wipes the tenant's cached keys
 * under the same exclusive lock that bumps its generation (kc_sweep,
 * keys.c), so no backend can fetch a wiped key afterwards.  The drill
 * compares vault cells by SHA-256 only, so no key is copied out of the
 * vault.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "common/sha2.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

#include "cache/cache_internal.h"
#include "guc.h"

/* The name of a tenant state, as byok.stats and the logs show it. */
const char *
byok_tenant_state_name(ByokTenantState state)
{
	static const char *const names[BYOK_TENANT_STATE_COUNT] = {
		"active", "revoked", "cmk_disabled", "cmk_destroyed", "kms_unreachable"
	};

	if (state < 0 || state >= BYOK_TENANT_STATE_COUNT)
		return "unknown";
	return names[state];
}

ByokTenantSlot *
byok_tenant_slot(int slot)
{
	Assert(slot >= 0 && slot < byok_max_tenants);
	return &kc_slots[slot];
}

/*
 * Find the slot of a tenant, -1 if it has none.  Takes the lock shared.
 */
int
byok_tenant_find(Oid dboid, Oid catalog, int32 tenant_id)
{
	ByokTenantMapKey mk;
	ByokTenantMapEntry *me;
	int			slot = -1;

	memset(&mk, 0, sizeof(mk));
	mk.dboid = dboid;
	mk.catalog = catalog;
	mk.tenant_id = tenant_id;
	LWLockAcquire(kc_lock, LW_SHARED);
	me = hash_search(kc_map, &mk, HASH_FIND, NULL);
	if (me)
		slot = me->slot;
	LWLockRelease(kc_lock);
	return slot;
}

/*
 * Find or create the slot of a tenant.  A new slot starts in 'initial' (the
 * state the catalog records); an existing slot keeps its state, which is
 * newer than any catalog snapshot.  Returns the slot index and its current
 * generation.  When every slot is taken, reuses the least recently used
 * active slot with nothing cached; raises an error if there is none.
 */
int
byok_tenant_attach(Oid dboid, Oid catalog, int32 tenant_id, const char *name,
				   ByokTenantState initial, uint64 *generation)
{
	ByokTenantMapKey mk;
	ByokTenantMapEntry *me;
	ByokTenantSlot *ts;
	int			slot = -1;
	bool		found;

	memset(&mk, 0, sizeof(mk));
	mk.dboid = dboid;
	mk.catalog = catalog;
	mk.tenant_id = tenant_id;

	LWLockAcquire(kc_lock, LW_SHARED);
	me = hash_search(kc_map, &mk, HASH_FIND, NULL);
	if (me)
	{
		slot = me->slot;
		*generation = pg_atomic_read_u64(&kc_slots[slot].generation);
	}
	LWLockRelease(kc_lock);
	if (slot >= 0)
		return slot;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	me = hash_search(kc_map, &mk, HASH_FIND, NULL);
	if (me == NULL)
	{
		/* a free slot, or else the least recently used idle active one */
		for (int i = 0; i < byok_max_tenants; i++)
		{
			if (!kc_slots[i].in_use)
			{
				slot = i;
				break;
			}
			if (kc_slots[i].nentries == 0 &&
				pg_atomic_read_u32(&kc_slots[i].handles) == 0 &&
				pg_atomic_read_u32(&kc_slots[i].state) == BYOK_TENANT_ACTIVE &&
				(slot < 0 || kc_slots[i].last_used < kc_slots[slot].last_used))
				slot = i;
		}
		if (slot < 0)
		{
			LWLockRelease(kc_lock);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("too many byok tenants in use"),
					 errdetail("All %d tenant slots hold tenants that are locked out or have cached keys.",
							   byok_max_tenants),
					 errhint("Raise byok.max_tenants and restart the server.")));
		}
		ts = &kc_slots[slot];
		if (ts->in_use)
		{
			ByokTenantMapKey old;

			memset(&old, 0, sizeof(old));
			old.dboid = ts->dboid;
			old.catalog = ts->catalog;
			old.tenant_id = ts->tenant_id;
			hash_search(kc_map, &old, HASH_REMOVE, NULL);
		}
		me = hash_search(kc_map, &mk, HASH_ENTER, &found);
		me->slot = slot;
		ts->in_use = true;
		ts->dboid = dboid;
		ts->catalog = catalog;
		ts->tenant_id = tenant_id;
		strlcpy(ts->name, name, NAMEDATALEN);
		ts->nentries = 0;
		ts->cmk = -1;
		ts->tk_fp[0] = '\0';
		ts->destroyed_unconfirmed = false;
		memset(&ts->stats.provider_calls, 0,
			   sizeof(ByokTenantStats) - offsetof(ByokTenantStats, provider_calls));
		pg_atomic_write_u64(&ts->stats.encrypts, 0);
		pg_atomic_write_u64(&ts->stats.decrypts, 0);
		pg_atomic_write_u64(&ts->stats.cache_hits, 0);
		pg_atomic_write_u64(&ts->stats.cache_misses, 0);
		ts->state_changed_at = GetCurrentTimestamp();
		ts->last_used = ts->state_changed_at;
		pg_atomic_write_u32(&ts->state, initial);
		pg_atomic_fetch_add_u64(&ts->generation, 1);
	}
	slot = me->slot;
	*generation = pg_atomic_read_u64(&kc_slots[slot].generation);
	LWLockRelease(kc_lock);
	return slot;
}

/*
 * Set a tenant's state, bump its generation and wipe every cached key of
 * it, so every backend stops using it at its next call.  'tenant_id' guards
 * against a slot reused meanwhile (then nothing happens).  Returns the
 * number of cache entries wiped, or -1 if the slot no longer holds the
 * tenant.  Takes the lock exclusive.
 */
int
byok_tenant_set_state(int slot, int32 tenant_id, ByokTenantState state)
{
	ByokTenantSlot *ts = &kc_slots[slot];
	int			purged = -1;

	ByokStateChange change;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (ts->in_use && ts->tenant_id == tenant_id)
	{
		kc_change_state(slot, state, state == BYOK_TENANT_REVOKED ?
						"administrator: revoked" : "administrator: reinstated",
						GetCurrentTimestamp(), &change);
		purged = change.purged;
	}
	LWLockRelease(kc_lock);
	return purged;
}

/*
 * Wipe every cached key of one tenant slot and bump its generation, so
 * transactions holding its keys fetch them again.  Returns the number of
 * entries wiped.  Takes the lock exclusive.
 */
int
byok_tenant_purge(int slot)
{
	int			purged;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	pg_atomic_fetch_add_u64(&kc_slots[slot].generation, 1);
	purged = kc_sweep(0, slot, InvalidOid);
	LWLockRelease(kc_lock);
	return purged;
}

/*
 * A tenant was just created: if a slot still holds a tenant of the same id
 * (left by an earlier install of the extension in this database), wipe its
 * keys and give it the new name and the active state.  Takes the lock
 * exclusive.
 */
void
byok_tenant_reset(Oid dboid, Oid catalog, int32 tenant_id, const char *name)
{
	int			slot = byok_tenant_find(dboid, catalog, tenant_id);

	if (slot < 0)
		return;
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (kc_slots[slot].in_use && kc_slots[slot].tenant_id == tenant_id &&
		kc_slots[slot].catalog == catalog && kc_slots[slot].dboid == dboid)
	{
		strlcpy(kc_slots[slot].name, name, NAMEDATALEN);
		pg_atomic_write_u32(&kc_slots[slot].state, BYOK_TENANT_ACTIVE);
		kc_slots[slot].destroyed_unconfirmed = false;
		pg_atomic_fetch_add_u64(&kc_slots[slot].generation, 1);
		kc_sweep(0, slot, InvalidOid);
	}
	LWLockRelease(kc_lock);
}

/*
 * Apply a state change to a slot: set it, bump the generation, wipe the
 * tenant's cached keys, and describe it in 'change'.  Exclusive lock held.
 */
void
kc_change_state(int slot, ByokTenantState state, const char *reason,
				TimestampTz seen_at, ByokStateChange *change)
{
	ByokTenantSlot *ts = &kc_slots[slot];
	TimestampTz done;

	change->dboid = ts->dboid;
	change->catalog = ts->catalog;
	change->tenant_id = ts->tenant_id;
	strlcpy(change->tenant, ts->name, NAMEDATALEN);
	change->old_state = pg_atomic_read_u32(&ts->state);
	change->new_state = state;
	strlcpy(change->reason, reason, sizeof(change->reason));

	pg_atomic_write_u32(&ts->state, state);
	ts->destroyed_unconfirmed = false;	/* the caller says if it is */
	pg_atomic_fetch_add_u64(&ts->generation, 1);
	change->purged = kc_sweep(0, slot, InvalidOid);
	done = GetCurrentTimestamp();
	change->lag_us = done - seen_at;
	ts->state_changed_at = done;
	ts->stats.revocation_lag_us = change->lag_us;
	ts->stats.last_purged = change->purged;
	strlcpy(ts->stats.last_reason, reason, sizeof(ts->stats.last_reason));
}

/*
 * A backend heard the provider say the tenant's CMK is disabled or
 * destroyed (or found its key in the destruction ledger): lock the tenant
 * out now, in every backend.  A destruction not 'confirmed' (one provider
 * answer) is lifted by a later poll that says the key is enabled (see
 * byok_cmk_record_poll); a confirmed one (the ledger) is final.  Returns
 * the number of entries wiped, -1 if nothing changed or the slot no longer
 * holds the tenant (then 'change' is untouched).  Takes the lock exclusive.
 */
int
byok_tenant_provider_state(int slot, int32 tenant_id, ByokTenantState state, bool confirmed,
						   const char *reason, ByokStateChange *change)
{
	ByokTenantSlot *ts = &kc_slots[slot];
	TimestampTz now = GetCurrentTimestamp();
	int			purged = -1;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (ts->in_use && ts->tenant_id == tenant_id)
	{
		ByokTenantState cur = pg_atomic_read_u32(&ts->state);
		bool		destroying = state == BYOK_TENANT_CMK_DESTROYED;
		bool		liftable = cur == BYOK_TENANT_CMK_DESTROYED && ts->destroyed_unconfirmed;

		if (cur == BYOK_TENANT_CMK_DESTROYED && !liftable)
			;					/* final */
		else if (cur == BYOK_TENANT_REVOKED && !(destroying && confirmed))
			;					/* an administrator's revocation stands */
		else if (cur == state && !(liftable && confirmed))
			;
		else
		{
			kc_change_state(slot, state, reason, now, change);
			ts->destroyed_unconfirmed = destroying && !confirmed;
			purged = change->purged;
		}
	}
	LWLockRelease(kc_lock);
	return purged;
}

/* Count one provider unwrap of a tenant and its latency.  Takes the lock exclusive. */
void
byok_tenant_record_call(int slot, ByokKmsStatus status, int64 us)
{
	ByokTenantStats *st = &kc_slots[slot].stats;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	st->provider_calls++;
	if (status != BYOK_KMS_OK)
		st->provider_errors[status]++;
	st->latency_last_us = us;
	st->latency_sum_us += us;
	st->latency_max_us = Max(st->latency_max_us, us);
	if (status == BYOK_KMS_UNAVAILABLE || status == BYOK_KMS_THROTTLED)
		st->unavailable_until = GetCurrentTimestamp() + USECS_PER_SEC;
	else if (status == BYOK_KMS_OK)
		st->unavailable_until = 0;
	LWLockRelease(kc_lock);
}

/*
 * Negative cache: true while the tenant's provider failed as unavailable or
 * throttling less than a second ago, so misses fail fast instead of piling
 * onto a provider that is down.
 */
bool
byok_tenant_fail_fast(int slot)
{
	return kc_slots[slot].stats.unavailable_until > GetCurrentTimestamp();
}

/*
 * A backend took (delta +1) or dropped (delta -1) a transaction handle on a
 * key of the tenant; on drop it adds the values it sealed and opened.
 */
void
byok_tenant_handle(int slot, int delta, uint64 encrypts, uint64 decrypts)
{
	ByokTenantSlot *ts = &kc_slots[slot];

	if (delta > 0)
		pg_atomic_fetch_add_u32(&ts->handles, 1);
	else
	{
		pg_atomic_fetch_sub_u32(&ts->handles, 1);
		if (encrypts)
			pg_atomic_fetch_add_u64(&ts->stats.encrypts, encrypts);
		if (decrypts)
			pg_atomic_fetch_add_u64(&ts->stats.decrypts, decrypts);
	}
}

static void
kc_sha256(const uint8 *data, int len, uint8 *out)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL || pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, data, len) < 0 ||
		pg_cryptohash_final(ctx, out, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not compute SHA-256");
	pg_cryptohash_free(ctx);
}

/*
 * The revocation drill: lock the tenant out as an administrator's
 * revocation would, measure until no backend holds a usable handle on its
 * keys (at most 2 s), check that no vault cell still holds any of the wiped
 * keys (by SHA-256, so no key is copied out), then restore the state it had.
 */
void
byok_tenant_drill(int slot, int32 tenant_id, ByokDrillResult *result)
{
	ByokTenantSlot *ts = &kc_slots[slot];
	HASH_SEQ_STATUS scan;
	ByokCacheEntry *entry;
	uint8	   *digests;
	int			ndigests = 0;
	TimestampTz start;
	ByokTenantState before;

	memset(result, 0, sizeof(*result));
	digests = palloc(mul_size(byok_cache_size, PG_SHA256_DIGEST_LENGTH));

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (!ts->in_use || ts->tenant_id != tenant_id)
	{
		LWLockRelease(kc_lock);
		result->purged = -1;
		return;
	}
	start = GetCurrentTimestamp();
	before = pg_atomic_read_u32(&ts->state);
	hash_seq_init(&scan, kc_cache);
	while ((entry = hash_seq_search(&scan)) != NULL)
		if (entry->slot == slot)
			kc_sha256(kc_vault + (Size) entry->cell * BYOK_KEY_LEN, BYOK_KEY_LEN,
					  digests + (Size) (ndigests++) * PG_SHA256_DIGEST_LENGTH);
	pg_atomic_write_u32(&ts->state, BYOK_TENANT_REVOKED);
	pg_atomic_fetch_add_u64(&ts->generation, 1);
	result->purged = kc_sweep(0, slot, InvalidOid);
	LWLockRelease(kc_lock);

	/* every backend drops its handle at its next call or transaction end */
	for (int i = 0; i < 2000 && pg_atomic_read_u32(&ts->handles) > 0; i++)
	{
		CHECK_FOR_INTERRUPTS();
		pg_usleep(1000);
	}
	result->stale_handles = pg_atomic_read_u32(&ts->handles);
	result->lockout_us = GetCurrentTimestamp() - start;

	/* no vault cell may still hold a wiped key */
	LWLockAcquire(kc_lock, LW_SHARED);
	hash_seq_init(&scan, kc_cache);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		uint8		d[PG_SHA256_DIGEST_LENGTH];

		kc_sha256(kc_vault + (Size) entry->cell * BYOK_KEY_LEN, BYOK_KEY_LEN, d);
		for (int i = 0; i < ndigests; i++)
			if (memcmp(d, digests + (Size) i * PG_SHA256_DIGEST_LENGTH, sizeof(d)) == 0)
				result->residual++;
	}
	/* wiped cells must be zero, whoever holds them now */
	for (int c = 0; c < kc_shared->nfree; c++)
	{
		const uint8 *cell = kc_vault + (Size) kc_free[c] * BYOK_KEY_LEN;

		for (int b = 0; b < BYOK_KEY_LEN; b++)
			if (cell[b] != 0)
			{
				result->residual++;
				break;
			}
	}
	LWLockRelease(kc_lock);
	pfree(digests);

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (ts->in_use && ts->tenant_id == tenant_id &&
		pg_atomic_read_u32(&ts->state) == BYOK_TENANT_REVOKED)
	{
		pg_atomic_write_u32(&ts->state, before);
		pg_atomic_fetch_add_u64(&ts->generation, 1);
	}
	LWLockRelease(kc_lock);
}

/*
 * A palloc'd copy of every tenant slot of one database and install (for
 * the statistics views); returns the count.  Takes the lock shared.
 */
int
byok_tenant_snapshot(Oid dboid, Oid catalog, ByokTenantSlot **out)
{
	int			n = 0;

	*out = palloc(sizeof(ByokTenantSlot) * byok_max_tenants);
	LWLockAcquire(kc_lock, LW_SHARED);
	for (int i = 0; i < byok_max_tenants; i++)
		if (kc_slots[i].in_use && kc_slots[i].dboid == dboid && kc_slots[i].catalog == catalog)
			memcpy(&(*out)[n++], &kc_slots[i], sizeof(ByokTenantSlot));
	LWLockRelease(kc_lock);
	return n;
}

/* Remember the fingerprint of the wrapped TK a tenant's cached keys came from. */
void
byok_tenant_set_fp(int slot, int32 tenant_id, const char *fp)
{
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (kc_slots[slot].in_use && kc_slots[slot].tenant_id == tenant_id)
		strlcpy(kc_slots[slot].tk_fp, fp, sizeof(kc_slots[slot].tk_fp));
	LWLockRelease(kc_lock);
}

/*
 * The destruction ledger changed: lock out for good every tenant whose
 * tenant key it lists.  'listed' must not do I/O (the lock is held).
 * Returns a List of ByokStateChange.  Takes the lock exclusive.
 */
List *
byok_tenant_apply_ledger(bool (*listed) (const char *fp))
{
	List	   *changes = NIL;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	for (int i = 0; i < byok_max_tenants; i++)
	{
		ByokTenantSlot *ts = &kc_slots[i];

		if (ts->in_use && ts->tk_fp[0] &&
			(pg_atomic_read_u32(&ts->state) != BYOK_TENANT_CMK_DESTROYED || ts->destroyed_unconfirmed) &&
			listed(ts->tk_fp))
		{
			ByokStateChange *ch = palloc(sizeof(ByokStateChange));

			kc_change_state(i, BYOK_TENANT_CMK_DESTROYED, "destruction ledger", now, ch);
			changes = lappend(changes, ch);
		}
	}
	LWLockRelease(kc_lock);
	return changes;
}

/*
 * A tenant state change replayed from the primary's WAL (cache/wal.c), in
 * the startup process: the tenant's slot is made if it has none (with the
 * new state), else its state changes and its keys are wiped as on the
 * primary.  A destroy arrives only after its commit (before it, as a
 * revoke: catalog/xact.c) and is final; a final destruction is never
 * undone here.  Never raises an error.
 */
void
byok_tenant_replay(Oid dboid, Oid catalog, int32 tenant_id, const char *name,
				   ByokTenantState state, const char *source)
{
	MemoryContext mcxt = CurrentMemoryContext;
	ByokStateChange change;
	bool		changed;
	bool		existed = byok_tenant_find(dboid, catalog, tenant_id) >= 0;
	uint64		generation;
	volatile int slot = -1;

	PG_TRY();
	{
		slot = byok_tenant_attach(dboid, catalog, tenant_id, name, state, &generation);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(mcxt);
		FlushErrorState();
	}
	PG_END_TRY();
	if (slot < 0)
	{
		ereport(WARNING,
				(errmsg("byok: a change of tenant \"%s\" %s could not be applied", name, source),
				 errdetail("Every tenant slot is in use; a session makes the tenant's slot from the catalog once one is free."),
				 errhint("Raise byok.max_tenants.")));
		return;
	}
	changed = false;
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (kc_slots[slot].in_use && kc_slots[slot].tenant_id == tenant_id &&
		kc_slots[slot].dboid == dboid && kc_slots[slot].catalog == catalog)
	{
		ByokTenantSlot *ts = &kc_slots[slot];
		ByokTenantState cur = pg_atomic_read_u32(&ts->state);

		if (!existed && cur == state)
			;					/* made with the new state */
		else if (cur == BYOK_TENANT_CMK_DESTROYED && !ts->destroyed_unconfirmed)
			;					/* destroyed for good */
		else if (cur != state || ts->destroyed_unconfirmed)
		{
			/* (a provider's unconfirmed "destroyed" becomes the administrator's, final) */
			kc_change_state(slot, state, source, GetCurrentTimestamp(), &change);
			changed = true;
		}
	}
	LWLockRelease(kc_lock);
	if (changed)
		ereport(LOG,
				(errmsg("byok: tenant \"%s\" is now %s", name, byok_tenant_state_name(state)),
				 errdetail_internal("%s; was %s; %d cached keys wiped",
									source, byok_tenant_state_name(change.old_state), change.purged)));
}

/*
 * The tenant's keys changed (TK rotated, moved to another CMK): wipe its
 * cached keys, bump its generation and forget its CMK, so the next unwrap
 * registers the CMK now in use with the poller.  Takes the lock exclusive.
 */
void
byok_tenant_rekeyed(int slot, int32 tenant_id)
{
	ByokTenantSlot *ts = &kc_slots[slot];

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (ts->in_use && ts->tenant_id == tenant_id)
	{
		pg_atomic_fetch_add_u64(&ts->generation, 1);
		kc_sweep(0, slot, InvalidOid);
		ts->cmk = -1;
		ts->tk_fp[0] = '\0';
	}
	LWLockRelease(kc_lock);
}
