/*-------------------------------------------------------------------------
 *
 * cache/poller.c
 *		The pollers' place in shared memory: who the poller and the
 *		slow-key poller are, the slow-key poller's heartbeat, waking the
 *		poller, and the poller's round statistics.
 *
 * The poller (worker/worker.c) registers its pgprocno so that any backend
 * can set its latch; the slow-key poller registers its pid and beats
 * before and after every provider it asks.  The poller takes over the slow
 * lane when the slow-key poller is gone or its heartbeat is stale
 * (byok_slow_lane_alive).
 *
 * Locking protocol.  kc_lock guards these fields of the ByokShared header;
 * reading them takes it shared, writing exclusive.  byok_poller_wake reads
 * the poller's procno without the lock (setting a stale latch is
 * harmless).  The slow-key poller's exit callback releases every LWLock it
 * may still hold (an ERROR in a background worker exits without doing so)
 * before it takes kc_lock to clear its pid.
 *
 * Key lifetime.  No key bytes pass through here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/timestamp.h"

#include "cache/cache_internal.h"
#include "guc.h"

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

/* ---- byok.cluster_pollers: the database Citus copies byok's catalog in ---- */

/* A backend found this database's catalog copied by Citus (ks_citus_refresh). */
void
byok_cluster_note_db(Oid dboid)
{
	if (kc_shared->cluster_db == dboid)
		return;
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	kc_shared->cluster_db = dboid;
	LWLockRelease(kc_lock);
}

Oid
byok_cluster_db(void)
{
	Oid			db;

	LWLockAcquire(kc_lock, LW_SHARED);
	db = kc_shared->cluster_db;
	LWLockRelease(kc_lock);
	return db;
}

static void
kc_reporter_exit(int code, Datum arg)
{
	LWLockReleaseAll();
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (kc_shared->reporter_procno == MyProc->pgprocno)
		kc_shared->reporter_procno = -1;
	LWLockRelease(kc_lock);
}

/* The CMK reporter (catalog/citus_pollers.c) is running: the poller wakes it. */
void
byok_reporter_register(void)
{
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	kc_shared->reporter_procno = MyProc->pgprocno;
	LWLockRelease(kc_lock);
	before_shmem_exit(kc_reporter_exit, 0);
}

/* After each round: the reporter sends what changed at once. */
void
byok_reporter_wake(void)
{
	int			procno = kc_shared->reporter_procno;

	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}
