#!/usr/bin/python3
"""http_kms_server.py -- a test-only AWS KMS + HashiCorp Vault Transit server.

Standard library only (Debian's /usr/bin/python3, 3.11).  No real KMS or Vault
can be installed on the test machines, so this server follows the public API
documents closely enough that the official clients talk to it unchanged
(checked: libcurl 7.88 --aws-sigv4, @aws-sdk/client-kms v3, node-vault).

Emulates
  * AWS KMS JSON 1.1 (POST /, Content-Type application/x-amz-json-1.1,
    X-Amz-Target TrentService.<Op>): CreateKey DescribeKey Encrypt Decrypt
    GenerateDataKey EnableKey DisableKey ScheduleKeyDeletion CancelKeyDeletion
    CreateAlias; keys named by id, key ARN, alias/<name> or alias ARN; errors
    as HTTP 400 {"__type": Name, "message": ...} (500/503 when injected).
  * AWS Signature Version 4 (Authorization header) verified exactly against
    --aws-credentials (shared-credentials INI, re-read when it changes;
    aws_session_token enforced when present).
  * Vault Transit at /v1/<--vault-mount>: keys create/read/list/config/rotate/
    delete, encrypt, decrypt, rewrap, plus /v1/sys/health; X-Vault-Token or
    Authorization: Bearer (--vault-token-file); X-Vault-Namespace recorded;
    Vault's response envelope and error wording.
Follows: AWS KMS API Reference (actions, common errors, KeyMetadata); AWS
"Signature Version 4 signing process" and its test suite (vectors checked by
http_kms_selftest.py); Vault "Transit secrets engine (API)" and the error texts
of hashicorp/vault sdk/helper/keysutil.

Deliberately not done
  * Real AES-GCM (not in the stdlib).  Ciphertexts are a test-only
    construction: keystream = HMAC-SHA256(Ke, nonce || be32 counter) XOR
    plaintext, tag = HMAC-SHA256(Km, header || nonce || ct || aad), Ke/Km =
    HMAC(key, label).  AWS blob = 0x01 || key id (36 ASCII) || 16-byte nonce ||
    ct || 32-byte tag, aad = canonical JSON of the EncryptionContext (sorted
    keys; absent == {}).  Vault: "vault:vN:" + base64(nonce || ct || tag),
    header "vault:vN:", aad = associated_data.
  * TLS, IAM/key policies, grants, tags, non-symmetric/imported/multi-region
    keys, List*/ReEncrypt, presigned or streaming SigV4, chunked bodies.  A
    scheduled deletion never completes by itself (use the admin API);
    CancelKeyDeletion leaves the key Disabled, as real KMS does.
  * Vault batch_input, convergent encryption, export/backup/trim, token
    policies, namespace semantics.  As in real Vault, "context" matters only for
    keys created with derived=true; associated_data is AAD for any key; encrypt
    to a missing key is 400 "encryption key not found" unless --vault-upsert.

ADMIN API (no auth, JSON)
  GET /__admin/health; GET|POST|DELETE /__admin/faults (read, merge, clear all)
      fields: latency_ms, throttle (next N), retry_after (s), error_5xx (next N),
      status_5xx (500|503), hang, down, drop (next N), deny, garbage (next N
      answers are broken JSON), oversize (next N answers are 2 MiB), bend (next N
      answers bent as bend_kind says: nested, huge_type, ctl_type, bad_utf8,
      html_404, json_404, dup_state; see Handler._send_bent); optional scope
      "key" (id/ARN/alias/Vault name) and "api" ("aws"|"vault"); {"clear": true}
  POST /__admin/aws/aliases/<alias/name>/delete: the customer deletes an alias;
      .../restore {"key": id} points it at a key again
  POST /__admin/aws/decrypt: a Decrypt request's answer, without auth, faults or
      statistics (the customer's own view, for tests that must know a tenant key)
  GET /__admin/stats, POST /__admin/stats/reset: calls per op and per key
      (aws.keys[<id>][<Op>]), status, errors, faults, namespaces, access_keys,
      connections (TCP connections that carried KMS/Vault calls)
  POST /__admin/aws/keys/<ref>/state {"state": Enabled|Disabled|PendingDeletion|
      PendingImport|Unavailable|deleted};  POST /__admin/vault/keys/<name>/delete
  POST /__admin/create {"kind": "aws"|"vault", "count": N, "prefix": "k",
      "alias_prefix": "alias/k", "derived": bool} -> {"ids": [...], "arns": [...]}
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
import ssl
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
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ARN_RE = re.compile(r"^arn:aws:kms:([^:]+):(\d{12}):(key|alias)/(.+)$")
AWS_STATES = ("Enabled", "Disabled", "PendingDeletion", "PendingImport", "Unavailable")
VAULT_TYPES = ("aes256-gcm96", "aes128-gcm96", "chacha20-poly1305")
VAULT_NEED_CONTEXT = ("missing 'context' for key derivation; the key was created using a derived key, which "
                      "means additional, per-request information must be included in order to perform "
                      "operations with the key")
ERR_TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"
BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. Check your "
                 "AWS Secret Access Key and signing method. Consult the service documentation for details.")


# --------------------------------------------------------------------------- crypto
def _hmac(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor_stream(key, nonce, data):
    ke, n = _hmac(key, b"byok-test/enc"), len(data)
    stream = b"".join(_hmac(ke, nonce + i.to_bytes(4, "big")) for i in range((n + 31) // 32))
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")).to_bytes(n, "big")


def seal(key, header, plaintext, aad=b""):
    """-> nonce || ciphertext || tag; the tag also covers header and aad."""
    nonce = os.urandom(NONCE_LEN)
    ct = _xor_stream(key, nonce, plaintext)
    return nonce + ct + _hmac(_hmac(key, b"byok-test/mac"), header + nonce + ct + aad)


def unseal(key, header, payload, aad=b""):
    """Inverse of seal(); None when the payload is malformed or the tag is wrong."""
    if len(payload) < NONCE_LEN + TAG_LEN:
        return None
    body, tag = payload[:-TAG_LEN], payload[-TAG_LEN:]
    if not hmac.compare_digest(tag, _hmac(_hmac(key, b"byok-test/mac"), header + body + aad)):
        return None
    return _xor_stream(key, body[:NONCE_LEN], body[NONCE_LEN:])


def b64e(data):
    return base64.b64encode(data).decode("ascii")


def b64d(value):
    """Strict base64 -> bytes, or None."""
    try:
        return base64.b64decode(value or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- SigV4
def sigv4_signing_key(secret, date, region, service):
    k = _hmac(("AWS4" + secret).encode(), date.encode())
    for part in (region, service, "aws4_request"):
        k = _hmac(k, part.encode())
    return k


def sigv4_canonical_request(method, path, query, headers, signed, payload_hash):
    """headers: {lowercase name: [values]}; signed: header names as the client listed them."""
    pairs = sorted((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
                   for k, _, v in (p.partition("=") for p in query.split("&") if p))
    canon_headers = "".join("%s:%s\n" % (h, ",".join(" ".join(v.split()) for v in headers.get(h, [])))
                            for h in signed)
    return "\n".join([method, quote(unquote(path or "/"), safe="/-_.~"), "&".join("%s=%s" % p for p in pairs),
                      canon_headers, ";".join(signed), payload_hash])


def sigv4_signature(secret, amz_date, scope, canonical_request):
    """-> (hex signature, string to sign); scope = date/region/service/aws4_request."""
    date, region, service, _ = scope.split("/")
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    return hmac.new(sigv4_signing_key(secret, date, region, service), sts.encode(), hashlib.sha256).hexdigest(), sts


# --------------------------------------------------------------------------- errors, config files
class ApiError(Exception):
    def __init__(self, status, body, headers=None, name=None):
        super().__init__(name or str(body))
        self.status, self.body, self.headers, self.name = status, body, headers or {}, name


def aws_err(name, message, status=400, headers=None):
    return ApiError(status, {"__type": name, "message": message}, headers, name)


def vault_err(status, *messages, headers=None):
    return ApiError(status, {"errors": list(messages)}, headers, "vault%d" % status)


class WatchedFile:
    """A config file, re-read whenever its mtime or size changes (credential rotation tests)."""

    def __init__(self, path, parse):
        self.path, self.parse, self.sig, self.value, self.lock = path, parse, None, None, threading.Lock()

    def get(self):
        if not self.path:
            return None
        with self.lock:
            try:
                st = os.stat(self.path)
                if (st.st_mtime_ns, st.st_size) != self.sig:
                    with open(self.path, encoding="utf-8") as f:
                        self.value, self.sig = self.parse(f.read()), (st.st_mtime_ns, st.st_size)
            except OSError:
                self.value, self.sig = {}, None
            return self.value


def parse_aws_credentials(text):
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    return {s["aws_access_key_id"].strip(): (s["aws_secret_access_key"].strip(),
                                             (s.get("aws_session_token") or "").strip())
            for s in (cp[n] for n in cp.sections()) if s.get("aws_access_key_id") and s.get("aws_secret_access_key")}


def parse_tokens(text):
    return {ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")}


# --------------------------------------------------------------------------- state
class Store:
    """All keys; with a state file, saved (atomically) after every change."""

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

    def arn(self, kid):
        return "arn:aws:kms:%s:%s:key/%s" % (self.region, ACCOUNT, kid)

    def new_aws_key(self, description=""):
        kid = str(uuid.uuid4())
        self.aws[kid] = {"material": os.urandom(32).hex(), "state": "Enabled", "created": time.time(),
                         "description": description, "deletion_date": None}
        return kid

    def resolve(self, ref, allow_alias=True):
        """Key id, key ARN, alias/<name> or alias ARN -> key id; else NotFoundException."""
        if not isinstance(ref, str) or not ref:
            raise aws_err("ValidationException", "1 validation error detected: Value null at 'keyId' failed "
                          "to satisfy constraint: Member must not be null")
        kid, alias, m = ref, None, ARN_RE.match(ref)
        if m:
            region, acct, kind, rest = m.groups()
            ok = acct == ACCOUNT and region == self.region
            kid, alias = (rest if ok else None, None) if kind == "key" else (None, "alias/" + rest if ok else None)
        elif ref.startswith("alias/"):
            kid, alias = None, ref
        if alias and allow_alias:
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
        """Best-effort key id for statistics and fault scopes (never raises)."""
        try:
            with self.lock:
                return self.resolve(ref)
        except ApiError:
            return ref

    def usable(self, kid):
        """Key material of an Enabled key; else the error real KMS gives."""
        st = self.aws[kid]["state"]
        if st == "Disabled":
            raise aws_err("DisabledException", "%s is disabled." % self.arn(kid))
        if st != "Enabled":
            raise aws_err("KMSInvalidStateException", "%s is %s." % (
                self.arn(kid), "pending deletion" if st == "PendingDeletion" else st))
        return bytes.fromhex(self.aws[kid]["material"])

    def metadata(self, kid):
        k = self.aws[kid]
        md = {"AWSAccountId": ACCOUNT, "KeyId": kid, "Arn": self.arn(kid), "CreationDate": k["created"],
              "Enabled": k["state"] == "Enabled", "Description": k["description"], "KeyUsage": "ENCRYPT_DECRYPT",
              "KeyState": k["state"], "Origin": "AWS_KMS", "KeyManager": "CUSTOMER",
              "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT", "KeySpec": "SYMMETRIC_DEFAULT",
              "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"], "MultiRegion": False}
        if k["deletion_date"]:
            md["DeletionDate"] = k["deletion_date"]
        return md

    def set_aws_state(self, kid, state, days=30):
        if state == "deleted":
            del self.aws[kid]
            self.deleted.add(kid)
            self.aliases = {a: t for a, t in self.aliases.items() if t != kid}
        else:
            self.aws[kid]["state"] = state
            self.aws[kid]["deletion_date"] = time.time() + days * 86400 if state == "PendingDeletion" else None

    def new_vault_key(self, name, ktype="aes256-gcm96", derived=False, exportable=False):
        self.vault[name] = {"type": ktype, "derived": derived, "exportable": exportable,
                            "allow_plaintext_backup": False, "deletion_allowed": False, "auto_rotate_period": 0,
                            "min_decryption_version": 1, "min_encryption_version": 0, "latest_version": 1,
                            "versions": {"1": {"material": os.urandom(32).hex(), "created": int(time.time())}}}
        return self.vault[name]


# --------------------------------------------------------------------------- faults and statistics
FAULT_DEFAULTS = {"latency_ms": 0, "throttle": 0, "retry_after": None, "error_5xx": 0, "status_5xx": 500,
                  "hang": False, "down": False, "drop": 0, "deny": False, "garbage": 0, "oversize": 0,
                  "bend": 0, "bend_kind": "nested"}
# bent answers (fault "bend": N answers, "bend_kind"): a key service that bends its answers
BEND_KINDS = ("nested", "huge_type", "ctl_type", "bad_utf8", "html_404", "json_404", "dup_state")


class Faults:
    def __init__(self):
        self.cond, self.scopes, self.stopping = threading.Condition(), {}, False  # (api|*, key|*) -> settings

    def snapshot(self):
        with self.cond:
            return [dict(api=a, key=k, **v) for (a, k), v in self.scopes.items()]

    def set(self, body, canonical):
        unknown = set(body) - set(FAULT_DEFAULTS) - {"key", "api", "clear"}
        if unknown:
            raise ApiError(400, {"error": "unknown fault fields: %s" % sorted(unknown)})
        if "bend_kind" in body and body["bend_kind"] not in BEND_KINDS:
            raise ApiError(400, {"error": "bend_kind must be one of %s" % (BEND_KINDS,)})
        scope = (body.get("api") or "*", canonical(body["key"]) if body.get("key") else "*")
        with self.cond:
            if body.get("clear") and scope != ("*", "*"):
                self.scopes.pop(scope, None)
            elif body.get("clear"):
                self.scopes.clear()
            else:
                self.scopes.setdefault(scope, dict(FAULT_DEFAULTS)).update(
                    {k: v for k, v in body.items() if k in FAULT_DEFAULTS})
            self.cond.notify_all()
        return self.snapshot()

    def _matching(self, api, keys):
        return [e for (a, k), e in self.scopes.items() if a in ("*", api) and (k == "*" or k in keys)]

    def network(self, api, keys):
        """Connection-level faults, before auth: "down" to drop; hang blocks until cleared; latency."""
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
        """Service-level faults, after auth: ("throttle", retry_after) | ("5xx", status) | ("deny", None)."""
        with self.cond:
            es = self._matching(api, keys)
            for field, kind, arg in (("throttle", "throttle", "retry_after"), ("error_5xx", "5xx", "status_5xx"),
                                     ("garbage", "garbage", "garbage"), ("oversize", "oversize", "oversize"),
                                     ("bend", "bend", "bend_kind")):
                for e in es:
                    if e[field] > 0:
                        e[field] -= 1
                        return kind, e[arg]
            return ("deny", None) if any(e["deny"] for e in es) else None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.d = {"total": 0, "connections": 0, "aws": {"ops": {}, "keys": {}}, "vault": {"ops": {}, "keys": {}},
                      "status": {}, "errors": {}, "faults": {}, "namespaces": {}, "access_keys": {}}

    def call(self, api, op, key):
        with self.lock:
            self.d["total"] += 1
            self.d[api]["ops"][op] = self.d[api]["ops"].get(op, 0) + 1
            if key:
                per = self.d[api]["keys"].setdefault(key, {})
                per[op] = per.get(op, 0) + 1

    def note(self, section, name=None):
        with self.lock:
            if name is None:
                self.d[section] += 1
            else:
                self.d[section][str(name)] = self.d[section].get(str(name), 0) + 1

    def snapshot(self):
        with self.lock:
            return json.loads(json.dumps(self.d))


# --------------------------------------------------------------------------- AWS KMS operations
def _blob_field(req, name):
    if req.get(name) is None:
        raise aws_err("ValidationException", "1 validation error detected: Value null at '%s' failed to "
                      "satisfy constraint: Member must not be null" % name)
    data = b64d(req[name])
    if data is None:
        raise aws_err("SerializationException", "Could not deserialize '%s' (not base64)" % name)
    return data


def _context(ctx):
    ctx = {} if ctx is None else ctx
    if not isinstance(ctx, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()):
        raise aws_err("SerializationException", "EncryptionContext must be a map of strings")
    return json.dumps(ctx, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class AwsKms:
    """One method per TrentService operation: request dict -> response dict (None = empty body)."""

    def __init__(self, store):
        self.s = store

    def _key(self, ref, usable=True):
        with self.s.lock:
            kid = self.s.resolve(ref)
            return kid, self.s.usable(kid) if usable else None

    def _seal(self, kid, material, plaintext, ctx):
        header = b"\x01" + kid.encode("ascii")
        return b64e(header + seal(material, header, plaintext, _context(ctx)))

    def _algorithm(self, r):
        if r.get("EncryptionAlgorithm", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
            raise aws_err("InvalidKeyUsageException", "Only SYMMETRIC_DEFAULT is supported")

    def CreateKey(self, r):
        if any(r.get(f, "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT" for f in ("KeySpec", "CustomerMasterKeySpec")) \
                or r.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
            raise aws_err("UnsupportedOperationException", "only SYMMETRIC_DEFAULT ENCRYPT_DECRYPT keys here")
        with self.s.lock:
            md = self.s.metadata(self.s.new_aws_key(r.get("Description") or ""))
        self.s.save()
        return {"KeyMetadata": md}

    def DescribeKey(self, r):
        with self.s.lock:
            return {"KeyMetadata": self.s.metadata(self.s.resolve(r.get("KeyId")))}

    def Encrypt(self, r):
        pt = _blob_field(r, "Plaintext")
        if not 1 <= len(pt) <= 4096:
            raise aws_err("ValidationException", "1 validation error detected: Value at 'plaintext' failed to "
                          "satisfy constraint: Member must have length between 1 and 4096")
        self._algorithm(r)
        kid, material = self._key(r.get("KeyId"))
        return {"CiphertextBlob": self._seal(kid, material, pt, r.get("EncryptionContext")),
                "KeyId": self.s.arn(kid), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def Decrypt(self, r):
        self._algorithm(r)
        blob, aad = _blob_field(r, "CiphertextBlob"), _context(r.get("EncryptionContext"))
        if len(blob) < 1 + KID_LEN + NONCE_LEN + TAG_LEN or blob[0] != 1:
            raise aws_err("InvalidCiphertextException", "")
        kid = blob[1:1 + KID_LEN].decode("latin-1")
        with self.s.lock:
            if r.get("KeyId") is not None and self.s.resolve(r["KeyId"]) != kid:
                raise aws_err("IncorrectKeyException", "The key ID in the request does not identify a KMS key "
                              "that can perform this operation.")
            if kid in self.s.deleted:
                raise aws_err("NotFoundException", "Key '%s' does not exist" % self.s.arn(kid))
            if kid not in self.s.aws:
                raise aws_err("InvalidCiphertextException", "")
            material = self.s.usable(kid)
        pt = unseal(material, blob[:1 + KID_LEN], blob[1 + KID_LEN:], aad)
        if pt is None:
            raise aws_err("InvalidCiphertextException", "")
        return {"KeyId": self.s.arn(kid), "Plaintext": b64e(pt), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def GenerateDataKey(self, r):
        n, spec = r.get("NumberOfBytes"), r.get("KeySpec")
        if (n is None) == (spec is None):
            raise aws_err("ValidationException", "Please specify either number of bytes or key spec.")
        n = {"AES_256": 32, "AES_128": 16}.get(spec) if spec is not None else n
        if type(n) is not int or not 1 <= n <= 1024:
            raise aws_err("ValidationException", "NumberOfBytes must be 1..1024, KeySpec AES_256 or AES_128")
        kid, material = self._key(r.get("KeyId"))
        pt = os.urandom(n)
        return {"CiphertextBlob": self._seal(kid, material, pt, r.get("EncryptionContext")),
                "Plaintext": b64e(pt), "KeyId": self.s.arn(kid)}

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
        if type(days) is not int or not 7 <= days <= 30:
            raise aws_err("ValidationException", "PendingWindowInDays must be between 7 and 30")
        kid = self._change_state(r, ("Enabled", "Disabled", "PendingImport", "Unavailable"), "PendingDeletion", days)
        with self.s.lock:
            return {"KeyId": self.s.arn(kid), "DeletionDate": self.s.aws[kid]["deletion_date"],
                    "KeyState": "PendingDeletion", "PendingWindowInDays": days}

    def CancelKeyDeletion(self, r):
        return {"KeyId": self.s.arn(self._change_state(r, ("PendingDeletion",), "Disabled"))}

    def CreateAlias(self, r):
        name = r.get("AliasName")
        if not isinstance(name, str) or not re.match(r"^alias/[a-zA-Z0-9/_-]{1,250}$", name) \
                or name.startswith("alias/aws/"):
            raise aws_err("ValidationException", "Alias must start with the prefix \"alias/\", not \"alias/aws/\"")
        with self.s.lock:
            kid = self.s.resolve(r.get("TargetKeyId"), allow_alias=False)
            if name in self.s.aliases:
                raise aws_err("AlreadyExistsException", "An alias with the name arn:aws:kms:%s:%s:%s already "
                              "exists" % (self.s.region, ACCOUNT, name))
            self.s.aliases[name] = kid
        self.s.save()


AWS_OPS = {n for n in dir(AwsKms) if n[0].isupper()}


def aws_key_hint(op, req):
    """The key a request is about, before validation (for statistics and fault scopes)."""
    blob = b64d(req.get("CiphertextBlob")) if op == "Decrypt" else None
    if blob and len(blob) > KID_LEN and blob[0] == 1:
        return blob[1:1 + KID_LEN].decode("latin-1")
    return next((req[f] for f in ("KeyId", "TargetKeyId") if isinstance(req.get(f), str)), None)


# --------------------------------------------------------------------------- Vault Transit operations
def _vbool(v, name):
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("1", "0", "true", "false", "t", "f"):
        return str(v).lower() in ("1", "true", "t")
    raise vault_err(400, "error converting input %r for field \"%s\"" % (v, name))


def _vint(v, name):
    if isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and re.fullmatch(r"-?\d+", v):
        return int(v)
    raise vault_err(400, "error converting input %r for field \"%s\"" % (v, name))


def _vb64(req, name):
    data = b64d(req.get(name))
    if data is None:
        raise vault_err(400, "failed to base64-decode %s" % name)
    return data


class VaultTransit:
    """One method per operation: (name, request) -> (status, data); called with the store locked."""

    def __init__(self, store, upsert=False):
        self.s, self.upsert = store, upsert

    def info(self, name):
        k = self.s.vault[name]
        out = {f: k[f] for f in ("type", "derived", "exportable", "allow_plaintext_backup", "deletion_allowed",
                                 "latest_version", "min_decryption_version", "min_encryption_version",
                                 "auto_rotate_period")}
        out.update(name=name, min_available_version=0, supports_encryption=True, supports_decryption=True,
                   supports_derivation=True, supports_signing=False, imported_key=False,
                   keys={v: e["created"] for v, e in k["versions"].items()
                         if int(v) >= k["min_decryption_version"]})
        if k["derived"]:
            out["kdf"] = "hkdf_sha256"
        return out

    def _get(self, name, missing):
        if name not in self.s.vault:
            raise vault_err(400, missing)
        return self.s.vault[name]

    def op_list(self, name, r):
        return (200, {"keys": sorted(self.s.vault)}) if self.s.vault else (404, None)

    def op_read(self, name, r):
        if name not in self.s.vault:
            return 404, None
        return 200, self.info(name)

    def op_create(self, name, r):
        if name not in self.s.vault:  # an existing key is left as it is (Vault answers success)
            ktype = r.get("type") or "aes256-gcm96"
            if ktype not in VAULT_TYPES:
                raise vault_err(400, "unknown key type %s" % ktype)
            if _vbool(r.get("convergent_encryption", False), "convergent_encryption"):
                raise vault_err(400, "convergent encryption is not supported by this test server")
            self.s.new_vault_key(name, ktype, _vbool(r.get("derived", False), "derived"),
                                 _vbool(r.get("exportable", False), "exportable"))
        return 200, self.info(name)

    def op_delete(self, name, r):
        k = self._get(name, "error deleting policy %s: could not delete policy; not found" % name)
        if not k["deletion_allowed"]:
            raise vault_err(400, "error deleting policy %s: deletion is not allowed for this policy" % name)
        del self.s.vault[name]
        return 204, None

    def op_config(self, name, r):
        k = self._get(name, "no existing key named %s could be found" % name)
        latest = k["latest_version"]
        mind = max(_vint(r.get("min_decryption_version", k["min_decryption_version"]), "min_decryption_version"), 1)
        mine = _vint(r.get("min_encryption_version", k["min_encryption_version"]), "min_encryption_version")
        if mind > latest or not 0 <= mine <= latest:
            raise vault_err(400, "cannot set min decryption/encryption version beyond the latest key version %d"
                            % latest)
        if mine and mine < mind:
            raise vault_err(400, "cannot set min encryption/decryption values; min encryption version must be "
                            "greater than or equal to min decryption version")
        k["min_decryption_version"], k["min_encryption_version"] = mind, mine
        for f in ("deletion_allowed", "exportable", "allow_plaintext_backup"):
            if f in r:
                k[f] = _vbool(r[f], f)
        if "auto_rotate_period" in r:
            k["auto_rotate_period"] = _vint(r["auto_rotate_period"], "auto_rotate_period")
        return 200, self.info(name)

    def op_rotate(self, name, r):
        k = self._get(name, "key not found")
        k["latest_version"] += 1
        k["versions"][str(k["latest_version"])] = {"material": os.urandom(32).hex(), "created": int(time.time())}
        return 200, self.info(name)

    def _material(self, k, ver, r):
        material = bytes.fromhex(k["versions"][str(ver)]["material"])
        if not k["derived"]:
            return material  # real Vault ignores "context" for keys that are not derived
        ctx = _vb64(r, "context")
        if not ctx:
            raise vault_err(400, VAULT_NEED_CONTEXT)
        return _hmac(material, b"byok-test/derive" + ctx)

    def _encrypt(self, k, pt, r):
        ver = _vint(r.get("key_version") or 0, "key_version") or k["latest_version"]
        if ver > k["latest_version"]:
            raise vault_err(400, "requested version for encryption is higher than the latest key version")
        if ver < max(k["min_encryption_version"], 1):
            raise vault_err(400, "requested version for encryption is less than the minimum encryption key version")
        header = "vault:v%d:" % ver
        payload = seal(self._material(k, ver, r), header.encode(), pt, _vb64(r, "associated_data"))
        return {"ciphertext": header + b64e(payload), "key_version": ver}

    def _decrypt(self, k, r):
        ct = r.get("ciphertext")
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
        payload = b64d(parts[1])
        if payload is None:
            raise vault_err(400, "invalid ciphertext: could not decode base64")
        pt = unseal(self._material(k, ver, r), ("vault:v%d:" % ver).encode(), payload, _vb64(r, "associated_data"))
        if pt is None:
            raise vault_err(400, "cipher: message authentication failed")
        return pt

    def _data_key(self, name, r, op):
        if name not in self.s.vault and op == "encrypt" and self.upsert:
            self.s.new_vault_key(name, r.get("type") or "aes256-gcm96", _vbool(r.get("derived", False), "derived"))
        return self._get(name, "encryption key not found")

    def op_encrypt(self, name, r):
        k = self._data_key(name, r, "encrypt")
        if "plaintext" not in r:
            raise vault_err(400, "missing plaintext to encrypt")
        pt = b64d(r["plaintext"])
        if pt is None:
            raise vault_err(400, "failed to base64-decode plaintext")
        return 200, self._encrypt(k, pt, r)

    def op_decrypt(self, name, r):
        return 200, {"plaintext": b64e(self._decrypt(self._data_key(name, r, "decrypt"), r))}

    def op_rewrap(self, name, r):
        k = self._data_key(name, r, "rewrap")
        return 200, self._encrypt(k, self._decrypt(k, r), r)


VAULT_WRITES = ("create", "delete", "config", "rotate")


def vault_route(method, path, query, mount):
    """-> (op, key name) of a /v1/ request; op None when Vault would have no handler."""
    prefix = "/v1/%s/" % mount
    if not path.startswith(prefix):
        return None, None
    seg, write = [unquote(p) for p in path[len(prefix):].split("/")], method in ("POST", "PUT")
    if seg[0] == "keys" and (len(seg) == 1 or seg[1:] == [""]):
        return ("list" if method == "LIST" or (method == "GET" and "list=true" in query) else None), None
    if seg[0] == "keys" and len(seg) == 2 and seg[1]:
        return {"GET": "read", "POST": "create", "PUT": "create", "DELETE": "delete"}.get(method), seg[1]
    if seg[0] == "keys" and len(seg) == 3 and seg[2] in ("config", "rotate") and write:
        return seg[2], seg[1]
    if seg[0] in ("encrypt", "decrypt", "rewrap") and len(seg) == 2 and seg[1] and write:
        return seg[0], seg[1]
    return None, None


# --------------------------------------------------------------------------- the application
class App:
    def __init__(self, args):
        self.args, self.store = args, Store(args.state_file, args.region)
        self.kms, self.vault = AwsKms(self.store), VaultTransit(self.store, args.vault_upsert)
        self.faults, self.stats = Faults(), Stats()
        self.creds = WatchedFile(args.aws_credentials, parse_aws_credentials)
        self.tokens = WatchedFile(args.vault_token_file, parse_tokens)
        self.log_lock = threading.Lock()
        self.log_file = open(args.log, "a", buffering=1, encoding="utf-8") if args.log else None

    def log(self, line):
        if self.log_file:
            with self.log_lock:
                self.log_file.write("%s %s\n" % (datetime.now().strftime("%H:%M:%S.%f")[:-3], line))

    def verify_sigv4(self, method, path, query, headers, body):
        """Returns the access key id, or raises the error a real AWS endpoint would give."""
        first = lambda n: (headers.get(n) or [None])[0]  # noqa: E731
        incomplete = lambda msg: aws_err("IncompleteSignatureException", msg)  # noqa: E731
        invalid = lambda msg: aws_err("InvalidSignatureException", msg)  # noqa: E731
        auth = (first("authorization") or "").strip()
        if not auth:
            raise aws_err("MissingAuthenticationTokenException", "Missing Authentication Token")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            raise incomplete("Unsupported Authorization Type")
        fields = dict(p.strip().split("=", 1) for p in auth[17:].split(",") if "=" in p)
        for f in ("Credential", "SignedHeaders", "Signature"):
            if f not in fields:
                raise incomplete("Authorization header requires '%s' parameter. Authorization=%s" % (f, auth))
        cred = fields["Credential"].split("/")
        if len(cred) != 5:
            raise incomplete("Credential must have exactly 5 slash-delimited elements, e.g. "
                             "keyid/date/region/service/term, got '%s'" % fields["Credential"])
        akid, date, region, service, term = cred
        creds = self.creds.get()
        if akid not in creds:
            raise aws_err("UnrecognizedClientException", "The security token included in the request is invalid.")
        secret, token = creds[akid]
        amz_date = first("x-amz-date") or ""
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' "
                             "header (ISO8601 basic format). Authorization=%s" % auth)
        signed = fields["SignedHeaders"].split(";")
        for bad, msg in ((date != amz_date[:8], "Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                          "version of date from HTTP: '%s' != '%s', from '%s'." % (date, amz_date[:8], amz_date)),
                         (service != "kms", "Credential should be scoped to correct service: 'kms'. "),
                         (term != "aws4_request", "Credential should be scoped with a valid terminator: "
                          "'aws4_request', not '%s'. " % term),
                         (region != self.args.region, "Credential should be scoped to a valid region. "),
                         ("host" not in signed, "'Host' or ':authority' must be a 'SignedHeader' in the AWS "
                          "Authorization.")):
            if bad:
                raise invalid(msg)
        skew = (when - datetime.now(timezone.utc)).total_seconds()
        if self.args.max_skew and abs(skew) > self.args.max_skew:
            raise invalid("Signature %s: %s is %.0f s away from the server time (limit %d s)" % (
                "expired" if skew < 0 else "not yet current", amz_date, abs(skew), self.args.max_skew))
        if token and first("x-amz-security-token") != token:
            raise aws_err("UnrecognizedClientException", "The security token included in the request is invalid.")
        payload_hash, declared = hashlib.sha256(body).hexdigest(), first("x-amz-content-sha256")
        if declared:
            if declared not in (payload_hash, "UNSIGNED-PAYLOAD"):
                raise invalid("The provided 'x-amz-content-sha256' header does not match what was computed.")
            payload_hash = declared
        creq = sigv4_canonical_request(method, path, query, headers, signed, payload_hash)
        sig, sts = sigv4_signature(secret, amz_date, "/".join(cred[1:]), creq)
        if not hmac.compare_digest(sig, fields["Signature"].strip()):
            self.log("SigV4 mismatch for %s; canonical request:\n%s\n-- string to sign:\n%s" % (akid, creq, sts))
            raise invalid(BAD_SIGNATURE)
        return akid

    def admin(self, method, path, body):
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError:
            raise ApiError(400, {"error": "body is not JSON"})
        s, post = self.store, method == "POST"
        if path == "/__admin/health":
            return 200, {"ok": True, "aws_keys": len(s.aws), "vault_keys": len(s.vault)}
        if path == "/__admin/faults":
            if method == "DELETE":
                req = {"clear": True}
            return 200, {"faults": self.faults.set(req, s.canonical) if method != "GET" else self.faults.snapshot()}
        if path == "/__admin/stats" and method == "GET":
            return 200, self.stats.snapshot()
        if path == "/__admin/stats/reset" and post:
            self.stats.reset()
            return 200, {"ok": True}
        m = re.match(r"^/__admin/aws/aliases/(alias/.+)/delete$", path)
        if m and post:
            # the customer deletes an alias (the key it named lives on)
            with s.lock:
                found = s.aliases.pop(m.group(1), None) is not None
                s.save()
            return (200, {"ok": True}) if found else (404, {"error": "no such alias"})
        m = re.match(r"^/__admin/aws/aliases/(alias/.+)/restore$", path)
        if m and post:
            with s.lock:
                if req.get("key") not in s.aws:
                    return 404, {"error": "no such key"}
                s.aliases[m.group(1)] = req["key"]
                s.save()
            return 200, {"ok": True}
        if path == "/__admin/aws/decrypt" and post:
            # the customer's own view of a wrapped key (a test's oracle for memory scans): the
            # Decrypt answer without auth, faults or statistics
            return 200, self.kms.Decrypt(req)
        m = re.match(r"^/__admin/aws/keys/(.+)/state$", path)
        if m and post:
            if req.get("state") not in AWS_STATES + ("deleted",):
                raise ApiError(400, {"error": "state must be one of %s" % (AWS_STATES + ("deleted",),)})
            with s.lock:
                try:
                    kid = s.resolve(unquote(m.group(1)))
                except ApiError as e:
                    raise ApiError(404, e.body)
                s.set_aws_state(kid, req["state"], req.get("days", 30))
                md = s.metadata(kid) if kid in s.aws else {"KeyId": kid, "KeyState": "deleted"}
            s.save()
            return 200, {"KeyMetadata": md}
        m = re.match(r"^/__admin/vault/keys/(.+)/delete$", path)
        if m and post:
            with s.lock:
                if s.vault.pop(unquote(m.group(1)), None) is None:
                    raise ApiError(404, {"error": "no such vault key"})
            s.save()
            return 200, {"ok": True}
        if path == "/__admin/create" and post:
            return self.admin_create(req)
        raise ApiError(404, {"error": "no admin endpoint %s %s" % (method, path)})

    def admin_create(self, req):
        s, kind, prefix, alias_prefix = self.store, req.get("kind"), req.get("prefix", "k"), req.get("alias_prefix")
        if kind not in ("aws", "vault"):
            raise ApiError(400, {"error": "kind must be aws or vault"})
        ids, arns = [], []
        with s.lock:
            for i in range(int(req.get("count", 1))):
                if kind == "vault":
                    if "%s%d" % (prefix, i) in s.vault:
                        raise ApiError(409, {"error": "vault key %s%d already exists" % (prefix, i)})
                    s.new_vault_key("%s%d" % (prefix, i), req.get("type", "aes256-gcm96"), bool(req.get("derived")))
                    ids.append("%s%d" % (prefix, i))
                    continue
                if alias_prefix and (not alias_prefix.startswith("alias/") or "%s%d" % (alias_prefix, i) in s.aliases):
                    raise ApiError(409, {"error": "bad or existing alias %s%d" % (alias_prefix, i)})
                ids.append(s.new_aws_key(req.get("description", "")))
                arns.append(s.arn(ids[-1]))
                if alias_prefix:
                    s.aliases["%s%d" % (alias_prefix, i)] = ids[-1]
        s.save()
        return 200, {"ids": ids, "arns": arns}


# --------------------------------------------------------------------------- HTTP
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive; every response carries Content-Length
    disable_nagle_algorithm = True    # else every call stalls ~40 ms (Nagle + delayed ACK)

    def version_string(self):
        return "byok-test-kms/1.0"

    def setup(self):
        super().setup()
        self.counted = False

    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, fmt, *args):
        self.server.app.log("%s %s" % (self.address_string(), fmt % args))

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_LIST = do_GET

    def _send(self, status, obj, ctype="application/json", headers=None):
        data = b"" if obj is None else json.dumps(obj).encode()
        self.status = status
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

    def _send_bad(self, kind, ctype):
        """Injected malformed answers: 200 with broken JSON, or 200 with a 2 MiB body."""
        self.server.app.stats.note("faults", kind)
        if kind == "garbage":
            data = b'{"CiphertextBlob": "!!not base64", "Plaintext": [1, {"data": '
        else:
            data = b'{"padding": "' + b"A" * (2 * 1024 * 1024) + b'"}'
        self._send_raw(200, ctype, data)

    def _send_bent(self, kind, api):
        """Injected bent answers, each what a broken or hostile key service or proxy might send:
        nested    200, 200,000 '[' (a recursive parser runs out of stack)
        huge_type an error whose type is 100,000 bytes long
        ctl_type  an error whose type and message hold escaped control characters and U+00FF
        bad_utf8  an error whose type holds a raw newline and a 0xFF byte (not UTF-8: not JSON)
        html_404  a proxy's HTML 404 page
        json_404  the provider's own JSON "not found" (Vault's envelope; AWS's NotFoundException)
        dup_state 200 whose key state is given twice, Disabled then Enabled"""
        self.server.app.stats.note("faults", "bend:" + kind)
        ctype, status = (AWS_JSON if api == "aws" else "application/json"), 400
        if kind == "nested":
            status, data = 200, b"[" * 200000
        elif kind == "huge_type":
            data = b'{"__type":"' + b"T" * 100000 + b'","message":"m","errors":["' + b"E" * 100000 + b'"]}'
        elif kind == "ctl_type":
            data = b'{"__type":"Bad\\nType\\u00ff\\u0007","message":"line1\\r\\nline2\\u001b[31m",' \
                   b'"errors":["line1\\nline2\\u0007\\u00ff"]}'
        elif kind == "bad_utf8":
            data = b'{"__type":"Bad\nType\xff","message":"x\xff","errors":["x\nline\xff"]}'
        elif kind == "html_404":
            status, ctype, data = 404, "text/html", b"<html><head><title>404 Not Found</title></head>" \
                b"<body><center><h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>"
        elif kind == "json_404":
            if api == "aws":
                data = b'{"__type":"NotFoundException","message":"Key does not exist"}'
            else:
                status, data = 404, b'{"errors":[]}'
        else:  # dup_state
            status = 200
            data = (b'{"KeyMetadata":{"KeyState":"Disabled","KeyState":"Enabled"}}' if api == "aws" else
                    b'{"data":{"min_decryption_version":99,"min_decryption_version":1}}')
        self._send_raw(status, ctype, data)

    def _send_raw(self, status, ctype, data):
        """An answer of these exact bytes (injected faults: not necessarily JSON)."""
        self.status = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drop(self):
        self.close_connection, self.status = True, "dropped"
        self.server.app.stats.note("faults", "down")

    def _dispatch(self):
        app, t0, url = self.server.app, time.monotonic(), urlsplit(self.path)
        self.status, self.api, self.op, self.key, self.err = None, "-", "-", "-", None
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return self._send(411, {"error": "chunked request bodies are not supported; send Content-Length"})
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ctype = AWS_JSON if not url.path.startswith(("/__admin/", "/v1/")) else "application/json"
        try:
            if url.path.startswith("/__admin/"):
                self.api = "admin"
                self._send(*app.admin(self.command, url.path, body))
            elif url.path.startswith("/v1/"):
                self._vault(app, url, body)
            else:
                self._aws(app, url, body)
        except ApiError as e:
            self.err, headers = e.name, dict(e.headers)
            if ctype == AWS_JSON:
                headers.update({"x-amzn-RequestId": str(uuid.uuid4()), "x-amzn-ErrorType": e.name})
            self._send(e.status, e.body, ctype, headers)
        except Exception:
            traceback.print_exc()
            self.err = "internal"
            self._send(500, {"errors": ["internal error in test server"]})
        if self.api != "admin":
            if not self.counted:  # connections that carried KMS/Vault calls
                self.counted = True
                app.stats.note("connections")
            app.stats.note("status", self.status)
            if self.err:
                app.stats.note("errors", self.err)
        app.log("%s %s %s op=%s key=%s -> %s%s %.1fms" % (self.command, url.path, self.api, self.op, self.key,
                self.status, " " + self.err if self.err else "", (time.monotonic() - t0) * 1000))

    def _aws(self, app, url, body):
        self.api, target = "aws", self.headers.get("X-Amz-Target", "")
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
            hdrs = {}
            for k, v in self.headers.items():
                hdrs.setdefault(k.lower(), []).append(v)
            app.stats.note("access_keys", app.verify_sigv4(self.command, url.path, url.query, hdrs, body))
        fault = app.faults.service("aws", {hint, key})
        if fault and fault[0] == "bend":
            return self._send_bent(fault[1], "aws")
        if fault and fault[0] in ("garbage", "oversize"):
            return self._send_bad(fault[0], AWS_JSON)
        if fault:
            app.stats.note("faults", fault[0])
            if fault[0] == "throttle":
                raise aws_err("ThrottlingException", "Rate exceeded",
                              headers={"Retry-After": fault[1]} if fault[1] is not None else None)
            if fault[0] == "5xx":
                raise aws_err("KMSInternalException" if fault[1] == 500 else "ServiceUnavailableException",
                              "injected fault", status=int(fault[1]))
            raise aws_err("AccessDeniedException", "User: arn:aws:iam::%s:user/test is not authorized to perform: "
                          "kms:%s on resource: %s because no resource-based policy allows the kms:%s action"
                          % (ACCOUNT, op, app.store.arn(key) if key in app.store.aws else key, op))
        if self.command != "POST" or url.path != "/" or op not in AWS_OPS:
            raise aws_err("UnknownOperationException", "")
        if not self.headers.get("Content-Type", "").startswith("application/x-amz-json-1."):
            raise aws_err("UnknownOperationException", "Content-Type must be %s" % AWS_JSON)
        if not isinstance(req, dict):
            raise aws_err("SerializationException", "Start of structure or map found where not expected.")
        self._send(200, getattr(app.kms, op)(req), AWS_JSON, {"x-amzn-RequestId": str(uuid.uuid4())})

    def _vault(self, app, url, body):
        self.api = "vault"
        if url.path == "/v1/sys/health":
            return self._send(200, {"initialized": True, "sealed": False, "standby": False,
                                    "version": "1.15.0-byok-test", "server_time_utc": int(time.time())})
        op, name = vault_route(self.command, url.path, url.query, app.args.vault_mount)
        self.op, self.key = op or "unknown", name or "-"
        app.stats.call("vault", self.op, name)
        if self.headers.get("X-Vault-Namespace"):
            app.stats.note("namespaces", self.headers["X-Vault-Namespace"])
        if app.faults.network("vault", {name}) == "down":
            return self._drop()
        tokens, token = app.tokens.get(), self.headers.get("X-Vault-Token") or ""
        if not token and self.headers.get("Authorization", "").startswith("Bearer "):
            token = self.headers["Authorization"][7:].strip()
        if tokens is not None and token not in tokens:
            raise vault_err(403, "permission denied")
        fault = app.faults.service("vault", {name})
        if fault and fault[0] == "bend":
            return self._send_bent(fault[1], "vault")
        if fault and fault[0] in ("garbage", "oversize"):
            return self._send_bad(fault[0], "application/json")
        if fault:
            app.stats.note("faults", fault[0])
            if fault[0] == "throttle":
                raise vault_err(429, "request path %r: rate limit quota exceeded" % url.path[4:],
                                headers={"Retry-After": fault[1] or 1})
            if fault[0] == "5xx":
                raise vault_err(int(fault[1]), "Vault is sealed" if fault[1] == 503 else "internal error")
            raise vault_err(403, "permission denied")
        if op is None:
            raise vault_err(404, "no handler for route \"%s\". route entry not found." % url.path[4:])
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError:
            req = None
        if not isinstance(req, dict):
            raise vault_err(400, "failed to parse JSON input: invalid JSON object")
        with app.store.lock:
            status, data = getattr(app.vault, "op_" + op)(name, req)
        if op in VAULT_WRITES:
            app.store.save()
        if status == 200:
            data = {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
                    "data": data, "wrap_info": None, "warnings": None, "auth": None, "mount_type": "transit"}
        self._send(status, {"errors": []} if status == 404 else data)


class Server(ThreadingHTTPServer):
    daemon_threads, allow_reuse_address, request_queue_size = True, True, 256


def main(argv=None):
    ap = argparse.ArgumentParser(description="Test-only AWS KMS + Vault Transit server (see the module docstring).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port; the port is printed on stdout")
    ap.add_argument("--port-file", help="write the port here once listening")
    ap.add_argument("--state-file", help="JSON persistence of all keys across restarts")
    ap.add_argument("--log", help="append one line per request, and SigV4 mismatch details, here")
    ap.add_argument("--aws-credentials", help="AWS shared-credentials INI file; without it, no SigV4 check")
    ap.add_argument("--vault-token-file", help="accepted Vault tokens, one per line; without it, no token check")
    ap.add_argument("--region", default="us-east-1", help="the region of ARNs and of the SigV4 scope")
    ap.add_argument("--max-skew", type=int, default=300, help="SigV4 clock-skew limit in seconds (0 = off)")
    ap.add_argument("--vault-mount", default="transit")
    ap.add_argument("--vault-upsert", action="store_true", help="encrypt creates a missing Vault key")
    ap.add_argument("--tls-cert", help="also serve the same APIs over HTTPS with this PEM certificate")
    ap.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    ap.add_argument("--tls-port-file", help="write the HTTPS port here once listening")
    args = ap.parse_args(argv)

    server = Server((args.host, args.port), Handler)
    server.app = app = App(args)
    port = server.server_address[1]
    if args.tls_cert:
        # a second listener on a free port, TLS only, sharing the keys; the
        # plain one stays for /__admin (and for tests of the refusal of http://)
        tls_server = Server((args.host, 0), Handler)
        tls_server.app = app
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        tls_server.socket = ctx.wrap_socket(tls_server.socket, server_side=True)
        threading.Thread(target=tls_server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        if args.tls_port_file:
            with open(args.tls_port_file + ".tmp", "w") as f:
                f.write("%d\n" % tls_server.server_address[1])
            os.replace(args.tls_port_file + ".tmp", args.tls_port_file)
        app.log("HTTPS on %s:%d" % (args.host, tls_server.server_address[1]))
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        os.replace(args.port_file + ".tmp", args.port_file)
    print(port, flush=True)
    app.log("listening on %s:%d (pid %d)" % (args.host, port, os.getpid()))
    stop = lambda signum, frame: threading.Thread(target=server.shutdown, daemon=True).start()  # noqa: E731
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
