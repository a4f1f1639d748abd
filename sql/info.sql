-- info: what a ciphertext says about itself, without any key.
SELECT byok_encrypt('globex', 'x', 'info-scope') AS info_ct \gset
SELECT version, algorithm, dek_id > 0 AS has_dek, tenant, scope, key_version
FROM byok_ciphertext_info(:'info_ct');
-- works while the tenant is revoked: no key needed
SELECT byok_revoke_tenant('globex');
SELECT tenant, scope FROM byok_ciphertext_info(:'info_ct');
SELECT byok_reinstate_tenant('globex');
-- unknown data key: tenant and scope unknown
SELECT version, algorithm, dek_id, tenant, scope, key_version
FROM byok_ciphertext_info('\x010100000000000f424000000000000000000000000000000000000000000000000000000000'::bytea);
SELECT try($$SELECT byok_ciphertext_info('\x00'::bytea)$$);
SELECT try($$SELECT byok_ciphertext_info('\x0901000000000000000100000000000000000000000000000000000000000000000000000000'::bytea)$$);
SELECT byok_ciphertext_info(NULL) IS NULL AS null_in_null_out;
