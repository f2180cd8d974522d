#!/usr/bin/env bash
# A real single-node Kafka broker (KRaft mode) for development and the integration tests.
#
#   deploy/kafka/broker.sh fetch           download the broker jars from Maven Central (cached)
#   deploy/kafka/broker.sh start [DIR]     format KRaft storage in DIR and start on a free port;
#                                          prints the bootstrap address (host:port)
#   deploy/kafka/broker.sh stop [DIR]      stop the broker started in DIR and wait for it to exit
#   deploy/kafka/broker.sh restart [DIR]   stop it and start it again on the same data and port
#   deploy/kafka/broker.sh bootstrap [DIR] print the bootstrap address of the broker in DIR
#   deploy/kafka/broker.sh cache           fetch, then print the cache directory (its libs/
#                                          and classes.jsa; deploy/kafka/cluster.py uses them)
#
# Besides its PLAINTEXT listener the broker has two secured ones, for the tests of the
# ledger against a secured cluster (a development broker's keys and passwords, never a real
# one's), both trusting and trusted through a development CA (DIR/ca.pem; made once per cache
# with the JDK's keytool):
#   SASL_SSL (DIR/bootstrap-sasl-ssl): TLS, then SASL PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
#     as user `ledger`, password `ledger-secret`, or OAUTHBEARER with an unsigned JWT (`alg`
#     `none`, Kafka's default validator: for development only) whose `sub` is the user;
#   SSL (DIR/bootstrap-ssl): mutual TLS, a client certificate the CA signed required (one is
#     in DIR/client.p12, PKCS12, password `broker-keystore`).
# It runs Kafka's StandardAuthorizer. Super users: ANONYMOUS (the PLAINTEXT listener and the
# controller's), `ledger` and the client certificate's CN=ledger; two SCRAM-SHA-512 and PLAIN
# users are not, `acl-ledger` and `acl-publisher` (passwords `<user>-secret`), so that a test
# can grant them ACLs and see what each needs (tests/test_kafka_acls.py).
#
# KAFKA_BROKER_PROPERTIES, if set, is added to the broker's server.properties at `start`
# (lines of key=value; a key given there wins over the defaults).
#
# DIR defaults to ./var/kafka. The jars are cached in $KAFKA_CACHE_DIR
# (default ~/.cache/consent-ledger/kafka-<version>), so only the first start downloads; so is
# the broker's class-data-sharing archive, which `fetch` makes once (see build_archive).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
cache="${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/consent-ledger/kafka-$kafka_version}"
libs="$cache/libs"
archive="$cache/classes.jsa"
tls="$cache/tls-2"  # -2: a CA and a client key (the first held one self-signed key)
tls_password="broker-keystore"  # of a development broker's keys, in its cache
cmd="${1:-}"
dir="${2:-${KAFKA_RUN_DIR:-./var/kafka}}"

die() { echo "broker.sh: $*" >&2; exit 1; }

# One fetch at a time per cache: the tests' processes each start a broker, and may all
# find the cache empty at once.
fetch() {
    mkdir -p "$cache"
    exec 9>"$cache/.lock"
    flock 9
    fetch_libs
    make_tls
    build_archive
    exec 9>&-
}

# The TLS listeners' keys: a development CA, the broker's key and certificate signed by it
# (for 127.0.0.1), a client's (CN=ledger) for the listener that asks for one, and the CA as
# the broker's truststore (all PKCS12, which the broker reads; the CA's certificate also as
# PEM, which clients trust). Made once per cache with the JDK's keytool.
make_tls() {
    if [ -f "$tls/.complete" ]; then return 0; fi
    command -v keytool >/dev/null || die "keytool is not installed: it comes with the JDK"
    rm -rf "$tls" && mkdir -p "$tls"
    ( cd "$tls" && make_tls_files ) > "$tls/keytool.log" 2>&1 \
        || { cat "$tls/keytool.log" >&2; die "keytool could not make the brokers' TLS keys"; }
    touch "$tls/.complete"
}

make_tls_files() {
    local who cn san
    kt -genkeypair -alias ca -dname "CN=consent-ledger development CA" -ext "BC:c=ca:true" \
        -keystore ca.p12
    kt -exportcert -rfc -alias ca -keystore ca.p12 -file ca.pem
    for who in broker client; do
        cn=localhost; san=(-ext "SAN=ip:127.0.0.1,dns:localhost")
        if [ "$who" = client ]; then cn=ledger; san=(); fi
        kt -genkeypair -alias "$who" -dname "CN=$cn" -keystore "$who.p12"
        kt -certreq -alias "$who" -keystore "$who.p12" -file "$who.csr"
        kt -gencert -alias ca -keystore ca.p12 -infile "$who.csr" -outfile "$who.crt" -rfc \
            "${san[@]}"
        kt -importcert -alias ca -file ca.pem -keystore "$who.p12" -noprompt
        kt -importcert -alias "$who" -file "$who.crt" -keystore "$who.p12"
    done
    kt -importcert -alias ca -file ca.pem -keystore trust.p12 -noprompt
}

# keytool with this cache's store type, password and key kind; stops make_tls_files on failure.
kt() {
    local extra=()
    case "$1" in -genkeypair) extra=(-keyalg EC -groupname secp256r1 -validity 3650 -keypass "$tls_password") ;; esac
    case "$1" in -gencert) extra=(-validity 3650) ;; esac
    keytool "$@" "${extra[@]}" -storetype PKCS12 -storepass "$tls_password" || exit 1
}

fetch_libs() {
    if [ -f "$libs/.complete" ]; then return 0; fi
    command -v mvn >/dev/null || die "mvn is not installed: Maven is needed to fetch the broker"
    command -v java >/dev/null || die "java is not installed: Java 17+ is needed to run the broker"
    mkdir -p "$libs"
    mvn -q -B -f "$here/pom.xml" package -Dbroker.libs="$libs" >&2 \
        || die "could not fetch org.apache.kafka:kafka_2.13:$kafka_version from Maven Central"
    rm -rf "$here/target"
    touch "$libs/.complete"
}

# The JVM's class-data-sharing archive of the classes a broker loads as it starts, made once
# by starting and stopping a broker (17 s here). Each JVM of the broker (the storage format
# and the broker itself) then maps those classes instead of loading, verifying and parsing
# some 7,000 of them from the jars: measured on this machine kind, a start to the port open
# took 11.6 s without it and 7.3 s with it, the storage format 3.2 s and 1.7 s. The tests
# start a broker or restart one about ten times. An archive that failed to build is not
# used (the brokers start as before); one the JVM was not made for (another JDK's, by the
# JDK's documentation; another classpath's, tried) it ignores, but a truncated one crashed
# it (SIGBUS, tried), so the archive is checked before it is put in place.
build_archive() {
    if [ -f "$archive" ]; then return 0; fi
    local work made
    work="$(mktemp -d)"
    made="$work/classes.jsa"
    if ( dir="$work" && configure && format && launch "$(listener_port)" \
            "-XX:ArchiveClassesAtExit=$made" && stop ) > "$work/build.log" 2>&1 \
        && java -Xshare:on "-XX:SharedArchiveFile=$made" -cp "$libs/*" \
            kafka.tools.StorageTool version > /dev/null 2>&1; then
        mv "$made" "$archive"
    else
        echo "broker.sh: no class-data-sharing archive (the broker starts without it):" >&2
        tail -n 20 "$work/build.log" >&2 || true
    fi
    rm -rf "$work"
}

# A KRaft cluster id: 16 random bytes in URL-safe base64. Never one that begins with "-":
# the storage tool takes it for an option and the start attempt failed (1 in 64), as Kafka's
# own Uuid.randomUuid avoids too.
cluster_id() {
    python3 -c 'import base64,uuid
while True:
    i = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not i.startswith("-"):
        break
print(i)'
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

port_open() {
    python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1",int(sys.argv[1]))))' "$1"
}

running_pid() {
    [ -f "$dir/broker.pid" ] || return 1
    local pid; pid="$(cat "$dir/broker.pid")"
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    fetch
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if running_pid >/dev/null; then cat "$dir/bootstrap"; return 0; fi
    # A free port can be taken by another process between choosing it and binding it; a
    # broker that exits during start is tried again on fresh ports.
    local attempt
    for attempt in 1 2 3; do
        if start_once; then cat "$dir/bootstrap"; return 0; fi
        echo "broker.sh: start attempt $attempt failed" >&2
    done
    die "the broker did not start (logs in $dir)"
}

start_once() {
    configure && format && launch "$(listener_port)"
}

# A fresh data directory and configuration in $dir, on three free ports.
configure() {
    rm -rf "$dir/data" "$dir/broker.pid" "$dir/bootstrap" "$dir/bootstrap-sasl-ssl" \
        "$dir/bootstrap-ssl"
    local port cport sport mport
    port="$(free_port)"; cport="$(free_port)"; sport="$(free_port)"; mport="$(free_port)"
    while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
    while [ "$sport" = "$port" ] || [ "$sport" = "$cport" ]; do sport="$(free_port)"; done
    while [ "$mport" = "$port" ] || [ "$mport" = "$cport" ] || [ "$mport" = "$sport" ]; do
        mport="$(free_port)"
    done
    cp "$tls/ca.pem" "$dir/ca.pem"
    cp "$tls/client.p12" "$dir/client.p12"
    cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SSL://127.0.0.1:$mport,SASL_SSL://127.0.0.1:$sport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SSL://127.0.0.1:$mport,SASL_SSL://127.0.0.1:$sport
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
listener.name.ssl.ssl.client.auth=required
listener.name.ssl.ssl.keystore.type=PKCS12
listener.name.ssl.ssl.keystore.location=$tls/broker.p12
listener.name.ssl.ssl.keystore.password=$tls_password
listener.name.ssl.ssl.key.password=$tls_password
listener.name.ssl.ssl.truststore.type=PKCS12
listener.name.ssl.ssl.truststore.location=$tls/trust.p12
listener.name.ssl.ssl.truststore.password=$tls_password
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_ledger="ledger-secret" user_acl-ledger="acl-ledger-secret" user_acl-publisher="acl-publisher-secret";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$tls_password
listener.name.sasl_ssl.ssl.key.password=$tls_password
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:ledger;User:CN=ledger
PROPS
    # A test's own settings, one `key=value` a line, after the defaults above (the broker
    # takes the last of a repeated key): a broker's read-only settings, such as
    # transaction.max.timeout.ms, can be tried no other way.
    if [ -n "${KAFKA_BROKER_PROPERTIES:-}" ]; then
        printf '%s\n' "$KAFKA_BROKER_PROPERTIES" >> "$dir/server.properties"
    fi
    cat > "$dir/log4j2.properties" <<'LOG'
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=${sys:kafka.logs.dir}/broker.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
LOG
}

format() {
    jvm_options
    java "${jvm[@]}" -cp "$libs/*" kafka.tools.StorageTool format \
        -t "$(cluster_id)" \
        -S "SCRAM-SHA-256=[name=ledger,password=ledger-secret]" \
        -S "SCRAM-SHA-512=[name=ledger,password=ledger-secret]" \
        -S "SCRAM-SHA-512=[name=acl-ledger,password=acl-ledger-secret]" \
        -S "SCRAM-SHA-512=[name=acl-publisher,password=acl-publisher-secret]" \
        -c "$dir/server.properties" > "$dir/format.log" 2>&1 \
        || { cat "$dir/format.log" >&2; return 1; }
}

listener_port() {
    sed -n 's/^listeners=PLAINTEXT:\/\/127.0.0.1:\([0-9]*\),.*/\1/p' "$dir/server.properties"
}

# The JVM options of a broker in $dir, into the array `jvm`. The heap starts at its maximum,
# as Kafka's own kafka-server-start.sh sets it (-Xms equal to -Xmx) and compose.yaml's image
# keeps it: started at 256 MB, the heap grew under the intake writer's transactions with the
# collector's concurrent cycles, which took the 2 cores from the writer (the broker's CPU a
# record 137 and 155 us against 45 and 45, the writer's rate 4,595 and 5,534 facts/s against
# 6,313 and 6,940, the raw loop's unchanged; runs taking turns, 2026-12-06, issue 3's note).
jvm_options() {
    jvm=(-Xms768m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
         "-Dkafka.logs.dir=$dir" "-Dlog4j2.configurationFile=$dir/log4j2.properties")
    if [ -f "$archive" ]; then jvm+=("-XX:SharedArchiveFile=$archive"); fi
}

# Starts the broker configured in $dir on `port`; any further arguments are JVM options.
launch() {
    local port="$1"
    shift
    jvm_options
    nohup java "${jvm[@]}" "$@" -cp "$libs/*" kafka.Kafka "$dir/server.properties" \
        >> "$dir/stdout.log" 2>&1 < /dev/null 9>&- &
    echo $! > "$dir/broker.pid"
    # Readiness: the broker is usable once its client port accepts connections.
    local deadline=$((SECONDS + 90))
    until port_open "$port"; do
        if ! running_pid >/dev/null; then
            tail -n 40 "$dir/stdout.log" >&2 || true
            tail -n 40 "$dir/broker.log" >&2 2>/dev/null || true
            echo "broker.sh: the broker exited during start" >&2
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            stop
            echo "broker.sh: the broker did not open port $port within 90 s" >&2
            return 1
        fi
        sleep 0.2
    done
    echo "127.0.0.1:$port" > "$dir/bootstrap"
    sed -n 's/^listeners=.*,SASL_SSL:\/\/\(127.0.0.1:[0-9]*\)$/\1/p' "$dir/server.properties" \
        > "$dir/bootstrap-sasl-ssl"
    sed -n 's/^listeners=.*,SSL:\/\/\(127.0.0.1:[0-9]*\),SASL_SSL.*$/\1/p' "$dir/server.properties" \
        > "$dir/bootstrap-ssl"
}

# Start a stopped broker again on its data and ports (a broker restart, not a new cluster).
restart() {
    fetch
    dir="$(cd "$dir" && pwd)"
    [ -f "$dir/server.properties" ] && [ -d "$dir/data" ] || die "no broker was started in $dir"
    stop
    launch "$(listener_port)" || die "the broker did not restart (logs in $dir)"
    cat "$dir/bootstrap"
}

stop() {
    local pid
    pid="$(running_pid)" || { rm -f "$dir/broker.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null || true; fi
        sleep 0.2
    done
    rm -f "$dir/broker.pid"
}

case "$cmd" in
    fetch) fetch ;;
    start) start ;;
    stop) stop ;;
    restart) restart ;;
    cache) fetch && echo "$cache" ;;
    bootstrap) [ -f "$dir/bootstrap" ] && running_pid >/dev/null && cat "$dir/bootstrap" || die "no broker running in $dir" ;;
    *) echo "usage: $0 fetch|start|stop|restart|bootstrap|cache [DIR]" >&2; exit 2 ;;
esac
