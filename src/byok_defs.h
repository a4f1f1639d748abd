/*-------------------------------------------------------------------------
 *
 * byok_defs.h
 *		Definitions shared by every part of byok: SQLSTATEs, key sizes and
 *		the tenant states.  A header of definitions only (no .c owns it);
 *		the settings are in guc.h.
 *
 * The SQLSTATEs live in class "YK" (implementation-defined classes start
 * with I-Z).  Each failure a user must tell apart has its own code; README
 * lists them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_DEFS_H
#define BYOK_DEFS_H

#include "utils/elog.h"

/* sizes of the key hierarchy */
#define BYOK_KEY_LEN			32	/* TK and DEK: AES-256 */
#define BYOK_GCM_NONCE_LEN		12
#define BYOK_GCM_TAG_LEN		16
#define BYOK_MAX_WRAPPED		1024	/* largest wrapped TK a provider may return */
#define BYOK_MAX_TENANT_NAME	63	/* fits NAMEDATALEN with its terminator */
#define BYOK_MAX_SCOPE			255
#define BYOK_MAX_KEY_REF		255

/* SQLSTATEs, one per failure class (README "Error codes") */
#define ERRCODE_BYOK_UNKNOWN_TENANT			MAKE_SQLSTATE('Y','K','0','0','1')
#define ERRCODE_BYOK_TENANT_REVOKED			MAKE_SQLSTATE('Y','K','0','0','2')
#define ERRCODE_BYOK_CMK_DISABLED			MAKE_SQLSTATE('Y','K','0','0','3')
#define ERRCODE_BYOK_CMK_DESTROYED			MAKE_SQLSTATE('Y','K','0','0','4')
#define ERRCODE_BYOK_KMS_UNAVAILABLE		MAKE_SQLSTATE('Y','K','0','0','5')
#define ERRCODE_BYOK_KMS_THROTTLED			MAKE_SQLSTATE('Y','K','0','0','6')
#define ERRCODE_BYOK_KMS_PERMISSION			MAKE_SQLSTATE('Y','K','0','0','7')
#define ERRCODE_BYOK_KMS_BAD_RESPONSE		MAKE_SQLSTATE('Y','K','0','0','8')
#define ERRCODE_BYOK_PROVIDER_CONFIG		MAKE_SQLSTATE('Y','K','0','0','9')
#define ERRCODE_BYOK_MALFORMED_CIPHERTEXT	MAKE_SQLSTATE('Y','K','0','1','0')
#define ERRCODE_BYOK_AUTH_FAILED			MAKE_SQLSTATE('Y','K','0','1','1')
#define ERRCODE_BYOK_TENANT_MISMATCH		MAKE_SQLSTATE('Y','K','0','1','2')
#define ERRCODE_BYOK_NOT_LOADED				MAKE_SQLSTATE('Y','K','0','1','3')
#define ERRCODE_BYOK_UNDECLARED_SCOPE		MAKE_SQLSTATE('Y','K','0','1','4')
#define ERRCODE_BYOK_CLUSTER				MAKE_SQLSTATE('Y','K','0','1','5')

/*
 * A tenant's state as the shared-memory tenant slot records it.  Only
 * ACTIVE lets keys be used.
 */
typedef enum ByokTenantState
{
	BYOK_TENANT_ACTIVE = 0,		/* keys usable */
	BYOK_TENANT_REVOKED,		/* an administrator revoked it */
	BYOK_TENANT_CMK_DISABLED,	/* the provider says the CMK is disabled */
	BYOK_TENANT_CMK_DESTROYED,	/* the provider says the CMK is gone (final) */
	BYOK_TENANT_KMS_UNREACHABLE,	/* fail_closed: provider unreachable past the grace */
	BYOK_TENANT_STATE_COUNT
} ByokTenantState;

#endif							/* BYOK_DEFS_H */
