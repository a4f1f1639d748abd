# 005_http_providers.pl — the aws-kms and vault-transit providers against
# the HTTP KMS test server: round trip, onboarding checks, the customer
# disabling / scheduling deletion / deleting its key, recovery, throttling
# retried, a KMS that is down or hangs, bad credentials, broken and
# oversized answers, single flight under latency, one poll round over 1,000
# CMKs at 20 ms, and no secret in any log.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;
use ByokKms;

my $kms = ByokKms->start(PostgreSQL::Test::Utils::tempdir());
my $node = byok_node('http', poll_interval => '200ms',
	conf => [ $kms->conf, 'byok.kms_timeout = 1500ms' ]);

sub sq { return $node->safe_psql('postgres', $_[0]); }

sub set_poll
{
	my ($interval) = @_;
	sq("ALTER SYSTEM SET byok.poll_interval = '$interval'");
	$node->reload;
	my $ms = $interval =~ /^(\d+)ms$/ ? $1 : $interval =~ /^(\d+)h$/ ? $1 * 3600000 : $interval =~ /^(\d+)s$/ ? $1 * 1000 : die;
	$node->poll_query_until('postgres', "SELECT poll_interval_ms = $ms FROM byok_poller_status()")
	  or die "poller did not take $interval";
}

# calls of one operation on one key, as the server counted them
sub calls
{
	my ($api, $key, $op) = @_;
	my $s = $kms->stats;
	return $s->{$api}{keys}{$key}{$op} // 0;
}

my %p = (
	'aws-kms' => {
		api => 'aws', decrypt_op => 'Decrypt', throttles => 2,
		create => sub { $kms->create_aws_key },
		disable => sub { $kms->aws_state($_[0], 'Disabled') },
		schedule_deletion => sub { $kms->aws_state($_[0], 'PendingDeletion') },
		enable => sub { $kms->aws_state($_[0], 'Enabled') },
		destroy => sub { $kms->aws_state($_[0], 'deleted') },
		break_creds => sub { $kms->write_creds($kms->{akid}, 'not-the-secret') },
		fix_creds => sub { $kms->write_creds($kms->{akid}, $kms->{secret}) },
	},
	'vault-transit' => {
		api => 'vault', decrypt_op => 'decrypt', throttles => 1,    # Vault answers 429 with Retry-After: 1
		create => sub { $kms->create_vault_key('vk' . int(rand(1e6))) },
		disable => sub {
			$kms->vault('POST', "transit/keys/$_[0]/rotate", {});
			$kms->vault('POST', "transit/keys/$_[0]/config", { min_decryption_version => 2 });
		},
		schedule_deletion => undef,
		enable => sub { $kms->vault('POST', "transit/keys/$_[0]/config", { min_decryption_version => 1 }) },
		destroy => sub { $kms->admin('POST', "vault/keys/$_[0]/delete", {}) },
		break_creds => sub { $kms->write_file($kms->{vault_token}, "hvs.wrongtoken\n") },
		fix_creds => sub { $kms->write_file($kms->{vault_token}, "$kms->{token}\n") },
	});

for my $prov ('aws-kms', 'vault-transit')
{
	my $P = $p{$prov};
	my $key = $P->{create}->();
	my $t = $prov eq 'aws-kms' ? 'awst' : 'vaultt';
	set_poll('200ms');

	# onboarding and a round trip
	sq("SELECT byok_create_tenant('$t', '$prov', '$key')");
	sq("CREATE TABLE $t AS SELECT i, byok_encrypt('$t', 'value ' || i) AS c FROM generate_series(1, 20) i");
	is(sq("SELECT count(*) FROM $t WHERE byok_decrypt_text(c) = 'value ' || i"), '20', "$prov: round trip");
	is(sq("SELECT string_agg(\"check\" || '=' || ok, ',') FROM byok_validate_tenant('$t')"),
		'key_reference=true,key_state=true,wrap=true,unwrap=true,tenant_key=true', "$prov: every onboarding check passes");
	my $baseline = sq("SELECT latency_baseline_ms FROM byok.tenants WHERE name = '$t'");
	diag("$prov: onboarding round trip $baseline ms");
	my ($state, $err) = sql_error($node, "SELECT byok_create_tenant('${t}x', '$prov', 'no-such-key-$t')");
	is($state, 'YK004', "$prov: onboarding refuses a key that does not exist (YK004)");
	like($err, qr/destroyed or missing/, "$prov: saying it is missing");
	if ($prov eq 'vault-transit')
	{
		# "." and ".." would name other routes once curl normalises the path
		for my $name ('.', '..')
		{
			($state, $err) = sql_error($node, "SELECT byok_create_tenant('${t}dot', '$prov', '$name')");
			is($state, 'YK009', "$prov: the key name \"$name\" is refused (YK009)");
			like($err, qr/BAD_KEY_REF/, "$prov: as a bad key name");
		}
	}
	my $secs;

	# credentials files must be private
	my $cf = $prov eq 'aws-kms' ? $kms->{aws_creds} : $kms->{vault_token};
	chmod 0644, $cf;
	sq("SELECT byok_cache_flush('$t')");
	($state, $err) = sql_error($node, "SELECT count(byok_decrypt(c)) FROM $t");
	is($state, 'YK009', "$prov: a credentials file readable by others is refused (YK009)");
	chmod 0600, $cf;
	is(sq("SELECT count(byok_decrypt(c)) FROM $t"), '20', "$prov: private again, it works");

	# the customer disables its key: three sessions decrypting in open
	# transactions, all refused within poll_interval + 100 ms of the admin
	# call that disabled the key, plus the provider's own latency: the round
	# that sees the change must first hear the test server answer, so the
	# allowance is the poller's own measured round time (last_round_ms,
	# the larger of the rounds before and after the drill; about 1-5 ms)
	my $round_before = sq('SELECT ceil(last_round_ms) FROM byok_poller_status()');
	my $d = lockout_drill(nodes => [$node], sessions => 3,
		perform => "byok_decrypt(c) FROM $t WHERE i = 1 + n % 20",
		action => sub { $P->{disable}->($key) });
	my $round_after = sq('SELECT ceil(last_round_ms) FROM byok_poller_status()');
	my $allow = $round_before > $round_after ? $round_before : $round_after;
	my $lock = lockout_ok($d, 'YK003', 200 + 100 + $allow, "$prov: disabling the key (provider allowance $allow ms)");
	diag(sprintf("$prov: lockout %.0f ms after the disable (the admin call took %.1f ms, poll round %d ms)",
		$lock // -1, $d->{action_ms}, $allow));
	ok(wait_state($node, $t, 'cmk_disabled'), "$prov: the tenant shows locked out");
	($state, $err) = sql_error($node, "SELECT count(byok_decrypt(c)) FROM $t");
	is($state, 'YK003', "$prov: new reads are refused (YK003)");
	like($err, qr/customer master key of tenant "$t" is disabled/, "$prov: naming the disabled key");
	$P->{enable}->($key);
	ok(wait_state($node, $t, 'active'), "$prov: enabling the key lets the tenant back in");
	is(sq("SELECT count(byok_decrypt(c)) FROM $t"), '20', "$prov: every row decrypts again");
	if ($prov eq 'vault-transit')
	{
		sq(q{ALTER SYSTEM SET byok.vault_namespace = 'tenants/acme'});
		$node->reload;
		$node->poll_query_until('postgres', q{SELECT current_setting('byok.vault_namespace') = 'tenants/acme'});
		sq("SELECT byok_cache_flush('$t')");
		is(sq("SELECT count(byok_decrypt(c)) FROM $t"), '20', "$prov: works with a namespace");
		ok(($kms->stats->{namespaces}{'tenants/acme'} // 0) > 0, "$prov: X-Vault-Namespace was sent");
		sq(q{ALTER SYSTEM RESET byok.vault_namespace});
		$node->reload;
	}
	if ($P->{schedule_deletion})
	{
		$P->{schedule_deletion}->($key);
		ok(wait_state($node, $t, 'cmk_disabled'), "$prov: a key pending deletion locks the tenant out");
		$P->{enable}->($key);
		ok(wait_state($node, $t, 'active'), "$prov: cancelled deletion, enabled again: back");
	}

	# faults: keep the poller quiet so it cannot eat the injected faults
	set_poll('1h');
	my $dec0 = calls($P->{api}, $key, $P->{decrypt_op});
	sq("SELECT byok_cache_flush('$t')");
	$kms->faults(throttle => $P->{throttles});
	my $tt = time();
	is(sq("SELECT count(byok_decrypt(c)) FROM $t"), '20', "$prov: throttled, retried, succeeded");
	$tt = time() - $tt;
	is(calls($P->{api}, $key, $P->{decrypt_op}) - $dec0, $P->{throttles} + 1,
		"$prov: $P->{throttles} throttled unwrap calls, then one that worked");
	cmp_ok($tt, '>=', 0.9, sprintf("$prov: Retry-After honoured (%.2f s)", $tt)) if $prov eq 'vault-transit';
	$kms->clear_faults;
	# byok_stats() counts unwraps by their outcome: the throttled answers
	# above were retried into a success, so errors_throttled counts only an
	# unwrap that stays throttled until byok.kms_timeout: YK006, counted once
	my $thr0 = sq("SELECT errors_throttled FROM byok_stats() WHERE tenant = '$t'");
	sq("SELECT byok_cache_flush('$t')");
	$kms->faults(throttle => 1000);
	($state, $err) = sql_error($node, "SELECT count(byok_decrypt(c)) FROM $t");
	is($state, 'YK006', "$prov: throttled until byok.kms_timeout -> the throttling error (YK006)");
	$kms->clear_faults;
	is(sq("SELECT errors_throttled FROM byok_stats() WHERE tenant = '$t'") - $thr0, 1,
		"$prov: stats count that throttled unwrap");
	usleep(1_100_000);    # past the 1 s negative cache

	sq("SELECT byok_cache_flush('$t')");
	$kms->faults(down => JSON::PP::true);
	my $t0 = time();
	($state, $err) = sql_error($node, "SELECT count(byok_decrypt(c)) FROM $t");
	$secs = time() - $t0;
	is($state, 'YK005', "$prov: KMS down -> the KMS-unavailable error (YK005)");
	like($err, qr/key provider is unavailable for tenant "$t"/, "$prov: naming the tenant");
	cmp_ok($secs, '<', 1.5 + 1.0, sprintf("$prov: within byok.kms_timeout, no hang (%.2f s)", $secs));
	$kms->clear_faults;
	usleep(1_100_000);    # past the 1 s negative cache

	# a hung call stops within 50 ms of statement_timeout or
	# pg_cancel_backend (README); timed client-side around the statement
	# alone in a connected session: timeout + 60 ms, cancel + 60 ms
	$kms->faults(hang => JSON::PP::true);
	cancel_checks($node, $prov, "SELECT count(byok_decrypt(c)) FROM $t", 60,
		sub { usleep(1_100_000); sq("SELECT byok_cache_flush('$t')") });    # past the 1 s negative cache
	$kms->clear_faults;
	usleep(1_100_000);    # past the 1 s negative cache

	sq("SELECT byok_cache_flush('$t')");
	$P->{break_creds}->();
	($state, $err) = sql_error($node, "SELECT count(byok_decrypt(c)) FROM $t");
	is($state, 'YK007', "$prov: bad credentials -> permission error (YK007)");
	$P->{fix_creds}->();
	is(sq("SELECT count(byok_decrypt(c)) FROM $t"), '20', "$prov: good credentials again");

	for my $bad ('garbage', 'oversize')
	{
		sq("SELECT byok_cache_flush('$t')");
		$kms->faults($bad => 5);
		($state, $err) = sql_error($node, "SELECT count(byok_decrypt(c)) FROM $t");
		is($state, 'YK008', "$prov: $bad answer -> bad-response error (YK008)");
		like($err, qr/returned an unusable response/, "$prov: $bad answer: saying so");
		$kms->clear_faults;
	}
	is($node->safe_psql('postgres', 'SELECT 1'), '1', "$prov: the server is fine after bad answers");

	# single flight under latency: 8 cold sessions, one unwrap
	sq("SELECT byok_cache_flush('$t')");
	$kms->faults(latency_ms => 300);
	$dec0 = calls($P->{api}, $key, $P->{decrypt_op});
	my $holder = $node->background_psql('postgres');
	$holder->query_safe('SELECT pg_advisory_lock(4243)');
	my @cold;
	for (1 .. 8)
	{
		my ($o, $e) = ('', '');
		push @cold, { h => IPC::Run::start(
			[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('postgres'), '-c',
			  "SELECT pg_advisory_lock_shared(4243); SELECT count(byok_decrypt(c)) FROM $t;" ],
			'>', \$o, '2>', \$e), out => \$o };
	}
	$node->poll_query_until('postgres', q{SELECT count(*) = 8 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted});
	$holder->query_safe('SELECT pg_advisory_unlock(4243)');
	$_->{h}->finish for @cold;
	$holder->quit;
	is(scalar(grep { ${ $_->{out} } =~ /^20$/m } @cold), 8, "$prov: 8 cold sessions all decrypted");
	is(calls($P->{api}, $key, $P->{decrypt_op}) - $dec0, 1, "$prov: exactly one provider unwrap for 8 concurrent misses");
	$kms->clear_faults;

	# deleted at the KMS: final
	set_poll('200ms');
	$P->{destroy}->($key);
	ok(wait_state($node, $t, 'cmk_destroyed'), "$prov: a deleted key locks the tenant out");
	ok(wait_destroyed($node, $t), "$prov: for good once a second poll confirms it");
}

# one poll round over 1,000 CMKs at 20 ms of latency each
set_poll('1s');
my $ids = $kms->admin('POST', 'create', { kind => 'aws', count => 1000 })->{ids};
my $list = join(',', map { "'$_'" } @$ids);
sq(qq{DO \$\$ DECLARE k text; i int := 0;
	BEGIN FOREACH k IN ARRAY ARRAY[$list] LOOP
		i := i + 1;
		PERFORM byok_create_tenant('scale' || i, 'aws-kms', k);
	END LOOP; END \$\$});
sq(q{SELECT count(byok_encrypt('scale' || i, 'x')) FROM generate_series(1, 1000) i});
$kms->faults(latency_ms => 20);
my $r0 = sq('SELECT rounds FROM byok_poller_status()');
$node->poll_query_until('postgres', "SELECT rounds >= $r0 + 2 AND last_round_cmks >= 1000 FROM byok_poller_status()")
  or die 'no full round';
my ($round_ms, $ncmk) = split /\|/, sq(q{SELECT round(last_round_ms::numeric) || '|' || last_round_cmks FROM byok_poller_status()});
diag("one poll round over $ncmk CMKs of aws-kms at 20 ms latency: $round_ms ms");
cmp_ok($round_ms, '<', 1000, 'it fits in a 1-second round');
$kms->clear_faults;

# no secret in any log line, even at debug5
sq(q{ALTER SYSTEM SET log_min_messages = 'debug5'});
$node->reload;
sq(q{SELECT byok_cache_flush()});
sq(q{SELECT count(byok_encrypt('scale' || i, 'x')) FROM generate_series(1, 20) i});
$node->psql('postgres', q{SELECT byok_validate_tenant('scale1')});
sq(q{ALTER SYSTEM RESET log_min_messages});
$node->reload;
$kms->stop;
my $pglog = slurp_file($node->logfile);
my $kmslog = slurp_file($kms->{log});
for my $secret ($kms->{secret}, $kms->{token})
{
	unlike($pglog, qr/\Q$secret\E/, 'no credential in the server log');
	unlike($kmslog, qr/\Q$secret\E/, 'no credential in the KMS log');
}
unlike($pglog, qr/"Plaintext"|"plaintext"|CiphertextBlob/, 'no request or answer body in the server log');

$node->stop;
done_testing();
