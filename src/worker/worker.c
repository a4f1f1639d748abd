/*-------------------------------------------------------------------------
 *
 * worker/worker.c
 *		The key-state poller and its audit-log writer.
 *
 * The poller ("byok poller" in pg_stat_activity) is a background worker
 * registered from _PG_init.  It connects to no database: backends
 * register every CMK they unwrap under in the shared CMK registry
 * (src/cache/cmk.c), and each round the poller asks each provider for the state
 * of every live CMK in it — one question per CMK, however many tenants
 * share it — and applies the answer to every tenant using that CMK
 * (byok_cmk_record_poll): a disabled or destroyed CMK locks its tenants out
 * in every backend at once; an enabled one lets them back in; a provider
 * that does not answer is not a revocation (see byok.unreachable_policy).
 * A network provider's CMKs are asked about concurrently (curl multi, at
 * most byok.kms_max_connections per endpoint), the local provider's one
 * after the other, fastest first; every call is bounded by
 * byok.kms_timeout.  CMKs whose last question failed or was slow (wk_slow)
 * are asked by a second worker, "byok slow-key poller", on its own clock:
 * a slow or dead KMS delays the round of the healthy CMKs at most once (the
 * round in which it turns slow), and never again while it stays slow.  If
 * the slow-key poller is not running, the poller asks about every CMK.
 *
 * State changes go to the server log at once and into a shared-memory
 * event queue; on a primary the poller then starts a short-lived worker
 * connected to the tenant's database ("byok event writer") that writes them
 * to byok.key_events and exits.  On a hot standby the poller runs the same
 * way (locking the standby's sessions out too) and writes nothing.
 *
 * Rounds start byok.poll_interval apart, less up to a tenth of it at
 * random (wk_round_us): the nodes of a platform do not poll in lockstep.
 *
 * Signals: SIGHUP reloads the configuration (byok.poll_interval takes
 * effect at once); SIGTERM ends the worker, which the postmaster starts
 * again a second later unless the server is shutting down; postmaster death
 * ends it.  The poller never holds a lock while a provider works.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "portability/instr_time.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "cache/cache.h"
#include "guc.h"
#include "providers/kms.h"
#include "catalog/ledger.h"
#include "worker/worker.h"

PGDLLEXPORT void byok_poller_main(Datum arg);
PGDLLEXPORT void byok_event_writer_main(Datum arg);

#define WRITER_BATCH 512

static BackgroundWorkerHandle *writer_handle = NULL;
static BackgroundWorkerHandle *reporter_handle = NULL;
static TimestampTz reporter_started = 0;
static Oid	writer_db = InvalidOid;
static int	writer_tries = 0;

/* Register the poller; called from _PG_init while preloading. */
void
byok_worker_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	/* a connection to no database: enough to appear in pg_stat_activity */
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "byok", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "byok_poller_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "byok poller", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "byok poller", BGW_MAXLEN);
	worker.bgw_main_arg = BoolGetDatum(false);
	RegisterBackgroundWorker(&worker);
	/* the same, for the CMKs that are slow or failing (see wk_slow) */
	strlcpy(worker.bgw_name, "byok slow-key poller", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "byok slow-key poller", BGW_MAXLEN);
	worker.bgw_main_arg = BoolGetDatum(true);
	RegisterBackgroundWorker(&worker);
}

/*
 * A CMK is slow when its last question failed (timed out, unreachable,
 * throttled, refused) or took more than half of byok.kms_timeout, until it
 * answers in time three times in a row; byok_cmk_record_poll decides, once,
 * for both pollers.  The slow-key poller asks about those, so a hung or slow
 * KMS never holds up the round that locks out everyone else's tenants.  (A
 * call's time includes its wait for one of the byok.kms_max_connections,
 * which is why the limit is not the interval.)
 */
static bool
wk_slow(const ByokCmkInfo *c)
{
	return c->slow;
}

/* CMKs grouped by provider, failing ones last, fastest first within a group */
static int
wk_order(const void *a, const void *b)
{
	const ByokCmkInfo *x = a;
	const ByokCmkInfo *y = b;
	int			c = strcmp(x->provider, y->provider);
	int64		lx;
	int64		ly;

	if (c != 0)
		return c;
	lx = x->last_status == BYOK_KMS_OK ? x->last_poll_us : INT64_MAX / 2 + x->last_poll_us;
	ly = y->last_status == BYOK_KMS_OK ? y->last_poll_us : INT64_MAX / 2 + y->last_poll_us;
	return (lx > ly) - (lx < ly);
}

/*
 * Ask one provider about its CMKs cmks[0..n-1] (concurrently when it can)
 * and apply the answers.
 */
static void
wk_poll_provider(ByokCmkInfo *cmks, int n, MemoryContext round_cxt)
{
	const ByokKmsRoutine *r = byok_kms_lookup(cmks[0].provider, true);
	ByokKmsStateQuery *q;
	TimestampTz asked_at = GetCurrentTimestamp();

	if (r == NULL)
		return;
	q = palloc0(sizeof(ByokKmsStateQuery) * n);
	for (int i = 0; i < n; i++)
	{
		q[i].key_ref = cmks[i].key_ref;
		q[i].version_hint = cmks[i].version_hint;
		q[i].state = BYOK_KEY_ENABLED;
	}
	PG_TRY();
	{
		byok_kms_key_state_many(r, q, n);
	}
	PG_CATCH();
	{
		/* a provider bug must not stop the poller: record it and go on */
		MemoryContextSwitchTo(round_cxt);
		if (QueryCancelPending || ProcDiePending)
			PG_RE_THROW();
		EmitErrorReport();
		FlushErrorState();
		for (int i = 0; i < n; i++)
		{
			memset(&q[i].err, 0, sizeof(ByokKmsError));
			strlcpy(q[i].err.provider, cmks[i].provider, sizeof(q[i].err.provider));
			byok_kms_set_error(&q[i].err, BYOK_KMS_BAD_RESPONSE, "ERROR", "The provider raised an error.");
			q[i].status = BYOK_KMS_BAD_RESPONSE;
		}
	}
	PG_END_TRY();

	for (int i = 0; i < n; i++)
	{
		List	   *changes = byok_cmk_record_poll(cmks[i].idx, cmks[i].serial, asked_at,
												   q[i].status, q[i].state,
												   q[i].us, &q[i].err);
		ListCell   *lc;

		foreach(lc, changes)
			byok_state_change_report(lfirst(lc), "poller");
	}
}

/*
 * One round: the state of every live CMK, applied to its tenants.
 */
static void
wk_poll_round(bool slow_lane, MemoryContext round_cxt)
{
	MemoryContext old = MemoryContextSwitchTo(round_cxt);
	ByokCmkInfo *cmks;
	int			n;
	int			nall;
	int			kept = 0;
	bool		all;
	instr_time	round_start;
	instr_time	round_time;

	INSTR_TIME_SET_CURRENT(round_start);
	if (slow_lane)
		byok_slow_lane_beat();
	/* only the poller retires CMKs: the other may be asking about one */
	nall = n = byok_cmk_snapshot(&cmks, !slow_lane);
	/* this lane's CMKs; the poller asks about all of them if the slow lane is gone */
	all = !slow_lane && !byok_slow_lane_alive();
	for (int i = 0; i < n; i++)
		if ((all || wk_slow(&cmks[i]) == slow_lane) && byok_cmk_polled_here(&cmks[i]))
			cmks[kept++] = cmks[i];
	n = kept;
	if (n > 0)
	{
		char		activity[64];

		snprintf(activity, sizeof(activity), "byok: polling %d customer master keys", n);
		pgstat_report_activity(STATE_RUNNING, activity);
	}
	/* keys the destruction ledger lists are locked out for good */
	if (!slow_lane && byok_ledger_refresh())
	{
		List	   *changes = byok_tenant_apply_ledger(byok_ledger_listed);
		ListCell   *lc;

		foreach(lc, changes)
			byok_state_change_report(lfirst(lc), "poller");
	}
	qsort(cmks, n, sizeof(ByokCmkInfo), wk_order);
	for (int i = 0; i < n && !ShutdownRequestPending;)
	{
		int			j = i;

		while (j < n && strcmp(cmks[j].provider, cmks[i].provider) == 0)
			j++;
		wk_poll_provider(cmks + i, j - i, round_cxt);
		if (slow_lane)
			byok_slow_lane_beat();
		i = j;
	}

	if (slow_lane)
		byok_slow_lane_beat();
	else
	{
		/* the poller's own figures and the expiry sweep: once, here */
		INSTR_TIME_SET_CURRENT(round_time);
		INSTR_TIME_SUBTRACT(round_time, round_start);
		/* the CMKs watched: asked here, or by the slow-key poller */
		byok_poller_round_done(INSTR_TIME_GET_MICROSEC(round_time), nall);
		byok_cache_sweep_expired();
	}
	if (n > 0)
		pgstat_report_activity(STATE_IDLE, NULL);
	/* what other nodes rely on is reported at once */
	byok_reporter_wake();

	MemoryContextSwitchTo(old);
	MemoryContextReset(round_cxt);
}

/*
 * On a primary, start a writer for a database with queued audit events,
 * one writer at a time.  A database whose writer keeps failing (dropped,
 * extension removed) has its events discarded after three tries; they were
 * in the server log already.
 */
static void
wk_launch_writer(void)
{
	BackgroundWorker worker;
	Oid			dboid;
	pid_t		pid;

	if (RecoveryInProgress())
	{
		ByokEvent	drop[64];
		Oid			db;

		/* a standby writes nothing: the events are in its server log */
		while (OidIsValid(db = byok_event_pending_db()))
			(void) byok_event_take(db, drop, lengthof(drop));
		return;
	}
	if (writer_handle != NULL)
	{
		if (GetBackgroundWorkerPid(writer_handle, &pid) != BGWH_STOPPED)
			return;
		pfree(writer_handle);
		writer_handle = NULL;
	}
	dboid = byok_event_pending_db();
	if (!OidIsValid(dboid))
	{
		writer_db = InvalidOid;
		writer_tries = 0;
		return;
	}
	if (dboid == writer_db && ++writer_tries > 3)
	{
		ByokEvent	drop[64];
		int			n;

		while ((n = byok_event_take(dboid, drop, lengthof(drop))) > 0)
			ereport(LOG,
					(errmsg("byok discarded %d audit events of database %u that could not be written",
							n, dboid)));
		writer_tries = 0;
		return;
	}
	if (dboid != writer_db)
	{
		writer_db = dboid;
		writer_tries = 1;
	}

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "byok", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "byok_event_writer_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "byok event writer", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "byok event writer", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &writer_handle))
		writer_handle = NULL;	/* no worker slot free: try next round */
}

/*
 * With byok.cluster_pollers set, on a primary whose database has byok's
 * catalog copied by Citus: keep the CMK reporter (catalog/citus_pollers.c)
 * running there.  It exits by itself when the setting goes back to 0.
 */
static void
wk_launch_reporter(void)
{
	BackgroundWorker worker;
	Oid			dboid;
	pid_t		pid;

	if (byok_cluster_pollers == 0 || RecoveryInProgress())
		return;
	dboid = byok_cluster_db();
	if (!OidIsValid(dboid))
		return;
	if (reporter_handle != NULL)
	{
		if (GetBackgroundWorkerPid(reporter_handle, &pid) != BGWH_STOPPED)
			return;
		pfree(reporter_handle);
		reporter_handle = NULL;
	}
	/* one that failed (a node down, say) is started again a second later */
	if (GetCurrentTimestamp() - reporter_started < USECS_PER_SEC)
		return;
	reporter_started = GetCurrentTimestamp();
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "byok", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "byok_reporter_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "byok cmk reporter", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "byok cmk reporter", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &reporter_handle))
		reporter_handle = NULL; /* no worker slot free: try next round */
}

/*
 * The time to the next round: byok.poll_interval less up to a tenth of it
 * at random, so that the pollers of many nodes (standbys, a platform's
 * clusters) do not ask a provider in lockstep; never more than the
 * interval, so the lockout bound holds.
 */
static int64
wk_round_us(void)
{
	int64		us = (int64) byok_poll_interval * 1000;

	return us - (int64) (pg_prng_double(&pg_global_prng_state) * (double) (us / 10));
}

void
byok_poller_main(Datum arg)
{
	bool		slow_lane = DatumGetBool(arg);
	MemoryContext round_cxt;
	TimestampTz next_round = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname(slow_lane ? "byok slow-key poller" : "byok poller");

	round_cxt = AllocSetContextCreate(TopMemoryContext, "byok poller round",
									  ALLOCSET_DEFAULT_SIZES);
	byok_poller_register(slow_lane);
	ereport(slow_lane ? DEBUG1 : LOG,
			(errmsg("%s started", slow_lane ? "byok slow-key poller" : "byok poller"),
			 errdetail("Polling every %d ms.", byok_poll_interval)));

	while (!ShutdownRequestPending)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		wait_ms;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_round = Min(next_round, now + (int64) byok_poll_interval * 1000);
		}
		if (now >= next_round)
		{
			next_round = now + wk_round_us();
			wk_poll_round(slow_lane, round_cxt);
		}
		if (!slow_lane)
		{
			wk_launch_writer();
			wk_launch_reporter();
		}

		now = GetCurrentTimestamp();
		wait_ms = next_round > now ? (long) ((next_round - now + 999) / 1000) : 0;
		if (wait_ms > 0)
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	/* exit code 1: the postmaster starts the poller again unless shutting down */
	proc_exit(1);
}

/*
 * The audit-log writer: connected to one database, it writes that
 * database's queued events to byok.key_events in one transaction and exits.
 */
void
byok_event_writer_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	ByokEvent  *events;
	int			n;
	Oid			catalog;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	events = palloc(sizeof(ByokEvent) * WRITER_BATCH);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "byok: writing audit events");
	catalog = get_namespace_oid("byok", true);
	n = byok_event_take(dboid, events, WRITER_BATCH);
	if (n > 0 && OidIsValid(catalog))
	{
		Oid			types[5] = {INT4OID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		for (int i = 0; i < n; i++)
		{
			Datum		values[5];

			if (events[i].catalog != catalog)
				continue;		/* from an earlier install of the extension */
			values[0] = Int32GetDatum(events[i].tenant_id);
			values[1] = CStringGetTextDatum(events[i].tenant);
			values[2] = CStringGetTextDatum(events[i].event);
			values[3] = CStringGetTextDatum(events[i].detail);
			values[4] = TimestampTzGetDatum(events[i].at);
			if (SPI_execute_with_args("INSERT INTO byok.key_events "
									  "(tenant_id, tenant, event, detail, event_time, actor) "
									  "VALUES ($1, $2, $3, $4, $5, 'byok')",
									  5, types, values, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "could not insert into byok.key_events");
		}
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}
