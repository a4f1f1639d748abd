# 020_flight_cancel.pl — single flight survives cancelled waiters.  A
# session that misses a key another session is already unwrapping waits on
# that flight; when statement_timeout cancels the wait, it must leave the
# flight, or the flight's slot is never free again.  The waiters are
# long-lived sessions (as behind a pooler: a backend that exits leaves its
# flight at exit anyway): 20 sessions are cancelled 5 times each, on 100
# flights (more than the 64 slots), and afterwards four concurrent misses of
# another key still make exactly one provider call.
use strict;
use warnings;
use IPC::Run;
use List::Util qw(min sum);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;
use ByokKms;
use ByokMore;

my $n = 100;    # cancelled waiters, each on a flight of its own
my $batch = 20;
my $kms = ByokKms->start(PostgreSQL::Test::Utils::tempdir());
my $node = byok_node('flight', poll_interval => '1h',
	conf => [ $kms->conf, "byok.kms_timeout = '10s'", 'max_connections = 80' ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }
sub decrypts { my ($key) = @_; return $kms->stats->{aws}{keys}{$key}{Decrypt} // 0; }

my @keys;
for my $i (1 .. $n + 1)
{
	push @keys, $kms->create_aws_key;
	sq("SELECT byok_create_tenant('f$i', 'aws-kms', '$keys[-1]')");
}
sq(qq{CREATE TABLE t AS SELECT i, byok_encrypt('f' || i, 'value ' || i) AS c FROM generate_series(1, $n + 1) i});
sq('SELECT byok_cache_flush()');
my %before = map { $_ => decrypts($_) } @keys;

sub start_psql
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('postgres'),
		'-c', $sql ], '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

# every unwrap takes 1.5 s: a leader is in flight while its waiter times out
$kms->faults(latency_ms => 1500);
my @waiters = map { async_psql($node) } 1 .. $batch;
$_->run("SET statement_timeout = '300ms'") for @waiters;
my ($cancelled, $led) = (0, 0);
for (my $b = 1; $b <= $n; $b += $batch)
{
	my @ids = ($b .. min($b + $batch - 1, $n));
	my @leaders = map { start_psql("SELECT count(byok_decrypt(c)) FROM t WHERE i = $_") } @ids;
	# the leaders' calls are at the server (it counts a call when it arrives)
	my $t0 = time();
	usleep(50_000) while sum(map { decrypts($keys[$_ - 1]) - $before{ $keys[$_ - 1] } } @ids) < @ids
	  && time() - $t0 < 10;
	for my $k (0 .. $#ids)
	{
		$waiters[$k]->clear;
		$waiters[$k]->send("SELECT count(byok_decrypt(c)) FROM t WHERE i = $ids[$k];");
	}
	for my $k (0 .. $#ids)
	{
		$cancelled++ if defined $waiters[$k]->wait_err(qr/57014: canceling statement due to statement timeout/, 10);
	}
	$_->{h}->finish for @leaders;
	$led += grep { ${ $_->{out} } =~ /^1$/m } @leaders;
}
is($cancelled, $n, "$n waiters cancelled by statement_timeout while the unwrap they waited for was in flight");
is($led, $n, 'every leader decrypted once its unwrap returned');
is(sum(map { decrypts($keys[$_ - 1]) - $before{ $keys[$_ - 1] } } 1 .. $n), $n,
	"one provider unwrap for each of the $n keys: the cancelled sessions were waiting on a flight, not calling");

# four sessions miss the last key at the same moment: one flight, one call
$kms->faults(latency_ms => 500);
my $key = $keys[-1];
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(4242)');
my @cold = map {
	start_psql(qq{SELECT pg_advisory_lock_shared(4242); SELECT count(byok_decrypt(c)) FROM t WHERE i = @{[ $n + 1 ]};})
} 1 .. 4;
$node->poll_query_until('postgres',
	q{SELECT count(*) = 4 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted})
  or die 'cold sessions did not queue';
$holder->query_safe('SELECT pg_advisory_unlock(4242)');
$_->{h}->finish for @cold;
$holder->quit;
is(scalar(grep { ${ $_->{out} } =~ /^1$/m } @cold), 4, 'the four cold sessions decrypted');
is(decrypts($key) - $before{$key}, 1,
	"after $n cancelled waiters, four concurrent misses make one provider call (no flight slot was lost)");

$_->quit for @waiters;
$kms->clear_faults;
$kms->stop;
$node->stop;
done_testing();
