/*-------------------------------------------------------------------------
 *
 * providers/json.c
 *		A bounded JSON reader for provider answers (RFC 8259).
 *
 * The network providers read a few fields of each answer ("Plaintext",
 * "KeyMetadata.KeyState", "errors.0").  PostgreSQL's own JSON parser is
 * recursive (200,000 '[' exhaust the stack and raise past byok's error
 * handling) and keeps de-escaped copies of every token, key material
 * included.  This reader is a loop over an explicit stack of at most
 * BYOK_JSON_MAX_DEPTH levels: it validates the whole text (grammar, UTF-8
 * per RFC 3629, escapes and surrogate pairs), copies out only the values
 * at the paths asked for, bounded in length, and refuses an answer that
 * gives a picked path twice (two answers in one: which is the provider's?).
 * Work is linear in the input, which byok_http bounds to 1 MiB.
 *
 * Standard C only (see json.h).
 *
 * Locking: none.
 * Key lifetime: only picked values are copied, into pick->store; a
 * refused answer wipes the store before returning, and the caller wipes
 * it with byok_json_pick_wipe() once it is done.
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include "providers/json.h"

typedef struct JrLevel
{
	bool		object;			/* object, else array */
	int			index;			/* array: the element being read */
	size_t		base;			/* path length of the container itself */
	bool		lost;			/* the container's path matches no pick */
} JrLevel;

typedef struct JsonReader
{
	const unsigned char *p;
	const unsigned char *end;
	ByokJsonPick *pick;
	char		path[BYOK_JSON_MAX_PATH + 1];
	size_t		plen;
	bool		lost;			/* the current path matches no pick */
	bool		seen[BYOK_JSON_MAX_PATHS];
	int			depth;
	JrLevel		lv[BYOK_JSON_MAX_DEPTH];
} JsonReader;

static void
jr_ws(JsonReader *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

static int
jr_hex4(JsonReader *r, unsigned *cp)
{
	*cp = 0;
	if (r->end - r->p < 4)
		return 0;
	for (int i = 0; i < 4; i++)
	{
		unsigned char c = *r->p++;

		*cp <<= 4;
		if (c >= '0' && c <= '9')
			*cp |= c - '0';
		else if (c >= 'a' && c <= 'f')
			*cp |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			*cp |= c - 'A' + 10;
		else
			return 0;
	}
	return 1;
}

/*
 * Length of the UTF-8 sequence starting at r->p - 1 (lead byte 'c'), with
 * its continuation bytes checked (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF); 0 if it is not valid.
 */
static int
jr_utf8(JsonReader *r, unsigned char c)
{
	unsigned char lo = 0x80;
	unsigned char hi = 0xBF;
	int			n;

	if (c >= 0xC2 && c <= 0xDF)
		n = 1;
	else if (c >= 0xE0 && c <= 0xEF)
	{
		n = 2;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	}
	else if (c >= 0xF0 && c <= 0xF4)
	{
		n = 3;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	}
	else
		return 0;
	if (r->end - r->p < n)
		return 0;
	for (int i = 0; i < n; i++)
	{
		unsigned char b = r->p[i];

		if (b < (i == 0 ? lo : 0x80) || b > (i == 0 ? hi : 0xBF))
			return 0;
	}
	return n;
}

/* Append one byte of a value to 'out' (cap bytes, one kept for the NUL). */
#define JR_EMIT(b) \
	do { \
		if (out != NULL) \
		{ \
			if (n + 1 < cap) \
				out[n] = (char) (b); \
			else \
				*overflow = true; \
		} \
		n++; \
	} while (0)

/*
 * Read a string whose opening quote was consumed.  Writes the de-escaped
 * text to 'out' when it is not NULL (sets *overflow when it does not fit
 * in cap - 1 bytes).  Returns its length, or -1 when it is not valid.
 */
static long
jr_string(JsonReader *r, char *out, size_t cap, bool *overflow)
{
	size_t		n = 0;

	for (;;)
	{
		unsigned char c;

		if (r->p >= r->end)
			return -1;
		c = *r->p++;
		if (c == '"')
			break;
		if (c < 0x20)
			return -1;
		if (c == '\\')
		{
			unsigned	cp;
			unsigned char u[4];
			int			ulen;

			if (r->p >= r->end)
				return -1;
			c = *r->p++;
			switch (c)
			{
				case '"':
				case '\\':
				case '/':
					JR_EMIT(c);
					continue;
				case 'b':
					JR_EMIT('\b');
					continue;
				case 'f':
					JR_EMIT('\f');
					continue;
				case 'n':
					JR_EMIT('\n');
					continue;
				case 'r':
					JR_EMIT('\r');
					continue;
				case 't':
					JR_EMIT('\t');
					continue;
				case 'u':
					break;
				default:
					return -1;
			}
			if (!jr_hex4(r, &cp))
				return -1;
			if (cp >= 0xD800 && cp <= 0xDBFF)
			{
				unsigned	low;

				if (r->end - r->p < 2 || r->p[0] != '\\' || r->p[1] != 'u')
					return -1;
				r->p += 2;
				if (!jr_hex4(r, &low) || low < 0xDC00 || low > 0xDFFF)
					return -1;
				cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
			}
			else if (cp >= 0xDC00 && cp <= 0xDFFF)
				return -1;
			if (cp == 0)
				return -1;		/* a NUL cannot live in a C string */
			if (cp < 0x80)
			{
				u[0] = cp;
				ulen = 1;
			}
			else if (cp < 0x800)
			{
				u[0] = 0xC0 | (cp >> 6);
				u[1] = 0x80 | (cp & 0x3F);
				ulen = 2;
			}
			else if (cp < 0x10000)
			{
				u[0] = 0xE0 | (cp >> 12);
				u[1] = 0x80 | ((cp >> 6) & 0x3F);
				u[2] = 0x80 | (cp & 0x3F);
				ulen = 3;
			}
			else
			{
				u[0] = 0xF0 | (cp >> 18);
				u[1] = 0x80 | ((cp >> 12) & 0x3F);
				u[2] = 0x80 | ((cp >> 6) & 0x3F);
				u[3] = 0x80 | (cp & 0x3F);
				ulen = 4;
			}
			for (int i = 0; i < ulen; i++)
				JR_EMIT(u[i]);
			explicit_bzero(u, sizeof(u));
			continue;
		}
		JR_EMIT(c);
		if (c >= 0x80)
		{
			int			more = jr_utf8(r, c);

			if (more == 0)
				return -1;
			for (int i = 0; i < more; i++)
			{
				c = *r->p++;	/* not inside JR_EMIT: it skips its argument without 'out' */
				JR_EMIT(c);
			}
		}
	}
	return (long) n;
}

/* A number or a literal (true, false, null): its length, or 0 if not valid. */
static size_t
jr_bare(JsonReader *r, ByokJsonKind *kind)
{
	const unsigned char *s = r->p;
	const unsigned char *e = r->end;
	const unsigned char *q = s;

	for (int i = 0; i < 3; i++)
	{
		static const char *const lits[3] = {"true", "false", "null"};
		size_t		l = strlen(lits[i]);

		if ((size_t) (e - s) >= l && memcmp(s, lits[i], l) == 0)
		{
			*kind = BYOK_JSON_LITERAL;
			return l;
		}
	}
	*kind = BYOK_JSON_NUMBER;
	if (q < e && *q == '-')
		q++;
	if (q < e && *q == '0')
		q++;
	else if (q < e && *q >= '1' && *q <= '9')
		while (q < e && *q >= '0' && *q <= '9')
			q++;
	else
		return 0;
	if (q < e && *q == '.')
	{
		q++;
		if (q >= e || *q < '0' || *q > '9')
			return 0;
		while (q < e && *q >= '0' && *q <= '9')
			q++;
	}
	if (q < e && (*q == 'e' || *q == 'E'))
	{
		q++;
		if (q < e && (*q == '+' || *q == '-'))
			q++;
		if (q >= e || *q < '0' || *q > '9')
			return 0;
		while (q < e && *q >= '0' && *q <= '9')
			q++;
	}
	return q - s;
}

/* Enter a member of the innermost container: its path is the container's + "." + seg. */
static void
jr_enter(JsonReader *r, const char *seg, size_t n, bool seg_lost)
{
	JrLevel    *lv = &r->lv[r->depth - 1];
	size_t		at = lv->base;
	bool		sep = r->depth > 1; /* members of the root have no "." before them */

	r->lost = lv->lost || seg_lost || at + sep + n > BYOK_JSON_MAX_PATH;
	if (!r->lost)
	{
		if (sep)
			r->path[at++] = '.';
		memcpy(r->path + at, seg, n);
		at += n;
	}
	else
		at = lv->base;
	r->plen = at;
	r->path[at] = '\0';
}

static void
jr_enter_index(JsonReader *r, int index)
{
	char		seg[16];
	int			n = 0;
	char		rev[16];

	do
	{
		rev[n++] = '0' + index % 10;
		index /= 10;
	} while (index > 0 && n < (int) sizeof(rev));
	for (int i = 0; i < n; i++)
		seg[i] = rev[n - 1 - i];
	jr_enter(r, seg, n, false);
}

/* An object member's name and its ':'; the member's path is entered. */
static ByokJsonResult
jr_member(JsonReader *r)
{
	char		name[BYOK_JSON_MAX_PATH + 1];
	bool		overflow = false;
	long		n;

	jr_ws(r);
	if (r->p >= r->end || *r->p != '"')
		return BYOK_JSON_SYNTAX;
	r->p++;
	if ((n = jr_string(r, name, sizeof(name), &overflow)) < 0)
		return BYOK_JSON_SYNTAX;
	jr_ws(r);
	if (r->p >= r->end || *r->p != ':')
		return BYOK_JSON_SYNTAX;
	r->p++;
	/* a name too long for any path, or holding the path separator, matches nothing */
	overflow = overflow || memchr(name, '.', (size_t) n) != NULL;
	jr_enter(r, name, overflow ? 0 : (size_t) n, overflow);
	explicit_bzero(name, sizeof(name));
	return BYOK_JSON_OK;
}

/* Which pick the current path is, or -1. */
static int
jr_match(JsonReader *r)
{
	if (r->lost)
		return -1;
	for (int i = 0; i < r->pick->npaths; i++)
		if (r->pick->paths[i] != NULL && strcmp(r->pick->paths[i], r->path) == 0)
			return i;
	return -1;
}

/* A scalar value at the current path; kept when it is picked ('m' >= 0). */
static ByokJsonResult
jr_scalar(JsonReader *r, int m)
{
	ByokJsonPick *pick = r->pick;
	char	   *out = NULL;
	size_t		cap = 0;
	bool		overflow = false;
	long		n;
	ByokJsonKind kind = BYOK_JSON_STRING;

	if (m >= 0)
	{
		out = pick->store + pick->used;
		cap = sizeof(pick->store) - pick->used;
		if (cap > BYOK_JSON_MAX_VALUE + 1)
			cap = BYOK_JSON_MAX_VALUE + 1;
	}
	if (*r->p == '"')
	{
		r->p++;
		if ((n = jr_string(r, out, cap, &overflow)) < 0)
			return BYOK_JSON_SYNTAX;
	}
	else
	{
		const unsigned char *s = r->p;

		if ((n = (long) jr_bare(r, &kind)) == 0)
			return BYOK_JSON_SYNTAX;
		r->p += n;
		if (out != NULL)
		{
			if ((size_t) n + 1 > cap)
				overflow = true;
			else
				memcpy(out, s, n);
		}
	}
	if (m < 0)
		return BYOK_JSON_OK;
	if (overflow)
		return (size_t) n <= BYOK_JSON_MAX_VALUE ? BYOK_JSON_STORE_FULL : BYOK_JSON_TOO_LONG;
	out[n] = '\0';
	pick->values[m] = out;
	pick->lens[m] = (size_t) n;
	pick->kinds[m] = kind;
	pick->used += (size_t) n + 1;
	return BYOK_JSON_OK;
}

static ByokJsonResult
jr_parse(JsonReader *r)
{
	bool		want_value = true;
	ByokJsonResult res;

	for (;;)
	{
		JrLevel    *lv;
		unsigned char c;

		jr_ws(r);
		if (want_value)
		{
			int			m;

			if (r->p >= r->end)
				return BYOK_JSON_SYNTAX;
			if ((m = jr_match(r)) >= 0)
			{
				if (r->seen[m])
					return BYOK_JSON_DUPLICATE;
				r->seen[m] = true;
			}
			c = *r->p;
			if (c != '{' && c != '[')
			{
				if ((res = jr_scalar(r, m)) != BYOK_JSON_OK)
					return res;
				want_value = false;
				continue;
			}
			if (r->depth >= BYOK_JSON_MAX_DEPTH)
				return BYOK_JSON_TOO_DEEP;
			if (m >= 0)
				r->pick->kinds[m] = c == '{' ? BYOK_JSON_OBJECT : BYOK_JSON_ARRAY;
			r->p++;
			lv = &r->lv[r->depth++];
			lv->object = c == '{';
			lv->index = 0;
			lv->base = r->plen;
			lv->lost = r->lost;
			jr_ws(r);
			if (r->p < r->end && *r->p == (lv->object ? '}' : ']'))
			{
				r->p++;
				r->depth--;
				want_value = false;
				continue;
			}
			if (lv->object)
			{
				if ((res = jr_member(r)) != BYOK_JSON_OK)
					return res;
			}
			else
				jr_enter_index(r, 0);
			continue;
		}

		/* a value ended: what follows it */
		if (r->depth == 0)
			return r->p == r->end ? BYOK_JSON_OK : BYOK_JSON_SYNTAX;
		lv = &r->lv[r->depth - 1];
		if (r->p >= r->end)
			return BYOK_JSON_SYNTAX;
		c = *r->p++;
		if (c == ',')
		{
			if (lv->object)
			{
				if ((res = jr_member(r)) != BYOK_JSON_OK)
					return res;
			}
			else if (lv->index == 1000000000)
				return BYOK_JSON_SYNTAX;
			else
				jr_enter_index(r, ++lv->index);
			want_value = true;
			continue;
		}
		if (c != (lv->object ? '}' : ']'))
			return BYOK_JSON_SYNTAX;
		/* the container ended: back to its own path in its parent */
		r->plen = lv->base;
		r->path[r->plen] = '\0';
		r->lost = lv->lost;
		r->depth--;
	}
}

/*
 * Validate 'json' (len bytes, no NUL needed) and collect the scalar values
 * at pick->paths.  Returns true when the text is valid and within bounds;
 * otherwise false with pick->result saying why and nothing kept.
 */
bool
byok_json_pick(const char *json, size_t len, ByokJsonPick *pick)
{
	JsonReader	r;

	memset(&r, 0, sizeof(r));
	byok_json_pick_wipe(pick);
	if (pick->npaths < 0 || pick->npaths > BYOK_JSON_MAX_PATHS || json == NULL)
	{
		pick->result = BYOK_JSON_SYNTAX;
		return false;
	}
	r.p = (const unsigned char *) json;
	r.end = r.p + len;
	r.pick = pick;
	pick->result = jr_parse(&r);
	explicit_bzero(&r, sizeof(r));
	if (pick->result != BYOK_JSON_OK)
	{
		ByokJsonResult res = pick->result;

		byok_json_pick_wipe(pick);
		pick->result = res;
		return false;
	}
	return true;
}

/* Forget and wipe every picked value. */
void
byok_json_pick_wipe(ByokJsonPick *pick)
{
	explicit_bzero(pick->store, sizeof(pick->store));
	for (int i = 0; i < BYOK_JSON_MAX_PATHS; i++)
	{
		pick->values[i] = NULL;
		pick->lens[i] = 0;
		pick->kinds[i] = BYOK_JSON_ABSENT;
	}
	pick->used = 0;
	pick->result = BYOK_JSON_OK;
}

const char *
byok_json_result_text(ByokJsonResult result)
{
	static const char *const texts[BYOK_JSON_RESULT_COUNT] = {
		"valid JSON",
		"not valid JSON",
		"JSON nested more than 32 levels deep",
		"a JSON value longer than 8192 bytes",
		"a JSON field given twice",
		"JSON values longer than 16384 bytes together",
	};

	if (result < 0 || result >= BYOK_JSON_RESULT_COUNT)
		return "unknown";
	return texts[result];
}
