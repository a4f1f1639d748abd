/*-------------------------------------------------------------------------
 *
 * providers/kms_status.h
 *		The failure classes and key states every provider reports.
 *
 * Standard C only, so the standalone answer readers (providers/answers.c)
 * and their fuzzers share them with the extension.  providers/kms.h maps
 * each class to one SQLSTATE.
 *
 * Locking: none.  Key lifetime: no key material here.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_PROVIDERS_KMS_STATUS_H
#define BYOK_PROVIDERS_KMS_STATUS_H

/* normalised failure classes; each maps to one SQLSTATE */
typedef enum ByokKmsStatus
{
	BYOK_KMS_OK = 0,
	BYOK_KMS_DISABLED,			/* CMK exists but is disabled / revoked */
	BYOK_KMS_DESTROYED,			/* CMK not found or destroyed */
	BYOK_KMS_PERMISSION,		/* credentials refused */
	BYOK_KMS_THROTTLED,			/* provider asks us to slow down */
	BYOK_KMS_UNAVAILABLE,		/* unreachable, timed out, or not the provider's answer */
	BYOK_KMS_BAD_RESPONSE,		/* answer we cannot use (incl. failed unwrap) */
	BYOK_KMS_CONFIG,			/* bad key reference or provider set-up */
	BYOK_KMS_STATUS_COUNT
} ByokKmsStatus;

typedef enum ByokKeyState
{
	BYOK_KEY_ENABLED = 0,
	BYOK_KEY_DISABLED,
	BYOK_KEY_DESTROYED,
	BYOK_KEY_STATE_COUNT
} ByokKeyState;

#endif							/* BYOK_PROVIDERS_KMS_STATUS_H */
