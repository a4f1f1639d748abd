# ByokMore.pm — more helpers for byok's TAP tests: psql sessions driven
# without blocking (send a statement, go on, and see later when its answer
# or its error arrived, with the time it did), for cancel and concurrency
# tests.
package ByokMore;

use strict;
use warnings;
use Exporter 'import';
use IPC::Run;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(async_psql);

# A psql session on $db of $node, errors in verbose form (with SQLSTATE),
# not stopping on errors.  Methods: send, wait_out, wait_err, run, pid, quit.
sub async_psql
{
	my ($node, $db) = @_;
	my $s = bless { in => '', out => '', err => '', n => 0 }, 'ByokMore::Session';
	$s->{h} = IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-v', 'VERBOSITY=verbose', '-d', $node->connstr($db // 'postgres') ],
		'<', \$s->{in}, '>', \$s->{out}, '2>', \$s->{err});
	$s->{pid} = $s->run('SELECT pg_backend_pid()');
	die "no backend pid: $s->{err}" unless $s->{pid} =~ /^\d+$/;
	return $s;
}

package ByokMore::Session;

use Time::HiRes qw(time usleep);

sub pid { return $_[0]->{pid}; }

# Queue a statement (or psql lines); returns the time it was handed to psql.
sub send
{
	my ($s, $sql) = @_;
	$s->{in} .= "$sql\n";
	my $t = time();
	$s->{h}->pump_nb;
	return $t;
}

# Wait until stderr (wait_err) or stdout (wait_out) matches $re; returns the
# time it was first seen, or undef after $timeout seconds.
sub wait_err { my ($s, $re, $timeout) = @_; return $s->_wait('err', $re, $timeout); }
sub wait_out { my ($s, $re, $timeout) = @_; return $s->_wait('out', $re, $timeout); }

sub _wait
{
	my ($s, $which, $re, $timeout) = @_;
	my $end = time() + ($timeout // 30);
	while (1)
	{
		$s->{h}->pump_nb;
		return time() if $s->{$which} =~ $re;
		return undef if time() > $end;
		usleep(200);
	}
}

# Run statements and wait for them; returns stdout (chomped) and leaves
# stderr in $s->{err} (cleared before).
sub run
{
	my ($s, $sql, $timeout) = @_;
	my $mark = '__byok_done_' . $s->{n}++ . '__';
	$s->{out} = '';
	$s->{err} = '';
	$s->send("$sql\n;\n\\echo $mark");
	defined $s->_wait('out', qr/\Q$mark\E\n/, $timeout // 60) or die "psql did not answer: $s->{err}";
	(my $out = $s->{out}) =~ s/\n?\Q$mark\E\n//;
	$s->{out} = '';
	chomp $out;
	return $out;
}

sub clear { my ($s) = @_; $s->{out} = ''; $s->{err} = ''; }

sub quit
{
	my ($s) = @_;
	$s->{in} .= "\\q\n";
	$s->{h}->finish;
}

1;
