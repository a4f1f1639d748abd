# 001_lockout.pl — a customer disables its key; every session decrypting in
# an open transaction is refused within byok.poll_interval + 500 ms, none
# succeeds afterwards, other tenants carry on, re-enabling brings everyone
# back, destroying is final.  Ten drills; the lockout figures are printed.
use strict;
use warnings;
use IPC::Run;
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

# One session: a single transaction decrypting drill rows in a loop until
# refused (or 30 s), then reporting when it last succeeded and when it was
# refused, as epoch seconds.
my $loop = q{
DO $$
DECLARE
	last_ok float8 := 0;
	n int := 0;
	v bytea;
BEGIN
	BEGIN
		LOOP
			SELECT c INTO v FROM d WHERE i = 1 + (n % 100);
			PERFORM byok_decrypt(v);
			last_ok := extract(epoch FROM clock_timestamp());
			n := n + 1;
			IF n = 1 THEN RAISE NOTICE 'started'; END IF;
			EXIT WHEN clock_timestamp() > now() + interval '30 s';
			PERFORM pg_sleep(0.002);
		END LOOP;
		RAISE NOTICE 'never refused n=%', n;
	EXCEPTION WHEN OTHERS THEN
		RAISE NOTICE 'refused state=% last_ok=% at=% n=%', SQLSTATE, last_ok,
			extract(epoch FROM clock_timestamp()), n;
	END;
END $$;
};

sub start_session
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('postgres'), '-c', $loop ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

my (@lockouts, @last_success);
for my $drill (1 .. $drills)
{
	my @s = map { start_session() } 1 .. $sessions;
	# wait until every session is inside its transaction, decrypting
	my $deadline = time() + 20;
	while (grep({ ${ $_->{err} } !~ /started/ } @s) && time() < $deadline)
	{
		$_->{h}->pump_nb for @s;
		usleep(10_000);
	}
	# a random phase against the poller's rounds
	usleep(50_000 + int(rand($interval_ms)) * 1000);

	my $t0 = time();
	disable_key($node, 'drill-cmk');
	$_->{h}->finish for @s;

	my ($max_refused, $max_last_ok, $refused) = (0, -1e9, 0);
	for my $s (@s)
	{
		if (${ $s->{err} } =~ /refused state=(\w+) last_ok=([\d.]+) at=([\d.]+)/)
		{
			$refused++ if $1 eq 'YK003';
			$max_refused = $3 - $t0 if $3 - $t0 > $max_refused;
			$max_last_ok = $2 - $t0 if $2 - $t0 > $max_last_ok;
		}
		else
		{
			diag("session output: " . ${ $s->{err} });
		}
	}
	is($refused, $sessions, "drill $drill: every session refused with YK003");
	cmp_ok($max_refused * 1000, '<=', $interval_ms + 500,
		"drill $drill: all refused within poll_interval + 500 ms");
	push @lockouts, $max_refused * 1000;
	push @last_success, $max_last_ok * 1000;

	# nobody succeeds afterwards, and other tenants carry on
	my ($ret, $stdout, $stderr) = $node->psql('postgres', 'SELECT count(byok_decrypt(c)) FROM d');
	like($stderr, qr/customer master key of tenant "drill" is disabled/, "drill $drill: a new session is refused too");
	is($node->safe_psql('postgres', 'SELECT count(byok_decrypt(c)) FROM b'), '100',
		"drill $drill: the bystander tenant still works");

	enable_key($node, 'drill-cmk');
	ok(wait_state($node, 'drill', 'active'), "drill $drill: the tenant recovers once the key is enabled");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM d WHERE byok_decrypt_text(c) = 'value ' || i}),
		'100', "drill $drill: every row decrypts again");
}

my @sorted = sort { $a <=> $b } @lockouts;
diag(sprintf("lockout after disabling the CMK (poll_interval %d ms, %d sessions, %d drills): "
	  . "refused median %.0f ms, max %.0f ms; last successful decrypt median %.0f ms, max %.0f ms after the disable",
	  $interval_ms, $sessions, $drills, median(@lockouts), $sorted[-1], median(@last_success),
	  (sort { $a <=> $b } @last_success)[-1]));
my $stats = $node->safe_psql('postgres',
	q{SELECT round(revocation_lag_ms::numeric, 3) || ' ms purge, ' || last_purged || ' keys wiped' FROM byok_stats() WHERE tenant = 'drill'});
diag("last purge by the poller: $stats");

# the audit log recorded each lockout and recovery durably
ok($node->poll_query_until('postgres',
		q{SELECT count(*) >= 20 FROM byok.key_events WHERE tenant = 'drill' AND event IN ('cmk_disabled', 'cmk_enabled')}),
	'every lockout and recovery is in byok.key_events');
like($node->safe_psql('postgres',
		q{SELECT detail FROM byok.key_events WHERE tenant = 'drill' AND event = 'cmk_disabled' ORDER BY event_id LIMIT 1}),
	qr/lockout took [\d.]+ ms/, 'the audit row says how long the purge took');

# destroyed is final: even if the key file comes back
my $saved = keyring($node) . '/drill-cmk.saved';
rename(keyring($node) . '/drill-cmk.key', $saved) or die;
ok(wait_state($node, 'drill', 'cmk_destroyed'), 'a destroyed CMK locks the tenant out');
rename($saved, keyring($node) . '/drill-cmk.key') or die;
usleep(3 * $interval_ms * 1000);
is($node->safe_psql('postgres', q{SELECT state FROM byok_stats() WHERE tenant = 'drill'}),
	'cmk_destroyed', 'destroyed stays destroyed');
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'SELECT count(byok_decrypt(c)) FROM d');
like($stderr, qr/destroyed/, 'and nothing decrypts');
ok($node->log_contains(qr/byok: tenant "drill" is now cmk_destroyed/), 'the server log says so');

$node->stop;
done_testing();
