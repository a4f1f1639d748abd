# byok on a Citus cluster (Citus 13.2, built from the vendored source by
# test/check.sh): a coordinator and two workers (preloaded in both orders).
# byok_citus_setup() makes the catalog reference tables; then pushed-down
# decrypt, encrypt and byok_ciphertext_info work on the workers, ids are the
# coordinator's, a worker refuses catalog writes, every worker holds the same
# catalog, and an administrator's revocation, reinstatement and destruction
# on the coordinator reach sessions on every worker that already hold keys.
use strict;
use warnings;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $libdir = PostgreSQL::Test::Cluster->new('probe')->config_data('--pkglibdir');
ok(-f "$libdir/citus.so", 'Citus is installed (test/check.sh builds it from the vendored source)')
  or BAIL_OUT('no citus.so: run test/check.sh, which builds Citus');

my $keyring = PostgreSQL::Test::Utils::tempdir() . '/keyring';
make_path($keyring);
chmod 0700, $keyring;

my $coord = citus_node('coordinator', 'citus,byok', $keyring);
my @workers = (citus_node('worker1', 'citus,byok', $keyring), citus_node('worker2', 'byok,citus', $keyring));
sub cq { return $coord->safe_psql('postgres', $_[0]); }
cq(sprintf(q{SELECT citus_set_coordinator_host('127.0.0.1', %d)}, $coord->port));
cq(sprintf(q{SELECT citus_add_node('127.0.0.1', %d)}, $_->port)) for @workers;
cq('CREATE EXTENSION byok');
my $distributed = q{SELECT string_agg(logicalrelid::text, ',' ORDER BY logicalrelid::text) FROM pg_dist_partition
  WHERE logicalrelid::text LIKE 'byok.%' AND partmethod = 'n' AND repmodel = 't'};
for my $n ($coord, @workers)
{
	is($n->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'byok'}), '1.1',
		$n->name . ': CREATE EXTENSION byok on the coordinator reached it');
	is($n->safe_psql('postgres', $distributed),
		'byok.cmk_reports,byok.data_keys,byok.protected_columns,byok.scopes,byok.tenant_keys,byok.tenants',
		$n->name . ': and made the catalog Citus reference tables');
}

create_tenant($coord, 'acme', 'acme');
create_tenant($coord, 'globex', 'globex');
my ($state, $err) = sql_error($workers[0], 'SELECT byok_citus_setup()');
is($state, 'YK015', 'byok_citus_setup on a worker is refused (YK015)');
cq('SELECT byok_citus_setup()');    # idempotent
create_tenant($coord, 'initech', 'initech');

my $rows = cq(q{SELECT string_agg(tenant_id || ':' || name || ':' || state, ',' ORDER BY tenant_id) FROM byok.tenants});
is($rows, '1:acme:active,2:globex:active,3:initech:active', 'the coordinator numbers the tenants');
my $catalog = q{SELECT md5(string_agg(d.dek_id || ':' || d.tenant_id || ':' || d.scope || ':' || encode(d.wrapped_key, 'hex'), ',' ORDER BY d.dek_id))
  || md5((SELECT string_agg(tk.tenant_id || ':' || encode(tk.wrapped_key, 'hex'), ',' ORDER BY tk.tenant_id) FROM byok.tenant_keys tk))
  FROM byok.data_keys d};
my $want = cq($catalog);
is($_->safe_psql('postgres', $catalog), $want, $_->name . ': the same tenants, tenant keys and data keys as the coordinator')
  for @workers;

cq(q{CREATE TABLE t (i int PRIMARY KEY, tenant text, c bytea)});
cq(q{SELECT create_distributed_table('t', 'i')});
cq(q{INSERT INTO t SELECT g, (ARRAY['acme','globex','initech'])[1 + g % 3],
       byok_encrypt((ARRAY['acme','globex','initech'])[1 + g % 3], 'v' || g) FROM generate_series(1, 60) g});
my $plan = cq(q{SET citus.explain_all_tasks = on; EXPLAIN (VERBOSE, COSTS OFF) SELECT byok_decrypt_text(c) FROM t});
ok($plan =~ /port=@{[ $workers[0]->port ]}/ && $plan =~ /port=@{[ $workers[1]->port ]}/
	  && $plan =~ /byok_decrypt_text/, 'the decrypt is pushed down to both workers');
is(cq(q{SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) FROM t}), '60',
	'pushed-down byok_decrypt_text on the workers: every value');
is(cq(q{SELECT count(*) FILTER (WHERE (byok_ciphertext_info(c)).tenant = tenant) FROM t}), '60',
	'pushed-down byok_ciphertext_info on the workers names each value\'s tenant');
# the coordinator-only pattern: a MATERIALIZED CTE brings the ciphertext to
# the coordinator, which decrypts it (README: keys off the workers)
my $cte = q{WITH m AS MATERIALIZED (SELECT i, c FROM t WHERE tenant = 'initech') SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) FROM m};
$plan = cq("SET citus.explain_all_tasks = on; EXPLAIN (VERBOSE, COSTS OFF) $cte");
my ($decrypt_task) = $plan =~ /Query: [^\n]*byok_decrypt_text[^\n]*\n\s*Node: host=\S+ port=(\d+)/;
is($decrypt_task, $coord->port, 'through a MATERIALIZED CTE the decrypt runs on the coordinator')
  or diag($plan);
is(cq($cte), '20', '... and reads every value');
cq(q{CREATE TABLE t2 (i int PRIMARY KEY, tenant text, c bytea)});
cq(q{SELECT create_distributed_table('t2', 'i', colocate_with => 't')});
cq(q{INSERT INTO t2 SELECT i, tenant, byok_encrypt(tenant, 'w' || i) FROM t});
is(cq(q{SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'w' || i) FROM t2}), '60',
	'byok_encrypt in INSERT ... SELECT, evaluated on the workers: every value reads back');
is($_->safe_psql('postgres', $catalog), $want, $_->name . ': encrypting on the workers wrote no catalog row')
  for @workers;

($state, $err) = sql_error($workers[0], q{SELECT byok_revoke_tenant('acme')});
is($state, 'YK015', 'an administrative change on a worker is refused (YK015)');
like($err, qr/written on the Citus coordinator only/, '... saying where to run it');
like($err, qr/writes byok\.tenants, a reference table, on a worker/,
	'... refused by byok before it writes anything (not only by the trigger on the worker\'s copy)');

# byok's plpgsql administration and hand-written statements on a worker's
# catalog are refused too (their ids would come from the worker's sequences)
($state, $err) = sql_error($workers[1], q{SELECT byok_declare_scope('pii')});
is($state, 'YK015', 'byok_declare_scope on a worker is refused (YK015)');
($state, $err) = sql_error($workers[1], q{DELETE FROM byok.scopes});
is($state, 'YK015', 'a hand-written write of a replicated catalog table on a worker is refused (YK015)');
cq(q{SELECT byok_declare_scope('pii')});
is($_->safe_psql('postgres', q{SELECT count(*) FROM byok.scopes WHERE scope = 'pii'}), '1',
	$_->name . ': a scope declared on the coordinator is declared here') for @workers;

# every worker keeps a local table of acme's values, read by sessions that
# hold acme's keys across the revocation
for my $w (@workers)
{
	$w->safe_psql('postgres', q{CREATE TABLE acme_local AS SELECT i, c FROM t WHERE tenant = 'acme'});
}

# Ten lockout drills on both workers (2 sessions each holding acme's keys):
# 'lock' locks acme out, 'unlock' lets it back in, 'back' is the query that
# says a worker reads again; the per-worker figures go to the log.
sub worker_drills
{
	my (%o) = @_;
	my (%max, @back_ms);
	for my $drill (1 .. 10)
	{
		my $d = lockout_drill(nodes => \@workers, sessions => 2,
			perform => q{byok_decrypt(c) FROM acme_local WHERE i = 3 * (1 + n % 20)}, action => $o{lock});
		my $m = lockout_ok($d, $o{state}, 200 + 100, "drill $drill: $o{what}");
		for my $s (@{ $d->{sessions} })
		{
			push @{ $max{ $s->{node} } }, $s->{refused_ms} if defined $s->{refused_ms};
		}
		my $t0 = time();
		$o{unlock}->();
		my $back = 1;
		$back &&= $o{back}->($_) for @workers;
		push @back_ms, (time() - $t0) * 1000;
		ok($back, "drill $drill: $o{what}, then let in again: both workers read acme");
		last unless defined $m && $m <= 300 && $back;
	}
	for my $w (map { $_->name } @workers)
	{
		my @v = sort { $a <=> $b } @{ $max{$w} // [] };
		diag(sprintf('%s: %s -> every session refused: median %.1f ms, max %.1f ms over %d sessions',
			$w, $o{what}, median(@v) // -1, $v[-1] // -1, scalar(@v)));
	}
	my @r = sort { $a <=> $b } @back_ms;
	diag(sprintf('%s, let in again -> both workers read: median %.0f ms, max %.0f ms over %d drills',
		$o{what}, median(@r) // -1, $r[-1] // -1, scalar(@r)));
}

# worker2 in read-only transactions: letting the tenant back in takes no lock
worker_drills(what => 'revoke on the coordinator', state => 'YK002',
	lock => sub { cq(q{SELECT byok_revoke_tenant('acme')}) },
	unlock => sub { cq(q{SELECT byok_reinstate_tenant('acme')}) },
	back => sub {
		my ($w) = @_;
		my $ro = $w == $workers[1];
		return $w->poll_query_until('postgres',
			($ro ? 'SET default_transaction_read_only = on; ' : '') . q{SELECT count(byok_decrypt(c)) = 20 FROM acme_local},
			$ro ? "SET\nt" : 't');
	});

# a worker session that let acme back in and stays in its transaction does
# not hold up the coordinator's next revocation
my $idle = $workers[0]->background_psql('postgres', on_error_stop => 0);
$idle->query_safe(q{BEGIN});
is($idle->query_safe(q{SELECT count(byok_decrypt(c)) FROM acme_local}), '20', 'a worker session reads acme and stays in its transaction');
my $t_rev = time();
($state, $err) = sql_error($coord, q{SET statement_timeout = '5s'; SELECT byok_revoke_tenant('acme')});
is($state, '', 'the coordinator revokes acme meanwhile, not held up by that session') or diag($err);
diag(sprintf('revoke with an idle worker transaction open: %.0f ms', (time() - $t_rev) * 1000));
$idle->query(q{SELECT count(byok_decrypt(c)) FROM acme_local});
like($idle->{stderr}, qr/revoked/, '... and that session is refused at its next decrypt');
$idle->quit;
cq(q{SELECT byok_reinstate_tenant('acme')});
ok($_->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM acme_local}), $_->name . ': acme reinstated')
  for @workers;

# a REPEATABLE READ transaction on a worker that began before a revocation
# still sees acme active in its snapshot: it must not let acme back in
my $rr = $workers[0]->background_psql('postgres', on_error_stop => 0);
$rr->query_safe(q{BEGIN ISOLATION LEVEL REPEATABLE READ});
$rr->query_safe(q{SELECT count(*) FROM pg_class});
cq(q{SELECT byok_revoke_tenant('acme')});
$rr->query(q{SELECT count(byok_decrypt(c)) FROM acme_local});
like($rr->{stderr}, qr/revoked/, 'a REPEATABLE READ transaction older than the revocation is refused');
$rr->quit;
($state) = sql_error($workers[0], q{SELECT count(byok_decrypt(c)) FROM acme_local});
is($state, 'YK002', '... and did not let acme back in on its worker');
cq(q{SELECT byok_reinstate_tenant('acme')});
ok($workers[0]->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM acme_local}), 'acme reinstated');

# the two-phase commit's window: a revocation prepared on a worker but not
# committed yet locks acme out there, and nothing lets it back in until
# the transaction ends (here it is rolled back)
my $w0 = $workers[0];
my $copy = $w0->safe_psql('postgres',
	q{SELECT 'byok.tenants_' || shardid FROM pg_dist_shard WHERE logicalrelid = 'byok.tenants'::regclass});
$w0->safe_psql('postgres', qq{SET application_name = 'citus_internal gpid=1';
BEGIN;
UPDATE $copy SET state = 'revoked' WHERE name = 'acme';
PREPARE TRANSACTION 'byok_window';});
($state) = sql_error($w0, q{SELECT count(byok_decrypt(c)) FROM acme_local});
is($state, 'YK002', 'a revocation prepared on the worker locks acme out there at PREPARE');
($state) = sql_error($w0, q{SELECT count(byok_decrypt(c)) FROM acme_local});
is($state, 'YK002', '... and no session lets it back in while the revocation is in flight');
$w0->safe_psql('postgres', q{ROLLBACK PREPARED 'byok_window'});
ok($w0->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM acme_local}),
	'the prepared revocation rolled back: acme reads again');

# a session that turned Citus's local execution off still changes tenants
# (byok's writes run in its own backend, where its reads see them)
($state, $err) = sql_error($coord, q{SET citus.enable_local_execution = off; SET statement_timeout = '10s';
  SELECT byok_revoke_tenant('acme'); SELECT byok_reinstate_tenant('acme');});
is($state, '', 'revoke and reinstate with citus.enable_local_execution off') or diag($err);

# the cluster seen from the coordinator: one row per node
my $status = q{SELECT string_agg(node_role || ':' || reachable || ':' || byok_loaded || ':' || poller_alive
                                 || ':' || (tenants_locked_out > 0), ',' ORDER BY node) FROM byok_cluster_status()};
cq(q{SELECT byok_revoke_tenant('acme')});
$_->poll_query_until('postgres', q{SELECT count(*) = 1 FROM byok_stats() WHERE tenant = 'acme' AND state = 'revoked'})
  for @workers;
is(cq($status), 'worker:true:true:true:true,worker:true:true:true:true,coordinator:true:true:true:true',
	'byok_cluster_status: the coordinator and both workers, byok loaded, pollers alive, acme locked out on each');
cq(q{SELECT byok_reinstate_tenant('acme')});
is(cq(q{SELECT count(*) FILTER (WHERE ok) || '/' || count(*) || ':' || count(DISTINCT node) FROM byok_validate_tenant('initech', true)}),
	'15/15:3', 'byok_validate_tenant(all_nodes): every check passes on every node (3 nodes)');
is(cq(q{SELECT count(*) FILTER (WHERE ok) || ':' || count(*) FILTER (WHERE slowest) || ':' || count(*) FROM byok_revocation_drill('initech', true)}),
	'3:1:3', 'byok_revocation_drill(all_nodes): drilled on every node, one of them the slowest');

($state) = sql_error($coord, q{SELECT * FROM byok.on_workers('pg_terminate_backend', '1')});
is($state, '22023', 'byok.on_workers runs byok\'s node-level functions only');

# a revocation in a transaction that rolls back changes nothing on a worker
cq(q{BEGIN; SELECT byok_revoke_tenant('acme'); ROLLBACK;});
is($workers[0]->safe_psql('postgres', q{SELECT count(byok_decrypt(c)) FROM acme_local}), '20',
	'a revocation rolled back on the coordinator leaves the workers reading');

# destruction: on every worker, at once, and for good
cq(q{SELECT byok_destroy_tenant('globex')});
($state, $err) = sql_error($coord, q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'globex'});
is($state, 'YK004', 'a destroyed tenant cannot be read on any worker');
is(cq(q{SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) FROM t WHERE tenant <> 'globex'}), '40',
	'the other tenants still read on the workers');

# the customer's own CMK disabled at the provider (the local keyring every
# node shares): each node's own poller locks the tenant out
worker_drills(what => 'CMK disabled at the provider', state => 'YK003',
	lock => sub { disable_key($coord, 'acme') },
	unlock => sub { enable_key($coord, 'acme') },
	back => sub { $_[0]->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM acme_local}) });

# a cache flush and a tenant-key rotation on the coordinator wipe the
# workers' cached keys of the tenant
sub on_workers { my ($sql) = @_; return join(',', map { $_->safe_psql('postgres', $sql) } @workers); }
my $initech = q{SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) FROM t WHERE tenant = 'initech'};
my $cached = q{SELECT coalesce(max(cached_keys), 0) > 0 FROM byok_stats() WHERE tenant = 'initech'};
is(cq($initech), '20', 'initech reads (its keys cached on the workers)');
is(on_workers($cached), 't,t', 'initech\'s keys are cached on both workers');
cq(q{SELECT byok_cache_flush('initech')});
is(on_workers($cached), 'f,f', 'byok_cache_flush(\'initech\') on the coordinator wipes them on both workers');
is(cq($initech), '20', 'initech reads again');
is(on_workers($cached), 't,t', 'and its keys are cached again');
cq(q{SELECT byok_rotate_tenant_key('initech')});
is(on_workers($cached), 'f,f', 'a tenant-key rotation on the coordinator wipes them on both workers');
is(cq($initech), '20', 'initech reads under its new tenant key');

# acme moved to another CMK: the workers watch the new one
new_key($coord, 'acme2');
my $acme_cached = q{SELECT coalesce(max(cached_keys), 0) > 0 FROM byok_stats() WHERE tenant = 'acme'};
is(on_workers(q{SELECT count(byok_decrypt(c)) FROM acme_local}), '20,20', 'acme reads on both workers');
is(on_workers($acme_cached), 't,t', 'acme\'s keys are cached on both workers');
cq(q{SELECT byok_rewrap_tenant('acme', 'local', 'acme2')});
is(on_workers($acme_cached), 'f,f', 'a rewrap on the coordinator wipes acme\'s keys on both workers');
my $dr = lockout_drill(nodes => \@workers, sessions => 2,
	perform => q{byok_decrypt(c) FROM acme_local WHERE i = 3 * (1 + n % 20)},
	action => sub { disable_key($coord, 'acme2') });
lockout_ok($dr, 'YK003', 200 + 100, 'acme rewrapped under a new CMK on the coordinator, the new CMK disabled');
enable_key($coord, 'acme2');
ok($_->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM acme_local}),
	$_->name . ': the new CMK enabled again, acme reads') for @workers;

# DDL on distributed tables goes on while byok protects a column (here of a
# table local to the coordinator): byok's event triggers read the registry
# from each node's own copy, also on the shards' DDL on the workers
cq(q{CREATE TABLE loc (id int PRIMARY KEY, tenant text, secret text)});
cq(q{INSERT INTO loc SELECT g, 'initech', 's' || g FROM generate_series(1, 5) g});
cq(q{SELECT byok_protect_column('loc', 'secret', 'tenant')});
is(cq(q{SELECT string_agg(secret, ',' ORDER BY id) FROM loc_decrypted}), 's1,s2,s3,s4,s5',
	'byok_protect_column on a table of the coordinator: the view decrypts');
cq(q{CREATE TABLE ddl_probe (id int PRIMARY KEY, v text)});
cq(q{SELECT create_distributed_table('ddl_probe', 'id')});
for my $ddl ('ALTER TABLE ddl_probe RENAME TO ddl_probe2', 'ALTER TABLE ddl_probe2 ADD COLUMN w int',
	'ALTER TABLE ddl_probe2 DROP COLUMN w', 'DROP TABLE ddl_probe2')
{
	($state, $err) = sql_error($coord, $ddl);
	is($state, '', "on a distributed table while a column is protected: $ddl") or diag($err);
}
($state) = sql_error($coord, 'ALTER TABLE loc RENAME TO loc2');
is($state, '0A000', 'and the protected table still cannot be renamed');

# byok.dek_max_encryptions bounds the values sealed under one data key by
# every node together: the nodes reserve from the coordinator's count, and
# a worker that finds a key exhausted has the coordinator rotate it
for my $n ($coord, @workers)
{
	$n->safe_psql('postgres', q{ALTER SYSTEM SET byok.dek_max_encryptions = 100});
	$n->safe_psql('postgres', q{SELECT pg_reload_conf()});
}
$_->poll_query_until('postgres', q{SELECT current_setting('byok.dek_max_encryptions') = '100'}) for ($coord, @workers);
cq(q{SELECT byok_encrypt('initech', 'first', 'pii')});    # the scope's first data key, made on the coordinator
cq(q{CREATE TABLE t3 (k int PRIMARY KEY, c bytea)});
cq(q{SELECT create_distributed_table('t3', 'k', colocate_with => 't')});
cq(q{INSERT INTO t3 SELECT t.i * 10 + g, byok_encrypt('initech', 'z' || (t.i * 10 + g), 'pii')
       FROM t CROSS JOIN generate_series(1, 5) g});
is(cq(q{SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'z' || k) FROM t3}), '300',
	'300 values sealed on the workers under a limit of 100 per data key all decrypt');
my $per_key = cq(q{SELECT max(n) || ':' || count(*) FROM (SELECT (byok_ciphertext_info(c)).dek_id, count(*) n FROM t3 GROUP BY 1) x});
my ($most, $keys) = split /:/, $per_key;
ok($most <= 100 && $keys >= 3, "no data key sealed more than 100 of them ($most at most, over $keys keys)");
is(cq(q{SELECT bool_and(d.encryptions <= 100) AND sum(d.encryptions) >= 301 FROM byok.data_keys d
        JOIN byok.tenants t ON t.tenant_id = d.tenant_id WHERE t.name = 'initech' AND d.scope = 'pii'}), 't',
	'the coordinator counted every one of them, no key past the limit');
is($_->safe_psql('postgres', $catalog), cq($catalog), $_->name . ': the rotated keys are in its copy of the catalog')
  for @workers;
for my $n ($coord, @workers)
{
	$n->safe_psql('postgres', q{ALTER SYSTEM RESET byok.dek_max_encryptions});
	$n->safe_psql('postgres', q{SELECT pg_reload_conf()});
}

# a node added later: no copy of the catalog until Citus replicates the
# reference tables (a clear error), then a rebalance under load moves shards
# onto it and every value still decrypts
my $w3 = citus_node('worker3', 'byok,citus', $keyring);
cq(sprintf(q{SELECT citus_add_node('127.0.0.1', %d)}, $w3->port));
is($w3->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'byok'}), '1.1',
	'worker3, added later, has byok');
my $sample = cq(q{SELECT c FROM t WHERE tenant = 'acme' AND i = 3});
($state, $err) = sql_error($w3, qq{SELECT byok_decrypt_text('$sample'::bytea)});
is($state, 'YK015', 'worker3 before any reference table reached it: YK015, not a wrong answer');
like($err, qr/replicate_reference_tables/, '... with the command that fixes it');
# the rebalance in one session; reads, each its own transaction, in another
# (logical replication waits for transactions older than its slot)
my $reb = $coord->background_psql('postgres');
$reb->{stdin} .= "SELECT rebalance_table_shards('t');\n\\warn REBALANCED\n";
$reb->{run}->pump_nb;
my $load = $coord->background_psql('postgres', on_error_stop => 0);
my ($good, $bad, $first) = (0, 0, '');
my $deadline = time() + 120;
while (time() < $deadline)
{
	$reb->{run}->pump_nb;
	last if $reb->{stderr} =~ /REBALANCED|ERROR/;
	my ($out, $ret) = $load->query(
		q{SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) FROM t WHERE tenant <> 'globex'});
	if (!$ret && $out eq '40') { $good++; }
	else { $bad++; $first ||= "$out $load->{stderr}"; $load->{stderr} = ''; }
	usleep(20_000);
}
ok($reb->{stderr} =~ /REBALANCED/, 'the rebalance finished') or diag($reb->{stderr});
$reb->quit;
$load->quit;
ok($good > 0 && $bad == 0, "every one of $good reads during the rebalance decrypted all 40 values ($bad did not: $first)");
ok(cq(sprintf(q{SELECT count(*) FROM citus_shards WHERE table_name = 't'::regclass AND nodeport = %d}, $w3->port)) > 0,
	'the rebalance moved shards onto worker3');
is($w3->safe_psql('postgres', qq{SELECT byok_decrypt_text('$sample'::bytea)}), 'v3', 'worker3 decrypts with its own copy of the catalog');
is($w3->safe_psql('postgres', $catalog), cq($catalog), 'worker3 holds the same catalog as the coordinator');
is(cq(q{SELECT count(*) FILTER (WHERE byok_decrypt_text(c) = 'v' || i) FROM t WHERE tenant <> 'globex'}), '40',
	'after the rebalance every value decrypts');

# a worker that does not answer shows as such
$workers[1]->stop;
is(cq(q{SELECT string_agg(node_role || ':' || reachable, ',' ORDER BY node) FROM byok_cluster_status() WHERE node <> 'local'}),
	'worker:true,worker:false,worker:true', 'byok_cluster_status names the worker that does not answer');
$workers[1]->start;

done_testing();
