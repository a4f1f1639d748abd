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
 * Fairness.  When the cache is full, a tenant at its share (the cache size
 * divided by the tenants holding entries) evicts its own least recently
 * used entry; only a tenant below its share takes a cell from a tenant
 * above it (kc_evict_one).
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
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "keycache.h"

#define BYOK_MAX_FLIGHTS	64		/* provider calls in flight at once */
#define BYOK_EVENT_RING		512		/* audit rows waiting for their database */

/* one provider unwrap in flight, which other backends may wait for */
typedef struct ByokFlight
{
	bool		in_use;
	bool		done;			/* the leader has finished */
	ByokCacheKey key;			/* the key being fetched */
	int			owner_pid;		/* the leader */
	uint64		seq;			/* tells reuses of this slot apart */
	int			nwaiters;		/* backends waiting on cv */
	ByokKmsError err;			/* the leader's result */
	ConditionVariable cv;
} ByokFlight;

/* a customer master key in use, as the poller sees it */
typedef struct ByokCmk
{
	bool		in_use;
	char		provider[32];
	char		key_ref[BYOK_MAX_KEY_REF + 1];
	int32		version_hint;	/* oldest provider key version byok needs */
	ByokKmsStatus last_status;
	int			last_state;		/* ByokKeyState, -1 before the first poll */
	TimestampTz last_poll_at;
	int64		last_poll_us;
	TimestampTz unreachable_since;
	char		last_error[128];
	TimestampTz last_active_at; /* last registration; keeps a fresh CMK polled */
	uint64		serial;			/* which CMK this entry holds (entries are reused) */
	TimestampTz last_asked_at;	/* when the question last recorded was asked */
	bool		slow;			/* asked by the slow-key poller (see byok_cmk_record_poll) */
	int			fast_streak;	/* answers in time in a row while slow */
} ByokCmk;

typedef struct ByokCmkMapKey
{
	char		provider[32];
	char		key_ref[BYOK_MAX_KEY_REF + 1];
} ByokCmkMapKey;

typedef struct ByokCmkMapEntry
{
	ByokCmkMapKey key;
	int32		idx;
} ByokCmkMapEntry;

typedef struct ByokShared
{
	int			cache_size;		/* vault cells and cache entries */
	int			max_tenants;	/* tenant slots and CMK registry entries */
	pg_atomic_uint64 catalog_epoch; /* bumped when any current DEK changes */
	TimestampTz last_sweep;		/* last sweep of expired entries */
	int			nfree;			/* free vault cells on the stack */
	uint64		flight_seq;		/* last flight sequence number handed out */
	uint64		cmk_serial;		/* last CMK registry serial handed out */
	ByokFlight	flights[BYOK_MAX_FLIGHTS];
	int			event_head;		/* oldest queued event */
	int			event_count;	/* queued events */
	uint64		events_dropped; /* events lost to a full ring */
	ByokEvent	events[BYOK_EVENT_RING];
	int			poller_procno;	/* pgprocno of the poller, -1 if none */
	ByokPollerStatus poller;	/* the poller's own figures */
	int			slow_pid;		/* the slow-key poller, 0 when not running */
	TimestampTz slow_seen_at;	/* when it last started or ended a round */
} ByokShared;

typedef struct ByokCacheEntry
{
	ByokCacheKey key;			/* hash key; must be first */
	int32		cell;			/* vault cell holding the key bytes */
	int32		slot;			/* tenant slot */
	uint64		generation;		/* tenant generation when installed */
	TimestampTz expires_at;		/* byok.cache_ttl after installation */
	TimestampTz last_used;		/* approximate, written under shared lock */
	uint64		used;			/* DEKs: values sealed so far (catalog + since) */
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
static ByokCmk *kc_cmks = NULL;
static HTAB *kc_cmk_map = NULL;
static int32 *kc_free = NULL;
static uint8 *kc_vault = NULL;
static HTAB *kc_cache = NULL;
static HTAB *kc_map = NULL;
static LWLock *kc_lock = NULL;

static void kc_release_flights(int code, Datum arg);
static void kc_change_state(int slot, ByokTenantState state, const char *reason,
							TimestampTz seen_at, ByokStateChange *change);

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

/* ---- tenant state driven by the provider ---- */

/*
 * Apply a state change to a slot: set it, bump the generation, wipe the
 * tenant's cached keys, and describe it in 'change'.  Exclusive lock held.
 */
static void
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
 * destroyed: lock the tenant out now, in every backend.  Returns the number
 * of entries wiped, -1 if the slot no longer holds the tenant (then
 * 'change' is untouched).  Takes the lock exclusive.
 */
int
byok_tenant_provider_state(int slot, int32 tenant_id, ByokTenantState state,
						   const char *reason, ByokStateChange *change)
{
	ByokTenantSlot *ts = &kc_slots[slot];
	TimestampTz now = GetCurrentTimestamp();
	int			purged = -1;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (ts->in_use && ts->tenant_id == tenant_id)
	{
		ByokTenantState cur = pg_atomic_read_u32(&ts->state);

		/* an administrator's revocation stands; only destruction overrides it */
		if (cur != state && cur != BYOK_TENANT_CMK_DESTROYED &&
			(cur != BYOK_TENANT_REVOKED || state == BYOK_TENANT_CMK_DESTROYED))
		{
			kc_change_state(slot, state, reason, now, change);
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

/* ---- the CMK registry ---- */

/*
 * Record that tenant slot 'slot' uses CMK (provider, key_ref), so the
 * poller watches it.  Returns the registry index, or -1 if the registry is
 * full (then the tenant is not polled; a warning says so).  Takes the lock
 * exclusive.
 */
int
byok_cmk_register(int slot, const char *provider, const char *key_ref, int32 version_hint)
{
	ByokCmkMapKey mk;
	ByokCmkMapEntry *me;
	ByokTenantSlot *ts = &kc_slots[slot];
	bool		found;
	int			idx = -1;

	memset(&mk, 0, sizeof(mk));
	strlcpy(mk.provider, provider, sizeof(mk.provider));
	strlcpy(mk.key_ref, key_ref, sizeof(mk.key_ref));

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	me = hash_search(kc_cmk_map, &mk, HASH_FIND, NULL);
	if (me == NULL)
	{
		for (int i = 0; i < byok_max_tenants; i++)
			if (!kc_cmks[i].in_use)
			{
				idx = i;
				break;
			}
		if (idx >= 0)
		{
			ByokCmk    *c = &kc_cmks[idx];

			me = hash_search(kc_cmk_map, &mk, HASH_ENTER, &found);
			me->idx = idx;
			memset(c, 0, sizeof(ByokCmk));
			c->in_use = true;
			c->serial = ++kc_shared->cmk_serial;
			strlcpy(c->provider, provider, sizeof(c->provider));
			strlcpy(c->key_ref, key_ref, sizeof(c->key_ref));
			c->last_state = -1;
		}
	}
	if (me != NULL)
	{
		idx = me->idx;
		kc_cmks[idx].last_active_at = GetCurrentTimestamp();
		if (version_hint > 0 &&
			(kc_cmks[idx].version_hint == 0 || version_hint < kc_cmks[idx].version_hint))
			kc_cmks[idx].version_hint = version_hint;
		ts->cmk = idx;
	}
	LWLockRelease(kc_lock);
	if (idx < 0)
		ereport(WARNING,
				(errmsg("byok key registry is full; tenant \"%s\" is not polled", ts->name),
				 errhint("Raise byok.max_tenants.")));
	return idx;
}

static void
kc_cmk_copy(int idx, ByokCmkInfo *out)
{
	ByokCmk    *c = &kc_cmks[idx];

	out->idx = idx;
	out->serial = c->serial;
	out->slow = c->slow;
	strlcpy(out->provider, c->provider, sizeof(out->provider));
	strlcpy(out->key_ref, c->key_ref, sizeof(out->key_ref));
	out->version_hint = c->version_hint;
	out->last_status = c->last_status;
	out->last_state = c->last_state;
	out->last_poll_at = c->last_poll_at;
	out->last_poll_us = c->last_poll_us;
	out->unreachable_since = c->unreachable_since;
	strlcpy(out->last_error, c->last_error, sizeof(out->last_error));
}

/*
 * The poller's work list: a palloc'd copy of every live CMK (returns the
 * count).  CMKs no longer live leave the registry here, and their tenants
 * forget them: their next unwrap registers them again.  Takes the lock
 * exclusive.
 */
int
byok_cmk_snapshot(ByokCmkInfo **out, bool prune)
{
	TimestampTz now = GetCurrentTimestamp();
	int			n = 0;
	bool	   *live = palloc0(sizeof(bool) * byok_max_tenants);

	*out = palloc(sizeof(ByokCmkInfo) * byok_max_tenants);
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	/* one pass over the slots marks every CMK with a reason to be polled */
	for (int i = 0; i < byok_max_tenants; i++)
	{
		ByokTenantSlot *ts = &kc_slots[i];
		ByokTenantState st;

		if (!ts->in_use || ts->cmk < 0)
			continue;
		st = pg_atomic_read_u32(&ts->state);
		if (ts->nentries > 0 || pg_atomic_read_u32(&ts->handles) > 0 ||
			st == BYOK_TENANT_CMK_DISABLED || st == BYOK_TENANT_KMS_UNREACHABLE)
			live[ts->cmk] = true;
	}
	for (int i = 0; i < byok_max_tenants; i++)
	{
		ByokCmk    *c = &kc_cmks[i];

		if (!c->in_use)
			continue;
		if (live[i] || now - c->last_active_at < 60 * USECS_PER_SEC || !prune)
			kc_cmk_copy(i, &(*out)[n++]);
		else
		{
			ByokCmkMapKey mk;

			memset(&mk, 0, sizeof(mk));
			strlcpy(mk.provider, c->provider, sizeof(mk.provider));
			strlcpy(mk.key_ref, c->key_ref, sizeof(mk.key_ref));
			hash_search(kc_cmk_map, &mk, HASH_REMOVE, NULL);
			c->in_use = false;
			for (int j = 0; j < byok_max_tenants; j++)
				if (kc_slots[j].cmk == i)
					kc_slots[j].cmk = -1;
		}
	}
	LWLockRelease(kc_lock);
	pfree(live);
	return n;
}

/* A copy of registry entry 'idx'; false if it is not in use.  Takes the lock shared. */
bool
byok_cmk_get(int idx, ByokCmkInfo *out)
{
	bool		ok = false;

	if (idx < 0 || idx >= byok_max_tenants)
		return false;
	LWLockAcquire(kc_lock, LW_SHARED);
	if (kc_cmks[idx].in_use)
	{
		kc_cmk_copy(idx, out);
		ok = true;
	}
	LWLockRelease(kc_lock);
	return ok;
}

/*
 * Record one poll of CMK 'idx' and apply it to every tenant using it:
 *   ENABLED   -> tenants locked out by the provider (or unreachability) recover;
 *   DISABLED  -> active tenants are locked out (CMK_DISABLED);
 *   DESTROYED -> every tenant is locked out for good (CMK_DESTROYED);
 *   failure   -> not a revocation; under fail_closed, active tenants are
 *                locked out once the provider has failed for longer than
 *                byok.unreachable_grace.
 * Returns a palloc'd List of ByokStateChange.  Takes the lock exclusive.
 */
List *
byok_cmk_record_poll(int idx, uint64 serial, TimestampTz asked_at, ByokKmsStatus status,
					 ByokKeyState state, int64 us, const ByokKmsError *err)
{
	ByokCmk    *c = &kc_cmks[idx];
	TimestampTz now = GetCurrentTimestamp();
	List	   *changes = NIL;
	bool		fail_closed = false;
	bool		bad;

	if (idx < 0 || idx >= byok_max_tenants)
		return NIL;
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	/*
	 * The entry may hold another CMK by now (the one asked about left the
	 * registry and its entry was reused), or a fresher answer may have been
	 * recorded (both pollers asked): either way this answer is not applied.
	 */
	if (!c->in_use || c->serial != serial || asked_at < c->last_asked_at)
	{
		LWLockRelease(kc_lock);
		return NIL;
	}
	c->last_asked_at = asked_at;
	/*
	 * Which poller asks next time: a failed or slow answer (over half of
	 * byok.kms_timeout) sends the CMK to the slow-key poller; three answers
	 * in time in a row bring it back, so a flapping KMS cannot hold up the
	 * poller's round every other time.
	 */
	bad = status != BYOK_KMS_OK || us > (int64) byok_kms_timeout * 500;
	if (bad)
	{
		c->slow = true;
		c->fast_streak = 0;
	}
	else if (c->slow && ++c->fast_streak >= 3)
		c->slow = false;
	c->last_status = status;
	c->last_poll_at = now;
	c->last_poll_us = us;
	if (status == BYOK_KMS_OK)
	{
		c->last_state = state;
		c->unreachable_since = 0;
		c->last_error[0] = '\0';
	}
	else
	{
		if (c->unreachable_since == 0)
			c->unreachable_since = now;
		snprintf(c->last_error, sizeof(c->last_error), "%s%s%s",
				 err->remote_code, err->remote_code[0] ? ": " : "", err->message);
		fail_closed = byok_unreachable_policy == BYOK_FAIL_CLOSED &&
			now - c->unreachable_since >= (int64) byok_unreachable_grace * USECS_PER_SEC;
	}

	for (int i = 0; i < byok_max_tenants; i++)
	{
		ByokTenantSlot *ts = &kc_slots[i];
		ByokTenantState cur;
		ByokTenantState next;
		const char *reason;

		if (!ts->in_use || ts->cmk != idx)
			continue;
		cur = pg_atomic_read_u32(&ts->state);
		next = cur;
		reason = NULL;
		if (cur == BYOK_TENANT_CMK_DESTROYED)
			continue;			/* final */
		if (status == BYOK_KMS_OK && state == BYOK_KEY_DESTROYED)
		{
			next = BYOK_TENANT_CMK_DESTROYED;
			reason = "poller: CMK destroyed";
		}
		else if (cur == BYOK_TENANT_REVOKED)
			continue;			/* an administrator's lockout stands */
		else if (status == BYOK_KMS_OK && state == BYOK_KEY_DISABLED)
		{
			next = BYOK_TENANT_CMK_DISABLED;
			reason = "poller: CMK disabled";
		}
		else if (status == BYOK_KMS_OK && state == BYOK_KEY_ENABLED &&
				 (cur == BYOK_TENANT_CMK_DISABLED || cur == BYOK_TENANT_KMS_UNREACHABLE))
		{
			next = BYOK_TENANT_ACTIVE;
			reason = "poller: CMK enabled";
		}
		else if (status != BYOK_KMS_OK && fail_closed && cur == BYOK_TENANT_ACTIVE)
		{
			next = BYOK_TENANT_KMS_UNREACHABLE;
			reason = "poller: provider unreachable past grace";
		}
		if (next != cur)
		{
			ByokStateChange *ch = palloc(sizeof(ByokStateChange));

			kc_change_state(i, next, reason, now - us, ch);
			changes = lappend(changes, ch);
		}
	}
	LWLockRelease(kc_lock);
	return changes;
}

/* ---- audit events waiting for their database ---- */

/*
 * Queue an audit row for the tenant's database; the poller has a worker
 * connected there write it.  When the ring is full the oldest is dropped
 * (it was logged already).  Takes the lock exclusive.
 */
void
byok_event_queue(const ByokStateChange *change, const char *event, const char *detail)
{
	ByokEvent  *ev;

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (kc_shared->event_count == BYOK_EVENT_RING)
	{
		kc_shared->event_head = (kc_shared->event_head + 1) % BYOK_EVENT_RING;
		kc_shared->event_count--;
		kc_shared->events_dropped++;
	}
	ev = &kc_shared->events[(kc_shared->event_head + kc_shared->event_count) % BYOK_EVENT_RING];
	kc_shared->event_count++;
	ev->dboid = change->dboid;
	ev->catalog = change->catalog;
	ev->tenant_id = change->tenant_id;
	strlcpy(ev->tenant, change->tenant, sizeof(ev->tenant));
	strlcpy(ev->event, event, sizeof(ev->event));
	strlcpy(ev->detail, detail, sizeof(ev->detail));
	ev->at = GetCurrentTimestamp();
	LWLockRelease(kc_lock);
	byok_poller_wake();
}

/*
 * Remove up to 'max' queued events of database 'dboid' into 'out'; returns
 * how many.  Takes the lock exclusive.
 */
int
byok_event_take(Oid dboid, ByokEvent *out, int max)
{
	int			n = 0;
	int			kept = 0;
	ByokEvent  *tmp = palloc(sizeof(ByokEvent) * BYOK_EVENT_RING);

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	for (int i = 0; i < kc_shared->event_count; i++)
	{
		ByokEvent  *ev = &kc_shared->events[(kc_shared->event_head + i) % BYOK_EVENT_RING];

		if (ev->dboid == dboid && n < max)
			out[n++] = *ev;
		else
			tmp[kept++] = *ev;
	}
	for (int i = 0; i < kept; i++)
		kc_shared->events[i] = tmp[i];
	kc_shared->event_head = 0;
	kc_shared->event_count = kept;
	LWLockRelease(kc_lock);
	pfree(tmp);
	return n;
}

/* A database with queued events, or InvalidOid.  Takes the lock shared. */
Oid
byok_event_pending_db(void)
{
	Oid			dboid = InvalidOid;

	LWLockAcquire(kc_lock, LW_SHARED);
	if (kc_shared->event_count > 0)
		dboid = kc_shared->events[kc_shared->event_head].dboid;
	LWLockRelease(kc_lock);
	return dboid;
}

/* ---- single flight ---- */

/*
 * Start fetching the key 'key' from the provider, unless it is cached now
 * (BYOK_FLIGHT_HIT: copied to 'out' with its slot and generation) or another
 * backend is already fetching it (BYOK_FLIGHT_WAITER: wait with
 * byok_flight_wait on *flight / *seq).  BYOK_FLIGHT_LEADER: the caller
 * fetches and must call byok_flight_end on every path.  Takes the lock
 * exclusive.
 */
ByokFlightRole
byok_flight_begin(const ByokCacheKey *key, uint8 *out, int *slot, uint64 *generation,
				  int *flight, uint64 *seq)
{
	ByokCacheEntry *entry;
	int			free_slot = -1;
	ByokFlightRole role = BYOK_FLIGHT_NONE;
	TimestampTz now = GetCurrentTimestamp();
	static bool exit_hook = false;

	if (!exit_hook)
	{
		before_shmem_exit(kc_release_flights, 0);
		exit_hook = true;
	}
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	entry = hash_search(kc_cache, key, HASH_FIND, NULL);
	if (entry && entry->expires_at > now &&
		pg_atomic_read_u64(&kc_slots[entry->slot].generation) == entry->generation)
	{
		memcpy(out, kc_vault + (Size) entry->cell * BYOK_KEY_LEN, BYOK_KEY_LEN);
		*slot = entry->slot;
		*generation = entry->generation;
		LWLockRelease(kc_lock);
		return BYOK_FLIGHT_HIT;
	}
	for (int i = 0; i < BYOK_MAX_FLIGHTS; i++)
	{
		ByokFlight *f = &kc_shared->flights[i];

		if (f->in_use && !f->done && memcmp(&f->key, key, sizeof(ByokCacheKey)) == 0)
		{
			f->nwaiters++;
			*flight = i;
			*seq = f->seq;
			role = BYOK_FLIGHT_WAITER;
			break;
		}
		if (!f->in_use && free_slot < 0)
			free_slot = i;
	}
	if (role != BYOK_FLIGHT_WAITER && free_slot >= 0)
	{
		ByokFlight *f = &kc_shared->flights[free_slot];

		f->in_use = true;
		f->done = false;
		f->key = *key;
		f->owner_pid = MyProcPid;
		f->seq = ++kc_shared->flight_seq;
		f->nwaiters = 0;
		memset(&f->err, 0, sizeof(f->err));
		*flight = free_slot;
		*seq = f->seq;
		role = BYOK_FLIGHT_LEADER;
	}
	LWLockRelease(kc_lock);
	return role;
}

/*
 * The leader's result ('err' NULL = success, the key is installed): wake
 * every waiter.  Takes the lock exclusive.
 */
void
byok_flight_end(int flight, const ByokKmsError *err)
{
	ByokFlight *f = &kc_shared->flights[flight];

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (f->in_use && f->owner_pid == MyProcPid && !f->done)
	{
		f->done = true;
		if (err)
			f->err = *err;
		else
			f->err.status = BYOK_KMS_OK;
		if (f->nwaiters == 0)
			f->in_use = false;
	}
	LWLockRelease(kc_lock);
	ConditionVariableBroadcast(&f->cv);
}

/*
 * Wait (interruptibly, at most timeout_ms) for the leader of 'flight' to
 * finish; copy its result to 'err'.  False on timeout.
 */
bool
byok_flight_wait(int flight, uint64 seq, int timeout_ms, ByokKmsError *err)
{
	ByokFlight *f = &kc_shared->flights[flight];
	TimestampTz deadline = GetCurrentTimestamp() + (int64) timeout_ms * 1000;
	bool		done = false;

	ConditionVariablePrepareToSleep(&f->cv);
	for (;;)
	{
		TimestampTz now;

		LWLockAcquire(kc_lock, LW_SHARED);
		done = f->seq != seq || f->done;
		if (done)
			*err = f->err;
		LWLockRelease(kc_lock);
		if (done)
			break;
		now = GetCurrentTimestamp();
		if (now >= deadline)
			break;
		(void) ConditionVariableTimedSleep(&f->cv, (deadline - now + 999) / 1000,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (f->seq == seq)
	{
		f->nwaiters--;
		if (f->done && f->nwaiters == 0)
			f->in_use = false;
	}
	LWLockRelease(kc_lock);
	return done;
}

/* Release flights this backend leads (it is exiting). */
static void
kc_release_flights(int code, Datum arg)
{
	if (kc_shared == NULL)
		return;
	for (int i = 0; i < BYOK_MAX_FLIGHTS; i++)
	{
		ByokFlight *f = &kc_shared->flights[i];

		if (f->in_use && !f->done && f->owner_pid == MyProcPid)
		{
			ByokKmsError err;

			memset(&err, 0, sizeof(err));
			err.status = BYOK_KMS_UNAVAILABLE;
			strlcpy(err.message, "The session fetching the key ended.", sizeof(err.message));
			byok_flight_end(i, &err);
		}
	}
}

/* ---- the poller's place in shared memory ---- */

static void
kc_slow_lane_exit(int code, Datum arg)
{
	/* an ERROR in a background worker exits without releasing its LWLocks */
	LWLockReleaseAll();
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (kc_shared->slow_pid == MyProcPid)
		kc_shared->slow_pid = 0;
	LWLockRelease(kc_lock);
}

void
byok_poller_register(bool slow_lane)
{
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (slow_lane)
	{
		kc_shared->slow_pid = MyProcPid;
		kc_shared->slow_seen_at = GetCurrentTimestamp();
	}
	else
	{
		kc_shared->poller_procno = MyProc->pgprocno;
		kc_shared->poller.pid = MyProcPid;
	}
	LWLockRelease(kc_lock);
	if (slow_lane)
		before_shmem_exit(kc_slow_lane_exit, 0);
}

/* The slow-key poller is starting or has ended a round (its heartbeat). */
void
byok_slow_lane_beat(void)
{
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	kc_shared->slow_seen_at = GetCurrentTimestamp();
	LWLockRelease(kc_lock);
}

/*
 * Is the slow-key poller running and keeping time?  It beats before and
 * after every provider it asks, each bounded by byok.kms_timeout (KMIP
 * name lookups aside), so a heartbeat older than four intervals plus four
 * timeouts (and a second) means it is stuck; gone, it has cleared its pid.
 * The poller then asks about every CMK itself (a doubly asked CMK is
 * harmless: byok_cmk_record_poll keeps the fresher answer).
 */
bool
byok_slow_lane_alive(void)
{
	int			pid;
	TimestampTz seen;

	LWLockAcquire(kc_lock, LW_SHARED);
	pid = kc_shared->slow_pid;
	seen = kc_shared->slow_seen_at;
	LWLockRelease(kc_lock);
	return pid != 0 &&
		GetCurrentTimestamp() - seen <
		((int64) 4 * (byok_poll_interval + byok_kms_timeout) + 1000) * 1000;
}

/* Wake the poller (new events to write, a state change to look at). */
void
byok_poller_wake(void)
{
	int			procno = kc_shared->poller_procno;

	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

void
byok_poller_round_done(int64 us, int ncmks)
{
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	kc_shared->poller.rounds++;
	kc_shared->poller.last_round_at = GetCurrentTimestamp();
	kc_shared->poller.last_round_us = us;
	kc_shared->poller.last_round_cmks = ncmks;
	kc_shared->poller.max_round_us = Max(kc_shared->poller.max_round_us, us);
	kc_shared->poller.interval_ms = byok_poll_interval;
	LWLockRelease(kc_lock);
}

void
byok_poller_get_status(ByokPollerStatus *out)
{
	LWLockAcquire(kc_lock, LW_SHARED);
	*out = kc_shared->poller;
	LWLockRelease(kc_lock);
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
 * Tell the server log at once, and the tenant's audit log through the
 * event queue, that a tenant changed state.  'source' says who saw it
 * ("poller", "backend").
 */
void
byok_state_change_report(const ByokStateChange *ch, const char *source)
{
	static const char *const events[BYOK_TENANT_STATE_COUNT] = {
		"tenant_active", "tenant_revoked", "cmk_disabled", "cmk_destroyed", "kms_unreachable"
	};
	char		detail[256];

	snprintf(detail, sizeof(detail),
			 "%s; seen by the %s; was %s; %d cached keys wiped; lockout took %.3f ms",
			 ch->reason, source, byok_tenant_state_name(ch->old_state), ch->purged,
			 ch->lag_us / 1000.0);
	ereport(LOG,
			(errmsg("byok: tenant \"%s\" is now %s", ch->tenant,
					byok_tenant_state_name(ch->new_state)),
			 errdetail_internal("%s", detail)));
	byok_event_queue(ch, ch->new_state == BYOK_TENANT_ACTIVE &&
					 (ch->old_state == BYOK_TENANT_CMK_DISABLED ||
					  ch->old_state == BYOK_TENANT_KMS_UNREACHABLE) ?
					 (ch->old_state == BYOK_TENANT_CMK_DISABLED ? "cmk_enabled" : "kms_reachable") :
					 events[ch->new_state], detail);
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
			pg_atomic_read_u32(&ts->state) != BYOK_TENANT_CMK_DESTROYED && listed(ts->tk_fp))
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
