/*-------------------------------------------------------------------------
 *
 * cache/wal.c
 *		byok's WAL records: what an administrator changed, replayed into
 *		every standby's shared memory.
 *
 * A hot standby has the primary's catalog but its own shared memory: a
 * revoke, destroy, reinstatement, key rotation or cache flush committed on
 * the primary would otherwise never reach the standby's tenant slots and
 * cached keys (a slot copies the catalog's state only when it is made).
 * So every such change is also written to the WAL as a record of byok's
 * own resource manager (RegisterCustomRmgr, PostgreSQL 15), and the
 * standby's startup process applies it to the standby's shared memory the
 * moment it replays it: the standby honours the change at replay speed,
 * with no poll, including sessions that already hold keys (the tenant's
 * generation moves, so their next call checks again).
 *
 * When (catalog/xact.c).  A lockout (revoke, destroy) is written just
 * before the transaction commits (XACT_EVENT_PRE_COMMIT), in the same WAL
 * flush as the commit record, so a standby cannot replay the commit
 * without it; a destroy is written then as a revoke.
 * Every committed change (lockouts again, reinstatements, rekeys, flushes,
 * the DEK epoch) is written after the commit record and flushed: final, so
 * a transaction that fails after PRE_COMMIT (a serialization failure, a
 * crash) never lets a tenant in or destroys it for good on a standby; at
 * worst the standby stays locked out until that tenant's next change.  A
 * cache flush by byok_cache_flush, which is not transactional, is written
 * when it happens.  Crash recovery replays the records too: harmless, the
 * catalog says the same.
 *
 * Replay.  A record names the tenant by database, catalog (schema byok)
 * and tenant id, which a physical standby shares with its primary.  The
 * tenant's slot is made if it has none, so a session that starts on the
 * standby between the record and the commit record cannot make one from
 * the catalog's old state.  Replay never raises an error (a full slot
 * table is a WARNING): the startup process must go on.  No audit row is
 * written on a standby; the server log says what was replayed.
 *
 * Consequence for operators: WAL holding byok records can only be replayed
 * by a server that preloads byok (a standby, crash recovery, a PITR
 * restore), like every custom resource manager's; see README.
 *
 * Locking: replay and logging take the cache's own lock through slots.c
 * and keys.c.
 * Key lifetime: records carry ids and states only, never key material.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "miscadmin.h"

#include "cache/cache.h"
#include "cache/wal.h"

/* record kinds (the high bits of xl_info) */
#define BYOK_XLOG_STATE			0x10	/* a tenant's new state */
#define BYOK_XLOG_REKEYED		0x20	/* a tenant's keys changed: wipe them */
#define BYOK_XLOG_FLUSH_TENANT	0x30	/* byok_cache_flush(tenant) */
#define BYOK_XLOG_FLUSH_DB		0x40	/* a database's cached keys wiped */
#define BYOK_XLOG_EPOCH			0x50	/* DEKs changed: look them up again */

typedef struct xl_byok_change
{
	Oid			dboid;
	Oid			catalog;
	int32		tenant_id;
	int32		state;			/* ByokTenantState, for BYOK_XLOG_STATE */
	int32		final;			/* 1: written after the commit record */
	char		name[NAMEDATALEN];	/* the tenant's name, for a slot made at replay */
} xl_byok_change;

static XLogRecPtr bw_last = InvalidXLogRecPtr;	/* the last record this process wrote */

static void
bw_insert(uint8 info, Oid dboid, Oid catalog, int32 tenant_id, const char *name,
		  ByokTenantState state, bool final, bool flush)
{
	xl_byok_change x;

	if (RecoveryInProgress() || !XLogInsertAllowed())
		return;
	memset(&x, 0, sizeof(x));	/* no padding byte of ours reaches the WAL unset */
	x.dboid = dboid;
	x.catalog = catalog;
	x.tenant_id = tenant_id;
	x.state = state;
	x.final = final ? 1 : 0;
	if (name)
		strlcpy(x.name, name, sizeof(x.name));
	XLogBeginInsert();
	XLogRegisterData((char *) &x, sizeof(x));
	bw_last = XLogInsert(BYOK_RMGR_ID, info);
	/* outside a commit, nothing else flushes it to the standbys soon */
	if (flush)
		byok_wal_sync();
}

/* Flush what this process wrote, so the standbys get it now. */
void
byok_wal_sync(void)
{
	if (!XLogRecPtrIsInvalid(bw_last))
		XLogFlush(bw_last);
	bw_last = InvalidXLogRecPtr;
}

/*
 * A tenant's state: before the commit record (a lockout, 'final' false) or
 * after it (final).
 */
void
byok_wal_tenant_state(Oid dboid, Oid catalog, int32 tenant_id, const char *name,
					  ByokTenantState state, bool final)
{
	bw_insert(BYOK_XLOG_STATE, dboid, catalog, tenant_id, name, state, final, false);
}

/* A tenant's keys changed (rotation, rewrap): written after the commit record. */
void
byok_wal_tenant_rekeyed(Oid dboid, Oid catalog, int32 tenant_id, const char *name)
{
	bw_insert(BYOK_XLOG_REKEYED, dboid, catalog, tenant_id, name, BYOK_TENANT_ACTIVE, true, false);
}

/* Cached keys were wiped: one tenant's (tenant_id > 0) or a whole database's. */
void
byok_wal_flush(Oid dboid, Oid catalog, int32 tenant_id, bool at_commit)
{
	bw_insert(tenant_id > 0 ? BYOK_XLOG_FLUSH_TENANT : BYOK_XLOG_FLUSH_DB,
			  dboid, catalog, tenant_id, NULL, BYOK_TENANT_ACTIVE, true, !at_commit);
}

/* DEKs changed: written after the commit record. */
void
byok_wal_epoch(void)
{
	bw_insert(BYOK_XLOG_EPOCH, InvalidOid, InvalidOid, 0, NULL, BYOK_TENANT_ACTIVE, true, false);
}

/* ---- replay ---- */

static void
bw_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	xl_byok_change x;

	if (XLogRecGetDataLen(record) != sizeof(x))
	{
		ereport(WARNING,
				(errmsg("byok: a WAL record of %u bytes, not %zu, is ignored",
						XLogRecGetDataLen(record), sizeof(x))));
		return;
	}
	memcpy(&x, XLogRecGetData(record), sizeof(x));
	x.name[NAMEDATALEN - 1] = '\0';
	if (x.state < 0 || x.state >= BYOK_TENANT_STATE_COUNT)
		x.state = BYOK_TENANT_REVOKED;	/* a state we do not know: locked out */
	switch (info)
	{
		case BYOK_XLOG_STATE:
			byok_tenant_replay(x.dboid, x.catalog, x.tenant_id, x.name, x.state, "replayed from the primary");
			break;
		case BYOK_XLOG_REKEYED:
			{
				/* a tenant with no slot has no keys to wipe */
				int			slot = byok_tenant_find(x.dboid, x.catalog, x.tenant_id);

				if (slot >= 0)
					byok_tenant_rekeyed(slot, x.tenant_id);
			}
			break;
		case BYOK_XLOG_FLUSH_TENANT:
			{
				int			slot = byok_tenant_find(x.dboid, x.catalog, x.tenant_id);

				if (slot >= 0)
					byok_tenant_purge(slot);
			}
			break;
		case BYOK_XLOG_FLUSH_DB:
			byok_cache_flush_database(x.dboid);
			break;
		case BYOK_XLOG_EPOCH:
			byok_catalog_epoch_bump();
			break;
		default:
			ereport(WARNING,
					(errmsg("byok: unknown WAL record kind 0x%02X is ignored", info)));
	}
}

static const char *
bw_identify(uint8 info)
{
	switch (info & ~XLR_INFO_MASK)
	{
		case BYOK_XLOG_STATE:
			return "TENANT_STATE";
		case BYOK_XLOG_REKEYED:
			return "TENANT_REKEYED";
		case BYOK_XLOG_FLUSH_TENANT:
			return "FLUSH_TENANT";
		case BYOK_XLOG_FLUSH_DB:
			return "FLUSH_DATABASE";
		case BYOK_XLOG_EPOCH:
			return "DEK_EPOCH";
	}
	return NULL;
}

static void
bw_desc(StringInfo buf, XLogReaderState *record)
{
	xl_byok_change x;

	if (XLogRecGetDataLen(record) != sizeof(x))
		return;
	memcpy(&x, XLogRecGetData(record), sizeof(x));
	x.name[NAMEDATALEN - 1] = '\0';
	switch (XLogRecGetInfo(record) & ~XLR_INFO_MASK)
	{
		case BYOK_XLOG_STATE:
			appendStringInfo(buf, "db %u catalog %u tenant %d \"%s\" state %s%s",
							 x.dboid, x.catalog, x.tenant_id, x.name,
							 byok_tenant_state_name(x.state), x.final ? "" : " (before commit)");
			break;
		case BYOK_XLOG_REKEYED:
		case BYOK_XLOG_FLUSH_TENANT:
			appendStringInfo(buf, "db %u catalog %u tenant %d", x.dboid, x.catalog, x.tenant_id);
			break;
		case BYOK_XLOG_FLUSH_DB:
			appendStringInfo(buf, "db %u", x.dboid);
			break;
	}
}

static RmgrData bw_rmgr = {
	.rm_name = "byok",
	.rm_redo = bw_redo,
	.rm_desc = bw_desc,
	.rm_identify = bw_identify,
};

/* From _PG_init, while shared_preload_libraries is processed. */
void
byok_wal_register(void)
{
	RegisterCustomRmgr(BYOK_RMGR_ID, &bw_rmgr);
}
