/*-------------------------------------------------------------------------
 *
 * crypto/envelope.c
 *		The byok ciphertext format and every AES-256-GCM operation.
 *
 * Everything that turns bytes into ciphertext or back lives here: sealing
 * and opening values in format v1 (algorithm byte 1 = AES-256-GCM, 2 =
 * ChaCha20-Poly1305, both with 96-bit nonces and 128-bit tags), wrapping keys under keys (a DEK under its
 * TK, a TK under a local CMK), key fingerprints, and the process's source
 * of random nonces.
 *
 * Nonces.  OpenSSL 3.0's RAND_bytes costs about 2 us per call, more than a
 * whole pgcrypto encrypt(), so nonces are drawn from a per-process buffer of
 * CSPRNG output refilled in large chunks.  The buffer is empty in the
 * postmaster (nothing is drawn before a fork) and is discarded whenever
 * MyProcPid differs from the pid that filled it, so no two processes can
 * ever share nonces.  Used bytes are wiped as they are handed out.
 *
 * Key lifetime.  Functions here never keep key bytes: callers pass them in,
 * and any local copy or expanded schedule made here is wiped (explicit_bzero,
 * EVP_CIPHER_CTX_free) before return.  Contexts returned by
 * byok_aead_context() carry an expanded key and belong to handles/handles.c, which
 * frees them at transaction end.
 *
 * Errors.  Malformed input raises ERRCODE_BYOK_MALFORMED_CIPHERTEXT, a
 * failed tag ERRCODE_BYOK_AUTH_FAILED; no message ever quotes input bytes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/memutils.h"

#include "crypto/envelope.h"

#define NONCE_POOL_SIZE		(BYOK_GCM_NONCE_LEN * 2048)	/* 24 KiB per refill */

static uint8 nonce_pool[NONCE_POOL_SIZE];
static int	nonce_pool_pos = NONCE_POOL_SIZE;
static int	nonce_pool_pid = 0;
static EVP_CIPHER *ciphers[BYOK_ALG_COUNT + 1];

/*
 * Fill 'out' with 'len' bytes from OpenSSL's CSPRNG; raise an error if it
 * fails (it never silently returns weak bytes).
 */
void
byok_random_bytes(uint8 *out, int len)
{
	if (RAND_bytes(out, len) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random bytes")));
}

/* Hand out one fresh nonce from the per-process pool. */
static inline void
env_next_nonce(uint8 *out)
{
	if (unlikely(nonce_pool_pos + BYOK_GCM_NONCE_LEN > NONCE_POOL_SIZE ||
				 nonce_pool_pid != MyProcPid))
	{
		byok_random_bytes(nonce_pool, NONCE_POOL_SIZE);
		nonce_pool_pos = 0;
		nonce_pool_pid = MyProcPid;
	}
	memcpy(out, nonce_pool + nonce_pool_pos, BYOK_GCM_NONCE_LEN);
	memset(nonce_pool + nonce_pool_pos, 0, BYOK_GCM_NONCE_LEN);
	nonce_pool_pos += BYOK_GCM_NONCE_LEN;
}

/* The OpenSSL cipher of a format algorithm byte, fetched once per process. */
static const EVP_CIPHER *
env_cipher(int algorithm)
{
	static const char *const names[BYOK_ALG_COUNT + 1] = {NULL, "AES-256-GCM", "ChaCha20-Poly1305"};

	Assert(algorithm >= 1 && algorithm <= BYOK_ALG_COUNT);
	if (ciphers[algorithm] == NULL)
	{
		ciphers[algorithm] = EVP_CIPHER_fetch(NULL, names[algorithm], NULL);
		if (ciphers[algorithm] == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("OpenSSL does not provide %s", names[algorithm])));
	}
	return ciphers[algorithm];
}

/*
 * A cipher context of 'algorithm' with 'key' expanded for encryption or
 * decryption.  The caller owns it and must EVP_CIPHER_CTX_free() it (which
 * wipes the key schedule).
 */
EVP_CIPHER_CTX *
byok_aead_context(int algorithm, const uint8 *key, bool encrypt)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	if (EVP_CipherInit_ex(ctx, env_cipher(algorithm), NULL, key, NULL, encrypt ? 1 : 0) != 1)
	{
		EVP_CIPHER_CTX_free(ctx);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not initialize %s", byok_algorithm_name(algorithm))));
	}
	return ctx;
}

const char *
byok_algorithm_name(int algorithm)
{
	switch (algorithm)
	{
		case BYOK_ALG_AES256GCM:
			return "aes-256-gcm";
		case BYOK_ALG_CHACHA20POLY1305:
			return "chacha20-poly1305";
		default:
			return NULL;
	}
}

/*
 * Parse a ciphertext's header without raising errors; false when it is not
 * a well-formed byok v1 value.
 */
bool
byok_envelope_try_parse(const uint8 *data, int len, ByokHeader *hdr)
{
	return len >= 0 && byok_format_parse(data, (size_t) len, hdr) == BYOK_FMT_OK;
}

/*
 * Parse a ciphertext's header; raise ERRCODE_BYOK_MALFORMED_CIPHERTEXT with
 * the reason when it is not a byok v1 value.
 */
void
byok_envelope_parse(const uint8 *data, int len, ByokHeader *hdr)
{
	const char *why;

	switch (byok_format_parse(data, (size_t) Max(len, 0), hdr))
	{
		case BYOK_FMT_OK:
			return;
		case BYOK_FMT_TOO_SHORT:
			ereport(ERROR,
					(errcode(ERRCODE_BYOK_MALFORMED_CIPHERTEXT),
					 errmsg("malformed byok ciphertext"),
					 errdetail("The value is %d bytes long; a byok ciphertext has at least %d.",
							   len, BYOK_OVERHEAD)));
			break;
		case BYOK_FMT_BAD_VERSION:
			why = "The format version is not one this server reads.";
			break;
		case BYOK_FMT_BAD_ALGORITHM:
			why = "The algorithm is not one this server knows.";
			break;
		case BYOK_FMT_BAD_DEK_ID:
			why = "The data key id is not positive.";
			break;
		default:
			why = "The value is too long to be a byok ciphertext.";
			break;
	}
	ereport(ERROR,
			(errcode(ERRCODE_BYOK_MALFORMED_CIPHERTEXT),
			 errmsg("malformed byok ciphertext"),
			 errdetail_internal("%s", why)));
}

/*
 * Seal 'plain' under the DEK expanded in 'ctx' (an encryption context) and
 * return a palloc'd bytea in format v1.
 */
bytea *
byok_envelope_seal(EVP_CIPHER_CTX *ctx, int algorithm, int64 dek_id, int32 tenant_id,
				   const char *plain, int plain_len,
				   const char *aad, int aad_len)
{
	Size		total = (Size) plain_len + BYOK_OVERHEAD;
	bytea	   *result;
	uint8		nonce[BYOK_GCM_NONCE_LEN];

	if (total > MaxAllocSize - VARHDRSZ || total > BYOK_FMT_MAX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("value too large to encrypt")));
	result = (bytea *) palloc(VARHDRSZ + total);
	SET_VARSIZE(result, VARHDRSZ + total);
	env_next_nonce(nonce);
	if (!byok_format_seal(ctx, algorithm, dek_id, nonce, tenant_id,
						  (const uint8 *) plain, plain_len,
						  (const uint8 *) aad, aad_len, (uint8 *) VARDATA(result)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("%s encryption failed", byok_algorithm_name(algorithm))));
	return result;
}

/*
 * Open a v1 ciphertext (already parsed, so at least BYOK_OVERHEAD long) with
 * the DEK expanded in 'ctx' (a decryption context).  Returns the plaintext
 * as a palloc'd varlena; raises ERRCODE_BYOK_AUTH_FAILED when the tag does
 * not verify (byok_format_open has wiped whatever was decrypted).
 */
bytea *
byok_envelope_open(EVP_CIPHER_CTX *ctx, const uint8 *data, int len,
				   int32 tenant_id, const char *aad, int aad_len)
{
	int			body_len = len - BYOK_OVERHEAD;
	bytea	   *result;

	result = (bytea *) palloc(VARHDRSZ + body_len);
	SET_VARSIZE(result, VARHDRSZ + body_len);
	if (!byok_format_open(ctx, data, len, tenant_id, (const uint8 *) aad, aad_len,
						  (uint8 *) VARDATA(result)))
	{
		pfree(result);
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_AUTH_FAILED),
				 errmsg("byok ciphertext failed authentication"),
				 errdetail("The value was altered, belongs to another row or tenant, or the additional authenticated data does not match.")));
	}
	return result;
}

/*
 * One-shot AES-256-GCM wrap of a key (or any short secret): writes
 * nonce || ciphertext || tag to 'out' (BYOK_WRAPPED_LEN(plain_len) bytes)
 * and returns that length.  The nonce comes straight from RAND_bytes: this
 * is not a hot path.
 */
int
byok_gcm_wrap(const uint8 *key, const uint8 *aad, int aad_len,
			  const uint8 *plain, int plain_len, uint8 *out)
{
	EVP_CIPHER_CTX *ctx;
	int			n;
	bool		ok;

	byok_random_bytes(out, BYOK_GCM_NONCE_LEN);
	ctx = byok_aead_context(BYOK_ALG_AES256GCM, key, true);
	ok = EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, out) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &n, aad, aad_len) == 1 &&
		EVP_EncryptUpdate(ctx, out + BYOK_GCM_NONCE_LEN, &n, plain, plain_len) == 1 &&
		EVP_EncryptFinal_ex(ctx, out + BYOK_GCM_NONCE_LEN + plain_len, &n) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, BYOK_GCM_TAG_LEN,
							out + BYOK_GCM_NONCE_LEN + plain_len) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("AES-256-GCM key wrapping failed")));
	return BYOK_WRAPPED_LEN(plain_len);
}

/*
 * Reverse byok_gcm_wrap.  Returns false (with 'out' wiped) when the input is
 * too short or fails authentication; the caller decides which error that is.
 */
bool
byok_gcm_unwrap(const uint8 *key, const uint8 *aad, int aad_len,
				const uint8 *in, int in_len, uint8 *out, int out_cap, int *out_len)
{
	EVP_CIPHER_CTX *ctx;
	int			body = in_len - BYOK_GCM_NONCE_LEN - BYOK_GCM_TAG_LEN;
	uint8		tag[BYOK_GCM_TAG_LEN];
	int			n;
	bool		ok;

	if (body <= 0 || body > out_cap)
		return false;
	memcpy(tag, in + in_len - BYOK_GCM_TAG_LEN, BYOK_GCM_TAG_LEN);
	ctx = byok_aead_context(BYOK_ALG_AES256GCM, key, false);
	ok = EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, in) == 1 &&
		EVP_DecryptUpdate(ctx, NULL, &n, aad, aad_len) == 1 &&
		EVP_DecryptUpdate(ctx, out, &n, in + BYOK_GCM_NONCE_LEN, body) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, BYOK_GCM_TAG_LEN, tag) == 1 &&
		EVP_DecryptFinal_ex(ctx, out + body, &n) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
	{
		explicit_bzero(out, body);
		return false;
	}
	*out_len = body;
	return true;
}

/*
 * A key's public fingerprint: the first 8 bytes of SHA-256 over a fixed
 * label and the key, in hex.  It identifies a key in the audit log without
 * revealing anything usable about it.
 */
void
byok_key_fingerprint(const uint8 *key, int len, char *out)
{
	static const char label[] = "byok key fingerprint v1";
	uint8		digest[SHA256_DIGEST_LENGTH];
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int dlen;

	if (md == NULL ||
		EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
		EVP_DigestUpdate(md, label, sizeof(label) - 1) != 1 ||
		EVP_DigestUpdate(md, key, len) != 1 ||
		EVP_DigestFinal_ex(md, digest, &dlen) != 1)
	{
		EVP_MD_CTX_free(md);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute a key fingerprint")));
	}
	EVP_MD_CTX_free(md);
	for (int i = 0; i < 8; i++)
		snprintf(out + 2 * i, 3, "%02x", digest[i]);
}
