# 009_kmip.pl — the kmip provider against a real PyKMIP server started here,
# with certificates made here by openssl: onboarding, round trip, the server
# decrypting our wrapped key with our AAD (and refusing another tenant's),
# a pre-active key, Revoke -> lockout within the poll bound (final),
# Destroy -> final, the poller's batched round, a killed server -> YK005
# within byok.kms_timeout and recovery after a restart, a server that never
# answers -> timeout and cancel, another client identity -> permission
# error, a wrong CA and an unknown client CA -> TLS errors with clear
# messages, loose file permissions -> configuration error.
use strict;
use warnings;
use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use ByokTest;
use ByokMore;
use ByokScan;
use ByokKmip;

plan skip_all => 'PyKMIP is not installed' unless -e '/usr/bin/pykmip-server';

my $k = kmip_setup(PostgreSQL::Test::Utils::tempdir());
kmip_start($k);
my $d = $k->{dir};

my $uid_a = kmipctl($k, 'create', 'acme-cmk');
my $uid_b = kmipctl($k, 'create', 'beta-cmk');
my $uid_p = kmipctl($k, 'create', 'later-cmk', '--pre-active');
like($uid_a, qr/^\S+$/, "test server: the KMIP server made a key ($uid_a)");

my $node = byok_node('kmip', poll_interval => '200ms', conf => [
	"byok.kmip_host = '127.0.0.1'", "byok.kmip_port = $k->{port}",
	"byok.kmip_cert_file = '$d/client.crt'", "byok.kmip_key_file = '$d/client.key'",
	"byok.kmip_ca_file = '$d/ca.crt'", "byok.kms_timeout = '1500ms'",
	"log_min_messages = debug5" ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }
# '' if the SQL succeeds, else "SQLSTATE stderr": checks anchor the code
sub fails
{
	my ($state, $err) = sql_error($node, $_[0]);
	return $state eq '' ? '' : "$state $err";
}
# drop beta's cached keys and wait out byok's 1 s negative cache, so the
# next read really calls the KMIP server
sub fresh
{
	sq(q{SELECT byok_cache_flush('beta')});
	sleep 1.1;
}
sub set_conf
{
	my ($guc, $value) = @_;
	sq("ALTER SYSTEM SET $guc = '$value'");
	sq('SELECT pg_reload_conf()');
	sleep 0.3;
}

# onboarding by unique identifier and by name
sq("SELECT byok_create_tenant('acme', 'kmip', '$uid_a')");
sq(q{SELECT byok_create_tenant('beta', 'kmip', 'name:beta-cmk')});
is(sq(q{SELECT string_agg("check" || '=' || ok, ',') FROM byok_validate_tenant('acme')}),
	'key_reference=true,key_state=true,wrap=true,unwrap=true,tenant_key=true', 'every onboarding check passes');
is(sq(q{SELECT string_agg("check" || '=' || ok, ',') FROM byok_validate_tenant('beta')}),
	'key_reference=true,key_state=true,wrap=true,unwrap=true,tenant_key=true', 'a name resolved with Locate works too');
diag('kmip onboarding round trip: ' . sq(q{SELECT round(latency_baseline_ms::numeric, 2) FROM byok.tenants WHERE name = 'acme'}) . ' ms');

like(fails("SELECT byok_create_tenant('early', 'kmip', '$uid_p')"), qr/^YK009 .*Pre-Active.*activate it/s,
	'a pre-active key is refused with a clear onboarding error');
like(fails(q{SELECT byok_create_tenant('ghost', 'kmip', '999999')}), qr/^YK004 .*destroyed or missing/s,
	'an unknown identifier is refused');
like(fails(q{SELECT byok_create_tenant('ghost', 'kmip', 'name:no-such-name')}), qr/^YK009 .*No KMIP object named "no-such-name"/s,
	'an unknown name is refused');
like(fails(q{SELECT byok_create_tenant('ghost', 'kmip', '')}), qr/^YK009 .*key reference must be/s, 'an empty key reference is refused');

sq(q{CREATE TABLE t AS SELECT i, n AS tenant, byok_encrypt(n, 'value ' || i) AS c
	FROM generate_series(1, 20) i, (VALUES ('acme'), ('beta')) v(n)});
sq(q{SELECT byok_cache_flush()});
is(sq(q{SELECT count(*) FROM t WHERE byok_decrypt_text(c) = 'value ' || i}), '40', 'round trip through the KMIP server');

# the wrapped TK: format 1, uid, IV, tag, ciphertext; the server itself
# decrypts it under our AAD, and refuses it under another tenant's AAD
my $w = sq(q{SELECT encode(wrapped_key, 'hex') FROM byok.tenant_keys k JOIN byok.tenants t ON t.tenant_id = k.tenant_id
	WHERE t.name = 'acme' AND k.version = 1});
my $ulen = hex(substr($w, 2, 2));
is(substr($w, 0, 2), '01', 'wrapped key format 1');
is(pack('H*', substr($w, 4, 2 * $ulen)), $uid_a, 'the wrapped key names the KMIP object');
my $rest = substr($w, 4 + 2 * $ulen);
my ($iv, $tag, $ct) = (substr($rest, 0, 24), substr($rest, 24, 32), substr($rest, 56));
my $aad = unpack('H*', "byok-kmip\0acme\0" . pack('N', 1));
my $pt = kmipctl($k, 'gcm-decrypt', $uid_a, $iv, $tag, $ct, $aad);
my $fp = sq(q{SELECT fingerprint FROM byok.tenant_keys k JOIN byok.tenants t ON t.tenant_id = k.tenant_id
	WHERE t.name = 'acme' AND k.version = 1});
is(substr(sha256_hex('byok key fingerprint v1' . pack('H*', $pt)), 0, 16), $fp,
	'the KMIP server decrypts the wrapped key under tenant acme\'s AAD to the tenant key byok recorded');

# a backend that unwrapped over KMIP keeps no copy of the tenant key in its
# private memory: the TTLV buffers are wiped, and OpenSSL wipes its record
# buffer (SSL_OP_CLEANSE_PLAINTEXT)
{
	my $ctl = join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32);
	my $s = async_psql($node);
	$s->run("SET byok_test.control = '$ctl'");
	$s->run(q{SELECT byok_cache_flush('acme')});
	is($s->run(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'acme'}), '20', 'a backend unwraps acme over KMIP');
	memscan_check($s->pid, { tenant_key => $pt, control => $ctl }, 'after an unwrap over KMIP',
		PostgreSQL::Test::Utils::tempdir());
	$s->quit;
}
my $bad_aad = unpack('H*', "byok-kmip\0beta\0" . pack('N', 1));
# the refusal must be the GCM tag check (PyKMIP answers GENERAL_FAILURE and
# logs cryptography's InvalidTag), not any failure
sub invalid_tags
{
	my $log = -e $k->{log} ? slurp_file($k->{log}) : '';
	return scalar(() = $log =~ /^cryptography\.exceptions\.InvalidTag$/mg);
}
sub refused_by_tag
{
	my ($aad) = @_;
	my $before = invalid_tags();
	my ($ok, $out, $err) = kmipctl_try($k, 'client', 'gcm-decrypt', $uid_a, $iv, $tag, $ct, $aad);
	my $tags = $before;
	for (1 .. 20)
	{
		$tags = invalid_tags();
		last if $tags > $before;
		sleep 0.1;
	}
	diag("kmipctl said: $err; InvalidTag logged " . ($tags - $before) . ' times') if $ok || $tags != $before + 1;
	return !$ok && $err =~ /^kmipctl: DECRYPT failed: GENERAL_FAILURE/m && $tags == $before + 1;
}
ok(refused_by_tag($bad_aad), 'and refuses it under another tenant\'s AAD (its GCM tag check fails)');
my $v2_aad = unpack('H*', "byok-kmip\0acme\0" . pack('N', 2));
ok(refused_by_tag($v2_aad), 'or under another tenant-key version (its GCM tag check fails)');

# another tenant's wrapped key copied over: the tag check fails
sq(q{CREATE TABLE saved AS SELECT * FROM byok.tenant_keys});
sq(q{UPDATE byok.tenant_keys SET wrapped_key = (SELECT k.wrapped_key FROM byok.tenant_keys k JOIN byok.tenants t USING (tenant_id) WHERE t.name = 'acme')
	WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'beta')});
sq(q{SELECT byok_cache_flush()});
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), qr/^YK008 /,
	'a wrapped key moved to another tenant does not unwrap');
sq(q{UPDATE byok.tenant_keys k SET wrapped_key = s.wrapped_key FROM saved s WHERE s.tenant_id = k.tenant_id AND s.version = k.version});
sq(q{SELECT byok_cache_flush()});
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), '20', 'restored');

# the poller asks about many keys in batched messages (more than one batch)
my @many = split /\n/, kmipctl($k, 'create-many', 'bulk', 40);
is(scalar(@many), 40, 'test server: 40 more keys on the server');
sq(join(';', map { "SELECT byok_create_tenant('bulk$_', 'kmip', '$many[$_]'); SELECT byok_encrypt('bulk$_', 'x')" } 0 .. $#many));
ok($node->poll_query_until('postgres', q{SELECT count(*) = 42 FROM byok_stats() WHERE provider = 'kmip' AND kms_status = 'ok' AND last_poll_result = 'enabled'}),
	'the poller reports all 42 CMKs enabled');
sleep 0.5;
diag('poll round over 42 KMIP CMKs: ' . sq(q{SELECT round(last_round_ms::numeric, 1) || ' ms (' || last_round_cmks || ' CMKs)' FROM byok_poller_status()}));
kmipctl($k, 'revoke', $many[39]);
ok(wait_state($node, 'bulk39', 'cmk_disabled'), 'a key revoked in the second batch is seen');
is(sq(q{SELECT count(*) FROM byok_stats() WHERE tenant LIKE 'bulk%' AND state = 'active'}), '39', 'and only that one');
set_conf('byok.kmip_batch_size', 1);
kmipctl($k, 'revoke', $many[5]);
ok(wait_state($node, 'bulk5', 'cmk_disabled'), 'with byok.kmip_batch_size = 1 (one message per key) too');
is(sq(q{SELECT count(*) FROM byok_stats() WHERE tenant LIKE 'bulk%' AND state = 'active'}), '38', 'and only that one');
set_conf('byok.kmip_batch_size', 32);

# Revoke: lockout within the poll bound, and for good
# three sessions decrypting acme rows in open transactions, all refused
# within poll_interval + 100 ms of the Revoke (measured from when kmipctl
# returned: its Python start-up and TLS handshake are not byok's), plus the
# provider's own latency: the poller's measured round time (last_round_ms,
# the larger of the rounds before and after; 42 CMKs in two batched
# messages to PyKMIP, some tens of ms)
my $round_before = sq('SELECT ceil(last_round_ms) FROM byok_poller_status()');
my $drill = lockout_drill(nodes => [$node], sessions => 3,
	perform => q{byok_decrypt(c) FROM t WHERE tenant = 'acme' AND i = 1 + n % 20},
	from => 'after', action => sub { kmipctl($k, 'revoke', $uid_a) });
my $round_after = sq('SELECT ceil(last_round_ms) FROM byok_poller_status()');
my $allow = $round_before > $round_after ? $round_before : $round_after;
my $lock = lockout_ok($drill, 'YK003', 200 + 100 + $allow, "a revoked KMIP key (provider allowance $allow ms)");
diag(sprintf('kmip: lockout %.0f ms after the Revoke answered (kmipctl took %.0f ms, poll round %d ms)',
	$lock // -1, $drill->{action_ms}, $allow));
ok(wait_state($node, 'acme', 'cmk_disabled'), 'the tenant shows locked out');
my ($t0, $took, $err);
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'acme'}), qr/^YK003 .*customer master key of tenant "acme" is disabled/s,
	'reads are refused (YK003)');
sq(q{SELECT byok_cache_flush('acme')});
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'acme'}), qr/^YK003 .*disabled/s, 'also after a cache flush (YK003)');
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), '20', 'the other tenant carries on');
sleep 1;
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'acme'}), 'cmk_disabled', 'KMIP cannot re-activate it: still locked out');
like(sq(q{SELECT health FROM byok.tenant_status WHERE tenant = 'acme'}), qr/locked out for good: the customer revoked its KMIP key/,
	'and byok.tenant_status says it is for good');

# Destroy: final
kmipctl($k, 'destroy', $uid_a);
ok(wait_destroyed($node, 'acme'), 'a destroyed KMIP key locks the tenant out for good (confirmed by a second poll)');
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'acme'}), qr/^YK004 .*destroyed/s, 'nothing of it decrypts (YK004)');

# the server killed: unavailable within the timeout, never destroyed; back after a restart
kmip_kill($k);
sq(q{SELECT byok_cache_flush('beta')});
$t0 = time();
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), qr/^YK005 .*key provider is unavailable/s,
	'the server is down: KMS unavailable (YK005)');
$took = time() - $t0;
cmp_ok($took, '<', 1.5 + 0.5, sprintf('within byok.kms_timeout (%.0f ms)', $took * 1000));
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'beta'}), 'active', 'and the tenant is not marked destroyed: still active (serve_cached)');
kmip_start($k);
ok($node->poll_query_until('postgres', q{SELECT count(byok_decrypt(c)) = 20 FROM t WHERE tenant = 'beta'}),
	'the server is back: the tenant reads again (a new connection)');
is(sq(q{SELECT state FROM byok_stats() WHERE tenant = 'acme'}), 'cmk_destroyed', 'and the destroyed one stays destroyed');

# a kept connection survives a server restart: the next call reconnects at once
my $bg = $node->background_psql('postgres');
$bg->query_safe(q{SELECT byok_cache_flush('beta'); SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'});
kmip_stop($k);
kmip_start($k);
$bg->query_safe(q{SELECT byok_cache_flush('beta')});
is($bg->query_safe(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), '20',
	'a session whose connection the restart closed reconnects on its next call');

# a server that accepts connections but never answers: timeout, and cancel
my $mute = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp') or die;
set_conf('byok.kmip_port', $mute->sockport);
fresh();
$t0 = time();
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), qr/^YK005 .*key provider is unavailable.*byok.kms_timeout/s,
	'a server that never answers: YK005 naming the timeout');
$took = time() - $t0;
cmp_ok($took, '<', 1.5 + 0.5, sprintf('after byok.kms_timeout (%.0f ms)', $took * 1000));
# README: a hung call stops within 50 ms of statement_timeout or
# pg_cancel_backend: timeout + 60 ms, cancel + 60 ms
cancel_checks($node, 'kmip', q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}, 60, \&fresh);
close $mute;
set_conf('byok.kmip_port', $k->{port});

# another client identity: permission error, never destroyed
set_conf('byok.kmip_cert_file', "$d/intruder.crt");
set_conf('byok.kmip_key_file', "$d/intruder.key");
fresh();
$err = fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'});
like($err, qr/^YK007 .*key provider refused access/s, 'a certificate of another CN gets a permission error (YK007)');
like($err, qr/KMIP reason 12 \(Permission Denied\)/, 'with the KMIP result reason in the detail');
is(sq(q{SELECT count(*) FROM byok_stats() WHERE tenant = 'beta' AND state = 'active'}), '1', 'and the tenant is not locked out by it');
set_conf('byok.kmip_cert_file', "$d/client.crt");
set_conf('byok.kmip_key_file', "$d/client.key");

# a CA that did not sign the server's certificate
set_conf('byok.kmip_ca_file', "$d/rogue-ca.crt");
fresh();
$err = fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'});
like($err, qr/^YK009 .*key provider configuration is invalid/s, 'a wrong CA is a configuration error (YK009)');
like($err, qr/certificate was not accepted: .*certificate.*byok.kmip_ca_file must hold the CA/s,
	'with a clear TLS message');
set_conf('byok.kmip_ca_file', "$d/ca.crt");

# several servers: a dead one first, then ours; the one that answered is tried first next time
my $closed = PostgreSQL::Test::Cluster::get_free_port();
set_conf('byok.kmip_host', "127.0.0.1:$closed, 127.0.0.1:$k->{port}");
fresh();
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), '20', 'a refused first server: the next one in byok.kmip_host serves');
my $mute2 = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp') or die;
set_conf('byok.kmip_host', '127.0.0.1:' . $mute2->sockport . ", [127.0.0.1]:$k->{port}");
$bg->query_safe(q{SELECT byok_cache_flush('beta')});
sleep 1.1;
$t0 = time();
is($bg->query_safe(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), '20', 'a first server that never answers: the second serves');
$took = time() - $t0;
cmp_ok($took, '<', 1.5, sprintf('within byok.kms_timeout (%.0f ms: half of it went to the silent server)', $took * 1000));
kmip_stop($k);
kmip_start($k);
$bg->query_safe(q{SELECT byok_cache_flush('beta')});
$t0 = time();
is($bg->query_safe(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), '20', 'after a restart of the serving one, the session reconnects');
# done with it: its harness's timer (PG_TEST_TIMEOUT_DEFAULT) runs from its start
$bg->quit;
$took = time() - $t0;
cmp_ok($took, '<', 0.5, sprintf('to it first, not waiting on the silent one (%.0f ms)', $took * 1000));
close $mute2;
set_conf('byok.kmip_host', '127.0.0.1:notaport');
fresh();
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), qr/^YK009 .*byok.kmip_host must list one to 8 servers/s,
	'an unusable byok.kmip_host is a configuration error');

# a name that does not resolve: YK005 within byok.kms_timeout, whatever the resolver does
set_conf('byok.kmip_host', 'kms.byok-test.invalid');
fresh();
$t0 = time();
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}),
	qr/^YK005 .*key provider is unavailable.*(Could not resolve|took longer than byok.kms_timeout)/s,
	'an unresolvable server name: YK005');
$took = time() - $t0;
cmp_ok($took, '<', 1.5 + 0.5, sprintf('bounded by byok.kms_timeout (%.0f ms)', $took * 1000));

# a DNS name instead of an address: checked against the certificate's DNS SAN
set_conf('byok.kmip_host', 'localhost');
fresh();
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), '20', 'byok.kmip_host as a DNS name the certificate carries');
set_conf('byok.kmip_host', '127.0.0.1');

# a client certificate the server does not trust
set_conf('byok.kmip_cert_file', "$d/rogue-client.crt");
set_conf('byok.kmip_key_file', "$d/rogue-client.key");
fresh();
$err = fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'});
like($err, qr/^YK009 .*TLS handshake with the KMIP server failed: .*alert/s, 'a client certificate the server does not trust: TLS error');
set_conf('byok.kmip_cert_file', "$d/client.crt");
set_conf('byok.kmip_key_file', "$d/client.key");

# a key file others can read
chmod 0644, "$d/client.key";
fresh();
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), qr/^YK009 .*byok.kmip_key_file .* must be owned by the server's operating system user and readable by it alone/s,
	'a key file readable by others is refused');
chmod 0600, "$d/client.key";
sleep 1.1;
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'beta'}), '20', 'fixed: reads again');

# nothing secret in the server log
my $log = slurp_file($node->logfile);
my $keypem = slurp_file("$d/client.key");
my ($keyline) = $keypem =~ /\n([A-Za-z0-9+\/]{40,})\n/;
unlike($log, qr/\Q$keyline\E/, 'no private key material in the server log (at debug5)');
unlike($log, qr/\Q$pt\E/i, 'no tenant key in the server log, in hex');
unlike($log, qr/\Q${\ pack('H*', $pt) }\E/, 'nor in raw bytes');

$node->stop;
kmip_stop($k);
done_testing();
