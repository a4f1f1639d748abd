/*-------------------------------------------------------------------------
 *
 * cache/flight.c
 *		Single flight: backends missing the same key wait for the one
 *		already asking the provider instead of asking it too.
 *
 * BYOK_MAX_FLIGHTS flight slots live in the ByokShared header.  A flight
 * is keyed by the ByokCacheKey being fetched; its sequence number tells
 * reuses of a slot apart, so a waiter never takes a later flight's result
 * for its own.  A backend that exits while leading a flight ends it with
 * an error (kc_release_flights, a before_shmem_exit callback), so its
 * waiters do not wait for the timeout.
 *
 * Locking protocol.  kc_lock guards the flight slots; beginning and ending
 * a flight take it exclusive, a waiter checks it shared between sleeps on
 * the flight's condition variable.  The leader calls the provider with no
 * lock held, installs the key (byok_cache_put), then ends the flight.
 *
 * Key lifetime.  A flight carries no key bytes, only the key's name and
 * the leader's error; waiters find the key in the cache.  A hit in
 * byok_flight_begin copies the key out of the vault like byok_cache_get:
 * the caller must wipe its copy.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "utils/timestamp.h"

#include "cache/cache_internal.h"

/* the flight this backend waits on (-1: none), left on every exit path */
static int	kc_wait_flight = -1;
static uint64 kc_wait_seq = 0;

/* Stop waiting on the flight this backend waits on, if any.  Takes the lock exclusive. */
static void
kc_leave_flight(void)
{
	ByokFlight *f;

	if (kc_wait_flight < 0)
		return;
	f = &kc_shared->flights[kc_wait_flight];
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (f->seq == kc_wait_seq && f->nwaiters > 0)
	{
		f->nwaiters--;
		if (f->done && f->nwaiters == 0)
			f->in_use = false;
	}
	LWLockRelease(kc_lock);
	kc_wait_flight = -1;
}

/* Leave the flight this backend waits on, end those it leads (it is exiting). */
static void
kc_release_flights(int code, Datum arg)
{
	if (kc_shared == NULL)
		return;
	/* a FATAL exit does not release the LWLocks it held before this runs */
	LWLockReleaseAll();
	kc_leave_flight();
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
	volatile bool done = false;

	/*
	 * A cancel, a timeout or a termination may end the wait: the waiter
	 * leaves the flight on every path (here, or in kc_release_flights at
	 * exit), else the slot would never be free again.
	 */
	kc_wait_flight = flight;
	kc_wait_seq = seq;
	PG_TRY();
	{
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
	}
	PG_FINALLY();
	{
		ConditionVariableCancelSleep();
		kc_leave_flight();
	}
	PG_END_TRY();
	return done;
}
