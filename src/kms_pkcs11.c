/*-------------------------------------------------------------------------
 *
 * kms_pkcs11.c
 *		The "pkcs11" key provider: CMKs are AES-256 secret keys on a PKCS#11
 *		token (an HSM, or SoftHSM2 for tests).
 *
 * Set-up comes from three GUCs: byok.pkcs11_module (the PKCS#11 library,
 * an absolute path, loaded with dlopen), byok.pkcs11_token_label (the token,
 * found by its label because slot ids are not stable) and
 * byok.pkcs11_pin_file (a file holding the user PIN on its first line).
 * A key reference is the CKA_LABEL of a secret AES key on that token:
 *
 *   key found, CKA_ENCRYPT and CKA_DECRYPT true   -> ENABLED
 *   key found, either of them false               -> DISABLED
 *   no secret key with that label                 -> DESTROYED
 *
 * A token that cannot be found, or a module that cannot be loaded, makes
 * the provider unavailable: that is never a revocation.  Two secret keys
 * with the same label are a configuration error, never a guess.
 *
 * Wrapping is CKM_AES_GCM inside the token (C_Encrypt/C_Decrypt; the CMK
 * never leaves it) with a 12-byte IV from C_GenerateRandom, a 128-bit tag
 * and AAD binding the tenant name and TK version.  The wrapped form is a
 * format byte followed by IV, ciphertext and tag.  Headers disagree on
 * CK_GCM_PARAMS: the p11-kit (2.40) and 3.x ones have ulIvBits, some older
 * ones do not, and a module checks ulParameterLen against its own.  The
 * other layout is tried once when the first is refused with
 * CKR_ARGUMENTS_BAD or CKR_MECHANISM_PARAM_INVALID, and remembered.
 * SoftHSM 2.6.1 wants the layout with ulIvBits (48 bytes on LP64).  A bad
 * GCM tag is CKR_GENERAL_ERROR on SoftHSM (CKR_ENCRYPTED_DATA_INVALID per
 * the standard); both become UNWRAP_FAILED.
 *
 * Processes.  The module is never initialised in the postmaster: the first
 * call in a process calls C_Initialize and records MyProcPid.  A process
 * whose pid differs from the recorded one is a forked child: the inherited
 * state is dropped without calling into the module (C_Finalize and
 * C_CloseSession are undefined after fork) and C_Initialize is called
 * again.  CKR_CRYPTOKI_ALREADY_INITIALIZED is accepted (SoftHSM without
 * library.reset_on_fork keeps the parent's instance in the child); the
 * module is then not ours to finalise.  The module is finalised at process
 * exit; a loaded module is never unloaded (dlclose of a library that
 * registered exit handlers can crash the process when it exits).  A change
 * of the module, token or PIN file GUC is noticed at the next call.
 *
 * Sessions and handles.  Each process keeps one logged-in read-only session
 * and reuses it.  A call failing because the session went away
 * (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_USER_NOT_LOGGED_IN,
 * CKR_OPERATION_ACTIVE) is retried once on a new session; one failing
 * because the token or the module went away (CKR_TOKEN_NOT_PRESENT,
 * CKR_DEVICE_REMOVED, CKR_CRYPTOKI_NOT_INITIALIZED) is retried once after
 * re-initialising the module.  Object handles are never kept across calls:
 * every call looks the key up by label again, so a key disabled or
 * destroyed by another process is seen at once.  Because DESTROYED is
 * final, a lookup that finds nothing on a module instance initialised
 * earlier is repeated after re-initialising it (SoftHSM's file store
 * answers "no such object" while its token folder is missing, and keeps
 * doing so after the folder is back): the answer is then the key,
 * DESTROYED, or an unavailable token.  The poller's key_state_many answers
 * all its questions from one scan of the token's secret keys: a SoftHSM
 * lookup costs about 12 us per object on the token, so asking key by key
 * would cost O(N^2) per round.
 *
 * Time.  A token call can block (a network HSM that stops answering), so
 * every provider operation runs p11_run() in a helper thread while the
 * backend waits in slices of at most 25 ms for at most byok.kms_timeout,
 * serving a cancel, a termination or a shutdown request one slice after it
 * arrives (p11_dispatch).  A
 * call that outlives the wait is abandoned, not killed: the thread owns all
 * it touches (a malloc'd job with copies of the inputs, the p11 state, the
 * p11cfg copy of the settings) and frees and wipes the job when the module
 * returns; until then this process does not call the module again
 * (MODULE_BUSY, unavailable) and does not finalise it at exit.  The thread
 * blocks every signal and never calls palloc, elog or a GUC.  Only one
 * thread ever calls the module at a time, so C_Initialize is given no
 * locking callbacks.
 *
 * Locking: none here.  Callers hold no LWLock while calling in.
 *
 * Key lifetime: the CMK never leaves the token.  The PIN is read into a
 * stack buffer of the helper thread for C_Login and wiped on every path;
 * nothing that runs there can ereport.  A plaintext TK passes through the
 * caller's buffers and the job's, which is wiped when freed.  Messages name the module, token and key labels and PKCS#11
 * return codes, never a PIN or key byte.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "portability/instr_time.h"
#include "storage/ipc.h"
#include "utils/timestamp.h"

#include "kms.h"

#define P11_WRAP_FORMAT		1
#define P11_IV_LEN			12	/* = BYOK_GCM_NONCE_LEN */
#define P11_TAG_LEN			16	/* = BYOK_GCM_TAG_LEN */
#define P11_TOKEN_LABEL_LEN	32	/* CK_TOKEN_INFO.label, blank padded */
#define P11_MAX_PIN			256
#define P11_REF_ROOM		(BYOK_MAX_KEY_REF + 1)	/* one label in P11Call.refs */
#define P11_WAIT_SLICE_MS	25

/* CK_GCM_PARAMS as headers without ulIvBits declare it */
typedef struct P11GcmParamsNoBits
{
	CK_BYTE_PTR pIv;
	CK_ULONG	ulIvLen;
	CK_BYTE_PTR pAAD;
	CK_ULONG	ulAADLen;
	CK_ULONG	ulTagBits;
} P11GcmParamsNoBits;

/* this process's link to the module; see the header for the rules */
typedef struct P11State
{
	pid_t		pid;			/* process the state below belongs to */
	CK_FUNCTION_LIST_PTR fn;	/* module's function list, NULL = not loaded */
	char		module[MAXPGPATH];	/* path fn was loaded from */
	bool		initialized;	/* C_Initialize done in this process */
	bool		own_init;		/* ...and it returned CKR_OK (ours to finalise) */
	bool		gcm_no_bits;	/* module wants CK_GCM_PARAMS without ulIvBits */
	uint64		generation;		/* counts C_Initialize calls */
	CK_SESSION_HANDLE session;	/* logged-in session or CK_INVALID_HANDLE */
	char		token[P11_TOKEN_LABEL_LEN + 1]; /* token label of session */
	char		pin_file[MAXPGPATH];	/* PIN file session logged in with */
} P11State;

static P11State p11 = {.session = CK_INVALID_HANDLE};

/*
 * The settings a call runs with, copied from the GUCs by the backend before
 * it hands the call to a helper thread: the thread never reads a GUC, which
 * a configuration reload may free while an abandoned thread still runs.
 */
static struct
{
	char		module[MAXPGPATH];
	char		token[P11_TOKEN_LABEL_LEN + 1];
	char		pin_file[MAXPGPATH];
}			p11cfg;

/* set while an abandoned call still runs in the module; cleared when it returns */
static volatile sig_atomic_t p11_stuck = 0;
static pid_t p11_exit_hook_pid = 0;	/* on_proc_exit registered by this process */

/* one call's key lookup and crypto; filled by the p11_op_* functions */
typedef struct P11Call
{
	const char *key_ref;		/* CKA_LABEL of the CMK */
	const char *failed;			/* PKCS#11 function that failed, or NULL */
	int			nfound;			/* secret keys with that label: 0, 1, 2 (= more) */
	CK_KEY_TYPE key_type;		/* key_state: CKA_KEY_TYPE */
	CK_BBOOL	can_encrypt;	/* key_state: CKA_ENCRYPT */
	CK_BBOOL	can_decrypt;	/* key_state: CKA_DECRYPT */
	const uint8 *aad;			/* wrap/unwrap: AAD */
	int			aad_len;
	const uint8 *in;			/* wrap: plaintext; unwrap: IV||ct||tag */
	int			in_len;
	uint8	   *out;			/* wrap: IV||ct||tag; unwrap: plaintext */
	CK_ULONG	out_len;		/* in: room in out; out: bytes written */
	struct P11Match *matches;	/* key_state_many: one per query */
	const char *refs;			/* key_state_many: nqueries labels, P11_REF_ROOM bytes each */
	int			nqueries;
} P11Call;

/* key_state_many: what the scan found for one query */
typedef struct P11Match
{
	bool		skip;			/* query already answered (bad key_ref) */
	int			nfound;			/* secret keys with its label: 0, 1, 2 (= more) */
	CK_KEY_TYPE key_type;		/* of the first one found */
	CK_BBOOL	can_encrypt;
	CK_BBOOL	can_decrypt;
} P11Match;

typedef CK_RV (*P11Op) (P11Call *call);

#define P11_RV(x)	{x, #x}
static const struct
{
	CK_RV		rv;
	const char *name;
}			p11_rv_names[] =
{
	P11_RV(CKR_OK),
	P11_RV(CKR_CANCEL),
	P11_RV(CKR_HOST_MEMORY),
	P11_RV(CKR_SLOT_ID_INVALID),
	P11_RV(CKR_GENERAL_ERROR),
	P11_RV(CKR_FUNCTION_FAILED),
	P11_RV(CKR_ARGUMENTS_BAD),
	P11_RV(CKR_ATTRIBUTE_READ_ONLY),
	P11_RV(CKR_ATTRIBUTE_SENSITIVE),
	P11_RV(CKR_ATTRIBUTE_TYPE_INVALID),
	P11_RV(CKR_ATTRIBUTE_VALUE_INVALID),
	P11_RV(CKR_ACTION_PROHIBITED),
	P11_RV(CKR_DATA_INVALID),
	P11_RV(CKR_DATA_LEN_RANGE),
	P11_RV(CKR_DEVICE_ERROR),
	P11_RV(CKR_DEVICE_MEMORY),
	P11_RV(CKR_DEVICE_REMOVED),
	P11_RV(CKR_ENCRYPTED_DATA_INVALID),
	P11_RV(CKR_ENCRYPTED_DATA_LEN_RANGE),
	P11_RV(CKR_FUNCTION_CANCELED),
	P11_RV(CKR_FUNCTION_NOT_SUPPORTED),
	P11_RV(CKR_KEY_HANDLE_INVALID),
	P11_RV(CKR_KEY_SIZE_RANGE),
	P11_RV(CKR_KEY_TYPE_INCONSISTENT),
	P11_RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
	P11_RV(CKR_MECHANISM_INVALID),
	P11_RV(CKR_MECHANISM_PARAM_INVALID),
	P11_RV(CKR_OBJECT_HANDLE_INVALID),
	P11_RV(CKR_OPERATION_ACTIVE),
	P11_RV(CKR_OPERATION_NOT_INITIALIZED),
	P11_RV(CKR_PIN_INCORRECT),
	P11_RV(CKR_PIN_INVALID),
	P11_RV(CKR_PIN_LEN_RANGE),
	P11_RV(CKR_PIN_EXPIRED),
	P11_RV(CKR_PIN_LOCKED),
	P11_RV(CKR_SESSION_CLOSED),
	P11_RV(CKR_SESSION_COUNT),
	P11_RV(CKR_SESSION_HANDLE_INVALID),
	P11_RV(CKR_TEMPLATE_INCOMPLETE),
	P11_RV(CKR_TEMPLATE_INCONSISTENT),
	P11_RV(CKR_TOKEN_NOT_PRESENT),
	P11_RV(CKR_TOKEN_NOT_RECOGNIZED),
	P11_RV(CKR_USER_ALREADY_LOGGED_IN),
	P11_RV(CKR_USER_NOT_LOGGED_IN),
	P11_RV(CKR_USER_PIN_NOT_INITIALIZED),
	P11_RV(CKR_USER_TYPE_INVALID),
	P11_RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
	P11_RV(CKR_RANDOM_NO_RNG),
	P11_RV(CKR_BUFFER_TOO_SMALL),
	P11_RV(CKR_CRYPTOKI_NOT_INITIALIZED),
	P11_RV(CKR_CRYPTOKI_ALREADY_INITIALIZED),
	P11_RV(CKR_FUNCTION_REJECTED),
};

/*
 * The name of a PKCS#11 return code ("CKR_GENERAL_ERROR"), or its value in
 * hex written into buf for codes the table lacks.
 */
static const char *
p11_rv_name(CK_RV rv, char *buf, size_t len)
{
	for (size_t i = 0; i < lengthof(p11_rv_names); i++)
		if (p11_rv_names[i].rv == rv)
			return p11_rv_names[i].name;
	snprintf(buf, len, "CKR_0x%08lX", (unsigned long) rv);
	return buf;
}

/*
 * Record the failure of PKCS#11 function 'what' with 'rv' in err, choosing
 * the class from the code.  Returns the class.
 */
static ByokKmsStatus
p11_fail(ByokKmsError *err, const char *what, CK_RV rv, const char *key_ref)
{
	char		buf[32];
	const char *name = p11_rv_name(rv, buf, sizeof(buf));

	switch (rv)
	{
		case CKR_KEY_FUNCTION_NOT_PERMITTED:
			byok_kms_set_error(err, BYOK_KMS_DISABLED, name,
							   "Key \"%s\" may not be used to encrypt or decrypt (%s refused it).",
							   key_ref ? key_ref : "?", what);
			break;
		case CKR_PIN_INCORRECT:
		case CKR_PIN_INVALID:
		case CKR_PIN_LEN_RANGE:
		case CKR_PIN_EXPIRED:
		case CKR_PIN_LOCKED:
		case CKR_USER_PIN_NOT_INITIALIZED:
		case CKR_USER_NOT_LOGGED_IN:
			byok_kms_set_error(err, BYOK_KMS_PERMISSION, name,
							   "Token \"%s\" refused the user PIN from \"%s\".",
							   p11.token, p11.pin_file);
			break;
		case CKR_TOKEN_NOT_PRESENT:
		case CKR_DEVICE_REMOVED:
		case CKR_DEVICE_ERROR:
		case CKR_SESSION_COUNT:
		case CKR_SESSION_HANDLE_INVALID:
		case CKR_SESSION_CLOSED:
		case CKR_CRYPTOKI_NOT_INITIALIZED:
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, name,
							   "%s failed: token \"%s\" or its session went away.",
							   what, p11.token);
			break;
		case CKR_KEY_TYPE_INCONSISTENT:
		case CKR_KEY_SIZE_RANGE:
		case CKR_MECHANISM_INVALID:
			byok_kms_set_error(err, BYOK_KMS_CONFIG, name,
							   "%s refused key \"%s\": it must be an AES key and the token must support CKM_AES_GCM.",
							   what, key_ref ? key_ref : "?");
			break;
		default:
			byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, name, "%s failed.", what);
			break;
	}
	return err->status;
}

/* codes after which the session (or the whole module) is dropped and the call retried once */
static bool
p11_retryable(CK_RV rv, bool *reinit)
{
	switch (rv)
	{
		case CKR_TOKEN_NOT_PRESENT:
		case CKR_DEVICE_REMOVED:
		case CKR_CRYPTOKI_NOT_INITIALIZED:
			*reinit = true;
			return true;
		case CKR_SESSION_HANDLE_INVALID:
		case CKR_SESSION_CLOSED:
		case CKR_USER_NOT_LOGGED_IN:
		case CKR_OPERATION_ACTIVE:
			*reinit = false;
			return true;
		default:
			return false;
	}
}

/*
 * Forget the session; with 'reinit', finalise the module too (only if this
 * process initialised it).  Only for state that belongs to this process.
 */
static void
p11_drop(bool reinit)
{
	if (p11.session != CK_INVALID_HANDLE)
	{
		(void) p11.fn->C_CloseSession(p11.session);
		p11.session = CK_INVALID_HANDLE;
	}
	if (reinit && p11.initialized)
	{
		if (p11.own_init)
			(void) p11.fn->C_Finalize(NULL);
		p11.initialized = false;
		p11.own_init = false;
	}
}

/*
 * on_proc_exit: close the session and finalise the module.  A call still
 * inside the module (abandoned) gets up to a second to return first, so
 * the process does not exit under it when it was merely slow; after that
 * the module is left alone.
 */
static void
p11_proc_exit(int code, Datum arg)
{
	for (int i = 0; i < 100 && p11_stuck; i++)
		pg_usleep(10000L);
	if (p11.pid == MyProcPid && p11.fn != NULL && !p11_stuck)
		p11_drop(true);
}

static ByokKmsStatus
p11_check_config(ByokKmsError *err)
{
	if (byok_pkcs11_module == NULL || byok_pkcs11_module[0] != '/')
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_MODULE",
						   "byok.pkcs11_module must be the absolute path of a PKCS#11 library.");
		return err->status;
	}
	if (byok_pkcs11_token_label == NULL || byok_pkcs11_token_label[0] == '\0' ||
		strlen(byok_pkcs11_token_label) > P11_TOKEN_LABEL_LEN)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_TOKEN_LABEL",
						   "byok.pkcs11_token_label must name a token (1 to %d bytes).",
						   P11_TOKEN_LABEL_LEN);
		return err->status;
	}
	return BYOK_KMS_OK;
}

/*
 * Read the user PIN: the first line of byok.pkcs11_pin_file, which must be
 * a regular file owned by the server's OS user and accessible by it alone.
 * On failure 'pin' holds no PIN bytes.  Returns the PIN's length, or -1.
 */
static int
p11_read_pin(char *pin, ByokKmsError *err)
{
	const char *path = p11cfg.pin_file;
	struct stat st;
	int			fd;
	ssize_t		n;
	ssize_t		len = 0;

	if (path == NULL || path[0] == '\0')
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_CREDENTIALS",
						   "byok.pkcs11_pin_file is not set.");
		return -1;
	}
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_CREDENTIALS",
						   "Could not open PIN file \"%s\": %m.", path);
		return -1;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CREDENTIALS_FILE",
						   "PIN file \"%s\" is not a regular file.", path);
		return -1;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0 || st.st_uid != geteuid())
	{
		close(fd);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "LOOSE_PERMISSIONS",
						   "PIN file \"%s\" must be owned by the server's operating system user and readable by it alone (mode 0600 or 0400).",
						   path);
		return -1;
	}
	n = read(fd, pin, P11_MAX_PIN);
	close(fd);
	while (len < n && pin[len] != '\n' && pin[len] != '\r')
		len++;
	if (len > 0 && len < P11_MAX_PIN)
	{
		/* the first line, without its end */
		explicit_bzero(pin + len, P11_MAX_PIN - len);
		return (int) len;
	}
	explicit_bzero(pin, P11_MAX_PIN);
	byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CREDENTIALS_FILE",
					   "PIN file \"%s\" must hold a PIN of 1 to %d bytes on its first line.",
					   path, P11_MAX_PIN - 1);
	return -1;
}

/*
 * Load the module named by byok.pkcs11_module (once per path) and
 * initialise it in this process.
 */
static ByokKmsStatus
p11_load(ByokKmsError *err)
{
	CK_RV		rv;
	char		buf[32];

	if (p11.fn != NULL && strcmp(p11.module, p11cfg.module) != 0)
	{
		/* the GUC changed: leave the old module, loaded but finalised */
		p11_drop(true);
		p11.fn = NULL;
	}
	if (p11.fn == NULL)
	{
		void	   *dl;
		CK_C_GetFunctionList get_list;
		CK_FUNCTION_LIST_PTR fn = NULL;

		dl = dlopen(p11cfg.module, RTLD_NOW | RTLD_LOCAL);
		if (dl == NULL)
		{
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "MODULE_LOAD_FAILED",
							   "Could not load PKCS#11 module: %s.", dlerror());
			return err->status;
		}
		get_list = (CK_C_GetFunctionList) dlsym(dl, "C_GetFunctionList");
		if (get_list == NULL || (rv = get_list(&fn)) != CKR_OK || fn == NULL)
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "NOT_A_MODULE",
							   "\"%s\" is not a usable PKCS#11 module (C_GetFunctionList failed).",
							   p11cfg.module);
			return err->status;
		}
		p11.fn = fn;
		strlcpy(p11.module, p11cfg.module, sizeof(p11.module));
		p11.initialized = false;
		p11.gcm_no_bits = false;
	}
	if (!p11.initialized)
	{
		/* NULL arguments: this process calls the module from one thread */
		rv = p11.fn->C_Initialize(NULL);
		if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
		{
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, p11_rv_name(rv, buf, sizeof(buf)),
							   "C_Initialize of PKCS#11 module \"%s\" failed; check the module's own configuration (for SoftHSM, SOFTHSM2_CONF in the server's environment).",
							   p11.module);
			return err->status;
		}
		p11.initialized = true;
		p11.own_init = (rv == CKR_OK);
		p11.generation++;
	}
	return BYOK_KMS_OK;
}

/*
 * Find the slot holding the token labelled byok.pkcs11_token_label.
 * Returns CKR_OK and sets *found.
 */
static CK_RV
p11_find_token(CK_SLOT_ID *slot, bool *found)
{
	CK_SLOT_ID	slots[64];
	CK_ULONG	n = lengthof(slots);
	char		want[P11_TOKEN_LABEL_LEN];
	size_t		len = strlen(p11cfg.token);
	CK_RV		rv;

	*found = false;
	memset(want, ' ', sizeof(want));
	memcpy(want, p11cfg.token, len);
	rv = p11.fn->C_GetSlotList(CK_TRUE, slots, &n);
	if (rv == CKR_BUFFER_TOO_SMALL)
	{
		/* more than 64 tokens: scan the first 64 */
		n = lengthof(slots);
		rv = CKR_OK;
	}
	if (rv != CKR_OK)
		return rv;
	for (CK_ULONG i = 0; i < n && i < lengthof(slots); i++)
	{
		CK_TOKEN_INFO info;

		if (p11.fn->C_GetTokenInfo(slots[i], &info) != CKR_OK)
			continue;
		if (memcmp(info.label, want, sizeof(want)) == 0)
		{
			*slot = slots[i];
			*found = true;
			return CKR_OK;
		}
	}
	return CKR_OK;
}

/*
 * Make sure this process has a logged-in session on the configured token:
 * load and initialise the module, find the token, open a session, log in.
 * A forked child drops what it inherited first.
 */
static ByokKmsStatus
p11_connect(ByokKmsError *err)
{
	CK_SLOT_ID	slot = 0;
	CK_SESSION_HANDLE session;
	CK_TOKEN_INFO info;
	bool		found;
	bool		fresh;
	char		pin[P11_MAX_PIN];
	int			pin_len;
	CK_RV		rv;
	char		buf[32];

	if (p11.pid != MyProcPid)
	{
		/* never initialised here, or inherited through fork: start over */
		p11.pid = MyProcPid;
		p11.initialized = false;
		p11.own_init = false;
		p11.session = CK_INVALID_HANDLE;
	}

	/* a changed token or PIN file needs a new session */
	if (p11.session != CK_INVALID_HANDLE &&
		(strcmp(p11.token, p11cfg.token) != 0 ||
		 strcmp(p11.pin_file, p11cfg.pin_file) != 0 ||
		 strcmp(p11.module, p11cfg.module) != 0))
		p11_drop(false);
	if (p11.session != CK_INVALID_HANDLE)
		return BYOK_KMS_OK;

	fresh = !p11.initialized || p11.fn == NULL;
	if (p11_load(err) != BYOK_KMS_OK)
		return err->status;
	strlcpy(p11.token, p11cfg.token, sizeof(p11.token));
	strlcpy(p11.pin_file, p11cfg.pin_file, sizeof(p11.pin_file));

	rv = p11_find_token(&slot, &found);
	if (rv == CKR_OK && !found && !fresh && p11.own_init)
	{
		/* the module may list only the tokens it saw at C_Initialize */
		p11_drop(true);
		if (p11_load(err) != BYOK_KMS_OK)
			return err->status;
		rv = p11_find_token(&slot, &found);
	}
	if (rv != CKR_OK)
	{
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, p11_rv_name(rv, buf, sizeof(buf)),
						   "C_GetSlotList of PKCS#11 module \"%s\" failed.", p11.module);
		return err->status;
	}
	if (!found)
	{
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "NO_TOKEN",
						   "PKCS#11 module \"%s\" has no token labelled \"%s\".",
						   p11.module, p11.token);
		return err->status;
	}

	rv = p11.fn->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &session);
	if (rv != CKR_OK)
	{
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, p11_rv_name(rv, buf, sizeof(buf)),
						   "C_OpenSession on token \"%s\" failed.", p11.token);
		return err->status;
	}
	p11.session = session;

	/* a token that needs no login may do without a PIN file */
	if (p11cfg.pin_file[0] == '\0' &&
		p11.fn->C_GetTokenInfo(slot, &info) == CKR_OK &&
		(info.flags & CKF_LOGIN_REQUIRED) == 0)
		return BYOK_KMS_OK;

	if ((pin_len = p11_read_pin(pin, err)) < 0)
	{
		p11_drop(false);
		return err->status;
	}
	rv = p11.fn->C_Login(session, CKU_USER, (CK_UTF8CHAR_PTR) pin, (CK_ULONG) pin_len);
	explicit_bzero(pin, sizeof(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
	{
		p11_fail(err, "C_Login", rv, NULL);
		p11_drop(false);
		return err->status;
	}
	return BYOK_KMS_OK;
}

/*
 * Run 'op' on this process's session, retrying once on a fresh session (or
 * a re-initialised module) when the session or token went away, and once on
 * a re-initialised module before reporting a key as missing.  'op' returns
 * the PKCS#11 code of its first failure and sets call->failed.
 */
static ByokKmsStatus
p11_run(P11Op op, P11Call *call, ByokKmsError *err)
{
	bool		retried = false;	/* retried after a lost session or token */
	bool		confirmed = false;	/* re-asked a "not found" on a fresh module */

	for (;;)
	{
		uint64		generation = p11.generation;
		bool		fresh;
		bool		reinit = false;
		CK_RV		rv;

		if (p11_connect(err) != BYOK_KMS_OK)
			return err->status;
		fresh = p11.generation != generation;
		call->failed = NULL;
		rv = op(call);
		if (rv == CKR_OK)
		{
			/*
			 * "Not found" makes a tenant's key destroyed for good, so it is
			 * never trusted from a long-lived module instance: SoftHSM, for
			 * one, answers an empty lookup while its token folder is gone
			 * and keeps doing so after it is back.  Ask again after
			 * re-initialising, which finds the token again or reports it
			 * missing (unavailable).
			 */
			if (call->nfound == 0 && !fresh && !confirmed)
			{
				confirmed = true;
				p11_drop(true);
				continue;
			}
			return BYOK_KMS_OK;
		}
		if (!retried && p11_retryable(rv, &reinit))
		{
			retried = true;
			p11_drop(reinit);
			continue;
		}
		if (rv == CKR_BUFFER_TOO_SMALL)
			p11_drop(false);	/* the operation may still be active */
		if (call->failed != NULL && strcmp(call->failed, "C_Decrypt") == 0 &&
			(rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED ||
			 rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE))
		{
			/* SoftHSM reports a bad GCM tag as CKR_GENERAL_ERROR */
			char		buf[32];

			byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "UNWRAP_FAILED",
							   "The wrapped key does not authenticate under key \"%s\" for this tenant and version (C_Decrypt returned %s).",
							   call->key_ref, p11_rv_name(rv, buf, sizeof(buf)));
			return err->status;
		}
		return p11_fail(err, call->failed ? call->failed : "a PKCS#11 call", rv, call->key_ref);
	}
}

/*
 * One bounded call: a helper thread runs p11_run() while the backend waits
 * in slices of at most 25 ms, checking for a cancel, a termination or a
 * shutdown request, for at most byok.kms_timeout.  Everything the thread
 * touches lives in the job (malloc'd, inputs copied in), in p11 and in
 * p11cfg, so a backend that gives up can simply leave: the abandoned thread
 * frees (and wipes) the job when the module finally returns, and until then
 * this process does not call the module again (p11_stuck).
 */
typedef struct P11Job
{
	P11Op		op;
	P11Call		call;			/* its pointers point into this job */
	ByokKmsError err;
	ByokKmsStatus status;
	char		key_ref[P11_REF_ROOM];
	uint8		aad[64 + NAMEDATALEN];
	uint8		in[BYOK_MAX_WRAPPED];	/* may hold a plaintext TK: wiped */
	uint8		out[BYOK_MAX_WRAPPED];	/* may hold a plaintext TK: wiped */
	char	   *refs;			/* key_state_many: the labels (malloc) */
	P11Match   *matches;		/* key_state_many: the answers (malloc) */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool		done;			/* the thread finished (under lock) */
	bool		abandoned;		/* the backend left: the thread frees the job (under lock) */
} P11Job;

/* A zeroed job for key_ref, or NULL (err set) when memory is short. */
static P11Job *
p11_job_new(const char *key_ref, int nqueries, ByokKmsError *err)
{
	P11Job	   *job = calloc(1, sizeof(P11Job));

	if (job != NULL && nqueries > 0)
	{
		job->refs = calloc(nqueries, P11_REF_ROOM);
		job->matches = calloc(nqueries, sizeof(P11Match));
		if (job->refs == NULL || job->matches == NULL)
		{
			free(job->refs);
			free(job->matches);
			free(job);
			job = NULL;
		}
	}
	if (job == NULL)
	{
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "OUT_OF_MEMORY",
						   "Could not allocate a PKCS#11 call.");
		return NULL;
	}
	strlcpy(job->key_ref, key_ref, sizeof(job->key_ref));
	job->call.key_ref = job->key_ref;
	job->call.refs = job->refs;
	job->call.matches = job->matches;
	job->call.nqueries = nqueries;
	job->err = *err;
	return job;
}

static void
p11_job_free(P11Job *job)
{
	free(job->refs);
	free(job->matches);
	explicit_bzero(job, sizeof(P11Job));
	free(job);
}

static void *
p11_job_thread(void *arg)
{
	P11Job	   *job = arg;
	bool		abandoned;

	job->status = p11_run(job->op, &job->call, &job->err);
	pthread_mutex_lock(&job->lock);
	job->done = true;
	abandoned = job->abandoned;
	pthread_cond_signal(&job->cond);
	pthread_mutex_unlock(&job->lock);
	if (abandoned)
	{
		pthread_mutex_destroy(&job->lock);
		pthread_cond_destroy(&job->cond);
		p11_job_free(job);
		p11_stuck = 0;
	}
	return NULL;
}

/*
 * Run 'op' on *jobp within byok.kms_timeout.  On return *jobp is the job
 * with its results, to be freed by the caller with p11_job_free(), or NULL
 * when the call was abandoned (UNAVAILABLE: timed out or interrupted).
 * An interrupt is served (CHECK_FOR_INTERRUPTS) once nothing is left to
 * clean up.
 */
static ByokKmsStatus
p11_dispatch(P11Op op, P11Job **jobp, ByokKmsError *err)
{
	P11Job	   *job = *jobp;
	TimestampTz deadline = GetCurrentTimestamp() + (int64) byok_kms_timeout * 1000;
	sigset_t	all;
	sigset_t	old;
	pthread_t	thread;
	bool		interrupted = false;
	int			rc;

	if (p11_stuck)
	{
		p11_job_free(job);
		*jobp = NULL;
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "MODULE_BUSY",
						   "An earlier call into PKCS#11 module \"%s\" from this process outlived byok.kms_timeout and has not returned yet; the module is not called again until it does.",
						   p11cfg.module);
		return err->status;
	}
	if (p11_exit_hook_pid != MyProcPid)
	{
		on_proc_exit(p11_proc_exit, (Datum) 0);
		p11_exit_hook_pid = MyProcPid;
	}
	strlcpy(p11cfg.module, byok_pkcs11_module, sizeof(p11cfg.module));
	strlcpy(p11cfg.token, byok_pkcs11_token_label, sizeof(p11cfg.token));
	strlcpy(p11cfg.pin_file, byok_pkcs11_pin_file ? byok_pkcs11_pin_file : "", sizeof(p11cfg.pin_file));

	job->op = op;
	pthread_mutex_init(&job->lock, NULL);
	pthread_cond_init(&job->cond, NULL);
	/* the thread takes no signal: PostgreSQL's handlers belong to this thread */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&thread, NULL, p11_job_thread, job);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
	{
		pthread_mutex_destroy(&job->lock);
		pthread_cond_destroy(&job->cond);
		p11_job_free(job);
		*jobp = NULL;
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "THREAD",
						   "Could not start a thread for the PKCS#11 call.");
		return err->status;
	}

	pthread_mutex_lock(&job->lock);
	while (!job->done)
	{
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += P11_WAIT_SLICE_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L)
		{
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		(void) pthread_cond_timedwait(&job->cond, &job->lock, &ts);
		if (job->done)
			break;
		if (byok_kms_interrupt_pending())
		{
			/* one more slice: a call about to return is better not abandoned */
			if (!interrupted)
			{
				interrupted = true;
				continue;
			}
			break;
		}
		if (GetCurrentTimestamp() >= deadline)
			break;
	}
	if (!job->done)
	{
		/* leave it running: it frees the job when the module returns */
		job->abandoned = true;
		p11_stuck = 1;
		pthread_mutex_unlock(&job->lock);
		pthread_detach(thread);
		*jobp = NULL;
		if (interrupted)
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "INTERRUPTED", "The call was interrupted.");
		else
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "TIMEOUT",
							   "PKCS#11 module \"%s\" did not answer within byok.kms_timeout (%d ms).",
							   p11cfg.module, byok_kms_timeout);
		if (interrupted)
			CHECK_FOR_INTERRUPTS();
		return err->status;
	}
	pthread_mutex_unlock(&job->lock);
	pthread_join(thread, NULL);
	pthread_mutex_destroy(&job->lock);
	pthread_cond_destroy(&job->cond);
	*err = job->err;
	return job->status;
}

/*
 * Look up the secret key labelled call->key_ref; sets call->nfound (0, 1,
 * or 2 meaning "more than one") and *key when one is found.
 */
static CK_RV
p11_find_key(P11Call *call, CK_OBJECT_HANDLE *key)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_LABEL, (void *) call->key_ref, strlen(call->key_ref)},
	};
	CK_OBJECT_HANDLE found[2];
	CK_ULONG	n = 0;
	CK_RV		rv;

	call->nfound = 0;
	rv = p11.fn->C_FindObjectsInit(p11.session, tmpl, lengthof(tmpl));
	if (rv != CKR_OK)
	{
		call->failed = "C_FindObjectsInit";
		return rv;
	}
	rv = p11.fn->C_FindObjects(p11.session, found, lengthof(found), &n);
	(void) p11.fn->C_FindObjectsFinal(p11.session);
	if (rv != CKR_OK)
	{
		call->failed = "C_FindObjects";
		return rv;
	}
	call->nfound = (int) Min(n, 2);
	if (n >= 1)
		*key = found[0];
	return CKR_OK;
}

static CK_RV
p11_op_state(P11Call *call)
{
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_KEY_TYPE, &call->key_type, sizeof(call->key_type)},
		{CKA_ENCRYPT, &call->can_encrypt, sizeof(call->can_encrypt)},
		{CKA_DECRYPT, &call->can_decrypt, sizeof(call->can_decrypt)},
	};
	CK_RV		rv;

	if ((rv = p11_find_key(call, &key)) != CKR_OK || call->nfound != 1)
		return rv;
	rv = p11.fn->C_GetAttributeValue(p11.session, key, tmpl, lengthof(tmpl));
	if (rv == CKR_OBJECT_HANDLE_INVALID)
	{
		/* destroyed between the lookup and now */
		call->nfound = 0;
		return CKR_OK;
	}
	if (rv != CKR_OK)
		call->failed = "C_GetAttributeValue";
	return rv;
}

/*
 * C_EncryptInit / C_DecryptInit with CKM_AES_GCM, in the CK_GCM_PARAMS
 * layout the module accepts (see the file header).
 */
static CK_RV
p11_gcm_init(P11Call *call, CK_OBJECT_HANDLE key, bool encrypt, const uint8 *iv)
{
	CK_GCM_PARAMS params;
	P11GcmParamsNoBits params_nobits;
	CK_MECHANISM mech;
	CK_RV		rv = CKR_OK;

	params.pIv = (CK_BYTE_PTR) iv;
	params.ulIvLen = P11_IV_LEN;
	params.ulIvBits = P11_IV_LEN * 8;
	params.pAAD = (CK_BYTE_PTR) call->aad;
	params.ulAADLen = call->aad_len;
	params.ulTagBits = P11_TAG_LEN * 8;
	params_nobits.pIv = params.pIv;
	params_nobits.ulIvLen = params.ulIvLen;
	params_nobits.pAAD = params.pAAD;
	params_nobits.ulAADLen = params.ulAADLen;
	params_nobits.ulTagBits = params.ulTagBits;

	for (int attempt = 0; attempt < 2; attempt++)
	{
		bool		no_bits = p11.gcm_no_bits != (attempt == 1);

		mech.mechanism = CKM_AES_GCM;
		mech.pParameter = no_bits ? (void *) &params_nobits : (void *) &params;
		mech.ulParameterLen = no_bits ? sizeof(params_nobits) : sizeof(params);
		rv = encrypt ? p11.fn->C_EncryptInit(p11.session, &mech, key)
			: p11.fn->C_DecryptInit(p11.session, &mech, key);
		if (rv == CKR_OK)
			p11.gcm_no_bits = no_bits;
		if (rv != CKR_ARGUMENTS_BAD && rv != CKR_MECHANISM_PARAM_INVALID)
			break;
	}
	if (rv != CKR_OK)
		call->failed = encrypt ? "C_EncryptInit" : "C_DecryptInit";
	return rv;
}

/* wrap: out = IV || ciphertext || tag */
static CK_RV
p11_op_wrap(P11Call *call)
{
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG	ct_len = call->out_len - P11_IV_LEN;
	CK_RV		rv;

	if ((rv = p11_find_key(call, &key)) != CKR_OK || call->nfound != 1)
		return rv;
	rv = p11.fn->C_GenerateRandom(p11.session, call->out, P11_IV_LEN);
	if (rv == CKR_RANDOM_NO_RNG || rv == CKR_FUNCTION_NOT_SUPPORTED)
		rv = pg_strong_random(call->out, P11_IV_LEN) ? CKR_OK : CKR_RANDOM_NO_RNG;
	if (rv != CKR_OK)
	{
		call->failed = "C_GenerateRandom";
		return rv;
	}
	if ((rv = p11_gcm_init(call, key, true, call->out)) != CKR_OK)
		return rv;
	rv = p11.fn->C_Encrypt(p11.session, (CK_BYTE_PTR) call->in, call->in_len,
						   call->out + P11_IV_LEN, &ct_len);
	if (rv != CKR_OK)
	{
		call->failed = "C_Encrypt";
		return rv;
	}
	if (ct_len != (CK_ULONG) call->in_len + P11_TAG_LEN)
	{
		call->failed = "C_Encrypt";
		return CKR_GENERAL_ERROR;
	}
	call->out_len = P11_IV_LEN + ct_len;
	return CKR_OK;
}

/* unwrap: in = IV || ciphertext || tag */
static CK_RV
p11_op_unwrap(P11Call *call)
{
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	CK_ULONG	len = call->out_len;
	CK_RV		rv;

	if ((rv = p11_find_key(call, &key)) != CKR_OK || call->nfound != 1)
		return rv;
	if ((rv = p11_gcm_init(call, key, false, call->in)) != CKR_OK)
		return rv;
	rv = p11.fn->C_Decrypt(p11.session, (CK_BYTE_PTR) call->in + P11_IV_LEN,
						   call->in_len - P11_IV_LEN, call->out, &len);
	if (rv != CKR_OK)
	{
		call->failed = "C_Decrypt";
		return rv;
	}
	call->out_len = len;
	return CKR_OK;
}

/* a lookup that did not find exactly one key: DESTROYED or CONFIG */
static ByokKmsStatus
p11_not_one(P11Call *call, ByokKmsError *err)
{
	if (call->nfound == 0)
		byok_kms_set_error(err, BYOK_KMS_DESTROYED, "NOT_FOUND",
						   "Token \"%s\" holds no secret key labelled \"%s\".",
						   p11.token, call->key_ref);
	else
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "AMBIGUOUS_KEY",
						   "Token \"%s\" holds more than one secret key labelled \"%s\".",
						   p11.token, call->key_ref);
	return err->status;
}

/* AAD binding a wrapped TK to its tenant and version */
static int
p11_aad(const ByokKmsContext *ctx, uint8 *aad)
{
	return byok_kms_context_aad("byok-pkcs11-v1", ctx, aad);
}

static ByokKmsStatus
p11_check_context(const ByokKmsContext *ctx, ByokKmsError *err)
{
	if (ctx == NULL || ctx->tenant == NULL || strlen(ctx->tenant) > BYOK_MAX_TENANT_NAME)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CONTEXT",
						   "A tenant name of at most %d bytes is required.", BYOK_MAX_TENANT_NAME);
		return err->status;
	}
	return BYOK_KMS_OK;
}

/*
 * A key reference is a CKA_LABEL: 1 to 255 printable bytes (UTF-8 allowed,
 * no control characters).  Also checks the module and token GUCs.
 */
static ByokKmsStatus
p11_check_key_ref(const char *key_ref, ByokKmsError *err)
{
	for (const unsigned char *p = (const unsigned char *) key_ref; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7f)
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_LABEL",
							   "A PKCS#11 key label may not contain control characters.");
			return err->status;
		}
	}
	return p11_check_config(err);
}

/*
 * The CMK's state from its usage attributes.  version_hint is unused: a
 * PKCS#11 key has no provider-side versions.
 */
static ByokKmsStatus
p11_key_state(const char *key_ref, int32 version_hint, ByokKeyState *state, ByokKmsError *err)
{
	P11Job	   *job = NULL;
	P11Call    *call;
	ByokKmsStatus st = BYOK_KMS_OK;

	if (p11_check_key_ref(key_ref, err) != BYOK_KMS_OK ||
		(job = p11_job_new(key_ref, 0, err)) == NULL ||
		p11_dispatch(p11_op_state, &job, err) != BYOK_KMS_OK)
	{
		if (job)
			p11_job_free(job);
		return err->status;
	}
	call = &job->call;
	if (call->nfound > 1)
		st = p11_not_one(call, err);
	else if (call->nfound == 0)
		*state = BYOK_KEY_DESTROYED;
	else if (call->key_type != CKK_AES)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NOT_AES_KEY",
						   "Key \"%s\" on token \"%s\" is not an AES key.", key_ref, p11.token);
		st = err->status;
	}
	else if (call->can_encrypt && call->can_decrypt)
		*state = BYOK_KEY_ENABLED;
	else
		*state = BYOK_KEY_DISABLED;
	p11_job_free(job);
	return st;
}

/*
 * key_state_many's scan: every secret key on the token, once.  SoftHSM's
 * file store checks each object on disk at every lookup, so one lookup
 * costs about 12 us per object on the token; asking for N keys one by one
 * would cost O(N^2) per poll.  Handles are collected first (the find
 * operation is closed before any attribute is read) and not kept.
 */
static CK_RV
p11_op_scan(P11Call *call)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}};
	CK_OBJECT_HANDLE *handles;
	CK_ULONG	nhandles = 0;
	CK_ULONG	room = 64;
	CK_RV		rv;

	for (int i = 0; i < call->nqueries; i++)
		call->matches[i].nfound = 0;
	call->nfound = 1;
	if ((rv = p11.fn->C_FindObjectsInit(p11.session, tmpl, lengthof(tmpl))) != CKR_OK)
	{
		call->failed = "C_FindObjectsInit";
		return rv;
	}
	/* malloc, not palloc: this runs in a helper thread */
	handles = malloc(room * sizeof(CK_OBJECT_HANDLE));
	for (;;)
	{
		CK_ULONG	n = 0;

		if (handles != NULL && nhandles == room)
		{
			CK_OBJECT_HANDLE *more = realloc(handles, 2 * room * sizeof(CK_OBJECT_HANDLE));

			if (more == NULL)
				free(handles);
			handles = more;
			room *= 2;
		}
		if (handles == NULL)
		{
			(void) p11.fn->C_FindObjectsFinal(p11.session);
			call->failed = "malloc";
			return CKR_HOST_MEMORY;
		}
		rv = p11.fn->C_FindObjects(p11.session, handles + nhandles, room - nhandles, &n);
		if (rv != CKR_OK || n == 0)
			break;
		nhandles += n;
	}
	(void) p11.fn->C_FindObjectsFinal(p11.session);
	if (rv != CKR_OK)
	{
		free(handles);
		call->failed = "C_FindObjects";
		return rv;
	}

	for (CK_ULONG h = 0; h < nhandles; h++)
	{
		char		label[BYOK_MAX_KEY_REF + 1];
		CK_KEY_TYPE key_type = 0;
		CK_BBOOL	enc = CK_FALSE,
					dec = CK_FALSE;
		CK_ATTRIBUTE attrs[] = {
			{CKA_LABEL, label, BYOK_MAX_KEY_REF},
			{CKA_KEY_TYPE, &key_type, sizeof(key_type)},
			{CKA_ENCRYPT, &enc, sizeof(enc)},
			{CKA_DECRYPT, &dec, sizeof(dec)},
		};

		rv = p11.fn->C_GetAttributeValue(p11.session, handles[h], attrs, lengthof(attrs));
		if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_BUFFER_TOO_SMALL)
			continue;			/* destroyed meanwhile, or a label too long to match */
		if (rv != CKR_OK)
		{
			free(handles);
			call->failed = "C_GetAttributeValue";
			return rv;
		}
		label[attrs[0].ulValueLen] = '\0';
		for (int i = 0; i < call->nqueries; i++)
		{
			P11Match   *m = &call->matches[i];

			if (m->skip || strcmp(call->refs + (size_t) i * P11_REF_ROOM, label) != 0)
				continue;
			if (m->nfound++ == 0)
			{
				m->key_type = key_type;
				m->can_encrypt = enc;
				m->can_decrypt = dec;
			}
		}
	}
	free(handles);
	for (int i = 0; i < call->nqueries; i++)
		if (!call->matches[i].skip && call->matches[i].nfound == 0)
			call->nfound = 0;	/* p11_run confirms a missing key */
	return CKR_OK;
}

/*
 * The poller's batch: all states from one scan of the token.  Each query
 * gets the batch's duration.
 */
static void
p11_key_state_many(ByokKmsStateQuery *queries, int n)
{
	P11Job	   *job;
	ByokKmsError err;
	ByokKmsStatus st;
	instr_time	start;
	instr_time	took;
	bool		any = false;

	INSTR_TIME_SET_CURRENT(start);
	memset(&err, 0, sizeof(err));
	strlcpy(err.provider, n > 0 ? queries[0].err.provider : "pkcs11", sizeof(err.provider));
	job = p11_job_new("*", Max(n, 1), &err);
	for (int i = 0; i < n; i++)
	{
		queries[i].status = p11_check_key_ref(queries[i].key_ref, &queries[i].err);
		if (job == NULL && queries[i].status == BYOK_KMS_OK)
		{
			queries[i].status = err.status;
			queries[i].err = err;
			continue;
		}
		if (job == NULL)
			continue;
		if (queries[i].status == BYOK_KMS_OK && strlen(queries[i].key_ref) >= P11_REF_ROOM)
		{
			byok_kms_set_error(&queries[i].err, BYOK_KMS_CONFIG, "BAD_KEY_LABEL",
							   "A PKCS#11 key label is at most %d bytes.", P11_REF_ROOM - 1);
			queries[i].status = BYOK_KMS_CONFIG;
		}
		job->matches[i].skip = queries[i].status != BYOK_KMS_OK;
		if (!job->matches[i].skip)
			strlcpy(job->refs + (size_t) i * P11_REF_ROOM, queries[i].key_ref, P11_REF_ROOM);
		any |= !job->matches[i].skip;
	}
	if (job != NULL && any)
	{
		job->call.nqueries = n;
		st = p11_dispatch(p11_op_scan, &job, &err);
		for (int i = 0; i < n; i++)
		{
			P11Match   *m = job ? &job->matches[i] : NULL;
			ByokKmsStateQuery *q = &queries[i];
			P11Call		one = {.key_ref = q->key_ref};

			if (q->status != BYOK_KMS_OK || (m && m->skip))
				continue;
			if (m)
				one.nfound = m->nfound;
			q->status = st;
			if (st != BYOK_KMS_OK || m == NULL)
				q->err = err;
			else if (m->nfound == 0)
				q->state = BYOK_KEY_DESTROYED;
			else if (m->nfound > 1)
				q->status = p11_not_one(&one, &q->err);
			else if (m->key_type != CKK_AES)
			{
				byok_kms_set_error(&q->err, BYOK_KMS_CONFIG, "NOT_AES_KEY",
								   "Key \"%s\" on token \"%s\" is not an AES key.",
								   q->key_ref, p11.token);
				q->status = BYOK_KMS_CONFIG;
			}
			else
				q->state = (m->can_encrypt && m->can_decrypt) ? BYOK_KEY_ENABLED : BYOK_KEY_DISABLED;
		}
	}
	if (job != NULL)
		p11_job_free(job);
	INSTR_TIME_SET_CURRENT(took);
	INSTR_TIME_SUBTRACT(took, start);
	for (int i = 0; i < n; i++)
		queries[i].us = INSTR_TIME_GET_MICROSEC(took);
}

static ByokKmsStatus
p11_wrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *plain, int plain_len,
		 uint8 *out, int *out_len, ByokKmsError *err)
{
	P11Job	   *job;
	ByokKmsStatus st = BYOK_KMS_OK;

	if (plain_len <= 0 || 1 + P11_IV_LEN + plain_len + P11_TAG_LEN > BYOK_MAX_WRAPPED)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "TOO_LONG", "The key to wrap is empty or too long.");
		return err->status;
	}
	if (p11_check_key_ref(key_ref, err) != BYOK_KMS_OK ||
		p11_check_context(ctx, err) != BYOK_KMS_OK)
		return err->status;
	if ((job = p11_job_new(key_ref, 0, err)) == NULL)
		return err->status;
	job->call.aad = job->aad;
	job->call.aad_len = p11_aad(ctx, job->aad);
	memcpy(job->in, plain, plain_len);
	job->call.in = job->in;
	job->call.in_len = plain_len;
	job->call.out = job->out;
	job->call.out_len = BYOK_MAX_WRAPPED - 1;
	if (p11_dispatch(p11_op_wrap, &job, err) != BYOK_KMS_OK)
		st = err->status;
	else if (job->call.nfound != 1)
		st = p11_not_one(&job->call, err);
	else
	{
		out[0] = P11_WRAP_FORMAT;
		memcpy(out + 1, job->out, job->call.out_len);
		*out_len = 1 + (int) job->call.out_len;
	}
	if (job != NULL)
		p11_job_free(job);
	return st;
}

static ByokKmsStatus
p11_unwrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *wrapped, int wrapped_len,
		   uint8 *out, int *out_len, ByokKmsError *err)
{
	P11Job	   *job;
	ByokKmsStatus st = BYOK_KMS_OK;

	if (wrapped_len < 1 + P11_IV_LEN + 1 + P11_TAG_LEN || wrapped_len > BYOK_MAX_WRAPPED ||
		wrapped[0] != P11_WRAP_FORMAT)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_WRAPPED_KEY",
						   "The wrapped key is not in the pkcs11 provider's format.");
		return err->status;
	}
	if (p11_check_key_ref(key_ref, err) != BYOK_KMS_OK ||
		p11_check_context(ctx, err) != BYOK_KMS_OK)
		return err->status;
	if ((job = p11_job_new(key_ref, 0, err)) == NULL)
		return err->status;
	job->call.aad = job->aad;
	job->call.aad_len = p11_aad(ctx, job->aad);
	memcpy(job->in, wrapped + 1, wrapped_len - 1);
	job->call.in = job->in;
	job->call.in_len = wrapped_len - 1;
	job->call.out = job->out;
	job->call.out_len = BYOK_MAX_WRAPPED;
	if (p11_dispatch(p11_op_unwrap, &job, err) != BYOK_KMS_OK)
		st = err->status;
	else if (job->call.nfound != 1)
		st = p11_not_one(&job->call, err);
	else if (job->call.out_len != (CK_ULONG) (wrapped_len - 1 - P11_IV_LEN - P11_TAG_LEN))
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_LENGTH",
						   "C_Decrypt returned a key of unexpected length.");
		st = err->status;
	}
	else
	{
		memcpy(out, job->out, job->call.out_len);
		*out_len = (int) job->call.out_len;
	}
	if (job != NULL)
		p11_job_free(job);
	return st;
}

static const ByokKmsRoutine pkcs11_routine = {
	.name = "pkcs11",
	.check_key_ref = p11_check_key_ref,
	.wrap = p11_wrap,
	.unwrap = p11_unwrap,
	.key_state = p11_key_state,
	.key_state_many = p11_key_state_many,
};

void
byok_kms_pkcs11_install(void)
{
	byok_kms_register(&pkcs11_routine);
}
