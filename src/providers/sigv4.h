/*-------------------------------------------------------------------------
 *
 * providers/sigv4.h
 *		AWS Signature Version 4 for the aws-kms provider's requests.
 *
 * byok signs its requests itself, so the secret access key never enters
 * libcurl (whose connection cache would keep a copy for as long as the
 * connection lives).  See sigv4.c.
 *
 * Locking: none.
 * Key lifetime: the secret and the signing keys derived from it live in
 * sigv4.c's stack buffers, wiped before it returns.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_PROVIDERS_SIGV4_H
#define BYOK_PROVIDERS_SIGV4_H

#include <curl/curl.h>

#include "providers/kms.h"

/* one POST to sign */
typedef struct ByokSigV4Request
{
	const char *url;			/* http(s)://host[:port]/path */
	const char *region;
	const char *service;		/* "kms" */
	const char *target;			/* X-Amz-Target */
	const char *content_type;
	const char *body;
	size_t		body_len;
	const char *akid;
	const char *secret;			/* wiped by the caller */
	const char *token;			/* session token, or NULL */
} ByokSigV4Request;

extern bool byok_sigv4_sign(const ByokSigV4Request *rq, struct curl_slist **headers,
							ByokKmsError *err);

#endif							/* BYOK_PROVIDERS_SIGV4_H */
