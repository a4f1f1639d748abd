/*-------------------------------------------------------------------------
 *
 * cache/cache_internal.h
 *		What the files of src/cache/ share and nobody else sees: the layout
 *		of byok's shared memory and the pointers into it.
 *
 * Included only by the .c files of src/cache/; everything else goes
 * through cache/cache.h.
 *
 * Locking protocol, in short (cache/shmem.c has the full account).  Every
 * structure behind the pointers below (the ByokShared header with its
 * flights, event ring and poller status; the tenant slots' non-atomic
 * fields; the CMK registry; both hashes; the vault and its free list) is
 * guarded by kc_lock.  Lookups take it shared; anything that changes them
 * takes it exclusive.  kc_sweep() and kc_change_state() expect it held
 * exclusive by their caller.  A slot's 'state' and 'generation' are
 * atomics, written only under the exclusive lock and read without it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_CACHE_INTERNAL_H
#define BYOK_CACHE_INTERNAL_H

#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "utils/hsearch.h"

#include "cache/cache.h"

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
	int			destroyed_polls;	/* polls in a row that said destroyed */
	bool		relayed;		/* other nodes ask, this one takes their reports */
	TimestampTz reported_at;	/* last report of another node applied here */
	int32		reported_group; /* the Citus node group that sent it */
	int			sent_state;		/* last state this node reported, -1 if none */
	TimestampTz sent_at;		/* when it reported it */
	TimestampTz sent_asked_at;	/* the question that answer came from */
	bool		answer_reported;	/* the last answer came from another node's report */
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
	Oid			cluster_db;		/* the database whose catalog Citus copies, or 0 */
	int			reporter_procno;	/* pgprocno of the CMK reporter, -1 if none */
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
	uint64		allowed;		/* DEKs on Citus: 'used' may reach this (reserved on the coordinator) */
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

/* shared memory, attached in byok_cache_shmem_startup (cache/shmem.c) */
extern ByokShared *kc_shared;
extern ByokTenantSlot *kc_slots;	/* byok.max_tenants tenant slots */
extern ByokCmk *kc_cmks;		/* byok.max_tenants CMK registry entries */
extern HTAB *kc_cmk_map;		/* (provider, key_ref) -> registry index */
extern int32 *kc_free;			/* stack of free vault cells */
extern uint8 *kc_vault;			/* byok.cache_size cells of BYOK_KEY_LEN bytes */
extern HTAB *kc_cache;			/* ByokCacheKey -> ByokCacheEntry */
extern HTAB *kc_map;			/* (database, catalog, tenant) -> slot */
extern LWLock *kc_lock;			/* guards all of the above */

/* keys.c: wipe expired entries, or a slot's, or a database's (lock held exclusive) */
extern int	kc_sweep(TimestampTz now, int slot, Oid dboid);

/* slots.c: apply a state change to a slot (lock held exclusive) */
extern void kc_change_state(int slot, ByokTenantState state, const char *reason,
							TimestampTz seen_at, ByokStateChange *change);

#endif							/* BYOK_CACHE_INTERNAL_H */
