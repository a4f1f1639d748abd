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
