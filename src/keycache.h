#include "cache/cache.h"	/* moved; to be removed */
