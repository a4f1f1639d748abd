/*-------------------------------------------------------------------------
 *
 * catalog/keystore.h
 *		The catalog of wrapped keys, the key-miss path and tenant lifecycle:
 *		what the rest of byok calls in src/catalog/.
 *
 * src/catalog/ owns every read and write of byok's catalog tables (schema
 * byok); catalog/access.c's header describes the folder, its access rules,
 * its locking and key lifetime.  Functions here that unwrap a key (the
 * miss path, byok_keystore_load_dek) write it to the caller's buffer,
 * which the caller wipes.  The lifecycle functions do not touch this
 * backend's key handles: their SQL wrappers drop them afterwards.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KEYSTORE_H
#define BYOK_KEYSTORE_H

#include "access/xact.h"

#include "byok_defs.h"
#include "cache/cache.h"

/* where an unwrapped DEK came from: enough to validate it on every use */
typedef struct ByokDekRef
{
	int64		dek_id;			/* byok.data_keys.dek_id */
	int32		tenant_id;		/* owner */
	int			slot;			/* shared tenant slot */
	uint64		generation;		/* slot generation the key was fetched under */
	uint64		used;			/* values sealed under it so far, as known */
} ByokDekRef;

extern Oid	byok_keystore_catalog(void);
extern void byok_keystore_load_dek(int64 dek_id, uint8 *key, ByokDekRef *ref);
extern int64 byok_keystore_current_dek(const char *tenant, const char *scope);

extern void byok_keystore_create_tenant(const char *tenant, const char *provider,
										const char *key_ref);
extern int32 byok_keystore_rotate_data_key(const char *tenant, const char *scope);
extern void byok_keystore_set_revoked(const char *tenant, bool revoke);
extern int	byok_keystore_cache_flush(const char *tenant);
extern bool byok_keystore_dek_scope(int64 dek_id, char *tenant, char *scope, int32 *version,
									int64 *current);

/* one row of byok_validate_tenant() */
typedef struct ByokCheck
{
	const char *check;			/* name of the check */
	bool		ok;
	char		detail[300];
	double		ms;				/* how long it took */
} ByokCheck;

#define BYOK_VALIDATE_CHECKS 5
extern void byok_keystore_validate(const char *tenant, ByokCheck *checks);
extern void byok_keystore_drill(const char *tenant, ByokDrillResult *result);
extern char *byok_keystore_destroy(const char *tenant);
extern int32 byok_keystore_rotate_tenant_key(const char *tenant);
extern void byok_keystore_rewrap(const char *tenant, const char *provider, const char *key_ref);
extern void byok_keystore_pre_commit(void);
extern void byok_keystore_save_usage(int64 dek_id, uint64 used);
extern int64 byok_keystore_rotate_for_limit(const char *tenant, const char *scope, int64 dek_id);
extern void byok_keystore_xact_end(bool commit);
extern void byok_keystore_subxact_abort(SubTransactionId subid);
extern bool byok_keystore_has_pending(void);
extern void byok_keystore_pre_prepare(void);
extern void byok_keystore_apply_lockouts(void);
extern bool byok_keystore_citus_counts(void);
extern bool byok_keystore_protected(const char *tschema, const char *tname, const char *col);
extern void byok_keystore_xact_callbacks(XactCallback xact, SubXactCallback subxact);
extern bool byok_in_xact_callback;
extern int64 byok_keystore_citus_reserve(int64 dek_id, uint64 want);
extern void byok_keystore_forget_lockouts(void);

/* citus_pollers.c: other nodes' answers about a CMK (byok.cluster_pollers) */
extern void byok_cmk_reports_apply(void);
extern void byok_cmk_reports_forget(void);
extern void byok_cmk_reports_subxact_abort(SubTransactionId subid);
extern void byok_keystore_catalog_changed(void);

extern void byok_check_tenant_name(const char *tenant);
extern void byok_check_scope(const char *scope, int len);
extern void byok_raise_tenant_state(ByokTenantState state, const char *tenant) pg_attribute_noreturn();

/* viewdml.c: UPDATE and DELETE through a byok view on Citus (planner hook) */
extern void byok_viewdml_install(void);
/* citus_bind.c: a bound session stays bound on the Citus workers (executor hook) */
extern void byok_citus_bind_install(void);

#endif							/* BYOK_KEYSTORE_H */
