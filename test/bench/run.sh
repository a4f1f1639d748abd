#!/usr/bin/env bash
# test/bench/run.sh [--quick] — byok's benchmarks, side by side, in one run.
#
# As root on Debian 12: installs what is missing (pgcrypto, psycopg2,
# gnuplot), builds and installs byok, starts its own cluster (port 5493),
# the HTTP KMS test server and a PyKMIP server (port 5698, certificates made
# here), runs test/bench/bench.py, measures shared memory
# at two cache sizes, writes test/bench/results/ (bench.csv with every raw
# measurement, summary.md, PNG plots) and stops everything it started.
# --quick proves the harness works (CI runs it); it does not judge figures.
set -eu
. "$(dirname "$0")/../lib.sh"

QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
PORT=${BYOK_BENCH_PORT:-5493}
OUT=${BYOK_BENCH_OUT:-$REPO/test/bench/results}
[ -n "$QUICK" ] && OUT=$(mktemp -d /tmp/byok-bench-quick.XXXXXX)
DIR=$(mktemp -d /tmp/byok-bench.XXXXXX)
KMS_PID=""
KMIP_PID=""
KMIP_PORT=${BYOK_BENCH_KMIP_PORT:-5698}
cleanup() {
    [ -n "$KMS_PID" ] && kill "$KMS_PID" 2>/dev/null || true
    [ -n "$KMIP_PID" ] && kill -KILL -- -"$KMIP_PID" 2>/dev/null || true
    byok_cluster_stop "$DIR"
}
trap cleanup EXIT

byok_install_packages
for p in python3-psycopg2 gnuplot-nox; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
# the scripts run as postgres: use a copy it can read (the build folder)
if [ -n "${BYOK_ALREADY_INSTALLED:-}" ]; then SRC=${BYOK_SRC:?}; else byok_build_install; SRC=$BUILD_DIR; fi
mkdir -p "$OUT"; chown postgres:postgres "$OUT" "$DIR"

say "KMS test server"
runuser -u postgres -- /usr/bin/python3 -B "$SRC/test/kms/http_kms_server.py" --port 0 \
    --port-file "$DIR/kms_port" --log "$DIR/kms.log" >/dev/null 2>&1 &
KMS_PID=$!
for _ in $(seq 100); do [ -s "$DIR/kms_port" ] && break; sleep 0.05; done
KMS="http://127.0.0.1:$(cat "$DIR/kms_port")"

say "KMIP server (PyKMIP) on port $KMIP_PORT"
KMIP_DIR=$DIR/kmip
runuser -u postgres -- bash "$SRC/test/kms/kmip_certs.sh" "$KMIP_DIR" >/dev/null
runuser -u postgres -- bash "$SRC/test/kms/kmip_certs.sh" "$KMIP_DIR" conf "$KMIP_PORT" >/dev/null
# its own session and process group (pid = pgid), so cleanup kills all of it
runuser -u postgres -- setsid -f sh -c "echo \$\$ > '$KMIP_DIR/server.pid'; exec /usr/bin/python3 /usr/bin/pykmip-server -f '$KMIP_DIR/server.conf' -l '$KMIP_DIR/server.log' >'$KMIP_DIR/server.out' 2>&1"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KMIP_PORT") 2>/dev/null && break; sleep 0.1; done
KMIP_PID=$(cat "$KMIP_DIR/server.pid")

say "cluster on port $PORT"
byok_cluster_start "$DIR" "$PORT" \
    "shared_buffers = 512MB" "max_connections = 60" "byok.cache_size = 50000" "byok.max_tenants = 20000" \
    "byok.kms_allow_insecure = on" "byok.aws_endpoint = '$KMS/'" "byok.kms_timeout = 10s" \
    "byok.local_keyring = '$DIR/keyring'" "byok.poll_interval = 1s" "max_worker_processes = 16" \
    "byok.kmip_host = '127.0.0.1'" "byok.kmip_port = $KMIP_PORT" "byok.kmip_cert_file = '$KMIP_DIR/client.crt'" \
    "byok.kmip_key_file = '$KMIP_DIR/client.key'" "byok.kmip_ca_file = '$KMIP_DIR/ca.crt'"
runuser -u postgres -- mkdir -m 700 "$DIR/keyring"
# credentials the server does not check (started without --aws-credentials)
runuser -u postgres -- sh -c "umask 077; printf '[default]\naws_access_key_id = AKIDBENCH\naws_secret_access_key = bench\n' > '$DIR/aws_creds'"
runuser -u postgres -- $PG_BIN/psql -X -q -h "$DIR" -p "$PORT" -d postgres \
    -c "ALTER SYSTEM SET byok.aws_credentials_file = '$DIR/aws_creds'" -c "SELECT pg_reload_conf()" >/dev/null

say "running the benchmarks${QUICK:+ (quick)}"
runuser -u postgres -- /usr/bin/python3 -B "$SRC/test/bench/bench.py" --host "$DIR" --port "$PORT" \
    --kms "$KMS" --keyring "$DIR/keyring" --datadir "$DIR/data" --pgbin "$PG_BIN" --out "$OUT" \
    --kmip-dir "$KMIP_DIR" --kmip-port "$KMIP_PORT" $QUICK

say "8 memory: shared memory at byok.cache_size 10,000 and 100,000"
for size in 10000 100000; do
    byok_cluster_stop "$DIR"
    sed -i "s/^byok.cache_size = .*/byok.cache_size = $size/; s/^byok.max_tenants = .*/byok.max_tenants = 10000/" "$DIR/data/postgresql.conf"
    runuser -u postgres -- $PG_BIN/pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
    runuser -u postgres -- $PG_BIN/psql -X -At -h "$DIR" -p "$PORT" -d postgres -c \
        "SELECT $size, sum(allocated_size) FROM pg_shmem_allocations WHERE name LIKE 'byok%'" >>"$OUT/memory.txt"
done
chown postgres:postgres "$OUT/memory.txt"
runuser -u postgres -- /usr/bin/python3 -B "$SRC/test/bench/report.py" "$OUT"
say "results in $OUT"
