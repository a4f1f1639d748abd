/*-------------------------------------------------------------------------
 *
 * catalog/xact.c
 *		What the running transaction changed in the catalog, applied to
 *		shared memory when it commits.
 *
 * The transaction state (declared in catalog_internal.h): tenant state
 * changes waiting for commit (ks_pending), the DEKs this transaction made
 * (ks_created), whether the shared catalog epoch must move (ks_bump_epoch)
 * or this database's cached keys be wiped (ks_flush_at_commit); a destroy's
 * destruction-ledger lines travel with its pending change.  byok.c's
 * transaction callbacks call in: byok_keystore_pre_commit() writes the
 * ledger (an error aborts the transaction) and the lockouts' WAL records,
 * byok_keystore_xact_end() applies the rest on commit (and writes the
 * committed changes' WAL records after the commit record) and forgets it
 * all on commit and abort alike, and byok_keystore_subxact_abort() drops
 * what an aborted subtransaction queued, its released children's included.
 *
 * WAL for the standbys (cache/wal.c).  A lockout (revoke, destroy) is
 * written before the commit record, in the same flush, so no standby can
 * replay the commit without it; if the transaction then fails to commit,
 * a standby stays locked out (fail closed) until the next change of that
 * tenant.  A destroy is written there as a revoke.  Every
 * committed change is written again after the commit record (final:
 * destroyed for good, reinstated, rekeyed, flushed, DEK epoch), so
 * nothing that did not commit is ever applied as final or lets a tenant
 * in.
 *
 * Transactions.  Tenant state changes (revoke, reinstate) take effect in
 * shared memory when their transaction commits (XACT_EVENT_COMMIT), so an
 * aborted revoke changes nothing.  DEKs created by the running transaction
 * stay out of the shared cache until it commits, so an aborted creation
 * leaves no key behind.
 *
 * Locking.  The state is backend-local, in TopTransactionContext; no lock
 * guards it.  Applying it calls the shared cache, which takes its own
 * LWLock.
 *
 * Key lifetime.  Nothing here holds key material: DEK ids, tenant ids and
 * fingerprints of wrapped keys only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/memutils.h"

#include "cache/wal.h"
#include "catalog/catalog_internal.h"
#include "catalog/ledger.h"

/* the running transaction's changes; see catalog_internal.h */
List	   *ks_pending = NIL;	/* KsPending, in TopTransactionContext */
int64	   *ks_created = NULL;	/* DEK ids created by this transaction */
int			ks_ncreated = 0;
int			ks_created_cap = 0;
bool		ks_bump_epoch = false;
bool		ks_flush_at_commit = false;	/* keys deleted: wipe this database's cache */

/* At commit, wipe the tenant's cached keys and forget its CMK (see callers). */
void
ks_pending_rekeyed(KsTenant *t)
{
	KsPending  *p;
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

	p = palloc(sizeof(KsPending));
	p->slot = t->slot;
	p->tenant_id = t->tenant_id;
	p->catalog = byok_keystore_catalog();
	strlcpy(p->name, t->name, sizeof(p->name));
	p->state = BYOK_TENANT_ACTIVE;
	p->rekeyed = true;
	p->ledger = NULL;
	p->subid = GetCurrentSubTransactionId();
	ks_pending = lappend(ks_pending, p);
	MemoryContextSwitchTo(old);
}

/* ---- transaction hooks ---- */

/*
 * Just before commit: write what must be durable outside the database
 * first (the destruction ledger).  An error here aborts the transaction.
 */
void
byok_keystore_pre_commit(void)
{
	ListCell   *lc;
	StringInfoData lines;

	initStringInfo(&lines);
	foreach(lc, ks_pending)
	{
		KsPending  *p = lfirst(lc);

		if (p->ledger)
			appendStringInfoString(&lines, p->ledger);
	}
	if (lines.len > 0)
		byok_ledger_append(lines.data);
	pfree(lines.data);
	/*
	 * Lockouts, for the standbys: in the commit's own WAL flush (see above).
	 * A destroy travels as a revoke until its commit: an administrator's
	 * lockout that nothing lifts, made final by the record after the commit.
	 */
	foreach(lc, ks_pending)
	{
		KsPending  *p = lfirst(lc);

		if (!p->rekeyed && (p->state == BYOK_TENANT_REVOKED || p->state == BYOK_TENANT_CMK_DESTROYED))
			byok_wal_tenant_state(MyDatabaseId, p->catalog, p->tenant_id, p->name,
								  BYOK_TENANT_REVOKED, false);
	}
}

/* The committed changes, for the standbys: after the commit record, final. */
static void
ks_wal_committed(void)
{
	ListCell   *lc;
	bool		any = false;

	foreach(lc, ks_pending)
	{
		KsPending  *p = lfirst(lc);

		if (p->rekeyed)
			byok_wal_tenant_rekeyed(MyDatabaseId, p->catalog, p->tenant_id, p->name);
		else
			byok_wal_tenant_state(MyDatabaseId, p->catalog, p->tenant_id, p->name, p->state, true);
		any = true;
	}
	/* (a whole database: no catalog lookup, the extension may be dropping) */
	if (ks_flush_at_commit)
		byok_wal_flush(MyDatabaseId, InvalidOid, 0, true);
	if (ks_bump_epoch || ks_flush_at_commit)
		byok_wal_epoch();
	if (any || ks_flush_at_commit || ks_bump_epoch)
		byok_wal_sync();
}

/*
 * End of the top-level transaction: on commit, apply pending tenant state
 * changes to shared memory and bump the catalog epoch if DEKs changed.
 * Never raises an error.
 */
void
byok_keystore_xact_end(bool commit)
{
	ListCell   *lc;

	if (commit)
	{
		ks_wal_committed();
		foreach(lc, ks_pending)
		{
			KsPending  *p = lfirst(lc);

			if (p->rekeyed)
				byok_tenant_rekeyed(p->slot, p->tenant_id);
			else
				byok_tenant_set_state(p->slot, p->tenant_id, p->state);
		}
		if (ks_flush_at_commit)
			byok_cache_flush_database(MyDatabaseId);
		if (ks_bump_epoch || ks_flush_at_commit)
			byok_catalog_epoch_bump();
	}
	ks_pending = NIL;
	ks_created = NULL;
	ks_ncreated = ks_created_cap = 0;
	ks_bump_epoch = false;
	ks_flush_at_commit = false;
	byok_keystore_forget_lockouts();
	byok_cmk_reports_forget();
}

/*
 * Catalog rows were deleted outside byok's functions: at commit, wipe every
 * cached key of this database and make every backend look up its current
 * DEKs again.
 */
void
byok_keystore_catalog_changed(void)
{
	ks_flush_at_commit = true;
}

/*
 * A subtransaction aborted: drop the state changes it made, and those of
 * its children released into it (subtransaction ids only grow within a
 * transaction, so theirs are larger).
 */
void
byok_keystore_subxact_abort(SubTransactionId subid)
{
	ListCell   *lc;

	foreach(lc, ks_pending)
	{
		KsPending  *p = lfirst(lc);

		if (p->subid >= subid)
			ks_pending = foreach_delete_current(ks_pending, lc);
	}
}

/*
 * PREPARE TRANSACTION: a commit that may come from another session
 * cannot apply what this one queued, so what is only a wipe (this
 * database's cached keys, the DEK epoch) is applied now, early, which is
 * harmless; tenant changes are refused by the caller.
 */
void
byok_keystore_pre_prepare(void)
{
	if (ks_flush_at_commit)
	{
		byok_cache_flush_database(MyDatabaseId);
		byok_wal_flush(MyDatabaseId, InvalidOid, 0, false);
	}
	if (ks_bump_epoch || ks_flush_at_commit)
	{
		byok_catalog_epoch_bump();
		byok_wal_epoch();
		byok_wal_sync();
	}
	ks_flush_at_commit = ks_bump_epoch = false;
}

bool
byok_keystore_has_pending(void)
{
	return ks_pending != NIL;
}
