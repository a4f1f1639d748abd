-- extension/30_tenants.sql — the tenant lifecycle: onboarding
-- (byok_create_tenant, byok_validate_tenant), rotation of data and tenant
-- keys, revocation and reinstatement, rewrapping under another CMK,
-- destruction, flushing the key cache, and declaring scopes.  None is
-- executable by PUBLIC; 70_roles.sql grants them to byok_admin.

-- Administration: not executable by PUBLIC; a DBA grants what it wants.
CREATE FUNCTION byok_create_tenant(tenant text, provider text, key_ref text)
RETURNS void
AS 'MODULE_PATHNAME', 'byok_create_tenant'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_create_tenant(text, text, text) FROM PUBLIC;

CREATE FUNCTION byok_validate_tenant(tenant text,
    OUT "check" text, OUT ok boolean, OUT detail text, OUT latency_ms float8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'byok_validate_tenant'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_validate_tenant(text) FROM PUBLIC;

CREATE FUNCTION byok_rotate_data_key(tenant text, scope text DEFAULT 'default')
RETURNS integer
AS 'MODULE_PATHNAME', 'byok_rotate_data_key'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_rotate_data_key(text, text) FROM PUBLIC;

CREATE FUNCTION byok_revoke_tenant(tenant text)
RETURNS void
AS 'MODULE_PATHNAME', 'byok_revoke_tenant'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_revoke_tenant(text) FROM PUBLIC;

CREATE FUNCTION byok_reinstate_tenant(tenant text)
RETURNS void
AS 'MODULE_PATHNAME', 'byok_reinstate_tenant'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_reinstate_tenant(text) FROM PUBLIC;

CREATE FUNCTION byok_rotate_tenant_key(tenant text)
RETURNS integer
AS 'MODULE_PATHNAME', 'byok_rotate_tenant_key'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_rotate_tenant_key(text) FROM PUBLIC;

CREATE FUNCTION byok_rewrap_tenant(tenant text, provider text, key_ref text)
RETURNS void
AS 'MODULE_PATHNAME', 'byok_rewrap_tenant'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_rewrap_tenant(text, text, text) FROM PUBLIC;

CREATE FUNCTION byok_destroy_tenant(tenant text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'byok_destroy_tenant'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_destroy_tenant(text) FROM PUBLIC;

CREATE FUNCTION byok_cache_flush(tenant text DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'byok_cache_flush'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_cache_flush(text) FROM PUBLIC;

-- Declare a scope data keys may be made for (byok.scopes); 'default'
-- always may.  Logged in byok.key_events.
CREATE FUNCTION byok_declare_scope(scope text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF scope IS NULL OR pg_catalog.octet_length(scope) OPERATOR(pg_catalog.<) 1
       OR pg_catalog.octet_length(scope) OPERATOR(pg_catalog.>) 255 OR scope OPERATOR(pg_catalog.~) '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid scope' USING ERRCODE = '22023',
            DETAIL = 'A scope is 1 to 255 bytes without control characters.';
    END IF;
    IF scope OPERATOR(pg_catalog.=) 'default' THEN
        RETURN;
    END IF;
    INSERT INTO byok.scopes (scope, declared_by) VALUES (byok_declare_scope.scope, byok.caller_role())
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO byok.key_events (event, scope, actor) VALUES ('scope_declared', byok_declare_scope.scope, byok.caller_role());
    END IF;
END $$;
REVOKE ALL ON FUNCTION byok_declare_scope(text) FROM PUBLIC;

-- A Citus cluster: run once on the coordinator, after CREATE EXTENSION byok
-- and citus_set_coordinator_host.  The catalog tables every node reads
-- become Citus reference tables: one copy on every node (nodes added later
-- get theirs from Citus), written on the coordinator only, in Citus's
-- distributed transaction.  byok's statement triggers on them are its own
-- (citus.enable_unsafe_triggers for this call only), and the foreign keys
-- between them are converted together (citus.enable_local_reference_table_
-- foreign_keys off for this call only, so Citus does not turn the tables
-- that reference byok.tenants into local ones first).  byok.key_events
-- stays a table of each node: each node's poller writes what it saw there.
-- Superuser only.  Idempotent.
CREATE FUNCTION byok_citus_setup() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t text;
    made text[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'extension "citus" is not installed in this database' USING ERRCODE = 'YK015';
    END IF;
    IF (SELECT l.groupid FROM pg_catalog.pg_dist_local_group l) OPERATOR(pg_catalog.<>) 0 THEN
        RAISE EXCEPTION 'byok_citus_setup runs on the Citus coordinator' USING ERRCODE = 'YK015';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node WHERE groupid OPERATOR(pg_catalog.=) 0) THEN
        RAISE EXCEPTION 'the coordinator is not in Citus''s metadata'
            USING ERRCODE = 'YK015',
                  HINT = 'Run SELECT citus_set_coordinator_host(host, port) first: byok reads its catalog from each node''s own copy.';
    END IF;
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    PERFORM pg_catalog.set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
    FOREACH t IN ARRAY ARRAY['tenants', 'tenant_keys', 'data_keys', 'scopes', 'protected_columns'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                       WHERE logicalrelid OPERATOR(pg_catalog.=) pg_catalog.format('byok.%I', t)::pg_catalog.regclass) THEN
            PERFORM pg_catalog.create_reference_table(pg_catalog.format('byok.%I', t)::pg_catalog.regclass);
            made := made OPERATOR(pg_catalog.||) t;
        END IF;
    END LOOP;
    -- the rows now live in the copies; none may linger in the shells (a
    -- destroyed tenant's wrapped keys would outlive its destruction there);
    -- referencing tables first
    FOREACH t IN ARRAY ARRAY['data_keys', 'tenant_keys', 'scopes', 'protected_columns', 'tenants'] LOOP
        IF t OPERATOR(pg_catalog.=) ANY (made) THEN
            PERFORM pg_catalog.truncate_local_data_after_distributing_table(
                pg_catalog.format('byok.%I', t)::pg_catalog.regclass);
        END IF;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok_citus_setup() FROM PUBLIC;
