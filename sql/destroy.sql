-- destroy: crypto-shredding with a destruction certificate and the ledger.
SELECT newkey('shred-cmk');
SELECT byok_create_tenant('shred', 'local', 'shred-cmk');
CREATE TABLE shred AS SELECT i, byok_encrypt('shred', 'doomed ' || i, 'shred.data') AS c FROM generate_series(1, 5) i;
SELECT byok_rotate_data_key('shred', 'shred.data');
SELECT count(byok_decrypt(c)) FROM shred;
ALTER SYSTEM SET byok.destruction_ledger = 'destruction.ledger';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);

-- the certificate: what was destroyed, by whom, fingerprints, and what remains
SELECT byok_destroy_tenant('shred') AS cert \gset
SELECT :'cert'::jsonb ->> 'certificate' AS certificate, :'cert'::jsonb ->> 'tenant' AS tenant,
       :'cert'::jsonb ->> 'provider' AS provider, :'cert'::jsonb ->> 'key_ref' AS key_ref,
       :'cert'::jsonb ->> 'destroyed_by' AS destroyed_by,
       jsonb_array_length(:'cert'::jsonb -> 'tenant_keys') AS tenant_keys,
       jsonb_array_length(:'cert'::jsonb -> 'data_keys') AS data_keys,
       (SELECT bool_and(k ->> 'wrapped_key_sha256' ~ '^[0-9a-f]{64}$')
        FROM jsonb_array_elements(:'cert'::jsonb -> 'tenant_keys' || (:'cert'::jsonb -> 'data_keys')) k) AS sha256_fingerprints,
       :'cert'::jsonb ->> 'what_remains' LIKE 'Backups, dumps and replicas taken before%' AS states_what_remains;
-- no key material anywhere in it
SELECT :'cert' !~ 'wrapped_key"\s*:\s*"' AS no_wrapped_keys;
-- the keys are gone; the tenant and its rows' metadata stay as tombstones
SELECT state FROM byok.tenants WHERE name = 'shred';
SELECT count(*) AS rows, count(wrapped_key) AS wrapped_keys_left
FROM byok.data_keys d JOIN byok.tenants t USING (tenant_id) WHERE t.name = 'shred';
SELECT count(wrapped_key) AS tenant_keys_left FROM byok.tenant_keys k JOIN byok.tenants t USING (tenant_id) WHERE t.name = 'shred';
SELECT try(format('SELECT byok_decrypt(%L)', c)) FROM shred WHERE i = 1;
SELECT try($$SELECT byok_encrypt('shred', 'x')$$);
SELECT try($$SELECT byok_encrypt('shred', 'x', 'new-scope')$$);
SELECT try($$SELECT byok_rotate_data_key('shred')$$);
SELECT try($$SELECT byok_reinstate_tenant('shred')$$);
SELECT try($$SELECT byok_destroy_tenant('shred')$$);
SELECT (byok_ciphertext_info(c)).tenant, (byok_ciphertext_info(c)).scope FROM shred WHERE i = 1;
SELECT state FROM byok_stats() WHERE tenant = 'shred';
-- the audit log holds the certificate
SELECT event, (detail::jsonb ->> 'tenant') AS tenant FROM byok.key_events WHERE event = 'tenant_destroyed';
-- the ledger got the destroyed tenant key's fingerprint
SELECT count(*) AS ledger_lines,
       bool_and(split_part(l, ' ', 1) = (SELECT k ->> 'wrapped_key_sha256' FROM jsonb_array_elements(:'cert'::jsonb -> 'tenant_keys') k))
       AS fingerprint_matches
FROM regexp_split_to_table(rtrim(pg_read_file('destruction.ledger'), E'\n'), E'\n') l;
-- a destroy that rolls back destroys nothing and writes no ledger line
SELECT newkey('keep-cmk');
SELECT byok_create_tenant('keep', 'local', 'keep-cmk');
BEGIN;
SELECT byok_destroy_tenant('keep') IS NOT NULL AS certificate_made;
ROLLBACK;
SELECT byok_decrypt_text(byok_encrypt('keep', 'still here'));
SELECT count(*) AS ledger_lines FROM regexp_split_to_table(rtrim(pg_read_file('destruction.ledger'), E'\n'), E'\n') l;
-- not for PUBLIC
CREATE ROLE shred_app;
SET ROLE shred_app;
SELECT try($$SELECT byok_destroy_tenant('keep')$$);
RESET ROLE;
DROP ROLE shred_app;
ALTER SYSTEM RESET byok.destruction_ledger;
SELECT pg_reload_conf();
DROP TABLE shred;
