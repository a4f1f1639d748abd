/*-------------------------------------------------------------------------
 *
 * providers/kmip.c
 *		The "kmip" key provider: KMIP 1.4 (TTLV) over mutual TLS.
 *
 * Enterprise key managers and HSMs (and the PyKMIP server) speak KMIP.  The
 * CMK is a symmetric AES key held by the server; byok never sees it.
 *
 * Operations.  wrap = Encrypt (AES-GCM, 16-byte tag, a random 12-byte IV,
 * AAD binding the tenant and the TK version); unwrap = Decrypt with the
 * same IV, AAD and tag (the server checks the tag); key state =
 * GetAttributes("State"); names are resolved with Locate.  The poller's
 * round asks about many CMKs in one message (up to byok.kmip_batch_size
 * batch items, at most 48 so an answer fits KMIP_MAX_NODES; Batch Error
 * Continuation Option "Continue").
 *
 * key_ref is the object's Unique Identifier, or "name:<Name>" resolved with
 * Locate (exactly one object must carry that Name).  A resolved name is
 * pinned for the life of the process, and the wrapped TK records the
 * unique identifier it was wrapped under, so a key destroyed and replaced
 * by another of the same name reads as destroyed, not as a new key.
 *
 * States: Active -> ENABLED; Deactivated and Compromised (after Revoke) ->
 * DISABLED, which KMIP never undoes, so a revocation is final; Destroyed,
 * Destroyed Compromised and Item Not Found -> DESTROYED; Pre-Active -> a
 * configuration error telling the administrator to activate the key.  An
 * Encrypt or Decrypt refused with Permission Denied is followed by a
 * GetAttributes("State") on the same connection to tell a revoked key from
 * a certificate that may not use it.
 *
 * Transport (kmip/conn.c): one kept mutual-TLS connection per process,
 * failover along byok.kmip_host, non-blocking I/O bounded by
 * byok.kms_timeout and stopped by a cancel within 50 ms.  An exchange that
 * was interrupted returns KIO_INTERRUPTED: the functions here free and wipe
 * what they hold, then run CHECK_FOR_INTERRUPTS.
 *
 * Secrets and key lifetime: requests and answers carry TKs in clear; their buffers (malloc'd
 * encoder buffers, palloc'd answers) are wiped before release, also when an
 * error is raised mid-call.  Error texts carry KMIP result reasons and the
 * server's result message (sanitised), never a value.
 *
 * Wrapped form: format byte (1), uid length (1), uid, IV (12), tag (16),
 * ciphertext.
 *
 * Locking: none; callers hold no LWLock while calling in here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "providers/answers.h"
#include "providers/kmip/conn.h"
#include "providers/kmip/ttlv.h"

#define KMIP_WRAP_FORMAT	1
#define KMIP_IV_LEN			12
#define KMIP_GCM_TAG_LEN	16
#define KMIP_UID_MAX		128
#define KMIP_NAME_PREFIX	"name:"
#define KMIP_PIN_SLOTS		64

/* tags and values kmip/ttlv.h does not carry */
#define TAG_BATCH_ERROR_CONTINUATION	0x42000E
#define TAG_UNIQUE_BATCH_ITEM_ID		0x420093
#define BATCH_CONTINUE					1
#define NAME_TYPE_TEXT					1

/* ------------------------------------------------------------ state */

/* names resolved by Locate, pinned for the life of the process */
typedef struct KmipPin
{
	char		name[256];
	char		uid[KMIP_UID_MAX + 1];
} KmipPin;

static KmipPin kpins[KMIP_PIN_SLOTS];
static int	kpin_next = 0;

/* one batch item of an answer */
typedef struct KmipItem
{
	int			node;			/* batch item node, -1 if missing */
	int			payload;		/* response payload node, -1 if none */
	uint32		status;
	uint32		reason;
	char		message[160];
} KmipItem;

/* ------------------------------------------------------------ errors */

static const char *
kmip_reason_name(uint32 reason)
{
	static const char *const names[] = {
		NULL, "Item Not Found", "Response Too Large", "Authentication Not Successful",
		"Invalid Message", "Operation Not Supported", "Missing Data", "Invalid Field",
		"Feature Not Supported", "Operation Canceled By Requester", "Cryptographic Failure",
		"Illegal Operation", "Permission Denied", "Object Archived", "Index Out Of Bounds",
		"Application Namespace Not Supported", "Key Format Type Not Supported",
		"Key Compression Type Not Supported", "Encoding Option Error", "Key Value Not Present",
		"Attestation Required", "Attestation Failed", "Sensitive", "Not Extractable",
		"Object Already Exists"
	};

	if (reason == KMIP_REASON_GENERAL_FAILURE)
		return "General Failure";
	if (reason > 0 && reason < lengthof(names))
		return names[reason];
	return "Unknown";
}

/* Turn a failed batch item into an error class. */
static ByokKmsStatus
kmip_item_error(const KmipItem *it, const char *op, ByokKmsError *err)
{
	ByokKmsStatus st;
	char		code[64];

	switch (it->reason)
	{
		case KMIP_REASON_ITEM_NOT_FOUND:
			st = BYOK_KMS_DESTROYED;
			break;
		case KMIP_REASON_AUTH_FAILED:
		case KMIP_REASON_PERMISSION_DENIED:
			st = BYOK_KMS_PERMISSION;
			break;
		case 13:				/* Object Archived */
			st = BYOK_KMS_DISABLED;
			break;
		case 5:					/* Operation Not Supported */
		case 8:					/* Feature Not Supported */
			st = BYOK_KMS_CONFIG;
			break;
		default:
			st = BYOK_KMS_BAD_RESPONSE;
			break;
	}
	snprintf(code, sizeof(code), "KMIP reason %u (%s)", it->reason, kmip_reason_name(it->reason));
	byok_kms_set_error(err, st, code, "%s failed%s%s", op,
					   it->message[0] ? ": " : ".", it->message);
	return st;
}

/* ------------------------------------------------------------ messages */

static void
kmip_begin_request(KmipBuf *b, int count)
{
	kmip_buf_init(b, KMIP_MAX_MESSAGE);
	kmip_begin_struct(b, KMIP_TAG_REQUEST_MESSAGE);
	kmip_begin_struct(b, KMIP_TAG_REQUEST_HEADER);
	kmip_begin_struct(b, KMIP_TAG_PROTOCOL_VERSION);
	kmip_put_int32(b, KMIP_TAG_PROTOCOL_VERSION_MAJOR, 1);
	kmip_put_int32(b, KMIP_TAG_PROTOCOL_VERSION_MINOR, 4);
	kmip_end_struct(b);
	if (count > 1)
		kmip_put_enum(b, TAG_BATCH_ERROR_CONTINUATION, BATCH_CONTINUE);
	kmip_put_int32(b, KMIP_TAG_BATCH_COUNT, count);
	kmip_end_struct(b);
}

/* Opens a batch item and its payload; close both with kmip_end_item. */
static void
kmip_begin_item(KmipBuf *b, uint32 op, int index, int count)
{
	kmip_begin_struct(b, KMIP_TAG_BATCH_ITEM);
	kmip_put_enum(b, KMIP_TAG_OPERATION, op);
	if (count > 1)
	{
		uint8		id[4];

		id[0] = index >> 24;
		id[1] = index >> 16;
		id[2] = index >> 8;
		id[3] = index;
		kmip_put_bytes(b, TAG_UNIQUE_BATCH_ITEM_ID, id, sizeof(id));
	}
	kmip_begin_struct(b, KMIP_TAG_REQUEST_PAYLOAD);
}

static void
kmip_end_item(KmipBuf *b)
{
	kmip_end_struct(b);
	kmip_end_struct(b);
}

static void
kmip_put_gcm_params(KmipBuf *b)
{
	kmip_begin_struct(b, KMIP_TAG_CRYPTOGRAPHIC_PARAMETERS);
	kmip_put_enum(b, KMIP_TAG_BLOCK_CIPHER_MODE, KMIP_MODE_GCM);
	kmip_put_enum(b, KMIP_TAG_CRYPTOGRAPHIC_ALGORITHM, KMIP_ALG_AES);
	kmip_put_int32(b, KMIP_TAG_TAG_LENGTH, KMIP_GCM_TAG_LEN);
	kmip_end_struct(b);
}

static void
kmip_put_state_query(KmipBuf *b, const char *uid, int index, int count)
{
	kmip_begin_item(b, KMIP_OP_GET_ATTRIBUTES, index, count);
	kmip_put_text(b, KMIP_TAG_UNIQUE_IDENTIFIER, uid, strlen(uid));
	kmip_put_text(b, KMIP_TAG_ATTRIBUTE_NAME, "State", 5);
	kmip_end_item(b);
}

/*
 * Send the finished request and decode the answer into 'doc' (palloc'd by
 * the caller); the answer buffer is returned for wiping.  Frees the request.
 */
static KmipIo
kmip_call(KmipBuf *req, KmipDoc *doc, uint8 **answer, size_t *answer_len, ByokKmsError *err)
{
	KmipError	ke;
	KmipIo		io;

	*answer = NULL;
	if (kmip_end_struct(req) != KMIP_OK || kmip_buf_finish(req) != KMIP_OK)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "REQUEST_TOO_LARGE",
						   "The KMIP request could not be encoded: %s.", kmip_strerror(req->err));
		kmip_buf_free(req);
		return KIO_FAILED;
	}
	/* an error raised inside (out of memory) must not leave the request unwiped */
	PG_TRY();
	{
		io = byok_kmip_roundtrip(req, answer, answer_len, err);
	}
	PG_CATCH();
	{
		kmip_buf_free(req);
		byok_kmip_drop_connection();
		PG_RE_THROW();
	}
	PG_END_TRY();
	kmip_buf_free(req);
	if (io != KIO_OK)
		return io;
	ke = kmip_decode(doc, *answer, *answer_len);
	if (ke != KMIP_OK || doc->nodes[0].tag != KMIP_TAG_RESPONSE_MESSAGE)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_MESSAGE",
						   "The KMIP server's answer could not be decoded: %s.",
						   ke != KMIP_OK ? kmip_strerror(ke) : "not a Response Message");
		byok_kmip_drop_connection(); /* framing can no longer be trusted */
		return KIO_FAILED;
	}
	return KIO_OK;
}

static void
kmip_free_answer(uint8 *answer, size_t len)
{
	if (answer)
	{
		explicit_bzero(answer, len);
		pfree(answer);
	}
}

/* Read batch item 'node' of an answer. */
static void
kmip_read_item(const KmipDoc *doc, int node, KmipItem *it)
{
	int			m;

	memset(it, 0, sizeof(*it));
	it->node = node;
	it->payload = -1;
	if (node < 0 || kmip_child_enum(doc, node, KMIP_TAG_RESULT_STATUS, &it->status) != KMIP_OK)
	{
		it->status = KMIP_RESULT_FAILED;
		it->reason = KMIP_REASON_GENERAL_FAILURE;
		strlcpy(it->message, "the answer has no result for this request", sizeof(it->message));
		return;
	}
	if (kmip_child_enum(doc, node, KMIP_TAG_RESULT_REASON, &it->reason) != KMIP_OK)
		it->reason = it->status == KMIP_RESULT_SUCCESS ? 0 : KMIP_REASON_GENERAL_FAILURE;
	m = kmip_find_child(doc, node, KMIP_TAG_RESULT_MESSAGE);
	if (m >= 0)
	{
		const char *s;
		size_t		len;

		if (kmip_get_text(doc, m, &s, &len) == KMIP_OK)
			byok_text_sanitise(s, len, it->message, sizeof(it->message));
	}
	it->payload = kmip_find_child(doc, node, KMIP_TAG_RESPONSE_PAYLOAD);
}

/* The single batch item of an answer: OK, or err set. */
static ByokKmsStatus
kmip_single_result(const KmipDoc *doc, const char *op, KmipItem *it, ByokKmsError *err)
{
	kmip_read_item(doc, kmip_find_child(doc, 0, KMIP_TAG_BATCH_ITEM), it);
	if (it->status != KMIP_RESULT_SUCCESS)
		return kmip_item_error(it, op, err);
	if (it->payload < 0)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_MESSAGE",
						   "The KMIP server's %s answer has no payload.", op);
		return err->status;
	}
	return BYOK_KMS_OK;
}

/* The State attribute of a GetAttributes payload, as a byok key state. */
static ByokKmsStatus
kmip_read_state(const KmipDoc *doc, int payload, ByokKeyState *state, ByokKmsError *err)
{
	uint32		kstate = 0;
	bool		found = false;

	for (int a = kmip_find_child(doc, payload, KMIP_TAG_ATTRIBUTE); a >= 0; a = kmip_find_next(doc, a))
	{
		const char *name;
		size_t		len;

		if (kmip_child_text(doc, a, KMIP_TAG_ATTRIBUTE_NAME, &name, &len) == KMIP_OK &&
			len == 5 && memcmp(name, "State", 5) == 0 &&
			kmip_child_enum(doc, a, KMIP_TAG_ATTRIBUTE_VALUE, &kstate) == KMIP_OK)
		{
			found = true;
			break;
		}
	}
	if (!found)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "NO_STATE",
						   "GetAttributes returned no State attribute.");
		return err->status;
	}
	switch (kstate)
	{
		case KMIP_STATE_ACTIVE:
			*state = BYOK_KEY_ENABLED;
			return BYOK_KMS_OK;
		case KMIP_STATE_DEACTIVATED:
		case KMIP_STATE_COMPROMISED:
			*state = BYOK_KEY_DISABLED;
			return BYOK_KMS_OK;
		case KMIP_STATE_DESTROYED:
		case KMIP_STATE_DESTROYED_COMPROMISED:
			*state = BYOK_KEY_DESTROYED;
			return BYOK_KMS_OK;
		case KMIP_STATE_PRE_ACTIVE:
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "PRE_ACTIVE",
							   "The KMIP key is Pre-Active and cannot be used yet: activate it on the KMIP server (Activate operation) first.");
			return err->status;
		default:
			byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_STATE",
							   "GetAttributes returned an unknown State %u.", kstate);
			return err->status;
	}
}

/* ------------------------------------------------------------ key references */

static bool
kmip_is_name(const char *key_ref)
{
	return strncmp(key_ref, KMIP_NAME_PREFIX, strlen(KMIP_NAME_PREFIX)) == 0;
}

static ByokKmsStatus
kmip_check_key_ref(const char *key_ref, ByokKmsError *err)
{
	const char *v = kmip_is_name(key_ref) ? key_ref + strlen(KMIP_NAME_PREFIX) : key_ref;
	size_t		max = kmip_is_name(key_ref) ? sizeof(kpins[0].name) - 1 : KMIP_UID_MAX;

	if (v[0] == '\0' || strlen(v) > max)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_REF",
						   "A KMIP key reference is the key's Unique Identifier (at most %d bytes) or name:<Name> (at most %zu bytes).",
						   KMIP_UID_MAX, sizeof(kpins[0].name) - 1);
		return err->status;
	}
	for (const char *p = v; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
		{
			byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_REF",
							   "A KMIP key reference cannot contain control characters.");
			return err->status;
		}
	return BYOK_KMS_OK;
}

/* Locate the one object named 'name'; false with err set. */
static KmipIo
kmip_locate(const char *name, char *uid, ByokKmsError *err)
{
	KmipBuf		req;
	KmipDoc    *doc = palloc(sizeof(KmipDoc));
	uint8	   *answer;
	size_t		answer_len = 0;
	KmipItem	it;
	KmipIo		io;
	int			n;
	int			count = 0;

	kmip_begin_request(&req, 1);
	kmip_begin_item(&req, KMIP_OP_LOCATE, 0, 1);
	kmip_begin_struct(&req, KMIP_TAG_ATTRIBUTE);
	kmip_put_text(&req, KMIP_TAG_ATTRIBUTE_NAME, "Name", 4);
	kmip_begin_struct(&req, KMIP_TAG_ATTRIBUTE_VALUE);
	kmip_put_text(&req, KMIP_TAG_NAME_VALUE, name, strlen(name));
	kmip_put_enum(&req, KMIP_TAG_NAME_TYPE, NAME_TYPE_TEXT);
	kmip_end_struct(&req);
	kmip_end_struct(&req);
	kmip_end_item(&req);
	io = kmip_call(&req, doc, &answer, &answer_len, err);
	if (io == KIO_OK && kmip_single_result(doc, "Locate", &it, err) != BYOK_KMS_OK)
		io = KIO_FAILED;
	if (io == KIO_OK)
	{
		for (n = kmip_find_child(doc, it.payload, KMIP_TAG_UNIQUE_IDENTIFIER); n >= 0; n = kmip_find_next(doc, n))
			if (count++ == 0 &&
				kmip_get_text_copy(doc, n, uid, KMIP_UID_MAX + 1) != KMIP_OK)
				count = 99;
		if (count != 1)
		{
			if (count == 0)
				byok_kms_set_error(err, BYOK_KMS_CONFIG, "NAME_NOT_FOUND",
								   "No KMIP object named \"%s\" is visible to byok.kmip_cert_file's identity.", name);
			else
				byok_kms_set_error(err, BYOK_KMS_CONFIG, "NAME_AMBIGUOUS",
								   "More than one KMIP object is named \"%s\", or its identifier is too long: use the Unique Identifier.",
								   name);
			io = KIO_FAILED;
		}
	}
	kmip_free_answer(answer, answer_len);
	pfree(doc);
	return io;
}

/*
 * The unique identifier of key_ref: itself, or a name's pinned or newly
 * located object.
 */
static KmipIo
kmip_resolve(const char *key_ref, char *uid, ByokKmsError *err)
{
	const char *name;
	KmipIo		io;

	if (!kmip_is_name(key_ref))
	{
		strlcpy(uid, key_ref, KMIP_UID_MAX + 1);
		return KIO_OK;
	}
	name = key_ref + strlen(KMIP_NAME_PREFIX);
	for (int i = 0; i < KMIP_PIN_SLOTS; i++)
		if (kpins[i].uid[0] && strcmp(kpins[i].name, name) == 0)
		{
			strlcpy(uid, kpins[i].uid, KMIP_UID_MAX + 1);
			return KIO_OK;
		}
	io = kmip_locate(name, uid, err);
	if (io == KIO_OK)
	{
		strlcpy(kpins[kpin_next].name, name, sizeof(kpins[0].name));
		strlcpy(kpins[kpin_next].uid, uid, sizeof(kpins[0].uid));
		kpin_next = (kpin_next + 1) % KMIP_PIN_SLOTS;
	}
	return io;
}

/* ------------------------------------------------------------ state */

/* GetAttributes("State") of one object. */
static KmipIo
kmip_get_state(const char *uid, ByokKeyState *state, ByokKmsStatus *st, ByokKmsError *err)
{
	KmipBuf		req;
	KmipDoc    *doc = palloc(sizeof(KmipDoc));
	uint8	   *answer;
	size_t		answer_len = 0;
	KmipItem	it;
	KmipIo		io;

	kmip_begin_request(&req, 1);
	kmip_put_state_query(&req, uid, 0, 1);
	io = kmip_call(&req, doc, &answer, &answer_len, err);
	if (io == KIO_OK)
	{
		*st = kmip_single_result(doc, "GetAttributes", &it, err);
		if (*st == BYOK_KMS_OK)
			*st = kmip_read_state(doc, it.payload, state, err);
	}
	else
		*st = err->status;
	kmip_free_answer(answer, answer_len);
	pfree(doc);
	return io;
}

/*
 * Encrypt or Decrypt was refused with Permission Denied: a revoked or
 * pre-active key is refused that way too, so ask for its state.
 */
static ByokKmsStatus
kmip_explain_refusal(const char *uid, ByokKmsError *err)
{
	ByokKmsError serr;
	ByokKeyState state;
	ByokKmsStatus st;

	memset(&serr, 0, sizeof(serr));
	strlcpy(serr.provider, err->provider, sizeof(serr.provider));
	if (kmip_get_state(uid, &state, &st, &serr) != KIO_OK && st == BYOK_KMS_UNAVAILABLE)
		return err->status;
	if (st == BYOK_KMS_CONFIG)
		*err = serr;			/* pre-active */
	else if (st == BYOK_KMS_OK && state == BYOK_KEY_DISABLED)
		byok_kms_set_error(err, BYOK_KMS_DISABLED, "KMIP state Deactivated/Compromised",
						   "The KMIP key was revoked; KMIP keys cannot be re-activated.");
	else if (st == BYOK_KMS_OK && state == BYOK_KEY_DESTROYED)
		byok_kms_set_error(err, BYOK_KMS_DESTROYED, "KMIP state Destroyed",
						   "The KMIP key was destroyed.");
	else if (st == BYOK_KMS_DESTROYED)
		*err = serr;
	return err->status;
}

static ByokKmsStatus
kmip_key_state(const char *key_ref, int32 version_hint, ByokKeyState *state, ByokKmsError *err)
{
	char		uid[KMIP_UID_MAX + 1];
	ByokKmsStatus st;
	KmipIo		io;

	if (kmip_check_key_ref(key_ref, err) != BYOK_KMS_OK)
		return err->status;
	io = kmip_resolve(key_ref, uid, err);
	if (io == KIO_OK)
	{
		io = kmip_get_state(uid, state, &st, err);
		if (st == BYOK_KMS_DESTROYED)
		{
			/* Item Not Found: the object is gone */
			*state = BYOK_KEY_DESTROYED;
			st = BYOK_KMS_OK;
		}
	}
	else
		st = err->status;
	if (io == KIO_INTERRUPTED)
		CHECK_FOR_INTERRUPTS();
	return st;
}

/*
 * The poller's round: GetAttributes("State") for many keys, up to
 * byok.kmip_batch_size per message, matched back by Unique Batch Item ID.
 */
static void
kmip_key_state_many(ByokKmsStateQuery *queries, int n)
{
	char	  (*uids)[KMIP_UID_MAX + 1] = palloc0(sizeof(*uids) * Max(n, 1));
	int		   *todo = palloc(sizeof(int) * Max(n, 1));
	int			ntodo = 0;
	KmipDoc    *doc = palloc(sizeof(KmipDoc));
	bool		interrupted = false;

	/* every question is unanswered until its answer arrives */
	for (int i = 0; i < n; i++)
	{
		queries[i].status = BYOK_KMS_UNAVAILABLE;
		queries[i].us = 0;
		byok_kms_set_error(&queries[i].err, BYOK_KMS_UNAVAILABLE, "INTERRUPTED",
						   "The call was interrupted.");
	}
	for (int i = 0; i < n && !interrupted; i++)
	{
		ByokKmsStateQuery *q = &queries[i];
		int64		t0 = GetCurrentTimestamp();
		ByokKmsStatus st = kmip_check_key_ref(q->key_ref, &q->err);

		if (st == BYOK_KMS_OK)
		{
			KmipIo		io = kmip_resolve(q->key_ref, uids[i], &q->err);

			interrupted = io == KIO_INTERRUPTED;
			st = io == KIO_OK ? BYOK_KMS_OK : q->err.status;
		}
		q->us = GetCurrentTimestamp() - t0;
		if (st == BYOK_KMS_OK)
			todo[ntodo++] = i;
		else
			q->status = st;
	}

	for (int start = 0; start < ntodo && !interrupted; start += byok_kmip_batch_size)
	{
		int			count = Min(byok_kmip_batch_size, ntodo - start);
		int64		t0 = GetCurrentTimestamp();
		KmipBuf		req;
		uint8	   *answer;
		size_t		answer_len = 0;
		ByokKmsError err;
		KmipIo		io;

		memset(&err, 0, sizeof(err));
		strlcpy(err.provider, "kmip", sizeof(err.provider));
		kmip_begin_request(&req, count);
		for (int j = 0; j < count; j++)
			kmip_put_state_query(&req, uids[todo[start + j]], j, count);
		io = kmip_call(&req, doc, &answer, &answer_len, &err);
		interrupted = io == KIO_INTERRUPTED;
		for (int j = 0; j < count; j++)
		{
			ByokKmsStateQuery *q = &queries[todo[start + j]];
			int			node = -1;
			KmipItem	it;

			q->us += GetCurrentTimestamp() - t0;
			if (io != KIO_OK)
			{
				q->status = err.status;
				q->err = err;
				continue;
			}
			/* find the item with our batch item id (or the only one) */
			for (int b = kmip_find_child(doc, 0, KMIP_TAG_BATCH_ITEM); b >= 0; b = kmip_find_next(doc, b))
			{
				const uint8 *id;
				size_t		idlen;

				if (count == 1 ||
					(kmip_child_bytes(doc, b, TAG_UNIQUE_BATCH_ITEM_ID, &id, &idlen) == KMIP_OK &&
					 idlen == 4 && ((id[0] << 24) | (id[1] << 16) | (id[2] << 8) | id[3]) == j))
				{
					node = b;
					break;
				}
			}
			kmip_read_item(doc, node, &it);
			if (it.status != KMIP_RESULT_SUCCESS)
				q->status = kmip_item_error(&it, "GetAttributes", &q->err);
			else if (it.payload < 0)
				q->status = (byok_kms_set_error(&q->err, BYOK_KMS_BAD_RESPONSE, "BAD_MESSAGE",
												"The KMIP server's GetAttributes answer has no payload."),
							 q->err.status);
			else
				q->status = kmip_read_state(doc, it.payload, &q->state, &q->err);
			if (q->status == BYOK_KMS_DESTROYED)
			{
				q->state = BYOK_KEY_DESTROYED;
				q->status = BYOK_KMS_OK;
			}
		}
		kmip_free_answer(answer, answer_len);
	}
	pfree(doc);
	pfree(todo);
	pfree(uids);
	if (interrupted)
		CHECK_FOR_INTERRUPTS();
}

/* ------------------------------------------------------------ wrap / unwrap */

/*
 * One server-side AES-GCM Encrypt (tag NULL) or Decrypt (tag given) under
 * object 'uid'.  On BYOK_KMS_OK, it->payload is the answer's payload in
 * doc; the answer buffer is returned for the caller to wipe.  A Permission
 * Denied refusal is explained by the key's state.
 */
static ByokKmsStatus
kmip_crypt(const char *uid, const uint8 *data, int len, const uint8 *iv, const uint8 *aad,
		   int aad_len, const uint8 *tag, KmipDoc *doc, uint8 **answer, size_t *answer_len,
		   KmipItem *it, KmipIo *io, ByokKmsError *err)
{
	const char *op = tag ? "Decrypt" : "Encrypt";
	KmipBuf		req;
	ByokKmsStatus st;

	kmip_begin_request(&req, 1);
	kmip_begin_item(&req, tag ? KMIP_OP_DECRYPT : KMIP_OP_ENCRYPT, 0, 1);
	kmip_put_text(&req, KMIP_TAG_UNIQUE_IDENTIFIER, uid, strlen(uid));
	kmip_put_gcm_params(&req);
	kmip_put_bytes(&req, KMIP_TAG_DATA, data, len);
	kmip_put_bytes(&req, KMIP_TAG_IV_COUNTER_NONCE, iv, KMIP_IV_LEN);
	kmip_put_bytes(&req, KMIP_TAG_AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad, aad_len);
	if (tag)
		kmip_put_bytes(&req, KMIP_TAG_AUTHENTICATED_ENCRYPTION_TAG, tag, KMIP_GCM_TAG_LEN);
	kmip_end_item(&req);
	*io = kmip_call(&req, doc, answer, answer_len, err);
	if (*io != KIO_OK)
		return err->status;
	st = kmip_single_result(doc, op, it, err);
	if (st == BYOK_KMS_PERMISSION)
		st = kmip_explain_refusal(uid, err);
	return st;
}

static ByokKmsStatus
kmip_wrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *plain, int plain_len,
		  uint8 *out, int *out_len, ByokKmsError *err)
{
	char		uid[KMIP_UID_MAX + 1];
	uint8		iv[KMIP_IV_LEN];
	uint8		aad[64 + NAMEDATALEN];
	int			aad_len;
	KmipDoc    *doc;
	uint8	   *answer = NULL;
	size_t		answer_len = 0;
	KmipItem	it;
	KmipIo		io;
	ByokKmsStatus st;
	size_t		uid_len;

	if (kmip_check_key_ref(key_ref, err) != BYOK_KMS_OK)
		return err->status;
	io = kmip_resolve(key_ref, uid, err);
	if (io != KIO_OK)
	{
		if (io == KIO_INTERRUPTED)
			CHECK_FOR_INTERRUPTS();
		return err->status;
	}
	uid_len = strlen(uid);
	if (2 + uid_len + KMIP_IV_LEN + KMIP_GCM_TAG_LEN + plain_len > BYOK_MAX_WRAPPED)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_KEY_REF", "The KMIP unique identifier is too long.");
		return err->status;
	}
	if (!pg_strong_random(iv, sizeof(iv)))
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "RANDOM", "Could not generate a random IV.");
		return err->status;
	}
	aad_len = byok_kms_context_aad("byok-kmip", ctx, aad);

	doc = palloc(sizeof(KmipDoc));
	st = kmip_crypt(uid, plain, plain_len, iv, aad, aad_len, NULL, doc, &answer, &answer_len,
					&it, &io, err);
	if (st == BYOK_KMS_OK)
	{
		const uint8 *ct;
		const uint8 *tag;
		const uint8 *riv;
		size_t		ct_len;
		size_t		tag_len;
		size_t		riv_len;

		if (kmip_child_bytes(doc, it.payload, KMIP_TAG_DATA, &ct, &ct_len) != KMIP_OK ||
			ct_len != (size_t) plain_len ||
			kmip_child_bytes(doc, it.payload, KMIP_TAG_AUTHENTICATED_ENCRYPTION_TAG, &tag, &tag_len) != KMIP_OK ||
			tag_len != KMIP_GCM_TAG_LEN ||
			(kmip_child_bytes(doc, it.payload, KMIP_TAG_IV_COUNTER_NONCE, &riv, &riv_len) == KMIP_OK &&
			 (riv_len != KMIP_IV_LEN || memcmp(riv, iv, KMIP_IV_LEN) != 0)))
		{
			byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_MESSAGE",
							   "The KMIP server's Encrypt answer lacks a %d-byte ciphertext, a %d-byte authentication tag or our IV.",
							   plain_len, KMIP_GCM_TAG_LEN);
			st = err->status;
		}
		else
		{
			uint8	   *p = out;

			*p++ = KMIP_WRAP_FORMAT;
			*p++ = (uint8) uid_len;
			memcpy(p, uid, uid_len);
			p += uid_len;
			memcpy(p, iv, KMIP_IV_LEN);
			p += KMIP_IV_LEN;
			memcpy(p, tag, KMIP_GCM_TAG_LEN);
			p += KMIP_GCM_TAG_LEN;
			memcpy(p, ct, ct_len);
			p += ct_len;
			*out_len = p - out;
		}
	}
	kmip_free_answer(answer, answer_len);
	pfree(doc);
	if (io == KIO_INTERRUPTED)
		CHECK_FOR_INTERRUPTS();
	return st;
}

static ByokKmsStatus
kmip_unwrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *wrapped, int wrapped_len,
			uint8 *out, int *out_len, ByokKmsError *err)
{
	char		uid[KMIP_UID_MAX + 1];
	uint8		aad[64 + NAMEDATALEN];
	int			aad_len;
	int			uid_len;
	const uint8 *iv;
	const uint8 *tag;
	const uint8 *ct;
	int			ct_len;
	KmipDoc    *doc;
	uint8	   *answer = NULL;
	size_t		answer_len = 0;
	KmipItem	it;
	KmipIo		io;
	ByokKmsStatus st;

	if (kmip_check_key_ref(key_ref, err) != BYOK_KMS_OK)
		return err->status;
	uid_len = wrapped_len >= 2 ? wrapped[1] : 0;
	if (wrapped_len < 2 || wrapped[0] != KMIP_WRAP_FORMAT || uid_len == 0 || uid_len > KMIP_UID_MAX ||
		wrapped_len <= 2 + uid_len + KMIP_IV_LEN + KMIP_GCM_TAG_LEN ||
		memchr(wrapped + 2, '\0', uid_len) != NULL)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_WRAPPED_KEY",
						   "The wrapped key is not in the kmip provider's format.");
		return err->status;
	}
	memcpy(uid, wrapped + 2, uid_len);
	uid[uid_len] = '\0';
	if (!kmip_is_name(key_ref) && strcmp(uid, key_ref) != 0)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "WRONG_KEY",
						   "The wrapped key was made under another KMIP object than the tenant's key reference.");
		return err->status;
	}
	iv = wrapped + 2 + uid_len;
	tag = iv + KMIP_IV_LEN;
	ct = tag + KMIP_GCM_TAG_LEN;
	ct_len = wrapped_len - (ct - wrapped);
	aad_len = byok_kms_context_aad("byok-kmip", ctx, aad);

	doc = palloc(sizeof(KmipDoc));
	st = kmip_crypt(uid, ct, ct_len, iv, aad, aad_len, tag, doc, &answer, &answer_len,
					&it, &io, err);
	if (st == BYOK_KMS_BAD_RESPONSE && io == KIO_OK && it.status != KMIP_RESULT_SUCCESS)
		snprintf(err->message, sizeof(err->message),
				 "The wrapped key does not decrypt under this KMIP key with this tenant's context (authentication tag mismatch).");
	else if (st == BYOK_KMS_OK)
	{
		const uint8 *pt;
		size_t		pt_len;

		if (kmip_child_bytes(doc, it.payload, KMIP_TAG_DATA, &pt, &pt_len) != KMIP_OK ||
			pt_len != (size_t) ct_len)
		{
			byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_MESSAGE",
							   "The KMIP server's Decrypt answer lacks a %d-byte plaintext.", ct_len);
			st = err->status;
		}
		else
		{
			memcpy(out, pt, pt_len);
			*out_len = pt_len;
		}
	}
	kmip_free_answer(answer, answer_len);
	pfree(doc);
	if (io == KIO_INTERRUPTED)
		CHECK_FOR_INTERRUPTS();
	return st;
}

static const ByokKmsRoutine kmip_routine = {
	.name = "kmip",
	.check_key_ref = kmip_check_key_ref,
	.wrap = kmip_wrap,
	.unwrap = kmip_unwrap,
	.key_state = kmip_key_state,
	.key_state_many = kmip_key_state_many,
};

void
byok_kms_kmip_install(void)
{
	byok_kms_register(&kmip_routine);
}
