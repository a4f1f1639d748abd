/*-------------------------------------------------------------------------
 *
 * catalog/viewdml.c
 *		UPDATE and DELETE through a protected table's view on a Citus
 *		cluster: a planner hook that hands Citus the view's rows as a
 *		materialized CTE.
 *
 * A protected table's view (<table>_decrypted, extension/40_columns.sql)
 * takes writes through its INSTEAD OF trigger byok_dml.  For an UPDATE or
 * DELETE, PostgreSQL's rewriter expands the view into a subquery that
 * feeds the trigger its rows, and keeps the view itself as the result
 * relation.  Citus refuses such a query once the subquery reads one of its
 * tables ("cannot modify views when the query contains citus tables").
 *
 * byok_planner rewrites exactly that shape before Citus plans it: the
 * statement reads its rows from byok.view_rows(<SELECT * FROM the view
 * WHERE the statement's WHERE>, <its parameters>...), a set-returning
 * function that runs that SELECT as the caller.  The SELECT names the view,
 * so the view is expanded again there, still a security barrier below the
 * statement's WHERE; Citus plans it as any read of the view (decryption
 * pushed down to the nodes that hold the rows).  What is left names no
 * Citus table, so PostgreSQL plans it on the coordinator: the trigger fires
 * once per row and writes the table by primary key, a router statement.
 * (Handing Citus the rows as a CTE does not work: it ships what remains,
 * an UPDATE of the view, to a worker.)
 *
 * Only byok's own views are touched (an INSTEAD OF trigger named byok_dml
 * calling a function of schema byok), only in a database where Citus is
 * installed, and only the shape the rewriter makes: the view's subquery as
 * the one item of FROM and no WITH of the statement's own.  Anything else
 * is planned as written.
 *
 * The hook is installed after every library's _PG_init (from the
 * shared-memory start-up hook), so it runs before Citus's planner in either
 * preload order, and Citus, which insists on owning an unused planner hook
 * when it loads, still loads after byok.
 *
 * Locking.  None: the parser already locked the view.
 * Key lifetime.  No key material passes through this file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_namespace_d.h"
#include "catalog/pg_proc_d.h"
#include "catalog/pg_type_d.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/planner.h"
#include "parser/parse_func.h"
#include "parser/parsetree.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/rel.h"

#include "catalog/keystore.h"

static planner_hook_type prev_planner_hook = NULL;
static bool byok_planner_installed = false;

/* Is object 'oid' of catalog 'classid' a member of the byok extension? */
static bool
vd_byok_owns(Oid classid, Oid oid)
{
	Oid			ext = get_extension_oid("byok", true);

	return OidIsValid(ext) && getExtensionOfObject(classid, oid) == ext;
}

/* Does 'view' carry byok's INSTEAD OF trigger byok_dml? */
static bool
vd_byok_view(Oid view)
{
	Relation	rel = table_open(view, NoLock);
	bool		found = false;

	if (rel->trigdesc != NULL)
		for (int i = 0; i < rel->trigdesc->numtriggers && !found; i++)
		{
			Trigger    *tg = &rel->trigdesc->triggers[i];
			char	   *nsp;

			if (strcmp(tg->tgname, "byok_dml") != 0)
				continue;
			nsp = get_namespace_name(get_func_namespace(tg->tgfoid));
			/* schema byok, and the byok extension's own schema byok */
			found = nsp != NULL && strcmp(nsp, "byok") == 0 &&
				vd_byok_owns(NamespaceRelationId, get_func_namespace(tg->tgfoid));
		}
	table_close(rel, NoLock);
	return found;
}

/*
 * The statement's parameters become $n of the rows' SELECT, passed to
 * byok.view_rows as they are (its VARIADIC "any"): no text round trip.
 */
typedef struct VdParams
{
	List	   *ids;			/* the statement's paramid of each $n */
	List	   *args;			/* that parameter, for each $n */
} VdParams;

static Node *
vd_params_mutator(Node *node, VdParams *ctx)
{
	if (node == NULL)
		return NULL;
	if (IsA(node, Param) && ((Param *) node)->paramkind == PARAM_EXTERN)
	{
		Param	   *p = (Param *) node;
		Param	   *n = makeNode(Param);
		int			k = 0;
		int			i = 0;
		ListCell   *lc;

		foreach(lc, ctx->ids)
		{
			i++;
			if (lfirst_int(lc) == p->paramid)
				k = i;
		}
		if (k == 0)
		{
			ctx->ids = lappend_int(ctx->ids, p->paramid);
			ctx->args = lappend(ctx->args, copyObject(node));
			k = list_length(ctx->ids);
		}
		n->paramkind = PARAM_EXTERN;
		n->paramid = k;
		n->paramtype = p->paramtype;
		n->paramtypmod = p->paramtypmod;
		n->paramcollid = p->paramcollid;
		n->location = -1;
		return (Node *) n;
	}
	if (IsA(node, Query))
		return (Node *) query_tree_mutator((Query *) node, vd_params_mutator, ctx, 0);
	return expression_tree_mutator(node, vd_params_mutator, (void *) ctx);
}

/*
 * The rewritten UPDATE or DELETE of a byok view, its rows read from
 * byok.view_rows(); false (and 'parse' untouched) for any other shape.
 */
static bool
vd_rewrite(Query *parse)
{
	RangeTblEntry *target;
	RangeTblEntry *src;
	RangeTblEntry *view_rte;
	RangeTblEntry *fn_rte;
	RangeTblFunction *rtf;
	RangeTblRef *ref;
	RangeTblRef *one;
	Query	   *rows;
	FuncExpr   *call;
	VdParams	ctx = {NIL, NIL};
	Node	   *quals;
	ListCell   *lc;
	Oid			fn;
	Oid			argtypes[2] = {TEXTOID, ANYOID};
	char	   *sql;
	int			nest;

	if ((parse->commandType != CMD_UPDATE && parse->commandType != CMD_DELETE) ||
		parse->resultRelation <= 1 || parse->cteList != NIL || parse->hasModifyingCTE ||
		parse->jointree == NULL || list_length(parse->jointree->fromlist) != 1)
		return false;
	target = rt_fetch(parse->resultRelation, parse->rtable);
	if (target->rtekind != RTE_RELATION || target->relkind != RELKIND_VIEW)
		return false;
	ref = (RangeTblRef *) linitial(parse->jointree->fromlist);
	if (!IsA(ref, RangeTblRef) || ref->rtindex != 1)
		return false;
	src = rt_fetch(1, parse->rtable);
	quals = parse->jointree->quals;
	if (src->rtekind != RTE_SUBQUERY || src->subquery == NULL ||
		(quals != NULL && IsA(quals, CurrentOfExpr)))
		return false;
	if (!OidIsValid(get_extension_oid("citus", true)) || !vd_byok_view(target->relid))
		return false;
	fn = LookupFuncName(list_make2(makeString("byok"), makeString("view_rows")), 2, argtypes, true);
	if (!OidIsValid(fn) || !vd_byok_owns(ProcedureRelationId, fn))
		return false;

	/* SELECT <every column> FROM <the view> WHERE <the statement's WHERE> */
	view_rte = copyObject(target);
	view_rte->alias = src->alias;
	view_rte->eref = src->eref;
	view_rte->inFromCl = true;
	rows = makeNode(Query);
	rows->commandType = CMD_SELECT;
	rows->querySource = QSRC_ORIGINAL;
	rows->canSetTag = true;
	rows->rtable = list_make1(view_rte);
	rows->hasSubLinks = parse->hasSubLinks;
	one = makeNode(RangeTblRef);
	one->rtindex = 1;
	rows->jointree = makeFromExpr(list_make1(one), vd_params_mutator(copyObject(quals), &ctx));

	rtf = makeNode(RangeTblFunction);
	foreach(lc, src->subquery->targetList)
	{
		TargetEntry *tle = (TargetEntry *) lfirst(lc);
		Node	   *expr = (Node *) tle->expr;
		Var		   *var;

		if (tle->resjunk)
			continue;
		var = makeVar(1, tle->resno, exprType(expr), exprTypmod(expr), exprCollation(expr), 0);
		rows->targetList = lappend(rows->targetList,
								   makeTargetEntry((Expr *) var, tle->resno, pstrdup(tle->resname), false));
		rtf->funccolnames = lappend(rtf->funccolnames, makeString(pstrdup(tle->resname)));
		rtf->funccoltypes = lappend_oid(rtf->funccoltypes, exprType(expr));
		rtf->funccoltypmods = lappend_int(rtf->funccoltypmods, exprTypmod(expr));
		rtf->funccolcollations = lappend_oid(rtf->funccolcollations, exprCollation(expr));
	}
	rtf->funccolcount = list_length(rows->targetList);
	if (rtf->funccolcount != list_length(src->eref->colnames))
		return false;

	/*
	 * Deparsed with search_path = pg_catalog, so every name outside it is
	 * schema-qualified: a cached plan run later under another search_path
	 * still reads the same view.
	 */
	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	sql = pg_get_querydef(rows, false);
	AtEOXact_GUC(true, nest);
	/* a VARIADIC argument needs at least one value: an unused $1 then */
	if (ctx.args == NIL)
		ctx.args = list_make1(makeNullConst(BOOLOID, -1, InvalidOid));
	call = makeFuncExpr(fn, RECORDOID,
						lcons(makeConst(TEXTOID, -1, DEFAULT_COLLATION_OID, -1,
										CStringGetTextDatum(sql), false, false),
							  ctx.args),
						InvalidOid, DEFAULT_COLLATION_OID, COERCE_EXPLICIT_CALL);
	call->funcretset = true;
	rtf->funcexpr = (Node *) call;

	fn_rte = makeNode(RangeTblEntry);
	fn_rte->rtekind = RTE_FUNCTION;
	fn_rte->functions = list_make1(rtf);
	fn_rte->funcordinality = false;
	fn_rte->alias = src->alias;
	fn_rte->eref = src->eref;
	fn_rte->inh = false;
	fn_rte->inFromCl = true;

	linitial(parse->rtable) = fn_rte;
	parse->jointree->quals = NULL;
	return true;
}

PG_FUNCTION_INFO_V1(byok_view_rows);

/*
 * byok.view_rows(query text, VARIADIC params "any") -> SETOF record
 *
 * Runs 'query' (the SELECT of a view's rows that byok_planner made), with
 * $1, $2, ... the parameters that follow it, as the calling user, and returns its
 * rows, which must have the column types the call expects.  It runs
 * nothing the caller could not run: SECURITY INVOKER.
 */
Datum
byok_view_rows(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *query;
	Datum	   *elems;
	int			nparams = PG_NARGS() - 1;
	Oid		   *types;
	char	   *nulls;
	TupleDesc	want;
	TupleDesc	got;
	Datum	   *values;
	bool	   *isnull;
	int			nest;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("byok.view_rows needs a query")));
	query = text_to_cstring(PG_GETARG_TEXT_PP(0));
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	want = rsinfo->setDesc;
	types = palloc(sizeof(Oid) * Max(nparams, 1));
	elems = palloc(sizeof(Datum) * Max(nparams, 1));
	nulls = palloc(nparams + 1);
	for (int i = 0; i < nparams; i++)
	{
		types[i] = get_fn_expr_argtype(fcinfo->flinfo, i + 1);
		if (!OidIsValid(types[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("byok.view_rows: the type of parameter %d is not known", i + 1)));
		elems[i] = PG_GETARG_DATUM(i + 1);
		nulls[i] = PG_ARGISNULL(i + 1) ? 'n' : ' ';
	}
	nulls[nparams] = '\0';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/*
	 * Read-only: the statement's snapshot, and nothing but reads; names
	 * resolved as when the query was written (search_path = pg_catalog).
	 */
	nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_execute_with_args(query, nparams, types, elems, nulls, true, 0) != SPI_OK_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("byok.view_rows runs a SELECT only")));
	AtEOXact_GUC(true, nest);
	got = SPI_tuptable->tupdesc;
	if (got->natts != want->natts)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("byok.view_rows: the query returns %d columns, the call expects %d",
						got->natts, want->natts)));
	for (int c = 0; c < want->natts; c++)
		if (TupleDescAttr(got, c)->atttypid != TupleDescAttr(want, c)->atttypid)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("byok.view_rows: column %d of the query is not of the type the call expects", c + 1)));
	values = palloc(sizeof(Datum) * Max(want->natts, 1));
	isnull = palloc(sizeof(bool) * Max(want->natts, 1));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		heap_deform_tuple(SPI_tuptable->vals[r], got, values, isnull);
		tuplestore_putvalues(rsinfo->setResult, want, values, isnull);
	}
	SPI_finish();
	return (Datum) 0;
}

static PlannedStmt *
byok_planner(Query *parse, const char *query_string, int cursor_options, ParamListInfo bound_params)
{
	(void) vd_rewrite(parse);
	if (prev_planner_hook)
		return prev_planner_hook(parse, query_string, cursor_options, bound_params);
	return standard_planner(parse, query_string, cursor_options, bound_params);
}

/* From the shared-memory start-up hook: after every library's _PG_init. */
void
byok_viewdml_install(void)
{
	if (byok_planner_installed)
		return;
	prev_planner_hook = planner_hook;
	planner_hook = byok_planner;
	byok_planner_installed = true;
}
