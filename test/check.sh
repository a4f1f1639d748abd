#!/usr/bin/env bash
# test/check.sh — the whole test suite, from a fresh Debian 12 machine, as root.
#
# Installs missing packages, builds byok (warnings fail the build), installs
# it into the system PostgreSQL 15, then runs every suite against scratch
# servers it starts itself (never the system cluster, never port 5432):
#   - pg_regress suites (sql/, expected/) on a temporary instance
#   - isolation specs (specs/) on a temporary instance
#   - TAP tests (test/t/, PostgreSQL::Test::Cluster): poller, lockout drills,
#     concurrency, standby, the HTTP providers against test/kms's server,
#     the pkcs11 provider against SoftHSM2
#   - the HTTP KMS test server's self-test, and the official AWS KMS and
#     Vault clients from npm driving it
#   - the mutants of test/mutants (every one must be caught)
#   - the benchmark harness in --quick mode (it must run; figures not judged)
#   - the KMIP TTLV codec's standalone test (AddressSanitizer) and 60 s of
#     libFuzzer on its decoder (BYOK_FUZZ_SECONDS changes the budget), 30 s on
#     the ciphertext format, 20 s on the catalog-row code (src/keyrow.c)
# and ends with "N passed, N failed".  Exit status is non-zero on any failure.
set -u
. "$(dirname "$0")/lib.sh"

byok_install_packages || { echo "0 passed, 1 failed"; exit 1; }
byok_build_install || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0; failed=0
count_results() {   # count "... ok" / "... FAILED" lines of a pg_regress run
    local log=$1 ok bad
    ok=$(grep -cE '\.\.\. ok|^ *ok [0-9]+' "$log")
    bad=$(grep -cE '\.\.\. FAILED|^ *not ok [0-9]+' "$log")
    passed=$((passed + ok)); failed=$((failed + bad))
}

add_summary() {    # add the "N passed, N failed" last line of a log; no such line is a failure
    local log=$1 line
    line=$(tail -n 1 "$log")
    echo "$line"
    if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        passed=$((passed + BASH_REMATCH[1])); failed=$((failed + BASH_REMATCH[2]))
    else
        cat "$log"; failed=$((failed + 1))
    fi
}

fuzz() {   # fuzz NAME SECONDS SEEDS SOURCE...: build NAME with libFuzzer, run it; one result
    local name=$1 seconds=$2 seeds=$3 log="$BUILD_DIR/$1.log"
    shift 3
    mkdir -p "$BUILD_DIR/${name}_corpus"
    if clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I"$BUILD_DIR/src" -I"$BUILD_DIR/test/fuzz" \
            "$@" -o "$BUILD_DIR/$name" >"$log" 2>&1 \
       && "$BUILD_DIR/$name" -max_total_time="$seconds" -max_len=4096 \
            "$BUILD_DIR/${name}_corpus" "$seeds" >>"$log" 2>&1; then
        echo "ok - $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"; passed=$((passed + 1))
    else
        echo "not ok - $name found a problem"; tail -n 40 "$log"; failed=$((failed + 1))
    fi
}

say "the KMIP TTLV codec (standalone, with AddressSanitizer), against messages PyKMIP wrote"
if gcc -Wall -Wextra -g -fsanitize=address,undefined -I"$BUILD_DIR/src" "$BUILD_DIR/test/fuzz/ttlv_test.c" \
        "$BUILD_DIR/src/kmip_ttlv.c" -o "$BUILD_DIR/ttlv_test" >"$BUILD_DIR/ttlv.log" 2>&1 \
   && "$BUILD_DIR/ttlv_test" "$BUILD_DIR/test/fuzz/corpus" >>"$BUILD_DIR/ttlv.log" 2>&1; then :; fi
add_summary "$BUILD_DIR/ttlv.log"

say "fuzzing the TTLV decoder for ${BYOK_FUZZ_SECONDS:-60} s (libFuzzer, ASan/UBSan)"
for p in clang-14 libclang-rt-14-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null 2>&1
done
fuzz ttlv_fuzz "${BYOK_FUZZ_SECONDS:-60}" "$BUILD_DIR/test/fuzz/corpus" \
    "$BUILD_DIR/test/fuzz/ttlv_fuzz.c" "$BUILD_DIR/src/kmip_ttlv.c"

say "the ciphertext format (src/format.c, standalone, with AddressSanitizer): round trips, every bit flip refused"
if gcc -Wall -Wextra -g -fsanitize=address,undefined -I"$BUILD_DIR/src" -I"$BUILD_DIR/test/fuzz" \
        "$BUILD_DIR/test/fuzz/format_test.c" "$BUILD_DIR/src/format.c" -lcrypto -o "$BUILD_DIR/format_test" \
        >"$BUILD_DIR/format.log" 2>&1 \
   && "$BUILD_DIR/format_test" >>"$BUILD_DIR/format.log" 2>&1; then :; fi
add_summary "$BUILD_DIR/format.log"

say "fuzzing the ciphertext parser and open for ${BYOK_FORMAT_FUZZ_SECONDS:-30} s (libFuzzer, ASan/UBSan)"
mkdir -p "$BUILD_DIR/format_seeds"
"$BUILD_DIR/format_test" --write-corpus "$BUILD_DIR/format_seeds" >/dev/null 2>&1 || true
fuzz format_fuzz "${BYOK_FORMAT_FUZZ_SECONDS:-30}" "$BUILD_DIR/format_seeds" \
    "$BUILD_DIR/test/fuzz/format_fuzz.c" "$BUILD_DIR/src/format.c" -lcrypto

say "fuzzing the catalog-row code (src/keyrow.c: rows of byok.data_keys into AADs and keys) for ${BYOK_KEYROW_FUZZ_SECONDS:-20} s"
fuzz keyrow_fuzz "${BYOK_KEYROW_FUZZ_SECONDS:-20}" "$BUILD_DIR/test/fuzz/keyrow_corpus" \
    "$BUILD_DIR/test/fuzz/keyrow_fuzz.c" "$BUILD_DIR/src/keyrow.c" -lcrypto

say "the HTTP KMS test server's own self-test (it must speak the real protocols)"
if /usr/bin/python3 -B "$REPO/test/kms/http_kms_selftest.py" >"$BUILD_DIR/kms_selftest.log" 2>&1; then :; fi
add_summary "$BUILD_DIR/kms_selftest.log"

say "the official AWS KMS and Vault clients (npm) against the same server"
if ! command -v npm >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if (cd "$BUILD_DIR/test/kms/clients" && npm ci --no-audit --no-fund --loglevel=error >"$BUILD_DIR/npm.log" 2>&1); then
    node "$BUILD_DIR/test/kms/clients/official_clients.mjs" >"$BUILD_DIR/clients.log" 2>&1
    grep -E '^(ok|not ok)' "$BUILD_DIR/clients.log" | grep -v '^ok' || true
    add_summary "$BUILD_DIR/clients.log"
else
    echo "npm ci failed:"; cat "$BUILD_DIR/npm.log"; failed=$((failed + 1))
fi

say "regression, isolation and TAP suites (make installcheck)"
runuser -u postgres -- make -C "$BUILD_DIR" PG_CONFIG=$PG_CONFIG installcheck >"$BUILD_DIR/installcheck.log" 2>&1
rc=$?
grep -E '^(test |ok|not ok|# )|\.\.\. |^t/|^test/t/|^Result' "$BUILD_DIR/installcheck.log" || true
count_results "$BUILD_DIR/installcheck.log"
if [ $rc -ne 0 ]; then
    for f in "$BUILD_DIR/regression.diffs" "$BUILD_DIR/output_iso/regression.diffs"; do
        [ -f "$f" ] && { echo "---- $f"; head -n 300 "$f"; }
    done
    [ $failed -eq 0 ] && failed=1
fi

say "mutants (test/mutants/run.sh): each one-line break of a guarantee, built into a private server copy, must be caught"
bash "$REPO/test/mutants/run.sh" >"$BUILD_DIR/mutants.log" 2>&1
grep -E '^(caught|SURVIVED|control|the unmutated)' "$BUILD_DIR/mutants.log"
if [[ $(tail -n 1 "$BUILD_DIR/mutants.log") =~ ^([0-9]+)\ caught,\ 0\ survived$ ]] && [ "${BASH_REMATCH[1]}" -gt 0 ]; then
    echo "ok - $(tail -n 1 "$BUILD_DIR/mutants.log")"; passed=$((passed + 1))
else
    echo "not ok - $(tail -n 1 "$BUILD_DIR/mutants.log")"; tail -n 40 "$BUILD_DIR/mutants.log"; failed=$((failed + 1))
fi

say "the benchmark harness, quick mode (proves it works; the figures are not judged here)"
if BYOK_ALREADY_INSTALLED=1 BYOK_SRC="$BUILD_DIR" bash "$REPO/test/bench/run.sh" --quick >"$BUILD_DIR/bench.log" 2>&1; then
    echo "ok - test/bench/run.sh --quick"; passed=$((passed + 1))
else
    echo "not ok - test/bench/run.sh --quick"; tail -n 40 "$BUILD_DIR/bench.log"; failed=$((failed + 1))
fi

echo
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
