-- flush: wiping the cache forces a fresh unwrap by the provider.
CREATE TABLE fl AS SELECT byok_encrypt('initech', 'initech row') AS c;
SELECT byok_decrypt_text(c) FROM fl;
SELECT byok_cache_flush('initech') > 0 AS wiped_some;
SELECT byok_cache_flush('initech') AS wiped_again;
SELECT byok_decrypt_text(c) FROM fl;
SELECT byok_cache_flush() > 0 AS wiped_all;
SELECT byok_cache_flush() AS nothing_left;
SELECT try($$SELECT byok_cache_flush('nobody')$$);

-- the customer disables its key (local provider: rename the file): cached
-- keys keep working until flushed or expired, then the provider says no
SELECT byok_decrypt_text(c) FROM fl;
SELECT sh('mv byok_keyring/initech-cmk.key byok_keyring/initech-cmk.key.disabled');
SELECT byok_decrypt_text(c) FROM fl;
SELECT byok_cache_flush('initech') > 0 AS wiped;
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM fl;
SELECT try($$SELECT byok_encrypt('initech', 'x')$$);
-- enabled again
SELECT sh('mv byok_keyring/initech-cmk.key.disabled byok_keyring/initech-cmk.key');
SELECT byok_decrypt_text(c) FROM fl;

-- the key file gone altogether: destroyed
SELECT sh('mv byok_keyring/initech-cmk.key initech-cmk.saved');
SELECT byok_cache_flush('initech') > 0 AS wiped;
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM fl;
SELECT sh('mv initech-cmk.saved byok_keyring/initech-cmk.key');
SELECT byok_decrypt_text(c) FROM fl;

-- a flush inside a transaction that holds the key: it is fetched again
BEGIN;
SELECT byok_decrypt_text(c) FROM fl;
SELECT byok_cache_flush('initech') >= 0 AS flushed;
SELECT byok_decrypt_text(c) FROM fl;
COMMIT;

SELECT event, detail ~ '^[0-9]+ cache entries wiped$' AS detail_ok
FROM byok.key_events WHERE event = 'cache_flushed' ORDER BY event_id LIMIT 3;
DROP TABLE fl;
