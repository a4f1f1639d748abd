# byok — Bring Your Own Key envelope encryption for PostgreSQL

MODULE_big = byok
OBJS = \
	src/byok.o src/guc.o \
	src/crypto/format.o src/crypto/envelope.o src/crypto/keyrow.o \
	src/providers/kms.o src/providers/local.o src/providers/http.o src/providers/aws.o src/providers/vault.o \
	src/providers/pkcs11.o src/providers/pkcs11/session.o \
	src/providers/kmip.o src/providers/kmip/ttlv.o src/providers/kmip/conn.o \
	src/providers/json.o src/providers/answers.o src/providers/sigv4.o \
	src/cache/shmem.o src/cache/slots.o src/cache/keys.o src/cache/flight.o src/cache/cmk.o src/cache/events.o src/cache/poller.o src/cache/wal.o \
	src/catalog/access.o src/catalog/citus.o src/catalog/data_keys.o src/catalog/tenants.o src/catalog/xact.o \
	src/catalog/asowner.o src/catalog/extdrop.o src/catalog/ledger.o src/catalog/viewdml.o src/catalog/citus_bind.o src/catalog/citus_pollers.o \
	src/handles/handles.o \
	src/worker/worker.o \
	src/sql/api.o src/sql/stats.o

EXTENSION = byok
# byok--1.1.sql (what CREATE EXTENSION byok runs) is built from these parts
# of extension/, in this order (rule below; test/t/019_install_script.pl);
# the released 1.0 script and the update to 1.1 are installed as they are
BYOK_SQL_PARTS = 10_catalog.sql 20_encryption.sql 30_tenants.sql 40_columns.sql 42_protect.sql \
	45_ddl_guard.sql 50_reencrypt.sql 60_observability.sql 70_roles.sql 80_cluster.sql
DATA = extension/byok--1.0.sql extension/byok--1.0--1.1.sql
DATA_built = byok--1.1.sql
PGFILEDESC = "byok - bring-your-own-key envelope encryption"

PG_CPPFLAGS = -I$(srcdir)/src -I/usr/include/p11-kit-1
# -Wno-unused-parameter: PostgreSQL headers and fixed callback signatures
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter
SHLIB_LINK += -lssl -lcrypto -lcurl -ldl

REGRESS = setup roundtrip tamper binding rotate revoke flush privileges local_provider info destroy columns algorithm reencrypt limits security privilege_matrix coverage_cache coverage_errors coverage_auditor coverage_slots
REGRESS_OPTS = --temp-config=$(srcdir)/test/regress.conf --temp-instance=./tmp_check --inputdir=$(srcdir)
ISOLATION = revoke_running first_dek_race rotation_race
ISOLATION_OPTS = --temp-config=$(srcdir)/test/regress.conf --temp-instance=./tmp_check_iso
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# after PGXS, which sets PROVE_FLAGS itself
PROVE_FLAGS = -I test/perl -v

# after PGXS too: a rule before it would become the default goal
byok--1.1.sql: $(addprefix $(srcdir)/extension/, $(BYOK_SQL_PARTS))
	cat $^ > $@

# every object depends on every header (PGXS does not track them)
$(OBJS): $(wildcard $(srcdir)/src/*.h $(srcdir)/src/*/*.h $(srcdir)/src/*/*/*.h)
