# 004_standby.pl — a hot standby runs its own poller: when the customer
# disables its key, sessions on the standby are locked out too (and the
# standby writes nothing); the standby recovers when the key is enabled.
use strict;
use warnings;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes;
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
like($standby->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'byok poller'}),
	qr/^\d+$/, 'the standby runs its own poller');

$primary->safe_psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t});
my $t0 = Time::HiRes::time();
disable_key($primary, 'acme-cmk');
ok(wait_state($standby, 'acme', 'cmk_disabled'), "the standby's poller locks acme out");
ok(wait_state($primary, 'acme', 'cmk_disabled'), 'and the primary locks it out too');
my $both = Time::HiRes::time() - $t0;
cmp_ok($both, '<', 0.2 + 0.5, sprintf('both within the same bound (%.0f ms)', $both * 1000));
my ($ret, $out, $err) = $standby->psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'acme'});
like($err, qr/customer master key of tenant "acme" is disabled/, 'sessions on the standby are refused');
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
