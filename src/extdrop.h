#include "catalog/extdrop.h"	/* moved; to be removed */
