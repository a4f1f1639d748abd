#!/usr/bin/python3
"""keyscan.py — the key scanner of test/t/014_no_leaks.pl.

Computes, from the outside, the key bytes byok must never leave at rest, and
searches files for them (and for plaintext markers) in every encoding a leak
is likely to take.  Uses python3-cryptography's AESGCM; follows the formats
of src/providers/local.c, src/providers/kms.c (byok_kms_context_aad), src/crypto/keyrow.c and
src/crypto/format.c.

  keyscan.py derive KEYRING ROWS.json      -> JSON {label: hex} of every key
      KEYRING holds the local CMKs (NAME.key, 32 bytes); ROWS.json is
      {"tks": [{tenant_id, name, version, key_ref, wrapped, fingerprint}],
       "deks": [{dek_id, tenant_id, scope, version, tk_version, wrapped,
                 fingerprint}]} with wrapped keys in hex.  Every TK unwraps
      under its CMK and every DEK under its TK (GCM authenticates, so a
      wrong key or AAD is an error), and each key's fingerprint must match
      the catalog's; any failure exits 1.
  keyscan.py open DEK_HEX TENANT_ID CT_HEX [AAD_HEX]   -> plaintext hex
  keyscan.py seal DEK_HEX DEK_ID TENANT_ID PLAIN_HEX   -> ciphertext hex (AES-256-GCM, format v1)
  keyscan.py scan NEEDLES.json PATH...     -> JSON {label: [[path, form, where], ...]}
      NEEDLES.json is {label: hex of the bytes}; PATH is a file or a folder
      (searched recursively).  Forms: raw, hex, HEX, base64 and base64url at
      the three byte alignments.  A file "core" given with --core-shared
      MAPS also says, for each hit, whether it lies in the dumped image of a
      shared anonymous mapping listed in MAPS (/proc/PID/maps of the process).
  keyscan.py memscan PID NEEDLES.json      -> JSON {regions, bytes, found: {label: [[mapping,
      form, address], ...]}}: the private memory of a live process (never its
      shared memory) read through /proc/PID/mem
  keyscan.py selftest                      -> every form at every alignment is
      found inside noise, and a one-byte change of the key is not.
"""
import base64
import hashlib
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def be32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def fingerprint(key):
    return hashlib.sha256(b"byok key fingerprint v1" + key).digest()[:8].hex()


def local_unwrap(cmk, tenant, tk_version, wrapped):
    # providers/local.c: format byte 1, then nonce(12) || ciphertext || tag(16);
    # AAD = "byok-local-v1\0" || tenant name "\0" || be32(TK version)
    if wrapped[0] != 1:
        raise ValueError("not a local-provider wrapped key")
    aad = b"byok-local-v1\0" + tenant.encode() + b"\0" + be32(tk_version)
    return AESGCM(cmk).decrypt(wrapped[1:13], wrapped[13:], aad)


def dek_aad(tenant_id, scope, version):
    # keyrow.c: "byok-dek-v1\0" || be32(tenant id) || be32(version) || scope
    return b"byok-dek-v1\0" + be32(tenant_id) + be32(version) + scope.encode()


def dek_unwrap(tk, tenant_id, scope, version, wrapped):
    if len(wrapped) != 60:
        raise ValueError("wrapped DEK is not 60 bytes")
    return AESGCM(tk).decrypt(wrapped[:12], wrapped[12:], dek_aad(tenant_id, scope, version))


def derive(keyring, rows_path):
    rows = json.load(open(rows_path))
    out = {}
    cmks = {}
    for f in sorted(os.listdir(keyring)):
        if f.endswith(".key") or f.endswith(".key.disabled"):
            name = f.split(".key")[0]
            b = open(os.path.join(keyring, f), "rb").read()
            if len(b) != 32:
                raise SystemExit("key file %s is not 32 bytes" % f)
            cmks[name] = b
            out["cmk:" + name] = b.hex()
    tks = {}
    for r in rows["tks"]:
        tk = local_unwrap(cmks[r["key_ref"]], r["name"], r["version"], bytes.fromhex(r["wrapped"]))
        if len(tk) != 32 or fingerprint(tk) != r["fingerprint"]:
            raise SystemExit("TK %s v%d: wrong length or fingerprint" % (r["name"], r["version"]))
        tks[(r["tenant_id"], r["version"])] = tk
        out["tk:%s:v%d" % (r["name"], r["version"])] = tk.hex()
    for r in rows["deks"]:
        tk = tks[(r["tenant_id"], r["tk_version"])]
        dek = dek_unwrap(tk, r["tenant_id"], r["scope"], r["version"], bytes.fromhex(r["wrapped"]))
        if fingerprint(dek) != r["fingerprint"]:
            raise SystemExit("DEK %d: fingerprint mismatch" % r["dek_id"])
        out["dek:%d:%d:%s:v%d" % (r["dek_id"], r["tenant_id"], r["scope"], r["version"])] = dek.hex()
    print(json.dumps(out, sort_keys=True))


def value_open(dek, tenant_id, ct, aad=b""):
    # format.c: 0 version, 1 algorithm, 2..9 DEK id, 10..21 nonce, body, tag;
    # AAD = bytes 0..21 || be32(tenant id) || caller AAD
    if ct[0] != 1 or ct[1] != 1:
        raise ValueError("not format v1 / AES-256-GCM")
    return AESGCM(dek).decrypt(ct[10:22], ct[22:], ct[:22] + be32(tenant_id) + aad)


def value_seal(dek, dek_id, tenant_id, plain, aad=b""):
    header = bytes([1, 1]) + struct.pack(">q", dek_id) + os.urandom(12)
    return header + AESGCM(dek).encrypt(header[10:22], plain, header + be32(tenant_id) + aad)


def b64_forms(b):
    """The base64 text a value gives wherever it starts in a longer byte string."""
    forms = []
    for a in range(3):
        enc = base64.b64encode(b"\0" * a + b + b"\0\0")
        start = (a * 8 + 5) // 6              # first character made only of b's bits
        end = ((a + len(b)) * 8) // 6         # characters past this mix in what follows
        s = enc[start:end]
        forms.append(("base64@%d" % a, s))
        forms.append(("base64url@%d" % a, s.replace(b"+", b"-").replace(b"/", b"_")))
    return forms


def forms_of(b):
    f = [("raw", b), ("hex", b.hex().encode()), ("HEX", b.hex().upper().encode())]
    f += b64_forms(b)
    # drop duplicates (a base64 form with neither + nor /)
    seen, out = set(), []
    for name, s in f:
        if s not in seen:
            seen.add(s)
            out.append((name, s))
    return out


def shared_ranges(maps_path):
    """Address ranges of the shared anonymous mappings of a process (PostgreSQL's
    main shared memory shows as /dev/zero, its small System V segment as /SYSV...)."""
    r = []
    for line in open(maps_path):
        parts = line.split()
        if len(parts) >= 6 and parts[1][3] == "s" and \
                (parts[5].startswith("/dev/zero") or parts[5].startswith("/SYSV")):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            r.append((lo, hi))
    return r


def core_segments(data):
    """(file offset, file size, vaddr) of each PT_LOAD of an ELF64 core."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise SystemExit("not an ELF64 core")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = \
            struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            segs.append((p_offset, p_filesz, p_vaddr))
    return segs


def scan(needles_path, paths, core_maps=None):
    needles = {k: bytes.fromhex(v) for k, v in json.load(open(needles_path)).items()}
    pats = [(label, form, s) for label, b in needles.items() for form, s in forms_of(b)]
    found = {label: [] for label in needles}
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, _dirs, names in os.walk(p):
                for n in sorted(names):
                    files.append(os.path.join(root, n))
        else:
            files.append(p)
    nbytes = 0
    for f in files:
        if os.path.islink(f) or not os.path.isfile(f):
            continue
        try:
            data = open(f, "rb").read()
        except OSError:
            continue  # a file removed meanwhile (a live data directory)
        nbytes += len(data)
        segs = core_segments(data) if core_maps is not None else None
        shared = shared_ranges(core_maps) if core_maps is not None else None
        for label, form, s in pats:
            i = data.find(s)
            while i >= 0:
                where = i
                if segs is not None:
                    where = "offset %d (private)" % i
                    for off, size, va in segs:
                        if off <= i < off + size:
                            addr = va + (i - off)
                            if any(lo <= addr < hi for lo, hi in shared):
                                where = "offset %d (shared 0x%x)" % (i, addr)
                found[label].append([f, form, where])
                if len(found[label]) >= 20:
                    break
                i = data.find(s, i + 1)
    print(json.dumps({"files": len(files), "bytes": nbytes, "found": found}, sort_keys=True))


def memscan(pid, needles_path):
    """Search the private memory of a live process (heap, stack, anonymous and
    file-backed private mappings; never shared memory, where byok's key cache
    lives by design) for the needles, in every form."""
    needles = {k: bytes.fromhex(v) for k, v in json.load(open(needles_path)).items()}
    pats = [(label, form, s) for label, b in needles.items() for form, s in forms_of(b)]
    found = {label: [] for label in needles}
    nbytes, regions = 0, 0
    with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            perms, name = parts[1], (parts[5] if len(parts) >= 6 else "[anon]")
            if perms[0] != "r" or perms[3] != "p" or name in ("[vvar]", "[vsyscall]", "[vdso]"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, ValueError):
                continue
            regions += 1
            nbytes += len(data)
            for label, form, pat in pats:
                i = data.find(pat)
                while i >= 0 and len(found[label]) < 20:
                    # what surrounds the hit, printable only, for the diagnosis
                    around = data[max(0, i - 48):i + len(pat) + 48]
                    found[label].append([name, form, "0x%x" % (lo + i),
                                         "".join(chr(c) if 32 <= c < 127 else "." for c in around)])
                    i = data.find(pat, i + 1)
    print(json.dumps({"regions": regions, "bytes": nbytes, "found": found}, sort_keys=True))


def selftest():
    bad = 0
    for trial in range(50):
        key = os.urandom(32)
        pats = [p for _f, p in forms_of(key)]
        # every encoding, starting anywhere (each alignment) inside noise, is found
        encs = [key, key.hex().encode(), key.hex().upper().encode()]
        for pre in range(6):
            blob = os.urandom(pre) + key + os.urandom(trial % 4)
            encs.append(base64.b64encode(blob))
            encs.append(base64.urlsafe_b64encode(blob))
        for e in encs:
            hay = os.urandom(100) + e + os.urandom(100)
            if not any(p in hay for p in pats):
                print("missed an encoding", e[:20])
                bad += 1
        # a key differing in one bit is found in none of them
        other = bytearray(key)
        other[trial % 32] ^= 1 << (trial % 8)
        opats = [p for _f, p in forms_of(bytes(other))]
        for e in encs:
            if any(p in e for p in opats):
                print("a one-bit different key matched")
                bad += 1
    print("selftest %s" % ("ok" if bad == 0 else "FAILED %d" % bad))
    sys.exit(1 if bad else 0)


def main():
    a = sys.argv[1:]
    if not a:
        raise SystemExit(__doc__)
    if a[0] == "derive":
        derive(a[1], a[2])
    elif a[0] == "open":
        aad = bytes.fromhex(a[4]) if len(a) > 4 else b""
        print(value_open(bytes.fromhex(a[1]), int(a[2]), bytes.fromhex(a[3]), aad).hex())
    elif a[0] == "seal":
        print(value_seal(bytes.fromhex(a[1]), int(a[2]), int(a[3]), bytes.fromhex(a[4])).hex())
    elif a[0] == "scan":
        maps = None
        if a[1] == "--core-shared":
            maps = a[2]
            a = a[2:]
        scan(a[1], a[2:], maps)
    elif a[0] == "memscan":
        memscan(int(a[1]), a[2])
    elif a[0] == "selftest":
        selftest()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
