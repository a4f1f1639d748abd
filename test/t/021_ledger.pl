# 021_ledger.pl — the destruction ledger fails closed.  A ledger that exists
# but cannot be read (mode 000) must not count as "nothing destroyed": a
# session that never read it whole unwraps no tenant key (YK009); a session
# that read it keeps that reading (the listed key stays refused, the others
# work); and as soon as the file is readable again (a chmod changes neither
# its size nor its mtime) every session reads it again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;
use ByokMore;

my $dir = PostgreSQL::Test::Utils::tempdir();
my $ledger = "$dir/ledger";
my $node = byok_node('ledger', poll_interval => '1h', conf => [ "byok.destruction_ledger = '$ledger'" ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }
create_tenant($node, 'keep', 'keep-cmk');
create_tenant($node, $_, "$_-cmk") for qw(gone gone2 gone3);
sq(q{CREATE TABLE t AS SELECT tenant, byok_encrypt(tenant, 'value of ' || tenant) AS c
	FROM (VALUES ('keep'), ('gone'), ('gone2'), ('gone3')) v(tenant)});

# the ledger lists the gone tenants' keys, as destructions elsewhere would
# have (each is first used at a different step below: a refused tenant is
# locked out for good, so each step needs a tenant of its own)
open(my $fh, '>', $ledger) or die;
for my $g (qw(gone gone2 gone3))
{
	my $fp = sq(qq{SELECT encode(sha256(k.wrapped_key), 'hex') FROM byok.tenant_keys k
		JOIN byok.tenants t ON t.tenant_id = k.tenant_id WHERE t.name = '$g'});
	like($fp, qr/^[0-9a-f]{64}$/, "$g: its tenant-key fingerprint");
	print $fh "$fp 1700000000 0 $g\n";
}
close $fh;
chmod 0600, $ledger;

sub decrypt
{
	my ($session, $tenant) = @_;
	$session->run('SELECT byok_cache_flush()');
	my $out = $session->run("SELECT byok_decrypt_text(c) FROM t WHERE tenant = '$tenant'");
	return $out ne '' ? $out : ($session->{err} =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : "no answer: $session->{err}");
}

my $old = async_psql($node);    # reads the ledger while it is readable
is(decrypt($old, 'keep'), 'value of keep', 'readable ledger: a tenant it does not list decrypts');
is(decrypt($old, 'gone'), 'YK004', 'and the tenant it lists is refused (YK004)');

chmod 0000, $ledger;
my $new = async_psql($node);    # has never read it
is(decrypt($new, 'keep'), 'YK009', 'unreadable ledger, never read: no tenant key is unwrapped (YK009)');
like($new->{err}, qr/byok.destruction_ledger .* cannot be read/, 'saying the ledger cannot be read');
is(decrypt($old, 'gone2'), 'YK004', 'unreadable ledger, read before: a listed tenant is still refused');
is(decrypt($old, 'keep'), 'value of keep', 'and the others still decrypt (the last complete reading stands)');
like(slurp_file($node->logfile), qr/could not read byok.destruction_ledger/, 'the server log says why');

chmod 0600, $ledger;
is(decrypt($new, 'keep'), 'value of keep', 'readable again: read at once, a tenant it does not list decrypts');
is(decrypt($new, 'gone3'), 'YK004', 'and a listed tenant is refused (the ledger was read again, though its size and mtime did not change)');

$_->quit for $old, $new;
$node->stop;
done_testing();
