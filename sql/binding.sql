-- binding: byok.tenant restricts a session to one tenant.
CREATE TABLE bound AS
SELECT 'acme' AS tenant, byok_encrypt('acme', 'acme secret') AS c
UNION ALL SELECT 'globex', byok_encrypt('globex', 'globex secret');

SET byok.tenant = 'acme';
SHOW byok.tenant;
SELECT byok_decrypt_text(c) FROM bound WHERE tenant = 'acme';
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM bound WHERE tenant = 'globex';
SELECT byok_decrypt_text(byok_encrypt('acme', 'fine'));
SELECT try($$SELECT byok_encrypt('globex', 'not allowed')$$);
SELECT try($$SELECT byok_encrypt('nobody', 'not allowed either')$$);
-- a transaction that already holds globex's key is refused too once bound
RESET byok.tenant;
BEGIN;
SELECT byok_decrypt_text(c) FROM bound WHERE tenant = 'globex';
SET LOCAL byok.tenant = 'acme';
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM bound WHERE tenant = 'globex';
SELECT byok_decrypt_text(c) FROM bound WHERE tenant = 'acme';
COMMIT;
SHOW byok.tenant;

SET byok.tenant = 'globex';
SELECT byok_decrypt_text(c) FROM bound WHERE tenant = 'globex';
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM bound WHERE tenant = 'acme';
SELECT try($$SELECT byok_encrypt('acme', 'no')$$);
-- unbound again: both work
RESET byok.tenant;
SELECT tenant, byok_decrypt_text(c) FROM bound ORDER BY tenant;
SELECT try($$SET byok.tenant = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'$$);
DROP TABLE bound;
