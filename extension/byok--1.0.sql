/* byok--1.0.sql */

\echo Use "CREATE EXTENSION byok" to load this file. \quit

-- Catalog: everything byok knows about tenants and their keys.  Only wrapped
-- keys are ever stored; the tables are readable by superusers and by roles a
-- DBA grants.  The functions below reach them through the extension itself,
-- so callers of byok_encrypt need no privilege here.
CREATE SCHEMA byok;
REVOKE ALL ON SCHEMA byok FROM PUBLIC;

CREATE TABLE byok.tenants (
    tenant_id   serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    provider    text NOT NULL,
    key_ref     text NOT NULL,
    state       text NOT NULL DEFAULT 'active'
                CHECK (state IN ('active', 'revoked', 'destroyed')),
    tk_version  integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by  name NOT NULL DEFAULT CURRENT_USER,
    state_changed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    validated_at timestamptz,
    latency_baseline_ms float8
);
COMMENT ON TABLE byok.tenants IS 'byok tenants: who they are and which customer master key (CMK) guards their keys';

CREATE TABLE byok.tenant_keys (
    tenant_id   integer NOT NULL REFERENCES byok.tenants ON DELETE CASCADE,
    version     integer NOT NULL,
    provider    text NOT NULL,
    key_ref     text NOT NULL,
    wrapped_key bytea,          -- NULL once destroyed (byok_destroy_tenant)
    fingerprint text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, version)
);
COMMENT ON TABLE byok.tenant_keys IS 'tenant keys (TK), each wrapped by the tenant''s CMK inside its provider';

CREATE TABLE byok.data_keys (
    dek_id      bigserial PRIMARY KEY,
    tenant_id   integer NOT NULL REFERENCES byok.tenants ON DELETE CASCADE,
    scope       text NOT NULL,
    version     integer NOT NULL,
    tk_version  integer NOT NULL,
    wrapped_key bytea,          -- NULL once destroyed (byok_destroy_tenant)
    encryptions bigint NOT NULL DEFAULT 0,  -- values sealed, persisted in steps
    fingerprint text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (tenant_id, scope, version)
);
COMMENT ON TABLE byok.data_keys IS 'data keys (DEK) per tenant, scope and version, each wrapped by the tenant key with AES-256-GCM';

CREATE TABLE byok.key_events (
    event_id    bigserial PRIMARY KEY,
    event_time  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    tenant_id   integer,
    tenant      text,
    event       text NOT NULL,
    key_kind    text,
    key_version integer,
    scope       text,
    fingerprint text,
    detail      text,
    actor       name NOT NULL,
    session_actor name NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE byok.key_events IS 'byok audit log: every tenant and key lifecycle event (never key material)';
CREATE INDEX ON byok.key_events (tenant_id, event_time);

REVOKE ALL ON byok.tenants, byok.tenant_keys, byok.data_keys, byok.key_events FROM PUBLIC;

-- Keys deleted behind byok's back (by hand, by a restore) must not linger in
-- any cache: such a change wipes this database's cached keys at commit.
CREATE FUNCTION byok.catalog_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'byok_catalog_changed'
LANGUAGE C;
REVOKE ALL ON FUNCTION byok.catalog_changed() FROM PUBLIC;
CREATE TRIGGER catalog_changed AFTER DELETE OR TRUNCATE ON byok.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_changed();
CREATE TRIGGER catalog_changed AFTER DELETE OR TRUNCATE ON byok.tenant_keys
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_changed();
CREATE TRIGGER catalog_changed AFTER DELETE OR TRUNCATE ON byok.data_keys
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_changed();
-- a wrapped data key replaced or wiped (rotation, retirement, destruction)
CREATE TRIGGER catalog_rewrapped AFTER UPDATE OF wrapped_key ON byok.data_keys
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_changed();

SELECT pg_catalog.pg_extension_config_dump('byok.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('byok.tenant_keys', '');
SELECT pg_catalog.pg_extension_config_dump('byok.data_keys', '');
SELECT pg_catalog.pg_extension_config_dump('byok.key_events', '');
SELECT pg_catalog.pg_extension_config_dump('byok.tenants_tenant_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('byok.data_keys_dek_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('byok.key_events_event_id_seq', '');

-- Encryption and decryption: callable by every role; the tenant binding
-- (byok.tenant) and the tenant's key state decide what succeeds.
CREATE FUNCTION byok_encrypt(tenant text, plaintext bytea,
                             scope text DEFAULT 'default', aad bytea DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'byok_encrypt'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION byok_encrypt(tenant text, plaintext text,
                             scope text DEFAULT 'default', aad bytea DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'byok_encrypt'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION byok_decrypt(ciphertext bytea, aad bytea DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'byok_decrypt'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION byok_decrypt_text(ciphertext bytea, aad bytea DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'byok_decrypt_text'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION byok_ciphertext_info(ciphertext bytea,
    OUT version integer, OUT algorithm text, OUT dek_id bigint,
    OUT tenant text, OUT scope text, OUT key_version integer)
RETURNS record
AS 'MODULE_PATHNAME', 'byok_ciphertext_info'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

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

-- Observability: statistics, the poller, the revocation drill.
CREATE FUNCTION byok_stats(
    OUT tenant text, OUT state text, OUT cached_keys integer, OUT open_handles integer,
    OUT encrypts bigint, OUT decrypts bigint, OUT cache_hits bigint, OUT cache_misses bigint,
    OUT provider_calls bigint, OUT provider_errors bigint,
    OUT errors_disabled bigint, OUT errors_destroyed bigint, OUT errors_permission bigint,
    OUT errors_throttled bigint, OUT errors_unavailable bigint, OUT errors_bad_response bigint,
    OUT errors_config bigint,
    OUT provider_latency_last_ms float8, OUT provider_latency_mean_ms float8,
    OUT provider_latency_max_ms float8,
    OUT provider text, OUT key_ref text, OUT kms_status text, OUT last_poll_at timestamptz,
    OUT last_poll_result text, OUT unreachable_since timestamptz, OUT last_poll_ms float8,
    OUT state_changed_at timestamptz, OUT last_change text, OUT revocation_lag_ms float8,
    OUT last_purged integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'byok_stats'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
REVOKE ALL ON FUNCTION byok_stats() FROM PUBLIC;

CREATE VIEW byok.stats AS SELECT * FROM byok_stats();

CREATE VIEW byok.tenant_status AS
SELECT t.name AS tenant, t.provider, t.key_ref, t.state AS catalog_state,
       coalesce(s.state, CASE t.state WHEN 'revoked' THEN 'revoked' ELSE 'idle' END) AS live_state,
       coalesce(s.cached_keys, 0) AS cached_keys,
       s.kms_status, s.last_poll_at, s.last_poll_result, s.unreachable_since,
       s.state_changed_at, s.last_change, s.revocation_lag_ms,
       CASE
           WHEN s.state = 'revoked' OR t.state = 'revoked' THEN 'locked out: revoked by an administrator'
           WHEN s.state = 'cmk_disabled' AND t.provider = 'kmip'
               THEN 'locked out for good: the customer revoked its KMIP key (KMIP keys cannot be re-activated)'
           WHEN s.state = 'cmk_disabled' THEN 'locked out: the customer disabled its key'
           WHEN s.state = 'cmk_destroyed' THEN 'locked out for good: the customer destroyed its key'
           WHEN s.state = 'kms_unreachable' THEN 'locked out: key provider unreachable (fail_closed)'
           WHEN s.kms_status = 'unreachable' THEN 'serving cached keys: key provider unreachable'
           WHEN s.kms_status = 'throttled' THEN 'serving cached keys: key provider throttling'
           WHEN s.kms_status IS NOT NULL AND s.kms_status <> 'ok' THEN 'key provider error: ' || s.kms_status
           WHEN s.state IS NULL THEN 'ok: no keys in use'
           ELSE 'ok'
       END AS health
FROM byok.tenants t LEFT JOIN byok_stats() s ON s.tenant = t.name;

CREATE FUNCTION byok_poller_status(
    OUT pid integer, OUT rounds bigint, OUT last_round_at timestamptz,
    OUT last_round_ms float8, OUT last_round_cmks integer, OUT max_round_ms float8,
    OUT poll_interval_ms integer)
RETURNS record
AS 'MODULE_PATHNAME', 'byok_poller_status'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION byok_poller_status() FROM PUBLIC;

CREATE FUNCTION byok_revocation_drill(tenant text,
    OUT lockout_ms float8, OUT entries_purged integer, OUT residual_entries integer,
    OUT stale_handles integer, OUT ok boolean)
RETURNS record
AS 'MODULE_PATHNAME', 'byok_revocation_drill'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_revocation_drill(text) FROM PUBLIC;
-- Transparent column encryption: byok_protect_column() and friends.
--
-- To be appended to byok--1.0.sql.  Written as it appears in the extension
-- script: unqualified names are created in the extension's schema, the
-- registry and the internal helpers live in schema byok, and @extschema@
-- (substituted by CREATE EXTENSION; byok is not relocatable) names the
-- schema of byok_encrypt and friends inside generated code.
--
-- What protecting a column sets up, per table:
--   - the column itself becomes bytea and holds only byok ciphertexts
--     (scope 'schema.table.column' by default, each row under its own tenant);
--   - BEFORE INSERT OR UPDATE trigger zzz_byok_guard on the table, function
--     byok.guard_<hash>_<table>(): refuses a value that is not a byok
--     ciphertext of the row's own tenant and the column's scope;
--   - view <table>_decrypted (security_invoker, security_barrier): every
--     column, protected ones decrypted and cast back to their original type,
--     rows of other tenants filtered out when byok.tenant is set; INSTEAD OF
--     trigger byok_dml, function byok.dml_<hash>_<table>(), encrypts writes;
--   - a row in byok.protected_columns (dumped by pg_dump).
-- Generated functions are SECURITY INVOKER: every read and write is done with
-- the caller's own privileges (and row-level security) on the table.

CREATE TABLE byok.protected_columns (
    table_schema     name NOT NULL,
    table_name       name NOT NULL,
    column_name      name NOT NULL,
    tenant_column    name NOT NULL,
    scope            text NOT NULL,
    original_type    text NOT NULL,       -- format_type(), schema-qualified when needed
    original_default text,                -- pg_get_expr() of the column's default, now on the view
    view_schema      name NOT NULL,
    view_name        name NOT NULL,
    bind_row         boolean NOT NULL DEFAULT false,
    key_columns      name[],              -- primary key columns bound into the AAD (bind_row)
    state            text NOT NULL DEFAULT 'protected'
                     CHECK (state IN ('converting', 'protected')),
    protected_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    protected_by     name NOT NULL,
    PRIMARY KEY (table_schema, table_name, column_name),
    CHECK (bind_row = (key_columns IS NOT NULL))
);
COMMENT ON TABLE byok.protected_columns IS 'byok: columns that hold only byok ciphertext, by schema, table and column name (stable across pg_dump and restore)';
REVOKE ALL ON byok.protected_columns FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('byok.protected_columns', '');

-- The role that called byok's SECURITY DEFINER entry points: the SET ROLE
-- role if any, else the session user.  (Inside a SECURITY DEFINER function
-- current_user is the definer; the role GUC is left as the caller set it.)
CREATE FUNCTION byok.caller_role() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('role') = 'none' THEN SESSION_USER
                ELSE pg_catalog.current_setting('role')::name END
$$;

CREATE FUNCTION byok.check_table_owner(tbl regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_catalog.pg_has_role(byok.caller_role(),
            (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = pg_catalog.format('must be owner of table %s', tbl);
    END IF;
END $$;

-- Names of the generated per-table functions: kind, a hash of the table's
-- qualified name, and (for people) the table name's plain characters.
CREATE FUNCTION byok.object_name(kind text, tschema name, tname name) RETURNS name
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('%s_%s_%s', kind,
        pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
            pg_catalog.quote_ident(tschema) || '.' || pg_catalog.quote_ident(tname), 'UTF8')), 'hex'), 12),
        pg_catalog.left(pg_catalog.regexp_replace(tname, '[^A-Za-z0-9_]', '', 'g'), 36))::name
$$;

-- The bytea column that receives the ciphertexts during an online conversion.
CREATE FUNCTION byok.shadow_name(col name) RETURNS name
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (pg_catalog.left(col, 48) || '_byok_ct')::name $$;

CREATE FUNCTION byok.base_type(typ oid) RETURNS oid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t oid := typ;
    b oid;
BEGIN
    LOOP    -- through domains to the base type
        SELECT y.typbasetype INTO b FROM pg_catalog.pg_type y WHERE y.oid = t;
        IF b IS NULL OR b = 0 THEN
            RETURN t;
        END IF;
        t := b;
    END LOOP;
END $$;

CREATE FUNCTION byok.is_bytea_type(typ text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT byok.base_type(typ::pg_catalog.regtype) = 'pg_catalog.bytea'::pg_catalog.regtype $$;

-- SQL text of a row's AAD for bind_row: the text form of each primary key
-- column, UTF-8, joined by a zero byte (which no text value contains), so
-- that no two keys give the same AAD.  rowref is 'NEW.', 'OLD.', 't.' or ''.
-- Key types are restricted (byok.plan_protection) to those whose text form
-- does not depend on session settings.
CREATE FUNCTION byok.aad_sql(keys name[], rowref text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN keys IS NULL THEN 'NULL::pg_catalog.bytea' ELSE
        (SELECT pg_catalog.string_agg(
                    pg_catalog.format('pg_catalog.convert_to((%s%I)::pg_catalog.text, ''UTF8'')', rowref, k.k),
                    ' OPERATOR(pg_catalog.||) pg_catalog.decode(''00'', ''hex'') OPERATOR(pg_catalog.||) '
                    ORDER BY k.n)
         FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(k, n)) END
$$;

-- SQL text encrypting a row's plaintext value of column r.column_name.
-- bytea (and domains over it) is encrypted as is; every other type as its
-- text form, which the callers produce with DateStyle ISO, IntervalStyle
-- postgres and extra_float_digits 1 so that it reads back exactly anywhere.
CREATE FUNCTION byok.enc_sql(r byok.protected_columns, rowref text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format(
        '@extschema@.byok_encrypt((%1$s%2$I)::pg_catalog.text, (%1$s%3$I)::%4$s, %5$L::pg_catalog.text, %6$s)',
        rowref, r.tenant_column, r.column_name,
        CASE WHEN byok.is_bytea_type(r.original_type) THEN 'pg_catalog.bytea' ELSE 'pg_catalog.text' END,
        r.scope, byok.aad_sql(r.key_columns, rowref))
$$;

-- SQL text decrypting column r.column_name of a row back to its original type.
CREATE FUNCTION byok.dec_sql(r byok.protected_columns, rowref text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('@extschema@.%s(%s%I, %s)::%s',
        CASE WHEN byok.is_bytea_type(r.original_type) THEN 'byok_decrypt' ELSE 'byok_decrypt_text' END,
        rowref, r.column_name, byok.aad_sql(r.key_columns, rowref), r.original_type)
$$;

-- GRANT on rel what acl lists (all of it, or only SELECT/INSERT/UPDATE/DELETE
-- when copying a table's grants to its new view), except the owner's own.
CREATE FUNCTION byok.apply_acl(rel regclass, acl aclitem[], dml_only boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
    owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = rel);
BEGIN
    FOR e IN SELECT * FROM pg_catalog.aclexplode(acl) LOOP
        CONTINUE WHEN e.grantee = owner;
        CONTINUE WHEN e.privilege_type NOT IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE',
                                                'TRUNCATE', 'REFERENCES', 'TRIGGER');
        CONTINUE WHEN dml_only AND e.privilege_type NOT IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE');
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %s%s', e.privilege_type, rel,
            CASE WHEN e.grantee = 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(e.grantee)) END,
            CASE WHEN e.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;

-- Drop a generated function byok.<fn>() if it exists.
CREATE FUNCTION byok.drop_function(fn name) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regprocedure(pg_catalog.format('byok.%I()', fn)) IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP FUNCTION byok.%I()', fn);
    END IF;
END $$;

-- Drop a table's view, guard trigger and generated functions (before the
-- table's columns change); returns the view's grants so that the rebuilt
-- view gets them back.  The view is dropped without CASCADE: objects that
-- depend on it make this fail rather than vanish.
CREATE FUNCTION byok.drop_table_objects(tschema name, tname name) RETURNS aclitem[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    vs name;
    vn name;
    v regclass;
    acl aclitem[];
BEGIN
    SELECT p.view_schema, p.view_name INTO vs, vn FROM byok.protected_columns p
    WHERE p.table_schema = tschema AND p.table_name = tname LIMIT 1;
    IF vs IS NOT NULL THEN
        v := pg_catalog.to_regclass(pg_catalog.format('%I.%I', vs, vn));
        IF v IS NOT NULL AND (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = v) = 'v' THEN
            SELECT c.relacl INTO acl FROM pg_catalog.pg_class c WHERE c.oid = v;
            EXECUTE pg_catalog.format('DROP VIEW %I.%I', vs, vn);
        END IF;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_trigger g
               WHERE g.tgrelid = pg_catalog.format('%I.%I', tschema, tname)::pg_catalog.regclass
                 AND g.tgname = 'zzz_byok_guard') THEN
        EXECUTE pg_catalog.format('DROP TRIGGER zzz_byok_guard ON %I.%I', tschema, tname);
    END IF;
    PERFORM byok.drop_function(byok.object_name('guard', tschema, tname));
    PERFORM byok.drop_function(byok.object_name('dml', tschema, tname));
    RETURN acl;
END $$;

-- (Re)create a table's guard trigger and view from byok.protected_columns
-- (its protected columns; a column being converted online still shows its
-- plaintext, and its shadow column is hidden).  Nothing when no column of the
-- table is protected.  view_acl: the grants of the view dropped before, or
-- NULL for a new view, which gets the table's SELECT/INSERT/UPDATE/DELETE
-- grants.
-- Create the generated trigger function byok.<fn>() from its plpgsql body,
-- with a fixed search_path and, when pin_formats, the date, interval and
-- float formats pinned, so text the body builds reads the same whatever
-- the session set.
CREATE FUNCTION byok.create_trigger_function(fn name, pin_formats boolean, body text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    EXECUTE pg_catalog.format(E'CREATE FUNCTION byok.%I() RETURNS trigger\nLANGUAGE plpgsql\n'
                              'SET search_path = pg_catalog, pg_temp\n%sAS %L',
        fn,
        CASE WHEN pin_formats
             THEN E'SET datestyle = ''ISO, YMD''\nSET intervalstyle = ''postgres''\nSET extra_float_digits = 1\n'
             ELSE '' END,
        body);
END
$fn$;

CREATE FUNCTION byok.create_table_objects(tschema name, tname name, view_acl aclitem[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tbl      regclass := pg_catalog.format('%I.%I', tschema, tname)::regclass;
    guard_fn name := byok.object_name('guard', tschema, tname);
    dml_fn   name := byok.object_name('dml', tschema, tname);
    r        byok.protected_columns;
    first    byok.protected_columns;
    shadows  name[];
    idcols   name[];
    a        record;
    nt       text;                  -- NEW.<tenant column>
    vq       text;                  -- the view, qualified
    viewq    regclass;
    owner    name;
    body     text := '';
    sel      text[] := '{}';
    defaults text[] := '{}';
    ins_cols text[] := '{}';
    ins_vals text[] := '{}';
    ins_cols_noid text[] := '{}';
    ins_vals_noid text[] := '{}';
    upd_set  text[] := '{}';
    ret_cols text[] := '{}';
    ret_into text[] := '{}';
    any_val  text[] := '{}';
    idcol    name;
    idalways boolean := false;
    ins_sql  text;
    upd_sql  text;
    del_sql  text;
    unchanged text;
    expr     text;
BEGIN
    SELECT p.* INTO first FROM byok.protected_columns p
    WHERE p.table_schema = tschema AND p.table_name = tname AND p.state = 'protected'
    ORDER BY p.column_name LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(byok.shadow_name(p.column_name)) INTO shadows
    FROM byok.protected_columns p
    WHERE p.table_schema = tschema AND p.table_name = tname AND p.state = 'converting';
    shadows := coalesce(shadows, '{}');
    nt := pg_catalog.format('NEW.%I', first.tenant_column);
    vq := pg_catalog.format('%I.%I', first.view_schema, first.view_name);
    SELECT pg_catalog.pg_get_userbyid(c.relowner) INTO owner FROM pg_catalog.pg_class c WHERE c.oid = tbl;

    -- how the view's UPDATE and DELETE find a row: the primary key, else a
    -- replica identity index
    SELECT pg_catalog.array_agg(att.attname ORDER BY k.n) INTO idcols
    FROM (SELECT i.indkey FROM pg_catalog.pg_index i
          WHERE i.indrelid = tbl AND (i.indisprimary OR i.indisreplident)
          ORDER BY i.indisprimary DESC LIMIT 1) ix,
         pg_catalog.unnest(ix.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, n)
         JOIN pg_catalog.pg_attribute att ON att.attrelid = tbl AND att.attnum = k.attnum;

    -- the guard: one block per protected column
    FOR r IN SELECT p.* FROM byok.protected_columns p
             WHERE p.table_schema = tschema AND p.table_name = tname AND p.state = 'protected'
             ORDER BY p.column_name LOOP
        body := body || pg_catalog.format($g$
    IF NEW.%1$I IS NOT NULL THEN
        IF TG_OP = 'UPDATE' AND NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I THEN
            IF (NEW.%2$I)::pg_catalog.text IS DISTINCT FROM (OLD.%2$I)::pg_catalog.text THEN
                RAISE EXCEPTION USING ERRCODE = 'YK012',
                    MESSAGE = %3$L,
                    DETAIL = %11$L,
                    HINT = %4$L;
            END IF;%5$s
        ELSE
            IF NEW.%2$I IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '23502',
                    MESSAGE = %6$L,
                    HINT = 'A protected value is encrypted under its row''s tenant.';
            END IF;
            -- format v1: at least 38 bytes, version byte 1
            IF (CASE WHEN pg_catalog.octet_length(NEW.%1$I) < 38 THEN true
                     ELSE pg_catalog.get_byte(NEW.%1$I, 0) <> 1 END) THEN
                RAISE EXCEPTION USING ERRCODE = 'YK010',
                    MESSAGE = %7$L,
                    DETAIL = 'The value is not a byok ciphertext.',
                    HINT = %4$L;
            END IF;
            SELECT i.tenant, i.scope INTO ct_tenant, ct_scope
            FROM @extschema@.byok_ciphertext_info(NEW.%1$I) AS i;
            IF ct_tenant IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'YK010',
                    MESSAGE = %7$L,
                    DETAIL = 'The value names a data key this database does not have.',
                    HINT = %4$L;
            END IF;
            IF ct_tenant <> (NEW.%2$I)::pg_catalog.text THEN
                RAISE EXCEPTION USING ERRCODE = 'YK012',
                    MESSAGE = %8$L,
                    DETAIL = pg_catalog.format('The value belongs to tenant %%s, the row to tenant %%s.',
                                               ct_tenant, (NEW.%2$I)::pg_catalog.text),
                    HINT = %4$L;
            END IF;
            IF ct_scope <> %9$L THEN
                RAISE EXCEPTION USING ERRCODE = 'YK010',
                    MESSAGE = %10$L,
                    DETAIL = pg_catalog.format('The value was encrypted for scope %%s.', ct_scope),
                    HINT = %4$L;
            END IF;
        END IF;
    END IF;
$g$,
            r.column_name, r.tenant_column,
            pg_catalog.format('the tenant of a row of %s changed without re-encrypting its protected values', tbl),
            pg_catalog.format('Write plaintext through the view %s, which encrypts it under the row''s tenant.', vq),
            CASE WHEN r.bind_row THEN pg_catalog.format($k$
            IF %s IS DISTINCT FROM %s THEN
                RAISE EXCEPTION USING ERRCODE = 'YK011',
                    MESSAGE = %L,
                    DETAIL = %L,
                    HINT = %L;
            END IF;$k$,
                byok.aad_sql(r.key_columns, 'NEW.'), byok.aad_sql(r.key_columns, 'OLD.'),
                pg_catalog.format('the primary key of a row of %s changed without re-encrypting its row-bound values', tbl),
                pg_catalog.format('Column "%s" is bound to its row''s primary key.', r.column_name),
                pg_catalog.format('Update the row through the view %s, which re-encrypts it.', vq))
            ELSE '' END,
            pg_catalog.format('protected column "%s" of %s needs a tenant, but column "%s" is null',
                              r.column_name, tbl, r.tenant_column),
            pg_catalog.format('column "%s" of %s holds only byok ciphertexts', r.column_name, tbl),
            pg_catalog.format('column "%s" of %s holds only ciphertexts of the row''s own tenant',
                              r.column_name, tbl),
            r.scope,
            pg_catalog.format('column "%s" of %s holds only ciphertexts of scope %s',
                              r.column_name, tbl, r.scope),
            pg_catalog.format('Column "%s" still holds a ciphertext of the old tenant.', r.column_name));
    END LOOP;

    PERFORM byok.create_trigger_function(guard_fn, false, pg_catalog.format(E'\nDECLARE\n    ct_tenant text;\n    ct_scope text;\nBEGIN%s    RETURN NEW;\nEND\n', body));
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION byok.%I() IS %L', guard_fn,
        pg_catalog.format('byok: the guard of %s (generated; rebuilt by byok_protect_column)', tbl));
    EXECUTE pg_catalog.format('CREATE TRIGGER zzz_byok_guard BEFORE INSERT OR UPDATE ON %I.%I '
                              'FOR EACH ROW EXECUTE FUNCTION byok.%I()', tschema, tname, guard_fn);

    -- the view and its INSTEAD OF trigger
    FOR a IN SELECT att.attname, att.attgenerated, att.attidentity, att.atthasdef,
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS def
             FROM pg_catalog.pg_attribute att
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = att.attrelid AND d.adnum = att.attnum
             WHERE att.attrelid = tbl AND att.attnum > 0 AND NOT att.attisdropped
               AND att.attname <> ALL (shadows)
             ORDER BY att.attnum LOOP
        SELECT p.* INTO r FROM byok.protected_columns p
        WHERE p.table_schema = tschema AND p.table_name = tname AND p.column_name = a.attname
          AND p.state = 'protected';
        IF FOUND THEN
            sel := sel || (byok.dec_sql(r, 't.') || pg_catalog.format(' AS %I', a.attname));
            IF r.original_default IS NOT NULL THEN
                defaults := defaults || pg_catalog.format('ALTER COLUMN %I SET DEFAULT %s', a.attname, r.original_default);
            END IF;
            any_val := any_val || pg_catalog.format('NEW.%I IS NOT NULL', a.attname);
            ins_cols := ins_cols || pg_catalog.quote_ident(a.attname);
            ins_vals := ins_vals || byok.enc_sql(r, 'NEW.');
            ins_cols_noid := ins_cols_noid || pg_catalog.quote_ident(a.attname);
            ins_vals_noid := ins_vals_noid || byok.enc_sql(r, 'NEW.');
            unchanged := CASE WHEN byok.is_bytea_type(r.original_type)
                              THEN pg_catalog.format('NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I', a.attname)
                              ELSE pg_catalog.format('(NEW.%1$I)::pg_catalog.text IS NOT DISTINCT FROM (OLD.%1$I)::pg_catalog.text', a.attname)
                         END
                      || pg_catalog.format(' AND (NEW.%1$I)::pg_catalog.text IS NOT DISTINCT FROM (OLD.%1$I)::pg_catalog.text', r.tenant_column)
                      || CASE WHEN r.bind_row
                              THEN pg_catalog.format(' AND %s IS NOT DISTINCT FROM %s',
                                                     byok.aad_sql(r.key_columns, 'NEW.'), byok.aad_sql(r.key_columns, 'OLD.'))
                              ELSE '' END;
            upd_set := upd_set || pg_catalog.format('%1$I = CASE WHEN %2$s THEN t.%1$I ELSE %3$s END',
                                                    a.attname, unchanged, byok.enc_sql(r, 'NEW.'));
        ELSE
            sel := sel || pg_catalog.format('t.%I', a.attname);
            IF a.attgenerated = '' AND a.attidentity = '' AND a.atthasdef THEN
                defaults := defaults || pg_catalog.format('ALTER COLUMN %I SET DEFAULT %s', a.attname, a.def);
            END IF;
            IF a.attgenerated = '' THEN
                ins_cols := ins_cols || pg_catalog.quote_ident(a.attname);
                ins_vals := ins_vals || pg_catalog.format('NEW.%I', a.attname);
                IF a.attidentity <> '' THEN
                    IF idcol IS NOT NULL THEN
                        RAISE EXCEPTION USING ERRCODE = '0A000',
                            MESSAGE = pg_catalog.format('byok cannot protect columns of %s: it has more than one identity column', tbl);
                    END IF;
                    idcol := a.attname;
                    idalways := a.attidentity = 'a';
                ELSE
                    ins_cols_noid := ins_cols_noid || pg_catalog.quote_ident(a.attname);
                    ins_vals_noid := ins_vals_noid || pg_catalog.format('NEW.%I', a.attname);
                END IF;
                IF a.attidentity <> 'a' THEN
                    upd_set := upd_set || pg_catalog.format('%1$I = NEW.%1$I', a.attname);
                END IF;
            END IF;
            ret_cols := ret_cols || pg_catalog.format('t.%I', a.attname);
            ret_into := ret_into || pg_catalog.format('NEW.%I', a.attname);
        END IF;
    END LOOP;

    EXECUTE pg_catalog.format(
        'CREATE VIEW %s WITH (security_barrier = true, security_invoker = true) AS SELECT %s FROM %I.%I AS t '
        'WHERE COALESCE(pg_catalog.current_setting(''byok.tenant'', true), '''') = '''' '
        'OR (t.%I)::pg_catalog.text = pg_catalog.current_setting(''byok.tenant'', true)',
        vq, pg_catalog.array_to_string(sel, ', '), tschema, tname, first.tenant_column);
    viewq := vq::regclass;
    EXECUTE pg_catalog.format('ALTER VIEW %s OWNER TO %I', vq, owner);
    IF pg_catalog.cardinality(defaults) > 0 THEN
        EXECUTE pg_catalog.format('ALTER VIEW %s %s', vq, pg_catalog.array_to_string(defaults, ', '));
    END IF;
    IF view_acl IS NOT NULL THEN
        PERFORM byok.apply_acl(viewq, view_acl, false);
    ELSE
        PERFORM byok.apply_acl(viewq, (SELECT c.relacl FROM pg_catalog.pg_class c WHERE c.oid = tbl), true);
    END IF;
    EXECUTE pg_catalog.format('COMMENT ON VIEW %s IS %L', vq,
        pg_catalog.format('byok: %s with its protected columns decrypted; writes are encrypted under each row''s tenant '
                          '(generated; rebuilt by byok_protect_column)', tbl));

    -- INSERT
    ins_sql := pg_catalog.format('INSERT INTO %I.%I AS t (%s) VALUES (%s)%s;',
        tschema, tname, pg_catalog.array_to_string(ins_cols, ', '),
        pg_catalog.array_to_string(ins_vals, ', '),
        CASE WHEN pg_catalog.cardinality(ret_cols) > 0
             THEN pg_catalog.format(' RETURNING %s INTO %s', pg_catalog.array_to_string(ret_cols, ', '),
                                    pg_catalog.array_to_string(ret_into, ', '))
             ELSE '' END);
    IF idalways THEN
        -- as in the table itself: GENERATED ALWAYS takes no explicit value
        ins_sql := pg_catalog.format('RAISE EXCEPTION USING ERRCODE = ''428C9'', MESSAGE = %L, DETAIL = %L;',
            pg_catalog.format('cannot insert a non-DEFAULT value into column "%s"', idcol),
            pg_catalog.format('Column "%s" is an identity column defined as GENERATED ALWAYS.', idcol));
    END IF;
    IF idcol IS NOT NULL THEN
        -- no value for the identity column: let the table generate it
        ins_sql := pg_catalog.format(E'IF NEW.%I IS NULL THEN\n            %s\n        ELSE\n            %s\n        END IF;',
            idcol,
            pg_catalog.format('INSERT INTO %I.%I AS t (%s) VALUES (%s) RETURNING %s INTO %s;',
                tschema, tname, pg_catalog.array_to_string(ins_cols_noid, ', '),
                pg_catalog.array_to_string(ins_vals_noid, ', '),
                pg_catalog.array_to_string(ret_cols, ', '), pg_catalog.array_to_string(ret_into, ', ')),
            ins_sql);
    END IF;

    -- UPDATE and DELETE
    IF idcols IS NULL THEN
        upd_sql := pg_catalog.format('RAISE EXCEPTION USING ERRCODE = ''0A000'', MESSAGE = %L, HINT = %L;',
            pg_catalog.format('cannot update or delete rows of %s: table %s has no primary key', vq, tbl),
            'Add a primary key (the view rebuilds when a column is protected), or write the table directly with byok_encrypt().');
        del_sql := upd_sql;
    ELSE
        expr := (SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = OLD.%1$I', k), ' AND ')
                 FROM pg_catalog.unnest(idcols) AS k);
        upd_sql := pg_catalog.format(E'UPDATE %I.%I AS t SET %s\n        WHERE %s%s;\n        IF NOT FOUND THEN\n            RETURN NULL;\n        END IF;\n        RETURN NEW;',
            tschema, tname, pg_catalog.array_to_string(upd_set, E',\n            '), expr,
            CASE WHEN pg_catalog.cardinality(ret_cols) > 0
                 THEN pg_catalog.format(E'\n        RETURNING %s INTO %s', pg_catalog.array_to_string(ret_cols, ', '),
                                        pg_catalog.array_to_string(ret_into, ', '))
                 ELSE '' END);
        IF idalways THEN
            upd_sql := pg_catalog.format(E'IF NEW.%1$I IS DISTINCT FROM OLD.%1$I THEN\n            RAISE EXCEPTION USING ERRCODE = ''428C9'', MESSAGE = %2$L;\n        END IF;\n        ',
                idcol, pg_catalog.format('column "%s" can only be updated to DEFAULT', idcol)) || upd_sql;
        END IF;
        del_sql := pg_catalog.format(E'DELETE FROM %I.%I AS t WHERE %s;\n        IF NOT FOUND THEN\n            RETURN NULL;\n        END IF;\n        RETURN OLD;',
            tschema, tname, expr);
    END IF;

    PERFORM byok.create_trigger_function(dml_fn, true, pg_catalog.format($b$
BEGIN
    IF TG_OP = 'DELETE' THEN
        %1$s
    END IF;
    IF %2$s IS NULL AND (%3$s) THEN
        RAISE EXCEPTION USING ERRCODE = '23502',
            MESSAGE = %4$L,
            HINT = 'A protected value is encrypted under its row''s tenant.';
    END IF;
    -- a session bound to a tenant writes only that tenant's rows, even
    -- without a value to encrypt
    IF COALESCE(pg_catalog.current_setting('byok.tenant', true), '') <> ''
       AND (%2$s)::pg_catalog.text IS DISTINCT FROM pg_catalog.current_setting('byok.tenant', true) THEN
        RAISE EXCEPTION USING ERRCODE = 'YK012',
            MESSAGE = pg_catalog.format('this session is bound to tenant "%%s"', pg_catalog.current_setting('byok.tenant', true)),
            DETAIL = pg_catalog.format('Writing a row of tenant "%%s" is not allowed in this session.', %2$s);
    END IF;
    IF TG_OP = 'INSERT' THEN
        %5$s
        RETURN NEW;
    END IF;
    %6$s
END
$b$, del_sql, nt, pg_catalog.array_to_string(any_val, ' OR '),
       pg_catalog.format('a row of %s with protected values needs a tenant, but column "%s" is null', vq, first.tenant_column),
       ins_sql, upd_sql));
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION byok.%I() IS %L', dml_fn,
        pg_catalog.format('byok: writes through %s (generated; rebuilt by byok_protect_column)', vq));
    EXECUTE pg_catalog.format('CREATE TRIGGER byok_dml INSTEAD OF INSERT OR UPDATE OR DELETE ON %s '
                              'FOR EACH ROW EXECUTE FUNCTION byok.%I()', vq, dml_fn);
END $fn$;

-- Check that col of tbl can be protected, lock the table (ACCESS EXCLUSIVE,
-- until the end of the transaction) and return its registry row to be.
CREATE FUNCTION byok.plan_protection(tbl regclass, col name, tenant_col name,
                                     scope text, view_name name, bind_row boolean)
RETURNS byok.protected_columns
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r byok.protected_columns;
    other byok.protected_columns;
    c record;
    att record;
    ten record;
    dep text;
    k record;
    view_oid oid;
BEGIN
    IF tbl IS NULL OR col IS NULL OR tenant_col IS NULL OR bind_row IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'table, column, tenant column and bind_row must not be null';
    END IF;
    PERFORM byok.check_table_owner(tbl);
    SELECT cl.relkind, cl.relpersistence, n.nspname, cl.relname INTO c
    FROM pg_catalog.pg_class cl JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
    WHERE cl.oid = tbl;
    IF c.relkind <> 'r' OR c.relpersistence = 't' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = pg_catalog.format('byok protects columns of ordinary, permanent tables only; %s is not one', tbl);
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid = tbl OR i.inhparent = tbl) THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = pg_catalog.format('byok does not protect columns of tables with inheritance parents or children (%s)', tbl);
    END IF;
    EXECUTE pg_catalog.format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', c.nspname, c.relname);

    SELECT a.attnum, a.attnotnull, a.attgenerated, a.attidentity,
           pg_catalog.format_type(a.atttypid, a.atttypmod) AS typ,
           pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS def
    INTO att
    FROM pg_catalog.pg_attribute a
    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42703',
            MESSAGE = pg_catalog.format('column "%s" of %s does not exist', col, tbl);
    END IF;
    SELECT a.attnum INTO ten FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42703',
            MESSAGE = pg_catalog.format('tenant column "%s" of %s does not exist', tenant_col, tbl);
    END IF;
    IF tenant_col = col THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'a column cannot be its own tenant column';
    END IF;

    IF EXISTS (SELECT FROM byok.protected_columns p WHERE p.table_schema = c.nspname
               AND p.table_name = c.relname AND p.column_name = col) THEN
        RAISE EXCEPTION USING ERRCODE = '42710',
            MESSAGE = pg_catalog.format('column "%s" of %s is already protected', col, tbl);
    END IF;
    SELECT p.* INTO other FROM byok.protected_columns p
    WHERE p.table_schema = c.nspname AND p.table_name = c.relname LIMIT 1;
    IF FOUND THEN
        IF other.tenant_column <> tenant_col THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = pg_catalog.format('the protected columns of %s use tenant column "%s"', tbl, other.tenant_column);
        END IF;
        IF view_name IS NOT NULL AND view_name <> other.view_name THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = pg_catalog.format('the protected columns of %s are shown by view %I.%I', tbl,
                                            other.view_schema, other.view_name);
        END IF;
        IF EXISTS (SELECT FROM byok.protected_columns p WHERE p.table_schema = c.nspname
                   AND p.table_name = c.relname AND p.column_name = tenant_col) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = pg_catalog.format('tenant column "%s" of %s is itself protected', tenant_col, tbl);
        END IF;
        view_oid := pg_catalog.to_regclass(pg_catalog.format('%I.%I', other.view_schema, other.view_name));
        r.view_name := other.view_name;
    ELSE
        r.view_name := coalesce(view_name, (pg_catalog.left(c.relname, 53) || '_decrypted')::name);
        IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', c.nspname, r.view_name)) IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '42P07',
                MESSAGE = pg_catalog.format('relation %I.%I already exists', c.nspname, r.view_name),
                HINT = 'Choose another name with view_name.';
        END IF;
    END IF;

    IF att.attgenerated <> '' OR att.attidentity <> '' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = pg_catalog.format('column "%s" of %s is generated or an identity column', col, tbl);
    END IF;
    -- nothing may depend on the column but its default (moved to the view)
    -- and the view byok made: a ciphertext cannot be indexed, constrained,
    -- compared or shown by another view
    SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) INTO dep
    FROM pg_catalog.pg_depend d
    WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = tbl
      AND d.refobjsubid = att.attnum
      AND d.classid <> 'pg_catalog.pg_attrdef'::pg_catalog.regclass
      AND NOT (d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND view_oid IS NOT NULL
               AND d.objid IN (SELECT w.oid FROM pg_catalog.pg_rewrite w WHERE w.ev_class = view_oid))
    ORDER BY 1 LIMIT 1;
    IF dep IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '2BP01',
            MESSAGE = pg_catalog.format('column "%s" of %s is used by %s', col, tbl, dep),
            HINT = 'A byok ciphertext cannot be indexed, constrained or compared: drop that first.';
    END IF;

    IF bind_row THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = tbl AND i.indisprimary) THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = pg_catalog.format('bind_row needs a primary key, and %s has none', tbl);
        END IF;
        r.key_columns := '{}';
        FOR k IN SELECT a.attname, a.atttypid, byok.base_type(a.atttypid) AS bt
                 FROM pg_catalog.pg_index i,
                      pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS u(attnum, n),
                      pg_catalog.pg_attribute a
                 WHERE i.indrelid = tbl AND i.indisprimary
                   AND a.attrelid = tbl AND a.attnum = u.attnum
                 ORDER BY u.n LOOP
            -- the text form of the key must not depend on session settings
            -- (DateStyle, TimeZone, extra_float_digits, lc_monetary...)
            IF NOT ((SELECT y.typcategory FROM pg_catalog.pg_type y WHERE y.oid = k.bt) IN ('S', 'E')
                    OR k.bt IN ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                                'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.numeric'::pg_catalog.regtype,
                                'pg_catalog.uuid'::pg_catalog.regtype, 'pg_catalog.bool'::pg_catalog.regtype,
                                'pg_catalog.oid'::pg_catalog.regtype)) THEN
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = pg_catalog.format('bind_row does not support primary key column "%s" of type %s',
                                                k.attname, pg_catalog.format_type(k.atttypid, NULL)),
                    HINT = 'Row binding needs key columns of string, enum, integer, numeric, uuid or boolean types.';
            END IF;
            r.key_columns := r.key_columns || k.attname;
        END LOOP;
    END IF;

    r.scope := coalesce(scope, pg_catalog.format('%s.%s.%s', c.nspname, c.relname, col));
    IF pg_catalog.octet_length(r.scope) NOT BETWEEN 1 AND 255 OR r.scope ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'a scope is 1 to 255 bytes without control characters';
    END IF;
    r.table_schema := c.nspname;
    r.table_name := c.relname;
    r.column_name := col;
    r.tenant_column := tenant_col;
    r.original_type := att.typ;
    r.original_default := att.def;
    r.view_schema := c.nspname;
    r.bind_row := bind_row;
    r.state := 'protected';
    r.protected_at := pg_catalog.now();
    r.protected_by := byok.caller_role();
    RETURN r;
END $fn$;

-- Protect a column in one transaction: one rewrite of the table under an
-- ACCESS EXCLUSIVE lock held until commit (readers and writers wait).  For
-- large tables use the procedure byok_protect_column_online.
CREATE FUNCTION byok_protect_column(tbl regclass, col name, tenant_col name,
                                    scope text DEFAULT NULL, view_name name DEFAULT NULL,
                                    bind_row boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
AS $fn$
DECLARE
    r byok.protected_columns;
    acl aclitem[];
    total bigint;
    orphans bigint;
BEGIN
    r := byok.plan_protection(tbl, col, tenant_col, scope, view_name, bind_row);
    EXECUTE pg_catalog.format('SELECT count(*) FILTER (WHERE %1$I IS NOT NULL), '
                              'count(*) FILTER (WHERE %1$I IS NOT NULL AND %2$I IS NULL) FROM %3$I.%4$I',
                              r.column_name, r.tenant_column, r.table_schema, r.table_name)
        INTO total, orphans;
    IF orphans > 0 THEN
        RAISE EXCEPTION USING ERRCODE = '23502',
            MESSAGE = pg_catalog.format('%s row(s) of %s have a value in column "%s" but no tenant', orphans, tbl, col);
    END IF;
    acl := byok.drop_table_objects(r.table_schema, r.table_name);
    IF r.original_default IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I ALTER COLUMN %I DROP DEFAULT', r.table_schema, r.table_name, col);
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I ALTER COLUMN %I TYPE pg_catalog.bytea USING %s',
                              r.table_schema, r.table_name, col, byok.enc_sql(r, ''));
    INSERT INTO byok.protected_columns SELECT r.*;
    PERFORM byok.create_table_objects(r.table_schema, r.table_name, acl);
    RAISE NOTICE 'byok: % value(s) of column "%" of % encrypted', total, col, tbl;
END $fn$;
REVOKE ALL ON FUNCTION byok_protect_column(regclass, name, name, text, name, boolean) FROM PUBLIC;

-- Online conversion, step 1 (short ACCESS EXCLUSIVE lock): a shadow bytea
-- column, kept encrypted by a trigger for every row written from now on, and
-- a NOT VALID check that every value has its ciphertext.
CREATE FUNCTION byok.online_begin(tbl regclass, col name, tenant_col name,
                                  scope text, view_name name, bind_row boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r byok.protected_columns;
    sh name := byok.shadow_name(col);
    sync_fn name;
    col_not_null boolean;
    chk text;
BEGIN
    PERFORM byok.check_table_owner(tbl);
    SELECT p.* INTO r FROM byok.protected_columns p, pg_catalog.pg_class c, pg_catalog.pg_namespace n
    WHERE c.oid = tbl AND n.oid = c.relnamespace
      AND p.table_schema = n.nspname AND p.table_name = c.relname AND p.column_name = col;
    IF FOUND AND r.state = 'converting' THEN
        RAISE NOTICE 'byok: resuming the conversion of column "%" of %', col, tbl;
        RETURN;
    END IF;
    r := byok.plan_protection(tbl, col, tenant_col, scope, view_name, bind_row);
    IF EXISTS (SELECT FROM byok.protected_columns p WHERE p.table_schema = r.table_schema
               AND p.table_name = r.table_name AND p.state = 'converting') THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = pg_catalog.format('another column of %s is being converted', tbl);
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = sh AND NOT a.attisdropped)
       OR EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conrelid = tbl AND k.conname = 'byok_converting') THEN
        RAISE EXCEPTION USING ERRCODE = '42701',
            MESSAGE = pg_catalog.format('%s already has a column "%s" or a constraint "byok_converting"', tbl, sh);
    END IF;
    r.state := 'converting';
    SELECT a.attnotnull INTO col_not_null FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = col;
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I ADD COLUMN %I pg_catalog.bytea', r.table_schema, r.table_name, sh);
    chk := CASE WHEN col_not_null THEN pg_catalog.format('%I IS NOT NULL', sh)
                ELSE pg_catalog.format('%I IS NULL OR %I IS NOT NULL', col, sh) END;
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I ADD CONSTRAINT byok_converting CHECK (%s) NOT VALID',
                              r.table_schema, r.table_name, chk);
    INSERT INTO byok.protected_columns SELECT r.*;

    sync_fn := byok.object_name('sync', r.table_schema, r.table_name);
    PERFORM byok.create_trigger_function(sync_fn, true, pg_catalog.format($b$
BEGIN
    IF NEW.%1$I IS NULL THEN
        NEW.%2$I := NULL;
    ELSIF TG_OP = 'INSERT' OR NEW.%2$I IS NULL
          OR %3$s
          OR (NEW.%4$I)::pg_catalog.text IS DISTINCT FROM (OLD.%4$I)::pg_catalog.text
          OR %5$s IS DISTINCT FROM %6$s THEN
        IF NEW.%4$I IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '23502', MESSAGE = %7$L;
        END IF;
        NEW.%2$I := %8$s;
    END IF;
    RETURN NEW;
END
$b$, col, sh,
        CASE WHEN byok.is_bytea_type(r.original_type)
             THEN pg_catalog.format('NEW.%1$I IS DISTINCT FROM OLD.%1$I', col)
             ELSE pg_catalog.format('(NEW.%1$I)::pg_catalog.text IS DISTINCT FROM (OLD.%1$I)::pg_catalog.text', col) END,
        r.tenant_column, byok.aad_sql(r.key_columns, 'NEW.'), byok.aad_sql(r.key_columns, 'OLD.'),
        pg_catalog.format('column "%s" of %s is being encrypted: a value needs a tenant, but column "%s" is null',
                          col, tbl, r.tenant_column),
        byok.enc_sql(r, 'NEW.')));
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION byok.%I() IS %L', sync_fn,
        pg_catalog.format('byok: keeps %I of %s encrypted during byok_protect_column_online (generated)', sh, tbl));
    EXECUTE pg_catalog.format('CREATE TRIGGER zzz_byok_sync BEFORE INSERT OR UPDATE ON %I.%I '
                              'FOR EACH ROW EXECUTE FUNCTION byok.%I()', r.table_schema, r.table_name, sync_fn);
END $fn$;
REVOKE ALL ON FUNCTION byok.online_begin(regclass, name, name, text, name, boolean) FROM PUBLIC;

-- Step 2 (no lock beyond ROW EXCLUSIVE): how many pages, how many per batch,
-- how many values are still to encrypt.
CREATE FUNCTION byok.online_plan(tbl regclass, col name, batch_size integer,
                                 OUT pages bigint, OUT pages_per_batch bigint, OUT total bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    live bigint;
BEGIN
    PERFORM byok.check_table_owner(tbl);
    pages := pg_catalog.pg_relation_size(tbl) / pg_catalog.current_setting('block_size')::bigint;
    EXECUTE pg_catalog.format('SELECT count(*), count(*) FILTER (WHERE %I IS NOT NULL AND %I IS NULL) FROM %s',
                              col, byok.shadow_name(col), tbl)
        INTO live, total;
    pages_per_batch := GREATEST(1, batch_size::bigint * GREATEST(pages, 1) / GREATEST(live, 1));
END $fn$;
REVOKE ALL ON FUNCTION byok.online_plan(regclass, name, integer) FROM PUBLIC;

-- Step 3, once per batch, each in its own transaction: encrypt the values of
-- pages [first_page, first_page + pages) that have no ciphertext yet (the
-- sync trigger does the work).  Row locks on those rows only.
CREATE FUNCTION byok.online_batch(tbl regclass, col name, first_page bigint, pages bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    n bigint;
    sh name := byok.shadow_name(col);
BEGIN
    PERFORM byok.check_table_owner(tbl);
    EXECUTE pg_catalog.format('UPDATE %s SET %I = NULL WHERE ctid >= $1 AND ctid < $2 AND %I IS NOT NULL AND %I IS NULL',
                              tbl, sh, col, sh)
        USING pg_catalog.format('(%s,0)', first_page)::pg_catalog.tid,
              pg_catalog.format('(%s,0)', first_page + pages)::pg_catalog.tid;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $fn$;
REVOKE ALL ON FUNCTION byok.online_batch(regclass, name, bigint, bigint) FROM PUBLIC;

-- Step 4 (SHARE UPDATE EXCLUSIVE: reads and writes go on): prove that every
-- value has its ciphertext.
CREATE FUNCTION byok.online_validate(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM byok.check_table_owner(tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %s VALIDATE CONSTRAINT byok_converting', tbl);
EXCEPTION WHEN check_violation THEN
    RAISE EXCEPTION USING ERRCODE = '55000',
        MESSAGE = pg_catalog.format('some values of column "%s" of %s are not encrypted yet', col, tbl),
        HINT = 'Call byok_protect_column_online again: it resumes.';
END $fn$;
REVOKE ALL ON FUNCTION byok.online_validate(regclass, name) FROM PUBLIC;

-- Step 5 (short ACCESS EXCLUSIVE lock, no table scan): drop the plaintext
-- column, the shadow column takes its name, guard and view are rebuilt.
CREATE FUNCTION byok.online_finish(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r byok.protected_columns;
    acl aclitem[];
    sh name := byok.shadow_name(col);
    col_not_null boolean;
BEGIN
    PERFORM byok.check_table_owner(tbl);
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);
    SELECT p.* INTO r FROM byok.protected_columns p, pg_catalog.pg_class c, pg_catalog.pg_namespace n
    WHERE c.oid = tbl AND n.oid = c.relnamespace AND p.state = 'converting'
      AND p.table_schema = n.nspname AND p.table_name = c.relname AND p.column_name = col
    FOR UPDATE OF p;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = pg_catalog.format('column "%s" of %s is not being converted', col, tbl);
    END IF;
    acl := byok.drop_table_objects(r.table_schema, r.table_name);
    EXECUTE pg_catalog.format('DROP TRIGGER zzz_byok_sync ON %s', tbl);
    EXECUTE pg_catalog.format('DROP FUNCTION byok.%I()', byok.object_name('sync', r.table_schema, r.table_name));
    SELECT a.attnotnull INTO col_not_null FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = col;
    IF col_not_null THEN     -- proved by the validated check: no scan
        EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, sh);
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT byok_converting', tbl);
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN %I', tbl, col);
    EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', tbl, sh, col);
    UPDATE byok.protected_columns p SET state = 'protected', protected_at = pg_catalog.now()
    WHERE p.table_schema = r.table_schema AND p.table_name = r.table_name AND p.column_name = col;
    PERFORM byok.create_table_objects(r.table_schema, r.table_name, acl);
END $fn$;
REVOKE ALL ON FUNCTION byok.online_finish(regclass, name) FROM PUBLIC;

-- Protect a column online: short locks only, a COMMIT after every batch.
-- CALL it outside any transaction block.  Re-running it after an interruption
-- resumes; byok_unprotect_column cancels a conversion.  Transaction control
-- rules out SECURITY DEFINER and SET clauses here: every step is a
-- SECURITY DEFINER function in schema byok, every name is qualified.
CREATE PROCEDURE byok_protect_column_online(tbl regclass, col name, tenant_col name,
                                            scope text DEFAULT NULL, view_name name DEFAULT NULL,
                                            bind_row boolean DEFAULT false, batch_size integer DEFAULT 1000)
LANGUAGE plpgsql
AS $fn$
DECLARE
    p record;
    page bigint := 0;
    done bigint := 0;
    n bigint;
    batch integer := 0;
    tname text;
BEGIN
    SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO tname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.oid OPERATOR(pg_catalog.=) tbl;
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'batch_size must be positive';
    END IF;
    PERFORM byok.online_begin(tbl, col, tenant_col, scope, view_name, bind_row);
    COMMIT;
    SELECT * INTO p FROM byok.online_plan(tbl, col, batch_size);
    COMMIT;
    WHILE page OPERATOR(pg_catalog.<) p.pages LOOP
        n := byok.online_batch(tbl, col, page, p.pages_per_batch);
        COMMIT;
        done := done OPERATOR(pg_catalog.+) n;
        page := page OPERATOR(pg_catalog.+) p.pages_per_batch;
        batch := batch OPERATOR(pg_catalog.+) 1;
        RAISE NOTICE 'byok: column "%" of %: batch %: % of % value(s) encrypted',
            col, tname, batch, done, p.total;
    END LOOP;
    PERFORM byok.online_validate(tbl, col);
    COMMIT;
    PERFORM byok.online_finish(tbl, col);
    COMMIT;
    RAISE NOTICE 'byok: column "%" of % is protected', col, tname;
END $fn$;
REVOKE ALL ON PROCEDURE byok_protect_column_online(regclass, name, name, text, name, boolean, integer) FROM PUBLIC;

-- Reverse byok_protect_column in one transaction (one rewrite under an
-- ACCESS EXCLUSIVE lock): decrypt every value back to the original type,
-- restore the default, rebuild the view for the remaining protected columns
-- (or drop it).  On a column being converted online, cancel the conversion.
CREATE FUNCTION byok_unprotect_column(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
AS $fn$
DECLARE
    r byok.protected_columns;
    s name;
    t name;
    acl aclitem[];
BEGIN
    PERFORM byok.check_table_owner(tbl);
    SELECT n.nspname, c.relname INTO s, t FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    EXECUTE pg_catalog.format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', s, t);
    SELECT p.* INTO r FROM byok.protected_columns p
    WHERE p.table_schema = s AND p.table_name = t AND p.column_name = col FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = pg_catalog.format('column "%s" of %s is not protected by byok', col, tbl);
    END IF;
    IF r.state = 'converting' THEN
        EXECUTE pg_catalog.format('DROP TRIGGER zzz_byok_sync ON %I.%I', s, t);
        PERFORM byok.drop_function(byok.object_name('sync', s, t));
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I DROP CONSTRAINT byok_converting', s, t);
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I DROP COLUMN %I', s, t, byok.shadow_name(col));
        DELETE FROM byok.protected_columns p WHERE p.table_schema = s AND p.table_name = t AND p.column_name = col;
        RAISE NOTICE 'byok: conversion of column "%" of % cancelled', col, tbl;
        RETURN;
    END IF;
    acl := byok.drop_table_objects(s, t);
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I ALTER COLUMN %I TYPE %s USING %s',
                              s, t, col, r.original_type, byok.dec_sql(r, ''));
    IF r.original_default IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I ALTER COLUMN %I SET DEFAULT %s', s, t, col, r.original_default);
    END IF;
    DELETE FROM byok.protected_columns p WHERE p.table_schema = s AND p.table_name = t AND p.column_name = col;
    PERFORM byok.create_table_objects(s, t, acl);
END $fn$;
REVOKE ALL ON FUNCTION byok_unprotect_column(regclass, name) FROM PUBLIC;

-- DROP TABLE of a protected table (or DROP SCHEMA ... CASCADE) removes its
-- registry rows and generated functions; ALTER TABLE ... DROP COLUMN ...
-- CASCADE of a protected column removes its row and rebuilds the view for the
-- others (the view, dropped by the CASCADE, comes back with the table's
-- grants).  Fast exit when nothing is protected.
CREATE FUNCTION byok.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    o record;
BEGIN
    IF NOT EXISTS (SELECT FROM byok.protected_columns) THEN
        RETURN;
    END IF;
    FOR o IN SELECT d.object_type, d.address_names FROM pg_catalog.pg_event_trigger_dropped_objects() d
             WHERE d.object_type IN ('table', 'table column') LOOP
        IF o.object_type = 'table' THEN
            IF EXISTS (SELECT FROM byok.protected_columns p
                       WHERE p.table_schema = o.address_names[1] AND p.table_name = o.address_names[2]) THEN
                DELETE FROM byok.protected_columns p
                WHERE p.table_schema = o.address_names[1] AND p.table_name = o.address_names[2];
                PERFORM byok.drop_function(byok.object_name(k, o.address_names[1]::name, o.address_names[2]::name))
                FROM pg_catalog.unnest(ARRAY['guard', 'dml', 'sync']) AS k;
            END IF;
        ELSIF EXISTS (SELECT FROM byok.protected_columns p
                      WHERE p.table_schema = o.address_names[1] AND p.table_name = o.address_names[2]
                        AND p.column_name = o.address_names[3] AND p.state = 'protected')
              AND pg_catalog.to_regclass(pg_catalog.format('%I.%I', o.address_names[1], o.address_names[2])) IS NOT NULL THEN
            PERFORM byok.drop_table_objects(o.address_names[1]::name, o.address_names[2]::name);
            DELETE FROM byok.protected_columns p
            WHERE p.table_schema = o.address_names[1] AND p.table_name = o.address_names[2]
              AND p.column_name = o.address_names[3];
            PERFORM byok.create_table_objects(o.address_names[1]::name, o.address_names[2]::name, NULL);
        END IF;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok.on_sql_drop() FROM PUBLIC;
CREATE EVENT TRIGGER byok_sql_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED', 'ALTER TABLE')
    EXECUTE FUNCTION byok.on_sql_drop();

-- Internal helpers: not for direct use.
REVOKE ALL ON FUNCTION byok.caller_role(), byok.check_table_owner(regclass),
    byok.create_trigger_function(name, boolean, text),
    byok.object_name(text, name, name), byok.shadow_name(name), byok.base_type(oid), byok.is_bytea_type(text),
    byok.aad_sql(name[], text), byok.enc_sql(byok.protected_columns, text),
    byok.dec_sql(byok.protected_columns, text), byok.apply_acl(regclass, aclitem[], boolean),
    byok.drop_function(name), byok.drop_table_objects(name, name), byok.create_table_objects(name, name, aclitem[]),
    byok.plan_protection(regclass, name, name, text, name, boolean)
FROM PUBLIC;

-- Re-encryption and retirement of old data key versions.
CREATE FUNCTION byok_needs_reencrypt(ciphertext bytea)
RETURNS boolean
AS 'MODULE_PATHNAME', 'byok_needs_reencrypt'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION byok_reencrypt_value(ciphertext bytea, aad bytea DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'byok_reencrypt_value'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE TABLE byok.reencrypt_runs (
    table_name  text NOT NULL,
    column_name text NOT NULL,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    finished_at timestamptz,
    total       bigint NOT NULL,
    done        bigint NOT NULL,
    PRIMARY KEY (table_name, column_name)
);
REVOKE ALL ON byok.reencrypt_runs FROM PUBLIC;

CREATE VIEW byok.reencrypt_progress AS
SELECT table_name AS "table", column_name AS "column", done,
       GREATEST(total - done, 0) AS remaining,
       round(done / NULLIF(extract(epoch FROM coalesce(finished_at, updated_at) - started_at), 0))::bigint AS rows_per_second,
       started_at AS started,
       CASE WHEN finished_at IS NOT NULL THEN finished_at
            WHEN done > 0 THEN updated_at + (total - done) * ((updated_at - started_at) / done)
       END AS eta,
       finished_at AS finished
FROM byok.reencrypt_runs;

-- the privileged steps of byok_reencrypt (a procedure that commits cannot be SECURITY DEFINER)
CREATE FUNCTION byok.reencrypt_begin(tbl regclass, col name, OUT aad_sql text, OUT total bigint,
                                     OUT pages bigint, OUT step bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sch name;
    rel name;
    r byok.protected_columns;
    tuples float8;
BEGIN
    SELECT n.nspname, c.relname, c.reltuples, c.relpages INTO sch, rel, tuples, pages
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = tbl AND attname = col AND NOT attisdropped) THEN
        RAISE EXCEPTION 'column "%" of % does not exist', col, tbl USING ERRCODE = '42703';
    END IF;
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', tbl USING ERRCODE = '42501';
    END IF;
    SELECT * INTO r FROM byok.protected_columns p
    WHERE p.table_schema = sch AND p.table_name = rel AND p.column_name = col;
    aad_sql := CASE WHEN r.bind_row THEN byok.aad_sql(r.key_columns, '') ELSE 'NULL::pg_catalog.bytea' END;
    EXECUTE format('SELECT count(*) FROM %I.%I WHERE %I IS NOT NULL AND @extschema@.byok_needs_reencrypt(%I)',
                   sch, rel, col, col) INTO total;
    pages := GREATEST(pg_relation_size(tbl) / current_setting('block_size')::bigint, 1);
    step := GREATEST(1, floor(1000.0 / GREATEST(tuples / GREATEST(pages, 1), 1)))::bigint;
    INSERT INTO byok.reencrypt_runs VALUES (tbl::text, col, clock_timestamp(), clock_timestamp(), NULL, total, 0)
    ON CONFLICT (table_name, column_name) DO UPDATE
        SET started_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at, finished_at = NULL,
            total = EXCLUDED.total, done = 0;
END $$;
REVOKE ALL ON FUNCTION byok.reencrypt_begin(regclass, name) FROM PUBLIC;

CREATE FUNCTION byok.reencrypt_note(tbl regclass, col name, done bigint, finished boolean) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE byok.reencrypt_runs
    SET done = reencrypt_note.done, updated_at = clock_timestamp(),
        finished_at = CASE WHEN finished THEN clock_timestamp() END
    WHERE table_name = tbl::text AND column_name = col;
$$;
REVOKE ALL ON FUNCTION byok.reencrypt_note(regclass, name, bigint, boolean) FROM PUBLIC;

-- Rewrites every value of a column not under its scope's current data key
-- version (and current algorithm), in short batches that commit, so
-- ordinary reads and writes are never blocked for long.  Resumable: run it
-- again after an interruption and it carries on where it stopped.
CREATE PROCEDURE byok_reencrypt(tbl regclass, col name, batch_size integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    plan record;
    p bigint := 0;
    n bigint;
    done bigint := 0;
    step bigint;
BEGIN
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO plan FROM byok.reencrypt_begin(tbl, col);
    step := GREATEST(1, (plan.step * batch_size) / 1000);
    COMMIT;
    WHILE p < plan.pages LOOP
        EXECUTE pg_catalog.format(
            'UPDATE %s SET %I = @extschema@.byok_reencrypt_value(%I, %s) '
            'WHERE ctid >= ''(%s,0)''::tid AND ctid < ''(%s,0)''::tid '
            'AND %I IS NOT NULL AND @extschema@.byok_needs_reencrypt(%I)',
            tbl, col, col, plan.aad_sql, p, p + step, col, col);
        GET DIAGNOSTICS n = ROW_COUNT;
        done := done + n;
        p := p + step;
        PERFORM byok.reencrypt_note(tbl, col, done, false);
        RAISE NOTICE 'byok_reencrypt %.%: % of % values re-encrypted', tbl, col, done, plan.total;
        COMMIT;
    END LOOP;
    PERFORM byok.reencrypt_note(tbl, col, done, true);
    COMMIT;
END $$;
REVOKE ALL ON PROCEDURE byok_reencrypt(regclass, name, integer) FROM PUBLIC;

-- Versions below below_version stop decrypting; their wrapped keys are destroyed.
CREATE FUNCTION byok_retire_data_key(tenant text, scope text, below_version integer, force boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tid integer;
    cur integer;
    ids bigint[];
    r byok.protected_columns;
    n bigint;
BEGIN
    SELECT t.tenant_id INTO tid FROM byok.tenants t WHERE t.name = byok_retire_data_key.tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant "%" does not exist', byok_retire_data_key.tenant USING ERRCODE = 'YK001';
    END IF;
    SELECT max(d.version) INTO cur FROM byok.data_keys d
    WHERE d.tenant_id = tid AND d.scope = byok_retire_data_key.scope;
    IF cur IS NULL THEN
        RAISE EXCEPTION 'tenant "%" has no data key for scope "%"', byok_retire_data_key.tenant, byok_retire_data_key.scope
            USING ERRCODE = '22023';
    END IF;
    IF below_version > cur THEN
        RAISE EXCEPTION 'cannot retire the current data key version % of scope "%"', cur, byok_retire_data_key.scope
            USING ERRCODE = '22023', HINT = 'Rotate it first with byok_rotate_data_key().';
    END IF;
    SELECT array_agg(d.dek_id ORDER BY d.dek_id) INTO ids FROM byok.data_keys d
    WHERE d.tenant_id = tid AND d.scope = byok_retire_data_key.scope AND d.version < below_version
      AND d.wrapped_key IS NOT NULL;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    IF NOT force THEN
        FOR r IN SELECT * FROM byok.protected_columns p WHERE p.scope = byok_retire_data_key.scope LOOP
            EXECUTE format('SELECT count(*) FROM %I.%I WHERE %I IS NOT NULL '
                           'AND (''x'' || encode(substr(%I, 3, 8), ''hex''))::bit(64)::bigint = ANY ($1)',
                           r.table_schema, r.table_name, r.column_name, r.column_name) INTO n USING ids;
            IF n > 0 THEN
                RAISE EXCEPTION 'cannot retire data key versions below % of scope "%"', below_version, byok_retire_data_key.scope
                    USING ERRCODE = '55000',
                          DETAIL = format('%s.%s.%s still holds %s values sealed under them.',
                                          r.table_schema, r.table_name, r.column_name, n),
                          HINT = format('Run CALL byok_reencrypt(%L, %L) first, or pass force => true.',
                                        format('%I.%I', r.table_schema, r.table_name), r.column_name);
            END IF;
        END LOOP;
    END IF;
    INSERT INTO byok.key_events (tenant_id, tenant, event, key_kind, key_version, scope, fingerprint, detail, actor)
    SELECT tid, byok_retire_data_key.tenant, 'data_key_retired', 'dek', d.version, d.scope, d.fingerprint,
           CASE WHEN force THEN 'wrapped key destroyed (forced)' ELSE 'wrapped key destroyed' END, session_user
    FROM byok.data_keys d WHERE d.dek_id = ANY (ids) ORDER BY d.version;
    UPDATE byok.data_keys d SET wrapped_key = NULL WHERE d.dek_id = ANY (ids);
    RETURN cardinality(ids);
END $$;
REVOKE ALL ON FUNCTION byok_retire_data_key(text, text, integer, boolean) FROM PUBLIC;

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
    byok.stats, byok.tenant_status, byok.reencrypt_progress TO byok_auditor;
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
    byok_cache_flush(text), byok_revocation_drill(text),
    byok_retire_data_key(text, text, integer, boolean),
    byok_protect_column(regclass, name, name, text, name, boolean),
    byok_unprotect_column(regclass, name),
    byok.online_begin(regclass, name, name, text, name, boolean),
    byok.online_plan(regclass, name, integer), byok.online_batch(regclass, name, bigint, bigint),
    byok.online_validate(regclass, name), byok.online_finish(regclass, name),
    byok.reencrypt_begin(regclass, name), byok.reencrypt_note(regclass, name, bigint, boolean)
    TO byok_admin;
GRANT EXECUTE ON PROCEDURE
    byok_protect_column_online(regclass, name, name, text, name, boolean, integer),
    byok_reencrypt(regclass, name, integer)
    TO byok_admin;
