# ByokKmip.pm — a real PyKMIP 0.10 server (KMIP 1.x over mutual TLS 1.2) for
# TAP tests: its test PKI, start/stop/kill on a fixed port, and kmipctl.py
# to create, revoke, destroy and inspect keys as the key owner or another
# client.
package ByokKmip;

use strict;
use warnings;
use Cwd qw(abs_path);
use Exporter 'import';
use File::Basename qw(dirname);
use IO::Socket::INET;
use IPC::Run;
use POSIX qw(:sys_wait_h setsid _exit);
use PostgreSQL::Test::Cluster;
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_REUSEADDR sockaddr_in inet_aton);
use Time::HiRes qw(time usleep);

our @EXPORT = qw(kmip_setup kmip_start kmip_stop kmip_kill kmip_log_tail
  kmipctl kmipctl_as kmipctl_try);

my $kms_dir = abs_path(dirname(__FILE__) . '/../kms');
my $certs_sh = "$kms_dir/kmip_certs.sh";
my $kmipctl_py = "$kms_dir/kmipctl.py";
my $python = '/usr/bin/python3';    # the one with PyKMIP (not pyenv's)
my $server = '/usr/bin/pykmip-server';
my $timeout = 15;

my @running;    # servers started by this process, stopped at END

# The PKI (see kmip_certs.sh) and server.conf in $dir, on a free port.
# Returns {dir, host, port, ca, cert, key, conf, log, db}; cert/key are the
# key owner's (CN=byok); DIR/NAME.crt and DIR/NAME.key for intruder and
# rogue-client.
sub kmip_setup
{
	my ($dir) = @_;
	die "PyKMIP is not installed (apt-get install python3-pykmip)" unless -x $server;
	system('bash', $certs_sh, $dir) == 0 or die "kmip_certs.sh $dir failed";
	$dir = abs_path($dir);
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	system('bash', $certs_sh, $dir, 'conf', $port) == 0 or die "kmip_certs.sh $dir conf failed";
	return {
		dir => $dir,
		host => '127.0.0.1',
		port => $port,
		ca => "$dir/ca.crt",
		cert => "$dir/client.crt",
		key => "$dir/client.key",
		conf => "$dir/server.conf",
		log => "$dir/server.log",
		db => "$dir/pykmip.db",
	};
}

sub kmip_log_tail
{
	my ($k, $n) = @_;
	open(my $fh, '<', $k->{log}) or return "(no $k->{log})";
	my @lines = <$fh>;
	close $fh;
	my $out = "$k->{dir}/server.out";
	if (open(my $o, '<', $out))
	{
		push @lines, "---- $out\n", <$o>;
		close $o;
	}
	$n //= 30;
	return join('', @lines > $n ? @lines[-$n .. -1] : @lines);
}

sub port_open
{
	my ($k) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => $k->{host}, PeerPort => $k->{port},
		Proto => 'tcp', Timeout => 1);
	return 0 unless $s;
	close $s;
	return 1;
}

# Free as the server sees it: it binds with SO_REUSEADDR, so connections
# left in TIME_WAIT on the port do not count.
sub port_free
{
	my ($k) = @_;
	socket(my $s, PF_INET, SOCK_STREAM, getprotobyname('tcp')) or die "socket: $!";
	setsockopt($s, SOL_SOCKET, SO_REUSEADDR, pack('l', 1)) or die "setsockopt: $!";
	my $ok = bind($s, sockaddr_in($k->{port}, inet_aton($k->{host})));
	close $s;
	return $ok ? 1 : 0;
}

sub wait_port_free
{
	my ($k) = @_;
	my $t0 = time();
	until (port_free($k))
	{
		die "port $k->{port} still busy after ${timeout}s" if time() - $t0 > $timeout;
		usleep(50_000);
	}
}

# Start the server in its own session (so its two helper processes, a
# multiprocessing manager and the policy monitor, can be killed with it);
# returns once the port accepts connections (~0.3 s). Keys persist in
# $k->{db} across restarts.
sub kmip_start
{
	my ($k) = @_;
	die "KMIP server already running (pid $k->{pid})" if $k->{pid};
	die "port $k->{port} is taken" unless port_free($k);
	my $t0 = time();
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		setsid();
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', "$k->{dir}/server.out");
		open(STDERR, '>&', \*STDOUT);
		{ exec($python, $server, '-f', $k->{conf}, '-l', $k->{log}); }
		print STDERR "exec $server: $!\n";
		_exit(127);
	}
	$k->{pid} = $pid;
	$k->{owner} = $$;
	push @running, $k;
	until (port_open($k))
	{
		if (waitpid($pid, WNOHANG) == $pid)
		{
			delete $k->{pid};
			@running = grep { $_ != $k } @running;
			kill 'KILL', -$pid;
			die "KMIP server exited at start ($?):\n" . kmip_log_tail($k);
		}
		if (time() - $t0 > $timeout)
		{
			reap($k, 'KILL');
			die "KMIP server not listening on $k->{port} after ${timeout}s:\n" . kmip_log_tail($k);
		}
		usleep(50_000);
	}
	$k->{started_in} = time() - $t0;
	return $k;
}

# Signal the server, wait for it, kill what is left of its session.
sub reap
{
	my ($k, $sig, $grace) = @_;
	my $pid = delete $k->{pid} or return;
	@running = grep { $_ != $k } @running;
	kill $sig, $pid;
	my $t0 = time();
	while (waitpid($pid, WNOHANG) == 0)
	{
		if (time() - $t0 > ($grace // $timeout))
		{
			kill 'KILL', -$pid;
			waitpid($pid, 0);
			last;
		}
		usleep(20_000);
	}
	kill 'KILL', -$pid;    # the helpers outlive a killed server
}

# Stop the server and wait until its port is free; returns the seconds it
# took. SIGINT, not SIGTERM: on SIGTERM PyKMIP only leaves its accept loop
# when accept() times out (up to 10 s); SIGINT interrupts it at once. It
# then joins each connection thread for up to 10 s, so a client holding a
# connection open makes it slow: after $grace seconds (default 5) it is
# killed.
sub kmip_stop
{
	my ($k, %opts) = @_;
	my $t0 = time();
	reap($k, 'INT', $opts{grace} // 5);
	wait_port_free($k);
	return time() - $t0;
}

# A crash: SIGKILL to the server's whole session, then wait for the port.
sub kmip_kill
{
	my ($k) = @_;
	my $t0 = time();
	if (my $pid = $k->{pid})
	{
		kill 'KILL', -$pid;
		reap($k, 'KILL');
	}
	wait_port_free($k);
	return time() - $t0;
}

# kmipctl.py as the client NAME (DIR/NAME.crt, DIR/NAME.key): (ok, stdout,
# stderr), both chomped.
sub kmipctl_try
{
	my ($k, $who, @args) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[ $python, '-B', $kmipctl_py, '--host', $k->{host}, '--port', $k->{port},
		  '--ca', $k->{ca}, '--cert', "$k->{dir}/$who.crt", '--key', "$k->{dir}/$who.key", @args ],
		'<', \undef, '>', \$out, '2>', \$err);
	chomp $out;
	chomp $err;
	return ($ok, $out, $err);
}

# kmipctl.py as NAME; its stdout, or die with its stderr.
sub kmipctl_as
{
	my ($k, $who, @args) = @_;
	my ($ok, $out, $err) = kmipctl_try($k, $who, @args);
	die "kmipctl (as $who) @args: $err\n" unless $ok;
	return $out;
}

# kmipctl.py as the key owner (CN=byok).
sub kmipctl { my ($k, @args) = @_; return kmipctl_as($k, 'client', @args); }

# A test that dies or is interrupted leaves no server behind.
for my $sig (qw(INT TERM HUP))
{
	$SIG{$sig} = sub { die "killed by SIG$sig\n" }
	  if !defined $SIG{$sig} || $SIG{$sig} eq '' || $SIG{$sig} eq 'DEFAULT';
}

END
{
	my $rc = $?;
	for my $k (@running)
	{
		next unless $k->{pid} && $k->{owner} == $$;
		kill 'KILL', -$k->{pid};
		waitpid($k->{pid}, 0);
	}
	$? = $rc;
}

1;
