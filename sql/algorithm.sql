-- algorithm: the format's algorithm byte selects the AEAD; old values stay readable.
CREATE TABLE alg (i int, c bytea);
INSERT INTO alg SELECT i, byok_encrypt('acme', 'aes ' || i) FROM generate_series(1, 5) i;
SET byok.algorithm = 'chacha20-poly1305';
SHOW byok.algorithm;
INSERT INTO alg SELECT i, byok_encrypt('acme', 'chacha ' || i) FROM generate_series(6, 10) i;
-- both side by side, in one query
SELECT (byok_ciphertext_info(c)).algorithm, count(*), count(*) FILTER (WHERE byok_decrypt_text(c) ~ '^(aes|chacha) [0-9]+$') AS decrypt
FROM alg GROUP BY 1 ORDER BY 1;
SELECT get_byte(c, 1) AS algorithm_byte, length(c) - length(byok_decrypt(c)) AS overhead FROM alg WHERE i IN (1, 6) ORDER BY i;
-- the same protections: tampering and wrong AAD are refused
SELECT try(format('SELECT byok_decrypt(%L)', set_byte(c, 30, get_byte(c, 30) # 1))) FROM alg WHERE i = 6;
SELECT try($$SELECT byok_decrypt(byok_encrypt('acme', 'x', 'default', '\x01'), '\x02')$$);
SELECT byok_decrypt_text(byok_encrypt('acme', 'with aad', 'default', '\x01'), '\x01');
-- only a superuser (or a role it sets it for) chooses
CREATE ROLE alg_user;
SET ROLE alg_user;
SELECT try($$SET byok.algorithm = 'aes-256-gcm'$$);
RESET ROLE;
DROP ROLE alg_user;
RESET byok.algorithm;
SELECT (byok_ciphertext_info(byok_encrypt('acme', 'x'))).algorithm;
-- an unknown algorithm byte is malformed
SELECT try(format('SELECT byok_decrypt(%L)', set_byte(c, 1, 3))) FROM alg WHERE i = 1;
DROP TABLE alg;
