# 022_provider_answers.pl — a key service that bends its answers, against
# the aws-kms and vault-transit providers: deeply nested JSON, huge fields,
# control characters and invalid UTF-8 in error types, a field given twice,
# HTML 404s from a proxy, one JSON "not found" that the next poll
# contradicts, credentials with control characters, and hung calls that are
# cancelled.  Each case asserts the outcome: the right YK code, the other
# tenants of the same provider unaffected, the session still usable, no
# unsanitised byte in an error, byok_stats() or byok_validate_tenant(), and
# (read through /proc/PID/mem) no tenant key or credential left in the
# backend's private memory after calls that succeed, fail or are cancelled.
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;
use ByokKms;
use ByokMore;
use ByokScan;

my $kms = ByokKms->start(PostgreSQL::Test::Utils::tempdir());
my $node = byok_node('bent', poll_interval => '200ms',
	conf => [ $kms->conf, 'byok.kms_timeout = 1500ms' ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }

sub set_conf
{
	my (%c) = @_;
	sq("ALTER SYSTEM SET byok.$_ = '$c{$_}'") for sort keys %c;
	sq('SELECT pg_reload_conf()');
	usleep(300_000);
}

# two tenants per provider, each on its own CMK
my ($k1, $k2) = ($kms->create_aws_key, $kms->create_aws_key);
my ($v1, $v2) = ($kms->create_vault_key('bentv1k'), $kms->create_vault_key('bentv2k'));
sq("SELECT byok_create_tenant('a1', 'aws-kms', '$k1')");
sq("SELECT byok_create_tenant('a2', 'aws-kms', '$k2')");
sq("SELECT byok_create_tenant('t1', 'vault-transit', '$v1')");
sq("SELECT byok_create_tenant('t2', 'vault-transit', '$v2')");
sq(q{CREATE TABLE t AS SELECT g.tenant, i, byok_encrypt(g.tenant, g.tenant || ' value ' || i) AS c
	FROM unnest(ARRAY['a1', 'a2', 't1', 't2']) g(tenant), generate_series(1, 10) i});
sub reads { my ($t) = @_; return sq("SELECT count(*) FROM t WHERE tenant = '$t' AND byok_decrypt_text(c) = '$t value ' || i"); }
is(join(',', map { reads($_) } qw(a1 a2 t1 t2)), '10,10,10,10', 'four tenants on two providers read');

# reads once the negative cache (a failed unwrap is not retried for a second) lets it
sub reads_again
{
	my ($t) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 10 FROM t WHERE tenant = '$t' AND byok_decrypt_text(c) = '$t value ' || i");
}

sub printable { my ($s) = @_; return $s !~ /[^\x20-\x7e\n]/; }

# one cold unwrap of tenant $t with the bent answer $kind on its key $key
sub bent_unwrap
{
	my ($t, $api, $key, $kind, %o) = @_;
	usleep(1_100_000);    # past the negative cache of the previous failure
	$kms->faults(api => $api, key => $key, bend => 1000, bend_kind => $kind);
	sq("SELECT byok_cache_flush('$t')");
	local $ENV{PGCLIENTENCODING} = $o{encoding} if $o{encoding};
	my ($state, $err) = sql_error($node, "SELECT count(byok_decrypt(c)) FROM t WHERE tenant = '$t'");
	$kms->clear_faults;
	return ($state, $err);
}

# --- a backend's unwrap meets each bent answer ------------------------------
my ($st, $err) = bent_unwrap('a1', 'aws', $k1, 'nested');
is($st, 'YK008', 'aws: 200,000 nested [ in a Decrypt answer: bad response (YK008), not 54001 (stack depth)');
like($err, qr/DETAIL:.*JSON nested more than 32 levels deep/, 'and the detail says why');
($st, $err) = bent_unwrap('t1', 'vault', $v1, 'nested');
is($st, 'YK008', 'vault: the same for a decrypt answer (YK008)');
is(reads('a2') . ',' . reads('t2'), '10,10', 'the other tenants of both providers read on');

($st, $err) = bent_unwrap('a1', 'aws', $k1, 'ctl_type', encoding => 'LATIN1');
is($st, 'YK008', 'aws: an error type with control characters and U+00FF, for a LATIN1 client: YK008, no encoding error');
like($err, qr/DETAIL:.*Bad\?Type\?\?/, 'the type reaches the detail as printable ASCII ("Bad?Type??")');
ok(printable($err), 'and nothing else unprintable reaches the client');
($st, $err) = bent_unwrap('a1', 'aws', $k1, 'bad_utf8', encoding => 'LATIN1');
is($st, 'YK005', 'aws: an error that is not UTF-8 is not AWS\'s answer: unavailable (YK005)');
like($err, qr/HTTP_400.*not AWS KMS's JSON error/s, 'naming the HTTP status');
ok(printable($err), 'printable');
($st, $err) = bent_unwrap('a1', 'aws', $k1, 'huge_type');
is($st, 'YK008', 'aws: a 100,000-byte error type: bad response (YK008)') or diag($err);
ok(length($err) < 2000, sprintf('bounded: the error is %d bytes', length($err)));
($st, $err) = bent_unwrap('t1', 'vault', $v1, 'ctl_type', encoding => 'LATIN1');
is($st, 'YK008', 'vault: an error with control characters: YK008');
like($err, qr/line1\?line2\?\?/, 'printable in the detail');
($st, $err) = bent_unwrap('t1', 'vault', $v1, 'html_404');
is($st, 'YK005', 'vault: a proxy\'s HTML 404 is not Vault\'s answer: unavailable (YK005), never destroyed');
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 't1'}), 'active', 'and the tenant stays active');
ok(reads_again('a1') && reads_again('t1'), 'once the answers are straight again, both tenants read');

# --- the poller meets bent answers for one key ------------------------------
# fail_closed with no grace: any failed answer locks its own tenant out; only its own
set_conf(unreachable_policy => 'fail_closed', unreachable_grace => '0');
$kms->faults(api => 'aws', key => $k1, bend => 1000000, bend_kind => 'nested');
ok(wait_state($node, 'a1', 'kms_unreachable'), 'fail_closed: nested answers for one key lock its tenant out');
my %seen;
for (1 .. 10)    # five poll rounds
{
	$seen{ sq(q{SELECT state FROM byok_stats() WHERE tenant = 'a2'}) }++;
	usleep(100_000);
}
is(join(',', sort keys %seen), 'active', 'the other tenant of the same provider stays active through five rounds');
ok(reads_again('a2'), 'and reads');
like(sq(q{SELECT last_poll_result FROM byok_stats() WHERE tenant = 'a1'}), qr/nested more than 32 levels/,
	'byok_stats() says what was wrong with the answer');
$kms->clear_faults;
ok(wait_state($node, 'a1', 'active'), 'straight answers again: the tenant is back');
set_conf(unreachable_policy => 'serve_cached');

# serve_cached: a bent key must not hide a real revocation of another key of the provider
reads($_) for qw(a1 a2);
$kms->faults(api => 'aws', key => $k1, bend => 1000000, bend_kind => 'nested');
$kms->aws_state($k2, 'Disabled');
ok(wait_state($node, 'a2', 'cmk_disabled'), 'serve_cached: a real revocation of a2\'s key is seen despite a1\'s bent answers');
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'a1'}), 'active', 'while a1 is served from its cache');
$kms->aws_state($k2, 'Enabled');
ok(wait_state($node, 'a2', 'active'), 'a2 is back once its key is enabled');
$kms->clear_faults;

# a key state given twice (Disabled, then Enabled): refused, never read as enabled
$kms->aws_state($k2, 'Disabled');
ok(wait_state($node, 'a2', 'cmk_disabled'), 'a2\'s key disabled');
$kms->faults(api => 'aws', key => $k2, bend => 1000000, bend_kind => 'dup_state');
usleep(1_000_000);
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'a2'}), 'cmk_disabled',
	'an answer giving KeyState twice ("Disabled", then "Enabled") does not lift the lockout');
like(sq(q{SELECT last_poll_result FROM byok_stats() WHERE tenant = 'a2'}), qr/field given twice/, 'byok_stats() says why');
$kms->clear_faults;
$kms->aws_state($k2, 'Enabled');
ok(wait_state($node, 'a2', 'active'), 'a2 enabled again');

# --- Vault: destroyed means Vault said so ------------------------------------
reads('t1');
$kms->faults(api => 'vault', key => $v1, bend => 1000000, bend_kind => 'html_404');
my %states;
my $t_end = time() + 3;
while (time() < $t_end)
{
	$states{ sq(q{SELECT state FROM byok_stats() WHERE tenant = 't1'}) }++;
	usleep(50_000);
}
$kms->clear_faults;
is(join(',', sort keys %states), 'active', 'three seconds of HTML 404s from a proxy: t1 never leaves active');
ok(reads_again('t1'), 'and reads afterwards');

# one JSON "not found" in Vault's own envelope: locked out at once, lifted by the next poll
my $ev0 = sq(q{SELECT coalesce(max(event_id), 0) FROM byok.key_events});
$kms->faults(api => 'vault', key => $v1, bend => 1, bend_kind => 'json_404');
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 2 FROM byok.key_events WHERE tenant = 't1' AND event_id > $ev0}),
	'one Vault 404 envelope, then a straight answer: two audit events');
is(sq(qq{SELECT string_agg(event || ': ' || split_part(detail, ';', 1), ' | ' ORDER BY event_id) FROM byok.key_events
	WHERE tenant = 't1' AND event_id > $ev0}),
	'cmk_destroyed: poller: CMK reported destroyed | cmk_enabled: poller: CMK enabled, not destroyed',
	'the lockout on one answer is lifted when the next poll contradicts it');
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 't1'}), 'active', 't1 is active');
ok(reads_again('t1'), 'and reads');

# --- AWS "not found" that is not a destroyed key --------------------------------
# an alias deleted while its key lives on: a lockout that ends when the alias
# names a key again, never a final destruction
my $made = $kms->admin('POST', 'create', { kind => 'aws', count => 1, alias_prefix => 'alias/bentalias' });
my $alias = 'alias/bentalias0';
sq("SELECT byok_create_tenant('al', 'aws-kms', '$alias')");
sq(q{INSERT INTO t SELECT 'al', i, byok_encrypt('al', 'al value ' || i) FROM generate_series(1, 10) i});
is(reads('al'), '10', 'a tenant on an alias reads');
$kms->admin('POST', "aws/aliases/$alias/delete", {});
ok(wait_state($node, 'al', 'cmk_disabled'), 'the alias deleted: locked out as disabled, not destroyed');
usleep(600_000);    # three more poll rounds: never destroyed
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'al'}), 'cmk_disabled', 'and it stays disabled, never destroyed');
# the customer points the alias at the same key again
$kms->admin('POST', 'aws/aliases/' . $alias . '/restore', { key => $made->{ids}[0] });
ok(wait_state($node, 'al', 'active'), 'the alias names the key again: the tenant is back');
ok(reads_again('al'), 'and reads');

# an ARN of another region is a configuration error, never a destroyed key
($st, $err) = sql_error($node, q{SELECT byok_create_tenant('wrongregion', 'aws-kms', 'arn:aws:kms:eu-west-1:111122223333:key/1234abcd')});
is($st, 'YK009', 'an ARN of another region than byok.aws_region: YK009');
like($err, qr/WRONG_REGION.*us-east-1/s, 'naming the region byok uses');

# --- credentials with control characters are refused ------------------------
$kms->write_file($kms->{aws_creds},
	"[default]\naws_access_key_id = $kms->{akid}\naws_secret_access_key = $kms->{secret}\naws_session_token = abc\x07def\n");
sq(q{SELECT byok_cache_flush('a1')});
($st, $err) = sql_error($node, q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'a1'});
is($st, 'YK009', 'a session token with a control character: provider configuration error (YK009)');
like($err, qr/BAD_CREDENTIALS/, 'naming the problem, not the token');
unlike($err, qr/abc/, 'and no part of the token');
$kms->write_creds($kms->{akid}, $kms->{secret});
ok(reads_again('a1'), 'fixed credentials: a1 reads');
is(sq(q{SELECT bool_and(coalesce(detail, '') !~ '[^\x20-\x7e]') FROM byok_validate_tenant('a1')}), 't',
	'byok_validate_tenant() details are printable');

# --- no tenant key or credential left in a backend's private memory ---------
my $dir = PostgreSQL::Test::Utils::tempdir();
my $tk = aws_tenant_key($node, $kms, 'a1', $k1);
is(length($tk), 64, 'the test knows a1\'s tenant key (the customer\'s own decrypt)');
my $ctl = join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32);
my %needles = (tenant_key => $tk, aws_secret => unpack('H*', $kms->{secret}),
	vault_token => unpack('H*', $kms->{token}), control => $ctl);

my $s = async_psql($node);
# the control: a setting's value stays in the backend's own (malloc'd) memory
$s->run("SET byok_test.control = '$ctl'");
sub scan_backend { memscan_check($s->pid, \%needles, $_[0], $dir); }
$s->run(q{SELECT byok_cache_flush('a1'), byok_cache_flush('t1')});
is($s->run(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant IN ('a1', 't1')}), '20', 'a backend unwraps a1 and t1 (AWS, Vault)');
scan_backend('after calls that succeed');

$kms->faults(api => 'aws', key => $k1, bend => 1000, bend_kind => 'nested');
$kms->faults(api => 'vault', key => $v1, bend => 1000, bend_kind => 'ctl_type');
$s->run(q{SELECT byok_cache_flush('a1'), byok_cache_flush('t1')});
$s->run(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'a1'});
like($s->{err}, qr/YK008/, 'a call that fails on a bent answer');
$s->run(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 't1'});
like($s->{err}, qr/YK008/, 'and another');
$kms->clear_faults;
scan_backend('after calls that fail');

# cancelled calls: their headers hold a session token (AWS) and the Vault token
my $session_token = 'tok' . join('', map { sprintf('%02x', int(rand(256))) } 1 .. 40);
$needles{aws_session_token} = unpack('H*', $session_token);
$kms->write_file($kms->{aws_creds}, "[default]\naws_access_key_id = $kms->{akid}\n"
	  . "aws_secret_access_key = $kms->{secret}\naws_session_token = $session_token\n");
for my $c ([ 'aws', 'a1' ], [ 'vault', 't1' ])
{
	my ($api, $t) = @$c;
	$kms->faults(api => $api, hang => JSON::PP::true);
	$s->run(qq{SELECT byok_cache_flush('$t')});
	usleep(1_100_000);    # past the negative cache
	$s->clear;
	$s->send(qq{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = '$t';});
	usleep(300_000);
	sq('SELECT pg_cancel_backend(' . $s->pid . ')');
	ok(defined $s->wait_err(qr/57014/, 10), "$api: a hung call is cancelled (57014)");
	$kms->clear_faults;
}
scan_backend('after cancelled calls');
$kms->write_creds($kms->{akid}, $kms->{secret});
is($s->run('SELECT 42'), '42', 'the session answers afterwards');
$s->quit;

$kms->stop;
$node->stop;
done_testing();
