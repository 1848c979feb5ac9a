# Sourced by scripts/test: a Redis and a NATS (JetStream) of this test run's own,
# on free loopback ports, so the tests pass on any machine, whatever runs on the
# default ports. Installs the servers from Debian's packages when they are
# missing, exports their URLs (AGENTWIRE_TEST_REDIS, AGENTWIRE_TEST_NATS: what
# the cluster tests use), and stops them when the script exits.

install_engine() { # command package
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] && return 0
  echo "installing Debian's $2 for the cluster tests"
  local sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get install -y -q "$2" || { $sudo_cmd apt-get update -q && $sudo_cmd apt-get install -y -q "$2"; }
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() { # port name log
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start on port $1:" >&2
  cat "$3" >&2
  return 1
}

install_engine redis-server redis-server
install_engine nats-server nats-server
engines_dir="$(mktemp -d)"
redis_port="$(free_port)"
nats_port="$(free_port)"
redis_bin="$(command -v redis-server || echo /usr/sbin/redis-server)"
nats_bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
"$redis_bin" --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$engines_dir" \
  >"$engines_dir/redis.log" 2>&1 &
redis_pid=$!
"$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$engines_dir/nats" >"$engines_dir/nats.log" 2>&1 &
nats_pid=$!
# Under `set -e` a failing command inside the trap would become the script's
# exit status (`wait` answers the killed server's 143): every step may fail here.
stop_engines() {
  kill "$redis_pid" "$nats_pid" 2>/dev/null || true
  wait "$redis_pid" "$nats_pid" 2>/dev/null || true
  rm -rf "$engines_dir" || true
}
trap stop_engines EXIT
wait_for_port "$redis_port" redis-server "$engines_dir/redis.log"
wait_for_port "$nats_port" nats-server "$engines_dir/nats.log"
export AGENTWIRE_TEST_REDIS="redis://127.0.0.1:$redis_port"
export AGENTWIRE_TEST_NATS="nats://127.0.0.1:$nats_port"
echo "test engines: $AGENTWIRE_TEST_REDIS $AGENTWIRE_TEST_NATS"
