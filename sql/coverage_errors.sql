-- coverage_errors: SQLSTATEs of README's error-code table that no other
-- suite provokes the way README says they arise: XX001 for a wrapped data
-- key of the right length that does not authenticate under its tenant key,
-- an unknown tenant state and a tenant name over its limit; 40001 for two
-- sessions creating a scope's first data key at once under REPEATABLE READ;
-- 25001 for byok_rotate_tenant_key outside READ COMMITTED.
SELECT newkey('cov-e-cmk');
SELECT byok_create_tenant('cov-e', 'local', 'cov-e-cmk');
CREATE TABLE cove AS SELECT byok_encrypt('cov-e', 'e row') AS c;
-- SQLSTATE and message, ids masked
CREATE FUNCTION try_masked(stmt text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(try(stmt), '(data key|dek_id|tenant id) [0-9]+', '\1 N', 'g');
$$;

-- XX001: a wrapped data key of the right length with one bit flipped does
-- not authenticate under the tenant key (rewriting it wipes the cache at
-- commit, so the next use unwraps it)
UPDATE byok.data_keys SET wrapped_key = set_byte(wrapped_key, 30, get_byte(wrapped_key, 30) # 1)
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-e');
SELECT length(wrapped_key) FROM byok.data_keys
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-e');
SELECT try_masked($$SELECT byok_decrypt_text(c) FROM cove$$);
SELECT try_masked($$SELECT byok_encrypt('cov-e', 'x')$$);
UPDATE byok.data_keys SET wrapped_key = set_byte(wrapped_key, 30, get_byte(wrapped_key, 30) # 1)
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-e');
SELECT byok_decrypt_text(c) FROM cove;

-- XX001: a tenant state none of the three (only possible with the check
-- constraint gone; all of it rolled back)
BEGIN;
ALTER TABLE byok.tenants DROP CONSTRAINT tenants_state_check;
UPDATE byok.tenants SET state = 'suspended' WHERE name = 'cov-e';
SELECT byok_cache_flush() >= 0 AS flushed;
SELECT try_masked($$SELECT byok_cache_flush('cov-e')$$);
SELECT try_masked($$SELECT byok_decrypt_text(c) FROM cove$$);
SELECT try_masked($$SELECT byok_encrypt('cov-e', 'x')$$);
ROLLBACK;
SELECT byok_decrypt_text(c) FROM cove;

-- XX001: a tenant name over its limit (63 characters), as a decrypt reads
-- it through the data key's row
BEGIN;
UPDATE byok.tenants SET name = repeat('n', 64) WHERE name = 'cov-e';
SELECT byok_cache_flush() >= 0 AS flushed;
SELECT try_masked($$SELECT byok_decrypt_text(c) FROM cove$$);
ROLLBACK;
SELECT byok_decrypt_text(c) FROM cove;

-- 40001: two sessions create a scope's first data key at once under
-- REPEATABLE READ.  The other session (dblink) takes its snapshot, this one
-- creates the key and holds it uncommitted, the other's creation waits for
-- it and fails when this one commits.
CREATE EXTENSION dblink;
SELECT byok_declare_scope('cov.race'), byok_declare_scope('cov.race2'), byok_declare_scope('cov.race3');
SELECT dblink_connect('other', format('host=%s port=%s dbname=%s',
    split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'), current_database()));
SELECT set_config('cov.other_pid', pid::text, false) IS NOT NULL AS other_pid_known
FROM dblink('other', 'SELECT pg_backend_pid()') AS o(pid int);
SELECT dblink_exec('other', 'BEGIN ISOLATION LEVEL REPEATABLE READ');
SELECT * FROM dblink('other', $$SELECT count(*) FROM byok.data_keys WHERE scope = 'cov.race'$$) AS o(deks_in_snapshot bigint);
BEGIN;
SELECT length(byok_encrypt('cov-e', 'mine', 'cov.race')) AS mine_sealed;
SELECT dblink_send_query('other', $$SELECT byok_encrypt('cov-e', 'other', 'cov.race')$$);
DO $$
BEGIN
    FOR i IN 1 .. 500 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM pg_locks WHERE pid = current_setting('cov.other_pid')::int AND NOT granted);
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;
SELECT locktype FROM pg_locks WHERE pid = current_setting('cov.other_pid')::int AND NOT granted;
COMMIT;
SELECT try_masked($$SELECT * FROM dblink_get_result('other') AS o(c bytea)$$);
SELECT * FROM dblink_get_result('other') AS o(c bytea);
SELECT dblink_exec('other', 'ROLLBACK');
-- the same when the other session committed its key after this REPEATABLE
-- READ (or SERIALIZABLE) transaction took its snapshot
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) AS deks_in_snapshot FROM byok.data_keys WHERE scope = 'cov.race2';
SELECT length(c) AS other_sealed FROM dblink('other', $$SELECT byok_encrypt('cov-e', 'other', 'cov.race2')$$) AS o(c bytea);
SELECT try_masked($$SELECT byok_encrypt('cov-e', 'mine', 'cov.race2')$$);
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT count(*) AS deks_in_snapshot FROM byok.data_keys WHERE scope = 'cov.race3';
SELECT length(c) AS other_sealed FROM dblink('other', $$SELECT byok_encrypt('cov-e', 'other', 'cov.race3')$$) AS o(c bytea);
SELECT try_masked($$SELECT byok_encrypt('cov-e', 'mine', 'cov.race3')$$);
ROLLBACK;
SELECT dblink_disconnect('other');
DROP EXTENSION dblink;
-- retried, it uses the other session's key: one data key per scope version
SELECT byok_decrypt_text(byok_encrypt('cov-e', 'mine', 'cov.race2')) AS retried;
SELECT scope, version, count(*) FROM byok.data_keys
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-e') AND scope LIKE 'cov.race%'
GROUP BY 1, 2 ORDER BY 1, 2;

-- 25001: byok_rotate_tenant_key outside READ COMMITTED
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT try_masked($$SELECT byok_rotate_tenant_key('cov-e')$$);
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT try_masked($$SELECT byok_rotate_tenant_key('cov-e')$$);
ROLLBACK;
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT byok_rotate_tenant_key('cov-e') AS tk_version;
COMMIT;
SELECT byok_decrypt_text(c) FROM cove;

DROP TABLE cove;
DROP FUNCTION try_masked(text);
-- settings that reach a URL, a header or a host name refuse control
-- characters (a newline would start another HTTP header)
ALTER SYSTEM SET byok.vault_namespace = E'team\tX-Vault-Token: stolen';
ALTER SYSTEM SET byok.aws_region = E'eu-west-1\x7f';
ALTER SYSTEM SET byok.vault_mount = 'transit';
ALTER SYSTEM RESET byok.vault_mount;
