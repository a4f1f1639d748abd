#include "catalog/asowner.h"	/* moved; to be removed */
