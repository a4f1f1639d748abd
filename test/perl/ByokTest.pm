# ByokTest.pm — helpers for byok's TAP tests: a cluster with byok preloaded,
# a keyring of local customer keys, tenants, and measuring lockouts.
package ByokTest;

use strict;
use warnings;
use Exporter 'import';
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(byok_node new_key disable_key enable_key destroy_key keyring
  create_tenant wait_state median);

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

sub median
{
	my @v = sort { $a <=> $b } @_;
	return undef unless @v;
	return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

1;
