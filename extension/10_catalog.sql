/* byok--1.1.sql: built by the Makefile from extension/[0-9]*.sql (edit those) */

\echo Use "CREATE EXTENSION byok" to load this file. \quit

-- extension/10_catalog.sql — the catalog: schema byok, the tables of
-- tenants, tenant keys, data keys, the audit log and the declared scopes,
-- the trigger that wipes cached keys when catalog rows vanish, and which of
-- these tables pg_dump dumps.
--
-- byok--1.1.sql, the script CREATE EXTENSION byok runs, is the parts
-- extension/[0-9]*.sql concatenated in the order of BYOK_SQL_PARTS in the
-- Makefile (test/t/019_install_script.pl checks it); only this first part
-- has the echo line above.  Each object is created in its 1.1 definition.
-- The other way to 1.1 is the released byok--1.0.sql (never edited)
-- followed by the update byok--1.0--1.1.sql; test/t/011_upgrade.pl checks
-- that both end with the same objects, definitions and privileges.

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

-- Declared scopes: byok makes data keys only for these (and 'default'),
-- so no caller of byok_encrypt can make it write a catalog row for every
-- string it invents.  A protected column's scope is declared by its row in
-- byok.protected_columns; an administrator declares others
-- (byok_declare_scope).  (The update from 1.0 declares the scopes in use.)
CREATE TABLE byok.scopes (
    scope       text PRIMARY KEY
                CHECK (pg_catalog.octet_length(scope) OPERATOR(pg_catalog.<=) 255
                       AND pg_catalog.octet_length(scope) OPERATOR(pg_catalog.>=) 1
                       AND scope OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
    declared_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    declared_by name NOT NULL
);
COMMENT ON TABLE byok.scopes IS 'byok: the scopes data keys may be made for (''default'' always may)';
REVOKE ALL ON byok.scopes FROM PUBLIC;

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

-- On a Citus worker, the coordinator's revocations, destructions, tenant-key
-- rotations and rewraps arrive as Citus's UPDATE of this node's copy of
-- byok.tenants: this trigger locks the tenant out, or wipes its keys, at
-- PREPARE (src/catalog/citus.c).  Elsewhere it does nothing.
CREATE FUNCTION byok.tenant_state_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'byok_tenant_state_changed'
LANGUAGE C;
REVOKE ALL ON FUNCTION byok.tenant_state_changed() FROM PUBLIC;
CREATE TRIGGER tenant_state_changed AFTER UPDATE OF state, tk_version, provider, key_ref ON byok.tenants
    FOR EACH ROW EXECUTE FUNCTION byok.tenant_state_changed();

-- On a Citus worker only Citus's own backends write the catalog tables it
-- replicates (src/catalog/citus.c); elsewhere this does nothing.
CREATE FUNCTION byok.catalog_write_check() RETURNS trigger
AS 'MODULE_PATHNAME', 'byok_catalog_write_check'
LANGUAGE C;
REVOKE ALL ON FUNCTION byok.catalog_write_check() FROM PUBLIC;
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.tenant_keys
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.data_keys
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.scopes
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();

SELECT pg_catalog.pg_extension_config_dump('byok.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('byok.tenant_keys', '');
SELECT pg_catalog.pg_extension_config_dump('byok.data_keys', '');
SELECT pg_catalog.pg_extension_config_dump('byok.key_events', '');
SELECT pg_catalog.pg_extension_config_dump('byok.tenants_tenant_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('byok.data_keys_dek_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('byok.key_events_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('byok.scopes', '');
