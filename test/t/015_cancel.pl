# 015_cancel.pl — pg_cancel_backend stops a hung provider call: a cold
# decrypt waits in a call that never answers (aws-kms: the test server's
# hang fault; kmip: a server that accepts the connection and never answers;
# pkcs11: p11slow.so stalled in front of SoftHSM2), another session cancels
# it, and the error (SQLSTATE 57014) arrives within 60 ms (pkcs11: 110 ms)
# of the cancel — README promises 50 ms (100 ms) — and the session goes on.
use strict;
use warnings;
use Cwd qw(abs_path);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;
use ByokKms;
use ByokMore;

my $tries = 5;
my $dir = PostgreSQL::Test::Utils::tempdir();

# providers: the HTTP test server always; SoftHSM2 and PyKMIP when installed
my $kms = ByokKms->start("$dir");
my $have_p11 = -e '/usr/lib/softhsm/libsofthsm2.so';
my $have_kmip = -e '/usr/bin/pykmip-server';
my @conf = ($kms->conf, "byok.kms_timeout = '5s'");
my @p11ctl;
if ($have_p11)
{
	my $export = `sh ${\ abs_path('test/kms/softhsm_setup.sh')} $dir byoktest`;
	die "softhsm_setup.sh failed" if $? != 0;
	$export =~ /SOFTHSM2_CONF=(\S+)/ or die "no SOFTHSM2_CONF in: $export";
	$ENV{SOFTHSM2_CONF} = $1;
	$ENV{P11SLOW_FLAG} = "$dir/stall";
	@p11ctl = ("$dir/p11ctl", '--module', '/usr/lib/softhsm/libsofthsm2.so', '--token', 'byoktest',
		'--pin-file', "$dir/pin");
	system(@p11ctl, 'keygen', 'hsm-cmk') == 0 or die 'p11ctl keygen failed';
	push @conf, "byok.pkcs11_module = '$dir/p11slow.so'", "byok.pkcs11_token_label = 'byoktest'",
	  "byok.pkcs11_pin_file = '$dir/pin'";
}
my $k;
if ($have_kmip)
{
	require ByokKmip;
	ByokKmip->import;
	mkdir "$dir/kmip";
	$k = ByokKmip::kmip_setup("$dir/kmip");
	ByokKmip::kmip_start($k);
	my $d = $k->{dir};
	push @conf, "byok.kmip_host = '127.0.0.1'", "byok.kmip_port = $k->{port}",
	  "byok.kmip_cert_file = '$d/client.crt'", "byok.kmip_key_file = '$d/client.key'",
	  "byok.kmip_ca_file = '$d/ca.crt'";
}

# the poller stays quiet (1 h): only the sessions call the providers
my $node = byok_node('cancel', poll_interval => '1h', conf => \@conf);
sub sq { return $node->safe_psql('postgres', $_[0]); }

my $aws_key = $kms->create_aws_key;
my %tenants = (aws => [ map { "aws$_" } 1 .. $tries ]);
sq("SELECT byok_create_tenant('$_', 'aws-kms', '$aws_key')") for @{ $tenants{aws} };
if ($have_kmip)
{
	my $uid = ByokKmip::kmipctl($k, 'create', 'cancel-cmk');
	$tenants{kmip} = [ map { "kmip$_" } 1 .. $tries ];
	sq("SELECT byok_create_tenant('$_', 'kmip', '$uid')") for @{ $tenants{kmip} };
}
if ($have_p11)
{
	$tenants{pkcs11} = [ map { "p11_$_" } 1 .. $tries ];
	sq("SELECT byok_create_tenant('$_', 'pkcs11', 'hsm-cmk')") for @{ $tenants{pkcs11} };
}
my $list = join(',', map { "('$_')" } map { @$_ } values %tenants);
sq("CREATE TABLE t AS SELECT n AS tenant, byok_encrypt(n, 'secret of ' || n) AS c FROM (VALUES $list) v(n)");
is(sq(q{SELECT count(*) FROM t WHERE byok_decrypt_text(c) = 'secret of ' || tenant}), scalar(() = $list =~ /\(/g),
	'every tenant round-trips while its provider answers');
sq('SELECT byok_cache_flush()');

my $canceller = async_psql($node);

# One try: $victim decrypts $tenant's cold value; $in_call->() returns once
# the backend is inside the provider call (dies if it never gets there);
# then the cancel.  Returns the ms from handing pg_cancel_backend to psql to
# the victim's error, and the error text.
sub cancel_try
{
	my ($victim, $tenant, $in_call) = @_;
	$victim->clear;
	$in_call->($victim, 'before');
	$victim->send("SELECT byok_decrypt_text(c) FROM t WHERE tenant = '$tenant';");
	$in_call->($victim);
	usleep(20_000);    # well inside the wait loop
	die "the decrypt of $tenant ended before the cancel: $victim->{out} $victim->{err}"
	  if $victim->{err} ne '' || $victim->{out} ne '';
	$canceller->clear;
	my $t0 = $canceller->send('SELECT pg_cancel_backend(' . $victim->pid . ');');
	my $t1 = $victim->wait_err(qr/ERROR:.*\n/, 10);
	die "no error 10 s after the cancel of $tenant" unless defined $t1;
	$canceller->wait_out(qr/^t$/m, 5) or die "pg_cancel_backend did not answer t: $canceller->{out} $canceller->{err}";
	return (($t1 - $t0) * 1000, $victim->{err});
}

sub check_tries
{
	my ($prov, $bound, $in_call, %o) = @_;
	my (@ms, @bad);
	my $victim = $o{per_try} ? undef : async_psql($node);
	for my $tenant (@{ $tenants{$prov} })
	{
		my $v = $victim // async_psql($node);
		my ($ms, $err) = cancel_try($v, $tenant, $in_call);
		push @ms, $ms;
		push @bad, "$tenant: $err" unless $err =~ /^ERROR:\s+57014: canceling statement due to user request$/m;
		push @bad, "$tenant: session unusable: $v->{err}" unless $v->run('SELECT 42') eq '42';
		$v->quit unless $victim;
	}
	is(join("\n", @bad), '', "$prov: every cancelled call fails with 57014 (query_canceled) and the session answers afterwards");
	my ($med, $max) = (median(@ms), (sort { $a <=> $b } @ms)[-1]);
	diag(sprintf("$prov: cancel -> error over %d tries: median %.1f ms, max %.1f ms (%s)",
		scalar(@ms), $med, $max, join(' ', map { sprintf('%.1f', $_) } @ms)));
	cmp_ok($max, '<=', $bound, sprintf("$prov: every cancel stopped the call within $bound ms (max %.1f ms)", $max));
	return $victim;
}

# --- aws-kms: the test server holds every call until the fault is cleared
$kms->faults(api => 'aws', hang => JSON::PP::true);
my $victim = check_tries('aws', 60, sub {
	my ($v, $when) = @_;
	my $n = $kms->stats->{aws}{keys}{$aws_key}{Decrypt} // 0;
	if ($when) { $v->{aws_calls} = $n; return; }
	for (1 .. 500)
	{
		return if $n > $v->{aws_calls};
		usleep(10_000);
		$n = $kms->stats->{aws}{keys}{$aws_key}{Decrypt} // 0;
	}
	die 'the unwrap never reached the test server';
});
$kms->clear_faults;
usleep(1_100_000);    # past any negative cache
is($victim->run(q{SELECT byok_decrypt_text(c) FROM t WHERE tenant = 'aws1'}), 'secret of aws1',
	'aws: the session that was cancelled decrypts once the KMS answers');
$victim->quit;

# --- kmip: a server that accepts connections and never says a word
SKIP:
{
	skip 'PyKMIP is not installed', 3 unless $have_kmip;
	my $mute = IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp') or die;
	sq("ALTER SYSTEM SET byok.kmip_port = " . $mute->sockport);
	sq('SELECT pg_reload_conf()');
	usleep(300_000);
	my $sel = IO::Select->new($mute);
	my @held;
	$victim = check_tries('kmip', 60, sub {
		# the connection is pending on the listener: byok connected and
		# now waits for the TLS handshake's answer
		return if $_[1];
		die 'byok never connected to the silent KMIP server' unless $sel->can_read(10);
		push @held, $mute->accept;
	});
	close $_ for @held;
	close $mute;
	sq("ALTER SYSTEM SET byok.kmip_port = $k->{port}");
	sq('SELECT pg_reload_conf()');
	usleep(1_100_000);
	is($victim->run(q{SELECT byok_decrypt_text(c) FROM t WHERE tenant = 'kmip1'}), 'secret of kmip1',
		'kmip: the session that was cancelled decrypts from the real server');
	$victim->quit;
}

# --- pkcs11: the module stalls in C_FindObjectsInit/C_Decrypt; a stuck
# call keeps its process from calling the module again, so each try has its
# own session
SKIP:
{
	skip 'SoftHSM2 is not installed', 3 unless $have_p11;
	open(my $fh, '>', "$dir/stall") or die;
	close $fh;
	my $how;
	check_tries('pkcs11', 110, sub {
		my ($v, $when) = @_;
		return if $when;
		my $pid = $v->pid;
		# the helper thread sleeping inside p11slow's stall loop
		for (1 .. 500)
		{
			for my $task (glob "/proc/$pid/task/*")
			{
				my $wchan = eval { slurp_file("$task/wchan") } // '';
				if ($wchan =~ /nanosleep/) { $how = 'a backend thread asleep in the module'; return; }
			}
			last if $_ > 50 && !defined $how && !-r "/proc/$pid/task/$pid/wchan";
			usleep(10_000);
		}
		# no readable wchan here: the statement is still running 300 ms into
		# a cold decrypt whose every other step takes under a millisecond
		$how = 'the decrypt still running after 300 ms';
		usleep(300_000);
		die 'the decrypt ended' if $v->{err} ne '' || $v->{out} ne '';
	}, per_try => 1);
	diag("pkcs11: in the call = $how");
	unlink "$dir/stall";
	my $v = async_psql($node);
	is($v->run(q{SELECT byok_decrypt_text(c) FROM t WHERE tenant = 'p11_1'}), 'secret of p11_1',
		'pkcs11: a new session decrypts once the module answers');
	$v->quit;
}

$canceller->quit;
ByokKmip::kmip_stop($k) if $have_kmip;
$kms->stop;
$node->stop;
done_testing();
