-- coverage_auditor: what privilege_matrix and privileges leave open in
-- README's role table: byok_auditor reads byok.tenant_keys and
-- byok.data_keys "without their wrapped_key column" -- every other column,
-- column by column -- and the rest of its list, as a member would.
-- (privilege_matrix covers EXECUTE on every routine for PUBLIC, auditor
-- and admin, table privileges and wrapped_key itself.)
SELECT c.attrelid::regclass AS relation, c.attname AS column_name,
       has_column_privilege('byok_auditor', c.attrelid, c.attname, 'SELECT') AS auditor,
       has_column_privilege('byok_admin', c.attrelid, c.attname, 'SELECT') AS admin,
       has_column_privilege('public', c.attrelid, c.attname, 'SELECT') AS public,
       has_column_privilege('byok_auditor', c.attrelid, c.attname, 'INSERT, UPDATE, REFERENCES') AS auditor_writes
FROM pg_attribute c
WHERE c.attrelid IN ('byok.tenant_keys'::regclass, 'byok.data_keys'::regclass)
  AND c.attnum > 0 AND NOT c.attisdropped
ORDER BY 1, c.attnum;

CREATE ROLE cov_aud IN ROLE byok_auditor;
SET ROLE cov_aud;
-- every column but wrapped_key, in one query per table
SELECT count(*) > 0 AS reads_tenant_keys
FROM (SELECT tenant_id, version, provider, key_ref, fingerprint, created_at FROM byok.tenant_keys) k;
SELECT count(*) > 0 AS reads_data_keys
FROM (SELECT dek_id, tenant_id, scope, version, tk_version, encryptions, fingerprint, created_at FROM byok.data_keys) d;
SELECT try($$SELECT * FROM byok.tenant_keys$$);
SELECT try($$SELECT * FROM byok.data_keys$$);
-- the rest of README's list
SELECT count(*) >= 0 AS reads_protected_columns FROM byok.protected_columns;
SELECT count(*) >= 0 AS reads_reencrypt_runs FROM byok.reencrypt_runs;
SELECT count(*) >= 0 AS reads_reencrypt_progress FROM byok.reencrypt_progress;
SELECT count(*) > 0 AS calls_byok_stats FROM byok_stats();
SELECT pid IS NOT NULL AS calls_poller_status FROM byok_poller_status();
-- and changes nothing
SELECT try($$UPDATE byok.tenants SET state = 'revoked' WHERE name = 'acme'$$);
SELECT try($$DELETE FROM byok.key_events$$);
SELECT try($$UPDATE byok.data_keys SET encryptions = 0$$);
SELECT try($$INSERT INTO byok.tenant_keys (tenant_id, version, provider, key_ref, fingerprint) VALUES (1, 99, 'local', 'k', 'f')$$);
SELECT try($$SELECT byok_revocation_drill('acme')$$);
SELECT try($$SELECT byok_validate_tenant('acme')$$);
RESET ROLE;
DROP ROLE cov_aud;
