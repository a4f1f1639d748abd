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

-- tenant key rotation: one provider wrap, every DEK rewrapped, no data rewritten
CREATE TABLE rot_tk AS SELECT i, byok_encrypt('globex', 'tk ' || i, 's' || (i % 3)) AS c FROM generate_series(1, 30) i;
SELECT byok_cache_flush('globex') >= 0 AS flushed;
SELECT provider_calls AS calls0 FROM byok_stats() WHERE tenant = 'globex' \gset
SELECT byok_rotate_tenant_key('globex');
SELECT provider_calls - :calls0 AS provider_calls_for_rotation FROM byok_stats() WHERE tenant = 'globex';
SELECT t.tk_version, (SELECT count(*) FROM byok.data_keys d WHERE d.tenant_id = t.tenant_id AND d.tk_version <> t.tk_version AND d.wrapped_key IS NOT NULL) AS deks_on_old_tk,
       (SELECT string_agg(version || ':' || (wrapped_key IS NOT NULL), ',' ORDER BY version) FROM byok.tenant_keys k WHERE k.tenant_id = t.tenant_id) AS tks
FROM byok.tenants t WHERE t.name = 'globex';
SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'tk ' || i) AS old_rows_decrypt FROM rot_tk;
SELECT byok_decrypt_text(byok_encrypt('globex', 'after tk rotation'));
SELECT byok_rotate_tenant_key('globex');
SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'tk ' || i) AS after_two_rotations FROM rot_tk;
SELECT event, key_kind, key_version, detail FROM byok.key_events WHERE event = 'tenant_key_rotated' ORDER BY event_id;
SELECT try($$SELECT byok_rotate_tenant_key('nobody')$$);

-- moving a tenant to another CMK: validated first, no data touched
SELECT try($$SELECT byok_rewrap_tenant('globex', 'local', 'no-such-cmk')$$);
SELECT newkey('globex-cmk2');
SELECT byok_rewrap_tenant('globex', 'local', 'globex-cmk2');
SELECT provider, key_ref FROM byok.tenants WHERE name = 'globex';
SELECT k.provider, k.key_ref FROM byok.tenant_keys k JOIN byok.tenants t USING (tenant_id)
WHERE t.name = 'globex' AND k.version = t.tk_version;
-- the old CMK can now be disabled with no loss
SELECT sh('mv byok_keyring/globex-cmk.key byok_keyring/globex-cmk.key.disabled');
SELECT byok_cache_flush('globex') >= 0 AS flushed;
SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'tk ' || i) AS rows_after_rewrap FROM rot_tk;
SELECT pg_sleep(0.6);
SELECT state, key_ref FROM byok_stats() WHERE tenant = 'globex';
SELECT sh('mv byok_keyring/globex-cmk.key.disabled byok_keyring/globex-cmk.key');
SELECT byok_rewrap_tenant('globex', 'local', 'globex-cmk');
SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'tk ' || i) AS rows_back_on_first_cmk FROM rot_tk;
SELECT event, detail FROM byok.key_events WHERE event = 'tenant_rewrapped' ORDER BY event_id;
DROP TABLE rot_tk;
