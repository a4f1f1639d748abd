/*-------------------------------------------------------------------------
 *
 * cache/cache.h
 *		The shared-memory area of byok (src/cache/): tenant slots and their
 *		generations, the cache of unwrapped keys and its vault, single
 *		flight of provider unwraps, the CMK registry, the audit-event ring
 *		and the poller's status.
 *
 * Files: shmem.c (layout, sizing, start-up, byok_check_loaded), slots.c
 * (tenant slots, states, generations, the drill), keys.c (the key cache
 * and vault), flight.c (single flight), cmk.c (the CMK registry and what
 * a poll means for its tenants), events.c (audit events, state-change
 * reports), poller.c (the pollers' place in shared memory).
 *
 * Locking protocol.  One LWLock (tranche "byok") guards everything here
 * except what is said to be atomic.  Every function below takes it itself
 * (shared or exclusive, as its comment says); callers never hold it, and
 * no provider (KMS/HSM) is ever called with it held.  A slot's 'state' and
 * 'generation' are atomics read without a lock on the hot path.
 *
 * Key lifetime.  Unwrapped key bytes live in the vault only while their
 * cache entry exists, and are wiped when it goes; byok_cache_get() and
 * byok_flight_begin() copy them out, and the caller must wipe its copy.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_CACHE_H
#define BYOK_CACHE_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"

#include "byok_defs.h"
#include "providers/kms.h"

typedef enum ByokCacheKind
{
	BYOK_CACHE_TK = 1,			/* tenant key: id = tenant id, version = TK version */
	BYOK_CACHE_DEK = 2			/* data key: id = DEK id */
} ByokCacheKind;

typedef struct ByokCacheKey
{
	Oid			dboid;			/* database the key belongs to */
	int32		kind;			/* ByokCacheKind */
	int64		id;				/* tenant id or DEK id */
	int32		version;		/* TK version; 0 for DEKs */
	Oid			catalog;		/* oid of schema byok: tells installs apart */
} ByokCacheKey;

/*
 * Per-tenant statistics.  The atomics are added to without a lock (the hot
 * path flushes its per-transaction counts at transaction end); the rest
 * change under the byok lock held exclusive.
 */
typedef struct ByokTenantStats
{
	pg_atomic_uint64 encrypts;	/* values sealed */
	pg_atomic_uint64 decrypts;	/* values opened */
	pg_atomic_uint64 cache_hits;	/* shared-cache hits on a backend miss */
	pg_atomic_uint64 cache_misses;	/* shared-cache misses */
	uint64		provider_calls; /* unwraps sent to the provider */
	uint64		provider_errors[BYOK_KMS_STATUS_COUNT]; /* by class */
	int64		latency_last_us;	/* last provider unwrap */
	int64		latency_sum_us; /* for the mean */
	int64		latency_max_us;
	TimestampTz unavailable_until;	/* negative cache: provider down, fail fast */
	int64		revocation_lag_us;	/* last lockout: from seeing it to purge end */
	int32		last_purged;	/* entries wiped by the last lockout */
	char		last_reason[64];	/* cause of the last state change */
} ByokTenantStats;

/*
 * One tenant as shared memory knows it.  'state' and 'generation' are read
 * without a lock on the hot path; they change only under the byok lock in
 * exclusive mode, and every change of state (and every purge) bumps the
 * generation, so a backend holding (slot, generation) knows in one atomic
 * read whether what it holds is still good.
 */
typedef struct ByokTenantSlot
{
	Oid			dboid;			/* database of the tenant */
	Oid			catalog;		/* oid of schema byok in that database */
	int32		tenant_id;		/* byok.tenants.tenant_id */
	bool		in_use;			/* slot holds a tenant */
	char		name[NAMEDATALEN];	/* tenant name */
	pg_atomic_uint32 state;		/* ByokTenantState */
	pg_atomic_uint64 generation;	/* bumped on every state change and purge */
	int32		nentries;		/* cache entries of this tenant (under lock) */
	int32		cmk;			/* CMK registry index, -1 if none */
	pg_atomic_uint32 handles;	/* backends' transaction handles on its keys */
	TimestampTz state_changed_at;	/* last state change */
	TimestampTz last_used;		/* for choosing a slot to reuse */
	ByokTenantStats stats;		/* counters for byok.stats */
	char		tk_fp[65];		/* SHA-256 of the wrapped TK in use (ledger checks) */
	bool		destroyed_unconfirmed;	/* CMK_DESTROYED on one provider answer,
										 * not yet confirmed by a poll (liftable) */
} ByokTenantSlot;

/* a CMK as the registry holds it (a copy, for the poller and the stats) */
typedef struct ByokCmkInfo
{
	int			idx;			/* registry index */
	uint64		serial;			/* which CMK the entry held */
	bool		slow;			/* asked by the slow-key poller */
	char		provider[32];
	char		key_ref[BYOK_MAX_KEY_REF + 1];
	int32		version_hint;	/* oldest provider key version byok needs, 0 = n/a */
	ByokKmsStatus last_status;	/* result of the last poll */
	int			last_state;		/* ByokKeyState, or -1 before the first poll */
	TimestampTz last_poll_at;
	int64		last_poll_us;	/* duration of the last poll */
	TimestampTz unreachable_since;	/* first failed poll in a row, or 0 */
	char		last_error[128];	/* sanitised, from the provider */
	TimestampTz last_asked_at;	/* when the answer recorded was asked for */
	bool		relayed;		/* other nodes ask (byok.cluster_pollers) */
	TimestampTz reported_at;	/* their last report applied here, or 0 */
	int32		reported_group; /* the node group that sent it */
	int			sent_state;		/* last state reported from here, -1 if none */
	TimestampTz sent_at;
	TimestampTz sent_asked_at;
	bool		answer_reported;	/* the last answer is another node's report */
} ByokCmkInfo;

/* a tenant state change, reported to the server log and the audit log */
typedef struct ByokStateChange
{
	Oid			dboid;
	Oid			catalog;
	int32		tenant_id;
	char		tenant[NAMEDATALEN];
	ByokTenantState old_state;
	ByokTenantState new_state;
	int			purged;			/* cache entries wiped */
	int64		lag_us;			/* from the sighting to the end of the purge */
	char		reason[64];
} ByokStateChange;

/* an audit row waiting to be written in its database */
typedef struct ByokEvent
{
	Oid			dboid;
	Oid			catalog;		/* schema byok it belongs to */
	int32		tenant_id;
	char		tenant[NAMEDATALEN];
	char		event[32];
	char		detail[256];
	TimestampTz at;
} ByokEvent;

typedef enum ByokFlightRole
{
	BYOK_FLIGHT_HIT,			/* the key is cached now: use it */
	BYOK_FLIGHT_LEADER,			/* call the provider, then byok_flight_end */
	BYOK_FLIGHT_WAITER,			/* another backend calls: byok_flight_wait */
	BYOK_FLIGHT_NONE			/* no flight slot free: call the provider */
} ByokFlightRole;

typedef struct ByokPollerStatus
{
	int			pid;
	uint64		rounds;
	TimestampTz last_round_at;
	int64		last_round_us;
	int			last_round_cmks;
	int64		max_round_us;
	int			interval_ms;	/* byok.poll_interval as the poller sees it */
} ByokPollerStatus;

typedef struct ByokDrillResult
{
	int64		lockout_us;		/* revoke until no backend holds a usable key */
	int			purged;			/* entries wiped */
	int			residual;		/* cells still holding one of the wiped keys */
	int			stale_handles;	/* handles not yet dropped when we stopped waiting */
} ByokDrillResult;

/* shmem.c */
extern void byok_cache_shmem_request(void);
extern void byok_cache_shmem_startup(void);
extern bool byok_cache_ready(void);
extern void byok_check_loaded(void);
extern uint64 byok_catalog_epoch(void);
extern void byok_catalog_epoch_bump(void);

/* slots.c */
extern const char *byok_tenant_state_name(ByokTenantState state);
extern ByokTenantSlot *byok_tenant_slot(int slot);
extern int	byok_tenant_attach(Oid dboid, Oid catalog, int32 tenant_id, const char *name,
							   ByokTenantState initial, uint64 *generation);
extern int	byok_tenant_find(Oid dboid, Oid catalog, int32 tenant_id);
extern void byok_tenant_reset(Oid dboid, Oid catalog, int32 tenant_id, const char *name);
extern int	byok_tenant_set_state(int slot, int32 tenant_id, ByokTenantState state);
extern int	byok_tenant_purge(int slot);
extern void byok_tenant_rekeyed(int slot, int32 tenant_id);
extern void byok_tenant_replay(Oid dboid, Oid catalog, int32 tenant_id, const char *name,
							   ByokTenantState state, const char *source);
extern int	byok_tenant_provider_state(int slot, int32 tenant_id, ByokTenantState state,
									   bool confirmed, const char *reason,
									   ByokStateChange *change);
extern void byok_tenant_record_call(int slot, ByokKmsStatus status, int64 us);
extern bool byok_tenant_fail_fast(int slot);
extern void byok_tenant_handle(int slot, int delta, uint64 encrypts, uint64 decrypts);
extern void byok_tenant_set_fp(int slot, int32 tenant_id, const char *fp);
extern List *byok_tenant_apply_ledger(bool (*listed) (const char *fp));
extern int	byok_tenant_snapshot(Oid dboid, Oid catalog, ByokTenantSlot **out);
extern void byok_tenant_drill(int slot, int32 tenant_id, ByokDrillResult *result);

/* keys.c */
extern bool byok_cache_get(const ByokCacheKey *key, uint8 *out, int *slot, uint64 *generation,
						   uint64 *used);
extern bool byok_cache_put(const ByokCacheKey *key, int slot, uint64 generation, const uint8 *bytes,
						   uint64 used);
extern int	byok_cache_flush_database(Oid dboid);
extern int	byok_cache_sweep_expired(void);
extern uint64 byok_cache_add_use(const ByokCacheKey *key, int64 n, uint64 fallback);
extern uint64 byok_cache_reserve(const ByokCacheKey *key, uint64 want, uint64 limit, bool *tracked,
								 uint64 *before);
extern uint64 byok_cache_reserve_node(const ByokCacheKey *key, uint64 want, bool *tracked, uint64 *before);
extern bool byok_cache_allow(const ByokCacheKey *key, uint64 n);

/* flight.c */
extern ByokFlightRole byok_flight_begin(const ByokCacheKey *key, uint8 *out, int *slot,
										uint64 *generation, int *flight, uint64 *seq);
extern void byok_flight_end(int flight, const ByokKmsError *err);
extern bool byok_flight_wait(int flight, uint64 seq, int timeout_ms, ByokKmsError *err);

/* cmk.c */
extern int	byok_cmk_register(int slot, const char *provider, const char *key_ref,
							  int32 version_hint);
extern int	byok_cmk_snapshot(ByokCmkInfo **out, bool prune);
extern bool byok_cmk_get(int idx, ByokCmkInfo *out);
extern List *byok_cmk_record_poll(int idx, uint64 serial, TimestampTz asked_at,
								  ByokKmsStatus status, ByokKeyState state,
								  int64 us, const ByokKmsError *err);
extern int	byok_cmk_snapshot_db(Oid dboid, bool unused, ByokCmkInfo **out);
extern bool byok_cmk_watch(const char *provider, const char *key_ref);
extern void byok_cmk_set_relayed(int idx, uint64 serial, bool relayed);
extern void byok_cmk_mark_sent(int idx, uint64 serial, int state, TimestampTz asked_at);
extern List *byok_cmk_record_report(const char *provider, const char *key_ref, ByokKeyState state,
									TimestampTz asked_at, int32 group);
extern int64 byok_cmk_report_interval_us(void);
extern bool byok_cmk_polled_here(const ByokCmkInfo *c);

/* events.c */
extern void byok_event_queue(const ByokStateChange *change, const char *event, const char *detail);
extern int	byok_event_take(Oid dboid, ByokEvent *out, int max);
extern Oid	byok_event_pending_db(void);
extern void byok_state_change_report(const ByokStateChange *ch, const char *source);

/* poller.c */
extern void byok_poller_register(bool slow_lane);
extern void byok_slow_lane_beat(void);
extern bool byok_slow_lane_alive(void);
extern void byok_poller_wake(void);
extern void byok_cluster_note_db(Oid dboid);
extern Oid	byok_cluster_db(void);
extern void byok_reporter_register(void);
extern void byok_reporter_wake(void);
extern void byok_poller_round_done(int64 us, int ncmks);
extern void byok_poller_get_status(ByokPollerStatus *out);

static inline void
byok_cache_key_init(ByokCacheKey *key, Oid dboid, Oid catalog, ByokCacheKind kind,
					int64 id, int32 version)
{
	memset(key, 0, sizeof(*key));
	key->dboid = dboid;
	key->catalog = catalog;
	key->kind = kind;
	key->id = id;
	key->version = version;
}

#endif							/* BYOK_CACHE_H */
