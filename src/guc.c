/*-------------------------------------------------------------------------
 *
 * guc.c
 *		Every byok setting (GUC) in one place: the variables everything reads
 *		and their definitions.
 *
 * Defined in two steps from _PG_init: byok_guc_define() for every setting
 * (also when byok is loaded without preloading, so SET byok.tenant works
 * and the error says what is missing), byok_guc_define_postmaster() for the
 * shared-memory sizes, which only a preloaded library may define.  The
 * session binding byok.tenant bumps byok_tenant_guc_epoch on every change,
 * so each key handle re-checks its tenant against it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"

#include "byok_defs.h"
#include "crypto/format.h"
#include "guc.h"

/* GUC variables */
int			byok_cache_size = 10000;
int			byok_max_tenants = 10000;
int			byok_cache_ttl = 300;
char	   *byok_local_keyring = NULL;
char	   *byok_tenant = NULL;
uint32		byok_tenant_guc_epoch = 1;
int			byok_poll_interval = 1000;
int			byok_cluster_pollers = 0;
int			byok_kms_timeout = 5000;
int			byok_unreachable_policy = BYOK_SERVE_CACHED;
int			byok_unreachable_grace = 60;
int			byok_algorithm = BYOK_ALG_AES256GCM;
int			byok_dek_max_encryptions = 1 << 30;
bool		byok_kms_allow_insecure = false;
char	   *byok_kms_ca_file = NULL;
int			byok_kms_max_connections = 64;
char	   *byok_aws_region = NULL;
char	   *byok_aws_endpoint = NULL;
char	   *byok_aws_credentials_file = NULL;
char	   *byok_aws_profile = NULL;
char	   *byok_vault_address = NULL;
char	   *byok_vault_token_file = NULL;
char	   *byok_vault_namespace = NULL;
char	   *byok_vault_mount = NULL;
char	   *byok_destruction_ledger = NULL;
char	   *byok_pkcs11_module = NULL;
char	   *byok_pkcs11_token_label = NULL;
char	   *byok_pkcs11_pin_file = NULL;
char	   *byok_kmip_host = NULL;
int			byok_kmip_port = 5696;
int			byok_kmip_batch_size = 32;
char	   *byok_kmip_cert_file = NULL;
char	   *byok_kmip_key_file = NULL;
char	   *byok_kmip_ca_file = NULL;

static const struct config_enum_entry algorithm_options[] = {
	{"aes-256-gcm", BYOK_ALG_AES256GCM, false},
	{"chacha20-poly1305", BYOK_ALG_CHACHA20POLY1305, false},
	{NULL, 0, false}
};

static const struct config_enum_entry unreachable_policy_options[] = {
	{"serve_cached", BYOK_SERVE_CACHED, false},
	{"fail_closed", BYOK_FAIL_CLOSED, false},
	{NULL, 0, false}
};

static bool
byok_tenant_check(char **newval, void **extra, GucSource source)
{
	if (*newval && strlen(*newval) > BYOK_MAX_TENANT_NAME)
	{
		GUC_check_errdetail("A tenant name is at most %d bytes long.", BYOK_MAX_TENANT_NAME);
		return false;
	}
	return true;
}

static void
byok_tenant_assign(const char *newval, void *extra)
{
	/* every handle re-checks its tenant against the new binding */
	byok_tenant_guc_epoch++;
	if (byok_tenant_guc_epoch == 0)
		byok_tenant_guc_epoch = 1;
}

/*
 * Settings that reach a URL, an HTTP header or a host name: no control
 * characters (a newline would start another header), no bytes over 0x7e.
 */
static bool
byok_check_printable(char **newval, void **extra, GucSource source)
{
	for (const unsigned char *p = (const unsigned char *) (*newval ? *newval : ""); *p; p++)
		if (*p < 0x20 || *p > 0x7e)
		{
			GUC_check_errdetail("Only printable ASCII characters are allowed (found byte 0x%02x).", *p);
			return false;
		}
	return true;
}

/* Every setting but the shared-memory sizes. */
void
byok_guc_define(void)
{
	DefineCustomStringVariable("byok.tenant",
							   "Binds this session to one tenant.",
							   "When set, encrypting or decrypting for any other tenant fails.",
							   &byok_tenant, "",
							   PGC_USERSET, 0,
							   byok_tenant_check, byok_tenant_assign, NULL);

	DefineCustomEnumVariable("byok.algorithm",
							 "AEAD algorithm of new encryptions.",
							 "Values sealed under any algorithm stay readable; byok_reencrypt migrates them.",
							 &byok_algorithm, BYOK_ALG_AES256GCM, algorithm_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("byok.dek_max_encryptions",
							"Values one data key may seal before the next encryption rotates it.",
							"Random 96-bit nonces are safe for about 2^32 encryptions per key; the default, 2^30, stays well below.",
							&byok_dek_max_encryptions, 1 << 30, 1, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("byok.cache_ttl",
							"How long an unwrapped key stays in the shared key cache.",
							"After this time the key is wiped and the next use unwraps it again. 0 turns the shared cache off.",
							&byok_cache_ttl, 300, 0, 86400 * 7,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomStringVariable("byok.local_keyring",
							   "Folder holding the customer master keys of the local provider.",
							   "Empty means byok_keyring inside the data directory.",
							   &byok_local_keyring, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);

	DefineCustomIntVariable("byok.kms_timeout",
							"Longest time one key provider call may take.",
							"Bounds every provider call, including a session waiting for another session's call to the same key.",
							&byok_kms_timeout, 5000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable("byok.poll_interval",
							"How often the byok poller asks each provider for the state of the keys in use.",
							"A customer's disabled or destroyed key locks its tenant out within about this interval.",
							&byok_poll_interval, 1000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	DefineCustomIntVariable("byok.cluster_pollers",
							"How many nodes of a Citus cluster ask a provider about each customer master key.",
							"0: every node asks about every key it uses.  N: N primary nodes, chosen per key, ask "
							"and report the answer to the others through byok.cmk_reports; a node whose reports "
							"stop asks again itself.  Set the same on every node.",
							&byok_cluster_pollers, 0, 0, 1000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomEnumVariable("byok.unreachable_policy",
							 "What happens to a tenant whose key provider cannot be reached.",
							 "serve_cached: cached keys keep working until they expire, new unwraps fail. "
							 "fail_closed: the tenant is locked out once the provider has been unreachable for byok.unreachable_grace.",
							 &byok_unreachable_policy, BYOK_SERVE_CACHED, unreachable_policy_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("byok.unreachable_grace",
							"How long a provider may be unreachable before fail_closed locks its tenants out.",
							NULL, &byok_unreachable_grace, 60, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomBoolVariable("byok.kms_allow_insecure",
							 "Allows plain http:// key provider endpoints.",
							 "For tests against a local server only: credentials and wrapped keys then cross the network unencrypted.",
							 &byok_kms_allow_insecure, false,
							 PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.kms_ca_file",
							   "CA bundle that verifies key provider TLS certificates.",
							   "Empty means the system's default bundle.",
							   &byok_kms_ca_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomIntVariable("byok.kms_max_connections",
							"Most connections one process opens to one key provider endpoint at once.",
							"Caps how many of the poller's questions run concurrently against one endpoint.",
							&byok_kms_max_connections, 64, 1, 1024,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.aws_region",
							   "AWS region of the aws-kms provider.", NULL,
							   &byok_aws_region, "us-east-1",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, byok_check_printable, NULL, NULL);
	DefineCustomStringVariable("byok.aws_endpoint",
							   "AWS KMS endpoint URL of the aws-kms provider.",
							   "Empty means https://kms.<region>.amazonaws.com/.",
							   &byok_aws_endpoint, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, byok_check_printable, NULL, NULL);
	DefineCustomStringVariable("byok.aws_credentials_file",
							   "AWS shared-credentials file the aws-kms provider signs with.",
							   "It must be readable by the server's operating system user alone.",
							   &byok_aws_credentials_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.aws_profile",
							   "Profile of byok.aws_credentials_file to use.", NULL,
							   &byok_aws_profile, "default",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, byok_check_printable, NULL, NULL);
	DefineCustomStringVariable("byok.vault_address",
							   "Address of the HashiCorp Vault server of the vault-transit provider.",
							   "For example https://vault.example.com:8200.",
							   &byok_vault_address, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, byok_check_printable, NULL, NULL);
	DefineCustomStringVariable("byok.vault_token_file",
							   "File holding the Vault token of the vault-transit provider.",
							   "The token is its first line; the file must be readable by the server's operating system user alone.",
							   &byok_vault_token_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.vault_namespace",
							   "Vault namespace (Vault Enterprise) of the vault-transit provider.", NULL,
							   &byok_vault_namespace, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, byok_check_printable, NULL, NULL);
	DefineCustomStringVariable("byok.vault_mount",
							   "Mount path of the Transit secrets engine.", NULL,
							   &byok_vault_mount, "transit",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, byok_check_printable, NULL, NULL);

	DefineCustomStringVariable("byok.destruction_ledger",
							   "File listing the tenant keys byok_destroy_tenant() destroyed, shared by the clusters of a platform.",
							   "A cluster restored from an older backup refuses every key listed there. Empty turns the ledger off.",
							   &byok_destruction_ledger, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.pkcs11_module",
							   "PKCS#11 library of the pkcs11 provider.",
							   "An absolute path; each server process loads it when it first needs a key from the token.",
							   &byok_pkcs11_module, "/usr/lib/softhsm/libsofthsm2.so",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.pkcs11_token_label",
							   "Label of the PKCS#11 token holding the customer master keys of the pkcs11 provider.",
							   "The token is found by this label, since slot numbers can change.",
							   &byok_pkcs11_token_label, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.pkcs11_pin_file",
							   "File holding the user PIN of the pkcs11 provider's token.",
							   "The PIN is its first line; the file must be readable by the server's operating system user alone.",
							   &byok_pkcs11_pin_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.kmip_host",
							   "KMIP servers of the kmip provider: host or host:port, several separated by commas.",
							   "Servers are tried in turn, the last one that answered first; each server's certificate must name it (DNS name or IP address).",
							   &byok_kmip_host, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, byok_check_printable, NULL, NULL);
	DefineCustomIntVariable("byok.kmip_port",
							"TCP port of the KMIP server of the kmip provider.", NULL,
							&byok_kmip_port, 5696, 1, 65535,
							PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomIntVariable("byok.kmip_batch_size",
							"Most key-state questions the poller puts in one KMIP message.",
							"1 sends one message per key, for servers that do not accept batches.",
							&byok_kmip_batch_size, 32, 1, 48,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.kmip_cert_file",
							   "PEM client certificate the kmip provider presents to the KMIP server.",
							   "Its identity (usually the CN) owns the keys on the server; the file must be readable by the server's operating system user alone.",
							   &byok_kmip_cert_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.kmip_key_file",
							   "PEM private key of byok.kmip_cert_file (unencrypted).",
							   "It must be readable by the server's operating system user alone.",
							   &byok_kmip_key_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("byok.kmip_ca_file",
							   "PEM CA certificates that verify the KMIP server's certificate.",
							   "It must be readable by the server's operating system user alone.",
							   &byok_kmip_ca_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
}

/* The shared-memory sizes (preloading only), then the prefix is reserved. */
void
byok_guc_define_postmaster(void)
{
	DefineCustomIntVariable("byok.cache_size",
							"Number of unwrapped keys the shared key cache can hold.",
							NULL, &byok_cache_size, 10000, 16, 10000000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("byok.max_tenants",
							"Number of tenants shared memory can track at once.",
							NULL, &byok_max_tenants, 10000, 16, 10000000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);

	MarkGUCPrefixReserved("byok");
}

/*
 * Whether this session may use the keys of 'tenant': it is not bound
 * (byok.tenant empty), or bound to exactly that tenant.
 */
bool
byok_session_bound_to(const char *tenant)
{
	return byok_tenant == NULL || byok_tenant[0] == '\0' || strcmp(tenant, byok_tenant) == 0;
}

/*
 * Raise the binding error when this session is bound to another tenant
 * than 'tenant' (before anything else about that tenant is looked at).
 */
void
byok_session_check_bound(const char *tenant)
{
	if (!byok_session_bound_to(tenant))
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_TENANT_MISMATCH),
				 errmsg("this session is bound to tenant \"%s\"", byok_tenant),
				 errdetail("The value belongs to another tenant.")));
}
