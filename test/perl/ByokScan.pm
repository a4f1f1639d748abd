# ByokScan.pm — the key scanner of 014_no_leaks.pl: compute the key bytes
# that must never be at rest (local CMKs, every tenant key, every data key,
# unwrapped from the catalog outside the server by test/kms/keyscan.py) and
# search files for them and for plaintext markers in raw, hex, HEX, base64
# and base64url form.
package ByokScan;

use strict;
use warnings;
use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(keyscan catalog_keys scan_places check_place aws_tenant_key memscan_check);

my $python = '/usr/bin/python3';    # the one with python3-cryptography
my $script = File::Spec->rel2abs(dirname(__FILE__) . '/../kms/keyscan.py');

# Run keyscan.py with arguments; its stdout (dies on failure, with stderr).
sub keyscan
{
	my @args = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $python, $script, @args ], '>', \$out, '2>', \$err)
	  or die "keyscan.py $args[0]: $err$out";
	chomp $out;
	return $out;
}

# Every key of the catalog of $node's database $db plus the CMKs of
# $keyring, as { label => hex }: keyscan.py unwraps each TK under its CMK
# and each DEK under its TK (AES-GCM authenticates both) and checks each
# key's fingerprint against the catalog's.  $dir holds the row dump.
sub catalog_keys
{
	my ($node, $db, $keyring, $dir) = @_;
	my $rows = $node->safe_psql($db, q{
		SELECT json_build_object(
		  'tks', (SELECT coalesce(json_agg(json_build_object('tenant_id', t.tenant_id, 'name', t.name,
		            'version', k.version, 'key_ref', k.key_ref, 'wrapped', encode(k.wrapped_key, 'hex'),
		            'fingerprint', k.fingerprint) ORDER BY t.tenant_id, k.version), '[]')
		          FROM byok.tenant_keys k JOIN byok.tenants t USING (tenant_id)
		          WHERE k.wrapped_key IS NOT NULL AND k.provider = 'local'),
		  'deks', (SELECT coalesce(json_agg(json_build_object('dek_id', d.dek_id, 'tenant_id', d.tenant_id,
		            'scope', d.scope, 'version', d.version, 'tk_version', d.tk_version,
		            'wrapped', encode(d.wrapped_key, 'hex'), 'fingerprint', d.fingerprint) ORDER BY d.dek_id), '[]')
		          FROM byok.data_keys d WHERE d.wrapped_key IS NOT NULL))});
	my $path = "$dir/catalog_rows.json";
	open(my $fh, '>', $path) or die "$path: $!";
	print $fh $rows;
	close $fh;
	return decode_json(keyscan('derive', $keyring, $path));
}

# Search @paths (files or folders) for every needle of %$needles
# ({ label => hex of its bytes }).  Returns { files, bytes, found => { label
# => [ [path, form, where], ... ] } }.  With core_maps => FILE (a copy of
# /proc/PID/maps) each hit in a core says whether it lies in a shared
# anonymous mapping.
sub scan_places
{
	my ($needles, $paths, %opts) = @_;
	my $npath = "$opts{dir}/needles.json";
	open(my $fh, '>', $npath) or die "$npath: $!";
	print $fh encode_json($needles);
	close $fh;
	my @core = $opts{core_maps} ? ('--core-shared', $opts{core_maps}) : ();
	return decode_json(keyscan('scan', @core, $npath, @$paths));
}

# The checks of one place: the scan read something, every control label is
# found there (in the form and region asked, if any), and no secret label is.
#   controls => { label => qr/form or region the hit must show/ }
sub check_place
{
	my ($place, $res, %opts) = @_;
	my $found = $res->{found};
	cmp_ok($res->{bytes}, '>', 0, "$place: the scan read $res->{files} files, $res->{bytes} bytes");
	for my $c (sort keys %{ $opts{controls} })
	{
		my $want = $opts{controls}{$c};
		my @hits = grep { "$_->[1] $_->[2]" =~ $want } @{ $found->{$c} // [] };
		ok(@hits > 0, "$place: the scan sees the control $c ($want)")
		  or diag("hits of $c: " . encode_json($found->{$c} // []));
	}
	my @leaks;
	for my $s (sort @{ $opts{secrets} })
	{
		push @leaks, map { "$s as $_->[1] in $_->[0] at $_->[2]" } @{ $found->{$s} // [] };
	}
	is(scalar(@leaks), 0, "$place: none of " . scalar(@{ $opts{secrets} }) . " secrets ($opts{what}) is there")
	  or diag(join("\n", @leaks[ 0 .. ($#leaks < 9 ? $#leaks : 9) ]));
	return scalar @leaks;
}

# The tenant key of aws-kms tenant $tenant (version 1, CMK $key) as hex,
# from the KMS test server's own Decrypt (the customer's view of its key).
sub aws_tenant_key
{
	my ($node, $kms, $tenant, $key) = @_;
	my $wrapped = $node->safe_psql('postgres', qq{SELECT encode(substr(wrapped_key, 2), 'base64')
		FROM byok.tenant_keys k JOIN byok.tenants t USING (tenant_id) WHERE t.name = '$tenant' AND k.version = 1});
	$wrapped =~ s/\s+//g;
	my $res = $kms->admin('POST', 'aws/decrypt', { CiphertextBlob => $wrapped, KeyId => $key,
		EncryptionContext => { 'byok:tenant' => $tenant, 'byok:tk_version' => '1' } });
	require MIME::Base64;
	return unpack('H*', MIME::Base64::decode_base64($res->{Plaintext} // ''));
}

# Scan the private memory of live process $pid (keyscan.py memscan: heap,
# stack, private mappings, never shared memory) for the needles { label =>
# hex }: the label 'control', which the caller put into that memory, must be
# found, and no other label.
sub memscan_check
{
	my ($pid, $needles, $what, $dir) = @_;
	my $npath = "$dir/memscan_needles.json";
	open(my $fh, '>', $npath) or die "$npath: $!";
	print $fh encode_json($needles);
	close $fh;
	my $r = decode_json(keyscan('memscan', $pid, $npath));
	ok(@{ $r->{found}{control} } > 0, "$what: the scan finds the control in the backend's memory ($r->{bytes} bytes)");
	my @hits = map { my $l = $_; map { "$l in $_->[0] ($_->[1], amid '$_->[3]')" } @{ $r->{found}{$l} } }
	  grep { $_ ne 'control' } sort keys %{ $r->{found} };
	is(join('; ', @hits), '', "$what: none of " . join(', ', grep { $_ ne 'control' } sort keys %$needles)
		  . " in its private memory");
}

1;
