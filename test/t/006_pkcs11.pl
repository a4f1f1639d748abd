# 006_pkcs11.pl — the pkcs11 provider against SoftHSM2: a private token made
# by the test as the postgres OS user, a non-extractable AES-256 CMK; round
# trip and onboarding checks; the key disabled on the token -> lockout within
# the poll bound; enabled -> recovery; destroyed -> final; a wrong PIN ->
# permission error.
use strict;
use warnings;
use Cwd qw(abs_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use ByokTest;

plan skip_all => 'SoftHSM2 is not installed' unless -e '/usr/lib/softhsm/libsofthsm2.so';

my $dir = PostgreSQL::Test::Utils::tempdir();
my $setup = abs_path('test/kms/softhsm_setup.sh');
my $export = `sh $setup $dir byoktest`;
die "softhsm_setup.sh failed" if $? != 0;
$export =~ /SOFTHSM2_CONF=(\S+)/ or die "no SOFTHSM2_CONF in: $export";
$ENV{SOFTHSM2_CONF} = $1;
my @p11ctl = ("$dir/p11ctl", '--module', '/usr/lib/softhsm/libsofthsm2.so', '--token', 'byoktest',
	'--pin-file', "$dir/pin");
sub p11 { system(@p11ctl, @_) == 0 or die "p11ctl @_ failed"; }

$ENV{P11SLOW_FLAG} = "$dir/stall";	# p11slow.so stalls while this file exists
$ENV{P11SLOW_BENT} = "$dir/bent";	# and bends attribute answers while this one does
p11('keygen', 'hsm-cmk');
p11('keygen', 'other-cmk');
my $node = byok_node('pkcs11', poll_interval => '200ms', conf => [
	"byok.pkcs11_token_label = 'byoktest'", "byok.pkcs11_pin_file = '$dir/pin'",
	"byok.kms_timeout = '1s'" ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq(q{SELECT byok_create_tenant('hsm', 'pkcs11', 'hsm-cmk')});
sq(q{SELECT byok_create_tenant('other', 'pkcs11', 'other-cmk')});
sq(q{CREATE TABLE t AS SELECT i, n AS tenant, byok_encrypt(n, 'value ' || i) AS c
	FROM generate_series(1, 20) i, (VALUES ('hsm'), ('other')) v(n)});
is(sq(q{SELECT count(*) FROM t WHERE byok_decrypt_text(c) = 'value ' || i}), '40', 'round trip through the HSM');
is(sq(q{SELECT string_agg("check" || '=' || ok, ',') FROM byok_validate_tenant('hsm')}),
	'key_reference=true,key_state=true,wrap=true,unwrap=true,tenant_key=true', 'every onboarding check passes');
diag('pkcs11 onboarding round trip: ' . sq(q{SELECT round(latency_baseline_ms::numeric, 3) FROM byok.tenants WHERE name = 'hsm'}) . ' ms');
my ($state, $err) = sql_error($node, q{SELECT byok_create_tenant('nokey', 'pkcs11', 'no-such-key')});
is($state, 'YK004', 'onboarding refuses a key that is not on the token (YK004)');
like($err, qr/destroyed or missing/, 'saying it is missing');

# disabled on the token: three sessions decrypting in open transactions, all
# refused within poll_interval + 100 ms of p11ctl having disabled the key
# (measured from when p11ctl returned: its own start-up, loading SoftHSM2
# and logging in, is not byok's), plus the provider's own latency: the
# poller's measured round time (last_round_ms, the larger of the rounds
# before and after the drill), which includes its PKCS#11 calls
my $round_before = sq('SELECT ceil(last_round_ms) FROM byok_poller_status()');
my $d = lockout_drill(nodes => [$node], sessions => 3,
	perform => q{byok_decrypt(c) FROM t WHERE tenant = 'hsm' AND i = 1 + n % 20},
	from => 'after', action => sub { p11('disable', 'hsm-cmk') });
my $round_after = sq('SELECT ceil(last_round_ms) FROM byok_poller_status()');
my $allow = $round_before > $round_after ? $round_before : $round_after;
my $lock = lockout_ok($d, 'YK003', 200 + 100 + $allow, "disabling the key on the token (provider allowance $allow ms)");
diag(sprintf('pkcs11: lockout %.0f ms after p11ctl disabled the key (p11ctl took %.0f ms, poll round %d ms)',
	$lock // -1, $d->{action_ms}, $allow));
ok(wait_state($node, 'hsm', 'cmk_disabled'), 'the tenant shows locked out');
($state, $err) = sql_error($node, q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'hsm'});
is($state, 'YK003', 'new reads are refused (YK003)');
like($err, qr/customer master key of tenant "hsm" is disabled/, 'naming the disabled key');
my ($t0, $took);
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'}), '20', 'the other tenant carries on');
p11('enable', 'hsm-cmk');
ok(wait_state($node, 'hsm', 'active'), 'enabled again: the tenant is back');
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'hsm'}), '20', 'every row decrypts');

# a wrong PIN: permission error (a new session must log in)
my $pin = slurp_file("$dir/pin");
open(my $fh, '>', "$dir/pin") or die;
print $fh "99999999\n";
close $fh;
sq(q{SELECT byok_cache_flush('other')});
($state, $err) = sql_error($node, q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
is($state, 'YK007', 'a wrong PIN is a permission error (YK007)');
unlike($err . slurp_file($node->logfile), qr/99999999|\Q$pin\E/, 'no PIN in an error or the server log');
open($fh, '>', "$dir/pin") or die;
print $fh $pin;
close $fh;
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'}), '20', 'the right PIN again');

# the token goes away (its folder is moved): unavailable, never destroyed;
# it comes back: the next unwrap works again
my $tokens = "$dir/tokens";
rename($tokens, "$tokens.away") or die;
sq(q{SELECT byok_cache_flush('other')});
($state, $err) = sql_error($node, q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
is($state, 'YK005', 'the token went away: the provider is unavailable (YK005)');
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'other'}), 'active', 'and the tenant is not marked destroyed: still active (serve_cached)');
rename("$tokens.away", $tokens) or die;
ok($node->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM t WHERE tenant = 'other'}),
	'the token is back: the tenant reads again');

# a module that hangs (p11slow.so in front of SoftHSM2, stalled on demand):
# every call is bounded by byok.kms_timeout and can be cancelled; a process
# does not call the module again until its stuck call returns; the poller
# keeps going; all is well again when the module answers
sub set_module
{
	sq("ALTER SYSTEM SET byok.pkcs11_module = '$_[0]'");
	sq('SELECT pg_reload_conf()');
	sleep 0.3;
}
set_module("$dir/p11slow.so");
sq(q{SELECT byok_cache_flush('other')});
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'}), '20', 'through the forwarding module');
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe(q{SELECT 1});
open($fh, '>', "$dir/stall") or die;
close $fh;
sq(q{SELECT byok_cache_flush('other')});
sleep 1.1;
my $rounds = sq(q{SELECT rounds FROM byok_poller_status()});
$t0 = time();
($state, $err) = sql_error($node, q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
$took = time() - $t0;
is($state, 'YK005', 'a hung module: YK005');
like($err, qr/key provider is unavailable.*did not answer within byok.kms_timeout/s, 'naming the timeout');
cmp_ok($took, '<', 1.0 + 0.5, sprintf('after byok.kms_timeout (%.0f ms)', $took * 1000));
# README: a hung PKCS#11 call stops within 100 ms of statement_timeout or
# pg_cancel_backend: timeout + 110 ms, cancel + 110 ms
cancel_checks($node, 'pkcs11', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'}, 110,
	sub { sleep 1.1 });    # past the 1 s negative cache
sleep 1.1;	# past the 1 s negative cache
$bg->query(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
like($bg->{stderr}, qr/did not answer within byok.kms_timeout/, 'a session\'s call into the hung module times out');
$bg->{stderr} = '';
$t0 = time();
$bg->query(q{SELECT pg_sleep(1.1); SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
$took = time() - $t0;
like($bg->{stderr}, qr/has not returned yet/, 'the same process does not call a module whose call is still stuck');
$bg->{stderr} = '';
cmp_ok($took, '<', 1.1 + 0.3, sprintf('and says so at once (%.0f ms with a 1.1 s sleep)', $took * 1000));
ok($node->poll_query_until('postgres', "SELECT rounds >= $rounds + 3 FROM byok_poller_status()"),
	'the poller keeps polling while the module hangs');
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'other'}), 'active', 'and a hung module is not a destroyed key: still active (serve_cached)');
unlink("$dir/stall");
ok($node->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM t WHERE tenant = 'other'}),
	'the module answers again: the tenant reads again');
ok($node->poll_query_until('postgres', q{SELECT state = 'active' AND kms_status = 'ok' FROM byok_stats() WHERE tenant = 'other'}),
	'and the poller sees the key again');
$bg->query_safe(q{SELECT byok_cache_flush('other')});
is($bg->query_safe(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'}), '20',
	'the process whose call was stuck uses the module again');
$bg->quit;

# a bent module: an object whose label cannot be read (CKR_ATTRIBUTE_SENSITIVE)
# and one whose label length is a lie (1 GiB) are skipped, not the
# poller's scan of the token
p11('keygen', 'bent-sensitive');
p11('keygen', 'bent-long');
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'hsm'}), '20', 'hsm reads (its key is polled)');
open($fh, '>', "$dir/bent") or die;
close $fh;
my $r0 = sq(q{SELECT rounds FROM byok_poller_status()});
ok($node->poll_query_until('postgres', "SELECT rounds >= $r0 + 3 FROM byok_poller_status()"),
	'a bent module: the poller goes on');
is(sq(q{SELECT string_agg(tenant || '=' || kms_status, ',' ORDER BY tenant) FROM byok_stats() WHERE tenant IN ('hsm', 'other')}),
	'hsm=ok,other=ok', 'and its scan of the token still answers for every key');
p11('disable', 'hsm-cmk');
ok(wait_state($node, 'hsm', 'cmk_disabled'), 'a key disabled meanwhile is seen');
p11('enable', 'hsm-cmk');
ok(wait_state($node, 'hsm', 'active'), 'and enabled again');
sq(q{SELECT byok_cache_flush('other')});
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'}), '20', 'a session unwraps through the bent module');
unlink("$dir/bent");
set_module('/usr/lib/softhsm/libsofthsm2.so');

# destroyed: final
p11('destroy', 'hsm-cmk');
ok(wait_destroyed($node, 'hsm'), 'a destroyed key locks the tenant out for good (confirmed by a second poll)');
($state, $err) = sql_error($node, q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'hsm'});
is($state, 'YK004', 'nothing of it decrypts (YK004)');

$node->stop;
done_testing();
