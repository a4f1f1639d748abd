/*-------------------------------------------------------------------------
 *
 * providers/kmip/conn.c
 *		The kmip provider's transport: one mutual-TLS connection per process
 *		to a KMIP server, and one request/answer exchange on it.
 *
 * Connections.  Opened on first use and kept; a connection the server
 * closed (restart, idle timeout) is noticed before use (a readable socket
 * before we asked anything) or on the first failed exchange, and reopened
 * once within the same call.  byok.kmip_host lists up to KMIP_MAX_HOSTS
 * servers, tried in turn starting with the one that answered last, each
 * given an equal share of the time left; a certificate or handshake
 * refusal is reported in preference to an unreachable server.  A forked
 * child never touches its parent's connection.
 *
 * Time.  Sockets are non-blocking and every wait polls for at most 20 ms,
 * checking for a cancel, a termination or a shutdown request (KIO_INTERRUPTED:
 * the caller cleans up, then runs CHECK_FOR_INTERRUPTS); the whole call,
 * connect, handshake and reconnect included, is bounded by byok.kms_timeout.
 * Host names are resolved with getaddrinfo_a (glibc's resolver thread),
 * bounded and interruptible like the rest.
 *
 * TLS.  1.2 or later; the server certificate is verified against
 * byok.kmip_ca_file and must name the host connected to (IP address or DNS
 * name, SNI sent for names); our certificate and key come from
 * byok.kmip_cert_file and byok.kmip_key_file.  The three files must be
 * readable by the server's OS user alone; they are read into memory (the
 * key's text wiped right after) and read again when a setting or a file
 * changes, so certificates rotate with a reload.  Encrypted keys are
 * refused rather than prompting for a pass phrase.
 *
 * Secrets and key lifetime: requests and answers carry TKs in clear inside the TLS channel;
 * the answer buffer is palloc'd and wiped by the caller.  Error texts carry
 * OpenSSL reason strings and host names, never a value.
 *
 * Locking: none; callers hold no LWLock while calling in here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
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
#include "utils/timestamp.h"

#include "guc.h"
#include "providers/kmip/conn.h"
#include "providers/http.h"

#define KMIP_WAIT_SLICE_MS	20
#define KMIP_MAX_HOSTS		8

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

/* the server of byok.kmip_host that answered last: tried first */
static int	ktls_host_next = 0;

/* The reason of the first OpenSSL error, or a fallback; clears the queue. */
static const char *
ktls_ssl_reason(const char *fallback)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	ERR_clear_error();
	return r ? r : fallback;
}

/* ------------------------------------------------------------ TLS set-up */

void
byok_kmip_drop_connection(void)
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
ktls_drop_all(void)
{
	byok_kmip_drop_connection();
	if (kconn.ctx)
		SSL_CTX_free(kconn.ctx);
	kconn.ctx = NULL;
	kconn.config[0] = '\0';
	ktls_host_next = 0;
}

/* Settings plus each file's identity: a change means a new SSL_CTX. */
static void
ktls_config_key(char *out, size_t len)
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
ktls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return 0;
}

static bool
ktls_read_file(const char *path, const char *guc, StringInfo out, ByokKmsError *err)
{
	initStringInfo(out);
	return byok_read_secret_file(path, guc, out, err);
}

static void
ktls_wipe_file(StringInfo s)
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
ktls_make_ctx(ByokKmsError *err)
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
	if (!ktls_read_file(byok_kmip_cert_file, "byok.kmip_cert_file", &cert, err) ||
		!ktls_read_file(byok_kmip_key_file, "byok.kmip_key_file", &key, err) ||
		!ktls_read_file(byok_kmip_ca_file, "byok.kmip_ca_file", &ca, err))
		goto done;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "TLS_SETUP", "Could not set up TLS: %s.",
						   ktls_ssl_reason("out of memory"));
		goto done;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* an answer's plaintext (a tenant key) is wiped from OpenSSL's record buffer once read */
	SSL_CTX_set_options(ctx, SSL_OP_CLEANSE_PLAINTEXT);

	/* our certificate, then any chain certificates after it */
	bio = BIO_new_mem_buf(cert.data, cert.len);
	x = bio ? PEM_read_bio_X509(bio, NULL, ktls_no_passphrase, NULL) : NULL;
	if (x == NULL || SSL_CTX_use_certificate(ctx, x) != 1)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_CERTIFICATE",
						   "byok.kmip_cert_file holds no usable PEM certificate: %s.",
						   ktls_ssl_reason("no certificate"));
		goto done;
	}
	X509_free(x);
	while ((x = PEM_read_bio_X509(bio, NULL, ktls_no_passphrase, NULL)) != NULL)
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
	pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, ktls_no_passphrase, NULL) : NULL;
	BIO_free(bio);
	bio = NULL;
	if (pkey == NULL || SSL_CTX_use_PrivateKey(ctx, pkey) != 1 ||
		SSL_CTX_check_private_key(ctx) != 1)
	{
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_PRIVATE_KEY",
						   "byok.kmip_key_file holds no unencrypted PEM private key matching byok.kmip_cert_file: %s.",
						   ktls_ssl_reason("no key"));
		goto done;
	}

	/* the CAs that may sign the server's certificate */
	bio = BIO_new_mem_buf(ca.data, ca.len);
	while (bio && (x = PEM_read_bio_X509(bio, NULL, ktls_no_passphrase, NULL)) != NULL)
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
	ktls_wipe_file(&cert);
	ktls_wipe_file(&key);
	ktls_wipe_file(&ca);
	ERR_clear_error();
	return ok;
}

/* ------------------------------------------------------------ I/O */

/*
 * Wait until fd is ready for 'events', in slices of at most 20 ms, checking
 * for interrupts and the deadline.
 */
static KmipIo
ktls_wait(int fd, short events, TimestampTz deadline, ByokKmsError *err)
{
	for (;;)
	{
		struct pollfd pfd = {.fd = fd, .events = events};
		int64		left_ms = (deadline - GetCurrentTimestamp()) / 1000;
		int			rc;

		if (byok_kms_interrupt_pending())
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
ktls_ssl_wait(int ssl_err, TimestampTz deadline, ByokKmsError *err)
{
	if (ssl_err == SSL_ERROR_WANT_READ)
		return ktls_wait(kconn.fd, POLLIN, deadline, err);
	if (ssl_err == SSL_ERROR_WANT_WRITE)
		return ktls_wait(kconn.fd, POLLOUT, deadline, err);
	return KIO_FAILED;
}

/* Open a TCP connection to one address, non-blocking. */
static KmipIo
ktls_tcp_connect(const struct addrinfo *ai, const char *host, const char *port,
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
		io = ktls_wait(fd, POLLOUT, deadline, err);
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
ktls_handshake_error(const char *host, ByokKmsError *err)
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
						   ktls_ssl_reason("handshake failure"));
	else
	{
		ERR_clear_error();
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "TLS_CLOSED",
						   "The KMIP server closed the connection during the TLS handshake.");
	}
}

/* one name lookup handed to glibc's resolver thread (getaddrinfo_a) */
typedef struct KtlsLookup
{
	struct gaicb cb;			/* points into this struct */
	struct addrinfo hints;
	char		host[256];
	char		port[8];
} KtlsLookup;

/*
 * Resolve host:port without blocking: glibc resolves in its own thread
 * while we wait in 20 ms slices, serving interrupts, until the deadline.
 * A lookup given up on is cancelled; one that cannot be cancelled any more
 * keeps its (small, malloc'd) request, which glibc may still write to.
 */
static KmipIo
ktls_resolve(const char *host, const char *port, TimestampTz deadline,
			 struct addrinfo **res, ByokKmsError *err)
{
	KtlsLookup *l = calloc(1, sizeof(KtlsLookup));
	struct gaicb *list[1];
	int			rc;

	*res = NULL;
	if (l == NULL || strlen(host) >= sizeof(l->host) || strlen(port) >= sizeof(l->port))
	{
		free(l);
		byok_kms_set_error(err, BYOK_KMS_CONFIG, "BAD_HOST",
						   "The KMIP server name \"%.64s\" is too long.", host);
		return KIO_FAILED;
	}
	strlcpy(l->host, host, sizeof(l->host));
	strlcpy(l->port, port, sizeof(l->port));
	l->hints.ai_socktype = SOCK_STREAM;
	l->hints.ai_family = AF_UNSPEC;
	l->cb.ar_name = l->host;
	l->cb.ar_service = l->port;
	l->cb.ar_request = &l->hints;
	list[0] = &l->cb;
	rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
	if (rc == 0)
		rc = gai_error(&l->cb);
	for (; rc == EAI_INPROGRESS; rc = gai_error(&l->cb))
	{
		int64		left_ms = (deadline - GetCurrentTimestamp()) / 1000;
		struct timespec ts = {0, 1000000L * (long) Max(1, Min(left_ms, KMIP_WAIT_SLICE_MS))};

		if (byok_kms_interrupt_pending() || left_ms <= 0)
		{
			bool		interrupted = byok_kms_interrupt_pending();

			if (gai_cancel(&l->cb) == EAI_CANCELED)
				free(l);
			/* else: glibc still owns the request; it is left behind */
			if (interrupted)
				byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "INTERRUPTED", "The call was interrupted.");
			else
				byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "TIMEOUT",
								   "Resolving the KMIP server name \"%s\" took longer than byok.kms_timeout (%d ms).",
								   host, byok_kms_timeout);
			return interrupted ? KIO_INTERRUPTED : KIO_FAILED;
		}
		(void) gai_suspend((const struct gaicb *const *) list, 1, &ts);
	}
	if (rc != 0)
	{
		if (l->cb.ar_result)
			freeaddrinfo(l->cb.ar_result);
		free(l);
		byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "RESOLVE",
						   "Could not resolve the KMIP server name \"%s\": %s.",
						   host, gai_strerror(rc));
		return KIO_FAILED;
	}
	*res = l->cb.ar_result;
	free(l);
	return KIO_OK;
}

/* Connect to one server and handshake; the connection is kept in kconn. */
static KmipIo
ktls_connect_one(const char *host, const char *port, TimestampTz deadline, ByokKmsError *err)
{
	struct addrinfo *res = NULL;
	int			rc;
	KmipIo		io = KIO_FAILED;
	struct in6_addr a6;

	io = ktls_resolve(host, port, deadline, &res, err);
	if (io != KIO_OK)
		return io;
	io = KIO_FAILED;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
	{
		io = ktls_tcp_connect(ai, host, port, deadline, err);
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
						   ktls_ssl_reason("out of memory"));
		byok_kmip_drop_connection();
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
		byok_kmip_drop_connection();
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
			io = ktls_ssl_wait(e, deadline, err);
			if (io == KIO_OK)
				continue;
		}
		else
		{
			ktls_handshake_error(host, err);
			io = KIO_FAILED;
		}
		byok_kmip_drop_connection();
		return io;
	}
}

/*
 * Split byok.kmip_host ("host[:port][, host[:port]]...", IPv6 literals in
 * brackets when a port follows) into hosts[] and ports[] inside buf.
 * Returns the number of servers, 0 if the setting is unusable.
 */
static int
ktls_parse_hosts(char *buf, char **hosts, char ports[][8], int max)
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
ktls_connect(TimestampTz deadline, ByokKmsError *err)
{
	char		buf[1024];
	char	   *hosts[KMIP_MAX_HOSTS];
	char		ports[KMIP_MAX_HOSTS][8];
	int			n;
	ByokKmsError config_err;
	KmipIo		io = KIO_FAILED;

	strlcpy(buf, byok_kmip_host ? byok_kmip_host : "", sizeof(buf));
	n = ktls_parse_hosts(buf, hosts, ports, KMIP_MAX_HOSTS);
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
		int			i = (ktls_host_next + k) % n;
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz share = now + (deadline - now) / (n - k);

		io = ktls_connect_one(hosts[i], ports[i], share, err);
		if (io == KIO_OK)
		{
			ktls_host_next = i;
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
ktls_connection_alive(void)
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

/*
 * Write (or read) exactly len bytes of buf, from *done on, waiting as
 * OpenSSL asks; *done counts what went through.
 */
static KmipIo
ktls_transfer(bool writing, uint8 *buf, size_t len, size_t *done, TimestampTz deadline,
			  ByokKmsError *err)
{
	while (*done < len)
	{
		int			r = writing ? SSL_write(kconn.ssl, buf + *done, (int) (len - *done)) :
			SSL_read(kconn.ssl, buf + *done, (int) (len - *done));
		int			e;
		KmipIo		io;

		if (r > 0)
		{
			*done += r;
			continue;
		}
		e = SSL_get_error(kconn.ssl, r);
		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
		{
			if (writing)
				byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "SEND",
								   "Sending to the KMIP server failed: %s.",
								   ktls_ssl_reason("connection closed"));
			else
				byok_kms_set_error(err, BYOK_KMS_UNAVAILABLE, "RECEIVE",
								   "The KMIP server closed the connection: %s.",
								   ktls_ssl_reason("end of stream"));
			return KIO_FAILED;
		}
		io = ktls_ssl_wait(e, deadline, err);
		if (io != KIO_OK)
			return io;
	}
	return KIO_OK;
}

/*
 * One request/answer exchange on the open connection.  The answer goes to
 * a palloc'd buffer the caller wipes; *got_any says whether any answer byte
 * arrived (if not, a failure on a reused connection may be retried).
 */
static KmipIo
ktls_exchange(const KmipBuf *req, uint8 **answer, size_t *answer_len, bool *got_any,
			  TimestampTz deadline, ByokKmsError *err)
{
	uint8		head[KMIP_HEADER_LEN];
	size_t		sent = 0;
	size_t		got = 0;
	size_t		total;
	uint8	   *buf;
	KmipIo		io;

	*got_any = false;
	io = ktls_transfer(true, req->data, req->len, &sent, deadline, err);
	if (io != KIO_OK)
		return io;
	io = ktls_transfer(false, head, sizeof(head), &got, deadline, err);
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
	io = ktls_transfer(false, buf, total, &got, deadline, err);
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
KmipIo
byok_kmip_roundtrip(const KmipBuf *req, uint8 **answer, size_t *answer_len, ByokKmsError *err)
{
	TimestampTz deadline = GetCurrentTimestamp() + (int64) byok_kms_timeout * 1000;
	char		config[sizeof(kconn.config)];

	if (kconn.pid != MyProcPid)
		byok_kmip_drop_connection();
	ktls_config_key(config, sizeof(config));
	if (kconn.ctx == NULL || strcmp(config, kconn.config) != 0)
	{
		ktls_drop_all();
		if (!ktls_make_ctx(err))
			return KIO_FAILED;
		strlcpy(kconn.config, config, sizeof(kconn.config));
	}

	for (int attempt = 0;; attempt++)
	{
		bool		reused = false;
		bool		got_any;
		KmipIo		io;

		if (kconn.ssl && !ktls_connection_alive())
			byok_kmip_drop_connection();
		if (kconn.ssl)
			reused = true;
		else
		{
			io = ktls_connect(deadline, err);
			if (io != KIO_OK)
				return io;
		}
		io = ktls_exchange(req, answer, answer_len, &got_any, deadline, err);
		if (io == KIO_OK)
			return KIO_OK;
		byok_kmip_drop_connection();
		/* a kept connection may have died since the liveness check: once more */
		if (io == KIO_INTERRUPTED || !reused || got_any || attempt > 0 ||
			strcmp(err->remote_code, "TIMEOUT") == 0)
			return io;
	}
}
