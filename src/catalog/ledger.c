/*-------------------------------------------------------------------------
 *
 * catalog/ledger.c
 *		The destruction ledger: a file outside the database listing the
 *		fingerprints of every tenant key byok_destroy_tenant() destroyed.
 *
 * byok.destruction_ledger names a file that every cluster of a platform can
 * share.  byok_destroy_tenant() appends one line per destroyed tenant key
 *
 *     <SHA-256 of the wrapped tenant key, hex> <unix time> <database oid> <tenant>
 *
 * when its transaction commits (XACT_EVENT_PRE_COMMIT: written and fsync'd
 * before the commit, so a failure aborts the destruction rather than
 * losing the line).  A cluster restored from a backup taken before the
 * destruction still holds the wrapped key; with the ledger present it
 * refuses that key: at every tenant-key unwrap, and in the poller's round
 * after the ledger changes (so a key cached before the line appeared is
 * purged too).  The ledger holds fingerprints of wrapped keys only, never
 * key material.
 *
 * Each process keeps the set of fingerprints in memory and reads the file
 * again whenever its size, mtime, ctime or inode changes.  It fails closed:
 * a ledger that exists but cannot be read keeps the last complete set, and
 * with none no tenant key is unwrapped (YK009) until it reads.  No locks:
 * the file is only appended to, in whole lines.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cryptohash.h"
#include "common/sha2.h"
#include "lib/stringinfo.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "catalog/ledger.h"
#include "guc.h"

typedef struct LedgerEntry
{
	char		fp[BYOK_LEDGER_FP_LEN + 1];	/* hex SHA-256, hash key */
} LedgerEntry;

static HTAB *ld_set = NULL;
static struct stat ld_stat;
static char ld_path[MAXPGPATH];
static uint64 ld_version = 0;
static bool ld_unreadable = false;	/* the last try to read it failed */

/* The fingerprint of a wrapped key: hex SHA-256 of its bytes. */
void
byok_ledger_fingerprint(const uint8 *wrapped, int len, char *out)
{
	uint8		d[PG_SHA256_DIGEST_LENGTH];
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL || pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, wrapped, len) < 0 ||
		pg_cryptohash_final(ctx, d, sizeof(d)) < 0)
		elog(ERROR, "could not compute SHA-256");
	pg_cryptohash_free(ctx);
	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/*
 * Load the ledger if it changed since last time.  Returns true when the set
 * of fingerprints may differ from before.  A missing file is an empty
 * ledger.  A file that exists but cannot be read whole (permissions, an I/O
 * error, not a regular file) keeps the last complete set, if this process
 * ever read one, is reported as a WARNING, and is tried again at every call
 * until it reads: ld_unreadable then makes byok_ledger_contains() refuse
 * every key when no complete set was ever read (fail closed).  A change of
 * size, mtime, ctime (a chmod) or inode reads the file again.
 */
bool
byok_ledger_refresh(void)
{
	struct stat st;
	FILE	   *f;
	int			fd;
	char		line[512];
	HASHCTL		ctl;
	HTAB	   *set;
	bool		failed = false;

	if (byok_destruction_ledger == NULL || byok_destruction_ledger[0] == '\0')
	{
		bool		had = ld_set != NULL;

		if (ld_set)
			hash_destroy(ld_set);
		ld_set = NULL;
		ld_path[0] = '\0';
		ld_unreadable = false;
		return had;
	}
	if (stat(byok_destruction_ledger, &st) != 0)
	{
		if (errno != ENOENT)
			failed = true;
		memset(&st, 0, sizeof(st));
	}
	if (!failed && !ld_unreadable && ld_set != NULL && strcmp(ld_path, byok_destruction_ledger) == 0 &&
		st.st_size == ld_stat.st_size && st.st_mtime == ld_stat.st_mtime &&
		st.st_ctime == ld_stat.st_ctime && st.st_ino == ld_stat.st_ino)
		return false;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = BYOK_LEDGER_FP_LEN + 1;
	ctl.entrysize = sizeof(LedgerEntry);
	ctl.hcxt = TopMemoryContext;
	set = hash_create("byok destruction ledger", 256, &ctl,
					  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	f = NULL;
	if (!failed && st.st_ino != 0)
	{
		/* non-blocking, and only a regular file: a FIFO never blocks us */
		fd = open(byok_destruction_ledger, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (f = fdopen(fd, "r")) == NULL)
		{
			if (fd >= 0)
				close(fd);
			failed = true;
		}
	}
	if (f != NULL)
	{
		while (fgets(line, sizeof(line), f) != NULL)
		{
			char		fp[BYOK_LEDGER_FP_LEN + 1];
			bool		found;

			if (strlen(line) < BYOK_LEDGER_FP_LEN || line[0] == '#')
				continue;
			memcpy(fp, line, BYOK_LEDGER_FP_LEN);
			fp[BYOK_LEDGER_FP_LEN] = '\0';
			hash_search(set, fp, HASH_ENTER, &found);
		}
		if (ferror(f))
			failed = true;
		fclose(f);
	}
	if (failed)
	{
		hash_destroy(set);
		if (!ld_unreadable)
			ereport(WARNING,
					(errmsg("could not read byok.destruction_ledger \"%s\"", byok_destruction_ledger),
					 errdetail(ld_set != NULL ?
							   "The last complete reading of the ledger stays in force; it is read again at every key unwrap until it can be read." :
							   "No tenant key is unwrapped until the ledger can be read."),
					 errhint("The file must be a regular file readable by the server's operating system user.")));
		ld_unreadable = true;
		return false;
	}
	if (ld_set)
		hash_destroy(ld_set);
	ld_set = set;
	strlcpy(ld_path, byok_destruction_ledger, sizeof(ld_path));
	ld_stat = st;
	ld_version++;
	ld_unreadable = false;
	return true;
}

/* Is this fingerprint in the ledger (read again first if it changed)? */
bool
byok_ledger_contains(const char *fp)
{
	byok_ledger_refresh();
	/* fail closed: a ledger never read whole vouches for no key */
	if (ld_unreadable && ld_set == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_BYOK_PROVIDER_CONFIG),
				 errmsg("byok.destruction_ledger \"%s\" cannot be read", byok_destruction_ledger),
				 errdetail("Without it byok cannot tell whether this tenant key was destroyed, so no tenant key is unwrapped."),
				 errhint("The file must be a regular file readable by the server's operating system user.")));
	return ld_set != NULL && hash_search(ld_set, fp, HASH_FIND, NULL) != NULL;
}

/* Is this fingerprint in the ledger as last read?  No I/O. */
bool
byok_ledger_listed(const char *fp)
{
	return ld_set != NULL && hash_search(ld_set, fp, HASH_FIND, NULL) != NULL;
}

/*
 * Append lines to the ledger and fsync it.  Raises an error on failure (the
 * caller is about to commit the destruction: better to abort it).
 */
void
byok_ledger_append(const char *lines)
{
	int			fd;
	size_t		len = strlen(lines);

	if (byok_destruction_ledger == NULL || byok_destruction_ledger[0] == '\0' || len == 0)
		return;
	fd = open(byok_destruction_ledger, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open byok.destruction_ledger \"%s\": %m", byok_destruction_ledger)));
	if (write(fd, lines, len) != (ssize_t) len || fsync(fd) != 0)
	{
		int			save = errno;

		close(fd);
		errno = save ? save : ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write byok.destruction_ledger \"%s\": %m", byok_destruction_ledger)));
	}
	close(fd);
}
