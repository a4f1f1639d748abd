-- extension/70_roles.sql — roles and grants: the roles byok_auditor and
-- byok_admin, and every privilege byok grants them.  The last part: every
-- object it names exists by now.

-- Two roles a DBA can grant instead of superuser (roles are cluster-wide:
-- made once, kept by DROP EXTENSION, reused by a later CREATE EXTENSION).
--   byok_auditor  reads what is encrypted under which key, who did what and
--                 what was destroyed: the catalog without any wrapped key,
--                 the audit log and the live statistics.
--   byok_admin    a byok_auditor that also onboards, rotates, revokes,
--                 reinstates, rewraps, destroys, protects and re-encrypts.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'byok_auditor') THEN
        CREATE ROLE byok_auditor NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'byok_admin') THEN
        CREATE ROLE byok_admin NOLOGIN;
    END IF;
    IF NOT pg_catalog.pg_has_role('byok_admin', 'byok_auditor', 'MEMBER') THEN
        GRANT byok_auditor TO byok_admin;
    END IF;
END $$;

GRANT USAGE ON SCHEMA byok TO byok_auditor;
GRANT SELECT ON byok.tenants, byok.key_events, byok.protected_columns, byok.reencrypt_runs,
    byok.stats, byok.tenant_status, byok.reencrypt_progress, byok.scopes TO byok_auditor;
GRANT SELECT (tenant_id, version, provider, key_ref, fingerprint, created_at)
    ON byok.tenant_keys TO byok_auditor;
GRANT SELECT (dek_id, tenant_id, scope, version, tk_version, encryptions, fingerprint, created_at)
    ON byok.data_keys TO byok_auditor;
GRANT EXECUTE ON FUNCTION byok_stats(), byok_poller_status() TO byok_auditor;

GRANT SELECT ON byok.tenant_keys, byok.data_keys TO byok_admin;
GRANT EXECUTE ON FUNCTION
    byok_create_tenant(text, text, text), byok_validate_tenant(text),
    byok_rotate_data_key(text, text), byok_rotate_tenant_key(text),
    byok_revoke_tenant(text), byok_reinstate_tenant(text),
    byok_rewrap_tenant(text, text, text), byok_destroy_tenant(text),
    byok_cache_flush(text), byok_revocation_drill(text), byok_declare_scope(text),
    byok_retire_data_key(text, text, integer, boolean),
    byok_protect_column(regclass, name, name, text, name, boolean),
    byok_unprotect_column(regclass, name),
    byok.online_begin(regclass, name, name, text, name, boolean),
    byok.online_plan(regclass, name, integer), byok.online_batch(regclass, name, bigint, bigint),
    byok.online_validate(regclass, name), byok.online_finish(regclass, name),
    byok.reencrypt_begin(regclass, name), byok.reencrypt_note(regclass, name, bigint, boolean),
    byok.reencrypt_batch(regclass, name, bigint, bigint)
    TO byok_admin;
GRANT EXECUTE ON PROCEDURE
    byok_protect_column_online(regclass, name, name, text, name, boolean, integer),
    byok_reencrypt(regclass, name, integer)
    TO byok_admin;
