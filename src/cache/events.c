/*-------------------------------------------------------------------------
 *
 * cache/events.c
 *		Audit events waiting for their database, and the report of a
 *		tenant state change (server log now, audit log through the ring).
 *
 * Whoever sees a state change (a backend, or the poller, which is
 * connected to no database) reports it to the server log at once and
 * queues the audit row in a ring of BYOK_EVENT_RING events in the
 * ByokShared header, then wakes the poller; the poller has a short-lived
 * worker connected to the row's database take and write it
 * (worker/worker.c).  When the ring is full the oldest event is dropped
 * (it was logged already) and counted.
 *
 * Locking protocol.  kc_lock guards the ring: queueing and taking take it
 * exclusive, peeking takes it shared.  The poller is woken after the lock
 * is released.
 *
 * Key lifetime.  Events hold tenant names and reasons, never key bytes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "cache/cache_internal.h"

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
					  ch->old_state == BYOK_TENANT_CMK_DESTROYED ||
					  ch->old_state == BYOK_TENANT_KMS_UNREACHABLE) ?
					 (ch->old_state == BYOK_TENANT_KMS_UNREACHABLE ? "kms_reachable" : "cmk_enabled") :
					 events[ch->new_state], detail);
}
