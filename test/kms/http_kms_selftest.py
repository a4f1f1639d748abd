#!/usr/bin/python3
"""http_kms_selftest.py -- exercises every endpoint of http_kms_server.py.

Starts the server on a free port in a subprocess (private temp dir: state file,
credentials, tokens, log), talks to it with plain urllib / http.client and a
SigV4 signer written here from the AWS spec (independent of the server's),
checks the server's own SigV4 code against AWS's published test vectors, and,
when the curl command-line tool is present, checks that libcurl's
--aws-sigv4 "aws:amz:us-east-1:kms" signing (the extension's client) verifies.
Prints "N passed, N failed"; exit status 1 on any failure.

    /usr/bin/python3 test/kms/http_kms_selftest.py [-v]
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "http_kms_server.py")
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
import http_kms_server as K  # noqa: E402  (only for the SigV4 test vectors)

AKID, SECRET = "AKIDBYOKTEST0001", "byok/Test+Secret/0123456789abcdefEXAMPLE"
AKID2, SECRET2, SESSION = "ASIABYOKTEST0002", "second/secret", "session-token-xyz"
TOKEN = "s.byok-test-token"
VERBOSE = "-v" in sys.argv
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        if VERBOSE:
            print("ok   ", name)
    else:
        failed += 1
        print("FAIL ", name, ("-- %s" % (detail,))[:600] if detail != "" else "")
    return bool(cond)


# ------------------------------------------------------------------ server process
class Srv:
    def __init__(self, tmp):
        self.tmp, self.proc, self.port = tmp, None, None
        self.state = os.path.join(tmp, "state.json")
        self.creds = os.path.join(tmp, "credentials")
        self.tokens = os.path.join(tmp, "tokens")
        self.log = os.path.join(tmp, "server.log")
        with open(self.creds, "w") as f:
            f.write("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n\n"
                    "[temp]\naws_access_key_id=%s\naws_secret_access_key=%s\naws_session_token=%s\n"
                    % (AKID, SECRET, AKID2, SECRET2, SESSION))
        with open(self.tokens, "w") as f:
            f.write("# test tokens\n%s\nother-token\n" % TOKEN)

    def start(self, *extra):
        pf = os.path.join(self.tmp, "port")
        if os.path.exists(pf):
            os.unlink(pf)
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, "--port", "0", "--port-file", pf, "--state-file", self.state,
             "--aws-credentials", self.creds, "--vault-token-file", self.tokens, "--log", self.log]
            + list(extra), stdout=subprocess.PIPE, stderr=open(os.path.join(self.tmp, "stderr"), "a"))
        printed = self.proc.stdout.readline().decode().strip()
        deadline = time.time() + 10
        while not os.path.exists(pf) and time.time() < deadline:
            time.sleep(0.02)
        with open(pf) as f:
            self.port = int(f.read())
        check("server prints its port and writes --port-file", printed == str(self.port), printed)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


SRV = None


def url(path):
    return "http://127.0.0.1:%d%s" % (SRV.port, path)


def request(method, path, body=None, headers=None, timeout=10):
    """-> (status, headers, parsed JSON or raw bytes)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url(path), data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(raw) if raw else None
    except ValueError:
        return status, hdrs, raw


def admin(method, path, body=None):
    """-> (status, parsed JSON)."""
    st, _, js = request(method, "/__admin/" + path, body if body is not None else (b"" if method == "POST" else None))
    return st, js


# ------------------------------------------------------------------ an independent SigV4 signer
def _h(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_headers(body, target, akid=AKID, secret=SECRET, when=None, region="us-east-1",
                  service="kms", extra=None, sign_content_sha=False):
    """Headers for POST / per the AWS SigV4 spec (hand-rolled, not the server's code)."""
    when = when or datetime.now(timezone.utc)
    amz_date, date = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
    hdrs = {"host": "127.0.0.1:%d" % SRV.port, "content-type": "application/x-amz-json-1.1",
            "x-amz-date": amz_date, "x-amz-target": "TrentService." + target}
    hdrs.update(extra or {})
    payload_hash = hashlib.sha256(body).hexdigest()
    if sign_content_sha:
        hdrs["x-amz-content-sha256"] = payload_hash
    names = sorted(hdrs)
    canonical = "POST\n/\n\n" + "".join("%s:%s\n" % (n, hdrs[n].strip()) for n in names) + "\n" \
        + ";".join(names) + "\n" + payload_hash
    scope = "%s/%s/%s/aws4_request" % (date, region, service)
    sts = "AWS4-HMAC-SHA256\n%s\n%s\n%s" % (amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
    k = _h(("AWS4" + secret).encode(), date)
    for part in (region, service, "aws4_request"):
        k = _h(k, part)
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    out = {n: v for n, v in hdrs.items() if n != "host"}
    out["Authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        akid, scope, ";".join(names), sig)
    return out


CTYPE_CHECKED = set()


def kms(op, payload, **kw):
    body = json.dumps(payload).encode()
    hdrs = sigv4_headers(body, op, **kw)
    st, h, js = request("POST", "/", body, hdrs)
    if op not in CTYPE_CHECKED and st in (200, 400) and js is not None:
        CTYPE_CHECKED.add(op)
        check("AWS %s response is application/x-amz-json-1.1" % op,
              h.get("Content-Type") == "application/x-amz-json-1.1", h.get("Content-Type"))
    return st, js


def err_type(js):
    return (js or {}).get("__type") if isinstance(js, dict) else None


def vault(method, path, payload=None, token=TOKEN, ns=None):
    hdrs = {"X-Vault-Token": token} if token else {}
    if ns:
        hdrs["X-Vault-Namespace"] = ns
    body = json.dumps(payload).encode() if payload is not None else (b"" if method in ("POST", "PUT") else None)
    st, _, js = request(method, "/v1/" + path, body, hdrs)
    return st, js


def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


# ------------------------------------------------------------------ tests
def test_vectors():
    hdrs = {"host": ["example.amazonaws.com"], "x-amz-date": ["20150830T123600Z"]}
    empty = hashlib.sha256(b"").hexdigest()
    scope = "20150830/us-east-1/service/aws4_request"
    for name, method, query, want in [
            ("get-vanilla", "GET", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
            ("get-vanilla-query-order-key-case", "GET", "Param2=value2&Param1=value1",
             "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
            ("post-vanilla", "POST", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")]:
        creq = K.sigv4_canonical_request(method, "/", query, hdrs, ["host", "x-amz-date"], empty)
        sig, _ = K.sigv4_signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z", scope, creq)
        check("server SigV4 matches AWS test-suite vector %s" % name, sig == want, sig)
    key = K.sigv4_signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "service")
    check("server SigV4 signing key matches the published value",
          key.hex() == "938127b5336810ddb6a5d6af445fcac9e371f9ed418ed386b022aed82901be75", key.hex())


def test_aws():
    st, js = kms("CreateKey", {"Description": "selftest"})
    check("CreateKey 200", st == 200, js)
    md = js["KeyMetadata"]
    kid, arn = md["KeyId"], md["Arn"]
    check("CreateKey KeyId is a uuid, Arn has the account", K.UUID_RE.match(kid) and
          arn == "arn:aws:kms:us-east-1:111122223333:key/" + kid, md)
    check("CreateKey metadata Enabled", md["KeyState"] == "Enabled" and md["Enabled"] is True, md)
    st, js = kms("DescribeKey", {"KeyId": arn})
    check("DescribeKey by ARN", st == 200 and js["KeyMetadata"]["KeyId"] == kid, js)

    ctx = {"db": "postgres", "table": "t1"}
    st, js = kms("Encrypt", {"KeyId": kid, "Plaintext": b64(b"\x00secret\xff" * 3), "EncryptionContext": ctx})
    check("Encrypt 200, KeyId is the ARN", st == 200 and js["KeyId"] == arn, js)
    blob = js["CiphertextBlob"]
    raw = base64.b64decode(blob)
    check("blob = 0x01 || key id || nonce || ct || tag",
          raw[0] == 1 and raw[1:37] == kid.encode() and len(raw) == 1 + 36 + 16 + 24 + 32, len(raw))
    st, js = kms("Decrypt", {"CiphertextBlob": blob, "EncryptionContext": dict(reversed(list(ctx.items())))})
    check("Decrypt round trip (context key order irrelevant)",
          st == 200 and base64.b64decode(js["Plaintext"]) == b"\x00secret\xff" * 3 and js["KeyId"] == arn, js)
    st, js = kms("Decrypt", {"CiphertextBlob": blob, "EncryptionContext": {"db": "other", "table": "t1"}})
    check("Decrypt with the wrong context -> InvalidCiphertextException",
          st == 400 and err_type(js) == "InvalidCiphertextException", js)
    st, js = kms("Decrypt", {"CiphertextBlob": blob})
    check("Decrypt without the context -> InvalidCiphertextException",
          st == 400 and err_type(js) == "InvalidCiphertextException", js)
    bad = bytearray(raw)
    bad[60] ^= 1
    st, js = kms("Decrypt", {"CiphertextBlob": b64(bytes(bad)), "EncryptionContext": ctx})
    check("Decrypt of a tampered blob -> InvalidCiphertextException",
          st == 400 and err_type(js) == "InvalidCiphertextException", js)
    st, js = kms("Decrypt", {"CiphertextBlob": b64(b"\x01short"), "EncryptionContext": ctx})
    check("Decrypt of a truncated blob -> InvalidCiphertextException",
          st == 400 and err_type(js) == "InvalidCiphertextException", js)

    st, js = kms("CreateAlias", {"AliasName": "alias/selftest", "TargetKeyId": kid})
    check("CreateAlias 200 with empty body", st == 200 and js is None, js)
    st, js = kms("CreateAlias", {"AliasName": "alias/selftest", "TargetKeyId": kid})
    check("CreateAlias twice -> AlreadyExistsException", err_type(js) == "AlreadyExistsException", js)
    for ref in ("alias/selftest", "arn:aws:kms:us-east-1:111122223333:alias/selftest"):
        st, js = kms("Encrypt", {"KeyId": ref, "Plaintext": b64("via alias")})
        check("Encrypt via %s" % ref, st == 200 and js["KeyId"] == arn, js)
    st, js = kms("Decrypt", {"CiphertextBlob": js["CiphertextBlob"], "KeyId": "alias/selftest"})
    check("Decrypt with KeyId alias", st == 200 and base64.b64decode(js["Plaintext"]) == b"via alias", js)

    st, js = kms("CreateKey", {})
    kid2 = js["KeyMetadata"]["KeyId"]
    st, js = kms("Decrypt", {"CiphertextBlob": blob, "EncryptionContext": ctx, "KeyId": kid2})
    check("Decrypt naming another key -> IncorrectKeyException", err_type(js) == "IncorrectKeyException", js)
    st, js = kms("Decrypt", {"CiphertextBlob": blob, "EncryptionContext": ctx, "KeyId": arn})
    check("Decrypt naming its own key by ARN", st == 200, js)
    st, js = kms("GenerateDataKey", {"KeyId": kid, "KeySpec": "AES_256", "EncryptionContext": ctx})
    dk = base64.b64decode(js["Plaintext"])
    st2, js2 = kms("Decrypt", {"CiphertextBlob": js["CiphertextBlob"], "EncryptionContext": ctx})
    check("GenerateDataKey AES_256 and Decrypt it", st == 200 and len(dk) == 32 and
          base64.b64decode(js2["Plaintext"]) == dk, (js, js2))
    st, js = kms("Encrypt", {"KeyId": kid, "Plaintext": b64(b"x" * 4097)})
    check("Encrypt > 4096 bytes -> ValidationException", err_type(js) == "ValidationException", js)
    st, js = kms("DescribeKey", {"KeyId": "00000000-0000-4000-8000-000000000000"})
    check("DescribeKey unknown -> NotFoundException", st == 400 and err_type(js) == "NotFoundException", js)
    st, js = kms("Encrypt", {"KeyId": "alias/nope", "Plaintext": b64("x")})
    check("Encrypt to unknown alias -> NotFoundException", err_type(js) == "NotFoundException", js)
    st, js = kms("NoSuchOperation", {})
    check("unknown op -> UnknownOperationException", err_type(js) == "UnknownOperationException", js)

    # states
    st, js = kms("DisableKey", {"KeyId": kid})
    check("DisableKey 200", st == 200, js)
    st, js = kms("DescribeKey", {"KeyId": kid})
    check("DescribeKey Disabled", js["KeyMetadata"]["KeyState"] == "Disabled" and not js["KeyMetadata"]["Enabled"], js)
    st, js = kms("Encrypt", {"KeyId": kid, "Plaintext": b64("x")})
    check("Encrypt with disabled key -> DisabledException", st == 400 and err_type(js) == "DisabledException", js)
    st, js = kms("Decrypt", {"CiphertextBlob": blob, "EncryptionContext": ctx})
    check("Decrypt with disabled key -> DisabledException", err_type(js) == "DisabledException", js)
    kms("EnableKey", {"KeyId": kid})
    st, js = kms("Decrypt", {"CiphertextBlob": blob, "EncryptionContext": ctx})
    check("EnableKey restores Decrypt", st == 200, js)
    st, js = kms("ScheduleKeyDeletion", {"KeyId": kid2, "PendingWindowInDays": 7})
    check("ScheduleKeyDeletion", st == 200 and js["KeyState"] == "PendingDeletion" and js["PendingWindowInDays"] == 7, js)
    st, js = kms("DescribeKey", {"KeyId": kid2})
    check("DescribeKey PendingDeletion with DeletionDate",
          js["KeyMetadata"]["KeyState"] == "PendingDeletion" and "DeletionDate" in js["KeyMetadata"], js)
    st, js = kms("Encrypt", {"KeyId": kid2, "Plaintext": b64("x")})
    check("Encrypt pending deletion -> KMSInvalidStateException", err_type(js) == "KMSInvalidStateException", js)
    st, js = kms("EnableKey", {"KeyId": kid2})
    check("EnableKey pending deletion -> KMSInvalidStateException", err_type(js) == "KMSInvalidStateException", js)
    st, js = kms("CancelKeyDeletion", {"KeyId": kid2})
    st2, js2 = kms("DescribeKey", {"KeyId": kid2})
    check("CancelKeyDeletion leaves the key Disabled (as real KMS)",
          st == 200 and js2["KeyMetadata"]["KeyState"] == "Disabled", (js, js2))

    # admin state changes
    st, js = admin("POST", "aws/keys/%s/state" % kid2, {"state": "PendingDeletion"})
    check("admin state PendingDeletion", st == 200 and js["KeyMetadata"]["KeyState"] == "PendingDeletion", js)
    st, js = kms("Encrypt", {"KeyId": kid, "Plaintext": b64("kept")})
    keep_blob = js["CiphertextBlob"]
    st, js = kms("CreateKey", {})
    kid3 = js["KeyMetadata"]["KeyId"]
    st, js = kms("Encrypt", {"KeyId": kid3, "Plaintext": b64("doomed")})
    doomed = js["CiphertextBlob"]
    kms("CreateAlias", {"AliasName": "alias/doomed", "TargetKeyId": kid3})
    st, js = admin("POST", "aws/keys/alias/doomed/state", {"state": "deleted"})
    check("admin state deleted (by alias)", st == 200, js)
    st, js = kms("DescribeKey", {"KeyId": kid3})
    check("deleted key: DescribeKey -> NotFoundException", err_type(js) == "NotFoundException", js)
    st, js = kms("Decrypt", {"CiphertextBlob": doomed})
    check("deleted key: Decrypt -> NotFoundException", err_type(js) == "NotFoundException", js)
    st, js = kms("DescribeKey", {"KeyId": "alias/doomed"})
    check("deleted key's alias is gone", err_type(js) == "NotFoundException", js)
    return {"kid": kid, "arn": arn, "blob": blob, "ctx": ctx, "keep_blob": keep_blob, "kid3": kid3}


def test_auth(kid):
    body = json.dumps({"KeyId": kid}).encode()
    st, _, js = request("POST", "/", body, sigv4_headers(body, "DescribeKey", secret="wrong"))
    check("bad secret -> 400 InvalidSignatureException", st == 400 and err_type(js) == "InvalidSignatureException", js)
    hdrs = sigv4_headers(body, "DescribeKey")
    st, _, js = request("POST", "/", body.replace(b"}", b" }"), hdrs)
    check("body changed after signing -> InvalidSignatureException", err_type(js) == "InvalidSignatureException", js)
    st, _, js = request("POST", "/", body, sigv4_headers(body, "DescribeKey", akid="AKIDUNKNOWN"))
    check("unknown AKID -> 400 UnrecognizedClientException",
          st == 400 and err_type(js) == "UnrecognizedClientException", js)
    st, _, js = request("POST", "/", body, {"Content-Type": "application/x-amz-json-1.1",
                                            "X-Amz-Target": "TrentService.DescribeKey"})
    check("no Authorization -> MissingAuthenticationTokenException",
          err_type(js) == "MissingAuthenticationTokenException", js)
    old = datetime.now(timezone.utc) - timedelta(minutes=20)
    st, _, js = request("POST", "/", body, sigv4_headers(body, "DescribeKey", when=old))
    check("20-minute-old signature -> InvalidSignatureException (expired)",
          err_type(js) == "InvalidSignatureException" and "expired" in js["message"], js)
    st, _, js = request("POST", "/", body, sigv4_headers(body, "DescribeKey", region="eu-west-1"))
    check("wrong region in scope -> InvalidSignatureException", err_type(js) == "InvalidSignatureException", js)
    st, _, js = request("POST", "/", body, sigv4_headers(body, "DescribeKey", sign_content_sha=True))
    check("signed x-amz-content-sha256 accepted", st == 200, js)
    st, _, js = request("POST", "/", body, sigv4_headers(body, "DescribeKey", akid=AKID2, secret=SECRET2))
    check("session credentials without the token -> UnrecognizedClientException",
          err_type(js) == "UnrecognizedClientException", js)
    st, _, js = request("POST", "/", body, sigv4_headers(body, "DescribeKey", akid=AKID2, secret=SECRET2,
                                                         extra={"x-amz-security-token": SESSION}))
    check("session credentials with the signed token", st == 200, js)
    st, _, js = request("POST", "/", body, dict(sigv4_headers(body, "DescribeKey"),
                                                **{"content-type": "application/x-www-form-urlencoded"}))
    check("header changed after signing -> InvalidSignatureException", err_type(js) == "InvalidSignatureException", js)
    # credential rotation: the file is re-read when it changes
    with open(SRV.creds, "a") as f:
        f.write("\n[rotated]\naws_access_key_id = AKIDROTATED\naws_secret_access_key = rotated-secret\n")
    st, _, js = request("POST", "/", body, sigv4_headers(body, "DescribeKey", akid="AKIDROTATED",
                                                         secret="rotated-secret"))
    check("credentials file re-read after a change", st == 200, js)


def test_curl(kid):
    curl = shutil.which("curl")
    if not check("curl command-line tool is installed", curl is not None):
        return

    def run(op, payload, user="%s:%s" % (AKID, SECRET), extra=()):
        cmd = [curl, "-sS", "--aws-sigv4", "aws:amz:us-east-1:kms", "--user", user,
               "-H", "Content-Type: application/x-amz-json-1.1", "-H", "X-Amz-Target: TrentService." + op,
               "-d", json.dumps(payload), "-w", "\n%{http_code}", url("/")] + list(extra)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        body, _, code = out.stdout.rpartition("\n")
        try:
            return int(code), json.loads(body) if body else None
        except ValueError:
            return code, out.stdout + out.stderr

    st, js = run("DescribeKey", {"KeyId": kid})
    check("curl --aws-sigv4 aws:amz:us-east-1:kms DescribeKey verifies (200)",
          st == 200 and js["KeyMetadata"]["KeyId"] == kid, js)
    st, js = run("Encrypt", {"KeyId": kid, "Plaintext": b64("from curl"), "EncryptionContext": {"a": "b"}})
    check("curl Encrypt", st == 200, js)
    st, js = run("Decrypt", {"CiphertextBlob": js.get("CiphertextBlob"), "EncryptionContext": {"a": "b"}})
    check("curl Decrypt", st == 200 and base64.b64decode(js["Plaintext"]) == b"from curl", js)
    st, js = run("DescribeKey", {"KeyId": kid}, user="%s:wrong" % AKID)
    check("curl with a wrong secret -> InvalidSignatureException", st == 400 and
          err_type(js) == "InvalidSignatureException", js)
    big = b64(os.urandom(4096))
    st, js = run("Encrypt", {"KeyId": kid, "Plaintext": big})
    check("curl Encrypt of 4096 bytes (body > 1 KiB)", st == 200, js)
    # two requests on one curl invocation must share one keep-alive connection
    admin("POST", "stats/reset")
    args = ["-sS", "-o", "/dev/null", "--aws-sigv4", "aws:amz:us-east-1:kms", "--user", "%s:%s" % (AKID, SECRET),
            "-H", "Content-Type: application/x-amz-json-1.1", "-H", "X-Amz-Target: TrentService.DescribeKey",
            "-d", json.dumps({"KeyId": kid}), "-w", "%{http_code} "]
    out = subprocess.run([curl] + args + [url("/"), "--next"] + args + [url("/")],
                         capture_output=True, text=True, timeout=20)
    _, stats = admin("GET", "stats")
    check("curl keep-alive: 2 requests, 1 connection, both 200",
          out.stdout.split() == ["200", "200"] and stats["connections"] == 1, (out.stdout, out.stderr, stats))


def test_keepalive(kid):
    admin("POST", "stats/reset")
    conn = http.client.HTTPConnection("127.0.0.1", SRV.port, timeout=10)
    body = json.dumps({"KeyId": kid}).encode()
    t0, ok = time.monotonic(), True
    for _ in range(50):
        conn.request("POST", "/", body, sigv4_headers(body, "DescribeKey"))
        r = conn.getresponse()
        r.read()
        ok = ok and r.status == 200 and r.getheader("Content-Length") is not None
    per_call = (time.monotonic() - t0) / 50 * 1000
    conn.close()
    _, stats = admin("GET", "stats")
    check("keep-alive: 50 calls on one connection, Content-Length on each", ok and stats["connections"] == 1, stats)
    check("no Nagle stall: %.1f ms per call (< 15)" % per_call, per_call < 15, per_call)


def test_vault():
    st, js = vault("POST", "transit/keys/vk1", token=None)
    check("Vault without token -> 403 permission denied", st == 403 and js == {"errors": ["permission denied"]}, js)
    st, js = vault("POST", "transit/keys/vk1", token="bad")
    check("Vault bad token -> 403", st == 403, js)
    st, js = vault("POST", "transit/keys/vk1", {"type": "aes256-gcm96"}, ns="team-a")
    check("create key", st == 200 and js["data"]["latest_version"] == 1, js)
    st, js = vault("GET", "transit/keys/vk1")
    d = js["data"]
    check("read key", st == 200 and d["name"] == "vk1" and d["type"] == "aes256-gcm96" and
          d["min_decryption_version"] == 1 and d["min_encryption_version"] == 0 and
          d["deletion_allowed"] is False and list(d["keys"]) == ["1"] and isinstance(d["keys"]["1"], int), js)
    st, js = vault("POST", "transit/keys/badinput", {"derived": "maybe"})
    check("bad boolean input -> 400 error converting input", st == 400 and "converting" in js["errors"][0], js)
    st, js = vault("GET", "transit/keys/nope")
    check("read unknown key -> 404 {errors: []}", st == 404 and js == {"errors": []}, js)
    st, js = vault("POST", "transit/encrypt/vk1", {"plaintext": b64("hello vault")})
    check("encrypt v1", st == 200 and js["data"]["ciphertext"].startswith("vault:v1:") and
          js["data"]["key_version"] == 1, js)
    c1 = js["data"]["ciphertext"]
    st, js = vault("POST", "transit/decrypt/vk1", {"ciphertext": c1})
    check("decrypt", st == 200 and base64.b64decode(js["data"]["plaintext"]) == b"hello vault", js)
    st, js = vault("PUT", "transit/decrypt/vk1", {"ciphertext": c1[:-6] + ("AAAA==" if not c1.endswith("AAAA==") else "BBBB==")})
    check("decrypt tampered -> 400 message authentication failed",
          st == 400 and js["errors"] == ["cipher: message authentication failed"], js)
    st, js = vault("POST", "transit/encrypt/vk1", {"plaintext": b64("aad"), "associated_data": b64("row 7")})
    st2, js2 = vault("POST", "transit/decrypt/vk1", {"ciphertext": js["data"]["ciphertext"], "associated_data": b64("row 8")})
    st3, js3 = vault("POST", "transit/decrypt/vk1", {"ciphertext": js["data"]["ciphertext"], "associated_data": b64("row 7")})
    check("associated_data is bound", st2 == 400 and st3 == 200, (js2, js3))
    st, js = vault("POST", "transit/keys/dk", {"derived": True})
    st, js = vault("POST", "transit/encrypt/dk", {"plaintext": b64("x")})
    check("derived key without context -> 400", st == 400 and "missing 'context'" in js["errors"][0], js)
    st, js = vault("POST", "transit/encrypt/dk", {"plaintext": b64("x"), "context": b64("tenant-1")})
    cd = js["data"]["ciphertext"]
    st2, js2 = vault("POST", "transit/decrypt/dk", {"ciphertext": cd, "context": b64("tenant-2")})
    st3, js3 = vault("POST", "transit/decrypt/dk", {"ciphertext": cd, "context": b64("tenant-1")})
    check("derived key: context binds", st == 200 and st2 == 400 and st3 == 200, (js, js2, js3))
    st, js = vault("POST", "transit/encrypt/missing", {"plaintext": b64("x")})
    check("encrypt unknown key -> 400 encryption key not found",
          st == 400 and js == {"errors": ["encryption key not found"]}, js)
    st, js = vault("POST", "transit/decrypt/missing", {"ciphertext": c1})
    check("decrypt unknown key -> 400 encryption key not found", st == 400, js)

    st, js = vault("POST", "transit/keys/vk1/rotate")
    check("rotate -> latest_version 2", st == 200 and js["data"]["latest_version"] == 2, js)
    st, js = vault("POST", "transit/encrypt/vk1", {"plaintext": b64("v2 data")})
    c2 = js["data"]["ciphertext"]
    check("encrypt after rotate uses v2", c2.startswith("vault:v2:") and js["data"]["key_version"] == 2, js)
    st, js = vault("POST", "transit/decrypt/vk1", {"ciphertext": c1})
    check("old v1 ciphertext still decrypts", st == 200, js)
    st, js = vault("POST", "transit/rewrap/vk1", {"ciphertext": c1})
    check("rewrap v1 -> v2", st == 200 and js["data"]["ciphertext"].startswith("vault:v2:"), js)
    st2, js2 = vault("POST", "transit/decrypt/vk1", {"ciphertext": js["data"]["ciphertext"]})
    check("rewrapped decrypts", st2 == 200 and base64.b64decode(js2["data"]["plaintext"]) == b"hello vault", js2)
    st, js = vault("POST", "transit/encrypt/vk1", {"plaintext": b64("old"), "key_version": 1})
    check("encrypt with key_version 1", st == 200 and js["data"]["ciphertext"].startswith("vault:v1:"), js)
    st, js = vault("POST", "transit/keys/vk1/config", {"min_decryption_version": 2})
    check("config min_decryption_version 2", st == 200, js)
    st, js = vault("GET", "transit/keys/vk1")
    check("read shows min_decryption_version 2, keys {2}",
          js["data"]["min_decryption_version"] == 2 and list(js["data"]["keys"]) == ["2"], js)
    st, js = vault("POST", "transit/decrypt/vk1", {"ciphertext": c1})
    check("decrypt v1 below min -> 400 too old",
          st == 400 and js == {"errors": ["ciphertext or signature version is disallowed by policy (too old)"]}, js)
    st, js = vault("POST", "transit/rewrap/vk1", {"ciphertext": c1})
    check("rewrap v1 below min -> 400 too old", st == 400 and "too old" in js["errors"][0], js)
    st, js = vault("POST", "transit/decrypt/vk1", {"ciphertext": "vault:v9:" + c2.split(":")[2]})
    check("version too new -> 400", st == 400 and js["errors"] == ["invalid ciphertext: version is too new"], js)
    st, js = vault("POST", "transit/decrypt/vk1", {"ciphertext": "nope"})
    check("no prefix -> 400", st == 400 and js["errors"] == ["invalid ciphertext: no prefix"], js)
    st, js = vault("DELETE", "transit/keys/vk1")
    check("delete without deletion_allowed -> 400", st == 400 and "deletion is not allowed" in js["errors"][0], js)
    st, js = vault("POST", "transit/keys/vk1/config", {"deletion_allowed": True})
    st, js = vault("DELETE", "transit/keys/vk1")
    check("delete with deletion_allowed -> 204", st == 204, js)
    st, js = vault("GET", "transit/keys/vk1")
    check("deleted key reads 404", st == 404, js)
    vault("POST", "transit/keys/vk2")
    st, js = admin("POST", "vault/keys/vk2/delete")
    st2, js2 = vault("POST", "transit/encrypt/vk2", {"plaintext": b64("x")})
    check("admin delete ignores deletion_allowed", st == 200 and st2 == 400, (js, js2))
    st, js = vault("LIST", "transit/keys")
    check("LIST transit/keys", st == 200 and "dk" in js["data"]["keys"], js)
    st, js = vault("GET", "sys/health", token=None)
    check("sys/health without token", st == 200 and js["sealed"] is False, js)
    _, stats = admin("GET", "stats")
    check("namespace header recorded", stats["namespaces"].get("team-a") == 1, stats["namespaces"])
    vault("POST", "transit/keys/persist")
    st, js = vault("POST", "transit/encrypt/persist", {"plaintext": b64("survives restart")})
    return js["data"]["ciphertext"]


def test_faults(kid, kid_b):
    body = lambda k: {"KeyId": k}
    admin("DELETE", "faults")
    st, js = admin("POST", "faults", {"throttle": 2, "retry_after": 3})
    r1, r2, r3 = (kms("DescribeKey", body(kid)) for _ in range(3))
    check("throttle 2: two ThrottlingException then OK",
          [err_type(r1[1]), err_type(r2[1]), r3[0]] == ["ThrottlingException", "ThrottlingException", 200],
          (r1, r2, r3))
    admin("POST", "faults", {"throttle": 1, "retry_after": 2})
    data = json.dumps(body(kid)).encode()
    st, h, js = request("POST", "/", data, sigv4_headers(data, "DescribeKey"))
    check("throttled AWS response carries Retry-After", st == 400 and h.get("Retry-After") == "2", dict(h))
    vault("POST", "transit/keys/fk")
    admin("POST", "faults", {"throttle": 1, "api": "vault"})
    st, h, js = request("POST", "/v1/transit/encrypt/fk", {"plaintext": b64("x")}, {"X-Vault-Token": TOKEN})
    check("Vault throttle -> 429 + Retry-After", st == 429 and h.get("Retry-After") and
          "rate limit" in js["errors"][0], (st, js))
    admin("POST", "faults", {"error_5xx": 1, "status_5xx": 503})
    st, js = kms("DescribeKey", body(kid))
    st2, js2 = kms("DescribeKey", body(kid))
    check("error_5xx 1 (503) then OK", st == 503 and st2 == 200, (st, js))
    admin("POST", "faults", {"error_5xx": 1, "api": "vault"})
    st, js = vault("POST", "transit/encrypt/fk", {"plaintext": b64("x")})
    check("Vault error_5xx -> 500 {errors}", st == 500 and js.get("errors"), js)
    # scoped by key (alias works as a scope)
    kms("CreateAlias", {"AliasName": "alias/faulty", "TargetKeyId": kid_b})
    admin("POST", "faults", {"key": "alias/faulty", "throttle": 5})
    st_a, _ = kms("DescribeKey", body(kid))
    st_b, js_b = kms("DescribeKey", body(kid_b))
    check("fault scoped to one key leaves others alone", st_a == 200 and
          err_type(js_b) == "ThrottlingException", (st_a, js_b))
    admin("POST", "faults", {"key": "alias/faulty", "clear": True})
    st_b, js_b = kms("DescribeKey", body(kid_b))
    check("scoped clear", st_b == 200, js_b)
    admin("POST", "faults", {"deny": True, "key": kid_b})
    st_b, js_b = kms("Encrypt", {"KeyId": kid_b, "Plaintext": b64("x")})
    check("deny -> AccessDeniedException", err_type(js_b) == "AccessDeniedException", js_b)
    admin("DELETE", "faults")
    # latency
    admin("POST", "faults", {"latency_ms": 300})
    t0 = time.monotonic()
    st, _ = kms("DescribeKey", body(kid))
    dt = time.monotonic() - t0
    check("latency_ms 300 (took %.0f ms)" % (dt * 1000), st == 200 and 0.29 <= dt < 1.5, dt)
    admin("DELETE", "faults")
    # down / drop
    admin("POST", "faults", {"down": True})
    try:
        r = kms("DescribeKey", body(kid))
        check("down: connection closed without a reply", False, r)
    except (http.client.RemoteDisconnected, urllib.error.URLError, ConnectionError) as e:
        check("down: connection closed without a reply", True, e)
    admin("DELETE", "faults")
    admin("POST", "faults", {"drop": 1, "api": "vault"})
    try:
        vault("POST", "transit/encrypt/fk", {"plaintext": b64("x")})
        first = "answered"
    except (http.client.RemoteDisconnected, urllib.error.URLError, ConnectionError):
        first = "dropped"
    st, _ = vault("POST", "transit/encrypt/fk", {"plaintext": b64("x")})
    check("drop 1: one dropped connection, then OK", first == "dropped" and st == 200, (first, st))
    # hang: times out while set; a hung request completes once cleared
    admin("POST", "faults", {"hang": True, "key": kid})
    try:
        data = json.dumps(body(kid)).encode()
        request("POST", "/", data, sigv4_headers(data, "DescribeKey"), timeout=0.5)
        check("hang: request does not answer", False)
    except (TimeoutError, urllib.error.URLError, OSError):
        check("hang: request does not answer", True)
    st_b, _ = kms("DescribeKey", body(kid_b))
    check("hang scoped to a key: other keys answer", st_b == 200, st_b)
    result = {}
    th = threading.Thread(target=lambda: result.update(r=kms("DescribeKey", body(kid))))
    th.start()
    time.sleep(0.3)
    check("hung request still waiting", th.is_alive())
    admin("DELETE", "faults")
    th.join(5)
    check("hung request answers after clear", not th.is_alive() and result.get("r", (0,))[0] == 200, result)
    _, js = admin("GET", "faults")
    check("GET faults empty after clear", js == {"faults": []}, js)
    test_bends(kid)


def raw_request(method, path, body, headers):
    """-> (status, Content-Type, raw body bytes): bent answers are not for json.loads."""
    req = urllib.request.Request(url(path), data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def test_bends(kid):
    """Each bent answer is what its name says, once per count, scoped like other faults."""
    expect = {
        "nested": lambda st, ct, b: st == 200 and b == b"[" * 200000,
        "huge_type": lambda st, ct, b: st == 400 and len(json.loads(b)["__type"]) == 100000,
        "ctl_type": lambda st, ct, b: st == 400 and json.loads(b)["__type"] == "Bad\nType\u00ff\u0007",
        "bad_utf8": lambda st, ct, b: st == 400 and b"\n" in b and b"\xff" in b and _not_utf8(b),
        "html_404": lambda st, ct, b: st == 404 and ct == "text/html" and b.startswith(b"<html>"),
        "json_404": None,
        "dup_state": None,
    }
    for api, send in (("aws", lambda: raw_request("POST", "/", body_of(kid), sigv4_headers(body_of(kid), "DescribeKey"))),
                      ("vault", lambda: raw_request("GET", "/v1/transit/keys/bent", None, {"X-Vault-Token": TOKEN}))):
        expect["json_404"] = ((lambda st, ct, b: st == 400 and json.loads(b)["__type"] == "NotFoundException")
                              if api == "aws" else (lambda st, ct, b: st == 404 and json.loads(b) == {"errors": []}))
        expect["dup_state"] = ((lambda st, ct, b: st == 200 and b.count(b'"KeyState"') == 2) if api == "aws" else
                               (lambda st, ct, b: st == 200 and b.count(b'"min_decryption_version"') == 2))
        base_st, _, base_b = send()
        for kind, good in expect.items():
            admin("POST", "faults", {"bend": 1, "bend_kind": kind, "api": api})
            st, ct, b = send()
            check("%s bent answer %s" % (api, kind), good(st, ct, b), (st, ct, b[:80]))
            st, _, b = send()
            check("%s bent answer %s: only the next one" % (api, kind),
                  st == base_st and len(b) == len(base_b), (st, b[:40]))
            admin("DELETE", "faults")
    st, js = admin("POST", "faults", {"bend": 1, "bend_kind": "nonsense"})
    check("unknown bend_kind refused", st == 400, js)


def _not_utf8(b):
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def body_of(kid):
    return json.dumps({"KeyId": kid}).encode()


def test_stats(kid, kid_b, blob, ctx):
    admin("POST", "stats/reset")
    kms("Decrypt", {"CiphertextBlob": blob, "EncryptionContext": ctx})
    st, js = kms("Encrypt", {"KeyId": kid_b, "Plaintext": b64("x")})
    kms("Decrypt", {"CiphertextBlob": js["CiphertextBlob"]})
    kms("Decrypt", {"CiphertextBlob": js["CiphertextBlob"]})
    vault("POST", "transit/encrypt/fk", {"plaintext": b64("x")})
    # the server notes a request's status just after answering it: let the last one land
    for _ in range(50):
        _, s = admin("GET", "stats")
        if s["status"].get("200") == 5:
            break
        time.sleep(0.02)
    check("stats: per-key Decrypt counts (1 and 2)", s["aws"]["keys"][kid] == {"Decrypt": 1} and
          s["aws"]["keys"][kid_b] == {"Encrypt": 1, "Decrypt": 2}, s["aws"])
    check("stats: per-op and total", s["aws"]["ops"] == {"Decrypt": 3, "Encrypt": 1} and
          s["vault"]["ops"] == {"encrypt": 1} and s["vault"]["keys"]["fk"] == {"encrypt": 1} and
          s["total"] == 5, s)
    check("stats: status and access keys", s["status"].get("200") == 5 and s["access_keys"].get(AKID) == 4, s)
    admin("POST", "stats/reset")
    _, s = admin("GET", "stats")
    check("stats reset", s["total"] == 0 and s["aws"]["ops"] == {}, s)


def test_bulk():
    t0 = time.monotonic()
    st, js = admin("POST", "create", {"kind": "aws", "count": 2000, "alias_prefix": "alias/scale-"})
    dt = time.monotonic() - t0
    check("admin create 2000 AWS keys (%.2f s)" % dt, st == 200 and len(set(js["ids"])) == 2000 and
          len(js["arns"]) == 2000, st)
    st2, js2 = kms("DescribeKey", {"KeyId": "alias/scale-1999"})
    check("bulk alias resolves", st2 == 200 and js2["KeyMetadata"]["KeyId"] == js["ids"][1999], js2)
    st, js = admin("POST", "create", {"kind": "vault", "count": 500, "prefix": "tenant-"})
    check("admin create 500 Vault keys", st == 200 and js["ids"][0] == "tenant-0" and len(js["ids"]) == 500, st)
    st, js = vault("POST", "transit/encrypt/tenant-499", {"plaintext": b64("x")})
    check("bulk Vault key usable", st == 200, js)
    st, js = admin("POST", "create", {"kind": "vault", "count": 1, "prefix": "tenant-"})
    check("admin create refuses to overwrite a Vault key", st == 409, js)


def test_misc(kid):
    st, _, js = request("POST", "/", b"{not json", sigv4_headers(b"{not json", "DescribeKey"))
    check("bad JSON -> SerializationException", err_type(js) == "SerializationException", js)
    data = json.dumps({"KeyId": kid}).encode()
    h = sigv4_headers(data, "DescribeKey", extra={"content-type": "application/json"})
    st, _, js = request("POST", "/", data, h)
    check("wrong Content-Type -> UnknownOperationException", err_type(js) == "UnknownOperationException", js)
    conn = http.client.HTTPConnection("127.0.0.1", SRV.port, timeout=5)
    conn.request("POST", "/v1/transit/encrypt/fk", iter([b'{"plaintext": ""}']),
                 {"X-Vault-Token": TOKEN, "Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    check("chunked request body -> 411 (Content-Length required)", r.status == 411, r.status)
    conn.close()
    st, js = admin("GET", "nope")
    check("unknown admin endpoint -> 404", st == 404, js)
    st, js = vault("GET", "secret/data/x")
    check("unknown Vault route -> 404", st == 404, js)


def main():
    global SRV
    tmp = tempfile.mkdtemp(prefix="http_kms_selftest.")
    SRV = Srv(tmp)
    ok = False
    try:
        test_vectors()
        SRV.start()
        a = test_aws()
        test_auth(a["kid"])
        test_curl(a["kid"])
        test_keepalive(a["kid"])
        vct = test_vault()
        _, js = kms("CreateKey", {})
        kid_b = js["KeyMetadata"]["KeyId"]
        test_faults(a["kid"], kid_b)
        test_stats(a["kid"], kid_b, a["blob"], a["ctx"])
        test_bulk()
        test_misc(a["kid"])
        # persistence across a restart
        SRV.stop()
        SRV.start("--vault-upsert")
        st, js = kms("Decrypt", {"CiphertextBlob": a["keep_blob"]})
        check("restart: AWS blob decrypts", st == 200 and base64.b64decode(js["Plaintext"]) == b"kept", js)
        st, js = kms("DescribeKey", {"KeyId": "alias/selftest"})
        check("restart: alias kept", st == 200 and js["KeyMetadata"]["KeyId"] == a["kid"], js)
        st, js = kms("DescribeKey", {"KeyId": a["kid3"]})
        check("restart: deleted key stays NotFound", err_type(js) == "NotFoundException", js)
        st, js = vault("POST", "transit/decrypt/persist", {"ciphertext": vct})
        check("restart: Vault ciphertext decrypts", st == 200 and
              base64.b64decode(js["data"]["plaintext"]) == b"survives restart", js)
        st, js = vault("GET", "transit/keys/dk")
        check("restart: Vault key settings kept", st == 200 and js["data"]["derived"] is True, js)
        st, js = vault("POST", "transit/encrypt/upserted", {"plaintext": b64("x")})
        st2, js2 = vault("GET", "transit/keys/upserted")
        check("--vault-upsert: encrypt creates the key", st == 200 and st2 == 200, (js, js2))
        _, js = admin("GET", "health")
        check("restart: bulk keys kept", js["aws_keys"] > 2000 and js["vault_keys"] >= 500, js)
        ok = True
    except Exception as e:  # a crash is a failure, not a traceback-only exit
        import traceback
        traceback.print_exc()
        check("selftest ran to the end", False, repr(e))
    finally:
        SRV.stop()
        if failed:
            print("server log kept in", tmp)
        elif ok:
            shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
