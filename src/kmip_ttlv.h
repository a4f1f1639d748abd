#include "providers/kmip/ttlv.h"	/* moved; to be removed */
