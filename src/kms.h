#include "providers/kms.h"	/* moved; to be removed */
