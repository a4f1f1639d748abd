/*-------------------------------------------------------------------------
 *
 * providers/kms.h
 *		The one interface every key provider (KMS or HSM) implements.
 *
 * A provider holds customer master keys (CMKs) that never leave it.  byok
 * asks it to wrap a tenant key (TK) under a CMK, to unwrap it again, and to
 * report the CMK's state.  Providers never raise errors themselves: each
 * call returns a ByokKmsStatus and fills a ByokKmsError (class, the
 * provider's own code, sanitised text); byok_kms_throw() is the one place
 * that turns it into an ereport (pgcrypto's px_THROW_ERROR pattern).
 *
 * Secrets (key files, PINs, tokens) are reached through paths in GUCs and
 * never pass through this interface as values.
 *
 * Locking: none.  Providers are called with no LWLock held (a call can take
 * seconds) and keep only per-process state.
 *
 * Key lifetime: the plaintext TK given to wrap and the one unwrap writes
 * are the caller's buffers, which the caller wipes.  A provider copies a TK
 * only into buffers it wipes before it returns (or, for an abandoned
 * PKCS#11 call, when the module returns).  CMKs never pass through here.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KMS_H
#define BYOK_KMS_H

#include "byok_defs.h"
#include "providers/kms_status.h"

typedef struct ByokKmsError
{
	ByokKmsStatus status;		/* the class */
	char		provider[32];	/* provider name */
	char		remote_code[64];	/* provider's own code, e.g. "ENOENT" */
	char		message[256];	/* sanitised provider text, never secrets */
} ByokKmsError;

/*
 * What a wrap is bound to: providers that support it (AAD, encryption
 * context) bind the wrapped TK to its tenant and version, so a wrapped key
 * copied to another tenant fails to unwrap.
 */
typedef struct ByokKmsContext
{
	const char *tenant;			/* tenant name */
	int32		tk_version;		/* tenant key version */
} ByokKmsContext;

/* one question of a batch of key-state queries */
typedef struct ByokKmsStateQuery
{
	const char *key_ref;		/* in */
	int32		version_hint;	/* in */
	ByokKeyState state;			/* out */
	ByokKmsStatus status;		/* out */
	ByokKmsError err;			/* out */
	int64		us;				/* out: how long it took */
} ByokKmsStateQuery;

typedef struct ByokKmsRoutine
{
	const char *name;			/* provider name used in SQL */

	/* check a key reference's syntax and the provider's set-up; no I/O needed */
	ByokKmsStatus (*check_key_ref) (const char *key_ref, ByokKmsError *err);

	/* wrap 'plain' under CMK 'key_ref'; out has BYOK_MAX_WRAPPED bytes */
	ByokKmsStatus (*wrap) (const char *key_ref, const ByokKmsContext *ctx,
						   const uint8 *plain, int plain_len,
						   uint8 *out, int *out_len, ByokKmsError *err);

	/* unwrap; out has BYOK_MAX_WRAPPED bytes */
	ByokKmsStatus (*unwrap) (const char *key_ref, const ByokKmsContext *ctx,
							 const uint8 *wrapped, int wrapped_len,
							 uint8 *out, int *out_len, ByokKmsError *err);

	/*
	 * The CMK's state as the provider sees it now.  version_hint is the
	 * oldest provider-side key version byok's wrapped keys under this CMK
	 * need (see wrapped_version), or 0 when unknown.
	 */
	ByokKmsStatus (*key_state) (const char *key_ref, int32 version_hint,
								ByokKeyState *state, ByokKmsError *err);

	/* optional: many states at once (the poller); else key_state per query */
	void		(*key_state_many) (ByokKmsStateQuery *queries, int n);

	/* optional: the provider-side key version a wrapped key needs, 0 if none */
	int32		(*wrapped_version) (const uint8 *wrapped, int wrapped_len);
} ByokKmsRoutine;

/* registry (kms.c) */
extern void byok_kms_register(const ByokKmsRoutine *routine);
extern const ByokKmsRoutine *byok_kms_lookup(const char *name, bool missing_ok);

/* dispatch wrappers: the only callers of a routine's functions */
extern ByokKmsStatus byok_kms_check_key_ref(const ByokKmsRoutine *r, const char *key_ref,
											ByokKmsError *err);
extern ByokKmsStatus byok_kms_wrap(const ByokKmsRoutine *r, const char *key_ref,
								   const ByokKmsContext *ctx, const uint8 *plain, int plain_len,
								   uint8 *out, int *out_len, ByokKmsError *err);
extern ByokKmsStatus byok_kms_unwrap(const ByokKmsRoutine *r, const char *key_ref,
									 const ByokKmsContext *ctx, const uint8 *wrapped,
									 int wrapped_len, uint8 *out, int *out_len,
									 ByokKmsError *err);
extern ByokKmsStatus byok_kms_key_state(const ByokKmsRoutine *r, const char *key_ref,
										int32 version_hint, ByokKeyState *state,
										ByokKmsError *err);
extern void byok_kms_key_state_many(const ByokKmsRoutine *r, ByokKmsStateQuery *queries, int n);
extern int32 byok_kms_wrapped_version(const ByokKmsRoutine *r, const uint8 *wrapped, int len);
extern ByokKmsStatus byok_kms_validate(const ByokKmsRoutine *r, const char *key_ref,
									   const ByokKmsContext *ctx, const uint8 *key,
									   uint8 *wrapped, int *wrapped_len,
									   ByokKmsError *err);

extern void byok_kms_set_error(ByokKmsError *err, ByokKmsStatus status,
							   const char *remote_code, const char *fmt,...)
			pg_attribute_printf(4, 5);
extern void byok_kms_throw(const ByokKmsError *err, const char *tenant) pg_attribute_noreturn();
extern const char *byok_kms_status_name(ByokKmsStatus status);
extern bool byok_kms_interrupt_pending(void);
extern int	byok_kms_context_aad(const char *label, const ByokKmsContext *ctx, uint8 *out);

/* provider install functions */
extern void byok_kms_local_install(void);
extern void byok_kms_aws_install(void);
extern void byok_kms_vault_install(void);
extern void byok_kms_pkcs11_install(void);
extern void byok_kms_kmip_install(void);

#endif							/* BYOK_KMS_H */
