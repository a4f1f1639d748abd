#include "catalog/ledger.h"	/* moved; to be removed */
