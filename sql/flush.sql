-- flush: wiping the cache forces a fresh unwrap by the provider.
CREATE TABLE fl AS SELECT byok_encrypt('initech', 'initech row') AS c;
SELECT byok_decrypt_text(c) FROM fl;
SELECT byok_cache_flush('initech') > 0 AS wiped_some;
SELECT byok_cache_flush('initech') AS wiped_again;
SELECT byok_decrypt_text(c) FROM fl;
SELECT byok_cache_flush() > 0 AS wiped_all;
SELECT byok_cache_flush() AS nothing_left;
SELECT try($$SELECT byok_cache_flush('nobody')$$);

-- the customer disables its key (local provider: rename the file): the
-- first unwrap that hears it locks the tenant out in every backend at once
SELECT byok_decrypt_text(c) FROM fl;
SELECT sh('mv byok_keyring/initech-cmk.key byok_keyring/initech-cmk.key.disabled');
-- (the poller or this unwrap sees it first, whichever comes first)
SELECT byok_cache_flush('initech') >= 0 AS flushed;
SELECT try_code(format('SELECT byok_decrypt_text(%L)', c)) FROM fl;
SELECT state, last_change IN ('unwrap: CMK disabled', 'poller: CMK disabled') AS why FROM byok_stats() WHERE tenant = 'initech';
-- locked out now: no provider call at all until the poller sees the key enabled
SELECT provider_calls AS calls_before FROM byok_stats() WHERE tenant = 'initech' \gset
SELECT try($$SELECT byok_encrypt('initech', 'x')$$);
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM fl;
SELECT provider_calls - :calls_before AS provider_calls_while_locked FROM byok_stats() WHERE tenant = 'initech';
-- enabled again: the poller lets the tenant back in
SELECT sh('mv byok_keyring/initech-cmk.key.disabled byok_keyring/initech-cmk.key');
SELECT wait_state('initech', 'active');
SELECT byok_decrypt_text(c) FROM fl;

-- a key file gone altogether: destroyed at once; but one answer is not
-- final: a poll that finds the key again lifts the lockout
SELECT newkey('doomed-cmk');
SELECT byok_create_tenant('doomed', 'local', 'doomed-cmk');
CREATE TABLE doomed AS SELECT byok_encrypt('doomed', 'doomed row') AS c;
SELECT sh('mv byok_keyring/doomed-cmk.key doomed-cmk.saved');
SELECT byok_cache_flush('doomed') >= 0 AS flushed;
SELECT try_code(format('SELECT byok_decrypt_text(%L)', c)) FROM doomed;
SELECT state, last_change FROM byok_stats() WHERE tenant = 'doomed';
SELECT sh('mv doomed-cmk.saved byok_keyring/doomed-cmk.key');
SELECT wait_state('doomed', 'active');
SELECT last_change FROM byok_stats() WHERE tenant = 'doomed';
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM doomed;
-- gone for good: the poller confirms it on its second answer in a row, and
-- then even if the file comes back, a destroyed key stays destroyed
SELECT sh('mv byok_keyring/doomed-cmk.key doomed-cmk.saved');
SELECT byok_cache_flush('doomed') >= 0 AS flushed;
SELECT wait_state('doomed', 'cmk_destroyed');
DO $$
BEGIN
    FOR i IN 1 .. 200 LOOP
        EXIT WHEN (SELECT last_change FROM byok_stats() WHERE tenant = 'doomed') = 'poller: CMK destruction confirmed';
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT state, last_change FROM byok_stats() WHERE tenant = 'doomed';
SELECT sh('mv doomed-cmk.saved byok_keyring/doomed-cmk.key');
SELECT pg_sleep(0.5);
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM doomed;
SELECT state FROM byok_stats() WHERE tenant = 'doomed';
DROP TABLE doomed;

-- a flush inside a transaction that holds the key: it is fetched again
BEGIN;
SELECT byok_decrypt_text(c) FROM fl;
SELECT byok_cache_flush('initech') >= 0 AS flushed;
SELECT byok_decrypt_text(c) FROM fl;
COMMIT;

SELECT event, detail ~ '^[0-9]+ cache entries wiped$' AS detail_ok
FROM byok.key_events WHERE event = 'cache_flushed' ORDER BY event_id LIMIT 3;
DROP TABLE fl;

-- the state changes reached the audit log (written by the poller's event writer)
DO $$
BEGIN
    FOR i IN 1 .. 200 LOOP
        EXIT WHEN (SELECT count(*) FROM byok.key_events
                   WHERE event IN ('cmk_disabled', 'cmk_enabled', 'cmk_destroyed')) >= 3;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT tenant, event, actor, detail ~ 'lockout took [0-9.]+ ms' AS has_lag
FROM byok.key_events WHERE event IN ('cmk_disabled', 'cmk_enabled', 'cmk_destroyed')
ORDER BY event_id;
