# 007_backups.pl — backups stay ciphertext per tenant; restores neither
# double-encrypt nor resurrect what was destroyed.
#   - pg_dump (plain) carries no plaintext marker of any tenant, only
#     ciphertext and wrapped keys; every ciphertext's header names its row's
#     tenant;
#   - restoring that dump into a fresh cluster decrypts exactly what each
#     tenant had; a tenant whose CMK was destroyed before the restore stays
#     unreadable;
#   - a pg_basebackup copy decrypts too;
#   - crypto-shredding: a backup taken before byok_destroy_tenant(), restored
#     with the destruction ledger present, refuses the tenant; restored
#     without it, the tenant is readable (the certificate's warning).
use strict;
use warnings;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $tmp = PostgreSQL::Test::Utils::tempdir();
my $ring = "$tmp/keyring";
make_path($ring);
chmod 0700, $ring;
my $ledger = "$tmp/destruction.ledger";
my $src = byok_node('source', allows_streaming => 1, keyring => $ring);
my @tenants = qw(acme globex initech umbrella);
create_tenant($src, $_, "$_-cmk") for @tenants;
$src->safe_psql('postgres', q{
	CREATE TABLE customers (id int PRIMARY KEY, tenant text NOT NULL, email bytea, note bytea);
	SELECT byok_declare_scope('public.customers.email'), byok_declare_scope('public.customers.note');
	INSERT INTO customers
	SELECT i, t, byok_encrypt(t, 'MARKER-' || t || '-' || i || '@example.com', 'public.customers.email'),
	       byok_encrypt(t, ('MARKER-' || t || '-note-' || i)::bytea, 'public.customers.note')
	FROM generate_series(1, 50) i, unnest(ARRAY['acme', 'globex', 'initech', 'umbrella']) t
	WHERE i % 4 = array_position(ARRAY['acme', 'globex', 'initech', 'umbrella'], t) - 1;
});
# a protected column: plaintext converted in place, then written through the view
$src->safe_psql('postgres', q{
	CREATE TABLE orders (id int PRIMARY KEY, tenant text NOT NULL, secret text, amount numeric);
	INSERT INTO orders SELECT i, (ARRAY['acme', 'globex', 'initech'])[1 + i % 3], 'MARKER-order-' || i, i * 1.5
	FROM generate_series(1, 30) i;
	SELECT byok_protect_column('orders', 'secret', 'tenant');
	INSERT INTO orders_decrypted (id, tenant, secret, amount)
	SELECT i, (ARRAY['acme', 'globex', 'initech'])[1 + i % 3], 'MARKER-order-' || i, i * 1.5 FROM generate_series(31, 40) i;
});
my $orders = $src->safe_psql('postgres', q{SELECT md5(string_agg(id || tenant || secret, ',' ORDER BY id)) FROM orders_decrypted});
my $expect = $src->safe_psql('postgres',
	q{SELECT tenant, count(*), md5(string_agg(byok_decrypt_text(email) || byok_decrypt_text(note), ',' ORDER BY id))
	  FROM customers GROUP BY tenant ORDER BY tenant});

# a base backup now, before anything is destroyed
$src->backup('before');

# pg_dump, plain format
my $dump = "$tmp/dump.sql";
$src->command_ok([ 'pg_dump', '-d', $src->connstr('postgres'), '-f', $dump ], 'pg_dump of the database');
my $text = slurp_file($dump);
unlike($text, qr/MARKER/, 'the dump holds no plaintext marker of any tenant (plain and protected columns)');
like($text, qr/COPY byok\.tenant_keys/, 'the dump carries the wrapped keys (extension config tables)');
is($src->safe_psql('postgres',
		q{SELECT (SELECT count(*) FROM customers WHERE (byok_ciphertext_info(email)).tenant <> tenant
		          OR (byok_ciphertext_info(note)).tenant <> tenant)
		       + (SELECT count(*) FROM orders WHERE (byok_ciphertext_info(secret)).tenant <> tenant)}), '0',
	"every ciphertext's header names its row's tenant");

# the customer of umbrella destroys its CMK before the restore
destroy_key($src, 'umbrella-cmk');

my $dst = byok_node('restored', keyring => $ring);
$dst->safe_psql('postgres', 'DROP EXTENSION byok CASCADE');
$dst->safe_psql('postgres', 'CREATE DATABASE r');
$dst->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $dst->connstr('r'), '-f', $dump ],
	'the dump restores into a fresh cluster without errors');
is($dst->safe_psql('r',
		q{SELECT tenant, count(*), md5(string_agg(byok_decrypt_text(email) || byok_decrypt_text(note), ',' ORDER BY id))
		  FROM customers WHERE tenant <> 'umbrella' GROUP BY tenant ORDER BY tenant}),
	join("\n", grep { !/^umbrella/ } split /\n/, $expect),
	'each reachable tenant decrypts exactly what it had (no double encryption)');
my ($ret, $out, $err) = $dst->psql('r', q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'umbrella'});

like($err, qr/YK004|destroyed or missing/, 'a tenant whose CMK was destroyed stays unreadable after the restore');
is($dst->safe_psql('r', q{SELECT count(*) FROM byok.tenants}), '4', 'the tenants came back with the dump');
is($dst->safe_psql('r', q{SELECT md5(string_agg(id || tenant || secret, ',' ORDER BY id)) FROM orders_decrypted}),
	$orders, 'the protected column reads back through its restored view');
is($dst->safe_psql('r', q{SELECT count(*) FROM orders WHERE byok_decrypt_text(secret) LIKE 'MARKER-order-%'}), '40',
	'one layer of encryption: each value decrypts straight to its plaintext');
is($dst->safe_psql('r', q{SELECT count(*) FROM byok.protected_columns}), '1', 'the registry came back');
is($dst->safe_psql('r', q{INSERT INTO orders_decrypted VALUES (41, 'acme', 'after restore', 1) RETURNING secret}),
	'after restore', 'the restored view and triggers still encrypt new rows');
($ret, $out, $err) = $dst->psql('r', q{INSERT INTO orders VALUES (42, 'acme', 'plaintext by mistake', 1)});
like($err, qr/holds only byok ciphertexts/, 'and the restored guard still refuses plaintext in the table');

# the custom format and pg_restore
my $cdump = "$tmp/dump.custom";
$src->command_ok([ 'pg_dump', '-Fc', '-d', $src->connstr('postgres'), '-f', $cdump ], 'pg_dump -Fc');
$dst->safe_psql('postgres', 'CREATE DATABASE rc');
$dst->command_ok([ 'pg_restore', '--exit-on-error', '-d', $dst->connstr('rc'), $cdump ], 'pg_restore into a fresh database');
is($dst->safe_psql('rc', q{SELECT md5(string_agg(id || tenant || secret, ',' ORDER BY id)) FROM orders_decrypted
	WHERE tenant <> 'umbrella'}), $orders, 'pg_restore: the protected column reads back');

# a pg_basebackup copy
my $copy = PostgreSQL::Test::Cluster->new('copy');
$copy->init_from_backup($src, 'before');
$copy->start;
is($copy->safe_psql('postgres',
		q{SELECT count(*) FROM customers WHERE tenant <> 'umbrella' AND byok_decrypt_text(email) LIKE 'MARKER-%'}),
	'38', 'a base backup copy decrypts the reachable tenants');
$copy->stop;

# crypto-shredding and the ledger
$src->safe_psql('postgres', "ALTER SYSTEM SET byok.destruction_ledger = '$ledger'");
$src->reload;
$src->poll_query_until('postgres', "SELECT current_setting('byok.destruction_ledger') = '$ledger'");
my $cert = $src->safe_psql('postgres', q{SELECT byok_destroy_tenant('globex')});
like($cert, qr/"what_remains": "Backups, dumps and replicas taken before this destruction still hold/,
	'the certificate says what remains');
ok(-s $ledger, 'the ledger file was written');
($ret, $out, $err) = $src->psql('postgres', q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'globex'});
like($err, qr/tenant "globex" was destroyed/, 'the source no longer decrypts globex');

my $with = PostgreSQL::Test::Cluster->new('with_ledger');
$with->init_from_backup($src, 'before');
$with->append_conf('postgresql.conf', "byok.destruction_ledger = '$ledger'\n");
$with->start;
($ret, $out, $err) = $with->psql('postgres', q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'globex'});
like($err, qr/tenant "globex" was destroyed.*|destruction_ledger/s, 'restored with the ledger: globex is refused');
like($err, qr/byok.destruction_ledger/, 'and the error says why');
is($with->safe_psql('postgres', q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'acme'}), '12',
	'other tenants are unaffected');
$with->stop;

my $without = PostgreSQL::Test::Cluster->new('without_ledger');
$without->init_from_backup($src, 'before');
$without->start;
is($without->safe_psql('postgres', q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'globex'}), '13',
	"restored without the ledger, the old backup still reads globex: the certificate's warning");
$without->stop;

# a ledger line that appears while keys are cached: the poller purges them
my $late = PostgreSQL::Test::Cluster->new('late_ledger');
$late->init_from_backup($src, 'before');
$late->append_conf('postgresql.conf', "byok.destruction_ledger = '$tmp/late.ledger'\nbyok.poll_interval = 200ms\n");
$late->start;
is($late->safe_psql('postgres', q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'globex'}), '13',
	'before the ledger line: readable');
PostgreSQL::Test::Utils::append_to_file("$tmp/late.ledger", slurp_file($ledger));
ok(wait_state($late, 'globex', 'cmk_destroyed'), 'the poller reads the new ledger line and locks globex out for good');
($ret, $out, $err) = $late->psql('postgres', q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'globex'});
like($err, qr/destroyed/, 'cached keys no longer serve');
$late->stop;

$dst->stop;
$src->stop;
done_testing();
