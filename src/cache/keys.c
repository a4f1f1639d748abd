/*-------------------------------------------------------------------------
 *
 * cache/keys.c
 *		The key cache and its vault: unwrapped TKs and DEKs shared by every
 *		backend, with their expiry, fair eviction and DEK use counts.
 *
 * "byok key cache" is a hash ByokCacheKey -> ByokCacheEntry, entries
 * fixed-size and pointer-free; an entry names a cell of "byok key vault":
 * byok.cache_size cells of 32 bytes, page-aligned and marked MADV_DONTDUMP
 * (cache/shmem.c), so unwrapped keys stay out of core dumps.
 *
 * Locking protocol.  kc_lock guards the hash, the vault and its free list.
 * Lookups take it shared; installing, evicting, sweeping and counting uses
 * take it exclusive.  No provider is ever called with it held: callers
 * fetch a key first, then call byok_cache_put(), which installs it only if
 * the tenant's generation is still the one the caller saw before fetching.
 * kc_sweep() is also called, with the lock held exclusive, by slots.c.
 *
 * Fairness.  When the cache is full, a tenant at its share (the cache size
 * divided by the tenants holding entries) evicts its own least recently
 * used entry; only a tenant below its share takes a cell from a tenant
 * above it (kc_evict_one).
 *
 * Key lifetime.  Unwrapped key bytes live in vault cells only while their
 * entry exists.  A cell is wiped with explicit_bzero when its entry is
 * evicted, expires (swept at most once a second by a writer, and every
 * poller round), is flushed, or its tenant is purged (revocation, flush).
 * byok_cache_get() copies the bytes out to the caller, who must wipe its
 * copy.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "cache/cache_internal.h"
#include "guc.h"

/* Remove one cache entry, wiping its cell.  Exclusive lock held. */
static void
kc_remove(ByokCacheEntry *entry)
{
	explicit_bzero(kc_vault + (Size) entry->cell * BYOK_KEY_LEN, BYOK_KEY_LEN);
	kc_free[kc_shared->nfree++] = entry->cell;
	if (entry->slot >= 0 && entry->slot < byok_max_tenants)
		kc_slots[entry->slot].nentries--;
	hash_search(kc_cache, &entry->key, HASH_REMOVE, NULL);
}

/*
 * Remove entries that have expired (all entries when 'slot' matches or
 * dboid matches, see callers).  Exclusive lock held.  Returns the number
 * removed.  Removing the current element during hash_seq_search is allowed.
 */
int
kc_sweep(TimestampTz now, int slot, Oid dboid)
{
	HASH_SEQ_STATUS scan;
	ByokCacheEntry *entry;
	int			removed = 0;

	hash_seq_init(&scan, kc_cache);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		bool		drop;

		if (slot >= 0)
			drop = entry->slot == slot;
		else if (OidIsValid(dboid))
			drop = entry->key.dboid == dboid;
		else
			drop = entry->expires_at <= now;
		if (drop)
		{
			kc_remove(entry);
			removed++;
		}
	}
	return removed;
}

/*
 * Free one vault cell for tenant slot 'slot', fairly (exclusive lock held).
 * Each tenant with cached keys is entitled to an equal share of the cache.
 * A tenant at or over its share gives up its own least recently used
 * entry, so one tenant's traffic can never evict another tenant's keys;
 * below its share, the least recently used entry of a tenant over its
 * share goes (any entry only if no tenant is over: the cache is then
 * shared out evenly already).
 */
static void
kc_evict_one(int slot)
{
	HASH_SEQ_STATUS scan;
	ByokCacheEntry *entry;
	ByokCacheEntry *victim = NULL;
	ByokCacheEntry *any = NULL;
	int			tenants = kc_slots[slot].nentries > 0 ? 0 : 1;	/* the newcomer counts */
	int			share;
	bool		own;

	for (int i = 0; i < byok_max_tenants; i++)
		if (kc_slots[i].nentries > 0)
			tenants++;
	share = Max(1, byok_cache_size / Max(tenants, 1));
	own = kc_slots[slot].nentries >= share;

	hash_seq_init(&scan, kc_cache);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		bool		eligible = own ? entry->slot == slot
			: (entry->slot >= 0 && entry->slot < byok_max_tenants &&
			   kc_slots[entry->slot].nentries > share);

		if (eligible && (victim == NULL || entry->last_used < victim->last_used))
			victim = entry;
		if (any == NULL || entry->last_used < any->last_used)
			any = entry;
	}
	if (victim == NULL)
		victim = any;
	if (victim)
		kc_remove(victim);
}

/*
 * Copy the cached key 'key' into 'out' (BYOK_KEY_LEN bytes) with its tenant
 * slot and the generation it was installed under.  False when absent or
 * expired.  Takes the lock shared.
 */
bool
byok_cache_get(const ByokCacheKey *key, uint8 *out, int *slot, uint64 *generation, uint64 *used)
{
	ByokCacheEntry *entry;
	TimestampTz now = GetCurrentTimestamp();
	bool		hit = false;

	LWLockAcquire(kc_lock, LW_SHARED);
	entry = hash_search(kc_cache, key, HASH_FIND, NULL);
	if (entry && entry->expires_at > now &&
		pg_atomic_read_u64(&kc_slots[entry->slot].generation) == entry->generation)
	{
		memcpy(out, kc_vault + (Size) entry->cell * BYOK_KEY_LEN, BYOK_KEY_LEN);
		*slot = entry->slot;
		*generation = entry->generation;
		if (used)
			*used = entry->used;
		entry->last_used = now;
		hit = true;
		pg_atomic_fetch_add_u64(&kc_slots[entry->slot].stats.cache_hits, 1);
	}
	LWLockRelease(kc_lock);
	return hit;
}

/*
 * Install 'bytes' as the cached key 'key' of tenant slot 'slot', provided
 * the tenant is still active at 'generation' (the generation the caller saw
 * before it fetched the key).  Returns false, installing nothing, when the
 * tenant changed meanwhile; true otherwise (also when caching is off).
 * Takes the lock exclusive.
 */
bool
byok_cache_put(const ByokCacheKey *key, int slot, uint64 generation, const uint8 *bytes, uint64 used)
{
	ByokTenantSlot *ts = &kc_slots[slot];
	ByokCacheEntry *entry;
	TimestampTz now = GetCurrentTimestamp();
	bool		found;
	bool		ok = true;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (pg_atomic_read_u64(&ts->generation) != generation ||
		pg_atomic_read_u32(&ts->state) != BYOK_TENANT_ACTIVE)
		ok = false;
	else if (byok_cache_ttl > 0)
	{
		if (now - kc_shared->last_sweep >= USECS_PER_SEC)
		{
			kc_sweep(now, -1, InvalidOid);
			kc_shared->last_sweep = now;
		}
		entry = hash_search(kc_cache, key, HASH_FIND, NULL);
		if (entry == NULL)
		{
			if (kc_shared->nfree == 0)
				kc_evict_one(slot);
			entry = hash_search(kc_cache, key, HASH_ENTER_NULL, &found);
			if (entry != NULL)
			{
				entry->cell = kc_free[--kc_shared->nfree];
				entry->used = 0;
				entry->allowed = 0;
				ts->nentries++;
			}
		}
		if (entry != NULL)
		{
			memcpy(kc_vault + (Size) entry->cell * BYOK_KEY_LEN, bytes, BYOK_KEY_LEN);
			entry->slot = slot;
			entry->generation = generation;
			entry->expires_at = now + (TimestampTz) byok_cache_ttl * USECS_PER_SEC;
			entry->last_used = now;
			entry->used = Max(entry->used, used);
			entry->allowed = Max(entry->allowed, entry->used);
		}
		ts->last_used = now;
	}
	LWLockRelease(kc_lock);
	return ok;
}

/*
 * Wipe every cached key of one database and bump the generation of each of
 * its tenants.  Returns the number of entries wiped.  Takes the lock
 * exclusive.
 */
int
byok_cache_flush_database(Oid dboid)
{
	int			purged;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	for (int i = 0; i < byok_max_tenants; i++)
		if (kc_slots[i].in_use && kc_slots[i].dboid == dboid)
			pg_atomic_fetch_add_u64(&kc_slots[i].generation, 1);
	purged = kc_sweep(0, -1, dboid);
	LWLockRelease(kc_lock);
	return purged;
}

/* Wipe expired entries now (the poller calls this every round). */
int
byok_cache_sweep_expired(void)
{
	int			n;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	n = kc_sweep(now, -1, InvalidOid);
	kc_shared->last_sweep = now;
	LWLockRelease(kc_lock);
	return n;
}

/*
 * Add 'n' values sealed under the cached DEK 'key' (a negative 'n' gives
 * back reservations left unused); returns the new total,
 * or 'fallback' when the DEK is not cached (then nothing is recorded).
 * Takes the lock exclusive.
 */
uint64
byok_cache_add_use(const ByokCacheKey *key, int64 n, uint64 fallback)
{
	ByokCacheEntry *entry;
	uint64		total = fallback;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	entry = hash_search(kc_cache, key, HASH_FIND, NULL);
	if (entry)
	{
		if (n >= 0)
			entry->used += (uint64) n;
		else
			entry->used -= Min(entry->used, (uint64) -n);
		total = entry->used;
	}
	LWLockRelease(kc_lock);
	return total;
}

/*
 * Reserve up to 'want' more encryptions under the cached DEK 'key' from
 * its shared count, which never passes 'limit'.  Returns how many were
 * granted (0: the DEK is exhausted) and the count before into *before.
 * *tracked is false, and nothing is reserved, when the DEK is not in the
 * cache.  Takes the lock exclusive.
 */
uint64
byok_cache_reserve(const ByokCacheKey *key, uint64 want, uint64 limit, bool *tracked, uint64 *before)
{
	ByokCacheEntry *entry;
	uint64		granted = 0;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	entry = hash_search(kc_cache, key, HASH_FIND, NULL);
	*tracked = entry != NULL;
	*before = entry ? entry->used : 0;
	if (entry && entry->used < limit)
	{
		granted = Min(want, limit - entry->used);
		entry->used += granted;
	}
	LWLockRelease(kc_lock);
	return granted;
}

/*
 * On a Citus cluster the coordinator's catalog counts what every node has
 * reserved under a DEK (byok_reserve_encryptions), and a node seals only
 * what it reserved: reserve up to 'want' from this node's reservations for
 * the cached DEK 'key' (0 when they are used up: reserve more, then call
 * again).  *tracked as for byok_cache_reserve.  Takes the lock exclusive.
 */
uint64
byok_cache_reserve_node(const ByokCacheKey *key, uint64 want, bool *tracked, uint64 *before)
{
	ByokCacheEntry *entry;
	uint64		granted = 0;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	entry = hash_search(kc_cache, key, HASH_FIND, NULL);
	*tracked = entry != NULL;
	*before = entry ? entry->used : 0;
	if (entry && entry->used < entry->allowed)
	{
		granted = Min(want, entry->allowed - entry->used);
		entry->used += granted;
	}
	LWLockRelease(kc_lock);
	return granted;
}

/* 'n' more encryptions reserved on the coordinator for this node's cached DEK 'key'. */
bool
byok_cache_allow(const ByokCacheKey *key, uint64 n)
{
	ByokCacheEntry *entry;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	entry = hash_search(kc_cache, key, HASH_FIND, NULL);
	if (entry)
		entry->allowed += n;
	LWLockRelease(kc_lock);
	return entry != NULL;
}
