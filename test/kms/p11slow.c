/*
 * p11slow.c -- a PKCS#11 module for byok's tests: it forwards every call to
 * a real module (SoftHSM2 unless $P11SLOW_MODULE names another) and stalls
 * C_FindObjectsInit, C_Encrypt and C_Decrypt for as long as the file named
 * by $P11SLOW_FLAG exists -- a hung HSM, on demand.  While the file named
 * by $P11SLOW_BENT exists it also bends C_GetAttributeValue, as a buggy or
 * hostile module might: the label of an object labelled "bent-sensitive"
 * is refused (CKR_ATTRIBUTE_SENSITIVE), and the label length of one
 * labelled "bent-long" is reported as 1 GiB (beyond any buffer).
 * Built by softhsm_setup.sh next to p11ctl; the variables must be in the
 * server's environment.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST mine;

static void
stall(void)
{
	const char *flag = getenv("P11SLOW_FLAG");

	while (flag != NULL && access(flag, F_OK) == 0)
		usleep(10000);
}

static CK_RV
slow_find_objects_init(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	stall();
	return real->C_FindObjectsInit(s, t, n);
}

static CK_RV
slow_encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
			 CK_ULONG_PTR out_len)
{
	stall();
	return real->C_Encrypt(s, in, in_len, out, out_len);
}

static CK_RV
slow_decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
			 CK_ULONG_PTR out_len)
{
	stall();
	return real->C_Decrypt(s, in, in_len, out, out_len);
}

static CK_RV
bent_get_attribute_value(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	CK_RV		rv = real->C_GetAttributeValue(s, o, t, n);
	const char *bent = getenv("P11SLOW_BENT");

	if (rv != CKR_OK || bent == NULL || access(bent, F_OK) != 0)
		return rv;
	for (CK_ULONG i = 0; i < n; i++)
	{
		if (t[i].type != CKA_LABEL || t[i].pValue == NULL)
			continue;
		if (t[i].ulValueLen == 14 && memcmp(t[i].pValue, "bent-sensitive", 14) == 0)
		{
			t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
			return CKR_ATTRIBUTE_SENSITIVE;
		}
		if (t[i].ulValueLen == 9 && memcmp(t[i].pValue, "bent-long", 9) == 0)
			t[i].ulValueLen = 1UL << 30;
	}
	return rv;
}

CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
	if (real == NULL)
	{
		const char *path = getenv("P11SLOW_MODULE");
		void	   *dl = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
		CK_C_GetFunctionList get;

		if (dl == NULL || (get = (CK_C_GetFunctionList) dlsym(dl, "C_GetFunctionList")) == NULL ||
			get(&real) != CKR_OK || real == NULL)
			return CKR_GENERAL_ERROR;
		mine = *real;
		mine.C_FindObjectsInit = slow_find_objects_init;
		mine.C_Encrypt = slow_encrypt;
		mine.C_Decrypt = slow_decrypt;
		mine.C_GetAttributeValue = bent_get_attribute_value;
	}
	*list = &mine;
	return CKR_OK;
}
