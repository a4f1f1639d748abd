-- reencrypt: moving data to the current key version and algorithm, online; retiring old versions.
CREATE TABLE re (id int PRIMARY KEY, tenant text NOT NULL, secret text);
INSERT INTO re SELECT i, (ARRAY['acme', 'initech'])[1 + i % 2], 'secret ' || i FROM generate_series(1, 400) i;
SELECT byok_protect_column('re', 'secret', 'tenant', bind_row => true);
SELECT byok_rotate_data_key('acme', 'public.re.secret'), byok_rotate_data_key('initech', 'public.re.secret');
UPDATE re_decrypted SET secret = secret || '!' WHERE id <= 10;
SELECT (byok_ciphertext_info(secret)).key_version, count(*) FROM re GROUP BY 1 ORDER BY 1;
SELECT count(*) FILTER (WHERE byok_needs_reencrypt(secret)) AS need FROM re;
-- retiring version 1 is refused while the column still holds values under it
SELECT try($$SELECT byok_retire_data_key('acme', 'public.re.secret', 2)$$);
SELECT try($$SELECT byok_retire_data_key('acme', 'public.re.secret', 3)$$);
-- re-encrypt in small batches (each commits)
SET client_min_messages = warning;
CALL byok_reencrypt('re', 'secret', 50);
RESET client_min_messages;
SELECT (byok_ciphertext_info(secret)).key_version, count(*) FROM re GROUP BY 1 ORDER BY 1;
SELECT "table", "column", done, remaining, finished IS NOT NULL AS finished, eta IS NOT NULL AS has_eta
FROM byok.reencrypt_progress;
SELECT count(*) FILTER (WHERE secret = 'secret ' || id OR secret = 'secret ' || id || '!') AS intact FROM re_decrypted;
-- run again: nothing left to do
SET client_min_messages = warning;
CALL byok_reencrypt('re', 'secret', 50);
RESET client_min_messages;
SELECT done, remaining FROM byok.reencrypt_progress;
-- now version 1 can be retired; values under it would no longer decrypt
SELECT byok_retire_data_key('acme', 'public.re.secret', 2);
SELECT byok_retire_data_key('acme', 'public.re.secret', 2);
SELECT count(*) FROM re_decrypted WHERE tenant = 'acme';
SELECT event, key_version, scope, detail FROM byok.key_events WHERE event = 'data_key_retired';
-- force: a plain column still holding old ciphertext
CREATE TABLE re_plain AS SELECT byok_encrypt('initech', 'old', 'plain.scope') AS c;
SELECT byok_rotate_data_key('initech', 'plain.scope');
SELECT byok_retire_data_key('initech', 'plain.scope', 2);
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM re_plain;
-- the algorithm counts too: switching it makes every value need re-encryption
SET byok.algorithm = 'chacha20-poly1305';
SELECT count(*) FILTER (WHERE byok_needs_reencrypt(secret)) AS need_after_switch FROM re;
SET client_min_messages = warning;
CALL byok_reencrypt('re', 'secret', 100);
RESET client_min_messages;
SELECT (byok_ciphertext_info(secret)).algorithm, count(*) FROM re GROUP BY 1;
RESET byok.algorithm;
SELECT count(*) FILTER (WHERE secret LIKE 'secret %') AS readable FROM re_decrypted;
-- copied to another row: it no longer decrypts there (row binding survives re-encryption)
UPDATE re SET secret = (SELECT secret FROM re WHERE id = 3) WHERE id = 1;
SELECT try($$SELECT secret FROM re_decrypted WHERE id = 1$$);
UPDATE re SET secret = byok_encrypt('initech', 'secret 1', 'public.re.secret', convert_to('1', 'UTF8')) WHERE id = 1;
SELECT secret FROM re_decrypted WHERE id = 1;
SELECT try($$CALL byok_reencrypt('re', 'nosuchcolumn')$$);
DROP TABLE re_plain;
SELECT byok_unprotect_column('re', 'secret');
DROP TABLE re;
