# 018_polling.pl — the poller's round (README "The poller", "Network
# behaviour"): one state question per CMK however many tenants share it,
# the answer applied to every one of them; byok.kms_max_connections caps
# the poller's concurrent calls to one endpoint; and a slow or hung CMK
# does not delay the lockout of a fast one (CMKs polled fastest first).
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use POSIX qw(ceil);
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;
use ByokKms;
use ByokMore;

my $interval_ms = 200;
my $kms = ByokKms->start(PostgreSQL::Test::Utils::tempdir());
my $node = byok_node('polling', poll_interval => "${interval_ms}ms",
	conf => [ $kms->conf, "byok.kms_timeout = '1500ms'", 'byok.kms_max_connections = 2' ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }
sub describes { my ($key) = @_; return $kms->stats->{aws}{keys}{$key}{DescribeKey} // 0; }
sub rounds { return sq('SELECT rounds FROM byok_poller_status()'); }
sub wait_rounds
{
	my ($n) = @_;
	my $r0 = rounds();
	$node->poll_query_until('postgres', "SELECT rounds >= $r0 + $n FROM byok_poller_status()")
	  or die "the poller did not complete $n rounds";
}
sub set_conf
{
	my ($guc, $value) = @_;
	sq("ALTER SYSTEM SET $guc = '$value'");
	sq('SELECT pg_reload_conf()');
	$node->poll_query_until('postgres', "SELECT current_setting('$guc') = '$value'") or die;
	wait_rounds(1);
}

# --- byok.kms_max_connections: 12 aws-kms CMKs, 100 ms per call; with at
# most 2 connections a round takes at least 6 x 100 ms, with 64 about 100 ms.
# The server starts with 2; then a reload raises it to 64 and lowers it to
# 2 again (the GUC is sighup).
my @ckeys = map { $kms->create_aws_key } 1 .. 12;
for my $i (0 .. $#ckeys)
{
	sq("SELECT byok_create_tenant('conn$i', 'aws-kms', '$ckeys[$i]'); SELECT byok_encrypt('conn$i', 'x')");
}
$kms->faults(api => 'aws', latency_ms => 100);
my $phase = 0;
for my $limit (2, 64, 2)
{
	$phase++;
	set_conf('byok.kms_max_connections', $limit);
	wait_rounds(1);    # a whole round under the new limit
	$kms->admin('POST', 'stats/reset', {});
	wait_rounds(2);
	my ($ms, $n) = split /\|/, sq('SELECT round(last_round_ms::numeric) || \'|\' || last_round_cmks FROM byok_poller_status()');
	diag("byok.kms_max_connections = $limit: a round over $n aws-kms CMKs at 100 ms each took $ms ms; "
		  . $kms->stats->{connections} . " new TCP connections in 2+ rounds");
	is($n, 12, "limit $limit: the round asked about the 12 CMKs");
	if ($limit == 2)
	{
		cmp_ok($ms, '>=', ceil(12 / 2) * 100 * 0.95, ($phase == 3 ? 'lowered by a reload, ' : 'from the start, ')
			. "limit 2: at most 2 calls at once, the round takes >= 6 x 100 ms ($ms ms)");
		cmp_ok($ms, '<', ceil(12 / 2) * 100 + 300, "limit 2: and 2 at once, not one after the other ($ms ms)");
	}
	else
	{
		cmp_ok($ms, '<', 2 * 100 + 100, "limit 64: the 12 calls run at once ($ms ms)");
	}
}
$kms->clear_faults;

# --- one question per CMK: 6 tenants on one CMK, one on another
my $shared = $kms->create_aws_key;
my $single = $kms->create_aws_key;
for my $i (1 .. 6)
{
	sq("SELECT byok_create_tenant('share$i', 'aws-kms', '$shared'); SELECT byok_encrypt('share$i', 'x')");
}
sq("SELECT byok_create_tenant('single', 'aws-kms', '$single'); SELECT byok_encrypt('single', 'x')");
wait_rounds(2);
my ($r0, $s0, $u0) = (rounds(), describes($shared), describes($single));
wait_rounds(8);
my ($r1, $s1, $u1) = (rounds(), describes($shared), describes($single));
my ($nr, $ns, $nu) = ($r1 - $r0, $s1 - $s0, $u1 - $u0);
diag("in $nr rounds: $ns DescribeKey calls for the CMK of 6 tenants, $nu for the CMK of one");
cmp_ok($nr, '>=', 8, "the poller ran $nr rounds");
cmp_ok(abs($ns - $nr), '<=', 1, "one question per round for a CMK shared by 6 tenants ($ns in $nr rounds)");
cmp_ok(abs($nu - $nr), '<=', 1, "and one for a CMK of one tenant ($nu in $nr rounds)");
$kms->aws_state($shared, 'Disabled');
ok(wait_state($node, 'share6', 'cmk_disabled'), 'the shared CMK disabled: its tenants are locked out');
is(sq(q{SELECT string_agg(state, ',' ORDER BY tenant) FROM byok_stats() WHERE tenant LIKE 'share%'}),
	join(',', ('cmk_disabled') x 6), 'the one answer applied to all 6 tenants');
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'single'}), 'active', 'and to no one else');
$kms->aws_state($shared, 'Enabled');
ok(wait_state($node, 'share1', 'active'), 'enabled again');

# --- a slow CMK does not delay the lockout of a fast one.  $disable->()
# disables the fast CMK at a random phase of the poll cycle; the time until
# byok_stats() shows it, polled every ~1 ms.
my $watch = async_psql($node);
sub lockout_ms
{
	my ($tenant, $disable) = @_;
	usleep(int(rand($interval_ms * 1000)));
	my $t0 = time();
	$disable->();
	my $t1 = time();
	while (time() - $t0 < 10)
	{
		my $st = $watch->run("SELECT state FROM byok_stats() WHERE tenant = '$tenant'");
		return ((time() - $t1) * 1000) if $st eq 'cmk_disabled';
	}
	die "$tenant was not locked out within 10 s";
}
my $bound = $interval_ms + 100;
my $fast = $kms->create_aws_key;
my $slow = $kms->create_aws_key;
my $vkey = $kms->create_vault_key('vfast');
sq("SELECT byok_create_tenant('fast', 'aws-kms', '$fast'); SELECT byok_encrypt('fast', 'x')");
sq("SELECT byok_create_tenant('slow', 'aws-kms', '$slow'); SELECT byok_encrypt('slow', 'x')");
sq("SELECT byok_create_tenant('vfast', 'vault-transit', '$vkey'); SELECT byok_encrypt('vfast', 'x')");
create_tenant($node, 'lfast', 'lfast-cmk');
sq(q{SELECT byok_encrypt('lfast', 'x')});
my $vconf = 1;
my %cases = (
	'aws-kms (same provider as the slow CMK)' => [ 'fast',
		sub { $kms->aws_state($fast, 'Disabled') }, sub { $kms->aws_state($fast, 'Enabled') } ],
	'vault-transit (another provider)' => [ 'vfast',
		sub { $kms->vault('POST', "transit/keys/$vkey/rotate", {}) if $vconf++ == 1;
			  $kms->vault('POST', "transit/keys/$vkey/config", { min_decryption_version => 2 }) },
		sub { $kms->vault('POST', "transit/keys/$vkey/config", { min_decryption_version => 1 }) } ],
	'local (another provider)' => [ 'lfast',
		sub { disable_key($node, 'lfast-cmk') }, sub { enable_key($node, 'lfast-cmk') } ]);
for my $slowness ('none', 'latency 1000 ms', 'hung (byok.kms_timeout)')
{
	$kms->clear_faults;
	$kms->faults(key => $slow, latency_ms => 1000) if $slowness =~ /latency/;
	$kms->faults(key => $slow, hang => JSON::PP::true) if $slowness =~ /hung/;
	wait_rounds(2);
	for my $case (sort keys %cases)
	{
		my ($tenant, $disable, $enable) = @{ $cases{$case} };
		my @ms;
		for (1 .. ($slowness eq 'none' ? 3 : 2))
		{
			push @ms, lockout_ms($tenant, $disable);
			$enable->();
			wait_state($node, $tenant, 'active') or die "$tenant not back";
			# keys cached again, so the poller keeps watching its CMK
			sq("SELECT byok_cache_flush('$tenant'); SELECT byok_encrypt('$tenant', 'x')");
		}
		my $max = (sort { $a <=> $b } @ms)[-1];
		diag(sprintf("slow CMK %s: lockout of %s: %s ms", $slowness, $case, join(' ', map { sprintf('%.0f', $_) } @ms)));
		cmp_ok($max, '<=', $bound, sprintf("slow CMK %s: %s locked out within interval + 100 ms (max %.0f ms)", $slowness, $case, $max));
	}
}
$kms->clear_faults;
$watch->quit;

# jitter: rounds start at most the interval apart, and not in lockstep (each
# wait is the interval less up to a tenth of it at random)
{
	# sampled inside the server every 5 ms (a client's own stalls would merge rounds)
	sq(q{CREATE TABLE round_ends (at float8);
		DO $$ BEGIN
			FOR i IN 1 .. 800 LOOP
				-- when each round started: its end less its length (the length varies with the provider)
				INSERT INTO round_ends SELECT extract(epoch FROM last_round_at) - last_round_ms / 1000 FROM byok_poller_status();
				PERFORM pg_sleep(0.005);
			END LOOP;
		END $$});
	my @ends = split /\n/, sq(q{SELECT DISTINCT at FROM round_ends ORDER BY at});
	shift @ends;    # the round that ended before the sampling began
	my @gaps = map { ($ends[$_] - $ends[ $_ - 1 ]) * 1000 } 1 .. $#ends;
	my @s = sort { $a <=> $b } @gaps;
	cmp_ok(scalar(@gaps), '>=', 15, sprintf('%d poller rounds sampled at %d ms', scalar(@gaps), $interval_ms));
	cmp_ok($s[-1] // 1e9, '<=', $interval_ms + 60, sprintf('never later than the interval (longest gap %.1f ms)', $s[-1] // -1));
	# a wait shortened by more than 10 ms (half the jitter's range) comes in
	# one round of two; in 15 rounds, all but certainly
	cmp_ok($s[0] // 1e9, '<=', $interval_ms - 10,
		sprintf('not in lockstep: gaps from %.1f to %.1f ms', $s[0] // -1, $s[-1] // -1));
}

$kms->stop;
$node->stop;
done_testing();
