// official_clients.mjs — proves the HTTP KMS test server speaks the real
// protocols: every operation byok's providers use (and the ones its tests
// use to play the customer) is driven through the official clients,
// @aws-sdk/client-kms (SigV4 signing, JSON 1.1 errors) and node-vault.
// Starts its own server; prints "N passed, N failed"; exits non-zero on failure.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { KMSClient, CreateKeyCommand, EncryptCommand, DecryptCommand, DescribeKeyCommand,
        DisableKeyCommand, EnableKeyCommand, ScheduleKeyDeletionCommand,
        CancelKeyDeletionCommand } = require('@aws-sdk/client-kms');
const nodeVault = require('node-vault');

const here = dirname(fileURLToPath(import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'byok-clients-'));
const akid = 'AKIDCLIENTTEST', secret = 'client-test-secret-' + Math.random().toString(36).slice(2);
const token = 'hvs.clienttest' + Math.random().toString(36).slice(2);
writeFileSync(join(dir, 'creds'), `[default]\naws_access_key_id = ${akid}\naws_secret_access_key = ${secret}\n`, { mode: 0o600 });
writeFileSync(join(dir, 'tokens'), token + '\n', { mode: 0o600 });
const server = spawn('/usr/bin/python3', ['-B', join(here, '..', 'http_kms_server.py'), '--port', '0',
  '--port-file', join(dir, 'port'), '--aws-credentials', join(dir, 'creds'),
  '--vault-token-file', join(dir, 'tokens'), '--log', join(dir, 'log')], { stdio: 'ignore' });

let passed = 0, failed = 0;
function check(name, ok, detail = '') {
  if (ok) passed++; else failed++;
  console.log(`${ok ? 'ok' : 'not ok'} - ${name}${ok ? '' : ' ' + detail}`);
}
async function expectError(name, promise, test) {
  try { await promise; check(name, false, 'no error'); }
  catch (e) { check(name, test(e), `${e.name} ${e.message} ${e.response?.statusCode ?? ''}`); }
}

try {
  for (let i = 0; i < 100 && !existsSync(join(dir, 'port')); i++) await new Promise(r => setTimeout(r, 50));
  const port = readFileSync(join(dir, 'port'), 'utf8').trim();
  const endpoint = `http://127.0.0.1:${port}`;

  // AWS KMS through the AWS SDK v3 (it signs with SigV4 itself)
  const kms = new KMSClient({ region: 'us-east-1', endpoint, credentials: { accessKeyId: akid, secretAccessKey: secret } });
  const ctx = { 'byok:tenant': 'acme', 'byok:tk_version': '1' };
  const created = await kms.send(new CreateKeyCommand({ Description: 'byok client test' }));
  const keyId = created.KeyMetadata.KeyId;
  check('CreateKey returns an enabled key', created.KeyMetadata.KeyState === 'Enabled');
  const plain = Buffer.from('0123456789abcdef0123456789abcdef');
  const enc = await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: plain, EncryptionContext: ctx }));
  check('Encrypt with an encryption context', enc.CiphertextBlob?.length > 32 && enc.KeyId.startsWith('arn:aws:kms:'));
  const dec = await kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, KeyId: keyId, EncryptionContext: ctx }));
  check('Decrypt returns the plaintext', Buffer.from(dec.Plaintext).equals(plain));
  await expectError('Decrypt with another tenant\'s context fails', kms.send(new DecryptCommand({
    CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { ...ctx, 'byok:tenant': 'globex' } })),
    e => e.name === 'InvalidCiphertextException');
  const desc = await kms.send(new DescribeKeyCommand({ KeyId: keyId }));
  check('DescribeKey says Enabled', desc.KeyMetadata.KeyState === 'Enabled');
  await kms.send(new DisableKeyCommand({ KeyId: keyId }));
  check('DisableKey, then DescribeKey says Disabled',
    (await kms.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata.KeyState === 'Disabled');
  await expectError('Decrypt under a disabled key is DisabledException', kms.send(new DecryptCommand({
    CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ctx })), e => e.name === 'DisabledException');
  await kms.send(new EnableKeyCommand({ KeyId: keyId }));
  check('EnableKey', (await kms.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata.KeyState === 'Enabled');
  await kms.send(new ScheduleKeyDeletionCommand({ KeyId: keyId, PendingWindowInDays: 7 }));
  check('ScheduleKeyDeletion -> PendingDeletion',
    (await kms.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata.KeyState === 'PendingDeletion');
  await expectError('Decrypt under a key pending deletion is KMSInvalidStateException', kms.send(new DecryptCommand({
    CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ctx })), e => e.name === 'KMSInvalidStateException');
  await kms.send(new CancelKeyDeletionCommand({ KeyId: keyId }));
  check('CancelKeyDeletion -> Disabled, as in AWS',
    (await kms.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata.KeyState === 'Disabled');
  await expectError('an unknown key is NotFoundException',
    kms.send(new DescribeKeyCommand({ KeyId: '00000000-0000-0000-0000-000000000000' })), e => e.name === 'NotFoundException');
  const bad = new KMSClient({ region: 'us-east-1', endpoint, credentials: { accessKeyId: akid, secretAccessKey: 'wrong' } });
  await expectError('a wrong secret is InvalidSignatureException', bad.send(new DescribeKeyCommand({ KeyId: keyId })),
    e => e.name === 'InvalidSignatureException');
  const stranger = new KMSClient({ region: 'us-east-1', endpoint, credentials: { accessKeyId: 'AKIDUNKNOWN', secretAccessKey: 'x' } });
  await expectError('an unknown access key is UnrecognizedClientException',
    stranger.send(new DescribeKeyCommand({ KeyId: keyId })), e => e.name === 'UnrecognizedClientException');

  // Vault Transit through node-vault
  const vault = nodeVault({ apiVersion: 'v1', endpoint, token });
  await vault.write('transit/keys/byok-client', {});
  const info = await vault.read('transit/keys/byok-client');
  check('keys/<name> read: latest 1, min_decryption_version 1',
    info.data.latest_version === 1 && info.data.min_decryption_version === 1);
  const ad = Buffer.from('byok:acme:1').toString('base64');
  const venc = await vault.write('transit/encrypt/byok-client', { plaintext: plain.toString('base64'), associated_data: ad });
  check('encrypt returns vault:v1:', /^vault:v1:/.test(venc.data.ciphertext));
  const vdec = await vault.write('transit/decrypt/byok-client', { ciphertext: venc.data.ciphertext, associated_data: ad });
  check('decrypt returns the plaintext', Buffer.from(vdec.data.plaintext, 'base64').equals(plain));
  await expectError('decrypt with other associated data fails', vault.write('transit/decrypt/byok-client', {
    ciphertext: venc.data.ciphertext, associated_data: Buffer.from('byok:globex:1').toString('base64') }),
    e => e.response?.statusCode === 400);
  await vault.write('transit/keys/byok-client/rotate', {});
  await vault.write('transit/keys/byok-client/config', { min_decryption_version: 2 });
  await expectError('min_decryption_version above v1 refuses v1 ciphertext',
    vault.write('transit/decrypt/byok-client', { ciphertext: venc.data.ciphertext, associated_data: ad }),
    e => e.response?.statusCode === 400 && /disallowed by policy/.test(e.message));
  await vault.write('transit/keys/byok-client/config', { min_decryption_version: 1, deletion_allowed: true });
  check('lowering it again lets v1 decrypt', Buffer.from((await vault.write('transit/decrypt/byok-client',
    { ciphertext: venc.data.ciphertext, associated_data: ad })).data.plaintext, 'base64').equals(plain));
  await vault.delete('transit/keys/byok-client');
  await expectError('a deleted key reads as 404', vault.read('transit/keys/byok-client'), e => e.response?.statusCode === 404);
  const intruder = nodeVault({ apiVersion: 'v1', endpoint, token: 'hvs.wrong' });
  await expectError('a wrong token is 403 permission denied', intruder.read('transit/keys/anything'),
    e => e.response?.statusCode === 403);
} catch (e) {
  check('unexpected error', false, e.stack);
} finally {
  server.kill('SIGTERM');
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
