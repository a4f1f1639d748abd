# 010_https.pl — the HTTP providers over real TLS: the KMS test server also
# serves HTTPS with a certificate made here by openssl, and byok verifies it
# against byok.kms_ca_file (byok.kms_allow_insecure stays off): aws-kms and
# vault-transit round trips over HTTPS, a DNS name the certificate carries,
# a CA that did not sign it and a certificate that does not name the host
# -> YK009 with curl's reason, never a lockout.
use strict;
use warnings;
use Cwd qw(abs_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use ByokTest;
use ByokKms;
use ByokMore;
use ByokScan;

my $pki = PostgreSQL::Test::Utils::tempdir();
system('bash', abs_path('test/kms/kmip_certs.sh'), $pki) == 0 or die 'kmip_certs.sh failed';
my $kms = ByokKms->start(PostgreSQL::Test::Utils::tempdir(), tls => [ "$pki/server.crt", "$pki/server.key" ]);
like($kms->{tls_url}, qr{^https://127\.0\.0\.1:\d+$}, 'test server: the KMS test server serves HTTPS');

my $node = byok_node('https', conf => [
	"byok.aws_endpoint = '$kms->{tls_url}/'", "byok.aws_region = 'us-east-1'",
	"byok.aws_credentials_file = '$kms->{aws_creds}'",
	"byok.vault_address = '$kms->{tls_url}'", "byok.vault_token_file = '$kms->{vault_token}'",
	"byok.kms_ca_file = '$pki/ca.crt'", "byok.kms_timeout = '2s'" ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }
# '' if the SQL succeeds, else "SQLSTATE stderr": checks anchor the code
sub fails
{
	my ($state, $err) = sql_error($node, $_[0]);
	return $state eq '' ? '' : "$state $err";
}
sub set_conf
{
	my ($guc, $value) = @_;
	sq("ALTER SYSTEM SET $guc = '$value'");
	sq('SELECT pg_reload_conf()');
	sleep 0.3;
}
# drop the tenants' keys and wait out the 1 s negative cache
sub fresh
{
	sq(q{SELECT byok_cache_flush()});
	sleep 1.1;
}

my $aws_key = $kms->create_aws_key;
my $vault_key = $kms->create_vault_key('tls');
sq("SELECT byok_create_tenant('aws', 'aws-kms', '$aws_key')");
sq("SELECT byok_create_tenant('vault', 'vault-transit', '$vault_key')");
sq(q{CREATE TABLE t AS SELECT i, n AS tenant, byok_encrypt(n, 'value ' || i) AS c
	FROM generate_series(1, 10) i, (VALUES ('aws'), ('vault')) v(n)});
fresh();
is(sq(q{SELECT count(*) FROM t WHERE byok_decrypt_text(c) = 'value ' || i}), '20',
	'aws-kms and vault-transit round trips over verified HTTPS');

# over TLS too, a backend keeps no tenant key or credential after its
# unwraps: libcurl's freed memory is wiped, and OpenSSL wipes its record
# buffers (SSL_OP_CLEANSE_PLAINTEXT)
{
	my $ctl = join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32);
	my $s = async_psql($node);
	$s->run("SET byok_test.control = '$ctl'");
	fresh();
	# aws last: its answer (the tenant key the scan knows) is the last one read
	is($s->run(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'vault'}) . ','
		. $s->run(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'aws'}), '10,10',
		'a backend unwraps both tenants over HTTPS');
	memscan_check($s->pid, { tenant_key => aws_tenant_key($node, $kms, 'aws', $aws_key),
		aws_secret => unpack('H*', $kms->{secret}), vault_token => unpack('H*', $kms->{token}), control => $ctl },
		'after unwraps over HTTPS', PostgreSQL::Test::Utils::tempdir());
	$s->quit;
}

# plain HTTP is refused: the same test server's plain http:// listener
# (which serves the same API) as the endpoint, byok.kms_allow_insecure off
set_conf('byok.aws_endpoint', "$kms->{url}/");
set_conf('byok.vault_address', $kms->{url});
fresh();
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'aws'}),
	qr/^YK009 .*Plain http:\/\/ endpoints are refused unless byok.kms_allow_insecure is on/s,
	'a plain http:// endpoint is refused (YK009)');
like(fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'vault'}),
	qr/^YK009 .*Plain http:\/\//s, 'for vault-transit too');
is(sq(q{SELECT count(*) FROM byok_stats() WHERE state <> 'active'}), '0', 'and no tenant is locked out by it');
# the control: the same endpoint works once insecure endpoints are allowed,
# so the refusal above was byok's policy, not a dead endpoint
set_conf('byok.kms_allow_insecure', 'on');
fresh();
is(sq(q{SELECT count(byok_decrypt(c)) FROM t}), '20', 'with byok.kms_allow_insecure on, the same endpoints serve');
sq(q{ALTER SYSTEM RESET byok.kms_allow_insecure});
set_conf('byok.vault_address', $kms->{tls_url});
set_conf('byok.aws_endpoint', "$kms->{tls_url}/");
is(sq(q{SHOW byok.kms_allow_insecure}), 'off', 'insecure endpoints are off again');

set_conf('byok.aws_endpoint', "https://localhost:$kms->{tls_port}/");
fresh();
is(sq(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'aws'}), '10', 'a DNS name the certificate carries');

# a CA that did not sign the server's certificate
set_conf('byok.kms_ca_file', "$pki/rogue-ca.crt");
fresh();
my $err = fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'aws'});
like($err, qr/^YK009 .*key provider configuration is invalid/s, 'a wrong CA is a configuration error (YK009)');
like($err, qr/SSL certificate problem: .*byok.kms_ca_file must hold the CA/s, 'with curl\'s reason and what to check');
$err = fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'vault'});
like($err, qr/^YK009 .*SSL certificate problem/s, 'for vault-transit too');
is(sq(q{SELECT count(*) FROM byok_stats() WHERE state <> 'active'}), '0', 'and no tenant is locked out by it');

# a FIFO as the CA file: refused at once, never handed to libcurl (whose
# blocking open would wait for a writer, beyond any cancel); a writer
# comes 3 s later, so a regression shows as a delay
system('mkfifo', '-m', '644', "$pki/fifo-ca.crt") == 0 or die 'mkfifo';
system("(sleep 3; timeout 10 sh -c 'while :; do echo x > $pki/fifo-ca.crt; done') </dev/null >/dev/null 2>&1 &");
set_conf('byok.kms_ca_file', "$pki/fifo-ca.crt");
fresh();
my $t0 = time();
$err = fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'aws'});
my $took = time() - $t0;
like($err, qr/^YK009 .*byok.kms_ca_file .*is not a regular file/s, 'a FIFO as byok.kms_ca_file: a configuration error (YK009)');
cmp_ok($took, '<', 1.5, sprintf('at once, not when a writer comes (%.0f ms)', $took * 1000));
set_conf('byok.kms_ca_file', "$pki/ca.crt");

# a certificate, signed by the right CA, that does not name the host
my $csr = "$pki/other.csr";
system('openssl', 'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
	'-subj', '/CN=kms.example.com', '-keyout', "$pki/other.key", '-out', $csr) == 0 or die 'openssl req';
open(my $ext, '>', "$pki/other.ext") or die;
print $ext "subjectAltName = DNS:kms.example.com\nextendedKeyUsage = serverAuth\n";
close $ext;
system('openssl', 'x509', '-req', '-in', $csr, '-CA', "$pki/ca.crt", '-CAkey', "$pki/ca.key",
	'-CAcreateserial', '-days', '2', '-extfile', "$pki/other.ext", '-out', "$pki/other.crt") == 0
  or die 'openssl x509';
$kms->stop;
$kms->{tls} = [ "$pki/other.crt", "$pki/other.key" ];
$kms->launch;
set_conf('byok.aws_endpoint', "$kms->{tls_url}/");
fresh();
$err = fails(q{SELECT count(byok_decrypt(c)) FROM t WHERE tenant = 'aws'});
like($err, qr/^YK009 .*key provider configuration is invalid/s, 'a certificate that does not name the host: YK009');
like($err, qr/(subject name|does not match).*127\.0\.0\.1/s, 'naming the mismatch');
is(sq(q{SELECT count(*) FROM byok_stats() WHERE state <> 'active'}), '0', 'and no tenant is locked out by it');

$kms->stop;
$kms->{tls} = [ "$pki/server.crt", "$pki/server.key" ];
$kms->launch;
set_conf('byok.aws_endpoint', "$kms->{tls_url}/");
set_conf('byok.vault_address', $kms->{tls_url});
fresh();
is(sq(q{SELECT count(*) FROM t WHERE byok_decrypt_text(c) = 'value ' || i}), '20', 'the right certificate again: both read');

$node->stop;
$kms->stop;
done_testing();
