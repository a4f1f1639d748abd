/*-------------------------------------------------------------------------
 *
 * catalog/citus_pollers.c
 *		byok.cluster_pollers: on a Citus cluster, a few nodes ask a provider
 *		about each customer master key and report the answer to the others.
 *
 * Every node's poller asks about every CMK its sessions use: with N nodes
 * and C keys, N x C questions per byok.poll_interval, which a cloud KMS
 * bills and throttles.  With byok.cluster_pollers = K (> 0), K of the
 * cluster's primary nodes ask about a given CMK: the K with the highest
 * rendezvous score hash(provider, key_ref; node group) among the active
 * primaries in pg_dist_node, so every node agrees without talking, keys
 * spread evenly, and a node joining or leaving moves only its own share.
 *
 * The "byok cmk reporter" (one background worker per server, in the
 * database whose byok catalog Citus copies, started by the poller) does the
 * rest:
 *  - every second it works out which CMKs this node asks about: those of
 *    the cluster's tenants (byok.tenants) it is chosen for are entered in
 *    the registry (byok_cmk_watch), so they are asked about here even if
 *    no session here has used them; the others it marks relayed;
 *  - after each poller round (the poller sets its latch) it writes the
 *    answers this node got to byok.cmk_reports, a reference table: at once
 *    when an answer changed, every five poll intervals otherwise.
 * Citus writes every node's copy in its distributed transaction; the row
 * trigger cmk_reported queues each report and it is applied to the node's
 * tenants at PREPARE (a worker) or at commit (the writing node), exactly as
 * an answer of its own poller would be (byok_cmk_record_report): a disabled
 * key locks its tenants out on every node one poll and one distributed
 * write after the customer disabled it.
 *
 * A node never depends on a silent reporter: a relayed CMK whose last report
 * is older than three report intervals and a poll interval is asked about
 * by this node's own poller again (byok_cmk_polled_here), until reports
 * resume.  A chosen node that cannot reach the provider reports nothing,
 * so the others then ask themselves and apply byok.unreachable_policy.
 * Standbys are never chosen and never relay: they ask about every key.
 * Only answers are reported, never key bytes.
 *
 * Privileges.  The reporter runs as the bootstrap superuser and writes
 * byok.cmk_reports only, with fully qualified statements; no role but the
 * extension's owner may write that table (a forged "enabled" would let a
 * disabled tenant back in).  The trigger fires only on byok.cmk_reports
 * and its Citus copies.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "cache/cache.h"
#include "guc.h"
#include "catalog/catalog_internal.h"

PGDLLEXPORT void byok_reporter_main(Datum arg);

PG_FUNCTION_INFO_V1(byok_cmk_reported);
PG_FUNCTION_INFO_V1(byok_cmk_status);

#define CR_MAX_GROUPS 1024

static const char *const cr_state_names[BYOK_KEY_STATE_COUNT] = {"enabled", "disabled", "destroyed"};

/* the cluster as the last assignment saw it */
static int32 cr_groups[CR_MAX_GROUPS];
static int	cr_ngroups = 0;
static int32 cr_me = -1;
static bool cr_full_warned = false;

/* ---- who asks about a CMK ---- */

static uint64
cr_score(const char *provider, const char *key_ref, int32 group)
{
	char		buf[32 + BYOK_MAX_KEY_REF + 2];
	int			lp;
	int			lk;

	/* as the registry holds them (truncated alike), so every node agrees */
	lp = strnlen(provider, 31);
	lk = strnlen(key_ref, BYOK_MAX_KEY_REF);
	memcpy(buf, provider, lp);
	buf[lp] = '\0';
	memcpy(buf + lp + 1, key_ref, lk);
	return DatumGetUInt64(hash_bytes_extended((const unsigned char *) buf, lp + 1 + lk,
											  (uint64) (uint32) group));
}

/*
 * Does this node ask the provider about CMK (provider, key_ref)?  It does
 * when it is one of the byok.cluster_pollers highest scores among the active
 * primaries, or when it is not one of them at all (it cannot be reported to
 * reliably then).
 */
static bool
cr_asks(const char *provider, const char *key_ref)
{
	uint64		mine;
	int			better = 0;
	bool		member = false;

	if (byok_cluster_pollers == 0 || cr_me < 0)
		return true;
	mine = cr_score(provider, key_ref, cr_me);
	for (int i = 0; i < cr_ngroups; i++)
	{
		uint64		s;

		if (cr_groups[i] == cr_me)
		{
			member = true;
			continue;
		}
		s = cr_score(provider, key_ref, cr_groups[i]);
		if (s > mine || (s == mine && cr_groups[i] < cr_me))
			better++;
	}
	return !member || better < byok_cluster_pollers;
}

/* ---- the reporter ---- */

static bool
cr_spi_int(const char *sql, int32 *out)
{
	bool		isnull;

	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		return false;
	*out = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return !isnull;
}

/*
 * Which CMKs this node asks about, from Citus's node list and byok's
 * tenants: watch the chosen ones, mark the rest relayed.
 */
static void
cr_assign(void)
{
	ByokCmkInfo *cmks;
	int			n;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "byok: choosing the CMKs this node asks about");
	cr_me = -1;
	cr_ngroups = 0;
	if (OidIsValid(get_extension_oid("citus", true)) &&
		OidIsValid(get_namespace_oid("byok", true)) &&
		cr_spi_int("SELECT l.groupid FROM pg_catalog.pg_dist_local_group l", &cr_me) &&
		SPI_execute("SELECT n.groupid FROM pg_catalog.pg_dist_node n "
					"WHERE n.noderole OPERATOR(pg_catalog.=) 'primary' AND n.isactive "
					"GROUP BY n.groupid ORDER BY n.groupid", true, 0) == SPI_OK_SELECT)
	{
		for (uint64 i = 0; i < SPI_processed && cr_ngroups < CR_MAX_GROUPS; i++)
		{
			bool		isnull;
			Datum		g = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				cr_groups[cr_ngroups++] = DatumGetInt32(g);
		}
		if (SPI_execute("SELECT DISTINCT t.provider, t.key_ref FROM byok.tenants t "
						"WHERE t.state OPERATOR(pg_catalog.<>) 'destroyed'", true, 0) == SPI_OK_SELECT)
		{
			for (uint64 i = 0; i < SPI_processed; i++)
			{
				char	   *provider = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
				char	   *key_ref = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

				if (provider != NULL && key_ref != NULL && cr_asks(provider, key_ref) &&
					!byok_cmk_watch(provider, key_ref) && !cr_full_warned)
				{
					ereport(WARNING,
							(errmsg("byok key registry is nearly full; this node does not ask about every key it is chosen for"),
							 errdetail("A tenth of byok.max_tenants stays free for this node's own sessions; "
									   "the other nodes ask about those keys themselves once their reports are stale."),
							 errhint("Raise byok.max_tenants.")));
					cr_full_warned = true;
				}
			}
		}
	}
	else
		cr_me = -1;
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	n = byok_cmk_snapshot(&cmks, false);
	for (int i = 0; i < n; i++)
		byok_cmk_set_relayed(cmks[i].idx, cmks[i].serial, !cr_asks(cmks[i].provider, cmks[i].key_ref));
	pfree(cmks);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Should this node's answer about c go out now? */
static bool
cr_due(const ByokCmkInfo *c, TimestampTz now)
{
	/* this node's own answers only: never one it was told by another node */
	if (c->relayed || c->answer_reported || c->last_status != BYOK_KMS_OK || c->last_state < 0 ||
		c->last_state >= BYOK_KEY_STATE_COUNT || c->last_asked_at <= c->sent_asked_at)
		return false;
	return c->last_state != c->sent_state || now - c->sent_at >= byok_cmk_report_interval_us();
}

/* Write the answers the others wait for to byok.cmk_reports, in one transaction. */
static void
cr_report(void)
{
	ByokCmkInfo *cmks;
	int			n;
	int			due = 0;
	TimestampTz now = GetCurrentTimestamp();
	StringInfoData sql;

	if (cr_me < 0)
		return;
	n = byok_cmk_snapshot(&cmks, false);
	initStringInfo(&sql);
	appendStringInfoString(&sql, "INSERT INTO byok.cmk_reports AS r (provider, key_ref, node_group, state, asked_at, reported_at) VALUES ");
	for (int i = 0; i < n; i++)
	{
		if (!cr_due(&cmks[i], now))
			continue;
		/* literals only: Citus refuses a non-IMMUTABLE function in DO UPDATE */
		appendStringInfo(&sql, "%s(%s, %s, %d, %s, %s::pg_catalog.timestamptz, %s::pg_catalog.timestamptz)",
						 due > 0 ? ", " : "",
						 quote_literal_cstr(cmks[i].provider), quote_literal_cstr(cmks[i].key_ref),
						 cr_me, quote_literal_cstr(cr_state_names[cmks[i].last_state]),
						 quote_literal_cstr(pstrdup(timestamptz_to_str(cmks[i].last_asked_at))),
						 quote_literal_cstr(pstrdup(timestamptz_to_str(now))));
		cmks[due++] = cmks[i];
	}
	if (due == 0)
	{
		pfree(cmks);
		pfree(sql.data);
		return;
	}
	appendStringInfoString(&sql, " ON CONFLICT (provider, key_ref, node_group) DO UPDATE "
						   "SET state = EXCLUDED.state, asked_at = EXCLUDED.asked_at, "
						   "reported_at = EXCLUDED.reported_at");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "byok: reporting CMK states to the cluster");
	if (SPI_execute(sql.data, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write byok.cmk_reports");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	for (int i = 0; i < due; i++)
		byok_cmk_mark_sent(cmks[i].idx, cmks[i].serial, cmks[i].last_state, cmks[i].last_asked_at);
	pfree(cmks);
	pfree(sql.data);
}

/*
 * The reporter's main loop.  An ERROR ends it (a Citus node down, say);
 * the poller starts it again a second later.  It ends by itself when
 * byok.cluster_pollers is 0 or the server is a standby.
 */
void
byok_reporter_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	TimestampTz next_assign = 0;
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("byok cmk reporter");
	byok_reporter_register();
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "byok cmk reporter", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		TimestampTz now;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (byok_cluster_pollers == 0 || RecoveryInProgress())
			break;
		now = GetCurrentTimestamp();
		old = MemoryContextSwitchTo(loop_cxt);
		if (now >= next_assign)
		{
			cr_assign();
			next_assign = now + USECS_PER_SEC;
		}
		cr_report();
		MemoryContextSwitchTo(old);
		MemoryContextReset(loop_cxt);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 byok_poll_interval, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}

/* ---- reports arriving ---- */

typedef struct CrReport
{
	char		provider[32];
	char		key_ref[BYOK_MAX_KEY_REF + 1];
	ByokKeyState state;
	TimestampTz asked_at;
	int32		group;
	SubTransactionId subid;		/* queued in this subtransaction */
} CrReport;

static List *cr_reports = NIL;	/* CrReport, in TopTransactionContext */

/* AFTER INSERT OR UPDATE ON byok.cmk_reports FOR EACH ROW (and its Citus copies) */
Datum
byok_cmk_reported(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	const char *rel;
	HeapTuple	row;
	TupleDesc	desc;
	char	   *provider;
	char	   *key_ref;
	char	   *state;
	Datum		d;
	bool		isnull;
	CrReport   *r;
	MemoryContext old;
	int			st = -1;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("byok.cmk_reported() is a row trigger on INSERT or UPDATE of byok.cmk_reports")));
	/* without byok's shared memory there is nothing to apply (and no callback to clear the queue) */
	if (!byok_cache_ready())
		return PointerGetDatum(NULL);
	rel = RelationGetRelationName(td->tg_relation);
	if (RelationGetNamespace(td->tg_relation) != get_namespace_oid("byok", true) ||
		strncmp(rel, "cmk_reports", 11) != 0 || (rel[11] != '\0' && rel[11] != '_'))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("byok.cmk_reported() fires on byok.cmk_reports only")));
	row = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	desc = td->tg_relation->rd_att;
	provider = SPI_getvalue(row, desc, SPI_fnumber(desc, "provider"));
	key_ref = SPI_getvalue(row, desc, SPI_fnumber(desc, "key_ref"));
	state = SPI_getvalue(row, desc, SPI_fnumber(desc, "state"));
	if (provider == NULL || key_ref == NULL || state == NULL)
		return PointerGetDatum(row);
	for (int i = 0; i < BYOK_KEY_STATE_COUNT; i++)
		if (strcmp(state, cr_state_names[i]) == 0)
			st = i;
	if (st < 0)
		return PointerGetDatum(row);
	old = MemoryContextSwitchTo(TopTransactionContext);
	r = palloc0(sizeof(CrReport));
	strlcpy(r->provider, provider, sizeof(r->provider));
	strlcpy(r->key_ref, key_ref, sizeof(r->key_ref));
	r->state = (ByokKeyState) st;
	d = SPI_getbinval(row, desc, SPI_fnumber(desc, "asked_at"), &isnull);
	r->asked_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(row, desc, SPI_fnumber(desc, "node_group"), &isnull);
	r->group = isnull ? -1 : DatumGetInt32(d);
	r->subid = GetCurrentSubTransactionId();
	cr_reports = lappend(cr_reports, r);
	MemoryContextSwitchTo(old);
	return PointerGetDatum(row);
}

/*
 * PREPARE (a node Citus wrote the reports to) or commit (the writing
 * node): apply the reports to this node's tenants.  Never raises.
 */
void
byok_cmk_reports_apply(void)
{
	ListCell   *lc;

	foreach(lc, cr_reports)
	{
		CrReport   *r = lfirst(lc);
		List	   *changes = byok_cmk_record_report(r->provider, r->key_ref, r->state,
													 r->asked_at, r->group);
		ListCell   *c;
		foreach(c, changes)
			byok_state_change_report(lfirst(c), "report of another node's poller");
	}
	cr_reports = NIL;
}

/* End of transaction: forget what was queued (applied or aborted). */
void
byok_cmk_reports_forget(void)
{
	cr_reports = NIL;
}

/* A subtransaction aborted: drop what it and its children queued. */
void
byok_cmk_reports_subxact_abort(SubTransactionId subid)
{
	ListCell   *lc;

	foreach(lc, cr_reports)
	{
		CrReport   *r = lfirst(lc);

		if (r->subid >= subid)
			cr_reports = foreach_delete_current(cr_reports, lc);
	}
}

/* ---- byok_cmk_status() ---- */

/*
 * One row per CMK in this node's registry: its last known state, whether
 * this node's poller asks the provider about it, and the last report of
 * another node applied here.
 */
Datum
byok_cmk_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ByokCmkInfo *cmks;
	int			n;

	byok_check_loaded();
	InitMaterializedSRF(fcinfo, 0);
	/* the keys of this database's tenants (and, in the cluster's database, those watched for it) */
	n = byok_cmk_snapshot_db(MyDatabaseId, MyDatabaseId == byok_cluster_db(), &cmks);
	for (int i = 0; i < n; i++)
	{
		Datum		values[8];
		bool		nulls[8] = {false};
		ByokCmkInfo *c = &cmks[i];

		values[0] = CStringGetTextDatum(c->provider);
		values[1] = CStringGetTextDatum(c->key_ref);
		nulls[2] = c->last_state < 0 || c->last_state >= BYOK_KEY_STATE_COUNT;
		values[2] = nulls[2] ? (Datum) 0 : CStringGetTextDatum(cr_state_names[c->last_state]);
		values[3] = BoolGetDatum(byok_cmk_polled_here(c));
		values[4] = BoolGetDatum(c->relayed && byok_cluster_pollers > 0);
		nulls[5] = c->reported_at == 0;
		values[5] = Int32GetDatum(c->reported_group);
		nulls[6] = c->reported_at == 0;
		values[6] = TimestampTzGetDatum(c->reported_at);
		nulls[7] = c->last_asked_at == 0;
		values[7] = TimestampTzGetDatum(c->last_asked_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
