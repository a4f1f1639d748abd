# ByokKms.pm — start and drive the HTTP KMS test server (test/kms/) from TAP
# tests: AWS KMS and Vault Transit APIs, faults, call counts.
package ByokKms;

use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(usleep);

my $server_py = abs_path(dirname(__FILE__) . '/../kms/http_kms_server.py');

# Start a server with fresh credentials: AWS secret, Vault token.  With
# tls => [cert, key] it also serves HTTPS on a second port ({tls_url});
# admin calls keep using plain HTTP.
# every server started, stopped at the end of the test even if it dies
my @started;
END { $_->stop for @started; }

sub start
{
	my ($class, $dir, %opts) = @_;
	my $self = bless { dir => $dir, http => HTTP::Tiny->new(timeout => 30), tls => $opts{tls} }, $class;
	push @started, $self;
	$self->{akid} = 'AKIDBYOKTEST' . int(rand(1e6));
	$self->{secret} = 'secret' . join('', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. 32);
	$self->{token} = 'hvs.' . join('', map { ('a' .. 'z', 'A' .. 'Z')[rand 52] } 1 .. 24);
	$self->{aws_creds} = "$dir/aws_credentials";
	$self->{vault_token} = "$dir/vault_token";
	$self->write_creds($self->{akid}, $self->{secret});
	$self->write_file($self->{vault_token}, "$self->{token}\n");
	# the server's own copies (the ones byok reads may be changed by tests)
	$self->write_file("$dir/server_aws_credentials",
		"[default]\naws_access_key_id = $self->{akid}\naws_secret_access_key = $self->{secret}\n");
	$self->write_file("$dir/server_vault_tokens", "$self->{token}\n");
	$self->{log} = "$dir/kms_server.log";
	$self->launch;
	return $self;
}

sub launch
{
	my ($self) = @_;
	my $dir = $self->{dir};
	unlink "$dir/port", "$dir/tls_port";
	my @tls = $self->{tls}
	  ? ('--tls-cert', $self->{tls}[0], '--tls-key', $self->{tls}[1], '--tls-port-file', "$dir/tls_port")
	  : ();
	$self->{h} = IPC::Run::start(
		[ '/usr/bin/python3', $server_py, '--port', $self->{port} // 0, '--port-file', "$dir/port",
		  '--state-file', "$dir/kms_state.json", '--aws-credentials', "$dir/server_aws_credentials",
		  '--vault-token-file', "$dir/server_vault_tokens", '--log', $self->{log}, @tls ],
		'>', "$dir/kms_stdout", '2>', "$dir/kms_stderr");
	for (1 .. 200)
	{
		last if -s "$dir/port";
		usleep(50_000);
	}
	die "KMS test server did not start" unless -s "$dir/port";
	$self->{port} = PostgreSQL::Test::Utils::slurp_file("$dir/port");
	chomp $self->{port};
	$self->{url} = "http://127.0.0.1:$self->{port}";
	if ($self->{tls})
	{
		my $tls_port = PostgreSQL::Test::Utils::slurp_file("$dir/tls_port");
		chomp $tls_port;
		$self->{tls_port} = $tls_port;
		$self->{tls_url} = "https://127.0.0.1:$tls_port";
	}
}

sub stop
{
	my ($self) = @_;
	return unless $self->{h};
	$self->{h}->signal('TERM');
	$self->{h}->finish;
	delete $self->{h};
}

sub write_file
{
	my ($self, $path, $content) = @_;
	open(my $fh, '>', $path) or die "$path: $!";
	print $fh $content;
	close $fh;
	chmod 0600, $path;
}

sub write_creds
{
	my ($self, $akid, $secret) = @_;
	$self->write_file($self->{aws_creds},
		"[default]\naws_access_key_id = $akid\naws_secret_access_key = $secret\n");
}

sub admin
{
	my ($self, $method, $path, $body) = @_;
	my $res = $self->{http}->request($method, "$self->{url}/__admin/$path",
		{ headers => { 'Content-Type' => 'application/json' },
		  content => defined $body ? encode_json($body) : '' });
	die "admin $method $path: $res->{status} $res->{content}" unless $res->{success};
	return $res->{content} ? decode_json($res->{content}) : {};
}

sub create_aws_key { my ($s) = @_; return $s->admin('POST', 'create', { kind => 'aws', count => 1 })->{ids}[0]; }

sub create_vault_key
{
	my ($s, $name) = @_;
	$s->admin('POST', 'create', { kind => 'vault', count => 1, prefix => $name });
	return "${name}0";
}

sub aws_state { my ($s, $id, $state) = @_; $s->admin('POST', "aws/keys/$id/state", { state => $state }); }
sub faults { my ($s, %f) = @_; return $s->admin('POST', 'faults', \%f); }
sub clear_faults { my ($s) = @_; return $s->admin('DELETE', 'faults'); }
sub stats { my ($s) = @_; return $s->admin('GET', 'stats'); }

# A Vault API call with the real token (for key config by the "customer").
sub vault
{
	my ($self, $method, $path, $body) = @_;
	my $res = $self->{http}->request($method, "$self->{url}/v1/$path",
		{ headers => { 'X-Vault-Token' => $self->{token}, 'Content-Type' => 'application/json' },
		  content => defined $body ? encode_json($body) : '' });
	die "vault $method $path: $res->{status} $res->{content}" unless $res->{success};
	return $res->{content} ? decode_json($res->{content}) : {};
}

# postgresql.conf lines pointing byok at this server
sub conf
{
	my ($self) = @_;
	return (
		"byok.kms_allow_insecure = on",
		"byok.aws_endpoint = '$self->{url}/'",
		"byok.aws_region = 'us-east-1'",
		"byok.aws_credentials_file = '$self->{aws_creds}'",
		"byok.vault_address = '$self->{url}'",
		"byok.vault_token_file = '$self->{vault_token}'");
}

1;
