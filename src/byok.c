/*-------------------------------------------------------------------------
 *
 * byok.c
 *		Module start-up: settings (guc.c), shared-memory hooks, providers,
 *		the poller, transaction callbacks.
 *
 * byok must be in shared_preload_libraries: its key cache and tenant slots
 * live in shared memory reserved at postmaster start.  Loaded any other way
 * it installs nothing, and every SQL function fails with
 * ERRCODE_BYOK_NOT_LOADED and a hint (byok_check_loaded).
 *
 * Transaction callbacks close the key-lifetime loop: at the end of every
 * (parallel or top-level) transaction, handles/handles.c frees the expanded keys
 * the transaction used, and the catalog (catalog/xact.c) applies tenant state changes that
 * committed.  Neither ever raises an error there.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"

#include "byok_defs.h"
#include "crypto/envelope.h"
#include "guc.h"
#include "catalog/extdrop.h"
#include "cache/cache.h"
#include "cache/wal.h"
#include "catalog/keystore.h"
#include "providers/kms.h"
#include "handles/handles.h"
#include "worker/worker.h"

PG_MODULE_MAGIC;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

static void
byok_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	byok_cache_shmem_request();
}

static void
byok_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	byok_cache_shmem_startup();
	/* after every library's _PG_init: ahead of Citus's planner either way */
	byok_viewdml_install();
	byok_citus_bind_install();
}

static void byok_xact_event(XactEvent event);

static void
byok_xact_callback(XactEvent event, void *arg)
{
	/* (its list entry must stay while the callbacks run: catalog/citus.c) */
	byok_in_xact_callback = true;
	byok_xact_event(event);
	byok_in_xact_callback = false;
}

static void
byok_xact_event(XactEvent event)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			byok_handle_pre_commit();
			byok_keystore_pre_commit();
			byok_keystore_apply_lockouts();
			byok_cmk_reports_apply();
			break;
		case XACT_EVENT_PRE_PREPARE:
			byok_handle_check_lockouts();
			if (byok_keystore_has_pending())
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that revoked or reinstated a byok tenant")));
			/* wipes this transaction queued for its commit are done now */
			byok_keystore_pre_prepare();
			/* a Citus worker's lockouts, before the coordinator commits */
			byok_keystore_apply_lockouts();
			byok_cmk_reports_apply();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			byok_handle_release();
			byok_keystore_xact_end(true);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			byok_handle_release();
			byok_handle_forget_current();
			byok_keystore_xact_end(false);
			break;
		case XACT_EVENT_PREPARE:
			byok_handle_release();
			byok_keystore_xact_end(false);
			break;
		default:
			break;
	}
}

static void
byok_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* the aborted work may have created a DEK that no longer exists */
		byok_handle_forget_current();
		byok_keystore_subxact_abort(mySubid);
		byok_cmk_reports_subxact_abort(mySubid);
	}
}

void
_PG_init(void)
{
	byok_guc_define();
	if (!process_shared_preload_libraries_in_progress)
		return;
	byok_guc_define_postmaster();

	byok_kms_local_install();
	byok_kms_aws_install();
	byok_kms_vault_install();
	byok_kms_pkcs11_install();
	byok_kms_kmip_install();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = byok_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = byok_shmem_startup;

	byok_worker_register();
	/* standbys replay administrators' changes into their shared memory */
	byok_wal_register();

	RegisterXactCallback(byok_xact_callback, NULL);
	RegisterSubXactCallback(byok_subxact_callback, NULL);
	byok_keystore_xact_callbacks(byok_xact_callback, byok_subxact_callback);
	byok_extdrop_install();
}
