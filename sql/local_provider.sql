-- local_provider: what the keyring provider refuses.
-- key names that could leave the keyring
SELECT try($$SELECT byok_create_tenant('t1', 'local', '../acme-cmk')$$);
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'sub/acme-cmk')$$);
SELECT try($$SELECT byok_create_tenant('t1', 'local', '..')$$);
SELECT try($$SELECT byok_create_tenant('t1', 'local', '.hidden')$$);
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'spa ce')$$);
SELECT try($$SELECT byok_create_tenant('t1', 'local', '')$$);
SELECT try($$SELECT byok_create_tenant('t1', 'local', repeat('k', 65))$$);
-- missing, disabled
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'no-such-key')$$);
SELECT newkey('off-cmk');
SELECT sh('mv byok_keyring/off-cmk.key byok_keyring/off-cmk.key.disabled');
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'off-cmk')$$);
-- loose permissions
SELECT newkey('loose-cmk');
SELECT sh('chmod 644 byok_keyring/loose-cmk.key');
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'loose-cmk')$$);
SELECT sh('chmod 640 byok_keyring/loose-cmk.key');
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'loose-cmk')$$);
SELECT sh('chmod 400 byok_keyring/loose-cmk.key');
SELECT try($$SELECT byok_create_tenant('t-loose', 'local', 'loose-cmk')$$);
-- wrong size, not a regular file, a symlink
SELECT sh('head -c 16 /dev/urandom > byok_keyring/short-cmk.key && chmod 600 byok_keyring/short-cmk.key');
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'short-cmk')$$);
SELECT sh('head -c 33 /dev/urandom > byok_keyring/long-cmk.key && chmod 600 byok_keyring/long-cmk.key');
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'long-cmk')$$);
SELECT sh('mkdir -m 700 byok_keyring/dir-cmk.key');
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'dir-cmk')$$);
SELECT sh('ln -s acme-cmk.key byok_keyring/link-cmk.key');
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'link-cmk')$$);
-- failures left nothing behind
SELECT count(*) FROM byok.tenants WHERE name = 't1';
-- an existing tenant whose key file loosens is refused on its next unwrap
SELECT byok_cache_flush('t-loose') >= 0 AS flushed;
SELECT sh('chmod 644 byok_keyring/loose-cmk.key');
SELECT try($$SELECT byok_encrypt('t-loose', 'x')$$);
SELECT sh('chmod 600 byok_keyring/loose-cmk.key');
SELECT byok_decrypt_text(byok_encrypt('t-loose', 'works again'));
-- a wrapped key moved to another tenant's row does not unwrap under its CMK
SELECT newkey('swap-cmk');
SELECT byok_create_tenant('t-swap', 'local', 'swap-cmk');
UPDATE byok.tenant_keys SET wrapped_key = (SELECT wrapped_key FROM byok.tenant_keys k JOIN byok.tenants t USING (tenant_id) WHERE t.name = 't-loose')
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 't-swap');
SELECT try($$SELECT byok_encrypt('t-swap', 'x')$$);
-- a keyring folder that is missing is a configuration error, never "destroyed"
SELECT try($$SET byok.local_keyring = '/tmp'$$);
ALTER SYSTEM SET byok.local_keyring = '/nonexistent/keyring';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW byok.local_keyring;
SELECT try($$SELECT byok_create_tenant('t1', 'local', 'acme-cmk')$$);
ALTER SYSTEM RESET byok.local_keyring;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW byok.local_keyring;
-- onboarding checks on demand
SELECT "check", ok, regexp_replace(detail, '[0-9a-f]{16}', 'FP') AS detail, latency_ms >= 0 AS timed
FROM byok_validate_tenant('t-loose');
SELECT latency_baseline_ms > 0 AS has_baseline, validated_at IS NOT NULL AS validated
FROM byok.tenants WHERE name = 't-loose';
-- a tenant whose stored tenant key no longer matches its CMK fails the last check
SELECT "check", ok, regexp_replace(detail, '[0-9a-f]{16}', 'FP') AS detail FROM byok_validate_tenant('t-swap');
SELECT sh('chmod 644 byok_keyring/loose-cmk.key');
SELECT "check", ok, detail FROM byok_validate_tenant('t-loose');
SELECT sh('chmod 600 byok_keyring/loose-cmk.key');
SELECT event, regexp_replace(detail, '[0-9.]+ ms', 'N ms') AS detail
FROM byok.key_events WHERE event = 'tenant_validated' ORDER BY event_id;
-- a FIFO in place of a key file is refused at once (opened non-blocking):
-- a blocking open would wait for a writer, beyond any cancel; the writer
-- started here comes 3 s later and gives up after 10 s more, so a regression
-- shows as a delay of 3 s
SELECT sh('mkfifo -m 600 byok_keyring/fifo-cmk.key');
SELECT sh('(sleep 3; timeout 10 sh -c "while :; do echo x > byok_keyring/fifo-cmk.key; done") </dev/null >/dev/null 2>&1 &');
CREATE TEMP TABLE fifo_t0 AS SELECT clock_timestamp() AS t0;
SELECT try($$SELECT byok_create_tenant('t-fifo', 'local', 'fifo-cmk')$$);
SELECT clock_timestamp() - t0 < interval '2 s' AS refused_at_once FROM fifo_t0;
