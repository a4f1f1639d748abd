/*-------------------------------------------------------------------------
 *
 * sql/stats.c
 *		byok_stats(), byok_poller_status() and byok_revocation_drill().
 *
 * Everything here reads copies of shared memory taken under the byok lock
 * held shared (src/cache/), so a slow client never holds the lock.  No key
 * material is ever copied: the slots and the CMK registry hold none.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "cache/cache.h"
#include "catalog/keystore.h"
#include "providers/kms.h"
#include "handles/handles.h"

PG_FUNCTION_INFO_V1(byok_stats);
PG_FUNCTION_INFO_V1(byok_poller_status);
PG_FUNCTION_INFO_V1(byok_revocation_drill);
PG_FUNCTION_INFO_V1(byok_validate_tenant);

#define STATS_COLS 31

static const char *
st_key_state_name(int state)
{
	switch (state)
	{
		case BYOK_KEY_ENABLED:
			return "enabled";
		case BYOK_KEY_DISABLED:
			return "disabled";
		case BYOK_KEY_DESTROYED:
			return "destroyed";
		default:
			return NULL;
	}
}

/*
 * byok_stats(): one row per tenant of this database that shared memory
 * tracks (tenants used since the server started).
 */
Datum
byok_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ByokTenantSlot *slots;
	int			n;

	byok_check_loaded();
	InitMaterializedSRF(fcinfo, 0);
	n = byok_tenant_snapshot(MyDatabaseId, byok_keystore_catalog(), &slots);
	for (int i = 0; i < n; i++)
	{
		ByokTenantSlot *ts = &slots[i];
		ByokTenantStats *s = &ts->stats;
		Datum		values[STATS_COLS];
		bool		nulls[STATS_COLS];
		ByokCmkInfo cmk;
		bool		has_cmk;
		uint64		errors = 0;
		int			c = 0;

		memset(nulls, 0, sizeof(nulls));
		has_cmk = byok_cmk_get(ts->cmk, &cmk);
		for (int e = 1; e < BYOK_KMS_STATUS_COUNT; e++)
			errors += s->provider_errors[e];

		values[c++] = CStringGetTextDatum(ts->name);
		values[c++] = CStringGetTextDatum(byok_tenant_state_name(pg_atomic_read_u32(&ts->state)));
		values[c++] = Int32GetDatum(ts->nentries);
		values[c++] = Int32GetDatum(pg_atomic_read_u32(&ts->handles));
		values[c++] = Int64GetDatum(pg_atomic_read_u64(&s->encrypts));
		values[c++] = Int64GetDatum(pg_atomic_read_u64(&s->decrypts));
		values[c++] = Int64GetDatum(pg_atomic_read_u64(&s->cache_hits));
		values[c++] = Int64GetDatum(pg_atomic_read_u64(&s->cache_misses));
		values[c++] = Int64GetDatum(s->provider_calls);
		values[c++] = Int64GetDatum(errors);
		for (int e = 1; e < BYOK_KMS_STATUS_COUNT; e++)
			values[c++] = Int64GetDatum(s->provider_errors[e]);
		values[c++] = Float8GetDatum(s->latency_last_us / 1000.0);
		if (s->provider_calls > 0)
			values[c++] = Float8GetDatum(s->latency_sum_us / 1000.0 / s->provider_calls);
		else
			nulls[c++] = true;
		values[c++] = Float8GetDatum(s->latency_max_us / 1000.0);
		/* what the poller knows of the tenant's CMK */
		if (has_cmk)
		{
			values[c++] = CStringGetTextDatum(cmk.provider);
			values[c++] = CStringGetTextDatum(cmk.key_ref);
			if (cmk.last_poll_at == 0)
			{
				nulls[c++] = true;
				nulls[c++] = true;
				nulls[c++] = true;
			}
			else
			{
				values[c++] = CStringGetTextDatum(cmk.last_status == BYOK_KMS_OK ? "ok" :
												  cmk.last_status == BYOK_KMS_UNAVAILABLE ? "unreachable" :
												  byok_kms_status_name(cmk.last_status));
				values[c++] = TimestampTzGetDatum(cmk.last_poll_at);
				if (cmk.last_status == BYOK_KMS_OK)
					values[c++] = CStringGetTextDatum(st_key_state_name(cmk.last_state));
				else
					values[c++] = CStringGetTextDatum(cmk.last_error);
			}
			if (cmk.unreachable_since != 0)
				values[c++] = TimestampTzGetDatum(cmk.unreachable_since);
			else
				nulls[c++] = true;
			values[c++] = Float8GetDatum(cmk.last_poll_us / 1000.0);
		}
		else
		{
			for (int k = 0; k < 7; k++)
				nulls[c++] = true;
		}
		values[c++] = TimestampTzGetDatum(ts->state_changed_at);
		if (s->last_reason[0])
		{
			values[c++] = CStringGetTextDatum(s->last_reason);
			values[c++] = Float8GetDatum(s->revocation_lag_us / 1000.0);
			values[c++] = Int32GetDatum(s->last_purged);
		}
		else
		{
			nulls[c++] = true;
			nulls[c++] = true;
			nulls[c++] = true;
		}
		Assert(c == STATS_COLS);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * byok_poller_status(): the poller's own figures (one row).
 */
Datum
byok_poller_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	ByokPollerStatus ps;
	Datum		values[7];
	bool		nulls[7] = {false};

	byok_check_loaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	byok_poller_get_status(&ps);
	values[0] = Int32GetDatum(ps.pid);
	nulls[0] = ps.pid == 0;
	values[1] = Int64GetDatum(ps.rounds);
	values[2] = TimestampTzGetDatum(ps.last_round_at);
	nulls[2] = ps.last_round_at == 0;
	values[3] = Float8GetDatum(ps.last_round_us / 1000.0);
	values[4] = Int32GetDatum(ps.last_round_cmks);
	values[5] = Float8GetDatum(ps.max_round_us / 1000.0);
	values[6] = Int32GetDatum(ps.interval_ms);
	nulls[6] = ps.rounds == 0;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * byok_revocation_drill(tenant): lock the tenant out locally, measure until
 * no backend can use its keys, check no cached key bytes remain, reinstate.
 */
Datum
byok_revocation_drill(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	ByokDrillResult r;
	Datum		values[5];
	bool		nulls[5] = {false};

	byok_check_loaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	byok_handle_release();		/* our own handles must not count as stale */
	byok_keystore_drill(text_to_cstring(PG_GETARG_TEXT_PP(0)), &r);
	values[0] = Float8GetDatum(r.lockout_us / 1000.0);
	values[1] = Int32GetDatum(r.purged);
	values[2] = Int32GetDatum(r.residual);
	values[3] = Int32GetDatum(r.stale_handles);
	values[4] = BoolGetDatum(r.residual == 0 && r.stale_handles == 0);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * byok_validate_tenant(tenant): one row per onboarding check.
 */
Datum
byok_validate_tenant(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ByokCheck	checks[BYOK_VALIDATE_CHECKS];

	byok_check_loaded();
	InitMaterializedSRF(fcinfo, 0);
	byok_keystore_validate(text_to_cstring(PG_GETARG_TEXT_PP(0)), checks);
	for (int i = 0; i < BYOK_VALIDATE_CHECKS; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false};

		values[0] = CStringGetTextDatum(checks[i].check);
		values[1] = BoolGetDatum(checks[i].ok);
		values[2] = CStringGetTextDatum(checks[i].detail);
		values[3] = Float8GetDatum(checks[i].ms);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
