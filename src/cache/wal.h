/*-------------------------------------------------------------------------
 *
 * cache/wal.h
 *		byok's WAL records: administrators' changes replayed into every
 *		standby's shared memory (see wal.c).
 *
 * Locking: callers hold no LWLock.
 * Key lifetime: no key material here.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_CACHE_WAL_H
#define BYOK_CACHE_WAL_H

#include "byok_defs.h"

/*
 * byok's custom resource manager id (RM_MIN_CUSTOM_ID..RM_MAX_CUSTOM_ID);
 * every server that replays byok's WAL must preload byok.
 */
#define BYOK_RMGR_ID	199

extern void byok_wal_register(void);
extern void byok_wal_tenant_state(Oid dboid, Oid catalog, int32 tenant_id, const char *name,
								  ByokTenantState state, bool final);
extern void byok_wal_sync(void);
extern void byok_wal_tenant_rekeyed(Oid dboid, Oid catalog, int32 tenant_id, const char *name);
extern void byok_wal_flush(Oid dboid, Oid catalog, int32 tenant_id, bool at_commit);
extern void byok_wal_epoch(void);

#endif							/* BYOK_CACHE_WAL_H */
