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
use MIME::Base64 qw(encode_base64);
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

# Every plaintext marker a byok column holds, and a scanner for every form
# one could take in a plain dump: as text; as bytea, which COPY writes as
# \\x and lowercase hex (and inside a longer value, hex anywhere); and as
# base64, at each of its three alignments.
my @markers = split /\n/, $src->safe_psql('postgres', q{
	SELECT byok_decrypt_text(email) FROM customers
	UNION ALL SELECT convert_from(byok_decrypt(note), 'UTF8') FROM customers
	UNION ALL SELECT secret FROM orders_decrypted});
is(scalar(@markers), 140, 'the markers: 50 emails, 50 notes, 40 protected values');
sub marker_forms
{
	my ($m) = @_;
	my $hex = unpack('H*', $m);
	my @b64;
	for my $o (0 .. 2)
	{
		my $part = substr($m, $o);
		push @b64, encode_base64(substr($part, 0, 3 * int(length($part) / 3)), '');
	}
	return (raw => [ qr/\Q$m\E/ ], hex => [ qr/\\\\x\Q$hex\E/i, qr/\Q$hex\E/i ],
		base64 => [ map { qr/\Q$_\E/ } @b64 ]);
}
# the forms in which $text holds marker $m
sub found_forms
{
	my ($text, $m) = @_;
	my %f = marker_forms($m);
	return grep { my $k = $_; grep { $text =~ $_ } @{ $f{$k} } } sort keys %f;
}
# the COPY data of one table in a plain dump
sub copy_block
{
	my ($text, $table) = @_;
	return $text =~ /^COPY \Q$table\E .*? FROM stdin;\n(.*?)^\\\.\n/ms ? $1 : undef;
}

# Controls: the same markers in plain columns, one table per form (the
# bytea one inside a longer value, the base64 one at every alignment); the
# scanner must find every marker in each of them
my $list = join(',', map { "(\$m\$$_\$m\$)" } @markers);
$src->safe_psql('postgres', qq{
	CREATE TABLE control_text AS SELECT m FROM (VALUES $list) v(m);
	CREATE TABLE control_bytea AS SELECT '\\x0001'::bytea || convert_to(m, 'UTF8') || '\\xff'::bytea AS b FROM control_text;
	CREATE TABLE control_base64 AS
	SELECT encode(substr('\\x010203'::bytea, 1, (row_number() OVER ())::int % 3) || convert_to(m, 'UTF8'), 'base64') AS b
	FROM control_text;
});

# pg_dump, plain format
my $dump = "$tmp/dump.sql";
$src->command_ok([ 'pg_dump', '-d', $src->connstr('postgres'), '-f', $dump ], 'pg_dump of the database');
my $text = slurp_file($dump);
for my $c ([ 'public.control_text', 'raw' ], [ 'public.control_bytea', 'hex' ], [ 'public.control_base64', 'base64' ])
{
	my $block = copy_block($text, $c->[0]) // '';
	is(scalar(grep { my $m = $_; grep { $_ eq $c->[1] } found_forms($block, $m) } @markers), scalar(@markers),
		"the scanner sees every marker in $c->[0] (form: $c->[1])");
}
for my $table ('public.customers', 'public.orders')
{
	my $block = copy_block($text, $table);
	ok(defined $block && $block =~ /\\\\x/, "the dump holds $table\'s rows, as bytea");
	my @seen = grep { found_forms($block // '', $_) } @markers;
	is(scalar(@seen), 0, "no marker in any form in $table\'s rows") or diag("seen: @seen[0 .. 4]");
}
(my $rest = $text) =~ s/^COPY public\.control_\w+ .*? FROM stdin;\n.*?^\\\.\n//gms;
my @anywhere = grep { found_forms($rest, $_) } @markers;
is(scalar(@anywhere), 0, 'nor anywhere else in the dump (plain and protected columns, views, byok\'s tables)')
  or diag("seen: @anywhere[0 .. 4]");
unlike($rest, qr/MARKER/, 'not even the word MARKER');
$src->safe_psql('postgres', 'DROP TABLE control_text, control_bytea, control_base64');
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
my ($state, $err) = sql_error($dst, q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'umbrella'}, db => 'r');
is($state, 'YK004', 'a tenant whose CMK was destroyed stays unreadable after the restore (YK004)');
like($err, qr/destroyed or missing/, 'saying the key is missing');
is($dst->safe_psql('r', q{SELECT count(*) FROM byok.tenants}), '4', 'the tenants came back with the dump');
is($dst->safe_psql('r', q{SELECT md5(string_agg(id || tenant || secret, ',' ORDER BY id)) FROM orders_decrypted}),
	$orders, 'the protected column reads back through its restored view');
is($dst->safe_psql('r', q{SELECT count(*) FROM orders WHERE byok_decrypt_text(secret) LIKE 'MARKER-order-%'}), '40',
	'one layer of encryption: each value decrypts straight to its plaintext');
is($dst->safe_psql('r', q{SELECT count(*) FROM byok.protected_columns}), '1', 'the registry came back');
is($dst->safe_psql('r', q{INSERT INTO orders_decrypted VALUES (41, 'acme', 'after restore', 1) RETURNING secret}),
	'after restore', 'the restored view and triggers still encrypt new rows');
($state, $err) = sql_error($dst, q{INSERT INTO orders VALUES (42, 'acme', 'plaintext by mistake', 1)}, db => 'r');
is($state, 'YK010', 'and the restored guard still refuses plaintext in the table (YK010)');
like($err, qr/holds only byok ciphertexts/, 'saying the column holds only ciphertexts');

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
($state, $err) = sql_error($src, q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'globex'});
is($state, 'YK004', 'the source no longer decrypts globex (YK004)');
like($err, qr/tenant "globex" was destroyed/, 'saying the tenant was destroyed');

my $with = PostgreSQL::Test::Cluster->new('with_ledger');
$with->init_from_backup($src, 'before');
$with->append_conf('postgresql.conf', "byok.destruction_ledger = '$ledger'\n");
$with->start;
($state, $err) = sql_error($with, q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'globex'});
is($state, 'YK004', 'restored with the ledger: globex is refused (YK004)');
like($err, qr/tenant "globex" was destroyed/, 'saying the tenant was destroyed');
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
($state, $err) = sql_error($late, q{SELECT count(byok_decrypt(email)) FROM customers WHERE tenant = 'globex'});
is($state, 'YK004', 'cached keys no longer serve (YK004)');
$late->stop;

$dst->stop;
$src->stop;
done_testing();
