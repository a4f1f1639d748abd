/*-------------------------------------------------------------------------
 *
 * byok.h
 *		Declarations shared by every part of byok: GUC variables, SQLSTATEs,
 *		key sizes and the tenant states.
 *
 * The SQLSTATEs live in class "YK" (implementation-defined classes start
 * with I-Z).  Each failure a user must tell apart has its own code; README
 * lists them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_BYOK_H
#define BYOK_BYOK_H

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

/* GUC variables (byok.c) */
extern int	byok_cache_size;
extern int	byok_max_tenants;
extern int	byok_cache_ttl;
extern char *byok_local_keyring;
extern char *byok_tenant;
extern uint32 byok_tenant_guc_epoch;
extern int	byok_poll_interval;
extern int	byok_kms_timeout;
extern int	byok_unreachable_policy;
extern int	byok_unreachable_grace;
extern int	byok_algorithm;
extern int	byok_dek_max_encryptions;
extern bool byok_kms_allow_insecure;
extern char *byok_kms_ca_file;
extern int	byok_kms_max_connections;
extern char *byok_aws_region;
extern char *byok_aws_endpoint;
extern char *byok_aws_credentials_file;
extern char *byok_aws_profile;
extern char *byok_vault_address;
extern char *byok_vault_token_file;
extern char *byok_vault_namespace;
extern char *byok_vault_mount;
extern char *byok_destruction_ledger;
extern char *byok_pkcs11_module;
extern char *byok_pkcs11_token_label;
extern char *byok_pkcs11_pin_file;
extern char *byok_kmip_host;
extern int	byok_kmip_port;
extern int	byok_kmip_batch_size;
extern char *byok_kmip_cert_file;
extern char *byok_kmip_key_file;
extern char *byok_kmip_ca_file;

typedef enum ByokUnreachablePolicy
{
	BYOK_SERVE_CACHED = 0,		/* cached keys serve until their TTL */
	BYOK_FAIL_CLOSED			/* lock the tenant out after the grace */
} ByokUnreachablePolicy;

extern const char *byok_tenant_state_name(ByokTenantState state);
extern void byok_check_loaded(void);

#endif							/* BYOK_BYOK_H */
