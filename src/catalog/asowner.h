/*-------------------------------------------------------------------------
 *
 * catalog/asowner.h
 *		Switching the current user for a stretch of SPI work, with
 *		search_path pinned (catalog/asowner.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_ASOWNER_H
#define BYOK_ASOWNER_H

/* what byok_switch_user saved, for byok_switch_back */
typedef struct ByokUserSwitch
{
	Oid			userid;			/* the user before the switch */
	int			sec_context;	/* its security context */
	int			nestlevel;		/* GUC nest level holding the pinned search_path */
} ByokUserSwitch;

extern void byok_switch_user(Oid user, int add_sec_context, ByokUserSwitch *sw);
extern void byok_switch_back(ByokUserSwitch *sw);

#endif							/* BYOK_ASOWNER_H */
