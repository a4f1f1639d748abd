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

# Citus from the vendored source (PEERS.md): built once per PostgreSQL version
# into BYOK_CACHE (default /var/cache/byok) and installed from there, so a run
# after the first one only copies files.  Citus 13.2 supports PostgreSQL 15-17.
CITUS_VERSION=13.2.2
CITUS_TARBALL=${CITUS_TARBALL:-$REPO/../shared/vendor/citus-v$CITUS_VERSION.tar.gz}
CITUS_SHA256=17f90093b6edaf3e9c43fb695341c70c1f576e88cc6d3d8e2ba88ebbbe4efe77

byok_citus_install() {
    local cache=${BYOK_CACHE:-/var/cache/byok} pgv src log p missing=()
    pgv=$($PG_CONFIG --version | awk '{print $2}')
    src=$cache/citus-$CITUS_VERSION-pg$pgv
    log=$cache/citus-$CITUS_VERSION-pg$pgv.log
    for p in liblz4-dev libzstd-dev libkrb5-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || return 1
    fi
    if [ ! -f "$src/.built" ]; then
        [ -f "$CITUS_TARBALL" ] || { echo "no Citus source at $CITUS_TARBALL"; return 1; }
        echo "$CITUS_SHA256  $CITUS_TARBALL" | sha256sum -c --quiet - || { echo "Citus tarball checksum mismatch"; return 1; }
        say "building Citus $CITUS_VERSION for PostgreSQL $pgv into $src (once; cached)"
        rm -rf "$src"; mkdir -p "$src"
        tar -C "$src" -xzf "$CITUS_TARBALL" || return 1
        # PostgreSQL 15.20 exports have_createdb_privilege(), which Citus's
        # compatibility header also defines for versions before 16
        sed -i 's/^have_createdb_privilege(void)/citus_compat_have_createdb_privilege(void)/' \
            "$src/src/include/pg_version_compat.h"
        sed -i 's/!have_createdb_privilege()/!citus_compat_have_createdb_privilege()/' \
            "$src/src/backend/distributed/commands/serialize_distributed_ddls.c"
        if ! (cd "$src" && ./configure PG_CONFIG=$PG_CONFIG --without-libcurl >"$log" 2>&1 \
                && make -j2 with_llvm=no >>"$log" 2>&1); then
            tail -n 30 "$log"; return 1
        fi
        touch "$src/.built"
    fi
    make -s -C "$src" with_llvm=no install >/dev/null 2>>"$log" || { tail -n 30 "$log"; return 1; }
}
