-- revoke: an administrator's lockout, at once, for every call; others unaffected.
CREATE TABLE rv AS
SELECT 'acme' AS tenant, byok_encrypt('acme', 'acme row') AS c
UNION ALL SELECT 'globex', byok_encrypt('globex', 'globex row');

SELECT byok_revoke_tenant('acme');
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM rv WHERE tenant = 'acme';
SELECT try($$SELECT byok_encrypt('acme', 'x')$$);
SELECT try($$SELECT byok_encrypt('acme', 'x', 'never-used-scope')$$);
SELECT try($$SELECT byok_rotate_data_key('acme')$$);
SELECT byok_decrypt_text(c) FROM rv WHERE tenant = 'globex';
SELECT byok_revoke_tenant('acme');
SELECT state FROM byok.tenants WHERE name = 'acme';

SELECT byok_reinstate_tenant('acme');
SELECT tenant, byok_decrypt_text(c) FROM rv ORDER BY tenant;
SELECT byok_reinstate_tenant('acme');

-- a revoke that rolls back changes nothing
BEGIN;
SELECT byok_revoke_tenant('acme');
ROLLBACK;
SELECT byok_decrypt_text(c) FROM rv WHERE tenant = 'acme';
SELECT state FROM byok.tenants WHERE name = 'acme';

-- a transaction that already used the key is refused once the revoke commits
-- (here the revoke commits inside a subtransaction of this session: the
-- other-session case is the isolation spec revoke_running)
BEGIN;
SELECT byok_decrypt_text(c) FROM rv WHERE tenant = 'acme';
SELECT byok_revoke_tenant('acme');
-- not yet committed: still usable in this transaction
SELECT byok_decrypt_text(c) FROM rv WHERE tenant = 'acme';
COMMIT;
SELECT try(format('SELECT byok_decrypt_text(%L)', c)) FROM rv WHERE tenant = 'acme';
SELECT byok_reinstate_tenant('acme');

-- a revoke in a savepoint released into one that is rolled back never
-- happened: nothing is applied (the catalog agrees)
BEGIN;
SAVEPOINT a;
SAVEPOINT b;
SELECT byok_revoke_tenant('acme');
RELEASE b;
ROLLBACK TO a;
COMMIT;
SELECT state FROM byok_stats() WHERE tenant = 'acme';
SELECT state FROM byok.tenants WHERE name = 'acme';
SELECT byok_decrypt_text(c) FROM rv WHERE tenant = 'acme';

-- PREPARE TRANSACTION cannot carry a state change
BEGIN;
SELECT byok_revoke_tenant('acme');
PREPARE TRANSACTION 'p1';
SELECT byok_decrypt_text(c) FROM rv WHERE tenant = 'acme';

SELECT try($$SELECT byok_revoke_tenant('nobody')$$);
SELECT event FROM byok.key_events WHERE tenant = 'acme' AND event LIKE 'tenant_re%' ORDER BY event_id;
DROP TABLE rv;
