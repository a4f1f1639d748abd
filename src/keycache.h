/*-------------------------------------------------------------------------
 *
 * keycache.h
 *		Shared-memory tenant slots and the cache of unwrapped keys.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KEYCACHE_H
#define BYOK_KEYCACHE_H

#include "datatype/timestamp.h"
#include "port/atomics.h"

#include "byok.h"

typedef enum ByokCacheKind
{
	BYOK_CACHE_TK = 1,			/* tenant key: id = tenant id, version = TK version */
	BYOK_CACHE_DEK = 2			/* data key: id = DEK id */
} ByokCacheKind;

typedef struct ByokCacheKey
{
	Oid			dboid;			/* database the key belongs to */
	int32		kind;			/* ByokCacheKind */
	int64		id;				/* tenant id or DEK id */
	int32		version;		/* TK version; 0 for DEKs */
	Oid			catalog;		/* oid of schema byok: tells installs apart */
} ByokCacheKey;

/*
 * One tenant as shared memory knows it.  'state' and 'generation' are read
 * without a lock on the hot path; they change only under the byok lock in
 * exclusive mode, and every change of state (and every purge) bumps the
 * generation, so a backend holding (slot, generation) knows in one atomic
 * read whether what it holds is still good.
 */
typedef struct ByokTenantSlot
{
	Oid			dboid;			/* database of the tenant */
	Oid			catalog;		/* oid of schema byok in that database */
	int32		tenant_id;		/* byok.tenants.tenant_id */
	bool		in_use;			/* slot holds a tenant */
	char		name[NAMEDATALEN];	/* tenant name */
	pg_atomic_uint32 state;		/* ByokTenantState */
	pg_atomic_uint64 generation;	/* bumped on every state change and purge */
	int32		nentries;		/* cache entries of this tenant (under lock) */
	TimestampTz state_changed_at;	/* last state change */
	TimestampTz last_used;		/* for choosing a slot to reuse */
} ByokTenantSlot;

extern void byok_cache_shmem_request(void);
extern void byok_cache_shmem_startup(void);
extern bool byok_cache_ready(void);

extern ByokTenantSlot *byok_tenant_slot(int slot);
extern int	byok_tenant_attach(Oid dboid, Oid catalog, int32 tenant_id, const char *name,
							   ByokTenantState initial, uint64 *generation);
extern int	byok_tenant_find(Oid dboid, Oid catalog, int32 tenant_id);
extern void byok_tenant_reset(Oid dboid, Oid catalog, int32 tenant_id, const char *name);
extern int	byok_tenant_set_state(int slot, int32 tenant_id, ByokTenantState state);
extern int	byok_tenant_purge(int slot);

extern bool byok_cache_get(const ByokCacheKey *key, uint8 *out, int *slot, uint64 *generation);
extern bool byok_cache_put(const ByokCacheKey *key, int slot, uint64 generation, const uint8 *bytes);
extern int	byok_cache_flush_database(Oid dboid);

extern uint64 byok_catalog_epoch(void);
extern void byok_catalog_epoch_bump(void);

static inline void
byok_cache_key_init(ByokCacheKey *key, Oid dboid, Oid catalog, ByokCacheKind kind,
					int64 id, int32 version)
{
	memset(key, 0, sizeof(*key));
	key->dboid = dboid;
	key->catalog = catalog;
	key->kind = kind;
	key->id = id;
	key->version = version;
}

#endif							/* BYOK_KEYCACHE_H */
