# byok.cluster_pollers on a Citus cluster (a coordinator and two workers,
# each with its own copy of the customers' key files, so a key can be
# disabled on one node's provider alone): with cluster_pollers = 1 each CMK
# is asked about by one node only, chosen per key, and the others take its
# answer from its reports (byok.cmk_reports): a key disabled where the
# chosen node asks locks every node out within the drill bound (ten drills,
# per-node figures); a key disabled where a node does not ask is not seen
# there; when the chosen node stops reporting, the others ask themselves
# within the fallback bound; no role but the extension's owner writes the
# reports.
use strict;
use warnings;
use File::Copy qw(copy);
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $libdir = PostgreSQL::Test::Cluster->new('probe')->config_data('--pkglibdir');
ok(-f "$libdir/citus.so", 'Citus is installed (test/check.sh builds it from the vendored source)')
  or BAIL_OUT('no citus.so: run test/check.sh, which builds Citus');

my @nodes;
for my $name ('coordinator', 'worker1', 'worker2')
{
	my $keyring = PostgreSQL::Test::Utils::tempdir() . "/keyring";
	make_path($keyring);
	chmod 0700, $keyring;
	push @nodes, citus_node($name, $name eq 'worker2' ? 'byok,citus' : 'citus,byok', $keyring);
}
my ($coord, @workers) = @nodes;
sub cq { return $coord->safe_psql('postgres', $_[0]); }
cq(sprintf(q{SELECT citus_set_coordinator_host('127.0.0.1', %d)}, $coord->port));
cq(sprintf(q{SELECT citus_add_node('127.0.0.1', %d)}, $_->port)) for @workers;
cq('CREATE EXTENSION byok');
is($_->safe_psql('postgres', q{SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'byok.cmk_reports'::regclass
	AND partmethod = 'n'}), '1', $_->name . ': byok.cmk_reports is a reference table') for @nodes;

# six tenants, six CMKs; every node's keyring holds the same key files
my @tenants = map { "t$_" } 1 .. 6;
for my $t (@tenants)
{
	create_tenant($coord, $t, $t);
	copy(keyring($coord) . "/$t.key", keyring($_) . "/$t.key") && chmod(0600, keyring($_) . "/$t.key")
	  or die "copy $t.key: $!" for @workers;
}
cq(q{CREATE TABLE d (i int PRIMARY KEY, tenant text, c bytea)});
cq(q{SELECT create_distributed_table('d', 'i')});
cq(q{INSERT INTO d SELECT g, 't' || (1 + g % 6), byok_encrypt('t' || (1 + g % 6), 'v' || g) FROM generate_series(1, 120) g});
for my $n (@nodes)
{
	$n->safe_psql('postgres', q{CREATE TABLE here AS SELECT i, tenant, c FROM d});
	is($n->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) FROM here}), '120',
		$n->name . ': reads every tenant\'s values');
}

# with the default (0) every node asks about every key it uses
for my $n (@nodes)
{
	$n->poll_query_until('postgres', q{SELECT count(*) = 6 AND bool_and(polled_here) AND NOT bool_or(relayed)
		FROM byok_cmk_status() WHERE state = 'enabled'})
	  or diag($n->safe_psql('postgres', 'SELECT * FROM byok_cmk_status()'));
	is($n->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE polled_here) FROM byok_cmk_status()}), '6',
		$n->name . ': byok.cluster_pollers = 0: this node asks about all six keys itself');
}

sub set_pollers
{
	my ($n, $v) = @_;
	$n->safe_psql('postgres', "ALTER SYSTEM SET byok.cluster_pollers = $v");
	$n->safe_psql('postgres', 'SELECT pg_reload_conf()');
}
set_pollers($_, 1) for @nodes;

# who asks about what, once every node relies on reports for the keys it
# does not ask about
my $settled = q{SELECT count(*) = 6 AND bool_and(polled_here <> relayed AND (polled_here OR reported_at IS NOT NULL))
	FROM byok_cmk_status()};
for my $n (@nodes)
{
	ok($n->poll_query_until('postgres', $settled), $n->name . ': settled: each key asked about here or reported by another node')
	  or diag($n->safe_psql('postgres', 'SELECT * FROM byok_cmk_status()'));
}
my %asker;
for my $n (@nodes)
{
	for my $row (split /\n/, $n->safe_psql('postgres', q{SELECT key_ref FROM byok_cmk_status() WHERE polled_here}))
	{
		push @{ $asker{$row} }, $n;
	}
}
is(join(',', map { scalar(@{ $asker{$_} // [] }) } @tenants), '1,1,1,1,1,1',
	'byok.cluster_pollers = 1: each of the six keys is asked about by exactly one node');
my %share;
$share{ $asker{$_}[0]->name }++ for grep { $asker{$_} } @tenants;
ok(keys(%share) >= 2, 'the keys are spread over the nodes (' . join(', ', map { "$_: $share{$_}" } sort keys %share) . ')');

# a tenant whose key a worker asks about, and one worker that does not ask
my ($x) = grep { $asker{$_} && $asker{$_}[0] != $coord } @tenants;
$x //= $tenants[0];
my $asks = $asker{$x}[0];
my @others = grep { $_ != $asks } @nodes;
diag("tenant $x: asked about by " . $asks->name);
for my $n (@others)
{
	my $by = $n->safe_psql('postgres', "SELECT reported_by FROM byok_cmk_status() WHERE key_ref = '$x'");
	is($by, $asks->safe_psql('postgres', 'SELECT groupid FROM pg_dist_local_group'),
		$n->name . ": $x is reported to it by the node that asks");
}

# a node that does not ask never sees its own provider disable the key
disable_key($others[0], $x);
usleep(2_000_000);
is($others[0]->safe_psql('postgres', "SELECT state FROM byok_stats() WHERE tenant = '$x'"), 'active',
	$others[0]->name . ": $x's key disabled on its own provider only: not asked there, still active 2 s later");
is($others[0]->safe_psql('postgres', "SELECT count(byok_decrypt(c)) FROM here WHERE tenant = '$x'"), '20',
	'... and it still reads');
enable_key($others[0], $x);

# ten drills: the key disabled where it is asked about locks every node out
my (%per, @drill_max);
for my $drill (1 .. 10)
{
	my $d = lockout_drill(nodes => \@nodes, sessions => 1,
		perform => qq{byok_decrypt(c) FROM here WHERE tenant = '$x' ORDER BY i LIMIT 1 OFFSET n % 20},
		action => sub { disable_key($asks, $x) });
	my $m = lockout_ok($d, 'YK003', 200 * 2 + 200, "drill $drill: $x's key disabled on the asking node's provider");
	push @drill_max, $m;
	push @{ $per{ $_->{node} } }, $_->{refused_ms} for grep { defined $_->{refused_ms} } @{ $d->{sessions} };
	enable_key($asks, $x);
	for my $n (@nodes)
	{
		$n->poll_query_until('postgres', "SELECT state = 'active' FROM byok_stats() WHERE tenant = '$x'")
		  or BAIL_OUT($n->name . " never let $x back in");
	}
	# a session never refused has failed this drill: the others would only wait 15 s each
	last unless defined $m;
}
for my $n (@nodes)
{
	my @v = sort { $a <=> $b } @{ $per{ $n->name } // [] };
	diag(sprintf('%s (%s): every session refused: median %.1f ms, max %.1f ms over %d drills',
		$n->name, $n == $asks ? 'asks' : 'reported to', median(@v) // -1, $v[-1] // -1, scalar(@v)));
}
my @sorted = sort { $a <=> $b } grep { defined } @drill_max;
ok(@sorted == 10 && median(@sorted) <= 400,
	sprintf('the slowest node of each drill: median %.0f ms (bound 400 ms: one poll and one report)', median(@sorted) // -1));
diag(lockout_summary('cluster_pollers = 1, key disabled at the asking node', @drill_max));

# a report from a node whose clock runs a day ahead (written here as the
# owner) must not make every later answer look older: it counts as asked
# now, so the asking node's next answer (the key disabled) still applies
cq(qq{INSERT INTO byok.cmk_reports VALUES ('local', '$x', 99, 'enabled', now() + interval '1 day', now())});
usleep(100_000);
disable_key($asks, $x);
my $t_skew = time();
my @late;
for my $n (@others)
{
	$n->poll_query_until('postgres', "SELECT state = 'cmk_disabled' FROM byok_stats() WHERE tenant = '$x'");
	push @late, (time() - $t_skew) * 1000;
}
ok($late[-1] <= 1500, sprintf('after a report from a day ahead, the key disabled still locks every node out within 1.5 s (%.0f ms)', $late[-1]));
enable_key($asks, $x);
cq(q{DELETE FROM byok.cmk_reports WHERE node_group = 99});
for my $n (@nodes)
{
	$n->poll_query_until('postgres', "SELECT state = 'active' FROM byok_stats() WHERE tenant = '$x'")
	  or BAIL_OUT($n->name . " never let $x back in");
}

# the asking node stops reporting (cluster_pollers = 0 there): the others
# ask about the key themselves once its last report is three report
# intervals (5 polls each) and a poll old
set_pollers($asks, 0);
usleep(300_000);
disable_key($others[0], $x);
my $t0 = time();
ok($others[0]->poll_query_until('postgres', "SELECT state = 'cmk_disabled' FROM byok_stats() WHERE tenant = '$x'"),
	$others[0]->name . ": with the asking node silent, it asks about $x itself and sees the key disabled");
my $fallback_ms = (time() - $t0) * 1000;
ok($fallback_ms <= 3 * 1000 + 2 * 200 + 1500,
	sprintf('... within the fallback bound (%.0f ms; 3 report intervals + a poll = 3.2 s, + slack)', $fallback_ms));
is($others[1]->safe_psql('postgres', "SELECT state FROM byok_stats() WHERE tenant = '$x'"), 'active',
	$others[1]->name . ': whose provider still has the key: active');
enable_key($others[0], $x);
set_pollers($asks, 1);
ok($others[0]->poll_query_until('postgres', "SELECT state = 'active' FROM byok_stats() WHERE tenant = '$x'"),
	$others[0]->name . ': back in once its provider has the key again');
ok($others[0]->poll_query_until('postgres', "SELECT relayed AND NOT polled_here FROM byok_cmk_status() WHERE key_ref = '$x'"),
	'... and it takes reports again once the asking node reports');

# no role but the extension's owner writes the reports
cq(q{CREATE ROLE mallory LOGIN; CREATE ROLE auditor LOGIN; GRANT byok_auditor TO auditor;});
cq(q{CREATE ROLE boss LOGIN; GRANT byok_admin TO boss});
for my $n ($coord, $workers[0])
{
	for my $role ('mallory', 'boss', 'auditor')
	{
		my ($state) = sql_error($n, qq{SET ROLE $role; UPDATE byok.cmk_reports SET state = 'enabled'});
		is($state, '42501', $n->name . ": $role cannot rewrite a report (42501)");
		($state) = sql_error($n, qq{SET ROLE $role; INSERT INTO byok.cmk_reports VALUES ('local', '$x', 99, 'enabled', now() + interval '1 day')});
		is($state, '42501', $n->name . ": $role cannot forge a report (42501)");
	}
}
my $shard = $workers[0]->safe_psql('postgres', q{SELECT 'byok.' || relname FROM pg_class
	WHERE relname LIKE 'cmk\_reports\_%' AND relnamespace = 'byok'::regnamespace});
my ($state) = sql_error($workers[0], qq{SET ROLE mallory; INSERT INTO $shard VALUES ('local', '$x', 99, 'enabled', now())});
is($state, '42501', "worker1: mallory cannot write its copy $shard either (42501)");
is($coord->safe_psql('postgres', q{SET ROLE auditor; SELECT count(*) > 0 FROM byok.cmk_reports}), 't',
	'byok_auditor reads the reports');
($state) = sql_error($coord, q{SET ROLE mallory; CREATE TABLE mine (x int);
	CREATE TRIGGER f AFTER INSERT ON mine FOR EACH ROW EXECUTE FUNCTION byok.cmk_reported()});
is($state, '42501', 'the report trigger cannot be attached by another role (42501)');
($state) = sql_error($coord, q{CREATE TABLE mine2 (provider text, key_ref text, node_group int, state text, asked_at timestamptz);
	CREATE TRIGGER f AFTER INSERT ON mine2 FOR EACH ROW EXECUTE FUNCTION byok.cmk_reported();
	INSERT INTO mine2 VALUES ('local', 'x', 1, 'disabled', now())});
is($state, '39P01', 'attached by a superuser to another table, it refuses to fire (39P01)');
($state) = sql_error($coord, q{CREATE TABLE byok.not_reports (provider text, key_ref text, node_group int, state text, asked_at timestamptz);
	CREATE TRIGGER f AFTER INSERT ON byok.not_reports FOR EACH ROW EXECUTE FUNCTION byok.cmk_reported();
	INSERT INTO byok.not_reports VALUES ('local', 'x', 1, 'disabled', now())});
is($state, '39P01', '... even to another table in schema byok (39P01)');
cq(q{DROP TABLE IF EXISTS byok.not_reports});

$_->stop for @nodes;
done_testing();
