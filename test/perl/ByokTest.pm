# ByokTest.pm — helpers for byok's TAP tests: a cluster with byok preloaded,
# a keyring of local customer keys, tenants, and measuring lockouts.
package ByokTest;

use strict;
use warnings;
use Exporter 'import';
use File::Path qw(make_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(byok_node citus_node new_key disable_key enable_key destroy_key keyring
  create_tenant wait_state wait_destroyed median sql_error lockout_drill lockout_ok lockout_summary
  timed_failure cancel_checks);

# A started cluster with byok preloaded and created in database postgres.
# Extra postgresql.conf lines can be passed; byok.local_keyring points to a
# folder outside the data directory (so a standby can share it).
sub byok_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => $opts{allows_streaming} ? 1 : 0);
	my $keyring = $opts{keyring} // ($node->basedir . '/keyring');
	make_path($keyring);
	chmod 0700, $keyring;
	$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'byok'",
		"byok.local_keyring = '$keyring'",
		"byok.poll_interval = " . ($opts{poll_interval} // '200ms'),
		"max_worker_processes = 16",
		@{ $opts{conf} // [] }) . "\n");
	$node->{byok_keyring} = $keyring;
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION byok');
	return $node;
}

sub keyring { return $_[0]->{byok_keyring}; }

# A new 32-byte customer key file, readable by its owner only.

# A Citus node (Citus built by test/check.sh) preloaded in 'order' with
# byok, sharing the keyring directory 'keyring', started, with the citus
# extension created.
sub citus_node
{
	my ($name, $order, $keyring) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = '$order'",
		"byok.local_keyring = '$keyring'",
		"byok.poll_interval = 200ms",
		"wal_level = logical",
		"max_prepared_transactions = 20",
		"max_wal_senders = 10",
		"max_replication_slots = 10",
		"max_worker_processes = 32",
		"citus.shard_count = 4",
		"listen_addresses = '127.0.0.1'") . "\n");
	$node->{byok_keyring} = $keyring;
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION citus');
	return $node;
}

sub new_key
{
	my ($node, $name) = @_;
	my $path = keyring($node) . "/$name.key";
	open(my $fh, '<', '/dev/urandom') or die;
	read($fh, my $bytes, 32) == 32 or die;
	close $fh;
	open(my $out, '>', $path) or die "$path: $!";
	binmode $out;
	print $out $bytes;
	close $out;
	chmod 0600, $path;
	return $path;
}

sub disable_key
{
	my ($node, $name) = @_;
	my $k = keyring($node) . "/$name.key";
	rename($k, "$k.disabled") or die "rename $k: $!";
}

sub enable_key
{
	my ($node, $name) = @_;
	my $k = keyring($node) . "/$name.key";
	rename("$k.disabled", $k) or die "rename $k.disabled: $!";
}

sub destroy_key
{
	my ($node, $name) = @_;
	my $k = keyring($node) . "/$name.key";
	unlink($k, "$k.disabled");
}

sub create_tenant
{
	my ($node, $tenant, $key) = @_;
	new_key($node, $key);
	$node->safe_psql('postgres', "SELECT byok_create_tenant('$tenant', 'local', '$key')");
}

# Wait until byok_stats() shows the tenant in a state; true if it did.
sub wait_state
{
	my ($node, $tenant, $state, $db) = @_;
	return $node->poll_query_until($db // 'postgres',
		"SELECT state = '$state' FROM byok_stats() WHERE tenant = '$tenant'");
}

# Wait until the tenant is destroyed for good: cmk_destroyed, and not on a
# single provider answer that a later poll could still contradict (the
# poller confirms a destruction on its second answer in a row).
sub wait_destroyed
{
	my ($node, $tenant, $db) = @_;
	return $node->poll_query_until($db // 'postgres',
		"SELECT state = 'cmk_destroyed' AND last_change NOT IN ('poller: CMK reported destroyed', 'unwrap: CMK destroyed')
		   FROM byok_stats() WHERE tenant = '$tenant'");
}

# Run SQL that should fail, at VERBOSITY verbose: returns the SQLSTATE of
# the first ERROR ('' if the SQL succeeded, 'none' if no code could be read)
# and psql's whole stderr, for like() on the message.
sub sql_error
{
	my ($node, $sql, %o) = @_;
	my ($ret, $out, $err) = $node->psql($o{db} // 'postgres', $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ('', $err) if $ret == 0;
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return ($state // 'none', $err);
}

# A lockout drill, measured per session.
#   lockout_drill(nodes => [$node, ...], sessions => 4 (per node),
#                 perform => 'byok_decrypt(c) FROM t WHERE i = 1 + n % 20',
#                 action => sub { disable the key at the provider },
#                 from => 'before' | 'after', phase_ms => 200, db => 'postgres')
# Each session holds one transaction that runs "PERFORM <perform>" (n counts
# the iterations) every 2 ms until it is refused or 15 s pass.  Once every
# session has decrypted at least once, the drill waits a random phase
# (50 ms + 0..phase_ms) against the poller's rounds, then runs the action.
# The reference moment is the test's own action timestamp: taken just before
# the action (from => 'before', for an instantaneous action such as a rename
# or one HTTP admin call) or just after it returned (from => 'after', for a
# tool whose process start-up would otherwise be counted).  For every
# session the drill records, in ms after that moment, when the server
# refused it (server clock_timestamp(), the same clock as the test's) and
# when it last succeeded; refused_ms stays undef for a session that was
# never refused.  Returns { sessions => [ { state, refused_ms, last_ok_ms,
# output } ], action_ms => how long the action took }.
sub lockout_drill
{
	my (%o) = @_;
	my $db = $o{db} // 'postgres';
	my $per = $o{sessions} // 4;
	my $loop = qq{
DO \$\$
DECLARE
	last_ok float8 := 0;
	n int := 0;
BEGIN
	BEGIN
		LOOP
			PERFORM $o{perform};
			last_ok := extract(epoch FROM clock_timestamp());
			n := n + 1;
			IF n = 1 THEN RAISE NOTICE 'started'; END IF;
			EXIT WHEN clock_timestamp() > now() + interval '15 s';
			PERFORM pg_sleep(0.002);
		END LOOP;
		RAISE NOTICE 'never refused n=%', n;
	EXCEPTION WHEN OTHERS THEN
		RAISE NOTICE 'refused state=% last_ok=% at=% n=%', SQLSTATE, last_ok,
			extract(epoch FROM clock_timestamp()), n;
	END;
END \$\$;
};
	my @s;
	for my $node (@{ $o{nodes} })
	{
		for (1 .. $per)
		{
			my ($out, $err) = ('', '');
			my $h = IPC::Run::start(
				[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr($db), '-c', $loop ],
				'>', \$out, '2>', \$err);
			push @s, { h => $h, out => \$out, err => \$err, node => $node->name };
		}
	}
	my $deadline = time() + 30;
	while (grep({ ${ $_->{err} } !~ /started/ } @s) && time() < $deadline)
	{
		$_->{h}->pump_nb for @s;
		usleep(10_000);
	}
	usleep(50_000 + int(rand($o{phase_ms} // 200)) * 1000);

	my $t_before = time();
	$o{action}->();
	my $t_after = time();
	my $ref = ($o{from} // 'before') eq 'after' ? $t_after : $t_before;
	$_->{h}->finish for @s;

	my @res;
	for my $s (@s)
	{
		my %r = (node => $s->{node}, output => ${ $s->{err} });
		if (${ $s->{err} } =~ /refused state=(\w+) last_ok=([\d.]+) at=([\d.]+)/)
		{
			$r{state} = $1;
			$r{refused_ms} = ($3 - $ref) * 1000;
			$r{last_ok_ms} = ($2 - $ref) * 1000;
		}
		push @res, \%r;
	}
	return { sessions => \@res, action_ms => ($t_after - $t_before) * 1000 };
}

# Assert a drill: every session refused with SQLSTATE $state, and (only once
# every one of them was) the last refusal within $bound_ms of the action.
# Returns the latest refusal in ms (undef if a session was never refused).
sub lockout_ok
{
	my ($d, $state, $bound_ms, $name) = @_;
	my @s = @{ $d->{sessions} };
	my @never = grep { !defined $_->{refused_ms} } @s;
	my @wrong = grep { defined $_->{state} && $_->{state} ne $state } @s;
	diag("$_->{node} session never refused: $_->{output}") for @never;
	is(scalar(grep { defined $_->{state} && $_->{state} eq $state } @s), scalar(@s),
		"$name: every one of the " . scalar(@s) . " sessions refused with $state")
	  or diag("refused with: " . join(', ', map { $_->{state} // 'nothing' } @s));
	my $max;
	if (!@never && @s)
	{
		$max = (sort { $a <=> $b } map { $_->{refused_ms} } @s)[-1];
	}
	ok(defined $max && $max <= $bound_ms,
		sprintf("%s: the last session refused within %.0f ms of the action (%s)", $name, $bound_ms,
			defined $max ? sprintf('%.0f ms', $max) : scalar(@never) . ' never refused'));
	return $max;
}

# One line of figures over several drills' maxima.
sub lockout_summary
{
	my ($what, @max) = @_;
	my @v = sort { $a <=> $b } grep { defined } @max;
	return sprintf('%s: %d drills, last session refused median %.0f ms, max %.0f ms after the action',
		$what, scalar(@v), median(@v) // -1, $v[-1] // -1);
}

# A statement that must fail promptly, timed client-side around the
# statement alone, in an already connected session:
#   timed_failure($node, $sql, statement_timeout => '300ms')
#     -> ms from sending the statement until its error arrived
#   timed_failure($node, $sql, cancel_after_ms => 300)
#     -> ms from the pg_cancel_backend (issued from a second connected
#        session that long after the statement was sent) until the error
# Returns (ms, SQLSTATE, stderr).
sub timed_failure
{
	my ($node, $sql, %o) = @_;
	my $db = $o{db} // 'postgres';
	my $bg = $node->background_psql($db, on_error_stop => 0);
	$bg->query_safe('\set VERBOSITY verbose');
	$bg->query_safe("SET statement_timeout = '$o{statement_timeout}'") if $o{statement_timeout};
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	my $canceller = $o{cancel_after_ms} ? $node->background_psql($db) : undef;
	$bg->{stderr} = '';
	$bg->{stdout} = '';
	$bg->{stdin} .= "$sql;\n\\warn 'TIMED-FAILURE-DONE'\n";
	my $t0 = time();
	$bg->{run}->pump_nb while length($bg->{stdin}) && !$bg->{timeout}->is_expired;
	if ($canceller)
	{
		usleep($o{cancel_after_ms} * 1000);
		$t0 = time();
		$canceller->query_safe("SELECT pg_cancel_backend($pid)");
	}
	$bg->{run}->pump until $bg->{stderr} =~ /TIMED-FAILURE-DONE/ || $bg->{timeout}->is_expired;
	my $ms = (time() - $t0) * 1000;
	my $err = $bg->{stderr};
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	$canceller->quit if $canceller;
	$bg->quit;
	return ($ms, $state // ($err =~ /ERROR/ ? 'none' : ''), $err);
}

# README: a hung provider call stops within 50 ms (PKCS#11: 100 ms) of
# statement_timeout or pg_cancel_backend.  Both, for one hung statement:
#   cancel_checks($node, $what, $sql, $slack_ms, $between)
# each stop must be a 57014 within the 300 ms timeout + $slack_ms, or within
# $slack_ms of the cancel; $between->() runs before each try (to let the
# negative cache pass, flush, ...).
sub cancel_checks
{
	my ($node, $what, $sql, $slack, $between) = @_;
	$between->();
	my ($ms, $code, $err) = timed_failure($node, $sql, statement_timeout => '300ms');
	is($code, '57014', "$what: a hung call is cancelled by statement_timeout (57014)");
	like($err, qr/canceling statement due to statement timeout/, "$what: saying so");
	cmp_ok($ms, '<=', 300 + $slack, sprintf("$what: within %d ms of the 300 ms timeout (%.0f ms)", $slack, $ms));
	diag(sprintf("$what: hung call under statement_timeout 300ms stopped after %.0f ms", $ms));
	$between->();
	($ms, $code, $err) = timed_failure($node, $sql, cancel_after_ms => 300);
	is($code, '57014', "$what: a hung call is cancelled by pg_cancel_backend (57014)");
	like($err, qr/canceling statement due to user request/, "$what: saying so");
	cmp_ok($ms, '<=', $slack, sprintf("$what: within %d ms of pg_cancel_backend (%.0f ms)", $slack, $ms));
	diag(sprintf("$what: hung call stopped %.0f ms after pg_cancel_backend", $ms));
}

sub median
{
	my @v = sort { $a <=> $b } @_;
	return undef unless @v;
	return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

1;
