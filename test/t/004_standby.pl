# 004_standby.pl — a hot standby runs its own poller: when the customer
# disables its key, sessions on the standby are locked out too (and the
# standby writes nothing); the standby recovers when the key is enabled.
use strict;
use warnings;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

# one keyring shared by both servers, as a real KMS would be
my $ring = PostgreSQL::Test::Utils::tempdir() . '/shared_keyring';
make_path($ring);
chmod 0700, $ring;
my $primary = byok_node('primary', allows_streaming => 1, keyring => $ring);
create_tenant($primary, 'acme', 'acme-cmk');
create_tenant($primary, 'globex', 'globex-cmk');
$primary->safe_psql('postgres', q{
	CREATE TABLE t AS SELECT i, t.tenant, byok_encrypt(t.tenant, 'v' || i) AS c
	FROM generate_series(1, 20) i, (VALUES ('acme'), ('globex')) t(tenant);
});
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t}), '40',
	'the standby decrypts what the primary wrote');
cmp_ok($standby->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'byok poller'}) || 0,
	'>', 0, 'the standby runs its own poller');

# three drills: two sessions on each server decrypting acme rows in open
# transactions; the key disabled in the shared keyring at a random phase;
# every session on both servers refused within poll_interval + 100 ms of the
# rename (each server's own poller; local provider: no provider allowance)
my @both_max;
for my $drill (1 .. 3)
{
	my $d = lockout_drill(nodes => [ $primary, $standby ], sessions => 2,
		perform => q{byok_decrypt(c) FROM t WHERE tenant = 'acme' AND i = 1 + n % 20},
		action => sub { disable_key($primary, 'acme-cmk') });
	push @both_max, lockout_ok($d, 'YK003', 200 + 100, "drill $drill, primary and standby");
	ok(wait_state($standby, 'acme', 'cmk_disabled') && wait_state($primary, 'acme', 'cmk_disabled'),
		"drill $drill: both servers show acme locked out");
	last if $drill == 3;
	enable_key($primary, 'acme-cmk');
	ok(wait_state($standby, 'acme', 'active') && wait_state($primary, 'acme', 'active'),
		"drill $drill: both let acme back in");
}
diag(lockout_summary('lockout on primary and standby (poll_interval 200 ms, 2 + 2 sessions)', @both_max));
my ($state, $err) = sql_error($standby, q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'acme'});
is($state, 'YK003', 'new sessions on the standby are refused (YK003)');
like($err, qr/customer master key of tenant "acme" is disabled/, 'naming the disabled key');
is($standby->safe_psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'globex'}), '20',
	'other tenants still read on the standby');
ok($standby->log_contains(qr/byok: tenant "acme" is now cmk_disabled/), 'the standby logs the lockout');

enable_key($primary, 'acme-cmk');
ok(wait_state($standby, 'acme', 'active'), 'the standby recovers when the key is enabled');
ok(wait_state($primary, 'acme', 'active'), 'the primary too');
is($standby->safe_psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t}), '40', 'and reads everything again');
# the standby wrote nothing: its audit rows come only from the primary
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres',
		q{SELECT count(*) FROM byok.key_events WHERE event IN ('cmk_disabled', 'cmk_enabled')}),
	$primary->safe_psql('postgres',
		q{SELECT count(*) FROM byok.key_events WHERE event IN ('cmk_disabled', 'cmk_enabled')}),
	'the standby wrote no audit rows of its own');

# promotion: the new primary encrypts and decrypts, new scopes included
$primary->stop;
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()');
is($standby->safe_psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t}), '40', 'after promotion: old rows decrypt');
is($standby->safe_psql('postgres',
		q{DO $$ BEGIN PERFORM byok_declare_scope('promoted-scope'); END $$;
		  INSERT INTO t SELECT 100, 'acme', byok_encrypt('acme', 'after promotion', 'promoted-scope') RETURNING byok_decrypt_text(c)}),
	'after promotion', 'the new primary encrypts, even under a new scope');
is($standby->safe_psql('postgres', q{SELECT byok_rotate_data_key('globex')}), '2', 'and rotates keys');
$standby->stop;
done_testing();
