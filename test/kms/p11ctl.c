/*-------------------------------------------------------------------------
 *
 * p11ctl.c
 *		A tiny PKCS#11 helper for the byok tests (no PostgreSQL needed).
 *
 *   p11ctl --module M --token LABEL --pin-file F COMMAND KEYLABEL
 *
 * COMMAND is one of
 *   keygen   create a token AES-256 secret key labelled KEYLABEL: sensitive,
 *            non-extractable, private, modifiable, usable for
 *            encrypt/decrypt/wrap/unwrap (refused if the label exists)
 *   disable  set CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP to false
 *   enable   set them back to true
 *   destroy  C_DestroyObject
 *   state    print "enabled", "disabled" or "missing"
 *
 * pkcs11-tool cannot change a key's usage attributes, which is how the
 * tests "disable" a customer master key; hence this helper.  The key must
 * have CKA_MODIFIABLE true (keygen sets it; it is also the PKCS#11
 * default), or C_SetAttributeValue fails (SoftHSM 2.6.1: CKR_ACTION_PROHIBITED).
 *
 * The user PIN is read from the PIN file (first line); it never appears
 * on the command line.  Exit status: 0 success, 1 PKCS#11 failure or key
 * not found, 2 usage error.
 *
 * Build: cc -O2 -Wall -I/usr/include/p11-kit-1 -o p11ctl p11ctl.c -ldl
 *
 *-------------------------------------------------------------------------
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR p11;

static void
die_rv(const char *what, CK_RV rv)
{
	fprintf(stderr, "p11ctl: %s failed: CKR 0x%lx\n", what, (unsigned long) rv);
	exit(1);
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: p11ctl --module M --token LABEL --pin-file F "
			"(keygen|disable|enable|destroy|state) KEYLABEL\n");
	exit(2);
}

/* read the first line of 'path' into pin; returns its length */
static size_t
read_pin(const char *path, char *pin, size_t size)
{
	FILE	   *f = fopen(path, "r");
	size_t		len;

	if (f == NULL)
	{
		perror(path);
		exit(1);
	}
	if (fgets(pin, (int) size, f) == NULL)
	{
		fprintf(stderr, "p11ctl: PIN file \"%s\" is empty\n", path);
		exit(1);
	}
	fclose(f);
	len = strcspn(pin, "\r\n");
	pin[len] = '\0';
	return len;
}

static CK_SLOT_ID
find_token(const char *label)
{
	CK_SLOT_ID	slots[64];
	CK_ULONG	n = 64;
	CK_RV		rv;
	size_t		llen = strlen(label);

	if (llen > 32)
	{
		fprintf(stderr, "p11ctl: token label longer than 32 bytes\n");
		exit(2);
	}
	if ((rv = p11->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK)
		die_rv("C_GetSlotList", rv);
	for (CK_ULONG i = 0; i < n; i++)
	{
		CK_TOKEN_INFO info;
		char		padded[32];

		if (p11->C_GetTokenInfo(slots[i], &info) != CKR_OK)
			continue;
		memset(padded, ' ', sizeof(padded));
		memcpy(padded, label, llen);
		if (memcmp(info.label, padded, sizeof(padded)) == 0)
			return slots[i];
	}
	fprintf(stderr, "p11ctl: no token labelled \"%s\"\n", label);
	exit(1);
}

/* find the secret key labelled 'label'; returns the number found (0..2) */
static int
find_key(CK_SESSION_HANDLE s, const char *label, CK_OBJECT_HANDLE *obj)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_LABEL, (void *) label, strlen(label)},
	};
	CK_OBJECT_HANDLE found[2];
	CK_ULONG	n = 0;
	CK_RV		rv;

	if ((rv = p11->C_FindObjectsInit(s, tmpl, 2)) != CKR_OK)
		die_rv("C_FindObjectsInit", rv);
	rv = p11->C_FindObjects(s, found, 2, &n);
	p11->C_FindObjectsFinal(s);
	if (rv != CKR_OK)
		die_rv("C_FindObjects", rv);
	if (n > 0)
		*obj = found[0];
	return (int) n;
}

static void
set_usage(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_BBOOL on)
{
	CK_ATTRIBUTE tmpl[] = {
		{CKA_ENCRYPT, &on, sizeof(on)},
		{CKA_DECRYPT, &on, sizeof(on)},
		{CKA_WRAP, &on, sizeof(on)},
		{CKA_UNWRAP, &on, sizeof(on)},
	};
	CK_RV		rv;

	if ((rv = p11->C_SetAttributeValue(s, obj, tmpl, 4)) != CKR_OK)
		die_rv("C_SetAttributeValue", rv);
}

int
main(int argc, char **argv)
{
	const char *module = NULL,
			   *token = NULL,
			   *pin_file = NULL,
			   *cmd,
			   *keylabel;
	char		pin[256];
	size_t		pin_len;
	void	   *dl;
	CK_C_GetFunctionList get_list;
	CK_SLOT_ID	slot;
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE obj = 0;
	CK_RV		rv;
	int			i,
				n;

	for (i = 1; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2)
	{
		if (strcmp(argv[i], "--module") == 0)
			module = argv[i + 1];
		else if (strcmp(argv[i], "--token") == 0)
			token = argv[i + 1];
		else if (strcmp(argv[i], "--pin-file") == 0)
			pin_file = argv[i + 1];
		else
			usage();
	}
	if (module == NULL || token == NULL || pin_file == NULL || argc - i != 2)
		usage();
	cmd = argv[i];
	keylabel = argv[i + 1];
	if (strcmp(cmd, "keygen") != 0 && strcmp(cmd, "disable") != 0 &&
		strcmp(cmd, "enable") != 0 && strcmp(cmd, "destroy") != 0 &&
		strcmp(cmd, "state") != 0)
		usage();

	if ((dl = dlopen(module, RTLD_NOW | RTLD_LOCAL)) == NULL)
	{
		fprintf(stderr, "p11ctl: %s\n", dlerror());
		return 1;
	}
	if ((get_list = (CK_C_GetFunctionList) dlsym(dl, "C_GetFunctionList")) == NULL)
	{
		fprintf(stderr, "p11ctl: %s is not a PKCS#11 module\n", module);
		return 1;
	}
	if ((rv = get_list(&p11)) != CKR_OK)
		die_rv("C_GetFunctionList", rv);
	if ((rv = p11->C_Initialize(NULL)) != CKR_OK)
		die_rv("C_Initialize", rv);

	slot = find_token(token);
	if ((rv = p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
								 NULL, NULL, &s)) != CKR_OK)
		die_rv("C_OpenSession", rv);
	pin_len = read_pin(pin_file, pin, sizeof(pin));
	rv = p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) pin, pin_len);
	memset(pin, 0, sizeof(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
		die_rv("C_Login", rv);

	n = find_key(s, keylabel, &obj);
	if (n > 1)
	{
		fprintf(stderr, "p11ctl: more than one secret key labelled \"%s\"\n", keylabel);
		return 1;
	}

	if (strcmp(cmd, "keygen") == 0)
	{
		CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
		CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
		CK_KEY_TYPE kt = CKK_AES;
		CK_ULONG	len = 32;
		CK_BBOOL	yes = CK_TRUE,
					no = CK_FALSE;
		CK_ATTRIBUTE tmpl[] = {
			{CKA_CLASS, &cls, sizeof(cls)},
			{CKA_KEY_TYPE, &kt, sizeof(kt)},
			{CKA_VALUE_LEN, &len, sizeof(len)},
			{CKA_LABEL, (void *) keylabel, strlen(keylabel)},
			{CKA_TOKEN, &yes, sizeof(yes)},
			{CKA_PRIVATE, &yes, sizeof(yes)},
			{CKA_SENSITIVE, &yes, sizeof(yes)},
			{CKA_EXTRACTABLE, &no, sizeof(no)},
			{CKA_MODIFIABLE, &yes, sizeof(yes)},
			{CKA_ENCRYPT, &yes, sizeof(yes)},
			{CKA_DECRYPT, &yes, sizeof(yes)},
			{CKA_WRAP, &yes, sizeof(yes)},
			{CKA_UNWRAP, &yes, sizeof(yes)},
		};

		if (n > 0)
		{
			fprintf(stderr, "p11ctl: a secret key labelled \"%s\" already exists\n", keylabel);
			return 1;
		}
		if ((rv = p11->C_GenerateKey(s, &mech, tmpl, sizeof(tmpl) / sizeof(tmpl[0]),
									 &obj)) != CKR_OK)
			die_rv("C_GenerateKey", rv);
	}
	else if (strcmp(cmd, "state") == 0)
	{
		CK_BBOOL	enc = CK_FALSE,
					dec = CK_FALSE;
		CK_ATTRIBUTE tmpl[] = {
			{CKA_ENCRYPT, &enc, sizeof(enc)},
			{CKA_DECRYPT, &dec, sizeof(dec)},
		};

		if (n == 0)
			puts("missing");
		else
		{
			if ((rv = p11->C_GetAttributeValue(s, obj, tmpl, 2)) != CKR_OK)
				die_rv("C_GetAttributeValue", rv);
			puts(enc && dec ? "enabled" : "disabled");
		}
	}
	else if (n == 0)
	{
		fprintf(stderr, "p11ctl: no secret key labelled \"%s\"\n", keylabel);
		return 1;
	}
	else if (strcmp(cmd, "disable") == 0)
		set_usage(s, obj, CK_FALSE);
	else if (strcmp(cmd, "enable") == 0)
		set_usage(s, obj, CK_TRUE);
	else if ((rv = p11->C_DestroyObject(s, obj)) != CKR_OK)
		die_rv("C_DestroyObject", rv);

	p11->C_Logout(s);
	p11->C_CloseSession(s);
	p11->C_Finalize(NULL);
	return 0;
}
