-- extension/60_observability.sql — observability: byok_stats() and the view
-- byok.stats over it, the view byok.tenant_status (catalog state, live
-- state and health per tenant), byok_poller_status() and the revocation
-- drill byok_revocation_drill().  C functions of src/sql/stats.c, not
-- executable by PUBLIC; 70_roles.sql grants them.

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
