-- coverage_cache: the shared key cache's promises (README "What byok
-- guarantees", "How it works", byok.cache_ttl, the catalog), each checked
-- by what byok_stats() counts: cached keys wiped at a lockout (administrator
-- and poller), the negative cache, byok.cache_ttl (0 and a short TTL), and
-- the wipe after catalog rows are deleted or rewrapped by hand.
SELECT newkey('cov-a-cmk'), newkey('cov-b-cmk'), newkey('cov-c-cmk');
SELECT byok_create_tenant('cov-a', 'local', 'cov-a-cmk');
SELECT byok_create_tenant('cov-b', 'local', 'cov-b-cmk');
SELECT byok_create_tenant('cov-c', 'local', 'cov-c-cmk');
CREATE TABLE cov AS
SELECT 'cov-a' AS tenant, byok_encrypt('cov-a', 'a row') AS c
UNION ALL SELECT 'cov-b', byok_encrypt('cov-b', 'b row')
UNION ALL SELECT 'cov-c', byok_encrypt('cov-c', 'c row');
-- per tenant: cached keys, and the counters since the last snap()
CREATE TABLE cov_snap AS
SELECT tenant, cache_hits, cache_misses, provider_calls FROM byok_stats() WHERE false;
CREATE FUNCTION snap() RETURNS void LANGUAGE sql AS $$
    DELETE FROM cov_snap;
    INSERT INTO cov_snap SELECT tenant, cache_hits, cache_misses, provider_calls
    FROM byok_stats() WHERE tenant LIKE 'cov-%';
$$;
CREATE VIEW cov_stats AS
SELECT s.tenant, s.state, s.cached_keys, s.cache_hits - p.cache_hits AS hits,
       s.cache_misses - p.cache_misses AS misses, s.provider_calls - p.provider_calls AS calls
FROM byok_stats() s JOIN cov_snap p USING (tenant) ORDER BY s.tenant;

-- 1. a lockout wipes the tenant's cached keys, and only the tenant's
-- 1a. an administrator's revocation
SELECT count(byok_decrypt(c)) FROM cov;
SELECT snap();
SELECT tenant, state, cached_keys FROM cov_stats;
SELECT byok_revoke_tenant('cov-a');
SELECT tenant, state, cached_keys, last_change, last_purged
FROM byok_stats() WHERE tenant LIKE 'cov-%' ORDER BY 1;
-- the bystanders are still served from the cache: a hit, no provider call
SELECT count(byok_decrypt(c)) FROM cov WHERE tenant <> 'cov-a';
SELECT * FROM cov_stats;
SELECT byok_reinstate_tenant('cov-a');

-- 1b. the customer disables its key and the poller sees it (no backend
--     touches cov-a meanwhile, so the poller is the one that locks it out)
SELECT count(byok_decrypt(c)) FROM cov;
SELECT snap();
SELECT tenant, state, cached_keys FROM cov_stats;
SELECT sh('mv byok_keyring/cov-a-cmk.key byok_keyring/cov-a-cmk.key.disabled');
SELECT wait_state('cov-a', 'cmk_disabled');
SELECT tenant, state, cached_keys, last_change, last_purged
FROM byok_stats() WHERE tenant LIKE 'cov-%' ORDER BY 1;
SELECT count(byok_decrypt(c)) FROM cov WHERE tenant <> 'cov-a';
SELECT * FROM cov_stats;
SELECT sh('mv byok_keyring/cov-a-cmk.key.disabled byok_keyring/cov-a-cmk.key');
SELECT wait_state('cov-a', 'active');

-- 2. the negative cache: a provider that just failed as unavailable is not
--    called again for a second.  The keyring folder goes away (the local
--    provider is then unavailable, YK005); the first unwrap calls it, the
--    second does not, and neither does a third once the folder is back.
--    All within one statement, so well inside the second.
CREATE FUNCTION cov_unwrap_fails() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    PERFORM byok_decrypt(c) FROM cov WHERE tenant = 'cov-b';
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || CASE WHEN detail LIKE '%failed less than a second ago%'
                            THEN ' (negative cache)' ELSE ' (provider: ' || split_part(detail, ':', 1) || ')' END;
END $$;
CREATE FUNCTION cov_negative_cache(OUT attempt int, OUT result text, OUT calls bigint) RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    calls0 bigint;
    t0 timestamptz;
BEGIN
    SELECT provider_calls INTO calls0 FROM byok_stats() WHERE tenant = 'cov-b';
    PERFORM sh('mv byok_keyring byok_keyring.away');
    t0 := clock_timestamp();
    attempt := 1; result := cov_unwrap_fails();
    SELECT provider_calls - calls0 INTO calls FROM byok_stats() WHERE tenant = 'cov-b';
    RETURN NEXT;
    attempt := 2; result := cov_unwrap_fails();
    SELECT provider_calls - calls0 INTO calls FROM byok_stats() WHERE tenant = 'cov-b';
    RETURN NEXT;
    PERFORM sh('mv byok_keyring.away byok_keyring');
    attempt := 3; result := cov_unwrap_fails();
    SELECT provider_calls - calls0 INTO calls FROM byok_stats() WHERE tenant = 'cov-b';
    RETURN NEXT;
    IF clock_timestamp() - t0 >= interval '0.9 s' THEN
        RAISE WARNING 'the three attempts took % (more than the negative cache lasts)', clock_timestamp() - t0;
    END IF;
END $$;
SELECT byok_cache_flush('cov-b');
SELECT * FROM cov_negative_cache();
-- a second later the provider is called again, and answers
SELECT pg_sleep(1.1);
SELECT snap();
SELECT cov_unwrap_fails();
SELECT * FROM cov_stats WHERE tenant = 'cov-b';

-- 3. byok.cache_ttl
-- 3a. 0: nothing is cached, every transaction unwraps through the provider
ALTER SYSTEM SET byok.cache_ttl = 0;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW byok.cache_ttl;
SELECT byok_cache_flush('cov-c');
SELECT snap();
SELECT byok_decrypt_text(c) FROM cov WHERE tenant = 'cov-c';
SELECT byok_decrypt_text(c) FROM cov WHERE tenant = 'cov-c';
SELECT byok_decrypt_text(c) FROM cov WHERE tenant = 'cov-c';
SELECT * FROM cov_stats WHERE tenant = 'cov-c';
-- 3b. 1 s: a use within the TTL is a hit; the entry then expires (the
--     poller sweeps it away) and the next use is a miss again
ALTER SYSTEM SET byok.cache_ttl = 1;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW byok.cache_ttl;
SELECT snap();
SELECT byok_decrypt_text(c) FROM cov WHERE tenant = 'cov-c';
SELECT byok_decrypt_text(c) FROM cov WHERE tenant = 'cov-c';
SELECT * FROM cov_stats WHERE tenant = 'cov-c';
SELECT pg_sleep(1.5);
SELECT snap();
SELECT * FROM cov_stats WHERE tenant = 'cov-c';
SELECT byok_decrypt_text(c) FROM cov WHERE tenant = 'cov-c';
SELECT * FROM cov_stats WHERE tenant = 'cov-c';
ALTER SYSTEM RESET byok.cache_ttl;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW byok.cache_ttl;

-- 5. catalog rows deleted by hand, or a wrapped data key replaced, wipe
--    every cached key of the database when the transaction commits
-- 5a. a data key row deleted: its values no longer decrypt, though the
--     key was cached a moment before
SELECT byok_rotate_data_key('cov-a') AS v;
INSERT INTO cov SELECT 'cov-a v2', byok_encrypt('cov-a', 'a row v2');
SELECT count(byok_decrypt(c)) FROM cov;
SELECT snap();
SELECT tenant, cached_keys FROM cov_stats;
BEGIN;
DELETE FROM byok.data_keys
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-a') AND version = 2
RETURNING scope, version;
-- not yet committed: nothing wiped
SELECT tenant, cached_keys FROM cov_stats;
COMMIT;
SELECT tenant, cached_keys FROM cov_stats;
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) IS NOT DISTINCT FROM
       format('YK010: malformed byok ciphertext | No data key with id %s exists in this database.',
              (byok_ciphertext_info(c)).dek_id) AS deleted_key_refused
FROM cov WHERE tenant = 'cov-a v2';
DELETE FROM cov WHERE tenant = 'cov-a v2';
-- 5b. a delete that rolls back wipes nothing
SELECT count(byok_decrypt(c)) FROM cov;
BEGIN;
SELECT count(*) AS rows_to_delete FROM byok.data_keys
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-a');
DELETE FROM byok.data_keys
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-a');
ROLLBACK;
SELECT tenant, cached_keys FROM cov_stats;
-- 5c. a wrapped data key rewritten by hand (here: with itself)
UPDATE byok.data_keys SET wrapped_key = wrapped_key
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-b')
RETURNING scope, version;
SELECT tenant, cached_keys FROM cov_stats;
-- 5d. a tenant key row deleted (an old, rotated-away version)
SELECT byok_rotate_tenant_key('cov-c') AS tk_version;
SELECT count(byok_decrypt(c)) FROM cov;
SELECT tenant, cached_keys FROM cov_stats;
DELETE FROM byok.tenant_keys
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'cov-c') AND version = 1
RETURNING version, wrapped_key IS NULL AS wrapped_key_gone;
SELECT tenant, cached_keys FROM cov_stats;
SELECT count(byok_decrypt(c)) FROM cov;
-- 5e. a tenant row deleted (its keys go with it)
SELECT tenant, cached_keys FROM cov_stats;
DELETE FROM byok.tenants WHERE name = 'cov-c' RETURNING name;
SELECT tenant, cached_keys FROM cov_stats;
SELECT count(byok_decrypt(c)) FROM cov WHERE tenant <> 'cov-c';
SELECT try_code(format('SELECT byok_decrypt_text(%L)', c)) FROM cov WHERE tenant = 'cov-c';

DROP VIEW cov_stats;
DROP TABLE cov, cov_snap;
DROP FUNCTION snap(), cov_unwrap_fails(), cov_negative_cache();
