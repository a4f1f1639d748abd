# 019_install_script.pl — the install script CREATE EXTENSION byok runs,
# byok--1.1.sql, is exactly the parts extension/[0-9]*.sql concatenated in
# the Makefile's order (BYOK_SQL_PARTS), in the build directory and as
# installed; every part is listed once and only the first has the \echo
# guard; the released scripts are installed unchanged; a fresh install is
# at 1.1, and the 1.0 path (CREATE EXTENSION ... VERSION '1.0', then
# ALTER EXTENSION ... UPDATE) still works.  That both paths end with the
# same objects is test/t/011_upgrade.pl.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

# the parts, as the Makefile lists them (continuation lines joined)
my $makefile = slurp_file('Makefile');
$makefile =~ s/\\\n/ /g;
my ($list) = $makefile =~ /^BYOK_SQL_PARTS\s*=\s*(.*)$/m;
ok(defined $list, 'the Makefile lists BYOK_SQL_PARTS');
my @parts = split ' ', $list // '';
cmp_ok(scalar(@parts), '>=', 2, 'the script is built from ' . scalar(@parts) . ' parts');

my %count;
$count{$_}++ for @parts;
is(join(' ', grep { $count{$_} > 1 } sort keys %count), '', 'no part is listed twice');
is(join(' ', grep { !-f "extension/$_" } @parts), '', 'every listed part exists in extension/');
my @on_disk = map { s{^extension/}{}r } sort glob('extension/[0-9]*.sql');
is(join(' ', grep { !$count{$_} } @on_disk), '', 'every extension/[0-9]*.sql is listed');
is(join(' ', @parts), join(' ', sort @parts), 'the parts are listed in the order of their numbers');

my $built = join('', map { slurp_file("extension/$_") } @parts);
my @echo = grep { slurp_file("extension/$_") =~ /^\\echo/m } @parts;
is(join(' ', @echo), $parts[0], "only the first part ($parts[0]) has the \\echo guard");
like($built, qr{\A(?:/\*[^\n]*\*/\n|--[^\n]*\n|\n)*\\echo Use "CREATE EXTENSION byok"},
	'the \\echo guard comes before any statement');

# the built script, in the build directory and as installed
my $builddir = $ENV{TESTDIR} // '.';
ok(-f "$builddir/byok--1.1.sql", 'byok--1.1.sql is built');
ok(slurp_file("$builddir/byok--1.1.sql") eq $built,
	'byok--1.1.sql in the build directory is the parts concatenated in Makefile order');

my $node = byok_node('install_script');
my $share = $node->config_data('--sharedir') . '/extension';
ok(slurp_file("$share/byok--1.1.sql") eq $built,
	"the installed $share/byok--1.1.sql is the parts concatenated in Makefile order");
for my $released ('byok--1.0.sql', 'byok--1.0--1.1.sql')
{
	ok(slurp_file("$share/$released") eq slurp_file("extension/$released"),
		"the installed $released is extension/$released");
}

# a fresh install runs byok--1.1.sql: version 1.1
is($node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'byok'}), '1.1',
	'the default version is 1.1');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'byok'}), '1.1',
	'CREATE EXTENSION byok installs version 1.1');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_extension_update_paths('byok')
	WHERE source = '1.0' AND target = '1.1' AND path = '1.0--1.1'}), '1',
	'1.0 updates to 1.1 by byok--1.0--1.1.sql');

# the released path still works
$node->safe_psql('postgres', 'CREATE DATABASE released');
$node->safe_psql('released', q{CREATE EXTENSION byok VERSION '1.0'});
is($node->safe_psql('released', q{SELECT extversion FROM pg_extension WHERE extname = 'byok'}), '1.0',
	q{CREATE EXTENSION byok VERSION '1.0' installs 1.0});
my ($rc, $out, $err) = $node->psql('released', 'ALTER EXTENSION byok UPDATE');
is($rc, 0, 'ALTER EXTENSION byok UPDATE succeeds') or diag($err);
is($node->safe_psql('released', q{SELECT extversion FROM pg_extension WHERE extname = 'byok'}), '1.1',
	'and ends at 1.1');

done_testing();
