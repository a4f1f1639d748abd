#include "catalog/keystore.h"	/* moved; to be removed */
