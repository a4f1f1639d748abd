# 011_upgrade.pl — ALTER EXTENSION byok UPDATE from the released 1.0 ends with
# exactly the objects, privileges and catalog rows of a fresh install of the
# current version, after the same workload (tenants, rotations, protected
# columns with and without row binding, an online conversion).  Every fact
# of test/sql/extension_state.sql must match; the data must read back.
use strict;
use warnings;
use Cwd qw(abs_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $node = byok_node('upgrade');
new_key($node, 'acme-cmk');
new_key($node, 'globex-cmk');
my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'byok'});
isnt($current, '1.0', "the current version ($current) is not the released 1.0");

# the same workload, valid on 1.0 and on the current version
my $workload = q{
	SELECT byok_create_tenant('acme', 'local', 'acme-cmk');
	SELECT byok_create_tenant('globex', 'local', 'globex-cmk');
	SELECT byok_rotate_data_key('acme');
	CREATE TABLE customers (id int PRIMARY KEY, tenant text NOT NULL, email text, ssn text DEFAULT 'none');
	INSERT INTO customers SELECT i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END,
	    'user' || i || '@example.com', 'ssn-' || i FROM generate_series(1, 20) i;
	SELECT byok_protect_column('customers', 'email', 'tenant');
	SELECT byok_protect_column('customers', 'ssn', 'tenant', bind_row => true);
	CREATE TABLE notes (id int PRIMARY KEY, tenant text NOT NULL, body text);
	INSERT INTO notes SELECT i, 'acme', 'note ' || i FROM generate_series(1, 10) i;
	CALL byok_protect_column_online('notes', 'body', 'tenant', batch_size => 3);
	SELECT byok_rotate_tenant_key('globex');
	SELECT byok_revoke_tenant('globex');
	SELECT byok_reinstate_tenant('globex');
};
my $state = slurp_file(abs_path('test/sql/extension_state.sql'));

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION byok');
$node->safe_psql('fresh', $workload);

$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('upgraded', q{CREATE EXTENSION byok VERSION '1.0'});
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'byok'}), '1.0',
	'the upgraded database starts at 1.0');
$node->safe_psql('upgraded', $workload);
my ($rc, $out, $err) = $node->psql('upgraded', 'ALTER EXTENSION byok UPDATE');
is($rc, 0, 'ALTER EXTENSION byok UPDATE succeeds') or diag($err);

my $fresh = $node->safe_psql('fresh', $state);
my $upgraded = $node->safe_psql('upgraded', $state);
my @f = split /\n/, $fresh;
my @u = split /\n/, $upgraded;
cmp_ok(scalar(@f), '>', 300, 'the comparison covers the objects (' . scalar(@f) . ' facts)');
my %in_u = map { $_ => 1 } @u;
my %in_f = map { $_ => 1 } @f;
my @only_f = grep { !$in_u{$_} } @f;
my @only_u = grep { !$in_f{$_} } @u;
is(scalar(@only_f) + scalar(@only_u), 0, 'the upgraded database holds exactly what a fresh install holds')
  or diag(join("\n", (map { "only fresh:    $_" } @only_f), (map { "only upgraded: $_" } @only_u)));
like($fresh, qr/^version \Q$current\E$/m, "both are at version $current");

# the protected data reads back after the upgrade, through the rebuilt views
is($node->safe_psql('upgraded', q{SELECT count(*) FROM customers_decrypted
	WHERE email = 'user' || id || '@example.com' AND ssn = 'ssn-' || id}), '20',
	'protected values written under 1.0 read back after the upgrade');
is($node->safe_psql('upgraded', q{SELECT string_agg(body, ',' ORDER BY id) FROM notes_decrypted WHERE id <= 3}),
	'note 1,note 2,note 3', 'the online-converted column reads back after the upgrade');

done_testing();
