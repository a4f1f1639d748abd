#!/usr/bin/env bash
# test/demo.sh — byok in five minutes, from a fresh Debian 12 machine, as root.
#
# Installs what is missing, builds and installs byok into the system
# PostgreSQL 15, starts a scratch cluster (port 5491, a temporary folder,
# run by the postgres OS user), walks through onboarding two tenants,
# encrypting and decrypting their rows, a revocation drill, and stops the
# cluster again.  Nothing is left running.
set -eu
. "$(dirname "$0")/lib.sh"

PORT=${BYOK_DEMO_PORT:-5491}
DIR=$(mktemp -d /tmp/byok-demo.XXXXXX)
trap 'byok_cluster_stop "$DIR"; rm -rf "$DIR"' EXIT

byok_install_packages
byok_build_install

say "starting a scratch PostgreSQL 15 on port $PORT with shared_preload_libraries = 'byok'"
byok_cluster_start "$DIR" "$PORT"

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

say "the customer disables its own key at its provider (renames acme-cmk.key): once the cached keys are gone, acme is unreadable"
runuser -u postgres -- mv "$keyring/acme-cmk.key" "$keyring/acme-cmk.key.disabled"
psql_demo <<'SQL'
SELECT byok_cache_flush('acme') AS cache_entries_wiped;
\set ON_ERROR_STOP 0
SELECT id, byok_decrypt_text(email) FROM customers WHERE tenant = 'acme';
\set ON_ERROR_STOP 1
SELECT id, byok_decrypt_text(email) FROM customers WHERE tenant = 'globex';
SQL

say "the customer enables its key again: acme's rows come back, nothing was lost"
runuser -u postgres -- mv "$keyring/acme-cmk.key.disabled" "$keyring/acme-cmk.key"
psql_demo <<'SQL'
SELECT id, tenant, byok_decrypt_text(email) FROM customers ORDER BY id;
SQL

say "key rotation: new rows use a new data key version, old rows still decrypt"
psql_demo <<'SQL'
SELECT byok_rotate_data_key('acme', 'public.customers.email') AS new_version;
INSERT INTO customers (tenant, email) VALUES ('acme', byok_encrypt('acme', 'dave@acme.example', 'public.customers.email'));
SELECT c.id, i.key_version, byok_decrypt_text(c.email) FROM customers c, byok_ciphertext_info(c.email) i
WHERE c.tenant = 'acme' ORDER BY c.id;
SQL

say "the audit trail an auditor reads (never any key material)"
psql_demo <<'SQL'
SELECT event_time::time(0) AS at, tenant, event, key_kind, key_version, scope, fingerprint, actor
FROM byok.key_events ORDER BY event_id;
SQL

say "stopping the scratch cluster"
