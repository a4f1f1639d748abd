#!/usr/bin/python3
"""bench.py -- byok's benchmarks, side by side in one run.

Run by test/bench/run.sh, which starts the cluster and the KMS test server;
this script only measures.  Every comparison alternates A and B and reports
medians of at least 5 repetitions (3 in --quick mode, which only proves
the harness works).  Results: results/bench.csv (every raw measurement),
results/summary.csv (one line per figure), results/summary.md (the table
README shows) and PNG plots.

Figures (issue "Benchmarks"):
  1 hot path: 200,000 x 32 B, byok vs pgcrypto, plus the same SELECT without encryption
  2 large values: 256 x 1 MiB, byok throughput vs `openssl speed -evp aes-256-gcm` (16 KiB)
  3 pgbench read/write on two encrypted columns vs plaintext, 1 and 2 clients
  4 cold start: 1,000 tenants, cache flushed, KMS at 50 ms latency
  5 eviction under load: whole cache flushed mid-run
  6 revocation lockout: drills at poll intervals 1 s and 250 ms
  7 poller scale: one round for 1,000 and 10,000 CMKs at 20 ms latency
  8 memory: shared memory at byok.cache_size 10,000 and 100,000
  9 kmip provider against PyKMIP: Revoke drills at 250 ms, and one poll round
    over 1,000 CMKs batched (32 per message) vs one message per key
    (measured right after figure 3, while few other CMKs exist)
"""
import argparse
import csv
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import psycopg2

A = argparse.ArgumentParser()
A.add_argument("--host", required=True)
A.add_argument("--port", type=int, required=True)
A.add_argument("--kms", required=True, help="base URL of the KMS test server")
A.add_argument("--keyring", required=True)
A.add_argument("--datadir", required=True)
A.add_argument("--pgbin", required=True)
A.add_argument("--out", required=True)
A.add_argument("--kmip-dir", required=True, help="certificates of the PyKMIP server (kmip_certs.sh)")
A.add_argument("--kmip-port", type=int, required=True)
A.add_argument("--quick", action="store_true")
args = A.parse_args()
QUICK = args.quick
REPS = 3 if QUICK else 7
os.makedirs(args.out, exist_ok=True)

raw = open(os.path.join(args.out, "bench.csv"), "w", newline="")
RAW = csv.writer(raw)
RAW.writerow(["figure", "series", "rep", "value", "unit"])
SUMMARY = []


def log(msg):
    print(msg, flush=True)


def connect():
    c = psycopg2.connect(host=args.host, port=args.port, dbname="postgres", user="postgres")
    c.autocommit = True
    return c


DB = connect()


def sql(q, params=None):
    with DB.cursor() as cur:
        cur.execute(q, params)
        return cur.fetchall() if cur.description else None


def one(q, params=None):
    return sql(q, params)[0][0]


def admin(method, path, body=None):
    req = urllib.request.Request(args.kms + "/__admin/" + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        data = r.read()
        return json.loads(data) if data else {}


def record(fig, series, values, unit):
    for i, v in enumerate(values):
        RAW.writerow([fig, series, i + 1, "%.6f" % v, unit])
    raw.flush()


def summary(fig, metric, value, unit, target=None, ok=None, note="", gate=False):
    """One figure.  A target with gate=True is a correctness target (errors,
    provider calls, the lockout bound): missing it fails the run.  Other
    targets are timing ratios on a shared, noisy machine: reported, not judged."""
    SUMMARY.append({"figure": fig, "metric": metric, "value": value, "unit": unit,
                    "target": target or "", "ok": "" if ok is None else ("yes" if ok else "NO"), "note": note,
                    "gate": bool(gate and ok is not None)})
    log("  %-5s %-62s %12s %-6s %s %s" % (fig, metric, ("%.3f" % value) if isinstance(value, float) else value,
                                          unit, target or "", "" if ok is None else
                                          ("ok" if ok else "MISSED") + ("" if gate else " (timing, report only)")))


def set_conf(**kv):
    for k, v in kv.items():
        sql("ALTER SYSTEM SET %s = %%s" % k, (str(v),))
    sql("SELECT pg_reload_conf()")
    time.sleep(0.3)


def wait_until(q, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if one(q):
            return True
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for: " + q)


def new_key(name):
    path = os.path.join(args.keyring, name + ".key")
    with open(path, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(path, 0o600)


def drill(table, interval_ms, disable, trace=None):
    """Four sessions decrypt rows of 'table' every 2 ms; at a random phase of
    the poll cycle disable() cuts the CMK off.  Returns the ms from the start
    of disable() to the last successful decrypt."""
    stop = threading.Event()
    events = []
    ready = threading.Barrier(5)

    def session(n):
        c = psycopg2.connect(host=args.host, port=args.port, dbname="postgres", user="postgres")
        cur = c.cursor()
        i = n
        first = True
        while not stop.is_set():
            try:
                cur.execute("SELECT byok_decrypt(c) FROM %s WHERE i = %%s" % table, (1 + i % 100,))
                cur.fetchall()
                events.append((time.time(), n, True))
            except psycopg2.Error:
                events.append((time.time(), n, False))
                c.rollback()
            i += 1
            if first:
                first = False
                ready.wait()
            time.sleep(0.002)
        c.rollback()
        c.close()

    th = [threading.Thread(target=session, args=(n,)) for n in range(4)]
    for t in th:
        t.start()
    ready.wait()
    time.sleep(0.1 + random.random() * interval_ms / 1000.0)
    t0 = time.time()
    disable()
    time.sleep(interval_ms / 1000.0 + 0.6)
    stop.set()
    for t in th:
        t.join()
    last_ok = max([t for t, n, ok in events if ok and t >= t0] or [t0]) - t0
    if trace is not None:
        with open(trace, "w") as f:
            for t, n, ok in sorted(events):
                f.write("%.4f %d %d\n" % ((t - t0) * 1000, n, 1 if ok else 0))
    return last_ok * 1000


def pctl(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))] if v else float("nan")


# --------------------------------------------------------------------------- set-up
log("== set-up")
sql("CREATE EXTENSION IF NOT EXISTS byok")
sql("CREATE EXTENSION IF NOT EXISTS pgcrypto")
sql("""CREATE OR REPLACE FUNCTION bench_ms(q text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz;
BEGIN t0 := clock_timestamp(); EXECUTE q; RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END $$""")
for t in ("bench",) + tuple("t%d" % i for i in range(10)):
    new_key(t + "-cmk")
    sql("SELECT byok_create_tenant(%s, 'local', %s) WHERE NOT EXISTS (SELECT 1 FROM byok.tenants WHERE name = %s)",
        (t, t + "-cmk", t))

# --------------------------------------------------------------------------- 1 hot path
NROWS = 20000 if QUICK else 200000
log("== 1 hot path: %d values of 32 bytes, warm cache" % NROWS)
KEY = "'\\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea"
sql("DROP TABLE IF EXISTS hot; CREATE TABLE hot AS SELECT gen_random_bytes(32) AS b FROM generate_series(1, %d)" % NROWS)
sql("DROP TABLE IF EXISTS hot_ct; CREATE TABLE hot_ct AS SELECT byok_encrypt('bench', b) AS c, encrypt(b, %s, 'aes') AS p FROM hot" % KEY)
sql("VACUUM ANALYZE hot")
sql("VACUUM ANALYZE hot_ct")
Q = {
    "plain": "SELECT count(length(b)) FROM hot",
    "byok_encrypt": "SELECT count(byok_encrypt('bench', b)) FROM hot",
    "pgcrypto_encrypt": "SELECT count(encrypt(b, %s, 'aes')) FROM hot" % KEY,
    "plain_ct": "SELECT count(length(c)) FROM hot_ct",
    "byok_decrypt": "SELECT count(byok_decrypt(c)) FROM hot_ct",
    "pgcrypto_decrypt": "SELECT count(decrypt(p, %s, 'aes')) FROM hot_ct" % KEY,
}
for q in Q.values():
    one("SELECT bench_ms(%s)", (q,))  # warm
times = {k: [] for k in Q}
for rep in range(REPS):
    for pair in (("byok_encrypt", "pgcrypto_encrypt"), ("pgcrypto_encrypt", "byok_encrypt"),
                 ("byok_decrypt", "pgcrypto_decrypt"), ("pgcrypto_decrypt", "byok_decrypt"),
                 ("plain", "plain_ct")):
        for k in pair:
            if len(times[k]) <= rep:
                times[k].append(one("SELECT bench_ms(%s)", (Q[k],)))
for k, v in times.items():
    record("1", k, v, "ms")
med = {k: statistics.median(v) for k, v in times.items()}
for k in ("byok_encrypt", "pgcrypto_encrypt", "byok_decrypt", "pgcrypto_decrypt", "plain"):
    summary("1", "%s ns/row" % k, med[k] * 1e6 / NROWS, "ns")
r_enc = med["byok_encrypt"] / med["pgcrypto_encrypt"]
r_dec = med["byok_decrypt"] / med["pgcrypto_decrypt"]
summary("1", "byok_encrypt / pgcrypto encrypt (time ratio)", r_enc, "", "<= 0.8", r_enc <= 0.8)
summary("1", "byok_decrypt / pgcrypto decrypt (time ratio)", r_dec, "", "<= 0.8", r_dec <= 0.8)
summary("1", "byok_encrypt ns/row above the unencrypted SELECT", (med["byok_encrypt"] - med["plain"]) * 1e6 / NROWS, "ns")
summary("1", "byok_decrypt ns/row above the unencrypted SELECT", (med["byok_decrypt"] - med["plain_ct"]) * 1e6 / NROWS, "ns")
sql("DROP TABLE hot; DROP TABLE hot_ct")

# --------------------------------------------------------------------------- 2 large values
NBIG = 32 if QUICK else 256
log("== 2 large values: %d x 1 MiB" % NBIG)
out = subprocess.run(["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "1" if QUICK else "3"],
                     capture_output=True, text=True).stdout
m = re.search(r"AES-256-GCM\s+([\d.]+)k", out)
openssl_mbs = float(m.group(1)) * 1000 / 1e6 if m else float("nan")   # k = 1000 bytes/s
summary("2", "openssl speed -evp aes-256-gcm, 16 KiB blocks", openssl_mbs, "MB/s")
big_q = {
    "byok_encrypt": """DO $$ DECLARE v bytea := (SELECT b FROM big1); BEGIN
        FOR i IN 1 .. %d LOOP PERFORM byok_encrypt('bench', v); END LOOP; END $$""" % NBIG,
    "byok_decrypt": """DO $$ DECLARE v bytea := (SELECT c FROM big1); BEGIN
        FOR i IN 1 .. %d LOOP PERFORM byok_decrypt(v); END LOOP; END $$""" % NBIG,
    "copy_only": """DO $$ DECLARE v bytea := (SELECT b FROM big1); BEGIN
        FOR i IN 1 .. %d LOOP PERFORM v || '\\x'::bytea; END LOOP; END $$""" % NBIG,
}
sql("""DROP TABLE IF EXISTS big1; CREATE TABLE big1 AS
       SELECT decode(string_agg(md5(i::text || random()::text), ''), 'hex') AS b FROM generate_series(1, 65536) i""")
sql("ALTER TABLE big1 ADD COLUMN c bytea; UPDATE big1 SET c = byok_encrypt('bench', b)")
for q in big_q.values():
    one("SELECT bench_ms(%s)", (q,))
bt = {k: [] for k in big_q}
for rep in range(max(REPS, 5)):
    for k in (("byok_encrypt", "copy_only", "byok_decrypt") if rep % 2 == 0 else ("byok_decrypt", "copy_only", "byok_encrypt")):
        bt[k].append(one("SELECT bench_ms(%s)", (big_q[k],)))
for k, v in bt.items():
    record("2", k, v, "ms")
mbs = {k: NBIG * 1048576 / 1e6 / (statistics.median(v) / 1000) for k, v in bt.items()}
summary("2", "byok_encrypt of 1 MiB values (in memory)", mbs["byok_encrypt"], "MB/s")
summary("2", "byok_decrypt of 1 MiB values (in memory)", mbs["byok_decrypt"], "MB/s")
summary("2", "copying 1 MiB values alone (same loop, no crypto)", mbs["copy_only"], "MB/s")
r2 = mbs["byok_encrypt"] / openssl_mbs
summary("2", "byok_encrypt throughput / openssl 16 KiB", r2, "", ">= 0.6", r2 >= 0.6)
r2d = mbs["byok_decrypt"] / openssl_mbs
summary("2", "byok_decrypt throughput / openssl 16 KiB", r2d, "", ">= 0.6", r2d >= 0.6)
sql("DROP TABLE big1")

# --------------------------------------------------------------------------- 3 pgbench
log("== 3 pgbench read/write, two encrypted columns vs plaintext")
NACC = 10000
sql("DROP TABLE IF EXISTS acct, acct_plain")
sql("""SELECT byok_declare_scope('acct.name'), byok_declare_scope('acct.email');
       CREATE TABLE acct (id int PRIMARY KEY, tenant text, name bytea, email bytea);
       INSERT INTO acct SELECT i, 't' || (i %% 10), byok_encrypt('t' || (i %% 10), 'name ' || i, 'acct.name'),
              byok_encrypt('t' || (i %% 10), 'user' || i || '@example.com', 'acct.email') FROM generate_series(1, %d) i;
       CREATE TABLE acct_plain (id int PRIMARY KEY, tenant text, name text, email text);
       INSERT INTO acct_plain SELECT i, 't' || (i %% 10), 'name ' || i, 'user' || i || '@example.com'
              FROM generate_series(1, %d) i""" % (NACC, NACC))
sql("VACUUM ANALYZE acct")
sql("VACUUM ANALYZE acct_plain")
scripts = {
    "byok": """\\set id random(1, %d)
SELECT byok_decrypt_text(name), byok_decrypt_text(email) FROM acct WHERE id = :id;
\\set id2 random(1, %d)
UPDATE acct SET name = byok_encrypt(tenant, 'name ' || :id2, 'acct.name'), email = byok_encrypt(tenant, 'u' || :id2 || '@example.com', 'acct.email') WHERE id = :id2;
""" % (NACC, NACC),
    "plain": """\\set id random(1, %d)
SELECT name, email FROM acct_plain WHERE id = :id;
\\set id2 random(1, %d)
UPDATE acct_plain SET name = 'name ' || :id2, email = 'u' || :id2 || '@example.com' WHERE id = :id2;
""" % (NACC, NACC),
}
for k, s in scripts.items():
    with open(os.path.join(args.out, "pgbench_%s.sql" % k), "w") as f:
        f.write(s)
DUR = 2 if QUICK else 8


def pgbench(script, clients, duration, extra=()):
    cmd = [os.path.join(args.pgbin, "pgbench"), "-h", args.host, "-p", str(args.port), "-U", "postgres", "-n",
           "-M", "prepared", "-c", str(clients), "-j", str(clients), "-T", str(duration),
           "-f", os.path.join(args.out, "pgbench_%s.sql" % script)] + list(extra) + ["postgres"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", r.stdout)
    if not m:
        raise RuntimeError("pgbench failed: " + r.stdout + r.stderr)
    return float(m.group(1)), r


for clients in (1, 2):
    tps = {"byok": [], "plain": []}
    for rep in range(3 if QUICK else 5):
        for k in (("byok", "plain") if rep % 2 == 0 else ("plain", "byok")):
            tps[k].append(pgbench(k, clients, DUR)[0])
    for k, v in tps.items():
        record("3", "%s_c%d" % (k, clients), v, "tps")
    b, p = statistics.median(tps["byok"]), statistics.median(tps["plain"])
    summary("3", "pgbench %d client(s): byok tps" % clients, b, "tps")
    summary("3", "pgbench %d client(s): plaintext tps" % clients, p, "tps")
    ov = 1 - b / p
    summary("3", "pgbench %d client(s): overhead of encryption" % clients, ov * 100, "%", "<= 15%", ov <= 0.15)

# --------------------------------------------------------------------------- 4 cold start
# --------------------------------------------------------------------------- 9 kmip
# Run here, before figures 4 and 7 add thousands of aws-kms CMKs, so the
# poller's round is (nearly) the KMIP CMKs alone.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kms"))
import kmipctl  # noqa: E402

log("== 9 kmip provider against PyKMIP: Revoke drills, poll round batched vs one message per key")
KD = args.kmip_dir
KC = kmipctl.Client("127.0.0.1", args.kmip_port, KD + "/client.crt", KD + "/client.key", KD + "/ca.crt", 30)
set_conf(**{"byok.poll_interval": "250ms"})
wait_until("SELECT poll_interval_ms = 250 FROM byok_poller_status()")
NKD = 3 if QUICK else 10
res = []
for k in range(NKD):
    uid = KC.create("kdrill%d" % k, True)
    sql("SELECT byok_create_tenant(%s, 'kmip', %s)", ("kdrill%d" % k, uid))
    sql("DROP TABLE IF EXISTS kdrill; CREATE TABLE kdrill AS "
        "SELECT i, byok_encrypt(%s, 'value ' || i) AS c FROM generate_series(1, 100) i", ("kdrill%d" % k,))
    res.append(drill("kdrill", 250, lambda: KC.revoke(uid, False)))
    wait_until("SELECT state = 'cmk_disabled' FROM byok_stats() WHERE tenant = 'kdrill%d'" % k)
record("9", "kmip_last_success_after_revoke_250ms", res, "ms")
summary("9", "kmip, poll 250 ms: Revoke -> last successful decrypt, p50 (%d drills)" % NKD,
        statistics.median(res), "ms")
summary("9", "kmip, poll 250 ms: Revoke -> last successful decrypt, max", max(res), "ms",
        "<= 350 ms", max(res) <= 350, gate=True)
set_conf(**{"byok.poll_interval": "1s"})

NK = 100 if QUICK else 1000
uids = [KC.create("kbench%d" % i, True) for i in range(NK)]
with DB.cursor() as cur:
    for i, u in enumerate(uids):
        cur.execute("SELECT byok_create_tenant(%s, 'kmip', %s)", ("kbench%d" % i, u))
sql("SELECT count(byok_encrypt('kbench' || i, 'x')) FROM generate_series(0, %s) i", (NK - 1,))
wait_until("SELECT count(*) = %d FROM byok_stats() WHERE tenant LIKE 'kbench%%' AND last_poll_result = 'enabled'" % NK, 120)
rounds = {32: [], 1: []}
for rep in range(2 if QUICK else 5):
    for bs in (32, 1):
        set_conf(**{"byok.kmip_batch_size": bs})
        r0 = one("SELECT rounds FROM byok_poller_status()")
        wait_until("SELECT rounds >= %d + 2 FROM byok_poller_status()" % r0, 120)
        rounds[bs].append(one("SELECT last_round_ms FROM byok_poller_status()"))
ncmk = one("SELECT last_round_cmks FROM byok_poller_status()")
set_conf(**{"byok.kmip_batch_size": 32})
KC.close()
record("9", "kmip_round_batch32", rounds[32], "ms")
record("9", "kmip_round_batch1", rounds[1], "ms")
b32, b1 = statistics.median(rounds[32]), statistics.median(rounds[1])
summary("9", "kmip: one poll round over %d CMKs, 32 per message (median)" % ncmk, b32, "ms")
summary("9", "kmip: one poll round over %d CMKs, one message per key (median)" % ncmk, b1, "ms")
summary("9", "kmip: batched / one message per key (time ratio)", b32 / b1, "")

NCOLD = 100 if QUICK else 1000
log("== 4 cold start: %d aws-kms tenants, cache flushed, KMS latency 50 ms" % NCOLD)
admin("DELETE", "faults")
ids = admin("POST", "create", {"kind": "aws", "count": NCOLD})["ids"]
sql("DROP TABLE IF EXISTS cold")
sql("CREATE TABLE cold (tenant text, c bytea)")
with DB.cursor() as cur:
    for i, kid in enumerate(ids):
        cur.execute("SELECT byok_create_tenant(%s, 'aws-kms', %s)", ("cold%d" % i, kid))
    cur.execute("INSERT INTO cold SELECT 'cold' || i, byok_encrypt('cold' || i, 'secret ' || i) FROM generate_series(0, %s) i",
                (NCOLD - 1,))
sql("SELECT byok_cache_flush()")
admin("POST", "stats/reset")
admin("POST", "faults", {"latency_ms": 50})
lat, lock = [], threading.Lock()
order = list(range(NCOLD))
random.shuffle(order)
touched, start = set(), time.time()
warm_at = [None]


def cold_worker(part):
    c = connect()
    cur = c.cursor()
    cur.execute("PREPARE q(text) AS SELECT byok_decrypt(c) FROM cold WHERE tenant = $1")
    for i in part:
        t0 = time.time()
        cur.execute("EXECUTE q(%s)", ("cold%d" % i,))
        cur.fetchall()
        t1 = time.time()
        with lock:
            lat.append((t1 - start, (t1 - t0) * 1000))
            touched.add(i)
            if len(touched) == NCOLD and warm_at[0] is None:
                warm_at[0] = t1 - start
    c.close()


NCLIENTS = 8
threads = [threading.Thread(target=cold_worker, args=(order[k::NCLIENTS],)) for k in range(NCLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
st = admin("GET", "stats")
decrypts = sum(v.get("Decrypt", 0) for v in st["aws"]["keys"].values())
admin("DELETE", "faults")
record("4", "statement_ms", [x[1] for x in lat], "ms")
with open(os.path.join(args.out, "coldstart.dat"), "w") as f:
    for t, ms in sorted(lat):
        f.write("%.4f %.3f\n" % (t, ms))
summary("4", "tenants touched", float(len(touched)), "")
summary("4", "provider unwrap calls (single flight: = tenants touched)", float(decrypts), "",
        "= %d" % len(touched), decrypts == len(touched) and len(touched) == NCOLD, gate=True)
summary("4", "time to warm all tenants (%d clients)" % NCLIENTS, warm_at[0] * 1000, "ms")
summary("4", "statement latency p50 while warming", pctl([x[1] for x in lat], 50), "ms")
summary("4", "statement latency p99 while warming", pctl([x[1] for x in lat], 99), "ms")

# --------------------------------------------------------------------------- 5 eviction under load
log("== 5 eviction under load: pgbench, whole cache flushed mid-run, KMS latency 50 ms")
sql("UPDATE acct SET tenant = 'cold' || (id % 10)")
sql("""UPDATE acct SET name = byok_encrypt(tenant, 'name ' || id, 'acct.name'),
                       email = byok_encrypt(tenant, 'u' || id || '@example.com', 'acct.email')""")
with open(os.path.join(args.out, "pgbench_read.sql"), "w") as f:
    f.write("\\set id random(1, %d)\nSELECT byok_decrypt_text(name), byok_decrypt_text(email) FROM acct WHERE id = :id;\n" % NACC)
admin("POST", "faults", {"latency_ms": 50})
EDUR = 4 if QUICK else 8
logdir = os.path.join(args.out, "evict_log")
os.makedirs(logdir, exist_ok=True)
for f in os.listdir(logdir):
    os.unlink(os.path.join(logdir, f))
flush_at = [None]


def flusher():
    time.sleep(EDUR / 2.0)
    flush_at[0] = time.time()
    connect().cursor().execute("SELECT byok_cache_flush()")


ft = threading.Thread(target=flusher)
ft.start()
tps_e, r = pgbench("read", 2, EDUR, ["-l", "--log-prefix", os.path.join(logdir, "tx")])
ft.join()
admin("DELETE", "faults")
tx = []
for fn in os.listdir(logdir):
    for line in open(os.path.join(logdir, fn)):
        p = line.split()
        # client_id transaction_no time script_no time_epoch time_us
        tx.append((int(p[4]) + int(p[5]) / 1e6, int(p[2]) / 1000.0))
after = [ms for t, ms in tx if flush_at[0] <= t - ms / 1000.0 < flush_at[0] + 1.0]
before = [ms for t, ms in tx if t < flush_at[0]]
with open(os.path.join(args.out, "eviction.dat"), "w") as f:
    # every slow statement, one in 20 of the rest (the plot needs no more)
    for k, (t, ms) in enumerate(sorted(tx)):
        if ms > 1.0 or k % 20 == 0:
            f.write("%.4f %.3f\n" % (t - flush_at[0], ms))
# pgbench that did not report its failed transactions did not run: count it as one
m = re.search(r"number of failed transactions: (\d+)", r.stdout)
failed_tx = int(m.group(1)) if m and r.returncode == 0 else max(1, int(m.group(1)) if m else 1)
summary("5", "p99 statement latency before the flush", pctl(before, 99), "ms")
summary("5", "p99 statement latency in the second after the flush", pctl(after, 99), "ms", "<= 70 ms",
        pctl(after, 99) <= 70)
summary("5", "max statement latency in the second after the flush", max(after or [0]), "ms")
summary("5", "statements in that second / those slower than 10 ms", "%d / %d" % (len(after), sum(1 for x in after if x > 10)), "")
summary("5", "errors", float(failed_tx), "", "= 0", failed_tx == 0, gate=True)

# --------------------------------------------------------------------------- 6 revocation lockout
log("== 6 revocation lockout drills")
sql("DROP TABLE IF EXISTS drill")
new_key("drill-cmk")
sql("SELECT byok_create_tenant('drill', 'local', 'drill-cmk') WHERE NOT EXISTS (SELECT 1 FROM byok.tenants WHERE name = 'drill')")
sql("CREATE TABLE drill AS SELECT i, byok_encrypt('drill', 'value ' || i) AS c FROM generate_series(1, 100) i")
kpath = os.path.join(args.keyring, "drill-cmk.key")


def one_drill(interval_ms, trace=None):
    ms = drill("drill", interval_ms, lambda: os.rename(kpath, kpath + ".disabled"), trace)
    os.rename(kpath + ".disabled", kpath)
    wait_until("SELECT state = 'active' FROM byok_stats() WHERE tenant = 'drill'")
    return ms


NDRILL = 3 if QUICK else 20
for interval in ((250,) if QUICK else (1000, 250)):
    set_conf(**{"byok.poll_interval": "%dms" % interval})
    wait_until("SELECT poll_interval_ms = %d FROM byok_poller_status()" % interval)
    sql("SELECT count(byok_decrypt(c)) FROM drill")
    res = [one_drill(interval, os.path.join(args.out, "drill_%d.dat" % interval) if k == 0 else None)
           for k in range(NDRILL)]
    record("6", "last_success_after_disable_%dms" % interval, res, "ms")
    summary("6", "poll %d ms: disable -> last successful decrypt, p50 (%d drills)" % (interval, NDRILL),
            statistics.median(res), "ms")
    summary("6", "poll %d ms: disable -> last successful decrypt, max" % interval, max(res), "ms",
            "<= %d ms" % (interval + 100), max(res) <= interval + 100, gate=True)
set_conf(**{"byok.poll_interval": "1s"})

# --------------------------------------------------------------------------- 7 poller scale
log("== 7 poller scale at 20 ms KMS latency")
have = NCOLD
for target in ((1000,) if QUICK else (1000, 10000)):
    if target > have:
        ids = admin("POST", "create", {"kind": "aws", "count": target - have})["ids"]
        with DB.cursor() as cur:
            for i, kid in enumerate(ids):
                cur.execute("SELECT byok_create_tenant(%s, 'aws-kms', %s)", ("cold%d" % (have + i), kid))
        have = target
    sql("SELECT count(byok_encrypt('cold' || i, 'x')) FROM generate_series(0, %s) i", (target - 1,))
    admin("POST", "faults", {"latency_ms": 20})
    r0 = one("SELECT rounds FROM byok_poller_status()")
    wait_until("SELECT rounds >= %d + 2 AND last_round_cmks >= %d FROM byok_poller_status()" % (r0, target), 300)
    ms = one("SELECT last_round_ms FROM byok_poller_status()")
    n = one("SELECT last_round_cmks FROM byok_poller_status()")
    admin("DELETE", "faults")
    summary("7", "one poll round over %d CMKs (aws-kms, 20 ms each, 64 connections)" % n, ms, "ms",
            "<= 1000 ms" if target == 1000 else None, ms <= 1000 if target == 1000 else None)

log("== done (memory is measured by run.sh, which restarts the server)")
with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(SUMMARY, f, indent=1)
raw.close()
missed = [r for r in SUMMARY if r["gate"] and r["ok"] != "yes"]
for r in SUMMARY:
    if r["gate"]:
        print("%s - benchmark %s: %s %s (target %s)" % ("ok" if r["ok"] == "yes" else "not ok", r["figure"],
              r["metric"], ("%.1f" % r["value"]) if isinstance(r["value"], float) else r["value"], r["target"]))
sys.exit(1 if missed else 0)
