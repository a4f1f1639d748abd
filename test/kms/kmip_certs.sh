#!/usr/bin/env bash
# kmip_certs.sh DIR            make the test PKI for a PyKMIP server in DIR
# kmip_certs.sh DIR conf PORT  write DIR/server.conf for port PORT (certs
#                              from the first form must exist)
#
# The first form writes (EC P-256 keys, valid 7 days, every file 0600, DIR
# 0700; running it again replaces them all):
#   ca.crt ca.key                   "byok test KMIP CA", the CA the server trusts
#   server.crt server.key           CN=kmip-server, SAN IP:127.0.0.1 DNS:localhost,
#                                   EKU serverAuth, signed by ca
#   client.crt client.key           CN=byok, EKU clientAuth, signed by ca
#   intruder.crt intruder.key       CN=intruder, EKU clientAuth, signed by ca
#                                   (a valid client that owns none of byok's keys)
#   rogue-ca.crt rogue-ca.key       "rogue CA", unknown to the server
#   rogue-client.crt rogue-client.key  CN=byok, EKU clientAuth, signed by
#                                   rogue-ca (the server refuses the handshake)
#   policy/                         an empty folder: PyKMIP's default policy
# The second form writes server.conf only; the SQLite database
# (DIR/pykmip.db) is left alone, so a restarted server keeps its keys.
#
# Start the server with
#   /usr/bin/python3 /usr/bin/pykmip-server -f DIR/server.conf -l DIR/server.log
# Needs only openssl. Files belong to whoever runs it (postgres in the tests).
set -euo pipefail

usage() { echo "usage: $0 DIR | $0 DIR conf PORT" >&2; exit 2; }
[ $# -eq 1 ] || [ $# -eq 3 ] || usage
mkdir -p "$1"
chmod 700 "$1"
dir=$(cd "$1" && pwd)
umask 077

if [ $# -eq 3 ]; then
	[ "$2" = conf ] || usage
	port=$3
	[[ $port =~ ^[0-9]+$ ]] || usage
	for f in server.crt server.key ca.crt; do
		[ -f "$dir/$f" ] || { echo "$0: $dir/$f is missing: run $0 $1 first" >&2; exit 1; }
	done
	mkdir -p "$dir/policy"
	cat > "$dir/server.conf" <<EOF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$dir/server.crt
key_path=$dir/server.key
ca_path=$dir/ca.crt
auth_suite=TLS1.2
policy_path=$dir/policy
enable_tls_client_auth=True
database_path=$dir/pykmip.db
logging_level=INFO
EOF
	chmod 600 "$dir/server.conf"
	exit 0
fi

days=7
serial() { echo "0x$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"; }
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/$1.key" 2>/dev/null; }

# self-signed CA: NAME CN
make_ca() {
	newkey "$1"
	openssl req -new -x509 -key "$dir/$1.key" -out "$dir/$1.crt" -days $days -subj "/CN=$2" \
		-set_serial "$(serial)" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" \
		-addext "subjectKeyIdentifier=hash"
}

# leaf: NAME CN CA EXTENSIONS...
make_leaf() {
	local name=$1 cn=$2 ca=$3
	shift 3
	newkey "$name"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "subjectKeyIdentifier=hash"
		echo "authorityKeyIdentifier=keyid"
		printf '%s\n' "$@"
	} > "$dir/$name.ext"
	openssl req -new -key "$dir/$name.key" -subj "/CN=$cn" \
		| openssl x509 -req -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" -set_serial "$(serial)" \
			-days $days -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
	rm -f "$dir/$name.ext"
}

client_ext=("keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth")
make_ca ca "byok test KMIP CA"
make_leaf server kmip-server ca "keyUsage=critical,digitalSignature,keyAgreement" \
	"extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost"
make_leaf client byok ca "${client_ext[@]}"
make_leaf intruder intruder ca "${client_ext[@]}"
make_ca rogue-ca "rogue CA"
make_leaf rogue-client byok rogue-ca "${client_ext[@]}"
mkdir -p "$dir/policy"
chmod 700 "$dir/policy"
chmod 600 "$dir"/*.crt "$dir"/*.key
