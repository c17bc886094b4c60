# Idempotent helpers that start the services the tests and the demo need. Sourced, not run.

TANSU_VERSION=0.6.0
TANSU_PORT=${TANSU_PORT:-9092}
TANSU_LOG=${TANSU_LOG:-/tmp/tenantstream-tansu.log}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 100); do
        port_open "$port" && return 0
        sleep 0.2
    done
    echo "error: $what did not start listening on 127.0.0.1:$port" >&2
    return 1
}

ensure_postgres() {
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        echo "== starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
        wait_port 5432 PostgreSQL
    fi
}

ensure_redis() {
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "== starting Redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
        wait_port 6379 Redis
    fi
}

ensure_tansu() {
    export PATH="$HOME/.cargo/bin:$PATH"
    if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
        echo "== installing tansu $TANSU_VERSION (once per machine; about 20 minutes)"
        cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
    fi
    if ! port_open "$TANSU_PORT"; then
        echo "== starting tansu on 127.0.0.1:$TANSU_PORT (log: $TANSU_LOG)"
        nohup tansu broker --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
            --storage-engine memory://tansu/ >"$TANSU_LOG" 2>&1 &
        wait_port "$TANSU_PORT" tansu
    fi
}

# Prometheus and promtool from Debian's package (installed once per machine): the tests run a
# real Prometheus on loopback against a worker, and promtool checks and tests the alert rules.
# The package's own service is not wanted (tests start their own on a free port); without
# systemd, installing it starts nothing.
ensure_prometheus() {
    if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
        echo "== installing Debian's prometheus package (once per machine)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends prometheus; }
    fi
}
