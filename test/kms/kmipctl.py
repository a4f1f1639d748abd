#!/usr/bin/python3
"""kmipctl.py — a small KMIP admin client for byok's tests and demo.

Run it with /usr/bin/python3 (the Debian python3-pykmip package):

  kmipctl.py --host H --port P --cert C --key K --ca CA COMMAND ...

  create NAME [--pre-active]   AES-256 key, Name=NAME, usage Encrypt|Decrypt,
                               activated unless --pre-active; prints its uid
  create-many PREFIX N         N active keys named PREFIX1..PREFIXN on one
                               connection; prints their uids, one a line
  activate UID
  revoke UID [--compromise]    reason Cessation of Operation (-> DEACTIVATED)
                               or Key Compromise (-> COMPROMISED)
  destroy UID                  revokes an Active key first
  state UID                    ACTIVE, PRE_ACTIVE, DEACTIVATED, COMPROMISED...
                               or NOT_FOUND (exit 0) if there is no such object
  locate NAME                  the uids with that Name, one a line
  gcm-encrypt UID IV_HEX PT_HEX AAD_HEX        prints "CT_HEX TAG_HEX"
  gcm-decrypt UID IV_HEX TAG_HEX CT_HEX AAD_HEX  prints the plaintext as hex
  capture-corpus DIR           runs a fixed sequence (create, activate, state,
                               locate, encrypt, decrypt, a bad tag, a batch of
                               three GetAttributes with one missing object,
                               revoke, destroy, not found) and writes every
                               raw response the server sent to DIR/NN_op.bin:
                               the fuzzer's seed corpus (test/fuzz/corpus)

Every request is a raw KMIP 1.4 message built with kmip.core (one batch
item, no credential: the server knows the client by its certificate's CN)
on a TLS 1.2 connection with the client certificate, the server checked
against --ca (its certificate must name --host). PyKMIP's high-level client
is not used: it drops the GCM authentication tag and reads ~/.pykmip.
A KMIP failure exits 1 with "kmipctl: OPERATION failed: REASON: message"
on stderr; a connection or TLS failure exits 1 with "kmipctl: ...".
"""

import argparse
import socket
import ssl
import struct
import sys
import warnings

warnings.simplefilter('ignore')  # cryptography's deprecation noise

from kmip.core import attributes as attr  # noqa: E402
from kmip.core import enums  # noqa: E402
from kmip.core import objects  # noqa: E402
from kmip.core.factories.attributes import AttributeFactory  # noqa: E402
from kmip.core.messages import contents, messages, payloads  # noqa: E402
from kmip.core.utils import BytearrayStream  # noqa: E402

KMIP_VERSION = enums.KMIPVersion.KMIP_1_4


class KmipFailure(Exception):
    def __init__(self, operation, reason, message):
        self.reason = reason
        super().__init__('{0} failed: {1}: {2}'.format(operation, reason, message))


class Client:
    def __init__(self, host, port, cert, key, ca, timeout):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.capture = None  # folder that receives every raw response
        self.seq = 0

    def _exchange(self, request, name):
        self.sock.sendall(request)
        head = self._recv(8)  # tag (3), type (1), length (4)
        data = head + self._recv(struct.unpack('!I', head[4:])[0])
        if self.capture:
            self.seq += 1
            with open('{0}/{1:02d}_{2}.bin'.format(self.capture, self.seq, name), 'wb') as f:
                f.write(data)
        response = messages.ResponseMessage()
        response.read(BytearrayStream(data), KMIP_VERSION)
        return response

    # Several GetAttributes("State") in one message, Batch Error Continuation
    # Option Continue (as byok's poller sends them); the raw response items.
    def state_batch(self, uids):
        header = messages.RequestHeader(
            protocol_version=contents.ProtocolVersion(1, 4),
            batch_error_cont_option=contents.BatchErrorContinuationOption(
                enums.BatchErrorContinuationOption.CONTINUE),
            batch_count=contents.BatchCount(len(uids)))
        items = [messages.RequestBatchItem(
            operation=contents.Operation(enums.Operation.GET_ATTRIBUTES),
            unique_batch_item_id=contents.UniqueBatchItemID(struct.pack('!I', i)),
            request_payload=payloads.GetAttributesRequestPayload(
                unique_identifier=uid, attribute_names=['State']))
            for i, uid in enumerate(uids)]
        out = BytearrayStream()
        messages.RequestMessage(request_header=header, batch_items=items).write(out, KMIP_VERSION)
        return self._exchange(out.buffer, 'batch_get_attributes').batch_items

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv(self, n):
        buf = b''
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError('the server closed the connection')
            buf += chunk
        return buf

    # One request, one response payload; a failed result raises KmipFailure.
    def call(self, operation, payload):
        header = messages.RequestHeader(
            protocol_version=contents.ProtocolVersion(1, 4),
            batch_count=contents.BatchCount(1))
        item = messages.RequestBatchItem(
            operation=contents.Operation(operation), request_payload=payload)
        out = BytearrayStream()
        messages.RequestMessage(request_header=header, batch_items=[item]).write(out, KMIP_VERSION)
        response = self._exchange(out.buffer, operation.name.lower())
        item = response.batch_items[0]
        if item.result_status.value != enums.ResultStatus.SUCCESS:
            reason = item.result_reason.value.name if item.result_reason else 'UNKNOWN'
            text = item.result_message.value if item.result_message else ''
            raise KmipFailure(operation.name, reason, text)
        return item.response_payload

    def create(self, name, activate):
        f = AttributeFactory()
        template = objects.TemplateAttribute(attributes=[
            f.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM,
                               enums.CryptographicAlgorithm.AES),
            f.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256),
            f.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK,
                               [enums.CryptographicUsageMask.ENCRYPT,
                                enums.CryptographicUsageMask.DECRYPT]),
            f.create_attribute(enums.AttributeType.NAME, name)])
        p = self.call(enums.Operation.CREATE, payloads.CreateRequestPayload(
            object_type=enums.ObjectType.SYMMETRIC_KEY, template_attribute=template))
        uid = p.unique_identifier
        if activate:
            self.activate(uid)
        return uid

    def activate(self, uid):
        self.call(enums.Operation.ACTIVATE, payloads.ActivateRequestPayload(
            unique_identifier=attr.UniqueIdentifier(uid)))

    def revoke(self, uid, compromise):
        code = (enums.RevocationReasonCode.KEY_COMPROMISE if compromise
                else enums.RevocationReasonCode.CESSATION_OF_OPERATION)
        self.call(enums.Operation.REVOKE, payloads.RevokeRequestPayload(
            unique_identifier=attr.UniqueIdentifier(uid),
            revocation_reason=objects.RevocationReason(code=code)))

    def state(self, uid):
        p = self.call(enums.Operation.GET_ATTRIBUTES, payloads.GetAttributesRequestPayload(
            unique_identifier=uid, attribute_names=['State']))
        for a in p.attributes:
            if a.attribute_name.value == 'State':
                return a.attribute_value.value.name
        raise KmipFailure('GetAttributes', 'NO_STATE', 'no State attribute in the response')

    def _state_or_none(self, uid):
        try:
            return self.state(uid)
        except KmipFailure:
            return None

    def destroy(self, uid):
        # PyKMIP refuses to destroy an Active object (PERMISSION_DENIED
        # "Object is active and cannot be destroyed"): then deactivate it
        # and try again. Any other failure is Destroy's own.
        req = payloads.DestroyRequestPayload(unique_identifier=attr.UniqueIdentifier(uid))
        try:
            self.call(enums.Operation.DESTROY, req)
        except KmipFailure as e:
            if e.reason != 'PERMISSION_DENIED' or self._state_or_none(uid) != 'ACTIVE':
                raise
            self.revoke(uid, False)
            self.call(enums.Operation.DESTROY, req)

    def locate(self, name):
        f = AttributeFactory()
        p = self.call(enums.Operation.LOCATE, payloads.LocateRequestPayload(
            attributes=[f.create_attribute(enums.AttributeType.NAME, name)]))
        return list(p.unique_identifiers or [])

    @staticmethod
    def _gcm():
        return attr.CryptographicParameters(
            block_cipher_mode=enums.BlockCipherMode.GCM,
            cryptographic_algorithm=enums.CryptographicAlgorithm.AES,
            tag_length=16)

    def gcm_encrypt(self, uid, iv, pt, aad):
        p = self.call(enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(
            unique_identifier=uid, cryptographic_parameters=self._gcm(), data=pt,
            iv_counter_nonce=iv, auth_additional_data=aad))
        return p.data, p.auth_tag

    def gcm_decrypt(self, uid, iv, tag, ct, aad):
        p = self.call(enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
            unique_identifier=uid, cryptographic_parameters=self._gcm(), data=ct,
            iv_counter_nonce=iv, auth_additional_data=aad, auth_tag=tag))
        return p.data


def capture_corpus(cl, folder):
    cl.capture = folder
    uid = cl.create('corpus-key', True)
    cl.state(uid)
    cl.locate('corpus-key')
    iv = bytes(range(12))
    aad = b'byok-kmip\0corpus\0\0\0\0\1'
    ct, tag = cl.gcm_encrypt(uid, iv, bytes(32), aad)
    cl.gcm_decrypt(uid, iv, tag, ct, aad)
    try:
        cl.gcm_decrypt(uid, iv, bytes(16), ct, aad)
    except KmipFailure:
        pass
    cl.state_batch([uid, '999999', uid])
    cl.revoke(uid, False)
    cl.state(uid)
    try:
        cl.gcm_decrypt(uid, iv, tag, ct, aad)
    except KmipFailure:
        pass
    cl.destroy(uid)
    try:
        cl.state(uid)
    except KmipFailure:
        pass


def hexbytes(s):
    try:
        return bytes.fromhex(s)
    except ValueError:
        raise argparse.ArgumentTypeError('not hex: {0!r}'.format(s))


def main(argv):
    ap = argparse.ArgumentParser(prog='kmipctl.py', description='KMIP admin client for byok tests')
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--cert', required=True)
    ap.add_argument('--key', required=True)
    ap.add_argument('--ca', required=True)
    ap.add_argument('--timeout', type=float, default=10.0, help='socket timeout, seconds')
    sub = ap.add_subparsers(dest='cmd', required=True)
    c = sub.add_parser('create')
    c.add_argument('name')
    c.add_argument('--pre-active', action='store_true')
    c = sub.add_parser('create-many')
    c.add_argument('prefix')
    c.add_argument('n', type=int)
    for cmd in ('activate', 'destroy', 'state'):
        sub.add_parser(cmd).add_argument('uid')
    c = sub.add_parser('revoke')
    c.add_argument('uid')
    c.add_argument('--compromise', action='store_true')
    sub.add_parser('locate').add_argument('name')
    sub.add_parser('capture-corpus').add_argument('folder')
    c = sub.add_parser('gcm-encrypt')
    for a in ('uid', 'iv', 'pt', 'aad'):
        c.add_argument(a, type=str if a == 'uid' else hexbytes)
    c = sub.add_parser('gcm-decrypt')
    for a in ('uid', 'iv', 'tag', 'ct', 'aad'):
        c.add_argument(a, type=str if a == 'uid' else hexbytes)
    args = ap.parse_args(argv)

    try:
        cl = Client(args.host, args.port, args.cert, args.key, args.ca, args.timeout)
    except (OSError, ssl.SSLError) as e:
        print('kmipctl: cannot connect to {0}:{1}: {2}'.format(args.host, args.port, e), file=sys.stderr)
        return 1
    try:
        if args.cmd == 'create':
            print(cl.create(args.name, not args.pre_active))
        elif args.cmd == 'create-many':
            for i in range(1, args.n + 1):
                print(cl.create('{0}{1}'.format(args.prefix, i), True))
        elif args.cmd == 'activate':
            cl.activate(args.uid)
        elif args.cmd == 'revoke':
            cl.revoke(args.uid, args.compromise)
        elif args.cmd == 'destroy':
            cl.destroy(args.uid)
        elif args.cmd == 'state':
            try:
                print(cl.state(args.uid))
            except KmipFailure as e:
                if e.reason != 'ITEM_NOT_FOUND':
                    raise
                print('NOT_FOUND')
        elif args.cmd == 'locate':
            for uid in cl.locate(args.name):
                print(uid)
        elif args.cmd == 'capture-corpus':
            capture_corpus(cl, args.folder)
        elif args.cmd == 'gcm-encrypt':
            ct, tag = cl.gcm_encrypt(args.uid, args.iv, args.pt, args.aad or None)
            print(ct.hex(), (tag or b'').hex())
        elif args.cmd == 'gcm-decrypt':
            print(cl.gcm_decrypt(args.uid, args.iv, args.tag, args.ct, args.aad or None).hex())
    except KmipFailure as e:
        print('kmipctl: {0}'.format(e), file=sys.stderr)
        return 1
    except (OSError, ssl.SSLError, ConnectionError) as e:
        print('kmipctl: {0}: {1}'.format(args.cmd, e), file=sys.stderr)
        return 1
    finally:
        cl.close()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
