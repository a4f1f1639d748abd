#include "providers/kmip/conn.h"	/* moved; to be removed */
