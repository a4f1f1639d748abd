/*-------------------------------------------------------------------------
 *
 * catalog/citus.c
 *		byok's catalog on a Citus cluster: where its rows are read from and
 *		where they may be written.
 *
 * On a Citus cluster byok_citus_setup() (extension/30_tenants.sql) makes the catalog tables that every node needs (tenants, tenant_keys,
 * data_keys, scopes, protected_columns) Citus reference tables: one shard,
 * a copy on every node, written by Citus in its distributed transaction
 * (two-phase commit on the workers).  The table byok names is then an empty
 * shell; the rows live in the node's copy, table "<name>_<shardid>".
 *
 * Reads go to that local copy directly, never through Citus's planner.
 * Through Citus they would fail inside a query Citus pushed to a worker
 * (a "nested distributed execution"), and while an ALTER TABLE runs Citus
 * answers every SELECT on a distributed table with no rows
 * (AlterTableConstraintCheck): a destruction-ledger or tenant-state read
 * must never be answered by nothing.  Writes name the shell, so Citus
 * copies them to every node in the same transaction; they are allowed on
 * the coordinator only (its sequences are the cluster's ids), and refused
 * on a worker with YK015.
 *
 * What is distributed is read once per transaction from Citus's own
 * catalog (pg_dist_partition, pg_dist_shard, pg_dist_local_group); saved
 * plans made for another placement are freed.  Without Citus, or before
 * byok_citus_setup(), nothing changes: every statement runs as written.
 *
 * Locking.  None here; a FOR UPDATE read locks the local copy's row, which
 * every catalog write reaches too (Citus writes the coordinator's copy in
 * the writing transaction), so the per-tenant row locks still serialise.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "cache/wal.h"
#include "guc.h"
#include "catalog/catalog_internal.h"

#define KS_MAX_REFERENCE	8	/* catalog tables made reference tables */
#define KS_MAX_PLANS		64	/* saved plans of this backend */

typedef struct KsPlacement
{
	bool		active;			/* this database's catalog is distributed */
	bool		coordinator;	/* this node is the Citus coordinator */
	int			ntables;
	char		table[KS_MAX_REFERENCE][NAMEDATALEN];
	int64		shard[KS_MAX_REFERENCE];
	bool		here[KS_MAX_REFERENCE];	/* this node holds a copy */
} KsPlacement;

static KsPlacement ks_place;	/* what this transaction reads from */
static LocalTransactionId ks_catalog_written_lxid = InvalidLocalTransactionId;	/* wrote the replicated catalog */
static LocalTransactionId ks_place_lxid = InvalidLocalTransactionId;
static KsPlacement ks_planned;	/* what the saved plans were made for */
static SPIPlanPtr *ks_plans[KS_MAX_PLANS];
static int	ks_nplans = 0;

/* Forget saved plans made for another placement of the catalog. */
static void
ks_free_plans(void)
{
	for (int i = 0; i < ks_nplans; i++)
	{
		if (*ks_plans[i] != NULL)
			SPI_freeplan(*ks_plans[i]);
		*ks_plans[i] = NULL;
	}
	ks_nplans = 0;
}

/* Remember a saved plan, so a change of placement frees it. */
void
ks_citus_keep_plan(SPIPlanPtr *plan)
{
	for (int i = 0; i < ks_nplans; i++)
		if (ks_plans[i] == plan)
			return;
	if (ks_nplans >= KS_MAX_PLANS)
		elog(ERROR, "byok keeps at most %d catalog plans", KS_MAX_PLANS);
	ks_plans[ks_nplans++] = plan;
}

/*
 * byok's transaction callbacks (byok.c), and moving them before Citus's.
 * Callbacks run newest first, so with byok preloaded before citus, Citus's
 * PRE_COMMIT (which prepares the workers' part) would run before byok's,
 * which may still write the catalog (a data key's usage count): once per
 * backend on a Citus node, byok registers its own again, in front.
 */
static XactCallback ks_xact_cb = NULL;
static SubXactCallback ks_subxact_cb = NULL;
bool		byok_in_xact_callback = false;	/* set by byok.c while its callback runs */

void
byok_keystore_xact_callbacks(XactCallback xact, SubXactCallback subxact)
{
	ks_xact_cb = xact;
	ks_subxact_cb = subxact;
}

static void
ks_callbacks_first(void)
{
	static bool moved = false;

	if (moved || ks_xact_cb == NULL || byok_in_xact_callback)
		return;
	UnregisterXactCallback(ks_xact_cb, NULL);
	RegisterXactCallback(ks_xact_cb, NULL);
	UnregisterSubXactCallback(ks_subxact_cb, NULL);
	RegisterSubXactCallback(ks_subxact_cb, NULL);
	moved = true;
}

/*
 * byok's writes of the replicated tables must run in this backend, where
 * its reads of the local copy see them (and its row locks are its own):
 * Citus's local execution, on for the length of the catalog access (the
 * GUC nest level of ks_enter's user switch) whatever the session set.
 * With it off, a revoke waited on its own row lock through a loopback
 * connection until Citus's deadlock detector cancelled it.
 */
static void
ks_local_execution(void)
{
	if (ks_place.active)
		(void) set_config_option("citus.enable_local_execution", "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Where this transaction's catalog rows are (inside ks_enter, as the
 * bootstrap superuser).  Once per transaction.
 */
void
ks_citus_refresh(void)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	uint64		n;

	if (ks_place_lxid == MyProc->lxid)
	{
		ks_local_execution();
		return;
	}
	memset(&ks_place, 0, sizeof(ks_place));
	if (OidIsValid(get_extension_oid("citus", true)))
	{
		values[0] = ObjectIdGetDatum(byok_keystore_catalog());
		n = ks_exec_once("SELECT c.relname::pg_catalog.text, s.shardid, "
						 " (SELECT l.groupid FROM pg_catalog.pg_dist_local_group l) OPERATOR(pg_catalog.=) 0, "
						 " pg_catalog.to_regclass(pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' "
						 "   OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname OPERATOR(pg_catalog.||) '_' "
						 "   OPERATOR(pg_catalog.||) s.shardid)) IS NOT NULL "
						 "FROM pg_catalog.pg_dist_partition p "
						 "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.logicalrelid "
						 "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
						 "JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid OPERATOR(pg_catalog.=) p.logicalrelid "
						 "WHERE c.relnamespace OPERATOR(pg_catalog.=) $1 "
						 "AND p.partmethod OPERATOR(pg_catalog.=) 'n' AND p.repmodel OPERATOR(pg_catalog.=) 't' "
						 "ORDER BY 1", 1, types, values, NULL);
		if (n > KS_MAX_REFERENCE)
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_CLUSTER),
					 errmsg("byok's catalog has more distributed tables than it knows"),
					 errdetail("Citus lists " UINT64_FORMAT " reference tables in schema byok; byok makes at most %d.",
							   n, KS_MAX_REFERENCE)));
		for (uint64 i = 0; i < n; i++)
		{
			bool		isnull;

			ks_get_text(i, 1, ks_place.table[i], NAMEDATALEN);
			ks_place.shard[i] = DatumGetInt64(ks_get(i, 2, &isnull));
			ks_place.coordinator = DatumGetBool(ks_get(i, 3, &isnull)) && !isnull;
			ks_place.here[i] = DatumGetBool(ks_get(i, 4, &isnull));
		}
		ks_place.ntables = (int) n;
		ks_place.active = n > 0;
	}
	if (ks_place.active)
	{
		ks_callbacks_first();
		byok_cluster_note_db(MyDatabaseId);
	}
	if (memcmp(&ks_place, &ks_planned, sizeof(ks_place)) != 0)
	{
		ks_free_plans();
		ks_planned = ks_place;
	}
	ks_place_lxid = MyProc->lxid;
	ks_local_execution();
}

/* Is this database's catalog distributed by Citus (in this transaction)? */
bool
ks_citus_active(void)
{
	return ks_place.active;
}

/*
 * A node Citus has not copied byok's table 'table' to yet (a node added
 * later, while Citus builds its copies).  Inside ks_enter.
 */
bool
ks_citus_missing(const char *table)
{
	for (int i = 0; i < ks_place.ntables; i++)
		if (strcmp(ks_place.table[i], table) == 0)
			return !ks_place.here[i];
	return false;
}

/* Is this a Citus worker, where byok's catalog is read but never written? */
bool
ks_citus_worker(void)
{
	return ks_place.active && !ks_place.coordinator;
}

static bool
ks_ident_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/*
 * The statement to run for 'sql' on this node: reads name the local copies
 * of the distributed tables; writes name the shell and are refused on a
 * worker.  Returns 'sql' itself when nothing changes, else a palloc'd copy.
 */
const char *
ks_citus_sql(const char *sql)
{
	StringInfoData out;
	const char *p = sql;
	const char *s = sql;
	bool		read;

	if (!ks_place.active || sql == NULL)
		return sql;
	while (*s == ' ' || *s == '\n' || *s == '(')
		s++;
	read = pg_strncasecmp(s, "SELECT", 6) == 0;
	initStringInfo(&out);
	while ((s = strstr(p, "byok.")) != NULL)
	{
		const char *name = s + 5;
		int			len = 0;
		int			i;

		while (ks_ident_char(name[len]))
			len++;
		appendBinaryStringInfo(&out, p, name + len - p);
		p = name + len;
		if (s > sql && ks_ident_char(s[-1]))
			continue;
		for (i = 0; i < ks_place.ntables; i++)
			if (strlen(ks_place.table[i]) == (size_t) len && strncmp(ks_place.table[i], name, len) == 0)
				break;
		if (i == ks_place.ntables)
			continue;
		if (read && !ks_place.here[i])
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_CLUSTER),
					 errmsg("byok's catalog has no copy on this Citus node"),
					 errdetail("Table byok.%s is a reference table without a placement here.", ks_place.table[i]),
					 errhint("Run SELECT replicate_reference_tables() on the coordinator.")));
		if (read)
			appendStringInfo(&out, "_" INT64_FORMAT, ks_place.shard[i]);
		else if (!ks_place.coordinator)
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_CLUSTER),
					 errmsg("byok's catalog is written on the Citus coordinator only"),
					 errdetail("This change writes byok.%s, a reference table, on a worker.", ks_place.table[i]),
					 errhint("Run administrative byok functions on the coordinator; a scope's first data key "
							 "for a tenant is made there too (byok_encrypt once on the coordinator).")));
	}
	appendStringInfoString(&out, p);
	return out.data;
}

/* ---- administrative changes reaching a worker ---- */

/*
 * A worker hears of a revocation, reinstatement or destruction as Citus's
 * UPDATE of its copy of byok.tenants, inside a transaction the coordinator
 * then prepares and commits (two-phase commit).  The row trigger
 * tenant_state_changed queues the lockouts (revoked, destroyed); they are
 * applied at PREPARE, before the coordinator can commit, so no session
 * here reads past the coordinator's commit; a transaction that is then
 * rolled back leaves the tenant locked out here until the next attach
 * converges it from the catalog (below): fail closed.  A reinstatement is
 * never applied early: the first session that needs the tenant's keys
 * after the commit finds the catalog active and lets it back in
 * (ks_citus_converge), so what did not commit never lets a tenant in.
 * A tenant-key rotation or a rewrap under another CMK (tk_version,
 * provider, key_ref) wipes the tenant's cached keys here at PREPARE and
 * makes the poller forget its CMK, so the next unwrap registers the CMK
 * now in use: a customer disabling the new CMK is seen on every worker.
 * (Retirements and destructions rewrite wrapped DEKs, and the statement
 * trigger catalog_rewrapped wipes this database's keys at PREPARE.)
 */
typedef struct KsLockout
{
	int32		tenant_id;
	char		name[NAMEDATALEN];
	bool		rekeyed;		/* its tenant key or CMK changed: wipe, forget the CMK */
} KsLockout;

static List *ks_lockouts = NIL;		/* KsLockout, in TopTransactionContext */

PG_FUNCTION_INFO_V1(byok_tenant_state_changed);

/* Is this node a Citus worker?  (SPI connected) */
static bool
ks_on_worker(void)
{
	bool		isnull;

	if (!OidIsValid(get_extension_oid("citus", true)))
		return false;
	if (SPI_execute("SELECT l.groupid OPERATOR(pg_catalog.<>) 0 FROM pg_catalog.pg_dist_local_group l",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		return false;
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) && !isnull;
}

/* a column of the row before and after the UPDATE differ (NULLs equal) */
static bool
ks_column_changed(TriggerData *td, const char *column)
{
	TupleDesc	desc = td->tg_relation->rd_att;
	int			att = SPI_fnumber(desc, column);
	char	   *before;
	char	   *after;

	if (att <= 0)
		return false;
	before = SPI_getvalue(td->tg_trigtuple, desc, att);
	after = SPI_getvalue(td->tg_newtuple, desc, att);
	if (before == NULL || after == NULL)
		return before != after;
	return strcmp(before, after) != 0;
}

/*
 * AFTER UPDATE OF state, tk_version, provider, key_ref ON byok.tenants, FOR
 * EACH ROW (and on its Citus copies)
 */
Datum
byok_tenant_state_changed(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	row;
	TupleDesc	desc;
	bool		worker;
	bool		isnull;
	Datum		id;
	char	   *name;
	char	   *state;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_UPDATE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("byok.tenant_state_changed() is a row trigger on UPDATE of byok.tenants")));
	/* byok.tenants or a Citus copy of it (tenants_<shardid>), nothing else */
	if (RelationGetNamespace(td->tg_relation) != get_namespace_oid("byok", true) ||
		strncmp(RelationGetRelationName(td->tg_relation), "tenants", 7) != 0 ||
		(RelationGetRelationName(td->tg_relation)[7] != '\0' &&
		 RelationGetRelationName(td->tg_relation)[7] != '_'))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("byok.tenant_state_changed() fires on byok.tenants only")));
	row = td->tg_newtuple;
	desc = td->tg_relation->rd_att;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	worker = ks_on_worker();
	SPI_finish();
	/* elsewhere the function that changed the state queued it itself */
	if (!worker)
		return PointerGetDatum(NULL);
	id = SPI_getbinval(row, desc, SPI_fnumber(desc, "tenant_id"), &isnull);
	name = SPI_getvalue(row, desc, SPI_fnumber(desc, "name"));
	state = SPI_getvalue(row, desc, SPI_fnumber(desc, "state"));
	if (isnull || name == NULL || state == NULL)
		return PointerGetDatum(NULL);
	if (strcmp(state, "revoked") == 0 || strcmp(state, "destroyed") == 0 ||
		ks_column_changed(td, "tk_version") || ks_column_changed(td, "provider") ||
		ks_column_changed(td, "key_ref"))
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
		KsLockout  *l = palloc0(sizeof(KsLockout));

		l->tenant_id = DatumGetInt32(id);
		strlcpy(l->name, name, sizeof(l->name));
		l->rekeyed = strcmp(state, "revoked") != 0 && strcmp(state, "destroyed") != 0;
		ks_lockouts = lappend(ks_lockouts, l);
		MemoryContextSwitchTo(old);
	}
	return PointerGetDatum(NULL);
}

/*
 * PREPARE (or a worker's own commit): apply the queued lockouts to shared
 * memory, and log them for this worker's own standbys.  Never raises.
 */
void
byok_keystore_apply_lockouts(void)
{
	ListCell   *lc;
	Oid			catalog;

	if (ks_lockouts == NIL)
		return;
	catalog = get_namespace_oid("byok", true);
	foreach(lc, ks_lockouts)
	{
		KsLockout  *l = lfirst(lc);

		if (!OidIsValid(catalog))
			break;
		if (l->rekeyed)
		{
			int			slot = byok_tenant_find(MyDatabaseId, catalog, l->tenant_id);

			if (slot >= 0)
				byok_tenant_rekeyed(slot, l->tenant_id);
			byok_wal_tenant_rekeyed(MyDatabaseId, catalog, l->tenant_id, l->name);
			continue;
		}
		byok_tenant_replay(MyDatabaseId, catalog, l->tenant_id, l->name, BYOK_TENANT_REVOKED,
						   "from the Citus coordinator");
		byok_wal_tenant_state(MyDatabaseId, catalog, l->tenant_id, l->name, BYOK_TENANT_REVOKED, false);
	}
	byok_wal_sync();
	ks_lockouts = NIL;
}

/* End of transaction: forget what was queued (applied or aborted). */
void
byok_keystore_forget_lockouts(void)
{
	ks_lockouts = NIL;
}

/*
 * The tenant's row in this node's copy of byok.tenants as the latest
 * committed state has it (never the caller's snapshot: a REPEATABLE READ
 * transaction begun before a revocation would still see the tenant
 * active).  Sets *state and *settled: no transaction still in flight is
 * updating the row (a prepared revocation is its update xid, in progress
 * until COMMIT PREPARED; on a standby of the worker the primary's running
 * transactions count; row locks, and the lockers of a MultiXact, do not).
 * False if the row is not there.
 */
static bool
ks_latest_tenant_row(int32 tenant_id, ByokTenantState *state, bool *settled)
{
	char		name[NAMEDATALEN + 24];
	Oid			relid = InvalidOid;
	Relation	rel;
	Snapshot	snap;
	TableScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	for (int i = 0; i < ks_place.ntables; i++)
		if (strcmp(ks_place.table[i], "tenants") == 0)
		{
			snprintf(name, sizeof(name), "tenants_" INT64_FORMAT, ks_place.shard[i]);
			relid = get_relname_relid(name, byok_keystore_catalog());
		}
	if (!OidIsValid(relid))
		return false;
	rel = table_open(relid, AccessShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		Datum		id = heap_getattr(tup, SPI_fnumber(desc, "tenant_id"), desc, &isnull);
		Datum		st;
		HeapTupleHeader h = tup->t_data;
		char	   *statestr;

		if (isnull || DatumGetInt32(id) != tenant_id)
			continue;
		st = heap_getattr(tup, SPI_fnumber(desc, "state"), desc, &isnull);
		statestr = isnull ? "" : TextDatumGetCString(st);
		*state = strcmp(statestr, "active") == 0 ? BYOK_TENANT_ACTIVE :
			strcmp(statestr, "revoked") == 0 ? BYOK_TENANT_REVOKED : BYOK_TENANT_CMK_DESTROYED;
		*settled = true;
		if (!(h->t_infomask & HEAP_XMAX_INVALID) && !HEAP_XMAX_IS_LOCKED_ONLY(h->t_infomask))
		{
			TransactionId updater = (h->t_infomask & HEAP_XMAX_IS_MULTI) ?
				HeapTupleGetUpdateXid(h) : HeapTupleHeaderGetRawXmax(h);

			*settled = !TransactionIdIsValid(updater) || !TransactionIdIsInProgress(updater);
		}
		found = true;
		break;
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * On a worker, at attach: bring the tenant's slot to the catalog's latest
 * committed state where only the administrator decides (active, revoked,
 * destroyed); the provider's states (cmk_disabled, kms_unreachable) stay
 * the poller's.  A revoked slot is let back in only once the row is active
 * and settled (ks_latest_tenant_row).  No lock is taken on the row, so no
 * session here can hold up the coordinator's next change, and it works in
 * read-only transactions and on standbys.
 */
void
ks_citus_converge(KsTenant *t)
{
	ByokTenantSlot *ts = byok_tenant_slot(t->slot);
	ByokTenantState cur = pg_atomic_read_u32(&ts->state);
	ByokTenantState latest;
	bool		settled;

	if (!ks_citus_worker() || (cur != BYOK_TENANT_ACTIVE && cur != BYOK_TENANT_REVOKED))
		return;
	if (!ks_latest_tenant_row(t->tenant_id, &latest, &settled) || latest == cur)
		return;
	if (latest == BYOK_TENANT_ACTIVE && !settled)
		return;
	byok_tenant_replay(MyDatabaseId, byok_keystore_catalog(), t->tenant_id, t->name, latest,
					   "from the catalog the Citus coordinator wrote");
	t->generation = pg_atomic_read_u64(&ts->generation);
}

/*
 * A cache flush on the coordinator wipes the workers' caches too: the same
 * byok_cache_flush on every worker, at once (Citus's run_command_on_workers,
 * as the calling user, outside this transaction: a flush is not undone by
 * a rollback anywhere).  A worker that does not answer is an error naming
 * it, after every other node flushed.  Called outside ks_enter.
 */
void
ks_citus_flush_workers(const char *tenant)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	char		nulls[1] = {' '};
	char	   *command;
	bool		isnull;
	StringInfoData failed;

	if (!ks_place.active || !ks_place.coordinator)
		return;
	if (tenant)
		values[0] = CStringGetTextDatum(tenant);
	else
		nulls[0] = 'n';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT pg_catalog.format('SELECT %I.byok_cache_flush(%L::pg_catalog.text)', n.nspname, $1) "
							  "FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n "
							  "ON n.oid OPERATOR(pg_catalog.=) e.extnamespace "
							  "WHERE e.extname OPERATOR(pg_catalog.=) 'byok'",
							  1, types, values, nulls, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "byok's schema not found");
	command = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	values[0] = CStringGetTextDatum(command);
	nulls[0] = ' ';
	if (SPI_execute_with_args("SELECT w.nodename OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) w.nodeport, w.result "
							  "FROM pg_catalog.run_command_on_workers($1) w WHERE NOT w.success",
							  1, types, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "run_command_on_workers failed");
	initStringInfo(&failed);
	for (uint64 i = 0; i < SPI_processed && i < 8; i++)
	{
		char	   *node = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *result = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

		appendStringInfo(&failed, "%s%s: %.200s", i ? "; " : "", node ? node : "?", result ? result : "");
	}
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CLUSTER),
				 errmsg("the cache flush did not reach every Citus worker"),
				 errdetail("%s", failed.data),
				 errhint("The other nodes are flushed; run byok_cache_flush again once the worker answers.")));
	SPI_finish();
}

/*
 * BEFORE INSERT OR UPDATE OR DELETE, FOR EACH STATEMENT, on the catalog
 * tables Citus replicates (and their copies): on a worker, only Citus's
 * own backends write them (the coordinator's changes, a node's first copy,
 * a shard move).  Any other writer there — byok's plpgsql functions run on
 * a worker by mistake, a hand-written statement — would make ids from the
 * worker's own sequences and lock rows the coordinator's changes do not
 * see: refused with YK015.  (The C paths refuse before writing:
 * ks_citus_sql.)  Elsewhere it does nothing.
 */
PG_FUNCTION_INFO_V1(byok_catalog_write_check);

Datum
byok_catalog_write_check(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	const char *app;
	bool		worker;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("byok.catalog_write_check() is a statement trigger")));
	app = GetConfigOption("application_name", true, false);
	if (app != NULL && (strncmp(app, "citus_internal gpid=", 20) == 0 ||
						strncmp(app, "citus_rebalancer gpid=", 22) == 0 ||
						strncmp(app, "citus_shard_", 12) == 0))
		return PointerGetDatum(NULL);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	worker = ks_on_worker();
	SPI_finish();
	/* (this transaction now holds Citus's locks on the replicated catalog) */
	ks_catalog_written_lxid = MyProc->lxid;
	if (worker)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CLUSTER),
				 errmsg("byok's catalog is written on the Citus coordinator only"),
				 errdetail("This statement writes byok.%s on a worker.", RelationGetRelationName(td->tg_relation)),
				 errhint("Run administrative byok functions on the coordinator.")));
	return PointerGetDatum(NULL);
}

/* ---- data-key usage on a Citus cluster ---- */

/*
 * byok.dek_max_encryptions bounds the values sealed under one DEK on every
 * node together: each node reserves blocks from the coordinator's count
 * (byok_reserve_encryptions, in a transaction of its own through Citus's
 * run_command_on_coordinator, so a reservation is never rolled back) and
 * seals only what it reserved; a block left unused when its cache entry
 * goes is wasted, never reused.  When the coordinator grants nothing more,
 * the scope rotates there (byok_rotate_for_limit) and every node reads the
 * new DEK from its copy.  Both run as the bootstrap superuser (inside
 * ks_enter), so Citus connects as it.
 */
static LocalTransactionId ks_nocitus_lxid = InvalidLocalTransactionId;

bool
byok_keystore_citus_counts(void)
{
	KsAccess	acc;

	if (ks_place_lxid == MyProc->lxid)
		return ks_place.active;
	if (ks_nocitus_lxid == MyProc->lxid)
		return false;
	if (!OidIsValid(get_extension_oid("citus", true)))
	{
		ks_nocitus_lxid = MyProc->lxid;
		return false;
	}
	ks_enter(&acc);
	ks_leave(&acc);
	return ks_place.active;
}

/* Run "SELECT <byok's schema>.<call>" on the coordinator; its one value, as text.  Inside ks_enter. */
static char *
ks_on_coordinator(const char *call, const char *what)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(call)};
	char	   *result;
	bool		isnull;

	ks_exec_once("SELECT r.success, r.result FROM pg_catalog.pg_extension e "
				 "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace, "
				 "LATERAL pg_catalog.run_command_on_coordinator(pg_catalog.format('SELECT %I.%s', n.nspname, $1)) r "
				 "WHERE e.extname OPERATOR(pg_catalog.=) 'byok'", 1, types, values, NULL);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CLUSTER),
				 errmsg("could not %s on the Citus coordinator", what),
				 errdetail("run_command_on_coordinator returned " UINT64_FORMAT " rows.", SPI_processed)));
	result = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (!DatumGetBool(ks_get(0, 1, &isnull)) || isnull || result == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CLUSTER),
				 errmsg("could not %s on the Citus coordinator", what),
				 errdetail("%.200s", result ? result : "no answer")));
	return result;
}

/* the coordinator's answer, a count or an id: digits only, within [min, max] */
static int64
ks_answer_int(const char *answer, int64 min, int64 max, const char *what)
{
	char	   *end;
	long long	v;

	errno = 0;
	v = strtoll(answer, &end, 10);
	if (errno != 0 || end == answer || *end != '\0' || v < min || v > max)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CLUSTER),
				 errmsg("could not %s on the Citus coordinator", what),
				 errdetail("It answered \"%.40s\", not a number from " INT64_FORMAT " to " INT64_FORMAT ".",
						   answer, min, max)));
	return (int64) v;
}

/*
 * Reserve up to 'want' encryptions under DEK 'dek_id': how many were
 * granted (0: exhausted).  A transaction on the coordinator that has
 * written the replicated catalog (a data key made or rotated, a tenant
 * changed) holds Citus's locks on it until it ends, so a reservation in a
 * transaction of its own would wait for it: it reserves in its own
 * transaction instead, which a rollback undoes (the values it sealed are
 * then not counted: the slack of an aborted transaction that changed the
 * catalog).
 */
int64
byok_keystore_citus_reserve(int64 dek_id, uint64 want)
{
	KsAccess	acc;
	char		call[96];
	int64		got;

	snprintf(call, sizeof(call), "byok_reserve_encryptions(" INT64_FORMAT ", " UINT64_FORMAT ")",
			 dek_id, want);
	ks_enter(&acc);
	if (!ks_citus_worker() && ks_catalog_written_lxid == MyProc->lxid)
	{
		/*
		 * Here, read from this node's copy (an ALTER TABLE in progress
		 * would have Citus answer a read through it with no rows) and
		 * written through Citus; this transaction holds Citus's lock on
		 * the table, so no other reservation comes between.
		 */
		Oid			types[2] = {INT8OID, INT8OID};
		Datum		values[2] = {Int64GetDatum(dek_id), 0};
		bool		isnull;

		got = -1;
		if (ks_exec_once("SELECT encryptions FROM byok.data_keys WHERE dek_id OPERATOR(pg_catalog.=) $1 "
						 "AND wrapped_key IS NOT NULL", 1, types, values, NULL) == 1)
		{
			int64		cur = DatumGetInt64(ks_get(0, 1, &isnull));
			int64		limit = (int64) byok_dek_max_encryptions;

			got = (isnull || cur >= limit) ? 0 : (int64) Min(want, (uint64) (limit - cur));
			if (got > 0)
			{
				values[1] = Int64GetDatum(cur + got);
				ks_exec_once("UPDATE byok.data_keys SET encryptions = $2 WHERE dek_id OPERATOR(pg_catalog.=) $1",
							 2, types, values, NULL);
			}
		}
	}
	else
		got = ks_answer_int(ks_on_coordinator(call, "reserve encryptions under a data key"),
							-1, (int64) Min(want, (uint64) PG_INT64_MAX), "reserve encryptions under a data key");
	ks_leave(&acc);
	if (got < 0)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_CLUSTER),
				 errmsg("could not reserve encryptions under data key " INT64_FORMAT " on the Citus coordinator", dek_id),
				 errdetail("The coordinator has no usable data key with that id.")));
	return got;
}

/* On a worker: rotate the exhausted DEK 'dek_id' on the coordinator; the DEK to use now.  Inside ks_enter. */
int64
ks_citus_rotate_on_coordinator(const char *tenant, const char *scope, int64 dek_id)
{
	StringInfoData call;
	char	   *qt = quote_literal_cstr(tenant);
	char	   *qs = quote_literal_cstr(scope);

	initStringInfo(&call);
	appendStringInfo(&call, "byok_rotate_for_limit(%s, %s, " INT64_FORMAT ")", qt, qs, dek_id);
	return ks_answer_int(ks_on_coordinator(call.data, "rotate a data key"), 1, PG_INT64_MAX, "rotate a data key");
}
