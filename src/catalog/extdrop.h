/*-------------------------------------------------------------------------
 *
 * catalog/extdrop.h
 *		DROP EXTENSION byok: refused while tenants hold keys (catalog/extdrop.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_EXTDROP_H
#define BYOK_EXTDROP_H

extern void byok_extdrop_install(void);

#endif							/* BYOK_EXTDROP_H */
