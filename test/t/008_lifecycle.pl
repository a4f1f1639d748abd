# 008_lifecycle.pl — key lifecycle under load and across providers:
#   - byok_reencrypt interrupted (pg_cancel_backend) and resumed: every value
#     ends under the current version, none lost or doubly encrypted, while
#     another session keeps writing through the view;
#   - a tenant moved from a local CMK to a SoftHSM2 CMK and back with
#     byok_rewrap_tenant: no data touched, the old CMK disabled without loss.
use strict;
use warnings;
use Cwd qw(abs_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $have_hsm = -e '/usr/lib/softhsm/libsofthsm2.so';
my $dir = PostgreSQL::Test::Utils::tempdir();
my @p11ctl;
if ($have_hsm)
{
	my $export = `sh ${\ abs_path('test/kms/softhsm_setup.sh')} $dir byoklife`;
	die "softhsm_setup.sh failed" if $? != 0;
	$export =~ /SOFTHSM2_CONF=(\S+)/ or die;
	$ENV{SOFTHSM2_CONF} = $1;
	@p11ctl = ("$dir/p11ctl", '--module', '/usr/lib/softhsm/libsofthsm2.so', '--token', 'byoklife',
		'--pin-file', "$dir/pin");
	system(@p11ctl, 'keygen', 'life-hsm') == 0 or die;
}
my $node = byok_node('lifecycle', poll_interval => '200ms', conf => [
	"byok.pkcs11_token_label = 'byoklife'", "byok.pkcs11_pin_file = '$dir/pin'" ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }

create_tenant($node, 'acme', 'acme-cmk');
create_tenant($node, 'globex', 'globex-cmk');
sq(q{CREATE TABLE big (id int PRIMARY KEY, tenant text NOT NULL, secret text)});
sq(q{INSERT INTO big SELECT i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END, 'secret ' || i
	FROM generate_series(1, 20000) i});
sq(q{SELECT byok_protect_column('big', 'secret', 'tenant')});
sq(q{SELECT byok_rotate_data_key('acme', 'public.big.secret'), byok_rotate_data_key('globex', 'public.big.secret')});
is(sq(q{SELECT count(*) FROM big WHERE byok_needs_reencrypt(secret)}), '20000', 'every value is under version 1');

# a writer keeps going through the view while the re-encryption runs
my ($wout, $werr) = ('', '');
my $writer = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('postgres'), '-c',
	  q{DO $$ BEGIN FOR k IN 1 .. 400 LOOP
	      UPDATE big_decrypted SET secret = 'written ' || k WHERE id = 1 + (k * 37) % 20000;
	      COMMIT; PERFORM pg_sleep(0.005); END LOOP; END $$} ],
	'>', \$wout, '2>', \$werr);

# the first run is cancelled part-way: a session holds the row with id
# 16000 (one the writer never touches), so the run waits there, part done,
# however fast it goes, and the cancel finds it waiting
my $locker = $node->background_psql('postgres');
$locker->query_safe(q{BEGIN; SELECT id FROM big WHERE id = 16000 FOR UPDATE});
my ($out, $err) = ('', '');
my $run = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr('postgres'), '-c',
	  q{CALL byok_reencrypt('big', 'secret', 500)} ], '>', \$out, '2>', \$err);
$node->poll_query_until('postgres', q{SELECT done >= 3000 FROM byok.reencrypt_progress WHERE "table" = 'public.big'})
  or die 'the re-encryption made no progress';
sq(q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CALL byok_reencrypt%'});
$run->finish;
$locker->query_safe('COMMIT');
$locker->quit;
like($err, qr/canceling statement due to user request/, 'the first run was interrupted');
my $left = sq(q{SELECT count(*) FROM big WHERE byok_needs_reencrypt(secret)});
ok($left > 0 && $left < 20000, "part done, part left ($left values left)");
my ($done, $remaining, $unfinished) = split m{/}, sq(q{SELECT done || '/' || remaining || '/' || (finished IS NULL) FROM byok.reencrypt_progress});
ok($done >= 3000 && $remaining > 0 && $unfinished eq 'true',
	"the progress view shows an unfinished run ($done done, $remaining remaining)");

# the second run resumes and finishes
sq(q{CALL byok_reencrypt('big', 'secret', 2000)});
$writer->finish;
is($werr, '', 'the writer was never blocked out or refused');
is(sq(q{SELECT count(*) FROM big WHERE byok_needs_reencrypt(secret)}), '0', 'resumed: every value is under the current version');
is(sq(q{SELECT v || ':' || count(*) FROM (SELECT (byok_ciphertext_info(secret)).key_version AS v FROM big) x GROUP BY v}), '2:20000',
	'all 20,000 under version 2');
# each row holds exactly what it should: the writer's value for the 400 rows
# it updated (each once: 37 k mod 20000 is distinct for k = 1 .. 400), the
# original for the others; a lost update or a doubly encrypted value fails
is(sq(q{WITH w AS (SELECT 1 + (k * 37) % 20000 AS id, 'written ' || k AS v FROM generate_series(1, 400) k)
	SELECT count(*) FILTER (WHERE b.secret IS NOT DISTINCT FROM coalesce(w.v, 'secret ' || b.id)) || '/' || count(*)
	  || '/' || count(w.id) FROM big_decrypted b LEFT JOIN w USING (id)}), '20000/20000/400',
	'none lost, none encrypted twice: every row holds its last write');
is(sq(q{SELECT finished IS NOT NULL FROM byok.reencrypt_progress}), 't', 'the progress view says finished');
is(sq(q{SELECT byok_retire_data_key('acme', 'public.big.secret', 2) + byok_retire_data_key('globex', 'public.big.secret', 2)}),
	'2', 'version 1 can now be retired');

SKIP:
{
	skip 'SoftHSM2 is not installed', 6 unless $have_hsm;
	my $before = sq(q{SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM big});
	sq(q{SELECT byok_rewrap_tenant('acme', 'pkcs11', 'life-hsm')});
	is(sq(q{SELECT provider || ':' || key_ref FROM byok.tenants WHERE name = 'acme'}), 'pkcs11:life-hsm',
		'acme now lives under the HSM key');
	is(sq(q{SELECT md5(string_agg(secret, ',' ORDER BY id)) FROM big}), $before, 'no stored value changed');
	disable_key($node, 'acme-cmk');
	sq(q{SELECT byok_cache_flush('acme')});
	is(sq(q{SELECT count(*) FROM big_decrypted WHERE tenant = 'acme'}), '10000',
		'the old local CMK disabled: acme still reads, through the HSM');
	usleep(600_000);
	is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'acme'}), 'active', 'and the poller does not lock it out');
	enable_key($node, 'acme-cmk');
	sq(q{SELECT byok_rewrap_tenant('acme', 'local', 'acme-cmk')});
	system(@p11ctl, 'disable', 'life-hsm') == 0 or die;
	sq(q{SELECT byok_cache_flush('acme')});
	is(sq(q{SELECT count(*) FROM big_decrypted WHERE tenant = 'acme'}), '10000',
		'back on the local CMK: the HSM key disabled, acme still reads');
	is(sq(q{SELECT count(*) FROM byok.key_events WHERE event = 'tenant_rewrapped'}), '2', 'both moves are audited');
}

$node->stop;
done_testing();
