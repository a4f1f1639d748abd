# 001_lockout.pl — a customer disables its key; every session decrypting in
# an open transaction is refused within byok.poll_interval + 100 ms, none
# succeeds afterwards, other tenants carry on, re-enabling brings everyone
# back, destroying is final.  Ten drills; the lockout figures are printed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $interval_ms = 200;
my $sessions = 4;
my $drills = 10;

my $node = byok_node('lockout', poll_interval => "${interval_ms}ms");
create_tenant($node, 'drill', 'drill-cmk');
create_tenant($node, 'bystander', 'bystander-cmk');
$node->safe_psql('postgres', q{
	CREATE TABLE d AS SELECT i, byok_encrypt('drill', 'value ' || i) AS c FROM generate_series(1, 100) i;
	CREATE TABLE b AS SELECT i, byok_encrypt('bystander', 'value ' || i) AS c FROM generate_series(1, 100) i;
});

# Each drill: $sessions sessions, each in one transaction decrypting drill
# rows every 2 ms; the key is disabled at a random phase of the poll cycle.
# The bound, per drill: every session refused within poll_interval + 100 ms
# of the rename (the local provider's call is a stat() of a file: no
# provider allowance).  A poller that acts one round late needs about
# interval + 0..interval and crosses it.  Across the drills, the median of
# the drills' last refusals must lie within poll_interval.
my $bound_ms = $interval_ms + 100;
my (@lockouts, @last_success);
for my $drill (1 .. $drills)
{
	my $d = lockout_drill(nodes => [$node], sessions => $sessions,
		perform => 'byok_decrypt(c) FROM d WHERE i = 1 + (n % 100)',
		phase_ms => $interval_ms,
		action => sub { disable_key($node, 'drill-cmk') });
	my $max = lockout_ok($d, 'YK003', $bound_ms, "drill $drill");
	push @lockouts, $max;
	push @last_success, (sort { $a <=> $b } map { $_->{last_ok_ms} // 1e9 } @{ $d->{sessions} })[-1];

	# nobody succeeds afterwards, and other tenants carry on
	my ($state, $stderr) = sql_error($node, 'SELECT count(byok_decrypt(c)) FROM d');
	is($state, 'YK003', "drill $drill: a new session is refused too (YK003)");
	like($stderr, qr/customer master key of tenant "drill" is disabled/, "drill $drill: naming the disabled key");
	is($node->safe_psql('postgres', 'SELECT count(byok_decrypt(c)) FROM b'), '100',
		"drill $drill: the bystander tenant still works");

	enable_key($node, 'drill-cmk');
	ok(wait_state($node, 'drill', 'active'), "drill $drill: the tenant recovers once the key is enabled");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM d WHERE byok_decrypt_text(c) = 'value ' || i}),
		'100', "drill $drill: every row decrypts again");
}

my @sorted = sort { $a <=> $b } grep { defined } @lockouts;
cmp_ok(median(@sorted) // 1e9, '<=', $interval_ms,
	"the median of the drills' last refusals is within poll_interval");
diag(sprintf("lockout after disabling the CMK (poll_interval %d ms, %d sessions, %d drills): "
	  . "last session refused median %.0f ms, max %.0f ms; last successful decrypt median %.0f ms, max %.0f ms after the disable",
	  $interval_ms, $sessions, $drills, median(@sorted) // -1, $sorted[-1] // -1, median(@last_success),
	  (sort { $a <=> $b } @last_success)[-1]));
my $stats = $node->safe_psql('postgres',
	q{SELECT round(revocation_lag_ms::numeric, 3) || ' ms purge, ' || last_purged || ' keys wiped' FROM byok_stats() WHERE tenant = 'drill'});
diag("last purge by the poller: $stats");

# the audit log recorded each lockout and recovery durably
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 20 FROM byok.key_events WHERE tenant = 'drill' AND event IN ('cmk_disabled', 'cmk_enabled')}),
	'every lockout and recovery is in byok.key_events (10 + 10)');
# the audit row's figure runs from the poller's sighting to the end of the
# purge: a wipe of a few cached keys, well under a millisecond
my $detail = $node->safe_psql('postgres',
	q{SELECT detail FROM byok.key_events WHERE tenant = 'drill' AND event = 'cmk_disabled' ORDER BY event_id LIMIT 1});
my ($took) = $detail =~ /lockout took ([\d.]+) ms/;
ok(defined $took && $took <= 10, "the audit row says how long the purge took: within 10 ms ($detail)");

# destroyed is final: even if the key file comes back
my $saved = keyring($node) . '/drill-cmk.saved';
rename(keyring($node) . '/drill-cmk.key', $saved) or die;
ok(wait_state($node, 'drill', 'cmk_destroyed'), 'a destroyed CMK locks the tenant out');
ok(wait_destroyed($node, 'drill'), 'for good once a second poll confirms it');
like($node->safe_psql('postgres', q{SELECT string_agg(detail, ' | ' ORDER BY event_id) FROM byok.key_events
	WHERE tenant = 'drill' AND event = 'cmk_destroyed'}),
	qr/^poller: CMK reported destroyed.* \| poller: CMK destruction confirmed/, 'the audit log has both answers');
rename($saved, keyring($node) . '/drill-cmk.key') or die;
usleep(3 * $interval_ms * 1000);
is($node->safe_psql('postgres', q{SELECT state FROM byok_stats() WHERE tenant = 'drill'}),
	'cmk_destroyed', 'destroyed stays destroyed');
my ($state, $stderr) = sql_error($node, 'SELECT count(byok_decrypt(c)) FROM d');
is($state, 'YK004', 'and nothing decrypts (YK004)');
like($stderr, qr/destroyed/, 'naming the destroyed key');
ok($node->log_contains(qr/byok: tenant "drill" is now cmk_destroyed/), 'the server log says so');

$node->stop;
done_testing();
