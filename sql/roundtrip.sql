-- roundtrip: text and bytea, empty, 1 MiB, NULLs, scopes, AAD, randomness.
SELECT byok_decrypt_text(byok_encrypt('acme', 'hello, acme'));
SELECT byok_decrypt(byok_encrypt('globex', '\x00ff10'::bytea));
SELECT byok_decrypt_text(byok_encrypt('acme', '')) = '' AS empty_text,
       byok_decrypt(byok_encrypt('acme', ''::bytea)) = ''::bytea AS empty_bytea;
SELECT length(byok_encrypt('acme', '')) AS overhead,
       length(byok_encrypt('acme', 'abc')) AS three_bytes;
SELECT byok_decrypt_text(byok_encrypt('acme', 'grüße, 東京'));

-- 1 MiB
WITH v AS (SELECT string_agg(md5(i::text), '') AS t FROM generate_series(1, 32768) i)
SELECT length(v.t), byok_decrypt_text(byok_encrypt('globex', v.t)) = v.t AS same,
       length(byok_encrypt('globex', v.t)) - length(v.t) AS overhead
FROM v;
WITH v AS (SELECT decode(string_agg(md5(i::text), ''), 'hex') AS b FROM generate_series(1, 65536) i)
SELECT length(v.b), byok_decrypt(byok_encrypt('acme', v.b, 'big')) = v.b AS same FROM v;

-- NULL in, NULL out
SELECT byok_encrypt(NULL, 'x') IS NULL AS null_tenant,
       byok_encrypt('acme', NULL::text) IS NULL AS null_text,
       byok_encrypt('acme', NULL::bytea) IS NULL AS null_bytea,
       byok_encrypt('acme', 'x', NULL) IS NULL AS null_scope,
       byok_decrypt(NULL) IS NULL AS null_ct,
       byok_decrypt_text(NULL) IS NULL AS null_ct_text;

-- the same value encrypts differently every time
SELECT count(DISTINCT byok_encrypt('acme', 'same')) AS distinct_ciphertexts,
       count(DISTINCT substr(byok_encrypt('acme', 'same'), 11, 12)) AS distinct_nonces
FROM generate_series(1, 1000);
SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) AS all_decrypt
FROM (SELECT i, byok_encrypt(CASE WHEN i % 3 = 0 THEN 'acme' WHEN i % 3 = 1 THEN 'globex' ELSE 'initech' END,
                             'v' || i, 's' || (i % 5)) AS c
      FROM generate_series(1, 3000) i) x;

-- scopes: a new scope gets its own data key on first use
SELECT (byok_ciphertext_info(byok_encrypt('initech', 'x', 'public.users.email'))).scope;
SELECT scope, version FROM byok.data_keys d JOIN byok.tenants t USING (tenant_id)
WHERE t.name = 'initech' ORDER BY dek_id;
SELECT try($$SELECT byok_encrypt('acme', 'x', '')$$);
SELECT try($$SELECT byok_encrypt('acme', 'x', repeat('s', 256))$$);
SELECT try($$SELECT byok_encrypt('acme', 'x', E'a\nb')$$);

-- AAD: must match exactly
SELECT byok_decrypt_text(byok_encrypt('acme', 'row 42', 'default', '\x2a'), '\x2a');
SELECT try($$SELECT byok_decrypt_text(byok_encrypt('acme', 'row 42', 'default', '\x2a'), '\x2b')$$);
SELECT try($$SELECT byok_decrypt_text(byok_encrypt('acme', 'row 42', 'default', '\x2a'))$$);
SELECT try($$SELECT byok_decrypt_text(byok_encrypt('acme', 'row 42'), '\x2a')$$);

-- unknown tenant
SELECT try($$SELECT byok_encrypt('nobody', 'x')$$);
SELECT try($$SELECT byok_encrypt(repeat('n', 100), 'x')$$);

-- bytes that are not valid text are refused by byok_decrypt_text
SELECT try($$SELECT byok_decrypt_text(byok_encrypt('acme', '\xff00'::bytea))$$);

-- a data key created in a rolled-back transaction leaves nothing behind
BEGIN;
SELECT length(byok_encrypt('acme', 'x', 'rolled-back-scope'));
ROLLBACK;
SELECT count(*) FROM byok.data_keys WHERE scope = 'rolled-back-scope';
SELECT byok_decrypt_text(byok_encrypt('acme', 'after rollback', 'rolled-back-scope'));
SELECT count(*) FROM byok.data_keys WHERE scope = 'rolled-back-scope';
-- and in a rolled-back subtransaction
BEGIN;
SAVEPOINT s;
SELECT length(byok_encrypt('acme', 'x', 'sub-scope'));
ROLLBACK TO s;
SELECT byok_decrypt_text(byok_encrypt('acme', 'after savepoint', 'sub-scope'));
COMMIT;
SELECT count(*) FROM byok.data_keys WHERE scope = 'sub-scope';
