/*-------------------------------------------------------------------------
 *
 * providers/kmip/conn.h
 *		The kmip provider's transport (kmip/conn.c): one request/answer
 *		exchange with a KMIP server over the process's TLS connection.
 *
 * Locking: none; callers hold no LWLock while calling in here.
 * Key lifetime: requests and answers carry TKs in clear; the answer is
 * palloc'd and the caller wipes it (see conn.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KMIP_CONN_H
#define BYOK_KMIP_CONN_H

#include "providers/kmip/ttlv.h"
#include "providers/kms.h"

/* how an exchange ended */
typedef enum KmipIo
{
	KIO_OK = 0,
	KIO_FAILED,					/* err set */
	KIO_INTERRUPTED,			/* err set; the caller cleans up, then CHECK_FOR_INTERRUPTS */
	KIO_COUNT
} KmipIo;

/*
 * Send the finished request and receive one whole answer (a palloc'd buffer
 * the caller wipes and frees), connecting or reconnecting as needed, within
 * byok.kms_timeout.
 */
extern KmipIo byok_kmip_roundtrip(const KmipBuf *req, uint8 **answer, size_t *answer_len,
								  ByokKmsError *err);

/* Forget the connection (after an answer that broke the framing, or an error). */
extern void byok_kmip_drop_connection(void);

#endif							/* BYOK_KMIP_CONN_H */
