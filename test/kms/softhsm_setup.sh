#!/bin/sh
# softhsm_setup.sh DIR TOKEN_LABEL
#
# Make a private SoftHSM2 token for the byok tests:
#   DIR/softhsm2.conf   tokendir DIR/tokens, file backend
#   DIR/tokens/         the token, created by the postgres OS user
#   DIR/pin             the user PIN (mode 0600, owned by postgres)
#   DIR/so_pin          the security officer PIN (same)
#   DIR/p11ctl          the test helper (keygen/disable/enable/destroy/state)
# and print, on stdout and nothing else,
#   export SOFTHSM2_CONF=DIR/softhsm2.conf
# so a caller can  eval "$(test/kms/softhsm_setup.sh DIR LABEL)".
#
# Run it as root (the token is then created with runuser -u postgres, since
# a token created by root is invisible to postgres) or as postgres itself.
# Running it again on the same DIR replaces the token.
#
# Needs: softhsm2, opensc (not used here, but by the tests), libp11-kit-dev
# and a C compiler.
set -eu

if [ $# -ne 2 ]; then
	echo "usage: $0 DIR TOKEN_LABEL" >&2
	exit 2
fi
dir=$1
label=$2
here=$(cd "$(dirname "$0")" && pwd)
module=/usr/lib/softhsm/libsofthsm2.so
pg_user=postgres

for f in "$module" /usr/bin/softhsm2-util /usr/include/p11-kit-1/p11-kit/pkcs11.h; do
	if [ ! -e "$f" ]; then
		echo "$0: $f is missing; apt-get install softhsm2 opensc libp11-kit-dev" >&2
		exit 1
	fi
done
if [ ${#label} -gt 32 ]; then
	echo "$0: a token label has at most 32 bytes" >&2
	exit 2
fi

# run a command as the postgres OS user
if [ "$(id -u)" -eq 0 ]; then
	as_pg() { runuser -u "$pg_user" -- "$@"; }
elif [ "$(id -un)" = "$pg_user" ]; then
	as_pg() { "$@"; }
else
	echo "$0: run me as root or as $pg_user" >&2
	exit 1
fi

# a folder we create belongs to postgres; an existing one must be writable
if [ ! -d "$dir" ]; then
	mkdir -p "$dir"
	if [ "$(id -u)" -eq 0 ]; then
		chown "$pg_user": "$dir"
	fi
fi
dir=$(cd "$dir" && pwd)
if ! as_pg test -w "$dir" -a -x "$dir"; then
	echo "$0: $pg_user cannot write to $dir (check its parent folders)" >&2
	exit 1
fi

# the token directory and everything in it belong to postgres
as_pg rm -rf "$dir/tokens"
as_pg mkdir -m 0700 "$dir/tokens"

# reset_on_fork: a process forked from one that had SoftHSM initialised
# gets a fresh library instance on its first call instead of the parent's
# state (the byok provider copes either way).
as_pg sh -c "umask 077; cat > '$dir/softhsm2.conf'" <<EOF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
library.reset_on_fork = true
EOF
as_pg chmod 0644 "$dir/softhsm2.conf"

rand_pin() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }
so_pin=$(rand_pin)
user_pin=$(rand_pin)

# PIN files: 0600, owned by postgres; byok refuses looser ones
as_pg sh -c "umask 077; printf '%s\n' '$user_pin' > '$dir/pin'; printf '%s\n' '$so_pin' > '$dir/so_pin'"

SOFTHSM2_CONF=$dir/softhsm2.conf
export SOFTHSM2_CONF
as_pg env SOFTHSM2_CONF="$SOFTHSM2_CONF" softhsm2-util --init-token --free \
	--label "$label" --so-pin "$so_pin" --pin "$user_pin" >/dev/null
unset so_pin user_pin

# the helper, built where postgres can run it
cc -O2 -Wall -I/usr/include/p11-kit-1 -o "$dir/p11ctl" "$here/p11ctl.c" -ldl
chmod 0755 "$dir/p11ctl"
# a module that forwards to SoftHSM2 and stalls while $P11SLOW_FLAG exists (a hung HSM)
cc -O2 -Wall -shared -fPIC -I/usr/include/p11-kit-1 -o "$dir/p11slow.so" "$here/p11slow.c" -ldl
chmod 0755 "$dir/p11slow.so"

# sanity check: postgres sees the token and can log in
if ! as_pg env SOFTHSM2_CONF="$SOFTHSM2_CONF" "$dir/p11ctl" --module "$module" \
		--token "$label" --pin-file "$dir/pin" state byok-setup-probe >/dev/null; then
	echo "$0: $pg_user cannot use the new token" >&2
	exit 1
fi

echo "export SOFTHSM2_CONF=$SOFTHSM2_CONF"
