/*-------------------------------------------------------------------------
 *
 * providers/sigv4.c
 *		AWS Signature Version 4 for the aws-kms provider's requests.
 *
 * The signed headers are content-type, host, x-amz-date,
 * x-amz-security-token (with a session token) and x-amz-target, in that
 * (sorted) order; the payload hash is SHA-256 of the body.  The canonical
 * request, the string to sign and the signing-key chain
 * HMAC("AWS4" + secret, date) -> region -> service -> "aws4_request" follow
 * AWS's SigV4 specification; the Host header is sent as signed (libcurl
 * uses a Host header it is given).
 *
 * Why not CURLOPT_AWS_SIGV4: libcurl then keeps "AKID:SECRET" in the
 * connection it caches for reuse, beyond any wiping of byok's (found by
 * the memory scan of test/t/010_https.pl).
 *
 * Locking: none.
 * Key lifetime: "AWS4" + secret and every derived key live in stack
 * buffers wiped before returning; OpenSSL's HMAC clears its own copies.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "lib/stringinfo.h"

#include "providers/sigv4.h"

#define SV_SHA256_LEN 32

static void
sv_hex(const unsigned char *d, int n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < n; i++)
	{
		out[2 * i] = digits[d[i] >> 4];
		out[2 * i + 1] = digits[d[i] & 15];
	}
	out[2 * n] = '\0';
}

static bool
sv_sha256_hex(const char *data, size_t len, char *out)
{
	unsigned char d[SV_SHA256_LEN];
	unsigned int n = 0;

	if (EVP_Digest(data, len, d, &n, EVP_sha256(), NULL) != 1 || n != SV_SHA256_LEN)
		return false;
	sv_hex(d, SV_SHA256_LEN, out);
	return true;
}

static bool
sv_hmac(const unsigned char *key, int klen, const char *msg, unsigned char *out)
{
	unsigned int n = 0;

	return HMAC(EVP_sha256(), key, klen, (const unsigned char *) msg, strlen(msg), out, &n) != NULL &&
		n == SV_SHA256_LEN;
}

/*
 * Sign one POST: appends the Content-Type, Host, X-Amz-Date,
 * X-Amz-Security-Token (when there is a token), X-Amz-Target and
 * Authorization headers to *headers.  False with err set when the URL
 * cannot be signed.
 */
bool
byok_sigv4_sign(const ByokSigV4Request *rq, struct curl_slist **headers, ByokKmsError *err)
{
	const char *hp = strstr(rq->url, "://");
	const char *path = NULL;
	char		host[256];
	char		amz_date[17];
	char		date[9];
	char		scope[128];
	char		body_hash[2 * SV_SHA256_LEN + 1];
	char		creq_hash[2 * SV_SHA256_LEN + 1];
	char		sig_hex[2 * SV_SHA256_LEN + 1];
	char		secret_key[600];
	unsigned char k[SV_SHA256_LEN];
	unsigned char k2[SV_SHA256_LEN];
	const char *signed_headers;
	StringInfoData buf;
	struct tm	tm;
	time_t		now = time(NULL);
	bool		ok;

	size_t		hlen = 0;

	/* host[:port] as the Host header carries it, and the path ("/") */
	if (hp != NULL)
	{
		hp += 3;
		path = strchr(hp, '/');
		hlen = path ? (size_t) (path - hp) : strlen(hp);
	}
	if (hp == NULL || hlen == 0 || hlen >= sizeof(host))
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_URL", "The AWS KMS endpoint URL names no usable host.");
		return false;
	}
	memcpy(host, hp, hlen);
	host[hlen] = '\0';
	if (path == NULL)
		path = "/";
	/*
	 * What is signed must be what libcurl sends: no user name or password
	 * (it would travel in the Host header), no query or fragment, no dot
	 * segments (curl removes them), nothing the canonical URI would encode.
	 */
	if (strchr(host, '@') != NULL || strpbrk(path, "?#%") != NULL ||
		strstr(path, "/./") != NULL || strstr(path, "/../") != NULL ||
		(strlen(path) >= 2 && strcmp(path + strlen(path) - 2, "/.") == 0) ||
		(strlen(path) >= 3 && strcmp(path + strlen(path) - 3, "/..") == 0))
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_URL",
						   "The AWS KMS endpoint URL must be scheme://host[:port]/path, without user name, query, fragment, escapes or dot segments.");
		return false;
	}
	gmtime_r(&now, &tm);
	strftime(amz_date, sizeof(amz_date), "%Y%m%dT%H%M%SZ", &tm);
	memcpy(date, amz_date, 8);
	date[8] = '\0';
	snprintf(scope, sizeof(scope), "%s/%s/%s/aws4_request", date, rq->region, rq->service);
	signed_headers = rq->token ? "content-type;host;x-amz-date;x-amz-security-token;x-amz-target" :
		"content-type;host;x-amz-date;x-amz-target";

	/* the canonical request (no query string; header values as sent); room
	 * for it first, so the buffer holding the session token never grows */
	initStringInfo(&buf);
	enlargeStringInfo(&buf, 8192);
	ok = sv_sha256_hex(rq->body, rq->body_len, body_hash);
	appendStringInfo(&buf, "POST\n%s\n\ncontent-type:%s\nhost:%s\nx-amz-date:%s\n", path,
					 rq->content_type, host, amz_date);
	if (rq->token)
		appendStringInfo(&buf, "x-amz-security-token:%s\n", rq->token);
	appendStringInfo(&buf, "x-amz-target:%s\n\n%s\n%s", rq->target, signed_headers, body_hash);
	ok = ok && sv_sha256_hex(buf.data, buf.len, creq_hash);

	/* the string to sign, and the signing key: HMAC chain from "AWS4" + secret */
	resetStringInfo(&buf);
	appendStringInfo(&buf, "AWS4-HMAC-SHA256\n%s\n%s\n%s", amz_date, scope, creq_hash);
	if (snprintf(secret_key, sizeof(secret_key), "AWS4%s", rq->secret) >= (int) sizeof(secret_key))
		ok = false;
	ok = ok && sv_hmac((unsigned char *) secret_key, strlen(secret_key), date, k) &&
		sv_hmac(k, SV_SHA256_LEN, rq->region, k2) &&
		sv_hmac(k2, SV_SHA256_LEN, rq->service, k) &&
		sv_hmac(k, SV_SHA256_LEN, "aws4_request", k2) &&
		sv_hmac(k2, SV_SHA256_LEN, buf.data, k);
	if (ok)
		sv_hex(k, SV_SHA256_LEN, sig_hex);
	explicit_bzero(secret_key, sizeof(secret_key));
	explicit_bzero(k, sizeof(k));
	explicit_bzero(k2, sizeof(k2));
	if (!ok)
	{
		explicit_bzero(buf.data, buf.maxlen);	/* the canonical request holds the token */
		pfree(buf.data);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "SIGNING", "The request could not be signed.");
		return false;
	}

	/* a header list that cannot grow (out of memory) fails the call */
#define SV_HEADER(...) \
	do { \
		struct curl_slist *grown; \
		resetStringInfo(&buf); \
		appendStringInfo(&buf, __VA_ARGS__); \
		if (ok && (grown = curl_slist_append(*headers, buf.data)) != NULL) \
			*headers = grown; \
		else \
			ok = false; \
	} while (0)
	SV_HEADER("Content-Type: %s", rq->content_type);
	SV_HEADER("Host: %s", host);
	SV_HEADER("X-Amz-Date: %s", amz_date);
	if (rq->token)
		SV_HEADER("X-Amz-Security-Token: %s", rq->token);
	SV_HEADER("X-Amz-Target: %s", rq->target);
	SV_HEADER("Authorization: AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s",
			  rq->akid, scope, signed_headers, sig_hex);
#undef SV_HEADER
	/* the buffer held the session token */
	explicit_bzero(buf.data, buf.maxlen);
	pfree(buf.data);
	if (!ok)
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "OUT_OF_MEMORY", "The request's headers could not be built.");
	return ok;
}
