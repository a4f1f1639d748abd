/*-------------------------------------------------------------------------
 *
 * cache/cmk.c
 *		The CMK registry: every customer master key in use, which the
 *		pollers watch, and what a poll's answer means for its tenants.
 *
 * byok.max_tenants registry entries, found through the "byok cmks" hash
 * (provider, key_ref) -> index; tenants sharing a CMK share one entry, so
 * it is asked about once a round.  Entries are reused; a serial tells
 * their occupants apart, so an answer is applied only to the CMK it was
 * asked about, and only if no fresher answer was recorded.  Only the
 * poller retires CMKs (byok_cmk_snapshot with prune).  A failed or slow
 * answer sends a CMK to the slow-key poller's lane; three answers in time
 * in a row bring it back.
 *
 * Locking protocol.  kc_lock guards the registry and its hash; reading one
 * entry takes it shared, everything else exclusive.  The pollers ask the
 * provider with no lock held, working from a copy (byok_cmk_snapshot), and
 * take the lock only to record the answer.  Recording applies the answer
 * to every tenant of the CMK under that same exclusive lock
 * (kc_change_state, slots.c).
 *
 * Key lifetime.  The registry holds key references and states, never key
 * bytes; a lockout it causes wipes the tenants' cached keys (kc_sweep).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "cache/cache_internal.h"
#include "guc.h"

/*
 * A free registry entry for CMK mk, entered in the hash; NULL if the
 * registry is full.  Lock held exclusive.
 */
static ByokCmkMapEntry *
kc_cmk_enter(const ByokCmkMapKey *mk)
{
	for (int i = 0; i < byok_max_tenants; i++)
		if (!kc_cmks[i].in_use)
		{
			ByokCmk    *c = &kc_cmks[i];
			bool		found;
			ByokCmkMapEntry *me = hash_search(kc_cmk_map, mk, HASH_ENTER, &found);

			me->idx = i;
			memset(c, 0, sizeof(ByokCmk));
			c->in_use = true;
			c->serial = ++kc_shared->cmk_serial;
			strlcpy(c->provider, mk->provider, sizeof(c->provider));
			strlcpy(c->key_ref, mk->key_ref, sizeof(c->key_ref));
			c->last_state = -1;
			c->sent_state = -1;
			return me;
		}
	return NULL;
}

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
	int			idx = -1;

	memset(&mk, 0, sizeof(mk));
	strlcpy(mk.provider, provider, sizeof(mk.provider));
	strlcpy(mk.key_ref, key_ref, sizeof(mk.key_ref));

	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	me = hash_search(kc_cmk_map, &mk, HASH_FIND, NULL);
	if (me == NULL)
	{
		me = kc_cmk_enter(&mk);
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
	out->last_asked_at = c->last_asked_at;
	out->relayed = c->relayed;
	out->reported_at = c->reported_at;
	out->reported_group = c->reported_group;
	out->sent_state = c->sent_state;
	out->sent_at = c->sent_at;
	out->sent_asked_at = c->sent_asked_at;
	out->answer_reported = c->answer_reported;
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
			st == BYOK_TENANT_CMK_DISABLED || st == BYOK_TENANT_KMS_UNREACHABLE ||
			(st == BYOK_TENANT_CMK_DESTROYED && ts->destroyed_unconfirmed))
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
 *   DESTROYED -> every tenant is locked out (CMK_DESTROYED) at once; for
 *                good once a second poll in a row says so (until then an
 *                ENABLED answer lifts it, and a revoked tenant stays
 *                revoked): one bent answer must not destroy a tenant;
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
	c->answer_reported = false;
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
	if (status == BYOK_KMS_OK)
		c->destroyed_polls = state == BYOK_KEY_DESTROYED ? Min(c->destroyed_polls + 1, 2) : 0;
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
		bool		liftable;
		bool		confirmed = c->destroyed_polls >= 2;

		if (!ts->in_use || ts->cmk != idx)
			continue;
		cur = pg_atomic_read_u32(&ts->state);
		next = cur;
		reason = NULL;
		liftable = cur == BYOK_TENANT_CMK_DESTROYED && ts->destroyed_unconfirmed;
		if (cur == BYOK_TENANT_CMK_DESTROYED && !liftable)
			continue;			/* final */
		if (status == BYOK_KMS_OK && state == BYOK_KEY_DESTROYED)
		{
			if (liftable && confirmed)
				reason = "poller: CMK destruction confirmed";	/* now final */
			else if (liftable || (cur == BYOK_TENANT_REVOKED && !confirmed))
				continue;
			else
				reason = confirmed ? "poller: CMK destroyed" : "poller: CMK reported destroyed";
			next = BYOK_TENANT_CMK_DESTROYED;
		}
		else if (cur == BYOK_TENANT_REVOKED)
			continue;			/* an administrator's lockout stands */
		else if (status == BYOK_KMS_OK && state == BYOK_KEY_DISABLED && cur != BYOK_TENANT_CMK_DISABLED)
		{
			next = BYOK_TENANT_CMK_DISABLED;
			reason = "poller: CMK disabled";
		}
		else if (status == BYOK_KMS_OK && state == BYOK_KEY_ENABLED &&
				 (cur == BYOK_TENANT_CMK_DISABLED || cur == BYOK_TENANT_KMS_UNREACHABLE || liftable))
		{
			next = BYOK_TENANT_ACTIVE;
			reason = liftable ? "poller: CMK enabled, not destroyed" : "poller: CMK enabled";
		}
		else if (status != BYOK_KMS_OK && fail_closed && cur == BYOK_TENANT_ACTIVE)
		{
			next = BYOK_TENANT_KMS_UNREACHABLE;
			reason = "poller: provider unreachable past grace";
		}
		/* a change, or a destruction now confirmed (the audit log says so) */
		if (next != cur || reason != NULL)
		{
			ByokStateChange *ch = palloc(sizeof(ByokStateChange));

			kc_change_state(i, next, reason, now - us, ch);
			ts->destroyed_unconfirmed = next == BYOK_TENANT_CMK_DESTROYED && !confirmed;
			changes = lappend(changes, ch);
		}
	}
	LWLockRelease(kc_lock);
	return changes;
}

/* ---- byok.cluster_pollers: CMKs other nodes ask about ---- */

/*
 * How often a node that asks about a CMK for the others reports its answer
 * when nothing changed (a change is reported at once): five poll
 * intervals.  A relayed CMK whose last report is older than three of these
 * and a poll interval is asked about here again (byok_cmk_polled_here): a
 * node that stops reporting (down, its provider failing, cluster_pollers
 * set to 0 there) never leaves the others blind for longer than that.
 */
int64
byok_cmk_report_interval_us(void)
{
	return (int64) byok_poll_interval * 5 * 1000;
}

/* Does this node's poller ask the provider about CMK c this round? */
bool
byok_cmk_polled_here(const ByokCmkInfo *c)
{
	TimestampTz now = GetCurrentTimestamp();

	if (byok_cluster_pollers == 0 || !c->relayed || c->reported_at == 0)
		return true;
	return now - c->reported_at >= 3 * byok_cmk_report_interval_us() + (int64) byok_poll_interval * 1000;
}

/* The registry's hash key of CMK (provider, key_ref). */
static void
kc_map_key(ByokCmkMapKey *mk, const char *provider, const char *key_ref)
{
	memset(mk, 0, sizeof(*mk));
	strlcpy(mk->provider, provider, sizeof(mk->provider));
	strlcpy(mk->key_ref, key_ref, sizeof(mk->key_ref));
}

/* Free registry entries.  Lock held. */
static int
kc_cmk_free(void)
{
	int			n = 0;

	for (int i = 0; i < byok_max_tenants; i++)
		if (!kc_cmks[i].in_use)
			n++;
	return n;
}

/*
 * This node asks about CMK (provider, key_ref) for the others: enter it in
 * the registry if no session here has (no tenant slot points at it; it
 * stays live while the reporter calls this, every second), and ask about
 * it here.  A tenth of the registry stays free for this node's own
 * sessions (a key they use that found no entry would not be polled):
 * false when the key could not be entered for that reason.  Takes the
 * lock exclusive.
 */
bool
byok_cmk_watch(const char *provider, const char *key_ref)
{
	ByokCmkMapKey mk;
	ByokCmkMapEntry *me;
	bool		full = false;

	kc_map_key(&mk, provider, key_ref);
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	me = hash_search(kc_cmk_map, &mk, HASH_FIND, NULL);
	if (me != NULL)
		;
	else if (kc_cmk_free() <= Max(1, byok_max_tenants / 10))
		full = true;
	else
	{
		me = kc_cmk_enter(&mk);
	}
	if (me != NULL)
	{
		kc_cmks[me->idx].last_active_at = GetCurrentTimestamp();
		kc_cmks[me->idx].relayed = false;
	}
	LWLockRelease(kc_lock);
	return !full;
}

/* Mark CMK idx as asked about by other nodes (or by this one).  Lock exclusive. */
void
byok_cmk_set_relayed(int idx, uint64 serial, bool relayed)
{
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (idx >= 0 && idx < byok_max_tenants && kc_cmks[idx].in_use && kc_cmks[idx].serial == serial)
		kc_cmks[idx].relayed = relayed;
	LWLockRelease(kc_lock);
}

/* The reporter sent this answer about CMK idx.  Lock exclusive. */
void
byok_cmk_mark_sent(int idx, uint64 serial, int state, TimestampTz asked_at)
{
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (idx >= 0 && idx < byok_max_tenants && kc_cmks[idx].in_use && kc_cmks[idx].serial == serial)
	{
		kc_cmks[idx].sent_state = state;
		kc_cmks[idx].sent_at = GetCurrentTimestamp();
		kc_cmks[idx].sent_asked_at = asked_at;
	}
	LWLockRelease(kc_lock);
}

/*
 * Another node's answer about CMK (provider, key_ref), asked at asked_at:
 * applied to this node's tenants exactly as a poll of its own would be
 * (byok_cmk_record_poll: an older answer than the last one recorded is
 * not), if this node relays the CMK; a CMK this node asks about itself, or
 * does not use, is left alone.  Returns the state changes.
 */
List *
byok_cmk_record_report(const char *provider, const char *key_ref, ByokKeyState state,
					   TimestampTz asked_at, int32 group)
{
	ByokCmkMapKey mk;
	ByokCmkMapEntry *me;
	ByokKmsError err;
	int			idx = -1;
	uint64		serial = 0;
	List	   *changes;
	TimestampTz now = GetCurrentTimestamp();

	if (state >= BYOK_KEY_STATE_COUNT)
		return NIL;
	kc_map_key(&mk, provider, key_ref);
	/*
	 * The asking node's clock: an answer from its future counts as asked
	 * now, so a node whose clock runs ahead cannot make every later answer
	 * look older; one from further back than the last answer recorded here
	 * is not applied and does not count as a report (a node whose clock
	 * runs behind then leaves this node asking itself).
	 */
	asked_at = Min(asked_at, now);
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	me = hash_search(kc_cmk_map, &mk, HASH_FIND, NULL);
	if (me != NULL && kc_cmks[me->idx].relayed && asked_at >= kc_cmks[me->idx].last_asked_at)
	{
		idx = me->idx;
		serial = kc_cmks[idx].serial;
		kc_cmks[idx].reported_at = now;
		kc_cmks[idx].reported_group = group;
	}
	LWLockRelease(kc_lock);
	if (idx < 0)
		return NIL;
	memset(&err, 0, sizeof(err));
	changes = byok_cmk_record_poll(idx, serial, asked_at, BYOK_KMS_OK, state, 0, &err);
	LWLockAcquire(kc_lock, LW_EXCLUSIVE);
	if (kc_cmks[idx].in_use && kc_cmks[idx].serial == serial && kc_cmks[idx].last_asked_at == asked_at)
		kc_cmks[idx].answer_reported = true;
	LWLockRelease(kc_lock);
	return changes;
}

/*
 * The registry entries database dboid may see (byok_cmk_status): those its
 * tenants use, and (with unused) those no tenant of another database uses
 * (the keys the reporter of the cluster's database watches).  Returns the
 * count, a palloc'd array in *out.  Takes the lock shared.
 */
int
byok_cmk_snapshot_db(Oid dboid, bool unused, ByokCmkInfo **out)
{
	int			n = 0;
	char	   *use = palloc0(byok_max_tenants);	/* 1 here, 2 elsewhere */

	*out = palloc(sizeof(ByokCmkInfo) * byok_max_tenants);
	LWLockAcquire(kc_lock, LW_SHARED);
	for (int i = 0; i < byok_max_tenants; i++)
	{
		ByokTenantSlot *ts = &kc_slots[i];

		if (ts->in_use && ts->cmk >= 0 && ts->cmk < byok_max_tenants)
			use[ts->cmk] |= ts->dboid == dboid ? 1 : 2;
	}
	for (int i = 0; i < byok_max_tenants; i++)
		if (kc_cmks[i].in_use && ((use[i] & 1) || (unused && use[i] == 0)))
			kc_cmk_copy(i, &(*out)[n++]);
	LWLockRelease(kc_lock);
	pfree(use);
	return n;
}
