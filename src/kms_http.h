#include "providers/http.h"	/* moved; to be removed */
