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
