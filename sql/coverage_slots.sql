-- coverage_slots: byok.max_tenants (100 in test/regress.conf).  "An idle,
-- active tenant's slot is reused when full": 110 tenants used one after
-- the other, each idle again (cache flushed) before the next, all work
-- while shared memory never holds more than 100.  When every slot is busy
-- (cached keys, open handles or a lockout) the next tenant is refused with
-- 53400 (configuration_limit_exceeded); freeing one slot lets it in.
-- The tenants share one CMK, so the poller's registry is not what fills.
SELECT newkey('cov-s-cmk');
SELECT count(byok_create_tenant('cov-s' || i, 'local', 'cov-s-cmk')) AS created
FROM generate_series(1, 110) AS i;
SELECT current_setting('byok.max_tenants') AS max_tenants;

-- reuse: each tenant in its own transaction, flushed after use
DO $$
BEGIN
    FOR i IN 1 .. 110 LOOP
        IF byok_decrypt_text(byok_encrypt('cov-s' || i, 'row ' || i)) IS DISTINCT FROM 'row ' || i THEN
            RAISE EXCEPTION 'cov-s% round trip failed', i;
        END IF;
        PERFORM byok_cache_flush('cov-s' || i);
        COMMIT;
    END LOOP;
END $$;
SELECT count(*) <= 100 AS within_max_tenants, count(*) FILTER (WHERE tenant LIKE 'cov-s%') < 110 AS some_reused
FROM byok_stats();
-- cov-s1's slot went to a later tenant: using it again takes a slot anew,
-- with fresh counters
SELECT count(*) AS cov_s1_slots FROM byok_stats() WHERE tenant = 'cov-s1';
SELECT byok_decrypt_text(byok_encrypt('cov-s1', 'again'));
SELECT cached_keys, provider_calls, cache_misses FROM byok_stats() WHERE tenant = 'cov-s1';

-- all busy: tenants keep their keys cached until one is refused
CREATE TABLE cov_busy (i int, failed text);
DO $$
DECLARE
    msg text;
BEGIN
    FOR i IN 1 .. 110 LOOP
        BEGIN
            PERFORM byok_encrypt('cov-s' || i, 'busy');
        EXCEPTION WHEN OTHERS THEN
            msg := SQLSTATE || ': ' || SQLERRM;
            INSERT INTO cov_busy VALUES (i, msg);
            RETURN;
        END;
        INSERT INTO cov_busy VALUES (i, NULL);
        COMMIT;
    END LOOP;
END $$;
SELECT failed FROM cov_busy WHERE failed IS NOT NULL;
SELECT count(*) AS slots,
       count(*) FILTER (WHERE cached_keys > 0 OR open_handles > 0 OR state <> 'active') AS busy
FROM byok_stats();
-- one tenant idle again: the refused tenant takes its slot
SELECT byok_cache_flush('cov-s1') > 0 AS freed;
SELECT byok_decrypt_text(byok_encrypt('cov-s' || i, 'now in')) FROM cov_busy WHERE failed IS NOT NULL;
SELECT count(*) AS cov_s1_slots FROM byok_stats() WHERE tenant = 'cov-s1';

-- leave every slot idle
SELECT count(byok_cache_flush('cov-s' || i) >= 0) AS flushed FROM generate_series(1, 110) AS i;
DROP TABLE cov_busy;
