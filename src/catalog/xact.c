/*-------------------------------------------------------------------------
 *
 * catalog/xact.c
 *		What the running transaction changed in the catalog, applied to
 *		shared memory when it commits.
 *
 * The transaction state (declared in catalog_internal.h): tenant state
 * changes waiting for commit (ks_pending), the DEKs this transaction made
 * (ks_created), whether the shared catalog epoch must move (ks_bump_epoch)
 * or this database's cached keys be wiped (ks_flush_at_commit), and the
 * destruction ledger's new lines (ks_ledger_lines).  byok.c's transaction
 * callbacks call in: byok_keystore_pre_commit() writes the ledger (an
 * error aborts the transaction), byok_keystore_xact_end() applies the
 * rest on commit and forgets it all on commit and abort alike, and
 * byok_keystore_subxact_abort() drops what an aborted subtransaction
 * queued.
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
StringInfo	ks_ledger_lines = NULL;	/* to append to the ledger at commit */

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

	if (ks_ledger_lines != NULL && ks_ledger_lines->len > 0)
		byok_ledger_append(ks_ledger_lines->data);
	/*
	 * What this commit changes, for the standbys (cache/wal.c): in the same
	 * WAL flush as the commit record, so no standby sees one without the
	 * other.
	 */
	foreach(lc, ks_pending)
	{
		KsPending  *p = lfirst(lc);

		if (p->rekeyed)
			byok_wal_tenant_rekeyed(MyDatabaseId, p->catalog, p->tenant_id, p->name);
		else
			byok_wal_tenant_state(MyDatabaseId, p->catalog, p->tenant_id, p->name, p->state);
	}
	/* (a whole database: no catalog lookup, the extension may be dropping) */
	if (ks_flush_at_commit)
		byok_wal_flush(MyDatabaseId, InvalidOid, 0, true);
	if (ks_bump_epoch || ks_flush_at_commit)
		byok_wal_epoch();
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
	ks_ledger_lines = NULL;
	ks_created = NULL;
	ks_ncreated = ks_created_cap = 0;
	ks_bump_epoch = false;
	ks_flush_at_commit = false;
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

/* A subtransaction aborted: drop the state changes it made. */
void
byok_keystore_subxact_abort(SubTransactionId subid)
{
	ListCell   *lc;

	foreach(lc, ks_pending)
	{
		KsPending  *p = lfirst(lc);

		if (p->subid == subid)
			ks_pending = foreach_delete_current(ks_pending, lc);
	}
}

bool
byok_keystore_has_pending(void)
{
	return ks_pending != NIL;
}
