/*
 * minicheck.h -- the CHECK() counter of byok's standalone C tests
 * (ttlv_test.c, format_test.c): each test ends with "N passed, N failed".
 */
#ifndef BYOK_MINICHECK_H
#define BYOK_MINICHECK_H

#include <stdio.h>

static int	npass;
static int	nfail;

#define CHECK(cond) check((cond), #cond, __LINE__)

static int
check(int ok, const char *what, int line)
{
	if (ok)
		npass++;
	else
	{
		nfail++;
		printf("FAIL line %d: %s\n", line, what);
	}
	return ok;
}

#endif
