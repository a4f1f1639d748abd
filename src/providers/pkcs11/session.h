/*-------------------------------------------------------------------------
 *
 * providers/pkcs11/session.h
 *		Internal to the pkcs11 provider: the process's link to the PKCS#11
 *		module (pkcs11/session.c) as the operations (pkcs11.c) see it.
 *
 * session.c owns the module, the logged-in session and the helper thread
 * that makes a call bounded; pkcs11.c owns the key lookups and the crypto
 * (the P11Op functions run on the session) and the provider routine.  An
 * operation fills a P11Job made by p11_job_new(), runs it with
 * p11_dispatch() and frees it with p11_job_free().  Included by these two
 * files only.
 *
 * Locking: none.  Only one thread ever calls the module at a time (see
 * session.c); the p11 state is touched only by the thread running a call.
 *
 * Key lifetime: a job may hold a plaintext TK (in, out); p11_job_free()
 * wipes it.  An abandoned job is freed (and wiped) by its thread.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_PROVIDERS_PKCS11_SESSION_H
#define BYOK_PROVIDERS_PKCS11_SESSION_H

#include <pthread.h>

#include <p11-kit/pkcs11.h>

#include "providers/kms.h"

#define P11_IV_LEN			12	/* = BYOK_GCM_NONCE_LEN */
#define P11_TAG_LEN			16	/* = BYOK_GCM_TAG_LEN */
#define P11_TOKEN_LABEL_LEN	32	/* CK_TOKEN_INFO.label, blank padded */
#define P11_MAX_PIN			256
#define P11_REF_ROOM		(BYOK_MAX_KEY_REF + 1)	/* one label in P11Call.refs */

/* this process's link to the module; see session.c's header for the rules */
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

extern P11State p11;

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

/* byok.pkcs11_module must be an absolute path and the token label set */
extern ByokKmsStatus p11_check_config(ByokKmsError *err);

/* A zeroed job for key_ref, or NULL (err set) when memory is short. */
extern P11Job *p11_job_new(const char *key_ref, int nqueries, ByokKmsError *err);

/* Free a job, wiping it (it may hold a plaintext TK). */
extern void p11_job_free(P11Job *job);

/*
 * Run 'op' on *jobp within byok.kms_timeout.  On return *jobp is the job
 * with its results, to be freed by the caller with p11_job_free(), or NULL
 * when the call was abandoned (UNAVAILABLE: timed out or interrupted).
 */
extern ByokKmsStatus p11_dispatch(P11Op op, P11Job **jobp, ByokKmsError *err);

#endif							/* BYOK_PROVIDERS_PKCS11_SESSION_H */
