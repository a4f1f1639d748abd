/*-------------------------------------------------------------------------
 *
 * guc.h
 *		Every byok setting, as the rest of byok reads it (defined in guc.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_GUC_H
#define BYOK_GUC_H

extern int	byok_cache_size;
extern int	byok_max_tenants;
extern int	byok_cache_ttl;
extern char *byok_local_keyring;
extern char *byok_tenant;
extern uint32 byok_tenant_guc_epoch;
extern int	byok_poll_interval;
extern int	byok_cluster_pollers;
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

extern void byok_guc_define(void);
extern void byok_guc_define_postmaster(void);

/* the session binding byok.tenant */
extern bool byok_session_bound_to(const char *tenant);
extern void byok_session_check_bound(const char *tenant);

#endif							/* BYOK_GUC_H */
