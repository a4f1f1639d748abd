#!/usr/bin/env bash
# Shared set-up for test/demo.sh and test/check.sh: packages, build, install.
# Sourced, not run.  Everything runs as root; PostgreSQL itself runs as the
# "postgres" operating-system user (initdb and postgres refuse root).

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=/usr/bin/pg_config
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\n== %s\n' "$*"; }

# Install whatever Debian packages are missing (quietly when all are there).
byok_install_packages() {
    local want=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib
                libssl-dev libcurl4-openssl-dev libipc-run-perl libio-pty-perl make gcc bc
                softhsm2 opensc libp11-kit-dev python3-minimal python3-pykmip openssl gdb util-linux)
    local missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Debian starts a main cluster on 5432 when the server package is installed;
    # byok never uses it, and tests keep off that port.
}

# Copy the source to a scratch folder owned by postgres, build it there as
# postgres (so tests can write results next to it) and install it as root.
# Sets BUILD_DIR.
byok_build_install() {
    BUILD_DIR=$(mktemp -d /tmp/byok-build.XXXXXX)
    tar -C "$REPO" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' --exclude=node_modules \
        --exclude=results --exclude=tmp_check -cf - . | tar -C "$BUILD_DIR" -xf -
    chown -R postgres:postgres "$BUILD_DIR"
    say "building byok in $BUILD_DIR"
    runuser -u postgres -- make -s -C "$BUILD_DIR" PG_CONFIG=$PG_CONFIG >"$BUILD_DIR/build.log" 2>&1 \
        || { cat "$BUILD_DIR/build.log"; return 1; }
    if grep -q "warning:" "$BUILD_DIR/build.log"; then
        echo "compiler warnings:"; grep "warning:" "$BUILD_DIR/build.log"; return 1
    fi
    make -s -C "$BUILD_DIR" PG_CONFIG=$PG_CONFIG install >/dev/null
}

# Start a scratch cluster as postgres: byok_cluster_start DIR PORT [extra conf lines]
byok_cluster_start() {
    local dir=$1 port=$2; shift 2
    mkdir -p "$dir"; chown postgres:postgres "$dir"
    runuser -u postgres -- $PG_BIN/initdb -D "$dir/data" -A trust -U postgres >/dev/null
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
shared_preload_libraries = 'byok'
CONF
    local line
    for line in "$@"; do echo "$line" >>"$dir/data/postgresql.conf"; done
    runuser -u postgres -- $PG_BIN/pg_ctl -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
}

byok_cluster_stop() {
    local dir=$1
    [ -f "$dir/data/postmaster.pid" ] && runuser -u postgres -- $PG_BIN/pg_ctl -D "$dir/data" -m fast -w stop >/dev/null
    return 0
}
