/*-------------------------------------------------------------------------
 *
 * catalog/extdrop.c
 *		DROP EXTENSION byok: refused while a tenant still holds keys; once
 *		it goes ahead, every cached key of the database is wiped at commit.
 *
 * Dropping the extension drops its catalog: every wrapped key, the audit
 * log, the destruction certificates.  A plain DROP EXTENSION (or a DROP
 * SCHEMA ... CASCADE that takes the extension with it) in a database with
 * live tenants would destroy their data with no certificate, so it is
 * refused: the DBA destroys the tenants first (byok_destroy_tenant, which
 * certifies each destruction) or keeps a dump of schema byok.
 *
 * Mechanism: an object_access_hook.  PostgreSQL calls it (OAT_DROP) for
 * each object just before deleting it, members of an extension before the
 * extension itself, so when byok.tenant_keys or byok.data_keys is about to
 * go the table is still readable: if it holds a wrapped key, the drop is
 * refused.  When
 * the extension object itself is dropped, this database's cached keys are
 * wiped when the transaction commits (catalog/xact.c's flush at commit); an
 * aborted drop changes nothing.
 *
 * Locking.  None of its own; the check reads the catalog with the latest
 * snapshot, so keys committed while DROP waited for its locks count too.
 * Key lifetime.  It reads whether wrapped keys exist, never a key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_authid_d.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "catalog/asowner.h"
#include "catalog/extdrop.h"
#include "catalog/keystore.h"

static object_access_hook_type prev_object_access_hook = NULL;

/* Does byok.<table> (tenant_keys or data_keys) still hold a wrapped key? */
static bool
ed_keys_remain(const char *table)
{
	char		query[128];
	ByokUserSwitch sw;
	bool		remain = false;
	int			rc;

	/* the latest snapshot: keys committed while DROP waited for its locks count too */
	PushActiveSnapshot(GetLatestSnapshot());
	byok_switch_user(BOOTSTRAP_SUPERUSERID, SECURITY_LOCAL_USERID_CHANGE, &sw);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	snprintf(query, sizeof(query), "SELECT EXISTS (SELECT FROM byok.%s WHERE wrapped_key IS NOT NULL)", table);
	rc = SPI_execute(query, true, 1);
	if (rc == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		remain = !isnull && DatumGetBool(d);
	}
	SPI_finish();
	byok_switch_back(&sw);
	PopActiveSnapshot();
	return remain;
}

static void
ed_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access != OAT_DROP)
		return;

	if (classId == RelationRelationId && subId == 0)
	{
		Oid			nsp = get_namespace_oid("byok", true);
		char	   *name;

		/* each key table is checked just before it goes, whichever goes first */
		if (OidIsValid(nsp) && get_rel_namespace(objectId) == nsp &&
			get_rel_relkind(objectId) == RELKIND_RELATION &&
			(name = get_rel_name(objectId)) != NULL &&
			(strcmp(name, "tenant_keys") == 0 || strcmp(name, "data_keys") == 0) &&
			OidIsValid(get_extension_oid("byok", true)) &&
			ed_keys_remain(name))
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("cannot drop extension byok while tenants still hold keys"),
					 errdetail("Dropping it would delete every wrapped key and the audit log of this database, with no destruction certificate."),
					 errhint("Destroy the tenants first with byok_destroy_tenant(), or keep a dump of schema byok (pg_dump -n byok) and delete its keys by hand.")));
	}
	else if (classId == ExtensionRelationId && objectId == get_extension_oid("byok", true))
		byok_keystore_catalog_changed();	/* wipe this database's cached keys at commit */
}

void
byok_extdrop_install(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = ed_object_access;
}
