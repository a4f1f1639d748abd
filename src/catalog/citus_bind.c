/*-------------------------------------------------------------------------
 *
 * catalog/citus_bind.c
 *		A session bound to a tenant (byok.tenant) stays bound on the Citus
 *		workers its statements run on.
 *
 * Citus runs the pieces of a statement in sessions of its own on the
 * workers, which know nothing of the coordinator session's settings: a
 * session bound with SET byok.tenant would see, through a protected view,
 * the rows of every tenant, and a pushed-down byok_decrypt would open any
 * tenant's value.  Citus carries SET LOCAL commands to its workers, but
 * only inside a transaction block, only with citus.propagate_set_commands
 * = 'local', and never a session-level SET.
 *
 * So before each statement of a bound session (ExecutorStart), once per
 * transaction and per change of the binding, byok hands Citus the
 * statement "SET LOCAL byok.tenant TO '<tenant>'" through Citus's own
 * PostprocessVariableSetStmt (which sends it to the workers already in the
 * transaction and prefixes it to every remote transaction it starts), and
 * makes the transaction a coordinated one (UseCoordinatedTransaction), so
 * that Citus opens a remote transaction, SET included, on every worker it
 * uses, even for a single read.  Both functions are found in the running
 * server by name (Citus is a preloaded library; PostgreSQL loads libraries
 * with RTLD_GLOBAL); without them (no Citus) this does nothing.  The cost:
 * a bound session's statements on Citus run in remote transaction blocks
 * (BEGIN and COMMIT on each worker; no two-phase commit for reads).
 *
 * Sessions that Citus itself opened (application_name citus_internal...)
 * are left alone: they are bound by the SET LOCAL their node sent.
 *
 * The hook is installed with byok's planner hook, after every library's
 * _PG_init, so it runs before Citus's executor starts the statement.
 *
 * Locking.  None.
 * Key lifetime.  No key material passes through this file; the tenant's
 * name does, as the setting it is.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>

#include "access/parallel.h"
#include "access/xact.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "guc.h"
#include "catalog/keystore.h"

typedef void (*CitusUseCoordinated) (void);
typedef void (*CitusPropagateSet) (VariableSetStmt *stmt, const char *sql);

static ExecutorStart_hook_type prev_executor_start = NULL;
static bool cb_installed = false;
static bool cb_resolved = false;
static CitusUseCoordinated cb_use_coordinated = NULL;
static CitusPropagateSet cb_propagate_set = NULL;

/* what this transaction handed Citus already */
static LocalTransactionId cb_lxid = InvalidLocalTransactionId;
static uint32 cb_epoch = 0;

static void
cb_bind_workers(void)
{
	VariableSetStmt stmt;
	StringInfoData sql;

	if (!cb_resolved)
	{
		cb_use_coordinated = (CitusUseCoordinated) dlsym(RTLD_DEFAULT, "UseCoordinatedTransaction");
		cb_propagate_set = (CitusPropagateSet) dlsym(RTLD_DEFAULT, "PostprocessVariableSetStmt");
		cb_resolved = true;
	}
	if (cb_use_coordinated == NULL || cb_propagate_set == NULL || !IsTransactionState())
		return;
	/* a parallel worker or a background process: its leader binds the workers */
	if (IsParallelWorker() || MyBackendType != B_BACKEND)
		return;
	/* a session Citus opened from another node: bound by that node's SET LOCAL */
	if (application_name != NULL && strncmp(application_name, "citus_internal", 14) == 0)
		return;
	if (cb_lxid == MyProc->lxid && cb_epoch == byok_tenant_guc_epoch)
		return;
	cb_lxid = MyProc->lxid;
	cb_epoch = byok_tenant_guc_epoch;
	if (!OidIsValid(get_extension_oid("citus", true)))
		return;

	memset(&stmt, 0, sizeof(stmt));
	stmt.type = T_VariableSetStmt;
	stmt.kind = VAR_SET_VALUE;
	stmt.name = "byok.tenant";
	stmt.is_local = true;
	initStringInfo(&sql);
	appendStringInfo(&sql, "SET LOCAL byok.tenant TO %s;", quote_literal_cstr(byok_tenant));
	cb_use_coordinated();
	cb_propagate_set(&stmt, sql.data);
	pfree(sql.data);
}

/*
 * Citus puts its SET LOCAL list back as it was when a subtransaction ends
 * (committed or rolled back), and a rolled-back SAVEPOINT undoes the SET on
 * the workers: hand it over again at the next statement.
 */
static void
cb_subxact(SubXactEvent event, SubTransactionId sub, SubTransactionId parent, void *arg)
{
	if (event == SUBXACT_EVENT_COMMIT_SUB || event == SUBXACT_EVENT_ABORT_SUB)
		cb_lxid = InvalidLocalTransactionId;
}

static void
byok_executor_start(QueryDesc *query, int eflags)
{
	if (byok_tenant != NULL && byok_tenant[0] != '\0' && (eflags & EXEC_FLAG_EXPLAIN_ONLY) == 0)
		cb_bind_workers();
	if (prev_executor_start)
		prev_executor_start(query, eflags);
	else
		standard_ExecutorStart(query, eflags);
}

/* From the shared-memory start-up hook: after every library's _PG_init. */
void
byok_citus_bind_install(void)
{
	if (cb_installed)
		return;
	RegisterSubXactCallback(cb_subxact, NULL);
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = byok_executor_start;
	cb_installed = true;
}
