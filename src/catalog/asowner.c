/*-------------------------------------------------------------------------
 *
 * catalog/asowner.c
 *		Run byok's work on a user table as that table's owner, in a
 *		restricted security context.
 *
 * byok's administrative functions (byok_protect_column and friends) are
 * SECURITY DEFINER, owned by the bootstrap superuser: they must write
 * byok's own catalog and create objects in schema byok.  The queries they
 * run on a *user* table, though, fire that table's triggers, evaluate its
 * domains' CHECK constraints, call the casts of its column types and read
 * through whatever relation its name resolves to.  All of that is code the
 * table owner wrote, so it must never run with byok's rights.
 *
 * byok.exec_as_owner(tbl, query) does what PostgreSQL itself does for
 * index expressions and REFRESH MATERIALIZED VIEW (RefreshMatViewByOid in
 * src/backend/commands/matview.c): it switches to the table's owner with
 * SECURITY_RESTRICTED_OPERATION (no SET ROLE, no temporary objects, no
 * session state that outlives the call), opens a GUC nest level with
 * search_path pinned to pg_catalog, pg_temp, runs the one query, and undoes
 * all three on the way out (row_security is off as well, so a row-level
 * security policy of the owner's raises an error instead of hiding rows
 * from a count or a rewrite).  An error unwinds them too: (sub)transaction
 * abort restores the user id and security context and pops GUC nest levels.
 *
 * Only an ordinary table is accepted: a view, foreign table, sequence or
 * anything else at that OID is refused (42809) before any query runs, so a
 * protected table renamed and replaced by a view is never mistaken for it.
 * The function is for byok's own SECURITY DEFINER code: PUBLIC may not
 * execute it, and it refuses any caller that is not a superuser.
 *
 * byok_switch_user()/byok_switch_back() are the same switch for byok's own
 * catalog access (catalog/access.c, extdrop.c), as the bootstrap
 * superuser.
 *
 * Locking.  None of its own: the queries take whatever locks they need.
 * Key lifetime.  No key material passes through this file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/catalog.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "catalog/asowner.h"

PG_FUNCTION_INFO_V1(byok_exec_as_owner);
PG_FUNCTION_INFO_V1(byok_exec_as_owner_texts);
PG_FUNCTION_INFO_V1(byok_check_not_restricted);

/*
 * Become 'user', adding 'add_sec_context' to the security context, with a
 * new GUC nest level in which search_path is pg_catalog, pg_temp: nothing
 * of the caller's search_path reaches the queries that follow.  Undone by
 * byok_switch_back, or by (sub)transaction abort on an error.
 */
void
byok_switch_user(Oid user, int add_sec_context, ByokUserSwitch *sw)
{
	GetUserIdAndSecContext(&sw->userid, &sw->sec_context);
	SetUserIdAndSecContext(user, sw->sec_context | add_sec_context);
	sw->nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	/* a row-level security policy raises an error instead of hiding rows */
	(void) set_config_option("row_security", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
byok_switch_back(ByokUserSwitch *sw)
{
	AtEOXact_GUC(false, sw->nestlevel);
	SetUserIdAndSecContext(sw->userid, sw->sec_context);
}

/*
 * The owner of ordinary table 'relid'; raises 42P01 if there is no such
 * relation and 42809 if it is not an ordinary table.
 */
static Oid
ao_table_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Form_pg_class cls;
	Oid			owner;
	char		relkind;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	cls = (Form_pg_class) GETSTRUCT(tup);
	owner = cls->relowner;
	relkind = cls->relkind;
	ReleaseSysCache(tup);
	if (relkind != RELKIND_RELATION || IsCatalogRelationOid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not an ordinary table", get_rel_name(relid)),
				 errdetail("byok works only on ordinary tables.")));
	return owner;
}

/*
 * byok.check_not_restricted() -> void
 *
 * byok's administrative entry points refuse to run inside a
 * security-restricted operation: there the code running is not the
 * session's own (a table owner's trigger fired by byok.exec_as_owner, an
 * index expression under ANALYZE, a materialized view's query), while the
 * owner check looks at the session's role, so such code could otherwise
 * act through byok with the session's rights (a confused deputy).
 */
Datum
byok_check_not_restricted(PG_FUNCTION_ARGS)
{
	if (InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("byok's administrative functions cannot run inside a security-restricted operation"),
				 errdetail("Code that runs as a table's owner (a trigger, an index expression, a view) cannot act through byok.")));
	PG_RETURN_VOID();
}

/*
 * byok.exec_as_owner(tbl regclass, query text) -> bigint[]
 *
 * Runs 'query' as tbl's owner (see the file header).  For a query that
 * returns rows: the columns of its first row (each must be bigint; NULL
 * stays NULL), or an empty array for no row.  For any other statement: one
 * element, the number of rows it processed.
 */
Datum
byok_exec_as_owner(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	ByokUserSwitch sw;
	int			rc;
	int			natts = 0;
	Datum	   *elems = NULL;
	bool	   *nulls = NULL;
	int			dims[1];
	int			lbs[1] = {1};
	ArrayType  *result;
	MemoryContext outer = CurrentMemoryContext;

	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function exec_as_owner"),
				 errdetail("Only byok's own functions run queries as a table's owner.")));
	byok_switch_user(ao_table_owner(relid), SECURITY_RESTRICTED_OPERATION, &sw);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute(query, false, 0);
	if (rc < 0)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
	if (rc == SPI_OK_SELECT)
	{
		TupleDesc	desc = SPI_tuptable->tupdesc;

		natts = SPI_processed > 0 ? desc->natts : 0;
		elems = MemoryContextAllocZero(outer, sizeof(Datum) * Max(natts, 1));
		nulls = MemoryContextAllocZero(outer, sizeof(bool) * Max(natts, 1));
		for (int i = 0; i < natts; i++)
		{
			if (TupleDescAttr(desc, i)->atttypid != INT8OID)
				elog(ERROR, "exec_as_owner: column %d of the result is not bigint", i + 1);
			elems[i] = SPI_getbinval(SPI_tuptable->vals[0], desc, i + 1, &nulls[i]);
		}
	}
	else
	{
		natts = 1;
		elems = MemoryContextAllocZero(outer, sizeof(Datum));
		nulls = MemoryContextAllocZero(outer, sizeof(bool));
		elems[0] = Int64GetDatum((int64) SPI_processed);
	}
	SPI_finish();

	byok_switch_back(&sw);

	if (natts == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	dims[0] = natts;
	result = construct_md_array(elems, nulls, 1, dims, lbs, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	PG_RETURN_ARRAYTYPE_P(result);
}

/*
 * byok.exec_as_owner_texts(tbl regclass, query text) -> text[]
 *
 * Runs 'query', which returns one text column, as tbl's owner (as
 * byok.exec_as_owner does): every row's value, in the order returned
 * (NULL stays NULL).  For the distinct tenants of a Citus table whose
 * first data keys must be made before its shards are rewritten.
 */
Datum
byok_exec_as_owner_texts(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Oid			owner;
	ByokUserSwitch sw;
	int			rc;
	int			n = 0;
	Datum	   *elems = NULL;
	bool	   *nulls = NULL;
	int			dims[1];
	int			lbs[1] = {1};
	MemoryContext outer = CurrentMemoryContext;

	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function exec_as_owner_texts"),
				 errdetail("Only byok's own functions run queries as a table's owner.")));
	owner = ao_table_owner(relid);
	byok_switch_user(owner, SECURITY_RESTRICTED_OPERATION, &sw);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute(query, true, 0);
	if (rc != SPI_OK_SELECT || SPI_tuptable->tupdesc->natts != 1 ||
		TupleDescAttr(SPI_tuptable->tupdesc, 0)->atttypid != TEXTOID)
		elog(ERROR, "exec_as_owner_texts: the query must return one text column");
	n = (int) SPI_processed;
	elems = MemoryContextAllocZero(outer, sizeof(Datum) * Max(n, 1));
	nulls = MemoryContextAllocZero(outer, sizeof(bool) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &nulls[i]);

		if (!nulls[i])
		{
			MemoryContext spi = MemoryContextSwitchTo(outer);

			elems[i] = PointerGetDatum(DatumGetTextPCopy(d));
			MemoryContextSwitchTo(spi);
		}
	}
	SPI_finish();

	byok_switch_back(&sw);

	if (n == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));
	dims[0] = n;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}
