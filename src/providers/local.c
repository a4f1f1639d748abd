/*-------------------------------------------------------------------------
 *
 * providers/local.c
 *		The "local" key provider: CMKs are 32-byte files in a keyring folder.
 *
 * For development, demos and tests.  The keyring is the folder named by
 * byok.local_keyring (default: byok_keyring inside the data directory).
 * CMK "N" is the file N.key holding exactly 32 random bytes:
 *
 *   N.key exists               -> ENABLED
 *   only N.key.disabled exists -> DISABLED (rename back to enable)
 *   neither exists             -> DESTROYED
 *
 * A keyring folder that cannot be reached makes the provider unavailable
 * (like an unmounted key volume): that is never a revocation.
 *
 * Key names are limited to [A-Za-z0-9._-], may not start with a dot and
 * may not contain "..", so a name can never leave the keyring.  A key file
 * must be a regular file (symlinks are refused) readable by its owner only.
 *
 * Wrapping is AES-256-GCM under the CMK with AAD binding the tenant name and
 * TK version; the wrapped form is a format byte followed by nonce,
 * ciphertext and tag.
 *
 * Locking: none (files only); callers hold no LWLock while calling in here.
 *
 * Key lifetime: a CMK's bytes are read into a stack buffer for one
 * operation and wiped before the function returns, on every path.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "miscadmin.h"
#include "port/pg_bswap.h"

#include "crypto/envelope.h"
#include "guc.h"
#include "providers/kms.h"

#define LOCAL_WRAP_FORMAT	1

static const char *
kl_keyring(char *buf, size_t len)
{
	if (byok_local_keyring && byok_local_keyring[0] != '\0')
		strlcpy(buf, byok_local_keyring, len);
	else
		snprintf(buf, len, "%s/byok_keyring", DataDir);
	return buf;
}

static ByokKmsStatus
kl_check_key_ref(const char *key_ref, ByokKmsError *err)
{
	if (key_ref[0] == '.' || strstr(key_ref, "..") != NULL || strchr(key_ref, '/') != NULL)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_NAME",
						   "A local key name may not start with a dot or contain \"/\" or \"..\".");
		return err->status;
	}
	for (const char *p = key_ref; *p; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_NAME",
							   "A local key name may contain only letters, digits, \".\", \"_\" and \"-\".");
			return err->status;
		}
	}
	if (strlen(key_ref) > 64)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_NAME",
						   "A local key name may be at most 64 bytes long.");
		return err->status;
	}
	return BYOK_KMS_OK;
}

/*
 * The keyring folder must be reachable: a missing or unreadable folder (an
 * unmounted key volume, say) makes the provider unavailable, never
 * "destroyed".
 */
static ByokKmsStatus
kl_check_keyring(ByokKmsError *err)
{
	char		dir[MAXPGPATH];
	struct stat st;

	kl_keyring(dir, sizeof(dir));
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
	{
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "NO_KEYRING",
						   "The keyring folder \"%s\" cannot be reached.", dir);
		return err->status;
	}
	return BYOK_KMS_OK;
}

/*
 * The CMK's state from the files present.  An unreadable keyring folder is
 * a configuration error, never "destroyed".
 */
static ByokKmsStatus
kl_key_state(const char *key_ref, int32 version_hint, ByokKeyState *state, ByokKmsError *err)
{
	char		dir[MAXPGPATH];
	char		path[MAXPGPATH];
	struct stat st;

	if (kl_check_key_ref(key_ref, err) != BYOK_KMS_OK ||
		kl_check_keyring(err) != BYOK_KMS_OK)
		return err->status;
	kl_keyring(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/%s.key", dir, key_ref);
	if (lstat(path, &st) == 0)
	{
		*state = BYOK_KEY_ENABLED;
		return BYOK_KMS_OK;
	}
	if (errno != ENOENT)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "STAT_FAILED",
						   "Could not examine key file \"%s.key\": %m.", key_ref);
		return err->status;
	}
	snprintf(path, sizeof(path), "%s/%s.key.disabled", dir, key_ref);
	*state = (lstat(path, &st) == 0) ? BYOK_KEY_DISABLED : BYOK_KEY_DESTROYED;
	return BYOK_KMS_OK;
}

/*
 * Read CMK 'key_ref' into 'key' (BYOK_KEY_LEN bytes).  Refuses symlinks,
 * non-regular files, files readable by group or others and files of the
 * wrong size.  On failure 'key' holds no key bytes.
 */
static ByokKmsStatus
kl_read_key(const char *key_ref, uint8 *key, ByokKmsError *err)
{
	char		dir[MAXPGPATH];
	char		path[MAXPGPATH];
	struct stat st;
	int			fd;
	ssize_t		n;
	uint8		extra;

	if (kl_check_key_ref(key_ref, err) != BYOK_KMS_OK ||
		kl_check_keyring(err) != BYOK_KMS_OK)
		return err->status;
	kl_keyring(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/%s.key", dir, key_ref);
	/* non-blocking: a FIFO must not hold the backend (fstat refuses it next) */
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
	{
		ByokKeyState state;

		if (errno != ENOENT)
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, errno == ELOOP ? "SYMLINK" : "OPEN_FAILED",
							   "Could not open key file \"%s.key\": %m.", key_ref);
			return err->status;
		}
		if (kl_key_state(key_ref, 0, &state, err) != BYOK_KMS_OK)
			return err->status;
		if (state == BYOK_KEY_DISABLED)
			byok_kms_set_error(err, BYOK_KMS_DISABLED, "DISABLED",
							   "Key \"%s\" is disabled (only %s.key.disabled exists).",
							   key_ref, key_ref);
		else
			byok_kms_set_error(err, BYOK_KMS_DESTROYED, "NOT_FOUND",
							   "Key \"%s\" does not exist in the keyring.", key_ref);
		return err->status;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NOT_A_FILE",
						   "Key file \"%s.key\" is not a regular file.", key_ref);
		return err->status;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		close(fd);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "LOOSE_PERMISSIONS",
						   "Key file \"%s.key\" is accessible by group or others (mode %04o); it must be 0600 or 0400.",
						   key_ref, (unsigned) (st.st_mode & 07777));
		return err->status;
	}
	if (st.st_uid != geteuid())
	{
		close(fd);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "WRONG_OWNER",
						   "Key file \"%s.key\" is not owned by the server's operating system user.",
						   key_ref);
		return err->status;
	}
	n = read(fd, key, BYOK_KEY_LEN);
	if (n == BYOK_KEY_LEN && read(fd, &extra, 1) == 0)
	{
		close(fd);
		return BYOK_KMS_OK;
	}
	close(fd);
	explicit_bzero(key, BYOK_KEY_LEN);
	explicit_bzero(&extra, 1);
	byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_FILE",
					   "Key file \"%s.key\" must hold exactly %d bytes.", key_ref, BYOK_KEY_LEN);
	return err->status;
}

/* AAD binding a wrapped TK to its tenant and version */
static int
kl_aad(const ByokKmsContext *ctx, uint8 *aad)
{
	return byok_kms_context_aad("byok-local-v1", ctx, aad);
}

static ByokKmsStatus
kl_wrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *plain, int plain_len,
		uint8 *out, int *out_len, ByokKmsError *err)
{
	uint8		cmk[BYOK_KEY_LEN];
	uint8		aad[64 + NAMEDATALEN];
	int			aad_len;

	if (1 + BYOK_WRAPPED_LEN(plain_len) > BYOK_MAX_WRAPPED)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "TOO_LONG", "The key to wrap is too long.");
		return err->status;
	}
	if (kl_read_key(key_ref, cmk, err) != BYOK_KMS_OK)
		return err->status;
	aad_len = kl_aad(ctx, aad);
	out[0] = LOCAL_WRAP_FORMAT;
	PG_TRY();
	{
		*out_len = 1 + byok_gcm_wrap(cmk, aad, aad_len, plain, plain_len, out + 1);
	}
	PG_FINALLY();
	{
		explicit_bzero(cmk, sizeof(cmk));
	}
	PG_END_TRY();
	return BYOK_KMS_OK;
}

static ByokKmsStatus
kl_unwrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *wrapped, int wrapped_len,
		  uint8 *out, int *out_len, ByokKmsError *err)
{
	uint8		cmk[BYOK_KEY_LEN];
	uint8		aad[64 + NAMEDATALEN];
	int			aad_len;
	bool		ok = false;

	if (wrapped_len < 1 + BYOK_WRAPPED_LEN(1) || wrapped[0] != LOCAL_WRAP_FORMAT)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_WRAPPED_KEY",
						   "The wrapped key is not in the local provider's format.");
		return err->status;
	}
	if (kl_read_key(key_ref, cmk, err) != BYOK_KMS_OK)
		return err->status;
	aad_len = kl_aad(ctx, aad);
	PG_TRY();
	{
		ok = byok_gcm_unwrap(cmk, aad, aad_len, wrapped + 1, wrapped_len - 1, out, BYOK_MAX_WRAPPED, out_len);
	}
	PG_FINALLY();
	{
		explicit_bzero(cmk, sizeof(cmk));
	}
	PG_END_TRY();
	if (!ok)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "UNWRAP_FAILED",
						   "The wrapped key does not authenticate under key \"%s\" for this tenant and version.",
						   key_ref);
		return err->status;
	}
	return BYOK_KMS_OK;
}

static const ByokKmsRoutine local_routine = {
	.name = "local",
	.check_key_ref = kl_check_key_ref,
	.wrap = kl_wrap,
	.unwrap = kl_unwrap,
	.key_state = kl_key_state,
};

void
byok_kms_local_install(void)
{
	byok_kms_register(&local_routine);
}
