/*-------------------------------------------------------------------------
 *
 * keycache.c
 *		Shared-memory tenant slots and the cache of unwrapped TKs and DEKs.
 *
 * Layout.  Three pieces of shared memory, sized at postmaster start:
 *   - "byok state": the ByokShared header, byok.max_tenants tenant slots
 *     and the free list of key-vault cells;
 *   - "byok tenants": a hash (database oid, tenant id) -> slot index;
 *   - "byok key cache": a hash ByokCacheKey -> ByokCacheEntry, entries
 *     fixed-size and pointer-free; an entry names a cell of the vault;
 *   - "byok key vault": byok.cache_size cells of 32 bytes, page-aligned and
 *     marked MADV_DONTDUMP, so unwrapped keys stay out of core dumps.
 *
 * Locking protocol.  One LWLock (tranche "byok") guards both hashes, the
 * slots' non-atomic fields, the vault and its free list.  Lookups take it
 * shared; installing, evicting, purging and changing a tenant's state take
 * it exclusive.  A slot's 'state' and 'generation' are atomics written only
 * under the exclusive lock and read without any lock on the hot path.  No
 * provider (KMS/HSM) is ever called with the lock held: callers fetch a key
 * first, then call byok_cache_put(), which installs it only if the tenant's
 * generation is still the one the caller saw before fetching.
 *
 * Key lifetime.  Unwrapped key bytes live in vault cells only while their
 * entry exists.  A cell is wiped with explicit_bzero when its entry is
 * evicted, expires (swept at most once a second by a writer), is flushed,
 * or its tenant is purged (revocation, flush).  byok_cache_get() copies the
 * bytes out to the caller, who must wipe its copy.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/mman.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "keycache.h"

typedef struct ByokShared
{
	int			cache_size;		/* vault cells and cache entries */
	int			max_tenants;	/* tenant slots */
	pg_atomic_uint64 catalog_epoch; /* bumped when any current DEK changes */
	TimestampTz last_sweep;		/* last sweep of expired entries */
	int			nfree;			/* free vault cells on the stack */
} ByokShared;

typedef struct ByokCacheEntry
{
	ByokCacheKey key;			/* hash key; must be first */
	int32		cell;			/* vault cell holding the key bytes */
	int32		slot;			/* tenant slot */
	uint64		generation;		/* tenant generation when installed */
	TimestampTz expires_at;		/* byok.cache_ttl after installation */
	TimestampTz last_used;		/* approximate, written under shared lock */
} ByokCacheEntry;

typedef struct ByokTenantMapKey
{
	Oid			dboid;
	Oid			catalog;
	int32		tenant_id;
} ByokTenantMapKey;

typedef struct ByokTenantMapEntry
{
	ByokTenantMapKey key;
	int32		slot;
} ByokTenantMapEntry;

static ByokShared *kc_shared = NULL;
static ByokTenantSlot *kc_slots = NULL;
static int32 *kc_free = NULL;
static uint8 *kc_vault = NULL;
static HTAB *kc_cache = NULL;
static HTAB *kc_map = NULL;
static LWLock *kc_lock = NULL;

static Size
kc_state_size(void)
{
	Size		size = MAXALIGN(sizeof(ByokShared));

	size = add_size(size, mul_size(byok_max_tenants, sizeof(ByokTenantSlot)));
	size = add_size(size, mul_size(byok_cache_size, sizeof(int32)));
	return size;
}

static Size
kc_vault_size(void)
{
	return add_size(mul_size(byok_cache_size, BYOK_KEY_LEN), 2 * (Size) sysconf(_SC_PAGESIZE));
}

/* shmem_request_hook work: reserve everything byok needs */
void
byok_cache_shmem_request(void)
{
	RequestAddinShmemSpace(kc_state_size());
	RequestAddinShmemSpace(kc_vault_size());
	RequestAddinShmemSpace(hash_estimate_size(byok_cache_size, sizeof(ByokCacheEntry)));
	RequestAddinShmemSpace(hash_estimate_size(byok_max_tenants, sizeof(ByokTenantMapEntry)));
	RequestNamedLWLockTranche("byok", 1);
}

/* shmem_startup_hook work: attach to (or create) the shared structures */
void
byok_cache_shmem_startup(void)
{
	bool		found;
	bool		vfound;
	HASHCTL		info;
	char	   *base;
	uint8	   *vraw;
	Size		page = (Size) sysconf(_SC_PAGESIZE);

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	base = ShmemInitStruct("byok state", kc_state_size(), &found);
	kc_shared = (ByokShared *) base;
	kc_slots = (ByokTenantSlot *) (base + MAXALIGN(sizeof(ByokShared)));
	kc_free = (int32 *) (kc_slots + byok_max_tenants);

	vraw = ShmemInitStruct("byok key vault", kc_vault_size(), &vfound);
	kc_vault = (uint8 *) TYPEALIGN(page, vraw);

	if (!found)
	{
		kc_shared->cache_size = byok_cache_size;
		kc_shared->max_tenants = byok_max_tenants;
		pg_atomic_init_u64(&kc_shared->catalog_epoch, 1);
		kc_shared->last_sweep = 0;
		for (int i = 0; i < byok_max_tenants; i++)
		{
			memset(&kc_slots[i], 0, sizeof(ByokTenantSlot));
			pg_atomic_init_u32(&kc_slots[i].state, BYOK_TENANT_ACTIVE);
			pg_atomic_init_u64(&kc_slots[i].generation, 1);
		}
		for (int i = 0; i < byok_cache_size; i++)
			kc_free[i] = byok_cache_size - 1 - i;
		kc_shared->nfree = byok_cache_size;
		memset(kc_vault, 0, mul_size(byok_cache_size, BYOK_KEY_LEN));

		/*
		 * Keep key bytes out of core dumps.  The mapping is inherited by
		 * every child of the postmaster, so doing it once here covers them.
		 */
#ifdef MADV_DONTDUMP
		if (madvise(kc_vault, TYPEALIGN(page, mul_size(byok_cache_size, BYOK_KEY_LEN)),
					MADV_DONTDUMP) != 0)
			ereport(LOG,
					(errmsg("byok could not exclude its key cache from core dumps: %m")));
#endif
	}

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ByokCacheKey);
	info.entrysize = sizeof(ByokCacheEntry);
	kc_cache = ShmemInitHash("byok key cache", byok_cache_size, byok_cache_size,
							 &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ByokTenantMapKey);
	info.entrysize = sizeof(ByokTenantMapEntry);
	kc_map = ShmemInitHash("byok tenants", byok_max_tenants, byok_max_tenants,
						   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);

	kc_lock = &(GetNamedLWLockTranche("byok"))->lock;

	LWLockRelease(AddinShmemInitLock);
}

bool
byok_cache_ready(void)
{
	return kc_shared != NULL;
}

ByokTenantSlot *
byok_tenant_slot(int slot)
{
	Assert(slot >= 0 && slot < byok_max_tenants);
	return &kc_slots[slot];
}

uint64
byok_catalog_epoch(void)
{
	return pg_atomic_read_u64(&kc_shared->catalog_epoch);
}

void
byok_catalog_epoch_bump(void)
{
	pg_atomic_fetch_add_u64(&kc_shared->catalog_epoch, 1);
}

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
static int
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

/* Free one vault cell by evicting the least recently used entry.  Exclusive lock held. */
static void
kc_evict_one(void)
{
	HASH_SEQ_STATUS scan;
	ByokCacheEntry *entry;
	ByokCacheEntry *victim = NULL;

	hash_seq_init(&scan, kc_cache);
	while ((entry = hash_seq_search(&scan)) != NULL)
		if (victim == NULL || entry->last_used < victim->last_used)
			victim = entry;
	if (victim)
		kc_remove(victim);
}

/*
 * Copy the cached key 'key' into 'out' (BYOK_KEY_LEN bytes) with its tenant
 * slot and the generation it was installed under.  False when absent or
 * expired.  Takes the lock shared.
 */
bool
byok_cache_get(const ByokCacheKey *key, uint8 *out, int *slot, uint64 *generation)
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
		entry->last_used = now;
		hit = true;
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
byok_cache_put(const ByokCacheKey *key, int slot, uint64 generation, const uint8 *bytes)
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
				kc_evict_one();
			entry = hash_search(kc_cache, key, HASH_ENTER_NULL, &found);
			if (entry != NULL)
			{
				entry->cell = kc_free[--kc_shared->nfree];
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
		}
		ts->last_used = now;
	}
	LWLockRelease(kc_lock);
	return ok;
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

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (ts->in_use && ts->tenant_id == tenant_id)
	{
		pg_atomic_write_u32(&ts->state, state);
		pg_atomic_fetch_add_u64(&ts->generation, 1);
		ts->state_changed_at = GetCurrentTimestamp();
		purged = kc_sweep(0, slot, InvalidOid);
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
		pg_atomic_fetch_add_u64(&kc_slots[slot].generation, 1);
		kc_sweep(0, slot, InvalidOid);
	}
	LWLockRelease(kc_lock);
}
