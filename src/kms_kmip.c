/*-------------------------------------------------------------------------
 *
 * kms_kmip.c
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
 * Transport.  One TLS connection per process, opened on first use and
 * reused; a connection the server closed (restart, idle timeout) is noticed
 * before use or on the first failed exchange and reopened once.  Sockets
 * are non-blocking and every wait polls for at most 50 ms, checking for a
 * cancel, a termination or a shutdown request; the whole call, reconnect
 * included, is bounded by byok.kms_timeout.  TLS 1.2 or later, the server
 * certificate verified against byok.kmip_ca_file and byok.kmip_host (an IP
 * address or a DNS name), our certificate from byok.kmip_cert_file and
 * byok.kmip_key_file.  The three files must be readable by the server's OS
 * user alone; they are re-read when a path or a file changes, so a
 * certificate can be rotated with a reload.  Host names are resolved with
 * getaddrinfo, which is not bounded by the timeout: use an address or a
 * local resolver.
 *
 * Secrets: requests and answers carry TKs in clear inside the TLS channel;
 * their buffers (malloc'd encoder buffers, palloc'd answers) are wiped
 * before release, as is the private key file's text.  Error texts carry
 * KMIP result reasons, the server's result message (sanitised) and OpenSSL
 * reason strings, never a value.
 *
 * Wrapped form: format byte (1), uid length (1), uid, IV (12), tag (16),
 * ciphertext.
 *
 * Locking: none; callers hold no LWLock while calling in here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "utils/timestamp.h"

#include "kmip_ttlv.h"
#include "kms_http.h"

#define KMIP_WRAP_FORMAT	1
#define KMIP_IV_LEN			12
#define KMIP_GCM_TAG_LEN	16
#define KMIP_UID_MAX		128
#define KMIP_NAME_PREFIX	"name:"
#define KMIP_WAIT_SLICE_MS	50
#define KMIP_PIN_SLOTS		64
#define KMIP_MAX_HOSTS		8

/* tags and values kmip_ttlv.h does not carry */
#define TAG_BATCH_ERROR_CONTINUATION	0x42000E
#define TAG_UNIQUE_BATCH_ITEM_ID		0x420093
#define BATCH_CONTINUE					1
#define NAME_TYPE_TEXT					1

/* ------------------------------------------------------------ state */

/* the process's connection */
typedef struct KmipConn
{
	int			pid;			/* owner; a forked child starts afresh */
	SSL_CTX    *ctx;
	SSL		   *ssl;
	int			fd;
	char		config[1024];	/* settings and file identities ctx was made from */
} KmipConn;

static KmipConn kconn = {.fd = -1};

/* names resolved by Locate, pinned for the life of the process */
typedef struct KmipPin
{
	char		name[256];
	char		uid[KMIP_UID_MAX + 1];
} KmipPin;

static KmipPin kpins[KMIP_PIN_SLOTS];
static int	kpin_next = 0;

/* the server of byok.kmip_host that answered last: tried first */
static int	kmip_host_next = 0;

/* why an I/O wait ended early */
typedef enum KmipIo
{
	KIO_OK = 0,
	KIO_FAILED,					/* err set */
	KIO_INTERRUPTED				/* err set; caller runs CHECK_FOR_INTERRUPTS */
} KmipIo;

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

/* Printable ASCII only, bounded. */
static void
kmip_sanitise(const char *in, size_t inlen, char *out, size_t outlen)
{
	size_t		n = 0;

	for (size_t i = 0; i < inlen && n < outlen - 1; i++)
		out[n++] = (in[i] >= 0x20 && in[i] < 0x7f) ? in[i] : '?';
	out[n] = '\0';
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

/* The reason of the first OpenSSL error, or a fallback; clears the queue. */
static const char *
kmip_ssl_reason(const char *fallback)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	ERR_clear_error();
	return r ? r : fallback;
}

/* ------------------------------------------------------------ TLS set-up */

static void
kmip_drop_connection(void)
{
	if (kconn.pid != MyProcPid)
	{
		/* inherited from the parent: not ours to shut down or free */
		memset(&kconn, 0, sizeof(kconn));
		kconn.fd = -1;
		kconn.pid = MyProcPid;
		return;
	}
	if (kconn.ssl)
		SSL_free(kconn.ssl);	/* no close_notify: the peer may be gone */
	kconn.ssl = NULL;
	if (kconn.fd >= 0)
		close(kconn.fd);
	kconn.fd = -1;
}

static void
kmip_drop_all(void)
{
	kmip_drop_connection();
	if (kconn.ctx)
		SSL_CTX_free(kconn.ctx);
	kconn.ctx = NULL;
	kconn.config[0] = '\0';
	kmip_host_next = 0;
}

/* Settings plus each file's identity: a change means a new SSL_CTX. */
static void
kmip_config_key(char *out, size_t len)
{
	const char *files[3] = {byok_kmip_cert_file, byok_kmip_key_file, byok_kmip_ca_file};
	int			n;

	n = snprintf(out, len, "%s|%d", byok_kmip_host ? byok_kmip_host : "", byok_kmip_port);
	for (int i = 0; i < 3 && n > 0 && (size_t) n < len; i++)
	{
		struct stat st;

		if (files[i] && files[i][0] && stat(files[i], &st) == 0)
			n += snprintf(out + n, len - n, "|%s:%lu:%ld:%ld", files[i],
						  (unsigned long) st.st_ino, (long) st.st_mtime, (long) st.st_size);
		else
			n += snprintf(out + n, len - n, "|%s:-", files[i] ? files[i] : "");
	}
}

/* Never prompt for a pass phrase: encrypted keys are refused. */
static int
kmip_no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return 0;
}

static bool
kmip_read_file(const char *path, const char *guc, StringInfo out, ByokKmsError *err)
{
	initStringInfo(out);
	return byok_read_secret_file(path, guc, out, err);
}

static void
kmip_wipe_file(StringInfo s)
{
	if (s->data)
	{
		explicit_bzero(s->data, s->maxlen);
		pfree(s->data);
		s->data = NULL;
	}
}

/* Build an SSL_CTX from the three files; false with err set. */
static bool
kmip_make_ctx(ByokKmsError *err)
{
	StringInfoData cert = {0};
	StringInfoData key = {0};
	StringInfoData ca = {0};
	SSL_CTX    *ctx = NULL;
	BIO		   *bio = NULL;
	X509	   *x = NULL;
	EVP_PKEY   *pkey = NULL;
	int			ncas = 0;
	bool		ok = false;

	if (byok_kmip_host == NULL || byok_kmip_host[0] == '\0')
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "NO_HOST", "byok.kmip_host is not set.");
		return false;
	}
	if (!kmip_read_file(byok_kmip_cert_file, "byok.kmip_cert_file", &cert, err) ||
		!kmip_read_file(byok_kmip_key_file, "byok.kmip_key_file", &key, err) ||
		!kmip_read_file(byok_kmip_ca_file, "byok.kmip_ca_file", &ca, err))
		goto done;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "TLS_SETUP", "Could not set up TLS: %s.",
						   kmip_ssl_reason("out of memory"));
		goto done;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

	/* our certificate, then any chain certificates after it */
	bio = BIO_new_mem_buf(cert.data, cert.len);
	x = bio ? PEM_read_bio_X509(bio, NULL, kmip_no_passphrase, NULL) : NULL;
	if (x == NULL || SSL_CTX_use_certificate(ctx, x) != 1)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CERTIFICATE",
						   "byok.kmip_cert_file holds no usable PEM certificate: %s.",
						   kmip_ssl_reason("no certificate"));
		goto done;
	}
	X509_free(x);
	while ((x = PEM_read_bio_X509(bio, NULL, kmip_no_passphrase, NULL)) != NULL)
	{
		if (SSL_CTX_add_extra_chain_cert(ctx, x) != 1)
		{
			X509_free(x);
			break;
		}
	}
	x = NULL;
	ERR_clear_error();
	BIO_free(bio);

	/* our private key */
	bio = BIO_new_mem_buf(key.data, key.len);
	pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, kmip_no_passphrase, NULL) : NULL;
	BIO_free(bio);
	bio = NULL;
	if (pkey == NULL || SSL_CTX_use_PrivateKey(ctx, pkey) != 1 ||
		SSL_CTX_check_private_key(ctx) != 1)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_PRIVATE_KEY",
						   "byok.kmip_key_file holds no unencrypted PEM private key matching byok.kmip_cert_file: %s.",
						   kmip_ssl_reason("no key"));
		goto done;
	}

	/* the CAs that may sign the server's certificate */
	bio = BIO_new_mem_buf(ca.data, ca.len);
	while (bio && (x = PEM_read_bio_X509(bio, NULL, kmip_no_passphrase, NULL)) != NULL)
	{
		if (X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), x) == 1)
			ncas++;
		X509_free(x);
	}
	x = NULL;
	ERR_clear_error();
	if (ncas == 0)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CA_FILE",
						   "byok.kmip_ca_file holds no PEM certificate.");
		goto done;
	}
	kconn.ctx = ctx;
	ctx = NULL;
	ok = true;

done:
	if (bio)
		BIO_free(bio);
	if (x)
		X509_free(x);
	if (pkey)
		EVP_PKEY_free(pkey);
	if (ctx)
		SSL_CTX_free(ctx);
	kmip_wipe_file(&cert);
	kmip_wipe_file(&key);
	kmip_wipe_file(&ca);
	ERR_clear_error();
	return ok;
}

/* ------------------------------------------------------------ I/O */

static bool
kmip_interrupt_pending(void)
{
	return QueryCancelPending || ProcDiePending || ShutdownRequestPending;
}

/*
 * Wait until fd is ready for 'events', in slices of at most 50 ms, checking
 * for interrupts and the deadline.
 */
static KmipIo
kmip_wait(int fd, short events, TimestampTz deadline, ByokKmsError *err)
{
	for (;;)
	{
		struct pollfd pfd = {.fd = fd, .events = events};
		int64		left_ms = (deadline - GetCurrentTimestamp()) / 1000;
		int			rc;

		if (kmip_interrupt_pending())
		{
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "INTERRUPTED", "The call was interrupted.");
			return KIO_INTERRUPTED;
		}
		if (left_ms <= 0)
		{
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "TIMEOUT",
							   "No answer from the KMIP server within byok.kms_timeout (%d ms).",
							   byok_kms_timeout);
			return KIO_FAILED;
		}
		rc = poll(&pfd, 1, (int) Min(left_ms, KMIP_WAIT_SLICE_MS));
		if (rc > 0)
			return KIO_OK;
		if (rc < 0 && errno != EINTR)
		{
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "POLL", "poll failed: %m.");
			return KIO_FAILED;
		}
	}
}

/* Wait as an SSL call asked (want read or write); KIO_FAILED for other errors. */
static KmipIo
kmip_ssl_wait(int ssl_err, TimestampTz deadline, ByokKmsError *err)
{
	if (ssl_err == SSL_ERROR_WANT_READ)
		return kmip_wait(kconn.fd, POLLIN, deadline, err);
	if (ssl_err == SSL_ERROR_WANT_WRITE)
		return kmip_wait(kconn.fd, POLLOUT, deadline, err);
	return KIO_FAILED;
}

/* Open a TCP connection to one address, non-blocking. */
static KmipIo
kmip_tcp_connect(const struct addrinfo *ai, const char *host, const char *port,
				 TimestampTz deadline, ByokKmsError *err)
{
	int			fd;
	int			one = 1;
	int			soerr = 0;
	socklen_t	slen = sizeof(soerr);
	KmipIo		io;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
	{
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "SOCKET", "Could not create a socket: %m.");
		return KIO_FAILED;
	}
	(void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
	{
		if (errno != EINPROGRESS)
		{
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "CONNECT",
							   "Could not connect to the KMIP server %s port %s: %m.",
							   host, port);
			close(fd);
			return KIO_FAILED;
		}
		io = kmip_wait(fd, POLLOUT, deadline, err);
		if (io != KIO_OK)
		{
			close(fd);
			return io;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen) != 0 || soerr != 0)
		{
			errno = soerr;
			byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "CONNECT",
							   "Could not connect to the KMIP server %s port %s: %m.",
							   host, port);
			close(fd);
			return KIO_FAILED;
		}
	}
	kconn.fd = fd;
	return KIO_OK;
}

/* Explain a failed TLS handshake. */
static void
kmip_handshake_error(const char *host, ByokKmsError *err)
{
	long		verify = SSL_get_verify_result(kconn.ssl);
	unsigned long e = ERR_peek_last_error();

	if (verify != X509_V_OK)
	{
		ERR_clear_error();
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "TLS_VERIFY",
						   "The KMIP server's certificate was not accepted: %s. byok.kmip_ca_file must hold the CA that signed it, and it must name the host byok connects to (%s).",
						   X509_verify_cert_error_string(verify), host);
	}
	else if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL)
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "TLS_HANDSHAKE",
						   "The TLS handshake with the KMIP server failed: %s. The server must accept TLS 1.2 or later and a client certificate (byok.kmip_cert_file) signed by a CA it trusts, with extended key usage clientAuth.",
						   kmip_ssl_reason("handshake failure"));
	else
	{
		ERR_clear_error();
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "TLS_CLOSED",
						   "The KMIP server closed the connection during the TLS handshake.");
	}
}

/* Connect to one server and handshake; the connection is kept in kconn. */
static KmipIo
kmip_connect_one(const char *host, const char *port, TimestampTz deadline, ByokKmsError *err)
{
	struct addrinfo hints = {0};
	struct addrinfo *res = NULL;
	int			rc;
	KmipIo		io = KIO_FAILED;
	struct in6_addr a6;

	hints.ai_socktype = SOCK_STREAM;
	hints.ai_family = AF_UNSPEC;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0)
	{
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "RESOLVE",
						   "Could not resolve the KMIP server name \"%s\": %s.",
						   host, gai_strerror(rc));
		return KIO_FAILED;
	}
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
	{
		io = kmip_tcp_connect(ai, host, port, deadline, err);
		if (io != KIO_FAILED)
			break;
	}
	freeaddrinfo(res);
	if (io != KIO_OK)
		return io;

	ERR_clear_error();
	kconn.ssl = SSL_new(kconn.ctx);
	if (kconn.ssl == NULL || SSL_set_fd(kconn.ssl, kconn.fd) != 1)
	{
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "TLS_SETUP", "Could not set up TLS: %s.",
						   kmip_ssl_reason("out of memory"));
		kmip_drop_connection();
		return KIO_FAILED;
	}
	/* the server certificate must name the host we asked for */
	if (inet_pton(AF_INET, host, &a6) == 1 || inet_pton(AF_INET6, host, &a6) == 1)
		rc = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(kconn.ssl), host);
	else
		rc = SSL_set1_host(kconn.ssl, host) && SSL_set_tlsext_host_name(kconn.ssl, host);
	if (rc != 1)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_HOST",
						   "The KMIP server name \"%s\" cannot be checked against a certificate.", host);
		kmip_drop_connection();
		return KIO_FAILED;
	}
	for (;;)
	{
		int			r = SSL_connect(kconn.ssl);
		int			e;

		if (r == 1)
			return KIO_OK;
		e = SSL_get_error(kconn.ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		{
			io = kmip_ssl_wait(e, deadline, err);
			if (io == KIO_OK)
				continue;
		}
		else
		{
			kmip_handshake_error(host, err);
			io = KIO_FAILED;
		}
		kmip_drop_connection();
		return io;
	}
}

/*
 * Split byok.kmip_host ("host[:port][, host[:port]]...", IPv6 literals in
 * brackets when a port follows) into hosts[] and ports[] inside buf.
 * Returns the number of servers, 0 if the setting is unusable.
 */
static int
kmip_parse_hosts(char *buf, char **hosts, char ports[][8], int max)
{
	int			n = 0;
	char	   *save = NULL;

	for (char *tok = strtok_r(buf, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save))
	{
		char	   *end;
		char	   *colon;

		while (*tok == ' ' || *tok == '\t')
			tok++;
		end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*tok == '\0')
			continue;
		snprintf(ports[n], sizeof(ports[n]), "%d", byok_kmip_port);
		if (*tok == '[')
		{
			char	   *close = strchr(tok, ']');

			if (close == NULL)
				return 0;
			*close = '\0';
			colon = close[1] == ':' ? close + 1 : NULL;
			if (close[1] != '\0' && colon == NULL)
				return 0;
			tok++;
		}
		else
		{
			colon = strchr(tok, ':');
			if (colon && strchr(colon + 1, ':'))
				colon = NULL;	/* a bare IPv6 literal: no port */
		}
		if (colon)
		{
			char	   *pend;
			long		p;

			*colon = '\0';
			p = strtol(colon + 1, &pend, 10);
			if (*pend != '\0' || p < 1 || p > 65535)
				return 0;
			snprintf(ports[n], sizeof(ports[n]), "%ld", p);
		}
		if (*tok == '\0')
			return 0;
		hosts[n++] = tok;
	}
	return n;
}

/*
 * Connect to the first server of byok.kmip_host that answers, starting with
 * the one that worked last (so a failed-over process does not wait on a
 * dead primary every time).  Each server gets an equal share of the time
 * left.  A certificate or handshake refusal is reported in preference to
 * an unreachable server, since it needs an administrator.
 */
static KmipIo
kmip_connect(TimestampTz deadline, ByokKmsError *err)
{
	char		buf[1024];
	char	   *hosts[KMIP_MAX_HOSTS];
	char		ports[KMIP_MAX_HOSTS][8];
	int			n;
	ByokKmsError config_err;
	KmipIo		io = KIO_FAILED;

	strlcpy(buf, byok_kmip_host ? byok_kmip_host : "", sizeof(buf));
	n = kmip_parse_hosts(buf, hosts, ports, KMIP_MAX_HOSTS);
	if (n == 0)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_HOST",
						   "byok.kmip_host must list one to %d servers as host or host:port, separated by commas (IPv6 addresses in brackets when a port follows).",
						   KMIP_MAX_HOSTS);
		return KIO_FAILED;
	}
	config_err.status = BYOK_KMS_OK;
	for (int k = 0; k < n; k++)
	{
		int			i = (kmip_host_next + k) % n;
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz share = now + (deadline - now) / (n - k);

		io = kmip_connect_one(hosts[i], ports[i], share, err);
		if (io == KIO_OK)
		{
			kmip_host_next = i;
			return KIO_OK;
		}
		if (io == KIO_INTERRUPTED)
			return io;
		if (err->status == BYOK_KMS_CONFIG && config_err.status == BYOK_KMS_OK)
			config_err = *err;
	}
	if (config_err.status != BYOK_KMS_OK)
		*err = config_err;
	return io;
}

/*
 * Is the kept connection still usable?  A readable socket before we asked
 * anything means the server closed it (or sent something we did not ask
 * for): either way it is dropped.
 */
static bool
kmip_connection_alive(void)
{
	struct pollfd pfd;

	if (kconn.ssl == NULL)
		return false;
	if (SSL_pending(kconn.ssl) > 0)
		return false;
	pfd.fd = kconn.fd;
	pfd.events = POLLIN;
	pfd.revents = 0;
	return poll(&pfd, 1, 0) == 0;
}

static KmipIo
kmip_write_all(const uint8 *data, size_t len, TimestampTz deadline, ByokKmsError *err)
{
	size_t		done = 0;

	while (done < len)
	{
		int			r = SSL_write(kconn.ssl, data + done, (int) (len - done));

		if (r > 0)
			done += r;
		else
		{
			int			e = SSL_get_error(kconn.ssl, r);
			KmipIo		io;

			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
			{
				byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "SEND",
								   "Sending to the KMIP server failed: %s.",
								   kmip_ssl_reason("connection closed"));
				return KIO_FAILED;
			}
			io = kmip_ssl_wait(e, deadline, err);
			if (io != KIO_OK)
				return io;
		}
	}
	return KIO_OK;
}

static KmipIo
kmip_read_all(uint8 *buf, size_t len, TimestampTz deadline, size_t *got, ByokKmsError *err)
{
	while (*got < len)
	{
		int			r = SSL_read(kconn.ssl, buf + *got, (int) (len - *got));

		if (r > 0)
			*got += r;
		else
		{
			int			e = SSL_get_error(kconn.ssl, r);
			KmipIo		io;

			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
			{
				byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "RECEIVE",
								   "The KMIP server closed the connection: %s.",
								   kmip_ssl_reason("end of stream"));
				return KIO_FAILED;
			}
			io = kmip_ssl_wait(e, deadline, err);
			if (io != KIO_OK)
				return io;
		}
	}
	return KIO_OK;
}

/*
 * One request/answer exchange on the open connection.  The answer goes to
 * a palloc'd buffer the caller wipes; *got_any says whether any answer byte
 * arrived (if not, a failure on a reused connection may be retried).
 */
static KmipIo
kmip_exchange(const KmipBuf *req, uint8 **answer, size_t *answer_len, bool *got_any,
			  TimestampTz deadline, ByokKmsError *err)
{
	uint8		head[KMIP_HEADER_LEN];
	size_t		got = 0;
	size_t		total;
	uint8	   *buf;
	KmipIo		io;

	*got_any = false;
	io = kmip_write_all(req->data, req->len, deadline, err);
	if (io != KIO_OK)
		return io;
	io = kmip_read_all(head, sizeof(head), deadline, &got, err);
	*got_any = got > 0;
	if (io != KIO_OK)
		return io;
	if (kmip_peek_length(head, sizeof(head), &total) != KMIP_OK || total > KMIP_MAX_MESSAGE)
	{
		byok_kms_set_error(err, BYOK_KMS_BAD_RESPONSE, "BAD_MESSAGE",
						   "The KMIP server's answer is not a TTLV message of at most %d bytes.",
						   KMIP_MAX_MESSAGE);
		return KIO_FAILED;
	}
	buf = palloc(total);
	memcpy(buf, head, sizeof(head));
	io = kmip_read_all(buf, total, deadline, &got, err);
	if (io != KIO_OK)
	{
		explicit_bzero(buf, total);
		pfree(buf);
		return io;
	}
	*answer = buf;
	*answer_len = total;
	return KIO_OK;
}

/*
 * Send a request and receive its answer, connecting (or reconnecting once,
 * when a reused connection turns out dead) as needed, all within
 * byok.kms_timeout.
 */
static KmipIo
kmip_roundtrip(const KmipBuf *req, uint8 **answer, size_t *answer_len, ByokKmsError *err)
{
	TimestampTz deadline = GetCurrentTimestamp() + (int64) byok_kms_timeout * 1000;
	char		config[sizeof(kconn.config)];

	if (kconn.pid != MyProcPid)
		kmip_drop_connection();
	kmip_config_key(config, sizeof(config));
	if (kconn.ctx == NULL || strcmp(config, kconn.config) != 0)
	{
		kmip_drop_all();
		if (!kmip_make_ctx(err))
			return KIO_FAILED;
		strlcpy(kconn.config, config, sizeof(kconn.config));
	}

	for (int attempt = 0;; attempt++)
	{
		bool		reused = false;
		bool		got_any;
		KmipIo		io;

		if (kconn.ssl && !kmip_connection_alive())
			kmip_drop_connection();
		if (kconn.ssl)
			reused = true;
		else
		{
			io = kmip_connect(deadline, err);
			if (io != KIO_OK)
				return io;
		}
		io = kmip_exchange(req, answer, answer_len, &got_any, deadline, err);
		if (io == KIO_OK)
			return KIO_OK;
		kmip_drop_connection();
		/* a kept connection may have died since the liveness check: once more */
		if (io == KIO_INTERRUPTED || !reused || got_any || attempt > 0 ||
			strcmp(err->remote_code, "TIMEOUT") == 0)
			return io;
	}
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
		io = kmip_roundtrip(req, answer, answer_len, err);
	}
	PG_CATCH();
	{
		kmip_buf_free(req);
		kmip_drop_connection();
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
		kmip_drop_connection(); /* framing can no longer be trusted */
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
			kmip_sanitise(s, len, it->message, sizeof(it->message));
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

	for (int i = 0; i < n && !interrupted; i++)
	{
		ByokKmsStateQuery *q = &queries[i];
		int64		t0 = GetCurrentTimestamp();

		q->status = kmip_check_key_ref(q->key_ref, &q->err);
		if (q->status == BYOK_KMS_OK)
		{
			KmipIo		io = kmip_resolve(q->key_ref, uids[i], &q->err);

			interrupted = io == KIO_INTERRUPTED;
			q->status = io == KIO_OK ? BYOK_KMS_OK : q->err.status;
		}
		q->us = GetCurrentTimestamp() - t0;
		if (q->status == BYOK_KMS_OK)
		{
			/* until its answer arrives */
			todo[ntodo++] = i;
			q->status = BYOK_KMS_UNAVAILABLE;
			byok_kms_set_error(&q->err, BYOK_KMS_UNAVAILABLE, "INTERRUPTED",
							   "The call was interrupted.");
		}
	}
	for (int i = 0; i < n; i++)
		if (interrupted && queries[i].status == BYOK_KMS_OK)
		{
			queries[i].status = BYOK_KMS_UNAVAILABLE;
			byok_kms_set_error(&queries[i].err, BYOK_KMS_UNAVAILABLE, "INTERRUPTED",
							   "The call was interrupted.");
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

static ByokKmsStatus
kmip_wrap(const char *key_ref, const ByokKmsContext *ctx, const uint8 *plain, int plain_len,
		  uint8 *out, int *out_len, ByokKmsError *err)
{
	char		uid[KMIP_UID_MAX + 1];
	uint8		iv[KMIP_IV_LEN];
	uint8		aad[64 + NAMEDATALEN];
	int			aad_len;
	KmipBuf		req;
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
	kmip_begin_request(&req, 1);
	kmip_begin_item(&req, KMIP_OP_ENCRYPT, 0, 1);
	kmip_put_text(&req, KMIP_TAG_UNIQUE_IDENTIFIER, uid, uid_len);
	kmip_put_gcm_params(&req);
	kmip_put_bytes(&req, KMIP_TAG_DATA, plain, plain_len);
	kmip_put_bytes(&req, KMIP_TAG_IV_COUNTER_NONCE, iv, sizeof(iv));
	kmip_put_bytes(&req, KMIP_TAG_AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad, aad_len);
	kmip_end_item(&req);
	io = kmip_call(&req, doc, &answer, &answer_len, err);
	if (io != KIO_OK)
		st = err->status;
	else if ((st = kmip_single_result(doc, "Encrypt", &it, err)) != BYOK_KMS_OK)
	{
		if (st == BYOK_KMS_PERMISSION)
			st = kmip_explain_refusal(uid, err);
	}
	else
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
	KmipBuf		req;
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
	kmip_begin_request(&req, 1);
	kmip_begin_item(&req, KMIP_OP_DECRYPT, 0, 1);
	kmip_put_text(&req, KMIP_TAG_UNIQUE_IDENTIFIER, uid, uid_len);
	kmip_put_gcm_params(&req);
	kmip_put_bytes(&req, KMIP_TAG_DATA, ct, ct_len);
	kmip_put_bytes(&req, KMIP_TAG_IV_COUNTER_NONCE, iv, KMIP_IV_LEN);
	kmip_put_bytes(&req, KMIP_TAG_AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad, aad_len);
	kmip_put_bytes(&req, KMIP_TAG_AUTHENTICATED_ENCRYPTION_TAG, tag, KMIP_GCM_TAG_LEN);
	kmip_end_item(&req);
	io = kmip_call(&req, doc, &answer, &answer_len, err);
	if (io != KIO_OK)
		st = err->status;
	else if ((st = kmip_single_result(doc, "Decrypt", &it, err)) != BYOK_KMS_OK)
	{
		if (st == BYOK_KMS_PERMISSION)
			st = kmip_explain_refusal(uid, err);
		else if (st == BYOK_KMS_BAD_RESPONSE)
			snprintf(err->message, sizeof(err->message),
					 "The wrapped key does not decrypt under this KMIP key with this tenant's context (authentication tag mismatch).");
	}
	else
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
