/*-------------------------------------------------------------------------
 *
 * providers/json.h
 *		A bounded JSON reader for provider answers.
 *
 * Depends only on the C standard library, so the code the extension runs
 * is also built standalone for the unit test and the fuzzers
 * (test/fuzz/json_test.c, aws_answer_fuzz.c, vault_answer_fuzz.c).  It
 * never allocates, never recurses and never raises: an answer nested
 * deeper than BYOK_JSON_MAX_DEPTH, a picked value longer than
 * BYOK_JSON_MAX_VALUE, invalid UTF-8 or a picked field given twice is
 * refused with a reason.
 *
 * Locking: none; no state outside the caller's ByokJsonPick.
 * Key lifetime: picked values (a base64 tenant key, for one) are copied
 * into pick->store only; byok_json_pick_wipe() wipes it, and a refused
 * answer leaves it wiped.  Values not picked are validated in place and
 * never copied.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_PROVIDERS_JSON_H
#define BYOK_PROVIDERS_JSON_H

#include <stdbool.h>
#include <stddef.h>

#define BYOK_JSON_MAX_PATHS		6
#define BYOK_JSON_MAX_DEPTH		32	/* objects and arrays open at once */
#define BYOK_JSON_MAX_VALUE		8192	/* bytes of one picked value */
#define BYOK_JSON_STORE			16384	/* bytes of all picked values */
#define BYOK_JSON_MAX_PATH		256 /* a longer path matches no pick */

typedef enum ByokJsonResult
{
	BYOK_JSON_OK = 0,
	BYOK_JSON_SYNTAX,			/* not JSON (or not UTF-8, or a NUL in a string) */
	BYOK_JSON_TOO_DEEP,			/* nested deeper than BYOK_JSON_MAX_DEPTH */
	BYOK_JSON_TOO_LONG,			/* a picked value longer than BYOK_JSON_MAX_VALUE */
	BYOK_JSON_DUPLICATE,		/* a picked field appears twice */
	BYOK_JSON_STORE_FULL,		/* the picked values exceed BYOK_JSON_STORE together */
	BYOK_JSON_RESULT_COUNT
} ByokJsonResult;

typedef enum ByokJsonKind
{
	BYOK_JSON_ABSENT = 0,
	BYOK_JSON_STRING,
	BYOK_JSON_NUMBER,
	BYOK_JSON_LITERAL,			/* true, false, null */
	BYOK_JSON_OBJECT,
	BYOK_JSON_ARRAY,
	BYOK_JSON_KIND_COUNT
} ByokJsonKind;

/*
 * The scalar values at a few dotted paths ("a.b", "errors.0": array
 * elements by index).  A field name holding "." matches no path.
 */
typedef struct ByokJsonPick
{
	int			npaths;
	const char *paths[BYOK_JSON_MAX_PATHS];
	const char *values[BYOK_JSON_MAX_PATHS];	/* in store, NUL-terminated; NULL
												 * if absent or not a scalar */
	size_t		lens[BYOK_JSON_MAX_PATHS];	/* strlen of each value */
	ByokJsonKind kinds[BYOK_JSON_MAX_PATHS];	/* what stands at each path */
	ByokJsonResult result;		/* of the last byok_json_pick */
	size_t		used;			/* bytes of store in use */
	char		store[BYOK_JSON_STORE];	/* the picked values (wiped) */
} ByokJsonPick;

extern bool byok_json_pick(const char *json, size_t len, ByokJsonPick *pick);
extern void byok_json_pick_wipe(ByokJsonPick *pick);
extern const char *byok_json_result_text(ByokJsonResult result);

#endif							/* BYOK_PROVIDERS_JSON_H */
