#!/usr/bin/python3
"""http_kms_server.py -- a test-only AWS KMS + HashiCorp Vault Transit server.

Standard library only (Python 3.11, Debian's /usr/bin/python3).  It exists
because no real AWS KMS or Vault server can be installed on the test machines;
it follows the public API documents closely enough that the official clients
(libcurl's SigV4 signer, @aws-sdk/client-kms, node-vault) talk to it unchanged.

What it emulates
  * AWS KMS, JSON 1.1 protocol: POST / with Content-Type
    application/x-amz-json-1.1 and X-Amz-Target: TrentService.<Op>.  Ops:
    CreateKey DescribeKey ListKeys Encrypt Decrypt ReEncrypt GenerateDataKey
    GenerateDataKeyWithoutPlaintext EnableKey DisableKey ScheduleKeyDeletion
    CancelKeyDeletion CreateAlias DeleteAlias ListAliases.  Keys are named by
    id, key ARN, alias/<name> or alias ARN.  Errors are HTTP 400 (500/503 for
    injected faults) with {"__type": Name, "message": ...}.
  * AWS Signature Version 4 (Authorization-header form) verified exactly, for
    the credentials of --aws-credentials (AWS shared-credentials INI file).
  * Vault Transit secrets engine mounted at /v1/<--vault-mount>: keys
    create/read/list/config/rotate/delete, encrypt, decrypt, rewrap; token in
    X-Vault-Token (or Authorization: Bearer); X-Vault-Namespace is recorded.
    Responses use Vault's envelope ({"request_id", "data", ...}); errors are
    {"errors": [...]} with Vault's own wording (sdk/helper/keysutil).
  * /__admin/... : a test-control API (fault injection, call statistics, key
    state changes, bulk creation).  See ADMIN API below.  No auth.

Documents followed
  * AWS KMS API Reference (Actions, Common Errors, KeyMetadata data type).
  * AWS General Reference, "Signature Version 4 signing process", and the
    SigV4 test suite vectors (get-vanilla etc., checked by the selftest).
  * Vault API docs "Transit - Secrets Engines - HTTP API"; error texts from
    hashicorp/vault sdk/helper/keysutil/policy.go and lock_manager.go.

What it deliberately does not do
  * No real AES-GCM (the stdlib has none).  Ciphertexts are an opaque,
    authenticated, test-only construction: keystream = HMAC-SHA256(Ke,
    nonce || counter32) blocks XOR plaintext; tag = HMAC-SHA256(Km, header ||
    nonce || ciphertext || aad), with Ke/Km = HMAC(key, label) sub-keys of the
    key (or key version) material.  AWS blob: 0x01 || key id (36 ASCII) ||
    16-byte nonce || ciphertext || 32-byte tag, aad = canonical JSON of the
    EncryptionContext (sorted keys; absent == {}).  Vault: "vault:vN:" +
    base64(nonce || ciphertext || tag), header = "vault:vN:", aad =
    associated_data.  Not interoperable with real KMS/Vault ciphertexts.
  * No TLS, IAM/key policies, grants, tags, asymmetric/HMAC/imported/multi-
    region keys, pagination (Truncated is always false), presigned-URL SigV4,
    chunked (streaming) SigV4.  A scheduled deletion never completes on its
    own: use POST /__admin/aws/keys/<id>/state {"state": "deleted"}.
  * Vault: no batch_input, convergent encryption, export/backup/trim, token
    policies (every listed token may do everything), namespaces (the header
    is only recorded).  As in real Vault, "context" is used only by keys
    created with derived=true (it derives the key); "associated_data" is AAD
    for every key.  Encrypting to a missing key is 400 "encryption key not
    found" unless --vault-upsert (real Vault creates it when the token may).

ADMIN API (JSON in, JSON out)
  GET  /__admin/health                 {"ok": true}
  GET  /__admin/faults                 current fault table
  POST /__admin/faults                 set/merge faults; fields: latency_ms,
       throttle (N), retry_after (s), error_5xx (N), status_5xx (500|503),
       hang (bool), down (bool), drop (N), deny (bool); scope with optional
       "key" (id/ARN/alias/Vault name) and/or "api" ("aws"|"vault");
       {"clear": true} clears that scope (or everything without key/api).
  DELETE /__admin/faults               clear all faults (releases hangs)
  GET  /__admin/stats                  call counts per op, per key, status...
  POST /__admin/stats/reset
  POST /__admin/aws/keys/<ref>/state   {"state": Enabled|Disabled|
       PendingDeletion|PendingImport|Unavailable|deleted}
  POST /__admin/vault/keys/<name>/delete   destroy, ignoring deletion_allowed
  POST /__admin/create                 {"kind": "aws"|"vault", "count": N,
       "prefix": "k", "alias_prefix": "alias/k" (aws, optional),
       "derived": bool (vault)} -> {"ids": [...], "arns": [...]}
"""
import argparse
import base64
import binascii
import configparser
import hashlib
import hmac
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

ACCOUNT = "111122223333"
AWS_JSON = "application/x-amz-json-1.1"
NONCE_LEN, TAG_LEN, KID_LEN = 16, 32, 36
MAX_BODY = 16 << 20
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ARN_RE = re.compile(r"^arn:aws:kms:([^:]+):(\d{12}):(key|alias)/(.+)$")
AWS_STATES = ("Enabled", "Disabled", "PendingDeletion", "PendingImport", "Unavailable")
VAULT_TYPES = ("aes256-gcm96", "aes128-gcm96", "chacha20-poly1305")
VAULT_NEED_CONTEXT = ("missing 'context' for key derivation; the key was created using a derived "
                      "key, which means additional, per-request information must be included in "
                      "order to perform operations with the key")
ERR_TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"


# --------------------------------------------------------------------------- crypto
def _hmac(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor_stream(key, nonce, data):
    ke = _hmac(key, b"byok-test/enc")
    stream = b"".join(_hmac(ke, nonce + i.to_bytes(4, "big")) for i in range((len(data) + 31) // 32))
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")).to_bytes(n, "big")


def seal(key, header, plaintext, aad=b""):
    """-> nonce || ciphertext || tag; the tag also covers header and aad."""
    nonce = os.urandom(NONCE_LEN)
    ct = _xor_stream(key, nonce, plaintext)
    return nonce + ct + _hmac(_hmac(key, b"byok-test/mac"), header + nonce + ct + aad)


def unseal(key, header, payload, aad=b""):
    """Inverse of seal(); None when the payload or the tag is wrong."""
    if len(payload) < NONCE_LEN + TAG_LEN:
        return None
    body, tag = payload[:-TAG_LEN], payload[-TAG_LEN:]
    if not hmac.compare_digest(tag, _hmac(_hmac(key, b"byok-test/mac"), header + body + aad)):
        return None
    return _xor_stream(key, body[:NONCE_LEN], body[NONCE_LEN:])


def b64e(data):
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- SigV4
def sigv4_signing_key(secret, date, region, service):
    k = _hmac(("AWS4" + secret).encode(), date.encode())
    for part in (region, service, "aws4_request"):
        k = _hmac(k, part.encode())
    return k


def sigv4_canonical_request(method, path, query, headers, signed, payload_hash):
    """headers: {lowercase name: [values]}; signed: header names as listed."""
    pairs = []
    for item in filter(None, query.split("&")):
        k, _, v = item.partition("=")
        pairs.append((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")))
    canon_headers = "".join("%s:%s\n" % (h, ",".join(" ".join(v.split()) for v in headers.get(h, [])))
                            for h in signed)
    return "\n".join([method, quote(unquote(path or "/"), safe="/-_.~"),
                      "&".join("%s=%s" % p for p in sorted(pairs)),
                      canon_headers, ";".join(signed), payload_hash])


def sigv4_signature(secret, amz_date, scope, canonical_request):
    """-> (hex signature, string to sign) for a credential scope date/region/service/aws4_request."""
    date, region, service, _ = scope.split("/")
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(canonical_request.encode()).hexdigest()])
    return hmac.new(sigv4_signing_key(secret, date, region, service), sts.encode(),
                    hashlib.sha256).hexdigest(), sts


# --------------------------------------------------------------------------- errors
class ApiError(Exception):
    def __init__(self, status, body, headers=None, name=None):
        super().__init__(name or str(body))
        self.status, self.body, self.headers, self.name = status, body, headers or {}, name


def aws_err(name, message, status=400, headers=None):
    return ApiError(status, {"__type": name, "message": message}, headers, name)


def vault_err(status, *messages, headers=None):
    return ApiError(status, {"errors": list(messages)}, headers, "vault%d" % status)


class WatchedFile:
    """A config file re-read whenever its mtime/size changes (credential rotation tests)."""

    def __init__(self, path, parse):
        self.path, self.parse, self.sig, self.value = path, parse, None, None
        self.lock = threading.Lock()

    def get(self):
        if not self.path:
            return None
        with self.lock:
            try:
                st = os.stat(self.path)
                sig = (st.st_mtime_ns, st.st_size)
                if sig != self.sig:
                    with open(self.path, encoding="utf-8") as f:
                        self.value, self.sig = self.parse(f.read()), sig
            except OSError:
                self.value, self.sig = {}, None
            return self.value


def parse_aws_credentials(text):
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    out = {}
    for sect in cp.sections():
        s = cp[sect]
        if s.get("aws_access_key_id") and s.get("aws_secret_access_key"):
            out[s["aws_access_key_id"].strip()] = (s["aws_secret_access_key"].strip(),
                                                   (s.get("aws_session_token") or "").strip())
    return out


def parse_tokens(text):
    return {ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")}


# --------------------------------------------------------------------------- state
class Store:
    """All keys, optionally persisted to a JSON state file after every change."""

    def __init__(self, path, region):
        self.path, self.region = path, region
        self.lock, self.save_lock = threading.RLock(), threading.Lock()
        self.aws, self.aliases, self.deleted, self.vault = {}, {}, set(), {}
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            self.aws, self.aliases = d.get("aws_keys", {}), d.get("aws_aliases", {})
            self.deleted, self.vault = set(d.get("aws_deleted", [])), d.get("vault_keys", {})

    def save(self):
        if not self.path:
            return
        with self.save_lock:
            with self.lock:
                text = json.dumps({"aws_keys": self.aws, "aws_aliases": self.aliases,
                                   "aws_deleted": sorted(self.deleted), "vault_keys": self.vault})
            tmp = "%s.tmp%d" % (self.path, os.getpid())
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)

    # ---- AWS
    def arn(self, kid):
        return "arn:aws:kms:%s:%s:key/%s" % (self.region, ACCOUNT, kid)

    def new_aws_key(self, description=""):
        kid = str(uuid.uuid4())
        self.aws[kid] = {"material": os.urandom(32).hex(), "state": "Enabled", "created": time.time(),
                         "description": description, "deletion_date": None}
        return kid

    def resolve(self, ref, allow_alias=True):
        """Key id, key ARN, alias/<name> or alias ARN -> key id, else NotFoundException."""
        if not isinstance(ref, str) or not ref:
            raise aws_err("ValidationException", "1 validation error detected: Value null at 'keyId' "
                          "failed to satisfy constraint: Member must not be null")
        kid, alias, m = None, None, ARN_RE.match(ref)
        if m:
            region, acct, kind, rest = m.groups()
            if kind == "key" and acct == ACCOUNT and region == self.region:
                kid = rest
            elif kind == "alias" and acct == ACCOUNT and region == self.region:
                alias = "alias/" + rest
        elif ref.startswith("alias/"):
            alias = ref
        else:
            kid = ref
        if alias is not None and allow_alias:
            kid = self.aliases.get(alias)
            if kid is None:
                raise aws_err("NotFoundException", "Alias arn:aws:kms:%s:%s:%s is not found."
                              % (self.region, ACCOUNT, alias))
        if kid not in self.aws:
            if kid and UUID_RE.match(kid):
                raise aws_err("NotFoundException", "Key '%s' does not exist" % self.arn(kid))
            raise aws_err("NotFoundException", "Invalid keyId '%s'" % ref)
        return kid

    def canonical(self, ref):
        """Best-effort key id for statistics and fault scoping (never raises)."""
        try:
            with self.lock:
                return self.resolve(ref)
        except ApiError:
            return ref

    def usable(self, kid):
        st = self.aws[kid]["state"]
        if st == "Disabled":
            raise aws_err("DisabledException", "%s is disabled." % self.arn(kid))
        if st == "PendingDeletion":
            raise aws_err("KMSInvalidStateException", "%s is pending deletion." % self.arn(kid))
        if st != "Enabled":
            raise aws_err("KMSInvalidStateException", "%s is %s." % (self.arn(kid), st))
        return bytes.fromhex(self.aws[kid]["material"])

    def metadata(self, kid):
        k = self.aws[kid]
        md = {"AWSAccountId": ACCOUNT, "KeyId": kid, "Arn": self.arn(kid), "CreationDate": k["created"],
              "Enabled": k["state"] == "Enabled", "Description": k["description"],
              "KeyUsage": "ENCRYPT_DECRYPT", "KeyState": k["state"], "Origin": "AWS_KMS",
              "KeyManager": "CUSTOMER", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
              "KeySpec": "SYMMETRIC_DEFAULT", "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
              "MultiRegion": False}
        if k["deletion_date"]:
            md["DeletionDate"] = k["deletion_date"]
        return md

    def set_aws_state(self, kid, state, days=30):
        if state == "deleted":
            del self.aws[kid]
            self.deleted.add(kid)
            self.aliases = {a: t for a, t in self.aliases.items() if t != kid}
            return
        k = self.aws[kid]
        k["state"] = state
        k["deletion_date"] = time.time() + days * 86400 if state == "PendingDeletion" else None

    # ---- Vault
    def new_vault_key(self, name, ktype="aes256-gcm96", derived=False, exportable=False):
        now = int(time.time())
        self.vault[name] = {"type": ktype, "derived": derived, "exportable": exportable,
                            "allow_plaintext_backup": False, "deletion_allowed": False,
                            "min_decryption_version": 1, "min_encryption_version": 0,
                            "latest_version": 1, "auto_rotate_period": 0,
                            "versions": {"1": {"material": os.urandom(32).hex(), "created": now}}}
        return self.vault[name]


# --------------------------------------------------------------------------- faults & stats
FAULT_DEFAULTS = {"latency_ms": 0, "throttle": 0, "retry_after": None, "error_5xx": 0,
                  "status_5xx": 500, "hang": False, "down": False, "drop": 0, "deny": False}


class Faults:
    def __init__(self):
        self.cond = threading.Condition()
        self.scopes = {}  # (api or "*", key or "*") -> settings
        self.stopping = False

    def snapshot(self):
        with self.cond:
            return [dict(api=a, key=k, **v) for (a, k), v in self.scopes.items()]

    def set(self, body, canonical):
        unknown = set(body) - set(FAULT_DEFAULTS) - {"key", "api", "clear"}
        if unknown:
            raise ApiError(400, {"error": "unknown fault fields: %s" % sorted(unknown)})
        key = body.get("key")
        scope = (body.get("api") or "*", canonical(key) if key else "*")
        with self.cond:
            if body.get("clear"):
                if key or body.get("api"):
                    self.scopes.pop(scope, None)
                else:
                    self.scopes.clear()
            else:
                entry = self.scopes.setdefault(scope, dict(FAULT_DEFAULTS))
                entry.update({k: v for k, v in body.items() if k in FAULT_DEFAULTS})
            self.cond.notify_all()
        return self.snapshot()

    def clear(self):
        with self.cond:
            self.scopes.clear()
            self.cond.notify_all()

    def _matching(self, api, keys):
        return [e for (a, k), e in self.scopes.items() if a in ("*", api) and (k == "*" or k in keys)]

    def network(self, api, keys):
        """Connection-level faults: 'down' (drop it), hang (block until cleared), latency."""
        with self.cond:
            while True:
                es = self._matching(api, keys)
                if any(e["down"] for e in es):
                    return "down"
                for e in es:
                    if e["drop"] > 0:
                        e["drop"] -= 1
                        return "down"
                if self.stopping or not any(e["hang"] for e in es):
                    break
                self.cond.wait(0.5)
            delay = max([e["latency_ms"] or 0 for e in es], default=0)
        if delay:
            time.sleep(delay / 1000.0)
        return None

    def service(self, api, keys):
        """Service-level faults, after authentication: throttle, 5xx, deny."""
        with self.cond:
            es = self._matching(api, keys)
            for e in es:
                if e["throttle"] > 0:
                    e["throttle"] -= 1
                    return "throttle", e["retry_after"]
            for e in es:
                if e["error_5xx"] > 0:
                    e["error_5xx"] -= 1
                    return "5xx", int(e["status_5xx"] or 500)
            if any(e["deny"] for e in es):
                return "deny", None
        return None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.open_connections = 0
        self.reset()

    def reset(self):
        with self.lock:
            self.d = {"total": 0, "connections": 0, "aws": {"ops": {}, "keys": {}},
                      "vault": {"ops": {}, "keys": {}}, "status": {}, "errors": {},
                      "faults": {}, "namespaces": {}, "access_keys": {}}

    @staticmethod
    def _inc(d, k, n=1):
        d[k] = d.get(k, 0) + n

    def connection(self, delta):
        with self.lock:
            self.open_connections += delta

    def call(self, api, op, key):
        with self.lock:
            self.d["total"] += 1
            self._inc(self.d[api]["ops"], op)
            if key:
                self._inc(self.d[api]["keys"].setdefault(key, {}), op)

    def note(self, section, name):
        with self.lock:
            if name is None:
                self.d[section] += 1
            else:
                self._inc(self.d[section], str(name))

    def snapshot(self):
        with self.lock:
            out = json.loads(json.dumps(self.d))
            out["open_connections"] = self.open_connections
            return out


# --------------------------------------------------------------------------- AWS KMS
def _b64field(req, name, required=True):
    v = req.get(name)
    if v is None:
        if required:
            raise aws_err("ValidationException", "1 validation error detected: Value null at '%s' "
                          "failed to satisfy constraint: Member must not be null" % name)
        return None
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise aws_err("SerializationException", "Could not deserialize '%s' (not base64)" % name)


def _context(ctx):
    if ctx is None:
        ctx = {}
    if not isinstance(ctx, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in ctx.items()):
        raise aws_err("SerializationException", "EncryptionContext must be a map of strings")
    return json.dumps(ctx, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _algorithm(req, name="EncryptionAlgorithm"):
    if req.get(name, "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
        raise aws_err("InvalidKeyUsageException", "%s %s is not supported by this key"
                      % (name, req.get(name)))


class AwsKms:
    def __init__(self, store):
        self.s = store

    def _seal(self, kid, material, plaintext, ctx):
        header = b"\x01" + kid.encode("ascii")
        return b64e(header + seal(material, header, plaintext, _context(ctx)))

    def _open(self, blob, key_ref, ctx):
        """-> (key id, plaintext) of an Encrypt blob."""
        if len(blob) < 1 + KID_LEN + NONCE_LEN + TAG_LEN or blob[0] != 1:
            raise aws_err("InvalidCiphertextException", "")
        kid = blob[1:1 + KID_LEN].decode("latin-1")
        with self.s.lock:
            if key_ref is not None and self.s.resolve(key_ref) != kid:
                raise aws_err("IncorrectKeyException", "The key ID in the request does not identify "
                              "a KMS key that can perform this operation.")
            if kid in self.s.deleted:
                raise aws_err("NotFoundException", "Key '%s' does not exist" % self.s.arn(kid))
            if kid not in self.s.aws:
                raise aws_err("InvalidCiphertextException", "")
            material = self.s.usable(kid)
        pt = unseal(material, blob[:1 + KID_LEN], blob[1 + KID_LEN:], _context(ctx))
        if pt is None:
            raise aws_err("InvalidCiphertextException", "")
        return kid, pt

    def CreateKey(self, r):
        for f in ("KeySpec", "CustomerMasterKeySpec"):
            if r.get(f, "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
                raise aws_err("UnsupportedOperationException", "%s %s is not supported here" % (f, r[f]))
        if r.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
            raise aws_err("UnsupportedOperationException", "only ENCRYPT_DECRYPT keys are supported")
        with self.s.lock:
            kid = self.s.new_aws_key(r.get("Description") or "")
            md = self.s.metadata(kid)
        self.s.save()
        return {"KeyMetadata": md}

    def DescribeKey(self, r):
        with self.s.lock:
            return {"KeyMetadata": self.s.metadata(self.s.resolve(r.get("KeyId")))}

    def ListKeys(self, r):
        with self.s.lock:
            return {"Keys": [{"KeyId": k, "KeyArn": self.s.arn(k)} for k in self.s.aws], "Truncated": False}

    def Encrypt(self, r):
        pt = _b64field(r, "Plaintext")
        if not 1 <= len(pt) <= 4096:
            raise aws_err("ValidationException", "1 validation error detected: Value at 'plaintext' "
                          "failed to satisfy constraint: Member must have length between 1 and 4096")
        _algorithm(r)
        with self.s.lock:
            kid = self.s.resolve(r.get("KeyId"))
            material = self.s.usable(kid)
        return {"CiphertextBlob": self._seal(kid, material, pt, r.get("EncryptionContext")),
                "KeyId": self.s.arn(kid), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def Decrypt(self, r):
        _algorithm(r)
        kid, pt = self._open(_b64field(r, "CiphertextBlob"), r.get("KeyId"), r.get("EncryptionContext"))
        return {"KeyId": self.s.arn(kid), "Plaintext": b64e(pt), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def ReEncrypt(self, r):
        src, pt = self._open(_b64field(r, "CiphertextBlob"), r.get("SourceKeyId"),
                             r.get("SourceEncryptionContext"))
        with self.s.lock:
            dst = self.s.resolve(r.get("DestinationKeyId"))
            material = self.s.usable(dst)
        return {"CiphertextBlob": self._seal(dst, material, pt, r.get("DestinationEncryptionContext")),
                "SourceKeyId": self.s.arn(src), "KeyId": self.s.arn(dst),
                "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def GenerateDataKey(self, r, with_plaintext=True):
        n, spec = r.get("NumberOfBytes"), r.get("KeySpec")
        if (n is None) == (spec is None):
            raise aws_err("ValidationException", "Please specify either number of bytes or key spec.")
        if spec is not None:
            n = {"AES_256": 32, "AES_128": 16}.get(spec)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
            raise aws_err("ValidationException", "invalid NumberOfBytes or KeySpec")
        with self.s.lock:
            kid = self.s.resolve(r.get("KeyId"))
            material = self.s.usable(kid)
        pt = os.urandom(n)
        out = {"CiphertextBlob": self._seal(kid, material, pt, r.get("EncryptionContext")),
               "KeyId": self.s.arn(kid)}
        if with_plaintext:
            out["Plaintext"] = b64e(pt)
        return out

    def GenerateDataKeyWithoutPlaintext(self, r):
        return self.GenerateDataKey(r, with_plaintext=False)

    def _change_state(self, r, allowed_from, new_state, days=30):
        with self.s.lock:
            kid = self.s.resolve(r.get("KeyId"))
            st = self.s.aws[kid]["state"]
            if st not in allowed_from:
                raise aws_err("KMSInvalidStateException", "%s is %s." % (
                    self.s.arn(kid), "pending deletion" if st == "PendingDeletion" else st))
            self.s.set_aws_state(kid, new_state, days)
        self.s.save()
        return kid

    def EnableKey(self, r):
        self._change_state(r, ("Enabled", "Disabled"), "Enabled")

    def DisableKey(self, r):
        self._change_state(r, ("Enabled", "Disabled"), "Disabled")

    def ScheduleKeyDeletion(self, r):
        days = r.get("PendingWindowInDays", 30)
        if not isinstance(days, int) or not 7 <= days <= 30:
            raise aws_err("ValidationException", "PendingWindowInDays must be between 7 and 30")
        kid = self._change_state(r, ("Enabled", "Disabled", "PendingImport", "Unavailable"),
                                 "PendingDeletion", days)
        with self.s.lock:
            return {"KeyId": self.s.arn(kid), "DeletionDate": self.s.aws[kid]["deletion_date"],
                    "KeyState": "PendingDeletion", "PendingWindowInDays": days}

    def CancelKeyDeletion(self, r):
        # Real KMS leaves a key whose deletion was cancelled Disabled.
        return {"KeyId": self.s.arn(self._change_state(r, ("PendingDeletion",), "Disabled"))}

    def CreateAlias(self, r):
        name = r.get("AliasName")
        if not isinstance(name, str) or not re.match(r"^alias/[a-zA-Z0-9/_-]{1,250}$", name) \
                or name.startswith("alias/aws/"):
            raise aws_err("ValidationException", "Alias must start with the prefix \"alias/\" and "
                          "not \"alias/aws/\"")
        with self.s.lock:
            kid = self.s.resolve(r.get("TargetKeyId"), allow_alias=False)
            if name in self.s.aliases:
                raise aws_err("AlreadyExistsException", "An alias with the name arn:aws:kms:%s:%s:%s "
                              "already exists" % (self.s.region, ACCOUNT, name))
            self.s.aliases[name] = kid
        self.s.save()

    def DeleteAlias(self, r):
        with self.s.lock:
            if self.s.aliases.pop(r.get("AliasName"), None) is None:
                raise aws_err("NotFoundException", "Alias %s is not found." % r.get("AliasName"))
        self.s.save()

    def ListAliases(self, r):
        with self.s.lock:
            only = self.s.resolve(r["KeyId"]) if r.get("KeyId") else None
            return {"Aliases": [{"AliasName": a, "AliasArn": "arn:aws:kms:%s:%s:%s" % (
                self.s.region, ACCOUNT, a), "TargetKeyId": t}
                for a, t in sorted(self.s.aliases.items()) if only in (None, t)], "Truncated": False}


AWS_OPS = {n for n in dir(AwsKms) if n[0].isupper()}


def aws_key_hint(op, req):
    """Which key a request is about, before validating it (for stats and fault scoping)."""
    if op in ("Decrypt", "ReEncrypt"):
        try:
            blob = base64.b64decode(req.get("CiphertextBlob") or "", validate=True)
            if len(blob) > KID_LEN and blob[0] == 1:
                return blob[1:1 + KID_LEN].decode("latin-1")
        except (binascii.Error, TypeError, ValueError):
            pass
    for f in ("KeyId", "TargetKeyId", "DestinationKeyId", "AliasName"):
        if isinstance(req.get(f), str):
            return req[f]
    return None


# --------------------------------------------------------------------------- Vault Transit
def _vbool(v, name):
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, str)) and str(v).lower() in ("1", "0", "true", "false", "t", "f"):
        return str(v).lower() in ("1", "true", "t")
    raise vault_err(400, "error converting input %r for field %q" % (v, name))


def _vint(v, name):
    try:
        if isinstance(v, bool):
            raise ValueError
        return int(v)
    except (TypeError, ValueError):
        raise vault_err(400, "error converting input %r for field %q" % (v, name))


def _vb64(req, name):
    v = req.get(name)
    if not v:
        return b""
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise vault_err(400, "failed to base64-decode %s" % name)


class VaultTransit:
    def __init__(self, store, upsert=False):
        self.s, self.upsert = store, upsert

    def info(self, name, k):
        mind = k["min_decryption_version"]
        out = {"name": name, "type": k["type"], "derived": k["derived"], "exportable": k["exportable"],
               "allow_plaintext_backup": k["allow_plaintext_backup"],
               "deletion_allowed": k["deletion_allowed"], "latest_version": k["latest_version"],
               "min_available_version": 0, "min_decryption_version": mind,
               "min_encryption_version": k["min_encryption_version"],
               "keys": {v: e["created"] for v, e in k["versions"].items() if int(v) >= mind},
               "supports_encryption": True, "supports_decryption": True,
               "supports_derivation": True, "supports_signing": False, "imported_key": False,
               "auto_rotate_period": k["auto_rotate_period"]}
        if k["derived"]:
            out["kdf"] = "hkdf_sha256"
        return out

    def _key(self, name, missing="encryption key not found"):
        k = self.s.vault.get(name)
        if k is None:
            raise vault_err(400, missing)
        return k

    def _material(self, k, ver, req):
        material = bytes.fromhex(k["versions"][str(ver)]["material"])
        if not k["derived"]:
            return material  # real Vault ignores "context" for non-derived keys
        ctx = _vb64(req, "context")
        if not ctx:
            raise vault_err(400, VAULT_NEED_CONTEXT)
        return _hmac(material, b"byok-test/derive" + ctx)

    def _encrypt(self, k, pt, req):
        ver = _vint(req.get("key_version") or 0, "key_version") or k["latest_version"]
        if ver > k["latest_version"]:
            raise vault_err(400, "requested version for encryption is higher than the latest key version")
        if ver < max(k["min_encryption_version"], 1):
            raise vault_err(400, "requested version for encryption is less than the minimum "
                            "encryption key version")
        header = "vault:v%d:" % ver
        payload = seal(self._material(k, ver, req), header.encode(), pt, _vb64(req, "associated_data"))
        return {"ciphertext": header + b64e(payload), "key_version": ver}

    def _decrypt(self, k, ct, req):
        if not isinstance(ct, str) or not ct:
            raise vault_err(400, "missing ciphertext to decrypt")
        if not ct.startswith("vault:v"):
            raise vault_err(400, "invalid ciphertext: no prefix")
        parts = ct[len("vault:v"):].split(":", 1)
        if len(parts) != 2:
            raise vault_err(400, "invalid ciphertext: wrong number of fields")
        if not re.fullmatch(r"-?\d+", parts[0]):
            raise vault_err(400, "invalid ciphertext: version number could not be decoded")
        ver = int(parts[0]) or 1
        if ver > k["latest_version"]:
            raise vault_err(400, "invalid ciphertext: version is too new")
        if ver < k["min_decryption_version"]:
            raise vault_err(400, ERR_TOO_OLD)
        try:
            payload = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise vault_err(400, "invalid ciphertext: could not decode base64")
        pt = unseal(self._material(k, ver, req), ("vault:v%d:" % ver).encode(), payload,
                    _vb64(req, "associated_data"))
        if pt is None:
            raise vault_err(400, "cipher: message authentication failed")
        return pt

    def handle(self, op, name, req, query):
        """-> (status, data or None)."""
        s = self.s
        with s.lock:
            if op == "list":
                if not s.vault:
                    return 404, None
                return 200, {"keys": sorted(s.vault)}
            if op == "read":
                if name not in s.vault:
                    raise vault_err(404)
                return 200, self.info(name, s.vault[name])
            if op == "create":
                if name not in s.vault:
                    ktype = req.get("type") or "aes256-gcm96"
                    if ktype not in VAULT_TYPES:
                        raise vault_err(400, "unknown key type %s" % ktype)
                    derived = _vbool(req.get("derived", False), "derived")
                    if _vbool(req.get("convergent_encryption", False), "convergent_encryption"):
                        raise vault_err(400, "convergent encryption is not supported by this test server")
                    s.new_vault_key(name, ktype, derived, _vbool(req.get("exportable", False), "exportable"))
                    s.save()
                return 200, self.info(name, s.vault[name])
            if op == "delete":
                if name not in s.vault:
                    raise vault_err(400, "error deleting policy %s: could not delete policy; not found" % name)
                if not s.vault[name]["deletion_allowed"]:
                    raise vault_err(400, "error deleting policy %s: deletion is not allowed for this "
                                    "policy" % name)
                del s.vault[name]
                s.save()
                return 204, None
            if op == "config":
                k = self._key(name, "no existing key named %s could be found" % name)
                mind = req.get("min_decryption_version")
                mine = req.get("min_encryption_version")
                mind = k["min_decryption_version"] if mind is None else _vint(mind, "min_decryption_version")
                mine = k["min_encryption_version"] if mine is None else _vint(mine, "min_encryption_version")
                mind = max(mind, 1)
                if mind > k["latest_version"]:
                    raise vault_err(400, "cannot set min decryption version of %d, latest key version "
                                    "is %d" % (mind, k["latest_version"]))
                if mine < 0 or mine > k["latest_version"]:
                    raise vault_err(400, "cannot set min encryption version of %d, latest key version "
                                    "is %d" % (mine, k["latest_version"]))
                if mine and mine < mind:
                    raise vault_err(400, "cannot set min encryption/decryption values; min encryption "
                                    "version must be greater than or equal to min decryption version")
                k["min_decryption_version"], k["min_encryption_version"] = mind, mine
                for f in ("deletion_allowed", "exportable", "allow_plaintext_backup"):
                    if f in req:
                        k[f] = _vbool(req[f], f)
                if "auto_rotate_period" in req:
                    k["auto_rotate_period"] = _vint(req["auto_rotate_period"], "auto_rotate_period")
                s.save()
                return 200, self.info(name, k)
            if op == "rotate":
                k = self._key(name, "key not found")
                k["latest_version"] += 1
                k["versions"][str(k["latest_version"])] = {"material": os.urandom(32).hex(),
                                                           "created": int(time.time())}
                s.save()
                return 200, self.info(name, k)
            k = s.vault.get(name)
            if k is None and op == "encrypt" and self.upsert:
                k = s.new_vault_key(name, req.get("type") or "aes256-gcm96",
                                    _vbool(req.get("derived", False), "derived"))
                s.save()
            if k is None:
                raise vault_err(400, "encryption key not found")
            k = json.loads(json.dumps(k))  # work on a copy outside the lock
        if op == "encrypt":
            if "plaintext" not in req:
                raise vault_err(400, "missing plaintext to encrypt")
            try:
                pt = base64.b64decode(req["plaintext"] or "", validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise vault_err(400, "failed to base64-decode plaintext")
            return 200, self._encrypt(k, pt, req)
        if op == "decrypt":
            return 200, {"plaintext": b64e(self._decrypt(k, req.get("ciphertext"), req))}
        if op == "rewrap":
            return 200, self._encrypt(k, self._decrypt(k, req.get("ciphertext"), req), req)
        raise vault_err(404, "unsupported path")


def vault_route(method, path, query, mount):
    """-> (op, key name) for a /v1/ request, op None when no handler exists."""
    prefix = "/v1/%s/" % mount
    if not path.startswith(prefix):
        return None, None
    seg = [unquote(p) for p in path[len(prefix):].split("/")]
    writes = method in ("POST", "PUT")
    if seg[0] == "keys":
        if len(seg) == 1 or (len(seg) == 2 and seg[1] == ""):
            listing = method == "LIST" or (method == "GET" and "list=true" in query)
            return ("list" if listing else None), None
        if len(seg) == 2:
            return {"GET": "read", "POST": "create", "PUT": "create", "DELETE": "delete"}.get(method), seg[1]
        if len(seg) == 3 and seg[2] in ("config", "rotate") and writes:
            return seg[2], seg[1]
    elif seg[0] in ("encrypt", "decrypt", "rewrap") and len(seg) == 2 and writes:
        return seg[0], seg[1]
    return None, None


# --------------------------------------------------------------------------- the application
class App:
    def __init__(self, args):
        self.args = args
        self.store = Store(args.state_file, args.region)
        self.kms = AwsKms(self.store)
        self.vault = VaultTransit(self.store, args.vault_upsert)
        self.faults, self.stats = Faults(), Stats()
        self.creds = WatchedFile(args.aws_credentials, parse_aws_credentials)
        self.tokens = WatchedFile(args.vault_token_file, parse_tokens)
        self.log_lock = threading.Lock()
        self.log_file = open(args.log, "a", buffering=1, encoding="utf-8") if args.log else None

    def log(self, line):
        if self.log_file:
            with self.log_lock:
                self.log_file.write("%s %s\n" % (datetime.now().strftime("%H:%M:%S.%f")[:-3], line))

    def aws_error_type(self, name):
        if not self.args.aws_error_prefix:
            return name
        coral = ("UnrecognizedClientException", "InvalidSignatureException", "AccessDeniedException",
                 "IncompleteSignatureException", "MissingAuthenticationTokenException",
                 "ThrottlingException", "UnknownOperationException", "SerializationException")
        return ("com.amazon.coral.service#" if name in coral else "com.amazonaws.kms#") + name

    def verify_sigv4(self, method, path, query, headers, body):
        """Raises the AWS error a real endpoint would give; returns the access key id."""
        creds = self.creds.get()
        first = lambda n: (headers.get(n) or [None])[0]
        auth = first("authorization")
        if not auth:
            raise aws_err("MissingAuthenticationTokenException", "Missing Authentication Token")
        m = re.match(r"^AWS4-HMAC-SHA256\s+(.*)$", auth.strip())
        if not m:
            raise aws_err("IncompleteSignatureException", "Unsupported Authorization Type")
        fields = dict(p.strip().split("=", 1) for p in m.group(1).split(",") if "=" in p)
        for f in ("Credential", "SignedHeaders", "Signature"):
            if f not in fields:
                raise aws_err("IncompleteSignatureException", "Authorization header requires '%s' "
                              "parameter. Authorization=%s" % (f, auth))
        cred = fields["Credential"].split("/")
        if len(cred) != 5:
            raise aws_err("IncompleteSignatureException", "Credential must have exactly 5 "
                          "slash-delimited elements, e.g. keyid/date/region/service/term, got '%s'"
                          % fields["Credential"])
        akid, date, region, service, term = cred
        if akid not in creds:
            raise aws_err("UnrecognizedClientException", "The security token included in the request "
                          "is invalid.")
        secret, token = creds[akid]
        amz_date = first("x-amz-date")
        if not amz_date:
            raise aws_err("IncompleteSignatureException", "Authorization header requires existence "
                          "of either a 'X-Amz-Date' or a 'Date' header. Authorization=%s" % auth)
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise aws_err("IncompleteSignatureException", "X-Amz-Date must be in the ISO8601 Long "
                          "Format \"yyyyMMdd'T'HHmmss'Z'\"")
        if date != amz_date[:8]:
            raise aws_err("InvalidSignatureException", "Date in Credential scope does not match "
                          "YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s', from '%s'."
                          % (date, amz_date[:8], amz_date))
        if service != "kms":
            raise aws_err("InvalidSignatureException", "Credential should be scoped to correct "
                          "service: 'kms'. ")
        if term != "aws4_request":
            raise aws_err("InvalidSignatureException", "Credential should be scoped with a valid "
                          "terminator: 'aws4_request', not '%s'. " % term)
        if region != self.args.region:
            raise aws_err("InvalidSignatureException", "Credential should be scoped to a valid region. ")
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed:
            raise aws_err("InvalidSignatureException", "'Host' or ':authority' must be a "
                          "'SignedHeader' in the AWS Authorization.")
        skew = self.args.max_skew
        now = datetime.now(timezone.utc)
        if skew and abs((now - when).total_seconds()) > skew:
            fmt = lambda d: d.strftime("%Y%m%dT%H%M%SZ")
            raise aws_err("InvalidSignatureException", "Signature expired: %s is now earlier than %s"
                          % (amz_date, fmt(datetime.fromtimestamp(now.timestamp() - skew, timezone.utc)))
                          if when < now else "Signature not yet current: %s is still later than %s"
                          % (amz_date, fmt(datetime.fromtimestamp(now.timestamp() + skew, timezone.utc))))
        if token and first("x-amz-security-token") != token:
            raise aws_err("UnrecognizedClientException", "The security token included in the "
                          "request is invalid.")
        payload_hash = hashlib.sha256(body).hexdigest()
        declared = first("x-amz-content-sha256")
        if declared:
            if declared not in (payload_hash, "UNSIGNED-PAYLOAD"):
                raise aws_err("InvalidSignatureException", "The provided 'x-amz-content-sha256' "
                              "header does not match what was computed.")
            payload_hash = declared
        creq = sigv4_canonical_request(method, path, query, headers, signed, payload_hash)
        sig, sts = sigv4_signature(secret, amz_date, "/".join(cred[1:]), creq)
        if not hmac.compare_digest(sig, fields["Signature"].strip()):
            self.log("SigV4 mismatch for %s; canonical request:\n%s\n-- string to sign:\n%s"
                     % (akid, creq, sts))
            raise aws_err("InvalidSignatureException", "The request signature we calculated does "
                          "not match the signature you provided. Check your AWS Secret Access Key "
                          "and signing method. Consult the service documentation for details.")
        return akid

    def admin(self, method, path, body):
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError:
            raise ApiError(400, {"error": "body is not JSON"})
        s = self.store
        if path == "/__admin/health":
            return 200, {"ok": True, "aws_keys": len(s.aws), "vault_keys": len(s.vault)}
        if path == "/__admin/faults":
            if method == "GET":
                return 200, {"faults": self.faults.snapshot()}
            if method == "DELETE":
                self.faults.clear()
                return 200, {"faults": []}
            return 200, {"faults": self.faults.set(req, s.canonical)}
        if path == "/__admin/stats" and method == "GET":
            return 200, self.stats.snapshot()
        if path == "/__admin/stats/reset" and method == "POST":
            self.stats.reset()
            return 200, {"ok": True}
        m = re.match(r"^/__admin/aws/keys/(.+)/state$", path)
        if m and method == "POST":
            state = req.get("state")
            if state not in AWS_STATES + ("deleted",):
                raise ApiError(400, {"error": "state must be one of %s" % (AWS_STATES + ("deleted",),)})
            with s.lock:
                try:
                    kid = s.resolve(unquote(m.group(1)))
                except ApiError as e:
                    raise ApiError(404, e.body)
                s.set_aws_state(kid, state, req.get("days", 30))
                md = s.metadata(kid) if state != "deleted" else {"KeyId": kid, "KeyState": "deleted"}
            s.save()
            return 200, {"KeyMetadata": md}
        m = re.match(r"^/__admin/vault/keys/(.+)/delete$", path)
        if m and method == "POST":
            with s.lock:
                if s.vault.pop(unquote(m.group(1)), None) is None:
                    raise ApiError(404, {"error": "no such vault key"})
            s.save()
            return 200, {"ok": True}
        if path == "/__admin/create" and method == "POST":
            kind, count, prefix = req.get("kind"), int(req.get("count", 1)), req.get("prefix", "k")
            ids, arns = [], []
            with s.lock:
                for i in range(count):
                    if kind == "aws":
                        kid = s.new_aws_key(req.get("description", ""))
                        if req.get("alias_prefix"):
                            alias = "%s%d" % (req["alias_prefix"], i)
                            if not alias.startswith("alias/") or alias in s.aliases:
                                raise ApiError(409, {"error": "bad or existing alias %s" % alias})
                            s.aliases[alias] = kid
                        ids.append(kid)
                        arns.append(s.arn(kid))
                    elif kind == "vault":
                        name = "%s%d" % (prefix, i)
                        if name in s.vault:
                            raise ApiError(409, {"error": "vault key %s already exists" % name})
                        s.new_vault_key(name, req.get("type", "aes256-gcm96"), bool(req.get("derived")))
                        ids.append(name)
                    else:
                        raise ApiError(400, {"error": "kind must be aws or vault"})
            s.save()
            return 200, {"ids": ids, "arns": arns}
        raise ApiError(404, {"error": "no admin endpoint %s %s" % (method, path)})


# --------------------------------------------------------------------------- HTTP
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive; every response carries Content-Length
    disable_nagle_algorithm = True    # else every call stalls ~40 ms (Nagle + delayed ACK)
    server_version = "byok-test-kms/1.0"
    sys_version = ""

    def setup(self):
        super().setup()
        self.counted = False
        self.server.app.stats.connection(+1)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.app.stats.connection(-1)

    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, fmt, *args):
        self.server.app.log("%s %s" % (self.address_string(), fmt % args))

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_LIST = do_GET

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline(3)
                if len(data) > MAX_BODY:
                    raise ValueError("body too large")
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY or n < 0:
            raise ValueError("body too large")
        return self.rfile.read(n) if n else b""

    def _send(self, status, obj, ctype="application/json", headers=None):
        data = b"" if obj is None else json.dumps(obj).encode()
        try:
            self.send_response(status)
            if data:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        self.status = status

    def _drop(self):
        self.close_connection = True
        self.status = "dropped"
        self.server.app.stats.note("faults", "down")

    def _dispatch(self):
        app, t0 = self.server.app, time.monotonic()
        self.status, self.api, self.op, self.key, self.err = None, "-", "-", "-", None
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError as e:
            self.close_connection = True
            return self._send(413, {"error": str(e)})
        ctype = "application/json"
        try:
            if url.path.startswith("/__admin/"):
                self.api = "admin"
                status, obj = app.admin(self.command, url.path, body)
                self._send(status, obj)
            elif url.path.startswith("/v1/"):
                self._vault(app, url, body)
            else:
                ctype = AWS_JSON
                self._aws(app, url, body)
        except ApiError as e:
            self.err = e.name
            headers = dict(e.headers)
            if ctype == AWS_JSON:
                headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))
                headers["x-amzn-ErrorType"] = e.name
                e.body["__type"] = app.aws_error_type(e.body["__type"])
            self._send(e.status, e.body, ctype, headers)
        except Exception:
            traceback.print_exc()
            self.err = "internal"
            self._send(500, {"errors": ["internal error in test server"]})
        if self.api != "admin":
            if not self.counted:  # connections that carried KMS/Vault traffic
                self.counted = True
                app.stats.note("connections", None)
            app.stats.note("status", self.status)
            if self.err:
                app.stats.note("errors", self.err)
        app.log("%s %s %s op=%s key=%s -> %s%s %.1fms" % (
            self.command, url.path, self.api, self.op, self.key, self.status,
            " " + self.err if self.err else "", (time.monotonic() - t0) * 1000))

    def _headers(self):
        out = {}
        for k, v in self.headers.items():
            out.setdefault(k.lower(), []).append(v)
        return out

    def _aws(self, app, url, body):
        self.api = "aws"
        target = self.headers.get("X-Amz-Target", "")
        op = target[len("TrentService."):] if target.startswith("TrentService.") else ""
        self.op = op or target or "?"
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError:
            req = None
        hint = aws_key_hint(op, req) if isinstance(req, dict) else None
        key = app.store.canonical(hint) if hint else None
        self.key = key or "-"
        app.stats.call("aws", self.op, key)
        if app.faults.network("aws", {hint, key}) == "down":
            return self._drop()
        if app.creds.path:
            akid = app.verify_sigv4(self.command, url.path, url.query, self._headers(), body)
            app.stats.note("access_keys", akid)
        fault = app.faults.service("aws", {hint, key})
        if fault:
            app.stats.note("faults", fault[0])
            kind, arg = fault
            if kind == "throttle":
                raise aws_err("ThrottlingException", "Rate exceeded",
                              headers={"Retry-After": arg} if arg is not None else None)
            if kind == "5xx":
                raise aws_err("KMSInternalException" if arg == 500 else "ServiceUnavailableException",
                              "injected fault", status=arg)
            raise aws_err("AccessDeniedException", "User: arn:aws:iam::%s:user/test is not authorized "
                          "to perform: kms:%s on resource: %s because no resource-based policy "
                          "allows the kms:%s action" % (ACCOUNT, op, key, op))
        if self.command != "POST" or url.path != "/" or op not in AWS_OPS:
            raise aws_err("UnknownOperationException", "")
        if not self.headers.get("Content-Type", "").startswith("application/x-amz-json-1."):
            raise aws_err("UnknownOperationException", "Content-Type must be %s" % AWS_JSON)
        if not isinstance(req, dict):
            raise aws_err("SerializationException", "Start of structure or map found where not expected.")
        result = getattr(app.kms, op)(req)
        self._send(200, result, AWS_JSON, {"x-amzn-RequestId": str(uuid.uuid4())})

    def _vault(self, app, url, body):
        self.api = "vault"
        if url.path == "/v1/sys/health":
            return self._send(200, {"initialized": True, "sealed": False, "standby": False,
                                    "version": "1.15.0-byok-test", "server_time_utc": int(time.time())})
        op, name = vault_route(self.command, url.path, url.query, app.args.vault_mount)
        self.op, self.key = op or "unknown", name or "-"
        app.stats.call("vault", self.op, name)
        ns = self.headers.get("X-Vault-Namespace")
        if ns:
            app.stats.note("namespaces", ns)
        if app.faults.network("vault", {name}) == "down":
            return self._drop()
        tokens = app.tokens.get()
        token = self.headers.get("X-Vault-Token") or ""
        if not token and self.headers.get("Authorization", "").startswith("Bearer "):
            token = self.headers["Authorization"][7:].strip()
        if tokens is not None and token not in tokens:
            raise vault_err(403, "permission denied")
        fault = app.faults.service("vault", {name})
        if fault:
            app.stats.note("faults", fault[0])
            kind, arg = fault
            if kind == "throttle":
                raise vault_err(429, "request path %r: rate limit quota exceeded"
                                % url.path[len("/v1/"):], headers={"Retry-After": arg or 1})
            if kind == "5xx":
                raise vault_err(arg, "Vault is sealed" if arg == 503 else "internal error")
            raise vault_err(403, "permission denied")
        if op is None:
            raise vault_err(404, "no handler for route \"%s\". route entry not found."
                            % url.path[len("/v1/"):])
        try:
            req = json.loads(body) if body.strip() else {}
            if not isinstance(req, dict):
                raise ValueError
        except ValueError:
            raise vault_err(400, "failed to parse JSON input: invalid JSON object")
        status, data = app.vault.handle(op, name, req, url.query)
        if status == 200:
            data = {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False,
                    "lease_duration": 0, "data": data, "wrap_info": None, "warnings": None,
                    "auth": None, "mount_type": "transit"}
        elif status == 404:
            data = {"errors": []}
        self._send(status, data)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main(argv=None):
    ap = argparse.ArgumentParser(description="Test-only AWS KMS + Vault Transit server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed on stdout)")
    ap.add_argument("--port-file", help="write the port here once listening")
    ap.add_argument("--state-file", help="JSON persistence of all keys")
    ap.add_argument("--log", help="append a line per request (and SigV4 mismatch details) here")
    ap.add_argument("--aws-credentials", help="AWS shared-credentials INI; without it, no SigV4 check")
    ap.add_argument("--vault-token-file", help="accepted tokens, one per line; without it, no token check")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--max-skew", type=int, default=300, help="SigV4 clock skew limit, s (0 = off)")
    ap.add_argument("--vault-mount", default="transit")
    ap.add_argument("--vault-upsert", action="store_true", help="encrypt creates missing Vault keys")
    ap.add_argument("--aws-error-prefix", action="store_true",
                    help="namespaced __type values (com.amazonaws.kms#Name), as SDKs must tolerate")
    args = ap.parse_args(argv)

    server = Server((args.host, args.port), Handler)
    server.app = app = App(args)
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    print(port, flush=True)
    app.log("listening on %s:%d (pid %d)" % (args.host, port, os.getpid()))

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        with app.faults.cond:
            app.faults.stopping = True
            app.faults.cond.notify_all()
        server.server_close()
        app.store.save()
        app.log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
