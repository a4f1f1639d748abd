/*-------------------------------------------------------------------------
 *
 * handles/handles.h
 *		Per-backend handles on the DEKs a transaction is using.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_HANDLES_H
#define BYOK_HANDLES_H

#include <openssl/evp.h>

#include "crypto/envelope.h"
#include "cache/cache.h"
#include "guc.h"

typedef struct ByokLocalKey
{
	int64		dek_id;			/* hash key */
	int32		tenant_id;		/* owner, part of every AAD */
	int			slot;			/* shared tenant slot */
	uint64		generation;		/* slot generation when fetched */
	uint32		bind_epoch;		/* byok.tenant epoch last checked against */
	uint8		key[BYOK_KEY_LEN];	/* the DEK, to make contexts from; wiped at drop */
	EVP_CIPHER_CTX *ctx[BYOK_ALG_COUNT + 1][2];	/* [algorithm][encrypting], made on first use */
	uint64		used;			/* values sealed under this DEK before this transaction */
	uint64		reserved;		/* added to the DEK's shared count by this handle */
	uint64		allowed;		/* encryptions this handle may make (reserved or, untracked, its own count) */
	bool		persist;		/* a reservation crossed a persistence step: save the count at commit */
	uint64		encrypts;		/* values sealed, added to the tenant's stats at drop */
	uint64		decrypts;		/* values opened, likewise */
} ByokLocalKey;

extern ByokLocalKey *byok_handle_last;

extern ByokLocalKey *byok_handle_dek_slow(int64 dek_id);
extern EVP_CIPHER_CTX *byok_handle_ctx_slow(ByokLocalKey *lk, int algorithm, bool encrypt);
extern ByokLocalKey *byok_handle_current(const char *tenant, int tenant_len,
										const char *scope, int scope_len);
extern void byok_handle_release(void);
extern void byok_handle_pre_commit(void);
extern void byok_handle_check_lockouts(void);
extern ByokLocalKey *byok_handle_reserve(ByokLocalKey *lk, const char *tenant, int tenant_len,
										const char *scope, int scope_len);
extern bool byok_handle_needs_reencrypt(const uint8 *data, int len);
extern bool byok_handle_dek_meta(int64 dek_id, const char **tenant, const char **scope, int32 *version);
extern bytea *byok_handle_reencrypt(const uint8 *data, int len, const char *aad, int aad_len);
extern void byok_handle_forget_current(void);

/*
 * The handle for DEK 'dek_id', valid for this call: same tenant generation
 * as when fetched (so not revoked, flushed or purged since) and checked
 * against byok.tenant.  The common case costs two compares and one atomic
 * read.
 */
static inline ByokLocalKey *
byok_handle_dek(int64 dek_id)
{
	ByokLocalKey *lk = byok_handle_last;

	if (likely(lk != NULL && lk->dek_id == dek_id &&
			   lk->bind_epoch == byok_tenant_guc_epoch &&
			   pg_atomic_read_u64(&byok_tenant_slot(lk->slot)->generation) == lk->generation))
		return lk;
	return byok_handle_dek_slow(dek_id);
}

/* The handle's context for 'algorithm' and direction, made on first use. */
static inline EVP_CIPHER_CTX *
byok_handle_ctx(ByokLocalKey *lk, int algorithm, bool encrypt)
{
	EVP_CIPHER_CTX *c = lk->ctx[algorithm][encrypt ? 1 : 0];

	if (likely(c != NULL))
		return c;
	return byok_handle_ctx_slow(lk, algorithm, encrypt);
}

#endif							/* BYOK_HANDLES_H */
