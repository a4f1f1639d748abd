#!/usr/bin/env bash
# test/check.sh — the whole test suite, from a fresh Debian 12 machine, as root.
#
# Installs missing packages, builds byok (warnings fail the build), installs
# it into the system PostgreSQL 15, then runs every suite against scratch
# servers it starts itself (never the system cluster, never port 5432):
#   layout    the source tree's shape (test/layout_check.py)
#   fuzz      the KMIP TTLV codec's, the ciphertext format's and the provider
#             answer readers' standalone tests (ASan/UBSan, aborting at the
#             first finding) and libFuzzer on the TTLV decoder
#             (BYOK_FUZZ_SECONDS, default 60), the ciphertext format (30 s),
#             the catalog-row code (20 s) and the AWS and Vault answer
#             readers (20 s each)
#   server    the HTTP KMS test server's self-test and the official AWS KMS
#             and Vault clients (npm) against it: checks of the test server,
#             counted apart from byok's own
#   regress   pg_regress suites (sql/, expected/)
#   isolation isolation specs (specs/)
#   tap       TAP tests (test/t/, PostgreSQL::Test::Cluster)
#   mutants   test/mutants/run.sh: every one-line break must be caught
#   bench     the benchmark harness in --quick mode: its correctness targets
#             (errors, provider calls, the lockout bound) are checks; its
#             timing ratios are reported, not judged
#
#   test/check.sh                       everything (what CI runs)
#   test/check.sh regress tap           only those parts
#   test/check.sh tap=test/t/001_lockout.pl regress=setup,revoke   one file / chosen suites
#   test/check.sh mutants=purge_skipped only the named mutants
#
# Every check counts: a skipped check or a TAP file that skips itself is
# reported as skipped and fails the run (this command installs everything a
# test needs, so a skip means something is broken); every program's exit
# status counts.  The output ends with "N passed, N failed", preceded by a
# line that separates byok's checks from the test servers' own.
set -u
. "$(dirname "$0")/lib.sh"

parts=()
REGRESS_SEL=""; TAP_SEL=""; MUTANT_SEL=""
for a in "$@"; do
    case $a in
        regress=*) parts+=(regress); REGRESS_SEL=${a#*=}; REGRESS_SEL=${REGRESS_SEL//,/ } ;;
        tap=*)     parts+=(tap); TAP_SEL=${a#*=}; TAP_SEL=${TAP_SEL//,/ } ;;
        mutants=*) parts+=(mutants); MUTANT_SEL=${a#*=}; MUTANT_SEL=${MUTANT_SEL//,/ } ;;
        layout|fuzz|server|regress|isolation|tap|mutants|bench) parts+=("$a") ;;
        *) echo "unknown part $a (layout fuzz server regress isolation tap mutants bench, or regress=a,b tap=FILE mutants=NAME)"; exit 2 ;;
    esac
done
want() { [ ${#parts[@]} -eq 0 ] && return 0; local p; for p in "${parts[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

byok_install_packages || { echo "0 passed, 1 failed"; exit 1; }
byok_build_install || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0; failed=0; skipped=0        # byok's own checks
srv_passed=0; srv_failed=0           # checks of the test servers and their clients

# count_results LOG: the TAP and pg_regress result lines of a make installcheck
# run.  "ok N # skip" is a skip, not a pass; "1..0 # SKIP" (a file that skips
# itself entirely) is a skip; "- test server: " checks are the test server's.
count_results() {
    local log=$1 n
    n=$(grep -cE '^ *ok [0-9]+.*# *(skip|SKIP)|^ *1\.\.0 *# *(skip|SKIP)' "$log")
    skipped=$((skipped + n))
    n=$(grep -E '^ *ok [0-9]+' "$log" | grep -vE '# *(skip|SKIP)' | grep -c -- '- test server: ')
    srv_passed=$((srv_passed + n))
    n=$(grep -E '^ *not ok [0-9]+' "$log" | grep -c -- '- test server: ')
    srv_failed=$((srv_failed + n))
    n=$(grep -E '\.\.\. ok|^ *ok [0-9]+' "$log" | grep -vE '# *(skip|SKIP)' | grep -vc -- '- test server: ')
    passed=$((passed + n))
    n=$(grep -E '\.\.\. FAILED|^ *not ok [0-9]+' "$log" | grep -vc -- '- test server: ')
    failed=$((failed + n))
}

# add_summary LOG RC [server]: add the "N passed, N failed" last line of a
# standalone program's log; no such line, or a non-zero exit with no failure
# counted, is one failure more
add_summary() {
    local log=$1 rc=$2 kind=${3:-byok} line p=0 f=1
    line=$(tail -n 1 "$log")
    echo "$line"
    if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        p=${BASH_REMATCH[1]}; f=${BASH_REMATCH[2]}
        [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && { echo "not ok - it exited with status $rc"; f=1; }
    else
        tail -n 40 "$log"
    fi
    if [ "$kind" = server ]; then srv_passed=$((srv_passed + p)); srv_failed=$((srv_failed + f))
    else passed=$((passed + p)); failed=$((failed + f)); fi
}

fuzz() {   # fuzz NAME SECONDS SEEDS SOURCE...: build NAME with libFuzzer, run it; one result
    local name=$1 seconds=$2 seeds=$3 log="$BUILD_DIR/$1.log"
    shift 3
    mkdir -p "$BUILD_DIR/${name}_corpus"
    if clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I"$BUILD_DIR/src" -I"$BUILD_DIR/test/fuzz" \
            "$@" -o "$BUILD_DIR/$name" >"$log" 2>&1 \
       && "$BUILD_DIR/$name" -max_total_time="$seconds" -max_len=4096 -artifact_prefix="$BUILD_DIR/$name-" \
            "$BUILD_DIR/${name}_corpus" "$seeds" >>"$log" 2>&1; then
        echo "ok - $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"; passed=$((passed + 1))
    else
        echo "not ok - $name found a problem"; tail -n 40 "$log"; failed=$((failed + 1))
    fi
}

# standalone C tests: AddressSanitizer and UBSan, aborting at the first finding
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=all)

if want layout; then
    say "the source tree's shape (test/layout_check.py): file sizes, headers, folder-qualified includes, no include circle"
    /usr/bin/python3 -B "$REPO/test/layout_check.py" "$REPO" >"$BUILD_DIR/layout.log" 2>&1
    rc=$?
    grep '^not ok' "$BUILD_DIR/layout.log" || true
    add_summary "$BUILD_DIR/layout.log" $rc
fi

if want fuzz; then
    say "the KMIP TTLV codec (standalone, with AddressSanitizer), against messages PyKMIP wrote"
    rc=1
    gcc -Wall -Wextra -g "${SAN[@]}" -I"$BUILD_DIR/src" "$BUILD_DIR/test/fuzz/ttlv_test.c" \
        "$BUILD_DIR/src/providers/kmip/ttlv.c" -o "$BUILD_DIR/ttlv_test" >"$BUILD_DIR/ttlv.log" 2>&1 \
        && { "$BUILD_DIR/ttlv_test" "$BUILD_DIR/test/fuzz/corpus" >>"$BUILD_DIR/ttlv.log" 2>&1; rc=$?; }
    add_summary "$BUILD_DIR/ttlv.log" $rc

    say "fuzzing the TTLV decoder for ${BYOK_FUZZ_SECONDS:-60} s (libFuzzer, ASan/UBSan)"
    for p in clang-14 libclang-rt-14-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null 2>&1
    done
    fuzz ttlv_fuzz "${BYOK_FUZZ_SECONDS:-60}" "$BUILD_DIR/test/fuzz/corpus" \
        "$BUILD_DIR/test/fuzz/ttlv_fuzz.c" "$BUILD_DIR/src/providers/kmip/ttlv.c"

    say "the ciphertext format (src/crypto/format.c, standalone, with AddressSanitizer): round trips, every bit flip refused"
    rc=1
    gcc -Wall -Wextra -g "${SAN[@]}" -I"$BUILD_DIR/src" -I"$BUILD_DIR/test/fuzz" \
        "$BUILD_DIR/test/fuzz/format_test.c" "$BUILD_DIR/src/crypto/format.c" -lcrypto -o "$BUILD_DIR/format_test" \
        >"$BUILD_DIR/format.log" 2>&1 \
        && { "$BUILD_DIR/format_test" >>"$BUILD_DIR/format.log" 2>&1; rc=$?; }
    add_summary "$BUILD_DIR/format.log" $rc

    say "fuzzing the ciphertext parser and open for ${BYOK_FORMAT_FUZZ_SECONDS:-30} s (libFuzzer, ASan/UBSan)"
    mkdir -p "$BUILD_DIR/format_seeds"
    if ! "$BUILD_DIR/format_test" --write-corpus "$BUILD_DIR/format_seeds" >/dev/null 2>&1; then
        echo "not ok - format_test --write-corpus failed"; failed=$((failed + 1))
    fi
    fuzz format_fuzz "${BYOK_FORMAT_FUZZ_SECONDS:-30}" "$BUILD_DIR/format_seeds" \
        "$BUILD_DIR/test/fuzz/format_fuzz.c" "$BUILD_DIR/src/crypto/format.c" -lcrypto

    say "fuzzing the catalog-row code (src/crypto/keyrow.c: rows of byok.data_keys into AADs and keys) for ${BYOK_KEYROW_FUZZ_SECONDS:-20} s"
    fuzz keyrow_fuzz "${BYOK_KEYROW_FUZZ_SECONDS:-20}" "$BUILD_DIR/test/fuzz/keyrow_corpus" \
        "$BUILD_DIR/test/fuzz/keyrow_fuzz.c" "$BUILD_DIR/src/crypto/keyrow.c" -lcrypto

    say "the provider-answer readers (src/providers/json.c, answers.c, standalone, with AddressSanitizer): bounds, UTF-8, what destroyed needs"
    rc=1
    gcc -Wall -Wextra -g "${SAN[@]}" -I"$BUILD_DIR/src" -I"$BUILD_DIR/test/fuzz" \
        "$BUILD_DIR/test/fuzz/json_test.c" "$BUILD_DIR/src/providers/json.c" "$BUILD_DIR/src/providers/answers.c" \
        -o "$BUILD_DIR/json_test" >"$BUILD_DIR/json.log" 2>&1 \
        && { "$BUILD_DIR/json_test" >>"$BUILD_DIR/json.log" 2>&1; rc=$?; }
    add_summary "$BUILD_DIR/json.log" $rc
    mkdir -p "$BUILD_DIR/answer_seeds"
    if ! "$BUILD_DIR/json_test" --write-corpus "$BUILD_DIR/answer_seeds" >/dev/null 2>&1; then
        echo "not ok - json_test --write-corpus failed"; failed=$((failed + 1))
    fi
    for p in aws vault; do
        say "fuzzing the $p answer readers for ${BYOK_ANSWER_FUZZ_SECONDS:-20} s (libFuzzer, ASan/UBSan)"
        fuzz ${p}_answer_fuzz "${BYOK_ANSWER_FUZZ_SECONDS:-20}" "$BUILD_DIR/answer_seeds" \
            "$BUILD_DIR/test/fuzz/${p}_answer_fuzz.c" "$BUILD_DIR/src/providers/json.c" "$BUILD_DIR/src/providers/answers.c"
    done
fi

if want server; then
    say "the HTTP KMS test server's own self-test (it must speak the real protocols; counted as the test server's)"
    /usr/bin/python3 -B "$REPO/test/kms/http_kms_selftest.py" >"$BUILD_DIR/kms_selftest.log" 2>&1
    add_summary "$BUILD_DIR/kms_selftest.log" $? server

    say "the official AWS KMS and Vault clients (npm) against the same server (counted as the test server's)"
    if ! command -v npm >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    if (cd "$BUILD_DIR/test/kms/clients" && npm ci --no-audit --no-fund --loglevel=error >"$BUILD_DIR/npm.log" 2>&1); then
        node "$BUILD_DIR/test/kms/clients/official_clients.mjs" >"$BUILD_DIR/clients.log" 2>&1
        rc=$?
        grep -E '^(ok|not ok)' "$BUILD_DIR/clients.log" | grep -v '^ok' || true
        add_summary "$BUILD_DIR/clients.log" $rc server
    else
        echo "npm ci failed:"; cat "$BUILD_DIR/npm.log"; srv_failed=$((srv_failed + 1))
    fi
fi

# installcheck PART MAKE-ARGS...: one part of make installcheck (each its own
# run, so a failing regression suite does not hide the isolation or TAP checks)
installcheck() {
    local part=$1 log="$BUILD_DIR/$1.log" rc before n f
    shift
    say "$part suites (make installcheck $*)"
    runuser -u postgres -- make -C "$BUILD_DIR" PG_CONFIG=$PG_CONFIG installcheck "$@" >"$log" 2>&1
    rc=$?
    grep -E '^(test |ok|not ok|# )|\.\.\. |^t/|^test/t/|^Result' "$log" || true
    before=$((failed + srv_failed))
    count_results "$log"
    # a TAP file that died part-way (no plan, or not the planned count): prove says so
    n=$(grep -cE '^ *Parse errors:' "$log")
    [ "$n" -gt 0 ] && { echo "not ok - $n TAP file(s) exited part-way"; failed=$((failed + n)); }
    if [ $rc -ne 0 ]; then
        for f in "$BUILD_DIR/regression.diffs" "$BUILD_DIR/output_iso/regression.diffs"; do
            [ -f "$f" ] && { echo "---- $f"; head -n 300 "$f"; }
        done
        [ $((failed + srv_failed)) -eq $before ] && { echo "not ok - make installcheck ($part) exited with status $rc"; tail -n 30 "$log"; failed=$((failed + 1)); }
    fi
    cat "$log" >>"$BUILD_DIR/installcheck.log"
}
: >"$BUILD_DIR/installcheck.log"
if want regress; then
    if [ -n "$REGRESS_SEL" ]; then installcheck regress REGRESS="$REGRESS_SEL" ISOLATION= TAP_TESTS=
    else installcheck regress ISOLATION= TAP_TESTS=; fi
fi
want isolation && installcheck isolation REGRESS= TAP_TESTS=
# Citus (test/t/024_citus.pl, and its mutants): built once from the vendored
# source, cached in /var/cache/byok, installed into the system PostgreSQL
if want tap || want mutants; then
    byok_citus_install || { echo "not ok - Citus could not be built or installed"; failed=$((failed + 1)); }
fi

if want tap; then
    if [ -n "$TAP_SEL" ]; then installcheck tap REGRESS= ISOLATION= PROVE_TESTS="$TAP_SEL"
    else installcheck tap REGRESS= ISOLATION=; fi
fi

if want mutants; then
    say "mutants (test/mutants/run.sh): each one-line break of a guarantee, built into a private server copy, must be caught"
    # shellcheck disable=SC2086
    bash "$REPO/test/mutants/run.sh" $MUTANT_SEL >"$BUILD_DIR/mutants.log" 2>&1
    rc=$?
    grep -E '^(caught|SURVIVED|control|the unmutated|all mutants)' "$BUILD_DIR/mutants.log"
    n=$(grep -c '^caught ' "$BUILD_DIR/mutants.log"); passed=$((passed + n))
    n=$(grep -c '^SURVIVED ' "$BUILD_DIR/mutants.log"); failed=$((failed + n))
    if ! [[ $(tail -n 1 "$BUILD_DIR/mutants.log") =~ ^[1-9][0-9]*\ caught,\ 0\ survived$ ]] || [ $rc -ne 0 ]; then
        echo "not ok - $(tail -n 1 "$BUILD_DIR/mutants.log")"; tail -n 40 "$BUILD_DIR/mutants.log"; failed=$((failed + 1))
    fi
fi

if want bench; then
    say "the benchmark harness, quick mode: correctness targets are checks, timing ratios are reported only"
    BYOK_ALREADY_INSTALLED=1 BYOK_SRC="$BUILD_DIR" bash "$REPO/test/bench/run.sh" --quick >"$BUILD_DIR/bench.log" 2>&1
    rc=$?
    grep -E '^(ok|not ok) - benchmark' "$BUILD_DIR/bench.log" || true
    n=$(grep -cE '^ok - benchmark' "$BUILD_DIR/bench.log"); passed=$((passed + n))
    n=$(grep -cE '^not ok - benchmark' "$BUILD_DIR/bench.log"); failed=$((failed + n))
    if [ $rc -ne 0 ] && [ "$n" -eq 0 ]; then
        echo "not ok - test/bench/run.sh --quick exited with status $rc"; tail -n 40 "$BUILD_DIR/bench.log"; failed=$((failed + 1))
    elif [ $rc -eq 0 ] && ! grep -qE '^ok - benchmark' "$BUILD_DIR/bench.log"; then
        echo "not ok - the benchmark reported no correctness target"; failed=$((failed + 1))
    fi
fi

echo
if [ $skipped -gt 0 ]; then
    echo "$skipped check(s) skipped, counted as failed: this command installs everything they need"
    grep -E '^ *ok [0-9]+.*# *(skip|SKIP)|^ *1\.\.0 *# *(skip|SKIP)|skipped:' "$BUILD_DIR/installcheck.log" 2>/dev/null | head -n 20
fi
echo "byok: $passed passed, $((failed + skipped)) failed ($skipped of them skipped); test servers and clients: $srv_passed passed, $srv_failed failed"
echo "$((passed + srv_passed)) passed, $((failed + skipped + srv_failed)) failed"
[ $((failed + skipped + srv_failed)) -eq 0 ]
