/*-------------------------------------------------------------------------
 *
 * providers/pkcs11/session.c
 *		The pkcs11 provider's link to the PKCS#11 module: loading and
 *		initialising it, the logged-in session, retries, and the helper
 *		thread that bounds every call by byok.kms_timeout.
 *
 * The operations themselves (key lookup, AES-GCM wrap/unwrap, key state)
 * are P11Op functions in pkcs11.c; they run through p11_dispatch() here,
 * on the session p11_connect() opened (see pkcs11/session.h).
 *
 * Set-up comes from three GUCs: byok.pkcs11_module (the PKCS#11 library,
 * an absolute path, loaded with dlopen), byok.pkcs11_token_label (the token,
 * found by its label because slot ids are not stable) and
 * byok.pkcs11_pin_file (a file holding the user PIN on its first line).
 * A token that cannot be found, or a module that cannot be loaded, makes
 * the provider unavailable: that is never a revocation.
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
 * caller's buffers and the job's, which is wiped when freed (p11_job_free,
 * also by the thread of an abandoned call).  Messages name the module,
 * token and key labels and PKCS#11 return codes, never a PIN or key byte.
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

#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "providers/pkcs11/session.h"

#define P11_WAIT_SLICE_MS	25

P11State	p11 = {.session = CK_INVALID_HANDLE};

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

ByokKmsStatus
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
	/* non-blocking: a FIFO must not hold the backend (fstat refuses it next) */
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
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

/* A zeroed job for key_ref, or NULL (err set) when memory is short. */
P11Job *
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

void
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
ByokKmsStatus
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
