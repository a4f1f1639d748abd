#!/usr/bin/env bash
# test/demo.sh — byok in five minutes, from a fresh Debian 12 machine, as root.
#
# Installs what is missing, builds and installs byok into the system
# PostgreSQL 15, starts a scratch cluster (port 5491, a temporary folder,
# run by the postgres OS user), walks through onboarding two tenants,
# encrypting and decrypting their rows, an administrator's revocation, a
# customer disabling its key (seen by the poller within a second), a
# revocation drill, rotation, a protected column behind its view, tenant-key
# rotation and online re-encryption, certified destruction, a tenant whose
# key lives on a KMIP server (PyKMIP, mutual TLS) and is revoked there, an
# auditor's view, and the audit trail, and stops the cluster again.  Nothing is left running.
set -eu
. "$(dirname "$0")/lib.sh"

PORT=${BYOK_DEMO_PORT:-5491}
DIR=$(mktemp -d /tmp/byok-demo.XXXXXX)
KMIP_PORT=${BYOK_DEMO_KMIP_PORT:-5697}
KMIP_PID=
trap '[ -n "$KMIP_PID" ] && kill -KILL -- -"$KMIP_PID" 2>/dev/null; byok_cluster_stop "$DIR"; rm -rf "$DIR"' EXIT

byok_install_packages
byok_build_install

say "starting a scratch PostgreSQL 15 on port $PORT with shared_preload_libraries = 'byok'"
byok_cluster_start "$DIR" "$PORT" "byok.poll_interval = 250ms"

psql_demo() { runuser -u postgres -- $PG_BIN/psql -X -q -h "$DIR" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 "$@"; }
keyring="$DIR/data/byok_keyring"

say "each customer brings its own master key (here: the 'local' provider, 32-byte key files only the server can read)"
runuser -u postgres -- sh -c "umask 077; mkdir -p '$keyring'; head -c 32 /dev/urandom > '$keyring/acme-cmk.key'; head -c 32 /dev/urandom > '$keyring/globex-cmk.key'"
ls -l "$keyring"

say "onboarding: byok makes a tenant key per customer, wraps it with the customer's key and proves the round trip"
psql_demo <<'SQL'
CREATE EXTENSION byok;
SELECT byok_create_tenant('acme',   'local', 'acme-cmk');
SELECT byok_create_tenant('globex', 'local', 'globex-cmk');
SELECT name, provider, key_ref, state FROM byok.tenants ORDER BY tenant_id;
SQL

say "the application writes rows; only ciphertext is stored"
psql_demo <<'SQL'
CREATE TABLE customers (id serial PRIMARY KEY, tenant text NOT NULL, email bytea NOT NULL);
-- an administrator declares the scope once; byok makes data keys only for declared scopes
SELECT byok_declare_scope('public.customers.email');
INSERT INTO customers (tenant, email) VALUES
  ('acme',   byok_encrypt('acme',   'alice@acme.example',   'public.customers.email')),
  ('acme',   byok_encrypt('acme',   'bob@acme.example',     'public.customers.email')),
  ('globex', byok_encrypt('globex', 'carol@globex.example', 'public.customers.email'));
SELECT id, tenant, encode(substr(email, 1, 24), 'hex') || '...' AS stored_bytes FROM customers ORDER BY id;
SELECT id, tenant, byok_decrypt_text(email) AS email FROM customers ORDER BY id;
SELECT c.id, i.* FROM customers c, byok_ciphertext_info(c.email) i ORDER BY c.id;
SQL

say "a session bound to one tenant cannot read another's rows"
psql_demo <<'SQL'
SET byok.tenant = 'acme';
SELECT id, byok_decrypt_text(email) FROM customers WHERE tenant = 'acme' ORDER BY id;
\set ON_ERROR_STOP 0
SELECT id, byok_decrypt_text(email) FROM customers WHERE tenant = 'globex';
SQL

say "revocation drill: the DBA revokes acme — acme is locked out at once, globex carries on"
psql_demo <<'SQL'
SELECT byok_revoke_tenant('acme');
\set ON_ERROR_STOP 0
SELECT id, byok_decrypt_text(email) FROM customers WHERE tenant = 'acme';
\set ON_ERROR_STOP 1
SELECT id, byok_decrypt_text(email) FROM customers WHERE tenant = 'globex';
SELECT byok_reinstate_tenant('acme');
SELECT id, tenant, byok_decrypt_text(email) FROM customers ORDER BY id;
SQL

say "the customer disables its own key at its provider (renames acme-cmk.key): the byok poller sees it within a second and every session is locked out — no flush, no restart"
psql_demo <<'SQL'
SELECT count(byok_decrypt_text(email)) AS acme_rows_readable FROM customers WHERE tenant = 'acme';
SQL
runuser -u postgres -- mv "$keyring/acme-cmk.key" "$keyring/acme-cmk.key.disabled"
start=$(date +%s.%N)
until psql_demo -tA -c "SELECT state FROM byok.stats WHERE tenant = 'acme'" | grep -q cmk_disabled; do sleep 0.05; done
printf 'acme locked out %.2f s after the key was disabled\n' "$(echo "$(date +%s.%N) - $start" | bc)"
psql_demo <<'SQL'
\set ON_ERROR_STOP 0
SELECT id, byok_decrypt_text(email) FROM customers WHERE tenant = 'acme';
\set ON_ERROR_STOP 1
SELECT id, byok_decrypt_text(email) FROM customers WHERE tenant = 'globex';
SELECT tenant, live_state, health, round(revocation_lag_ms::numeric, 3) AS purge_ms FROM byok.tenant_status ORDER BY tenant;
SQL

say "the customer enables its key again: the poller lets acme back in; nothing was lost"
runuser -u postgres -- mv "$keyring/acme-cmk.key.disabled" "$keyring/acme-cmk.key"
until psql_demo -tA -c "SELECT state FROM byok.stats WHERE tenant = 'acme'" | grep -q active; do sleep 0.05; done
psql_demo <<'SQL'
SELECT id, tenant, byok_decrypt_text(email) FROM customers ORDER BY id;
SQL

say "a revocation drill for the auditors: lock acme out, measure, prove no key bytes remain, reinstate"
psql_demo <<'SQL'
SELECT * FROM byok_revocation_drill('acme');
SELECT tenant, state, encrypts, decrypts, cache_hits, cache_misses, provider_calls, kms_status, last_poll_result
FROM byok.stats ORDER BY tenant;
SQL

say "key rotation: new rows use a new data key version, old rows still decrypt"
psql_demo <<'SQL'
SELECT byok_rotate_data_key('acme', 'public.customers.email') AS new_version;
INSERT INTO customers (tenant, email) VALUES ('acme', byok_encrypt('acme', 'dave@acme.example', 'public.customers.email'));
SELECT c.id, i.key_version, byok_decrypt_text(c.email) FROM customers c, byok_ciphertext_info(c.email) i
WHERE c.tenant = 'acme' ORDER BY c.id;
SQL

say "transparent protection: the application writes plaintext through a view; the table only ever holds ciphertext"
psql_demo <<'SQL'
CREATE TABLE orders (id int PRIMARY KEY, tenant text NOT NULL, card text, total numeric);
INSERT INTO orders VALUES (1, 'acme', '4111-1111-1111-1111', 42.50), (2, 'globex', '5500-0000-0000-0004', 17.00);
SELECT byok_protect_column('orders', 'card', 'tenant', bind_row => true);
INSERT INTO orders_decrypted VALUES (3, 'acme', '3400-000000-00009', 99.90);
SELECT id, tenant, card, total FROM orders_decrypted ORDER BY id;
SELECT id, tenant, encode(substr(card, 1, 16), 'hex') || '...' AS stored FROM orders ORDER BY id;
\set ON_ERROR_STOP 0
INSERT INTO orders VALUES (4, 'acme', convert_to('plaintext by mistake', 'UTF8'), 1);
\set ON_ERROR_STOP 1
SQL

say "key lifecycle: rotate the tenant key (no data rewritten), then re-encrypt the column online under a new data key"
psql_demo <<'SQL'
SELECT byok_rotate_tenant_key('acme') AS new_tenant_key_version;
SELECT byok_rotate_data_key('acme', 'public.orders.card') AS new_data_key_version;
CALL byok_reencrypt('orders', 'card');
SELECT "table", "column", done, remaining, finished IS NOT NULL AS finished FROM byok.reencrypt_progress;
SELECT o.id, i.tenant, i.key_version FROM orders o, byok_ciphertext_info(o.card) i ORDER BY o.id;
SQL

say "customer churn: globex leaves; its keys are destroyed and a certificate says what and what remains"
psql_demo <<'SQL'
SELECT jsonb_pretty(byok_destroy_tenant('globex') - 'what_remains') AS destruction_certificate;
\set ON_ERROR_STOP 0
SELECT id, card FROM orders_decrypted WHERE tenant = 'globex';
\set ON_ERROR_STOP 1
SELECT tenant, live_state, health FROM byok.tenant_status ORDER BY tenant;
SQL

say "an enterprise customer keeps its key on a KMIP server (PyKMIP here, mutual TLS 1.2); byok only asks it to Encrypt and Decrypt"
kmip="$DIR/kmip"
runuser -u postgres -- bash "$REPO/test/kms/kmip_certs.sh" "$kmip" >/dev/null
runuser -u postgres -- bash "$REPO/test/kms/kmip_certs.sh" "$kmip" conf "$KMIP_PORT" >/dev/null
# its own session and process group (pid = pgid), so the exit trap can kill all of it
runuser -u postgres -- setsid -f sh -c "echo \$\$ > '$kmip/server.pid'; exec /usr/bin/python3 /usr/bin/pykmip-server -f '$kmip/server.conf' -l '$kmip/server.log' >'$kmip/server.out' 2>&1"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KMIP_PORT") 2>/dev/null && break; sleep 0.1; done
KMIP_PID=$(cat "$kmip/server.pid")
kmipctl() { runuser -u postgres -- /usr/bin/python3 "$REPO/test/kms/kmipctl.py" --port "$KMIP_PORT" \
    --cert "$kmip/client.crt" --key "$kmip/client.key" --ca "$kmip/ca.crt" "$@"; }
initech_uid=$(kmipctl create initech-cmk)
echo "the customer created AES-256 key $initech_uid on its KMIP server"
psql_demo <<SQL
ALTER SYSTEM SET byok.kmip_host = '127.0.0.1';
ALTER SYSTEM SET byok.kmip_port = $KMIP_PORT;
ALTER SYSTEM SET byok.kmip_cert_file = '$kmip/client.crt';
ALTER SYSTEM SET byok.kmip_key_file = '$kmip/client.key';
ALTER SYSTEM SET byok.kmip_ca_file = '$kmip/ca.crt';
SELECT pg_reload_conf();
SQL
sleep 0.3
psql_demo <<SQL
SELECT byok_create_tenant('initech', 'kmip', '$initech_uid');
SELECT "check", ok, round(latency_ms::numeric, 2) AS ms FROM byok_validate_tenant('initech');
INSERT INTO orders_decrypted VALUES (4, 'initech', '6011-0000-0000-0004', 12.00);
SELECT id, tenant, card, total FROM orders_decrypted WHERE tenant = 'initech';
SQL
kmipctl revoke "$initech_uid"
echo "the customer revoked its key on the KMIP server (KMIP has no way back: this is final)"
sleep 1
psql_demo <<'SQL'
\set ON_ERROR_STOP 0
SELECT id, tenant, card, total FROM orders_decrypted WHERE tenant = 'initech';
\set ON_ERROR_STOP 1
SELECT tenant, live_state, health, round(revocation_lag_ms::numeric) AS seen_after_ms FROM byok.tenant_status WHERE tenant = 'initech';
SQL

say "separation of duties: a member of byok_auditor reads tenants and fingerprints, never a wrapped key, and cannot act"
psql_demo <<'SQL'
CREATE ROLE auditor_anna LOGIN IN ROLE byok_auditor;
SET ROLE auditor_anna;
SELECT t.name AS tenant, d.scope, d.version, d.fingerprint FROM byok.data_keys d JOIN byok.tenants t USING (tenant_id)
WHERE t.name = 'acme' ORDER BY d.scope, d.version;
\set ON_ERROR_STOP 0
SELECT wrapped_key FROM byok.data_keys LIMIT 1;
SELECT byok_revoke_tenant('acme');
\set ON_ERROR_STOP 1
RESET ROLE;
DROP ROLE auditor_anna;
SQL

say "the audit trail an auditor reads (never any key material)"
psql_demo <<'SQL'
SELECT event_time::time(0) AS at, tenant, event, key_kind, key_version, scope, fingerprint, actor
FROM byok.key_events WHERE event <> 'tenant_destroyed' ORDER BY event_id;
SQL

say "stopping the scratch cluster"
