/*-------------------------------------------------------------------------
 *
 * catalog/catalog_internal.h
 *		What the catalog files (access.c, data_keys.c, tenants.c, xact.c)
 *		share: the tenant row, the transaction state and the helpers used
 *		across files.  Nothing outside src/catalog/ includes it.
 *
 * Calls between these files: data_keys.c, tenants.c and xact.c call
 * access.c; tenants.c calls data_keys.c (ks_attach, ks_tenant_key,
 * ks_insert_dek) and xact.c (ks_pending_rekeyed and the state below).
 * Nothing calls back into tenants.c, and access.c calls no other file.
 *
 * Locking.  The transaction state below is backend-local (no lock); the
 * row locks on byok.tenants are the KS_LOCK_* modes of ks_find_tenant.
 *
 * Key lifetime.  Nothing declared here holds an unwrapped key: KsTenant
 * carries the TK wrapped by the CMK, the state holds ids and fingerprints.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_CATALOG_INTERNAL_H
#define BYOK_CATALOG_INTERNAL_H

#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

#include "catalog/asowner.h"
#include "catalog/keystore.h"
#include "crypto/keyrow.h"

/* a tenant and its current TK, as the catalog records them */
typedef struct KsTenant
{
	int32		tenant_id;
	char		name[NAMEDATALEN];
	ByokTenantState state;		/* catalog state mapped to a slot state */
	int32		tk_version;
	char		provider[32];
	char		key_ref[BYOK_MAX_KEY_REF + 1];
	uint8		wrapped[BYOK_MAX_WRAPPED];	/* TK wrapped by the CMK */
	int			wrapped_len;
	int			slot;			/* shared slot, once attached */
	uint64		generation;		/* slot generation at attach */
} KsTenant;

/* a state change waiting for commit */
typedef struct KsPending
{
	int			slot;
	int32		tenant_id;
	Oid			catalog;		/* schema byok, for the WAL record */
	char		name[NAMEDATALEN];
	ByokTenantState state;
	bool		rekeyed;		/* no state change: wipe its keys, forget its CMK */
	char	   *ledger;			/* destroy: its destruction-ledger lines, or NULL */
	SubTransactionId subid;
} KsPending;

typedef ByokUserSwitch KsAccess;

/* the columns ks_read_tenant reads, and the join they come from */
#define TENANT_COLUMNS \
	"t.tenant_id, t.name, t.state, tk.version, tk.provider, tk.key_ref, tk.wrapped_key "
#define TENANT_JOIN \
	"byok.tenants t JOIN byok.tenant_keys tk ON tk.tenant_id OPERATOR(pg_catalog.=) t.tenant_id " \
	"AND tk.version OPERATOR(pg_catalog.=) t.tk_version "

/*
 * Look a tenant up by name (inside ks_enter); raise if unknown.  Lock modes:
 * KS_LOCK_NONE; KS_LOCK_CHANGE (FOR NO KEY UPDATE: DEK rotation, revocation
 * and the like serialise per tenant); KS_LOCK_REKEY (FOR UPDATE: rotating
 * or moving the tenant key also waits for transactions creating a DEK,
 * which hold FOR KEY SHARE, so no DEK is ever wrapped under a tenant key
 * whose wrapped copy is being deleted).
 */
#define KS_LOCK_NONE	0
#define KS_LOCK_CHANGE	1
#define KS_LOCK_REKEY	2

/* the running transaction's catalog changes (xact.c) */
extern List *ks_pending;		/* KsPending, in TopTransactionContext */
extern int64 *ks_created;		/* DEK ids created by this transaction */
extern int	ks_ncreated;
extern int	ks_created_cap;
extern bool ks_bump_epoch;		/* DEKs changed: bump the catalog epoch at commit */
extern bool ks_flush_at_commit;	/* keys deleted: wipe this database's cache */

/* user who called byok, for the audit log (access.c) */
extern Oid	ks_caller;

/* access.c */
extern void ks_enter(KsAccess *acc);
extern void ks_leave(KsAccess *acc);
extern uint64 ks_exec(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types,
					  Datum *values, const char *nulls, bool read_only);
extern uint64 ks_exec_once(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls);
extern Datum ks_get(int row, int col, bool *isnull);
extern void ks_get_text(int row, int col, char *out, int outlen);
extern int	ks_get_bytea(int row, int col, uint8 *out, int outlen);
extern void ks_read_tenant(int row, int col, KsTenant *dst);
extern void ks_find_tenant(const char *tenant, int lock, KsTenant *t);
extern bytea *ks_bytea(const uint8 *data, int len);
extern void ks_event(int32 tenant_id, const char *tenant, const char *event, const char *key_kind,
					 int32 key_version, const char *scope, const char *fingerprint, const char *detail);
extern void ks_raise_destroyed(const char *tenant);
extern void ks_raise_row(ByokRowError e, int64 dek_id, const char *tenant);

/* data_keys.c */
extern void ks_attach(KsTenant *t);
extern void ks_tenant_key(KsTenant *t, uint8 *tk);
extern int64 ks_insert_dek(KsTenant *t, const char *scope, int32 version, const uint8 *tk,
						   bool on_conflict, const char *detail);

/* citus.c */
extern void ks_citus_refresh(void);
extern void ks_citus_keep_plan(SPIPlanPtr *plan);
extern const char *ks_citus_sql(const char *sql);
extern bool ks_citus_worker(void);
extern bool ks_citus_active(void);
extern bool ks_citus_missing(const char *table);
extern int64 ks_citus_rotate_on_coordinator(const char *tenant, const char *scope, int64 dek_id);
extern void ks_citus_converge(KsTenant *t);
extern void ks_citus_flush_workers(const char *tenant);

/* xact.c */
extern void ks_pending_rekeyed(KsTenant *t);

#endif							/* BYOK_CATALOG_INTERNAL_H */
