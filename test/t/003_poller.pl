# 003_poller.pl — the poller as a process: visible in pg_stat_activity,
# back after SIGTERM, back with an empty cache after SIGKILL (which makes
# PostgreSQL reinitialise shared memory), SIGHUP changes its interval; the
# unreachable policies; one poll round over 1,000 CMKs; the revocation drill.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $node = byok_node('poller', poll_interval => '200ms',
	conf => [ 'restart_after_crash = on', 'byok.unreachable_grace = 1s' ]);
create_tenant($node, 'acme', 'acme-cmk');
$node->safe_psql('postgres',
	q{CREATE TABLE t AS SELECT i, byok_encrypt('acme', 'v' || i) AS c FROM generate_series(1, 10) i});

sub poller_pid
{
	return $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'byok poller'});
}

my $pid = poller_pid();
cmp_ok($pid || 0, '>', 0, 'the poller shows in pg_stat_activity as "byok poller"');
is($node->safe_psql('postgres', 'SELECT pid FROM byok_poller_status()'), $pid,
	'byok_poller_status() names the same process');

# SIGTERM: the postmaster starts it again and it polls again
my $rounds = $node->safe_psql('postgres', 'SELECT rounds FROM byok_poller_status()');
kill 'TERM', $pid;
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'byok poller' AND pid <> $pid}),
	'the poller is back after SIGTERM');
my $new_pid = poller_pid();
ok($node->poll_query_until('postgres',
		qq{SELECT rounds > $rounds AND pid = $new_pid FROM byok_poller_status()}),
	'and it polls again');
# three timed drills against the restarted poller: every session decrypting
# in an open transaction refused within poll_interval + 100 ms of the rename
# (local provider: no provider allowance)
my @restart_max;
for my $drill (1 .. 3)
{
	my $d = lockout_drill(nodes => [$node], sessions => 3,
		perform => 'byok_decrypt(c) FROM t WHERE i = 1 + n % 10',
		action => sub { disable_key($node, 'acme-cmk') });
	push @restart_max, lockout_ok($d, 'YK003', 200 + 100, "restarted poller, drill $drill");
	enable_key($node, 'acme-cmk');
	ok(wait_state($node, 'acme', 'active'), "restarted poller, drill $drill: and lets it back in");
}
diag(lockout_summary('lockout by the restarted poller (poll_interval 200 ms, 3 sessions)', @restart_max));

# SIGHUP: a new interval takes effect
$node->safe_psql('postgres', q{ALTER SYSTEM SET byok.poll_interval = '700ms'});
$node->reload;
ok($node->poll_query_until('postgres', q{SELECT poll_interval_ms = 700 FROM byok_poller_status()}),
	'SIGHUP: the poller runs at the new interval');
my ($r1) = $node->safe_psql('postgres', 'SELECT rounds FROM byok_poller_status()');
sleep 2;
my ($r2) = $node->safe_psql('postgres', 'SELECT rounds FROM byok_poller_status()');
ok($r2 - $r1 >= 2 && $r2 - $r1 <= 4, "about 3 rounds in 2 s at 700 ms (saw " . ($r2 - $r1) . ")");
$node->safe_psql('postgres', q{ALTER SYSTEM RESET byok.poll_interval});
$node->reload;
ok($node->poll_query_until('postgres', q{SELECT poll_interval_ms = 200 FROM byok_poller_status()}),
	'and back to 200 ms');

# SIGKILL: PostgreSQL reinitialises shared memory; the poller comes back and
# the key cache starts empty
$node->safe_psql('postgres', 'SELECT count(byok_decrypt(c)) FROM t');
cmp_ok($node->safe_psql('postgres', q{SELECT cached_keys FROM byok_stats() WHERE tenant = 'acme'}),
	'>', 0, 'keys are cached before the crash');
$pid = poller_pid();
kill 'KILL', $pid;
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'byok poller' AND pid <> $pid}),
	'the poller is back after SIGKILL and crash recovery');
is($node->safe_psql('postgres', q{SELECT count(*) FROM byok_stats()}), '0',
	'shared memory starts empty: no tenant, no cached key');
is($node->safe_psql('postgres', 'SELECT count(byok_decrypt(c)) FROM t'), '10', 'keys are unwrapped anew');

# KMS unreachable is not revocation.  serve_cached (default): cached keys
# keep working, new unwraps fail with YK005, stats say unreachable.
my $ring = keyring($node);
rename($ring, "$ring.away") or die;
ok($node->poll_query_until('postgres',
		q{SELECT kms_status = 'unreachable' FROM byok_stats() WHERE tenant = 'acme'}),
	'stats show the provider unreachable');
is($node->safe_psql('postgres', q{SELECT state FROM byok_stats() WHERE tenant = 'acme'}),
	'active', 'serve_cached: the tenant stays active');
is($node->safe_psql('postgres', 'SELECT count(byok_decrypt(c)) FROM t'), '10',
	'serve_cached: cached keys keep serving');
$node->safe_psql('postgres', q{SELECT byok_cache_flush('acme')});
my ($state, $stderr) = sql_error($node, 'SELECT count(byok_decrypt(c)) FROM t');
is($state, 'YK005', 'serve_cached: a new unwrap fails with the KMS-unavailable error (YK005)');
like($stderr, qr/key provider is unavailable for tenant "acme"/, 'serve_cached: naming the tenant');
$node->safe_psql('postgres', q{SELECT 1});
rename("$ring.away", $ring) or die;
ok($node->poll_query_until('postgres',
		q{SELECT kms_status = 'ok' FROM byok_stats() WHERE tenant = 'acme'}), 'reachable again');
ok($node->poll_query_until('postgres', 'SELECT count(byok_decrypt(c)) = 10 FROM t'),
	'and keys unwrap again (after the 1 s negative cache)');

# fail_closed: locked out once unreachable for longer than the grace (1 s)
$node->safe_psql('postgres', q{ALTER SYSTEM SET byok.unreachable_policy = 'fail_closed'});
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('byok.unreachable_policy') = 'fail_closed'});
rename($ring, "$ring.away") or die;
my $t0 = time();
ok(wait_state($node, 'acme', 'kms_unreachable'), 'fail_closed: the tenant is locked out');
my $took = time() - $t0;
cmp_ok($took, '>=', 0.9, sprintf('only after the grace (%.2f s)', $took));
($state, $stderr) = sql_error($node, 'SELECT count(byok_decrypt(c)) FROM t');
is($state, 'YK005', 'fail_closed: cached keys no longer serve (YK005)');
rename("$ring.away", $ring) or die;
ok(wait_state($node, 'acme', 'active'), 'fail_closed: back when reachable');
is($node->safe_psql('postgres',
		q{SELECT health FROM byok.tenant_status WHERE tenant = 'acme'}), 'ok', 'tenant_status says ok');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET byok.unreachable_policy});
$node->reload;

# The revocation drill, with sessions holding the tenant's keys
my @holders;
for (1 .. 3)
{
	my ($out, $err) = ('', '');
	push @holders, IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('postgres'), '-c',
		  q{DO $$ BEGIN LOOP PERFORM byok_decrypt(c) FROM t; PERFORM pg_sleep(0.005);
		    EXIT WHEN clock_timestamp() > now() + interval '20 s'; END LOOP;
		    EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'refused %', SQLSTATE; END $$} ],
		'>', \$out, '2>', \$err);
}
$node->poll_query_until('postgres', q{SELECT open_handles >= 3 FROM byok_stats() WHERE tenant = 'acme'});
my $drill = $node->safe_psql('postgres',
	q{SELECT round(lockout_ms::numeric, 3) || '|' || entries_purged || '|' || residual_entries || '|' || stale_handles || '|' || ok FROM byok_revocation_drill('acme')});
my ($lockout, $purged, $residual, $stale, $okflag) = split /\|/, $drill;
diag("revocation drill with 3 sessions holding keys: lockout $lockout ms, $purged entries purged, $residual residual");
is($okflag, 'true', 'the drill reports ok');
cmp_ok($purged, '>', 0, 'it purged cached keys');
is($residual, '0', 'no wiped key bytes remain in shared memory');
# the sessions call every 5 ms and a backend drops its handle at its next
# call: 100 ms is 20 of their calls (a backend that waited for the next
# poll round, 200 ms, or its transaction's end would cross it)
cmp_ok($lockout, '<=', 100, 'every session lost its key within 100 ms');
$_->finish for @holders;
is($node->safe_psql('postgres', q{SELECT state FROM byok_stats() WHERE tenant = 'acme'}), 'active',
	'the drill reinstated the tenant');
is($node->safe_psql('postgres', 'SELECT count(byok_decrypt(c)) FROM t'), '10', 'and it works');
my $drill_detail = $node->safe_psql('postgres', q{SELECT detail FROM byok.key_events WHERE event = 'revocation_drill'});
my ($logged) = $drill_detail =~ /lockout ([\d.]+) ms/;
ok(defined $logged && abs($logged - $lockout) < 0.01, "the drill is in the audit log with its figure ($drill_detail)");

# 1,000 tenants with their own CMKs: one poll round
$node->safe_psql('postgres', q{ALTER SYSTEM SET byok.poll_interval = '1s'});
$node->reload;
for my $i (1 .. 1000)
{
	new_key($node, "k$i");
}
$node->safe_psql('postgres', q{
	DO $$ BEGIN
		FOR i IN 1 .. 1000 LOOP
			PERFORM byok_create_tenant('t' || i, 'local', 'k' || i);
		END LOOP;
	END $$;
	SELECT count(byok_encrypt('t' || i, 'x')) FROM generate_series(1, 1000) i;
});
ok($node->poll_query_until('postgres', q{SELECT last_round_cmks >= 1001 FROM byok_poller_status()}),
	'a round covers all 1,001 CMKs');
$node->poll_query_until('postgres', q{SELECT rounds > 0 FROM byok_poller_status()});
usleep(2_500_000);
my $round = $node->safe_psql('postgres',
	q{SELECT round(last_round_ms::numeric, 1) || '|' || last_round_cmks FROM byok_poller_status()});
my ($round_ms, $ncmk) = split /\|/, $round;
diag("one poll round over $ncmk CMKs (local provider): $round_ms ms");
cmp_ok($round_ms, '<', 1000 / 2, 'it fits well inside the 1 s interval');

$node->stop;
done_testing();
