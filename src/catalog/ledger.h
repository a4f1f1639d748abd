/*-------------------------------------------------------------------------
 *
 * catalog/ledger.h
 *		The destruction ledger shared by the clusters of a platform
 *		(catalog/ledger.c; read by the catalog and the worker).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_LEDGER_H
#define BYOK_LEDGER_H

#include "byok_defs.h"

#define BYOK_LEDGER_FP_LEN 64	/* hex SHA-256 */

extern void byok_ledger_fingerprint(const uint8 *wrapped, int len, char *out);
extern bool byok_ledger_refresh(void);
extern bool byok_ledger_contains(const char *fp);
extern bool byok_ledger_listed(const char *fp);
extern void byok_ledger_append(const char *lines);

#endif							/* BYOK_LEDGER_H */
