/*-------------------------------------------------------------------------
 *
 * providers/http.c
 *		The HTTP client of the network key providers (libcurl), and the
 *		JSON, base64 and secret-file helpers they share.
 *
 * Every call runs through one curl multi handle per process, so:
 *   - connections are reused across calls (keep-alive, one connection
 *     cache per process), at most byok.kms_max_connections per endpoint;
 *   - many calls can run at once (the poller asks about many CMKs in one
 *     round);
 *   - the wait loop wakes at least every 20 ms, so a cancel
 *     (pg_cancel_backend, statement_timeout) or a shutdown request stops a
 *     call in flight within that time, and byok.kms_timeout bounds every
 *     call including its retries.
 * Throttled and unavailable answers (as the provider's classify callback
 * decides) are retried with exponential backoff and full jitter, honouring
 * Retry-After, while time remains.  TLS peers are always verified
 * (byok.kms_ca_file names the CA bundle); plain http:// is refused unless
 * byok.kms_allow_insecure is on.  Answers larger than 1 MiB are refused.
 *
 * Secrets and key lifetime.  Request bodies, answers, token headers and secret files
 * may hold key material or credentials: they live in palloc'd buffers that
 * byok_http_call_free() and the callers wipe with explicit_bzero.  Error
 * texts carry only curl's error names, HTTP statuses and provider error
 * codes, never a body.  curl's own verbose output is never enabled.
 *
 * Locking: none.  Callers hold no LWLock while calling in here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/ssl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/pg_prng.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "providers/http.h"

enum
{
	CALL_RUNNING = 1,
	CALL_WAITING,
	CALL_DONE
};

#define BACKOFF_BASE_US		50000	/* first retry within 50 ms */
#define BACKOFF_CAP_US		2000000 /* never wait more than 2 s between tries */
#define MAX_ATTEMPTS		10

static CURLM *hc_multi = NULL;
static int	hc_pid = 0;
static int	hc_limit = 0;		/* byok.kms_max_connections hc_multi was last given */

/*
 * libcurl's own memory, wiped when it is freed or moved: its copies of the
 * X-Vault-Token and X-Amz-Security-Token headers and its receive buffers (an answer holding a tenant key) would otherwise stay
 * in freed heap memory.  OpenSSL's record buffers, on https://, are wiped
 * by OpenSSL itself (SSL_OP_CLEANSE_PLAINTEXT, hc_ssl_ctx).
 */
static void
hc_mem_free(void *p)
{
	if (p != NULL)
	{
		explicit_bzero(p, malloc_usable_size(p));
		free(p);
	}
}

static uint64 hc_mallocs = 0;	/* blocks libcurl asked for (the probe below) */

static void *
hc_mem_malloc(size_t n)
{
	hc_mallocs++;
	return malloc(n);
}

static void *
hc_mem_calloc(size_t nmemb, size_t size)
{
	hc_mallocs++;
	return calloc(nmemb, size);
}

static void *
hc_mem_realloc(void *p, size_t n)
{
	void	   *q;

	if (p == NULL)
		return malloc(n);
	if (n == 0)
	{
		hc_mem_free(p);
		return NULL;
	}
	/* never in place: the old block is wiped, not left behind */
	hc_mallocs++;
	if ((q = malloc(n)) == NULL)
		return NULL;
	memcpy(q, p, Min(n, malloc_usable_size(p)));
	hc_mem_free(p);
	return q;
}

static char *
hc_mem_strdup(const char *s)
{
	size_t		n = strlen(s) + 1;
	char	   *q = malloc(n);

	hc_mallocs++;
	if (q != NULL)
		memcpy(q, s, n);
	return q;
}

/*
 * Every TLS context libcurl makes: the decrypted answer (a tenant key) is
 * wiped from OpenSSL's record buffer once curl has read it.
 */
static CURLcode
hc_ssl_ctx(CURL *curl, void *ssl_ctx, void *arg)
{
	SSL_CTX_set_options((SSL_CTX *) ssl_ctx, SSL_OP_CLEANSE_PLAINTEXT);
	return CURLE_OK;
}

static void
hc_setup(void)
{
	if (hc_multi != NULL && hc_pid == MyProcPid)
		return;
	if (hc_pid == 0 &&
		curl_global_init_mem(CURL_GLOBAL_DEFAULT, hc_mem_malloc, hc_mem_free, hc_mem_realloc,
							 hc_mem_strdup, hc_mem_calloc) != CURLE_OK)
		elog(ERROR, "could not initialize libcurl");
	if (hc_pid == 0)
	{
		/*
		 * libcurl ignores the allocator when another library of this process
		 * initialised it first: a probe allocation tells.
		 */
		uint64		before = hc_mallocs;
		struct curl_slist *probe = curl_slist_append(NULL, "byok");

		curl_slist_free_all(probe);
		if (hc_mallocs == before)
			ereport(WARNING,
					(errmsg("byok: libcurl was initialised before byok, so the memory it frees is not wiped"),
					 errdetail("Another library of this server process initialised libcurl first; copies of provider tokens and answers may stay in freed memory."),
					 errhint("Load byok before other libraries that use libcurl in shared_preload_libraries.")));
	}
	/* after a fork the parent's handle is not ours to clean up: start afresh */
	hc_multi = curl_multi_init();
	if (hc_multi == NULL)
		elog(ERROR, "could not create a libcurl multi handle");
	hc_pid = MyProcPid;
}

void
byok_http_call_init(ByokHttpCall *call, const char *provider)
{
	memset(call, 0, sizeof(*call));
	/*
	 * Room for any request byok makes (key_ref, a wrapped key and a tenant
	 * name, escaped, are under 4 kB), so the body never grows: a grown
	 * StringInfo would leave its old copy, a base64 tenant key, unwiped.
	 */
	call->body.data = palloc(BYOK_HTTP_BODY_CAP);
	call->body.maxlen = BYOK_HTTP_BODY_CAP;
	resetStringInfo(&call->body);
	initStringInfo(&call->response);
	strlcpy(call->err.provider, provider, sizeof(call->err.provider));
}

static void
hc_wipe(StringInfo s)
{
	if (s->data)
		explicit_bzero(s->data, s->maxlen);
	s->len = 0;
	if (s->data)
		s->data[0] = '\0';
}

/*
 * Add a request header.  Out of memory, the list stays as it was (and is
 * wiped with the call) and the call fails instead of going out without it.
 */
void
byok_http_header(ByokHttpCall *call, const char *header)
{
	struct curl_slist *grown = curl_slist_append(call->headers, header);

	if (grown == NULL)
		call->headers_lost = true;
	else
		call->headers = grown;
}

/* Wipe and release everything a call holds. */
void
byok_http_call_free(ByokHttpCall *call)
{
	hc_wipe(&call->body);
	hc_wipe(&call->response);
	if (call->headers)
	{
		curl_slist_free_all(call->headers);
		call->headers = NULL;
	}
}

/*
 * Is this URL one byok may call?  http(s) only, and plain http only when
 * byok.kms_allow_insecure is on.
 */
bool
byok_http_url_allowed(const char *url, ByokKmsError *err)
{
	if (pg_strncasecmp(url, "https://", 8) == 0)
		return true;
	if (pg_strncasecmp(url, "http://", 7) == 0)
	{
		if (byok_kms_allow_insecure)
			return true;
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "INSECURE_URL",
						   "Plain http:// endpoints are refused unless byok.kms_allow_insecure is on.");
		return false;
	}
	byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_URL",
					   "The endpoint must be an https:// URL.");
	return false;
}

static size_t
hc_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	ByokHttpCall *call = userdata;
	size_t		n = size * nmemb;

	StringInfo	r = &call->response;

	if ((size_t) r->len + n > BYOK_HTTP_MAX_RESPONSE)
	{
		call->too_big = true;
		return 0;				/* makes curl fail the transfer */
	}
	if (r->len + (int) n + 1 > r->maxlen)
	{
		/*
		 * Grow by moving, wiping the old copy (repalloc would leave it).  No
		 * ereport may leave this callback: out of memory fails the transfer.
		 */
		int			cap = r->maxlen;
		char	   *data;

		while (cap < r->len + (int) n + 1)
			cap *= 2;
		data = MemoryContextAllocExtended(CurrentMemoryContext, cap, MCXT_ALLOC_NO_OOM);
		if (data == NULL)
			return 0;
		memcpy(data, r->data, r->len + 1);
		explicit_bzero(r->data, r->maxlen);
		pfree(r->data);
		r->data = data;
		r->maxlen = cap;
	}
	memcpy(r->data + r->len, ptr, n);
	r->len += n;
	r->data[r->len] = '\0';
	return n;
}

static void
hc_start(ByokHttpCall *call, int64 remaining_us)
{
	CURL	   *e = curl_easy_init();
	long		ms = Max(1, remaining_us / 1000);

	if (e == NULL)
		elog(ERROR, "could not create a libcurl handle");
	hc_wipe(&call->response);
	call->too_big = false;
	call->status = 0;
	call->retry_after_us = 0;

	call->errbuf[0] = '\0';
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
	curl_easy_setopt(e, CURLOPT_URL, call->url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ms);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if (byok_kms_ca_file && byok_kms_ca_file[0])
		curl_easy_setopt(e, CURLOPT_CAINFO, byok_kms_ca_file);
	curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, hc_ssl_ctx);
	/*
	 * HTTP/1.1 only: with HTTP/2, nghttp2 would keep the token headers in its
	 * HPACK table and curl decrypted frames in a connection buffer, both
	 * outside the wiping allocator and alive as long as the connection.
	 */
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "byok/1.0");
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->headers);
	if (call->post)
	{
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body.data);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long) call->body.len);
	}
	else
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, hc_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
	curl_easy_setopt(e, CURLOPT_PRIVATE, call);
	if (curl_multi_add_handle(hc_multi, e) != CURLM_OK)
	{
		curl_easy_cleanup(e);
		elog(ERROR, "could not start a libcurl transfer");
	}
	call->easy = e;
	call->state = CALL_RUNNING;
	call->attempts++;
}

static void
hc_release(ByokHttpCall *call)
{
	if (call->easy)
	{
		curl_multi_remove_handle(hc_multi, call->easy);
		curl_easy_cleanup(call->easy);
		call->easy = NULL;
	}
}

/* Full jitter: a random wait in [0, min(cap, base * 2^attempt)). */
static int64
hc_backoff(int attempt)
{
	int64		ceiling = BACKOFF_BASE_US << Min(attempt, 10);

	ceiling = Min(ceiling, BACKOFF_CAP_US);
	return (int64) (pg_prng_double(&pg_global_prng_state) * ceiling);
}

/* A transfer ended: classify it, and schedule a retry if it deserves one. */
static void
hc_finish(ByokHttpCall *call, CURLcode rc, int64 now, int64 deadline)
{
	curl_off_t	retry_after = 0;
	bool		retryable;

	curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &call->status);
	curl_easy_getinfo(call->easy, CURLINFO_RETRY_AFTER, &retry_after);
	hc_release(call);
	/* bounded before scaling: an answer's Retry-After must not overflow */
	call->retry_after_us = (int64) Min(Max(retry_after, 0), 3600) * USECS_PER_SEC;
	call->err.status = BYOK_KMS_OK;
	call->err.remote_code[0] = call->err.message[0] = '\0';

	if (rc != CURLE_OK)
	{
		ByokKmsStatus st = BYOK_KMS_UNAVAILABLE;
		const char *code = "UNREACHABLE";

		if (call->too_big)
		{
			st = BYOK_KMS_BAD_RESPONSE;
			code = "TOO_LARGE";
		}
		else if (rc == CURLE_OPERATION_TIMEDOUT)
			code = "TIMEOUT";
		else if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CONNECT_ERROR ||
				 rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_SSL_CERTPROBLEM)
		{
			st = BYOK_KMS_CONFIG;
			code = "TLS";
		}
		if (st == BYOK_KMS_CONFIG)
			byok_kms_set_error(&call->err, st, code,
							   "%s. byok.kms_ca_file must hold the CA that signed the endpoint's certificate, which must name the endpoint's host.",
							   call->errbuf[0] ? call->errbuf : curl_easy_strerror(rc));
		else
			byok_kms_set_error(&call->err, st, code, "%s.", call->too_big ?
							   "The answer is larger than 1 MiB" : curl_easy_strerror(rc));
		call->result = st;
		retryable = st == BYOK_KMS_UNAVAILABLE && rc != CURLE_OPERATION_TIMEDOUT;
	}
	else
	{
		call->result = call->classify(call, &call->err);
		call->err.status = call->result;
		retryable = call->result == BYOK_KMS_THROTTLED || call->result == BYOK_KMS_UNAVAILABLE;
	}

	if (retryable && call->attempts < MAX_ATTEMPTS)
	{
		int64		wait = Max(hc_backoff(call->attempts), call->retry_after_us);

		if (now + wait < deadline)
		{
			call->state = CALL_WAITING;
			call->retry_at = now + wait;
			return;
		}
	}
	call->state = CALL_DONE;
	call->done_at = now;
}

static void
hc_abort(ByokHttpCall **calls, int n, const char *code, const char *msg)
{
	for (int i = 0; i < n; i++)
	{
		if (calls[i]->state == CALL_DONE)
			continue;
		hc_release(calls[i]);
		calls[i]->state = CALL_DONE;
		calls[i]->done_at = GetCurrentTimestamp();
		calls[i]->result = BYOK_KMS_UNAVAILABLE;
		byok_kms_set_error(&calls[i]->err, BYOK_KMS_UNAVAILABLE, code, "%s", msg);
	}
}

/*
 * Run 'n' calls at once, each bounded (with its retries) by timeout_ms.
 * Returns when every call has a result (call->result, call->err).  A query
 * cancel or termination stops all of them and is then raised; a shutdown
 * request (the poller) stops them as unavailable.
 */
void
byok_http_perform(ByokHttpCall **calls, int n, int timeout_ms)
{
	int64		deadline = GetCurrentTimestamp() + (int64) timeout_ms * 1000;
	struct stat st;

	hc_setup();
	/*
	 * libcurl opens byok.kms_ca_file itself, blocking: a FIFO there would
	 * hold the backend beyond any cancel.  Only a regular file is handed on.
	 */
	if (byok_kms_ca_file && byok_kms_ca_file[0] &&
		(stat(byok_kms_ca_file, &st) != 0 || !S_ISREG(st.st_mode)))
	{
		for (int i = 0; i < n; i++)
		{
			calls[i]->state = CALL_DONE;
			calls[i]->done_at = GetCurrentTimestamp();
			calls[i]->result = BYOK_KMS_CONFIG;
			byok_kms_set_error(&calls[i]->err, BYOK_KMS_CONFIG, "TLS",
							   "byok.kms_ca_file \"%s\" is not a regular file.", byok_kms_ca_file);
		}
		return;
	}
	/*
	 * A lower limit (a reload) applies to the connections already open too:
	 * libcurl would keep reusing every idle connection it has, so start a
	 * fresh handle (no transfer is attached between calls).
	 */
	if (hc_limit > byok_kms_max_connections)
	{
		curl_multi_cleanup(hc_multi);
		hc_multi = curl_multi_init();
		if (hc_multi == NULL)
			elog(ERROR, "could not create a libcurl multi handle");
	}
	hc_limit = byok_kms_max_connections;
	curl_multi_setopt(hc_multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) byok_kms_max_connections);
	PG_TRY();
	{
		for (int i = 0; i < n; i++)
		{
			calls[i]->attempts = 0;
			calls[i]->easy = NULL;
			if (calls[i]->headers_lost)
			{
				calls[i]->state = CALL_DONE;
				calls[i]->done_at = GetCurrentTimestamp();
				calls[i]->result = BYOK_KMS_CONFIG;
				byok_kms_set_error(&calls[i]->err, BYOK_KMS_CONFIG, "OUT_OF_MEMORY",
								   "A request header could not be added.");
				continue;
			}
			hc_start(calls[i], deadline - GetCurrentTimestamp());
		}
		for (;;)
		{
			int			running;
			int			left;
			CURLMsg    *msg;
			int64		now;
			int64		wake;
			int			ndone = 0;

			curl_multi_perform(hc_multi, &running);
			now = GetCurrentTimestamp();
			while ((msg = curl_multi_info_read(hc_multi, &left)) != NULL)
			{
				ByokHttpCall *call = NULL;

				if (msg->msg != CURLMSG_DONE)
					continue;
				curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &call);
				hc_finish(call, msg->data.result, now, deadline);
			}
			wake = deadline;
			for (int i = 0; i < n; i++)
			{
				if (calls[i]->state == CALL_WAITING && now >= calls[i]->retry_at)
					hc_start(calls[i], deadline - now);
				if (calls[i]->state == CALL_WAITING)
					wake = Min(wake, calls[i]->retry_at);
				if (calls[i]->state == CALL_DONE)
					ndone++;
			}
			if (ndone == n)
				break;
			if (now >= deadline)
			{
				char		msgbuf[128];

				snprintf(msgbuf, sizeof(msgbuf),
						 "No usable answer within byok.kms_timeout (%d ms).", timeout_ms);
				hc_abort(calls, n, "TIMEOUT", msgbuf);
				break;
			}
			(void) curl_multi_poll(hc_multi, NULL, 0,
								   (int) Max(1, Min(20, (wake - now) / 1000 + 1)), NULL);
			if (byok_kms_interrupt_pending())
			{
				hc_abort(calls, n, "INTERRUPTED", "The call was interrupted.");
				CHECK_FOR_INTERRUPTS();
				break;
			}
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_CATCH();
	{
		/*
		 * A cancel, a termination or an error: the callers' code after this
		 * call does not run, so their requests, answers and credentials are
		 * wiped here (byok_http_call_free may be called again).
		 */
		hc_abort(calls, n, "INTERRUPTED", "The call was interrupted.");
		for (int i = 0; i < n; i++)
			byok_http_call_free(calls[i]);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* Run one prepared call, bounded by byok.kms_timeout; returns its result. */
ByokKmsStatus
byok_http_run_one(ByokHttpCall *call, ByokKmsError *err)
{
	ByokHttpCall *calls[1] = {call};

	byok_http_perform(calls, 1, byok_kms_timeout);
	*err = call->err;
	return call->result;
}

/* Read one answer of a key-state question into its query. */
static ByokKmsStatus
hc_state_read(ByokHttpCall *call, ByokKmsStateQuery *q, const ByokHttpStateQuestion *question)
{
	ByokAnswer	a;
	ByokKmsStatus st = call->result;

	q->err = call->err;
	if (st == BYOK_KMS_DESTROYED)
	{
		q->state = question->not_found_final == NULL || question->not_found_final(q->key_ref) ?
			BYOK_KEY_DESTROYED : BYOK_KEY_DISABLED;
		return BYOK_KMS_OK;
	}
	if (st != BYOK_KMS_OK)
		return st;
	/* the bounded reader: a bad answer is this key's failure alone */
	st = question->read(call->response.data, call->response.len, q->version_hint, &q->state, &a);
	if (st != BYOK_KMS_OK)
		byok_kms_set_error(&q->err, st, a.code, "%s", a.text);
	return st;
}

/*
 * Many key-state questions at once over the shared connections (the
 * poller's round, or one question): 'prepare' turns a query into a call
 * (false with query->err set when it cannot), 'read' turns the answer into
 * query->state and the returned status.  Every call is freed (and wiped).
 */
void
byok_http_key_state_many(ByokKmsStateQuery *queries, int n, const ByokHttpStateQuestion *question)
{
	ByokHttpCall *calls = palloc0(sizeof(ByokHttpCall) * n);
	ByokHttpCall **run = palloc(sizeof(ByokHttpCall *) * n);
	int			nrun = 0;
	TimestampTz start = GetCurrentTimestamp();

	for (int i = 0; i < n; i++)
	{
		if (question->prepare(&calls[i], &queries[i]))
			run[nrun++] = &calls[i];
		else
			queries[i].status = queries[i].err.status;
	}
	PG_TRY();
	{
		if (nrun > 0)
			byok_http_perform(run, nrun, byok_kms_timeout);
	}
	PG_FINALLY();
	{
		for (int i = 0; i < n; i++)
		{
			if (calls[i].classify != NULL && calls[i].state != 0)
				queries[i].status = hc_state_read(&calls[i], &queries[i], question);
			/* each call's own time: a slow neighbour must not make it look slow */
			queries[i].us = (calls[i].done_at > 0 ? calls[i].done_at : GetCurrentTimestamp()) - start;
			byok_http_call_free(&calls[i]);
		}
	}
	PG_END_TRY();
	pfree(calls);
	pfree(run);
}

/* One key-state question on its own (the same path as the poller's batches). */
ByokKmsStatus
byok_http_key_state_one(const char *key_ref, int32 version_hint, ByokKeyState *state,
						ByokKmsError *err, const ByokHttpStateQuestion *question)
{
	ByokKmsStateQuery q;

	memset(&q, 0, sizeof(q));
	q.key_ref = key_ref;
	q.version_hint = version_hint;
	q.err = *err;
	byok_http_key_state_many(&q, 1, question);
	*state = q.state;
	*err = q.err;
	return q.status;
}

/* ---- JSON ---- */

void
byok_json_escape(StringInfo buf, const char *s)
{
	appendStringInfoChar(buf, '"');
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c == '"' || c == '\\')
			appendStringInfo(buf, "\\%c", c);
		else if (c < 0x20)
			appendStringInfo(buf, "\\u%04x", c);
		else
			appendStringInfoChar(buf, c);
	}
	appendStringInfoChar(buf, '"');
}

/* ---- base64 ---- */

char *
byok_b64_encode(const uint8 *data, int len)
{
	int			cap = pg_b64_enc_len(len) + 1;
	char	   *out = palloc(cap);
	int			n = pg_b64_encode((const char *) data, len, out, cap);

	if (n < 0)
		elog(ERROR, "base64 encoding failed");
	out[n] = '\0';
	return out;
}

/* Decode into out (outlen bytes); -1 when the text is not valid base64 or too long. */
int
byok_b64_decode(const char *text, uint8 *out, int outlen)
{
	int			len = strlen(text);

	if (pg_b64_dec_len(len) > outlen + 3)
		return -1;
	return pg_b64_decode(text, len, (char *) out, outlen);
}

/* ---- secret files ---- */

/*
 * Read a credentials file: a regular file owned by the server's OS user,
 * not accessible by group or others, at most 64 kB.  The caller wipes
 * 'out'.  Errors name the file, never its contents.
 */
bool
byok_read_secret_file(const char *path, const char *what, StringInfo out, ByokKmsError *err)
{
	struct stat st;
	int			fd;
	char		buf[4096];
	ssize_t		n;
	off_t		left;

	if (path == NULL || path[0] == '\0')
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_CREDENTIALS", "%s is not set.", what);
		return false;
	}
	/* non-blocking: a FIFO must not hold the backend (fstat refuses it next) */
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_CREDENTIALS",
						   "Could not open %s \"%s\": %m.", what, path);
		return false;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > 65536)
	{
		close(fd);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CREDENTIALS_FILE",
						   "%s \"%s\" is not a regular file of at most 64 kB.", what, path);
		return false;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0 || st.st_uid != geteuid())
	{
		close(fd);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "LOOSE_PERMISSIONS",
						   "%s \"%s\" must be owned by the server's operating system user and readable by it alone (mode 0600 or 0400).",
						   what, path);
		return false;
	}
	/*
	 * Room for the whole file first (a grown buffer would leave a copy
	 * behind), then no more than the size checked: a file that grows
	 * meanwhile is cut there.
	 */
	enlargeStringInfo(out, (int) st.st_size + 1);
	left = st.st_size;
	while (left > 0)
	{
		n = read(fd, buf, (size_t) Min((off_t) sizeof(buf), left));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		appendBinaryStringInfo(out, buf, n);
		left -= n;
	}
	explicit_bzero(buf, sizeof(buf));
	close(fd);
	if (left > 0)
	{
		/* a read error, or a file cut short meanwhile: nothing half-read is used */
		explicit_bzero(out->data, out->maxlen);
		resetStringInfo(out);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CREDENTIALS_FILE",
						   "%s \"%s\" could not be read whole.", what, path);
		return false;
	}
	return true;
}
