-- rotate: new data key versions; old values still decrypt.
CREATE TABLE rot AS SELECT 1 AS gen, byok_encrypt('globex', 'before rotation') AS c;
SELECT (byok_ciphertext_info(c)).key_version FROM rot;
SELECT byok_rotate_data_key('globex');
INSERT INTO rot SELECT 2, byok_encrypt('globex', 'after rotation');
SELECT byok_rotate_data_key('globex', 'default');
INSERT INTO rot SELECT 3, byok_encrypt('globex', 'after second rotation');
SELECT gen, (byok_ciphertext_info(c)).key_version, byok_decrypt_text(c) FROM rot ORDER BY gen;
-- a rotation inside a transaction is used at once by that transaction
BEGIN;
SELECT byok_rotate_data_key('globex');
SELECT (byok_ciphertext_info(byok_encrypt('globex', 'x'))).key_version;
ROLLBACK;
SELECT (byok_ciphertext_info(byok_encrypt('globex', 'x'))).key_version;
-- a new scope: rotation creates version 1 then 2
SELECT byok_rotate_data_key('globex', 'fresh-scope');
SELECT byok_rotate_data_key('globex', 'fresh-scope');
SELECT (byok_ciphertext_info(byok_encrypt('globex', 'x', 'fresh-scope'))).key_version;
SELECT try($$SELECT byok_rotate_data_key('nobody')$$);
SELECT try($$SELECT byok_rotate_data_key('globex', '')$$);
SELECT event, scope, key_version FROM byok.key_events
WHERE tenant = 'globex' AND event LIKE 'data_key%' ORDER BY event_id;
DROP TABLE rot;
