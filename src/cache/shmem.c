/*-------------------------------------------------------------------------
 *
 * cache/shmem.c
 *		byok's shared memory: its layout, sizing and start-up (the pointers
 *		every file of src/cache/ works through), the catalog epoch, and
 *		byok_check_loaded.
 *
 * The folder src/cache/ owns everything byok keeps in shared memory:
 * tenant slots and their generations (slots.c), the cache of unwrapped
 * TKs and DEKs and its key vault (keys.c), single flight of provider
 * unwraps (flight.c), the CMK registry (cmk.c), the audit-event ring
 * (events.c) and the pollers' status (poller.c).  Their shared types and
 * the pointers below are in cache/cache_internal.h; the rest of byok sees
 * only cache/cache.h.
 *
 * Layout.  Five pieces of shared memory, sized at postmaster start:
 *   - "byok state": the ByokShared header (flights, event ring, pollers),
 *     byok.max_tenants tenant slots, the free list of key-vault cells and
 *     byok.max_tenants CMK registry entries;
 *   - "byok tenants": a hash (database oid, catalog, tenant id) -> slot;
 *   - "byok cmks": a hash (provider, key_ref) -> CMK registry index;
 *   - "byok key cache": a hash ByokCacheKey -> ByokCacheEntry, entries
 *     fixed-size and pointer-free; an entry names a cell of the vault;
 *   - "byok key vault": byok.cache_size cells of 32 bytes, page-aligned and
 *     marked MADV_DONTDUMP, so unwrapped keys stay out of core dumps.
 *
 * Locking protocol.  One LWLock (tranche "byok", kc_lock) guards the
 * hashes, the header, the slots' non-atomic fields, the CMK registry, the
 * vault and its free list.  Lookups take it shared; installing, evicting,
 * purging and changing a tenant's state take it exclusive.  A slot's
 * 'state' and 'generation' are atomics written only under the exclusive
 * lock and read without any lock on the hot path.  No provider (KMS/HSM)
 * is ever called with the lock held: callers fetch a key first, then call
 * byok_cache_put(), which installs it only if the tenant's generation is
 * still the one the caller saw before fetching.
 *
 * Fairness.  When the cache is full, a tenant at its share (the cache size
 * divided by the tenants holding entries) evicts its own least recently
 * used entry; only a tenant below its share takes a cell from a tenant
 * above it (kc_evict_one, keys.c).
 *
 * Key lifetime.  Unwrapped key bytes live in vault cells only while their
 * entry exists.  A cell is wiped with explicit_bzero when its entry is
 * evicted, expires (swept at most once a second by a writer, and every
 * poller round), is flushed, or its tenant is purged (revocation, flush).
 * byok_cache_get() copies the bytes out to the caller, who must wipe its
 * copy.  Nothing outside the vault holds key bytes in shared memory.
 *
 * The catalog epoch is an atomic, bumped (without the lock) by every commit
 * that creates or rotates a DEK; backends trust their map of current DEKs
 * only while it is unchanged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/mman.h>
#include <unistd.h>

#include "storage/ipc.h"
#include "storage/shmem.h"

#include "cache/cache_internal.h"
#include "guc.h"

ByokShared *kc_shared = NULL;
ByokTenantSlot *kc_slots = NULL;
ByokCmk    *kc_cmks = NULL;
HTAB	   *kc_cmk_map = NULL;
int32	   *kc_free = NULL;
uint8	   *kc_vault = NULL;
HTAB	   *kc_cache = NULL;
HTAB	   *kc_map = NULL;
LWLock	   *kc_lock = NULL;

static Size
kc_state_size(void)
{
	Size		size = MAXALIGN(sizeof(ByokShared));

	size = add_size(size, mul_size(byok_max_tenants, sizeof(ByokTenantSlot)));
	size = add_size(size, MAXIMUM_ALIGNOF);
	size = add_size(size, mul_size(byok_cache_size, sizeof(int32)));
	size = add_size(size, mul_size(byok_max_tenants, sizeof(ByokCmk)));
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
	RequestAddinShmemSpace(hash_estimate_size(byok_max_tenants, sizeof(ByokCmkMapEntry)));
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
	kc_cmks = (ByokCmk *) MAXALIGN(kc_free + byok_cache_size);

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
			ByokTenantSlot *ts = &kc_slots[i];

			memset(ts, 0, sizeof(ByokTenantSlot));
			pg_atomic_init_u32(&ts->state, BYOK_TENANT_ACTIVE);
			pg_atomic_init_u64(&ts->generation, 1);
			pg_atomic_init_u32(&ts->handles, 0);
			pg_atomic_init_u64(&ts->stats.encrypts, 0);
			pg_atomic_init_u64(&ts->stats.decrypts, 0);
			pg_atomic_init_u64(&ts->stats.cache_hits, 0);
			pg_atomic_init_u64(&ts->stats.cache_misses, 0);
			ts->cmk = -1;
			memset(&kc_cmks[i], 0, sizeof(ByokCmk));
		}
		kc_shared->flight_seq = 0;
		kc_shared->cmk_serial = 0;
		for (int i = 0; i < BYOK_MAX_FLIGHTS; i++)
		{
			memset(&kc_shared->flights[i], 0, sizeof(ByokFlight));
			ConditionVariableInit(&kc_shared->flights[i].cv);
		}
		kc_shared->event_head = kc_shared->event_count = 0;
		kc_shared->events_dropped = 0;
		kc_shared->poller_procno = -1;
		memset(&kc_shared->poller, 0, sizeof(ByokPollerStatus));
		kc_shared->slow_pid = 0;
		kc_shared->slow_seen_at = 0;
		kc_shared->cluster_db = InvalidOid;
		kc_shared->reporter_procno = -1;
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

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ByokCmkMapKey);
	info.entrysize = sizeof(ByokCmkMapEntry);
	kc_cmk_map = ShmemInitHash("byok cmks", byok_max_tenants, byok_max_tenants,
							   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);

	kc_lock = &(GetNamedLWLockTranche("byok"))->lock;

	LWLockRelease(AddinShmemInitLock);
}

bool
byok_cache_ready(void)
{
	return kc_shared != NULL;
}

/* Raise a clear error unless byok was preloaded. */
void
byok_check_loaded(void)
{
	if (!byok_cache_ready())
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_NOT_LOADED),
				 errmsg("byok is not loaded"),
				 errdetail("byok keeps its key cache in shared memory, which must be reserved at server start."),
				 errhint("Add byok to shared_preload_libraries in postgresql.conf and restart the server.")));
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
