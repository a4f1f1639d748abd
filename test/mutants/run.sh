#!/usr/bin/env bash
# test/mutants/run.sh — build each named one-line mutation of byok's critical
# paths into a private copy of PostgreSQL 15 (never the system one), run the
# suites that must catch it, and count.  Ends with "N caught, N survived";
# exits non-zero if any mutant survives (or cannot be applied: a mutant whose
# line no longer exists is reported, not skipped).
#
#   test/mutants/run.sh                 every *.mut in this folder
#   test/mutants/run.sh exec_as_caller  the named ones
#
# A mutant file (NAME.mut) holds:
#   # one line saying what the mutation breaks
#   file   <path in the tree>
#   from   <exact text, once in that file>      (leading tabs kept)
#   to     <replacement text>
#   suites regress:setup,security  isolation:revoke_running  tap:test/t/011_upgrade.pl  fuzz:keyrow
#          standalone:format  (test/fuzz/format_test.c on src/crypto/format.c; NAME.c is found under src/;
#          standalone:json+answers builds json_test.c on json.c and answers.c)
#          layout:tree  (test/layout_check.py on the mutated tree)
# Run as root; PostgreSQL runs as the postgres OS user.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PGV=15
W=${BYOK_MUTANT_DIR:-/tmp/byok-mutants}
PRIV=$W/pg                                   # the private PostgreSQL
PBIN=$PRIV/usr/lib/postgresql/$PGV/bin
# a mutant that makes a TAP test wait for what never comes is caught when the
# wait gives up: 30 s instead of PostgreSQL::Test::Utils' 180 (the control
# run proves the unmutated tree needs no longer)
export PG_TEST_TIMEOUT_DEFAULT=${PG_TEST_TIMEOUT_DEFAULT:-30}
rm -rf "$W"; mkdir -p "$W/base" "$PRIV/usr/lib/postgresql" "$PRIV/usr/share/postgresql"
cp -a /usr/lib/postgresql/$PGV "$PRIV/usr/lib/postgresql/"
cp -a /usr/share/postgresql/$PGV "$PRIV/usr/share/postgresql/"
tar -C "$REPO" --exclude=.git --exclude=node_modules --exclude='*.o' --exclude='*.so' -cf - . | tar -C "$W/base" -xf -
chown -R postgres:postgres "$W"
echo "== building the unmutated tree once"
runuser -u postgres -- make -s -C "$W/base" >"$W/base.log" 2>&1 || { cat "$W/base.log"; echo "0 caught, 1 survived"; exit 1; }

# run_suites TREE SPEC: the suites SPEC names, against TREE's private install
# (TREE/pg); sets failed_by to the ones that failed
run_suites() {
    local t=$1 spec=$2 suite kind list args log
    local bin="$t/pg/usr/lib/postgresql/$PGV/bin"
    failed_by=""
    for suite in $(sed -n 's/^suites //p' "$spec"); do
        kind=${suite%%:*}; list=${suite#*:}; list=${list//,/ }
        # fuzz and standalone name a source file of src/ by its base name;
        # "json+answers" names the test (json) and every source it needs
        csrc=""
        for part in ${list//+/ }; do
            csrc="$csrc $(find "$t/src" -name "$part.c" | head -n 1)"
        done
        list=${list%%+*}
        case $kind in
            regress)   args=(REGRESS="$list" ISOLATION= TAP_TESTS=) ;;
            isolation) args=(REGRESS= ISOLATION="$list" TAP_TESTS=) ;;
            tap)       args=(REGRESS= ISOLATION= PROVE_TESTS="$list") ;;
            fuzz)      # a libFuzzer target of test/fuzz, built from the mutated tree
                if ! { clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                           -I"$t/src" "$t/test/fuzz/${list}_fuzz.c" $csrc -lcrypto -o "$t/${list}_fuzz" \
                       && mkdir -p "$t/${list}_corpus" \
                       && "$t/${list}_fuzz" -max_total_time="${BYOK_MUTANT_FUZZ_SECONDS:-20}" -max_len=4096 -artifact_prefix="$t/" \
                           "$t/${list}_corpus" "$t/test/fuzz/${list}_corpus"; } >"$t/fuzz.log" 2>&1; then
                    failed_by="$failed_by fuzz:$list"
                fi
                continue ;;
            standalone) # a standalone test of test/fuzz (NAME_test.c on src/NAME.c), ASan/UBSan
                if ! { gcc -Wall -Wextra -g -fsanitize=address,undefined -fno-sanitize-recover=all \
                           -I"$t/src" -I"$t/test/fuzz" "$t/test/fuzz/${list}_test.c" $csrc -lcrypto \
                           -o "$t/${list}_test" \
                       && "$t/${list}_test" "$t/test/fuzz/corpus"; } >"$t/standalone.log" 2>&1; then
                    failed_by="$failed_by standalone:$list"
                fi
                continue ;;
            layout)    # the tree's shape (test/layout_check.py on the mutated tree)
                if ! /usr/bin/python3 -B "$t/test/layout_check.py" "$t" >"$t/layout.log" 2>&1; then
                    failed_by="$failed_by layout"
                fi
                continue ;;
            *) echo "unknown suite kind $kind in $name"; exit 2 ;;
        esac
        log=$(echo "$kind-$list" | tr -c 'A-Za-z0-9_.\n-' '_')
        if ! runuser -u postgres -- make -C "$t" installcheck bindir="$bin" "${args[@]}" >"$t/$log.log" 2>&1; then
            failed_by="$failed_by $kind:$list"
        fi
    done
}

if [ $# -gt 0 ]; then names=("$@"); else names=(); for f in "$HERE"/*.mut; do names+=("$(basename "$f" .mut)"); done; fi
# control: the unmutated tree, built and installed the same way, passes
# every suite the chosen mutants name (else a "catch" would mean nothing)
rm -rf "$W/base/pg"; cp -a "$PRIV" "$W/base/pg"
make -s -C "$W/base" install DESTDIR="$W/base/pg" >>"$W/base.log" 2>&1
chown -R postgres:postgres "$W/base/pg"
printf '%s\n' "${names[@]}" | sed 's|.*|'"$HERE"'/&.mut|' | xargs sed -n 's/^suites //p' | tr ' ' '\n' | sort -u >"$W/control.suites"
echo "suites $(tr '\n' ' ' <"$W/control.suites")" >"$W/control.mut"
run_suites "$W/base" "$W/control.mut"
if [ -n "$failed_by" ]; then
    echo "the unmutated tree fails$failed_by: fix that first (logs in $W/base)"; echo "0 caught, ${#names[@]} survived"; exit 1
fi
echo "control: the unmutated tree passes $(tr '\n' ' ' <"$W/control.suites")in $SECONDS s"

caught=0; survived=0
for name in "${names[@]}"; do
    spec="$HERE/$name.mut"
    t="$W/m-$name"
    rm -rf "$t"; cp -a "$W/base" "$t"
    what=$(sed -n 's/^# //p' "$spec" | head -n 1)
    if ! /usr/bin/python3 - "$spec" "$t" <<'PY'
import sys
spec, tree = sys.argv[1], sys.argv[2]
f = fr = to = None
for line in open(spec).read().split('\n'):
    for key in ('file', 'from', 'to'):
        if line.startswith(key + ' '):
            v = line[len(key) + 1:].lstrip(' ')
            if key == 'file': f = v
            elif key == 'from': fr = v
            else: to = v
path = tree + '/' + f
s = open(path).read()
if fr is None or to is None or s.count(fr) != 1:
    print('mutant does not apply: "%s" occurs %d times in %s' % (fr, s.count(fr) if fr else 0, f))
    sys.exit(1)
open(path, 'w').write(s.replace(fr, to))
PY
    then
        echo "SURVIVED $name (could not be applied)"; survived=$((survived + 1)); continue
    fi
    chown -R postgres:postgres "$t"
    # rebuild (only what the mutation touched) and install into the private copy
    rm -rf "$t/pg"; cp -a "$PRIV" "$t/pg"
    if ! runuser -u postgres -- make -s -C "$t" >"$t/build.log" 2>&1 || ! make -s -C "$t" install DESTDIR="$t/pg" >>"$t/build.log" 2>&1; then
        echo "caught   $name: it does not build"; caught=$((caught + 1)); continue
    fi
    chown -R postgres:postgres "$t/pg"
    start=$SECONDS
    run_suites "$t" "$spec"
    if [ -n "$failed_by" ]; then
        echo "caught   $name ($what) by$failed_by, $((SECONDS - start)) s"; caught=$((caught + 1))
    else
        echo "SURVIVED $name ($what)"; survived=$((survived + 1))
    fi
done
echo "all mutants took $SECONDS s"
echo "$caught caught, $survived survived"
[ $survived -eq 0 ]
