-- limits: a data key rotates itself before it seals too many values.
ALTER SYSTEM SET byok.dek_max_encryptions = 10;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW byok.dek_max_encryptions;
-- 25 values in one statement: versions 1, 2 and 3 seal 10, 10 and 5
CREATE TABLE lim AS SELECT i, byok_encrypt('acme', 'v' || i, 'limit.scope') AS c FROM generate_series(1, 25) i;
SELECT (byok_ciphertext_info(c)).key_version, count(*), min(i), max(i) FROM lim GROUP BY 1 ORDER BY 1;
SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) AS all_readable FROM lim;
-- the counts are persisted
SELECT d.version, d.encryptions FROM byok.data_keys d JOIN byok.tenants t USING (tenant_id)
WHERE t.name = 'acme' AND d.scope = 'limit.scope' ORDER BY d.version;
-- across transactions: 5 more fill version 3, the next one starts version 4
SELECT count(byok_encrypt('acme', 'x', 'limit.scope')) FROM generate_series(1, 5);
SELECT (byok_ciphertext_info(byok_encrypt('acme', 'y', 'limit.scope'))).key_version;
SELECT detail, count(*) FROM byok.key_events WHERE scope = 'limit.scope' AND event = 'data_key_rotated' GROUP BY 1;
ALTER SYSTEM RESET byok.dek_max_encryptions;
SELECT pg_reload_conf();
DROP TABLE lim;
