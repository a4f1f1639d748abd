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
use Time::HiRes qw(time);
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
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT byok_create_tenant('nokey', 'pkcs11', 'no-such-key')});
like($err, qr/YK004|destroyed or missing/, 'onboarding refuses a key that is not on the token');

# disabled on the token: locked out within the poll bound
my $t0 = time();
p11('disable', 'hsm-cmk');
ok(wait_state($node, 'hsm', 'cmk_disabled'), 'disabling the key on the token locks the tenant out');
my $took = time() - $t0;
cmp_ok($took, '<', 0.2 + 0.5 + 0.3, sprintf('within the poll bound (%.0f ms)', $took * 1000));
($ret, $out, $err) = $node->psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'hsm'});
like($err, qr/customer master key of tenant "hsm" is disabled/, 'reads are refused');
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
($ret, $out, $err) = $node->psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
like($err, qr/YK007|refused access/, 'a wrong PIN is a permission error');
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
($ret, $out, $err) = $node->psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
like($err, qr/YK005|unavailable|YK004|destroyed/, 'the token went away: the unwrap fails');
isnt(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'other'}), 'cmk_destroyed', 'and the tenant is not marked destroyed');
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
($ret, $out, $err) = $node->psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
$took = time() - $t0;
like($err, qr/key provider is unavailable.*did not answer within byok.kms_timeout/s, 'a hung module: YK005 naming the timeout');
cmp_ok($took, '<', 1.0 + 0.5, sprintf('after byok.kms_timeout (%.0f ms)', $took * 1000));
sleep 1.1;	# past the 1 s negative cache
$t0 = time();
($ret, $out, $err) = $node->psql('postgres', q{SET statement_timeout = '300ms'; SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'});
$took = time() - $t0;
like($err, qr/canceling statement due to statement timeout/, 'statement_timeout cancels a hung PKCS#11 call');
cmp_ok($took, '<', 0.3 + 0.4, sprintf('promptly (%.0f ms)', $took * 1000));
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
isnt(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'other'}), 'cmk_destroyed', 'and a hung module is not a destroyed key');
unlink("$dir/stall");
ok($node->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM t WHERE tenant = 'other'}),
	'the module answers again: the tenant reads again');
ok($node->poll_query_until('postgres', q{SELECT state = 'active' AND kms_status = 'ok' FROM byok_stats() WHERE tenant = 'other'}),
	'and the poller sees the key again');
$bg->query_safe(q{SELECT byok_cache_flush('other')});
is($bg->query_safe(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'other'}), '20',
	'the process whose call was stuck uses the module again');
$bg->quit;
set_module('/usr/lib/softhsm/libsofthsm2.so');

# destroyed: final
p11('destroy', 'hsm-cmk');
ok(wait_state($node, 'hsm', 'cmk_destroyed'), 'a destroyed key locks the tenant out for good');
($ret, $out, $err) = $node->psql('postgres', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'hsm'});
like($err, qr/destroyed/, 'nothing of it decrypts');

$node->stop;
done_testing();
