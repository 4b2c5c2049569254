#!/usr/bin/env bash
# bench/run.sh [--quick] — unstuck's benchmark suite, in one run.
#
# Installs what it lacks (nginx and its stream module, haproxy, wrk,
# strace), builds unstuck and the helper programs in bench/cmd, then
# measures unstuck beside nginx, HAProxy, a plain fasthttp.HostClient proxy
# and net/http/httputil, all on 127.0.0.1, one after another:
#   1. throughput and latency (wrk), and requests per CPU-second of the proxy
#   2. half-close detection: upstream FIN on an idle pooled connection to
#      the proxy's close, 200 connections (FINs one every 5 ms, then at
#      once) and 8,000 at once
#   3. the keep-alive race: failed requests and duplicate POSTs; then an
#      upstream that closes connections idle for 300 ms, without and with
#      Keep-Alive: timeout=0.3, and POSTs in bursts 250-350 ms apart
#      through nginx, HAProxy and unstuck at their defaults: failed and
#      duplicate POSTs per proxy (8 connections, 50 bursts; --quick: 25;
#      IDLE_BURSTS overrides)
#   4. unstuck's RSS per idle pooled upstream and per idle app connection
#   5. CLOSE_WAIT sockets under a legacy client
#   6. go test -bench for pool/ and proxy/
#   7. TCP mode ("tcp"): unstuck's protocol: tcp beside HAProxy mode tcp
#      (as is, and splicing both ways), nginx stream proxy_pass and a
#      direct connection, all to one upstream (bench/cmd/tcpbench, which
#      is also the client), interleaved in rounds: MB/s of one bulk
#      stream (2 GiB) one way, the other way and both ways at once;
#      connections per second of short pairs (connect, 128-byte request,
#      512-byte reply, close) from 32 workers, each run bounded by a count
#      (20,000) and a time (5 s); each proxy's CPU-seconds per GB and
#      CPU-ms per 1,000 pairs (utime and stime from /proc/PID/stat); the
#      ratios of unstuck to each, per round. Then a CPU profile of unstuck
#      under the pairs load (its debug listener's /debug/pprof/profile);
#      unstuck under strace -f -c during a bulk transfer (thousands of
#      splice calls, a handful of read/write); and each proxy under
#      strace -f -c for 2,000 pairs (system calls per pair). 5 rounds;
#      --quick: 1 round of 256 MiB and 5,000 pairs or 2 s. TCP_BULK,
#      TCP_ROUNDS, TCP_CPS_MAX and TCP_CPS_TIME override the sizes.
#   8. TLS to the upstream ("tls"): unstuck with tls enabled beside nginx
#      (proxy_ssl with session reuse, verify, SNI; upstream keepalive,
#      HTTP/1.1) and HAProxy (ssl verify required, sni, http-reuse
#      always), all to bench/cmd/tlsbench: HTTPS servers with a CA and a
#      certificate it makes at start, which count each proxy's handshakes,
#      full and resumed. wrk -c64 to each in rounds, the three in turn,
#      each also to a plain-HTTP listener of the same upstream (what TLS
#      costs each proxy): req/s, p99, req/CPU-s and their ratios round by
#      round; a CPU profile of unstuck under wrk (its debug listener's
#      /debug/pprof/profile). Then, against listeners that close
#      connections idle for 1 s, a paced client (tlsbench pace: bursts of
#      8 requests at once, 1.2 s idle after each, bounded by count and
#      per-request timeouts): handshakes per 1,000 requests, full and
#      resumed, per proxy. 5 wrk rounds and 3 paced rounds of 12 bursts
#      (8 to 14 minutes, by how often a busy machine makes wrk runs
#      repeat); --quick: 2 wrk rounds, 1 paced round of 5 bursts.
#      TLS_ROUNDS, TLS_PACE_ROUNDS and TLS_BURSTS override the counts.
#   9. latency at fixed rates ("fixedrate"): bench/cmd/openloop, an
#      open-loop generator (requests on a fixed schedule, latency from each
#      request's intended send time), to direct, nginx, HAProxy, the
#      fasthttp proxy and unstuck, all to one nginx upstream, at 200 req/s
#      over 8 connections and 2k, 10k and 30k req/s over 64, each rate in
#      rounds over the five in turn: p50/p90/p99/p99.9/max, each proxy's
#      added latency (minus direct's) and its ratio to nginx's added
#      latency, and each proxy's CPU time per request. Then the same with
#      each proxy pinned to CPU 1 alone (a sidecar with one CPU: nginx one
#      worker, HAProxy one thread, Go GOMAXPROCS 1) and generator and
#      upstream on CPU 0, at 200/8, 2k, 5k and 10k req/s. 3 rounds of 10 s
#      per run (~20 minutes); --quick: 2 rounds of 3 s (~6 minutes).
#      FR_RATES and FR_PIN_RATES (RATE/CONNS ...; FR_PIN_RATES="" skips
#      the pinned runs), FR_ROUNDS and FR_DUR override.
# It prints the tables and writes them to bench/RESULTS.md. It asserts
# nothing. Full run ~50 minutes (the tcp phase ~8, tls ~10, fixedrate ~20),
# --quick ~11.
# Needs root to install packages.
# BENCH_PHASES="throughput race" runs only those phases (names: throughput
# halfclose race memory legacy microbench tcp tls fixedrate). Such a partial run keeps
# the other sections of bench/RESULTS.md: each section it measured replaces
# the one of the same title (or is added at the end), with a line that
# says when and at which commit it was measured.
set -uo pipefail

QUICK=0
case "${1:-}" in
--quick) QUICK=1 ;;
"") ;;
*)
	echo "usage: bench/run.sh [--quick]" >&2
	exit 2
	;;
esac

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=$ROOT/bench/.bin
OUT=$ROOT/bench/RESULTS.md
RUN_OUT=$OUT # where say writes: $OUT, or for a partial run a file merged into it at the end
TMP=$(mktemp -d /tmp/unstuck-bench.XXXXXX)

if ((QUICK)); then
	DUR=3s WARM=1s ROUNDS=1 RACE_N=10000 LEGACY_ROUNDS=2 BENCHTIME=200ms IDLE_BURSTS=${IDLE_BURSTS:-25}
	TCP_BULK=${TCP_BULK:-256MiB} TCP_ROUNDS=${TCP_ROUNDS:-1} TCP_CPS_MAX=${TCP_CPS_MAX:-5000} TCP_CPS_TIME=${TCP_CPS_TIME:-2s} TCP_PROF=3 TCP_STRACE_PAIRS=500
	TLS_ROUNDS=${TLS_ROUNDS:-2} TLS_PACE_ROUNDS=${TLS_PACE_ROUNDS:-1} TLS_BURSTS=${TLS_BURSTS:-5} TLS_PROF=3
	FR_ROUNDS=${FR_ROUNDS:-2} FR_DUR=${FR_DUR:-3s}
else
	DUR=6s WARM=1s ROUNDS=3 RACE_N=50000 LEGACY_ROUNDS=4 BENCHTIME=1s IDLE_BURSTS=${IDLE_BURSTS:-50}
	TCP_BULK=${TCP_BULK:-2GiB} TCP_ROUNDS=${TCP_ROUNDS:-5} TCP_CPS_MAX=${TCP_CPS_MAX:-20000} TCP_CPS_TIME=${TCP_CPS_TIME:-5s} TCP_PROF=10 TCP_STRACE_PAIRS=2000
	TLS_ROUNDS=${TLS_ROUNDS:-5} TLS_PACE_ROUNDS=${TLS_PACE_ROUNDS:-3} TLS_BURSTS=${TLS_BURSTS:-12} TLS_PROF=10
	FR_ROUNDS=${FR_ROUNDS:-3} FR_DUR=${FR_DUR:-10s}
fi
ALL_PHASES="throughput halfclose race memory legacy microbench tcp tls fixedrate"
PHASES=${BENCH_PHASES:-$ALL_PHASES}
FR_RATES=${FR_RATES:-200/8 2000/64 10000/64 30000/64} # fixedrate phase: req/s / connections
FR_PIN_RATES=${FR_PIN_RATES-200/8 2000/64 5000/64 10000/64} # the same with each proxy on one CPU; empty: skip
FR_WARM=1s
HC_SIZES=200/5ms,200,8000 # half-close phase: idle connections, /GAP: FINs one every GAP, else at once
MEM_N=8000        # connections of each kind for the memory phase
POOL=512          # idle upstream connections each proxy keeps (nginx: half per worker)
BIG_POOL=8192     # the same for the half-close and memory phases

# Ports: phase base + 0 upstream, +1 nginx, +2 HAProxy, +3 fasthttp,
# +4 httputil, +5 unstuck.
TPUT=19000 HALF=19100 RACE=19200 LEGACY=19300 MEM=19400
# The fixedrate phase: +0 upstream, then as above (no httputil).
FIXED=19700
# The race phase's idle-timeout part: +0 upstream, +1 nginx, +2 HAProxy,
# +5 unstuck, +9 unstuck's admin listener.
IDLE=19800
# The tcp phase: +0 upstream (tcpbench), +1 nginx stream, +2 HAProxy,
# +3 HAProxy with splice, +5 unstuck, +8 and +9 unstuck's debug and admin
# listeners.
TCP=19500
# The tls phase: +0 tlsbench's /stats; the proxies' ports to the keep-alive
# TLS upstream +1 nginx, +2 HAProxy, +5 unstuck, to the one that closes
# idle connections +11, +12, +15, and to the plain-HTTP one +41, +42, +45;
# tlsbench's listeners for each proxy +20, +30 and +50 (+21 nginx's...);
# +8 and +9 unstuck's debug and admin listeners.
TLS=19600
TLS_NAME=backend.test # the certificate's name, sent as SNI and verified
TLS_WRK_CONNS=64      # wrk's connections
TLS_PACE_CONNS=8      # the paced client's connections: requests per burst
IDLE_CONNS=8          # the race phase's idle-timeout part: client connections, POSTs per burst

# ---------------------------------------------------------------- processes

declare -A STARTED # pid -> name, every process this script started and has not stopped

cleanup() {
	local pid
	for pid in "${!STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	sleep 0.5
	for pid in "${!STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null; done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME LOG CMD...: runs CMD in the background; its pid is in $LAST.
start() {
	local name=$1 log=$2
	shift 2
	"$@" >"$log" 2>&1 &
	LAST=$!
	STARTED[$LAST]=$name
}

# run OUT ERR CMD...: runs CMD to completion with its output in OUT and
# ERR. It runs in the background so that a signal reaches the trap at once.
run() {
	local out=$1 err=$2 pid rc
	shift 2
	"$@" >"$out" 2>"$err" &
	pid=$!
	STARTED[$pid]=$1
	wait "$pid"
	rc=$?
	unset "STARTED[$pid]"
	return $rc
}

# stop PID...: TERM, wait up to 5 s, then KILL.
stop() {
	local pid i
	for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "$@"; do
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		unset "STARTED[$pid]"
	done
}

# wait_port PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
	local i
	for ((i = 0; i < 100; i++)); do
		ss -Hltn "sport = :$1" | grep -q . && return 0
		sleep 0.1
	done
	echo "nothing listens on port $1" >&2
	return 1
}

# wait_ports DIR BASE OFFSETS PID...: until something listens on
# 127.0.0.1:BASE+OFFSET for each of OFFSETS (such as "1 2 5"). If one
# never does, it shows the ends of DIR's logs, stops the PIDs and returns 1.
wait_ports() {
	local dir=$1 base=$2 offsets=$3 p
	shift 3
	for p in $offsets; do
		if ! wait_port $((base + p)); then
			tail -n 5 "$dir"/*.log "$dir"/*.stderr >&2
			stop "$@"
			return 1
		fi
	done
}

# children PID: the child processes of PID (nginx's workers).
children() { pgrep -P "$1" | tr '\n' ' '; }

# stat_ticks EXPR PID...: the sum over the processes of EXPR, an awk
# expression over the fields of /proc/PID/stat after the ")" that closes
# comm, where utime is $12 and stime $13.
stat_ticks() {
	local expr=$1 pid sum=0 t
	shift
	for pid in "$@"; do
		t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk "{print $expr}")
		sum=$((sum + ${t:-0}))
	done
	echo "$sum"
}

# cpu_ticks PID...: user+sys clock ticks used so far by all of them.
cpu_ticks() { stat_ticks '$12 + $13' "$@"; }

# user_ticks PID...: the part of that spent in user space (utime).
user_ticks() { stat_ticks '$12' "$@"; }

# busy_ticks: clock ticks all CPUs of the machine spent busy so far.
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# softnet_drops: packets the kernel dropped so far because a CPU's input
# backlog (net.core.netdev_max_backlog) was full; loopback traffic goes
# through it.
softnet_drops() {
	local s=0 processed dropped rest
	while read -r processed dropped rest; do s=$((s + 16#$dropped)); done </proc/net/softnet_stat
	echo "$s"
}

# drops_note: after a phase's table, the backlog drops since quiet_wait.
drops_note() {
	local d=$(($(softnet_drops) - DROPS0))
	((d > 0)) && say "" && say "The kernel dropped $d packets during this phase for a full input backlog (net.core.netdev_max_backlog $(cat /proc/sys/net/core/netdev_max_backlog))."
	return 0
}

# quiet_wait: before a phase, wait (30 s at most) for a second in which the
# machine is under 10% busy, so that other work does not skew it. Sets
# QUIET_NOTE for the phase's section when it had to give up.
quiet_wait() {
	local i pct=0 b0 t0 b1 t1
	QUIET_NOTE=""
	DROPS0=$(softnet_drops)
	for ((i = 0; i < 30; i++)); do
		read -r b0 t0 < <(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat)
		sleep 1
		read -r b1 t1 < <(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat)
		pct=$((100 * (b1 - b0) / (t1 - t0 + 1)))
		if ((pct < 10)); then
			((i)) && note "   waited ${i}s for other work on the machine to stop"
			return 0
		fi
	done
	note "   the machine is still ${pct}% busy with other work; measuring anyway"
	QUIET_NOTE="The machine was ${pct}% busy with other work when this phase started; its numbers may be skewed."
}

# ------------------------------------------------------------------ setup

# NGINX_STREAM: nginx's stream module (Debian's libnginx-mod-stream).
NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so

say() { printf '%s\n' "$*" | tee -a "$RUN_OUT"; }
# say_section TITLE: a phase's section heading, and the note on the
# machine's load if there is one.
say_section() {
	say "## $1"
	say ""
	if [[ -n $QUIET_NOTE ]]; then say "$QUIET_NOTE" && say ""; fi
}
# say_code: stdin, as a code block.
say_code() {
	say '```'
	tee -a "$RUN_OUT"
	say '```'
}
# say_pprof_tops PROFILE NODES CUM_TITLE SELF_TITLE: PROFILE's top NODES
# functions by cumulative time and its top 20 by their own time, each
# under its title.
say_pprof_tops() {
	say "$3"
	say ""
	go tool pprof -top -cum -nodecount="$2" "$1" 2>/dev/null | sed -n '/^Showing nodes/,$p' | say_code
	say ""
	say "$4"
	say ""
	go tool pprof -top -nodecount=20 "$1" 2>/dev/null | sed -n '/^Showing nodes/,$p' | say_code
}
note() { printf '==> %s\n' "$*" >&2; }

install_missing() {
	local need=() created=0
	command -v nginx >/dev/null || need+=(nginx)
	command -v haproxy >/dev/null || need+=(haproxy)
	command -v wrk >/dev/null || need+=(wrk)
	if [[ " $PHASES " == *" tcp "* ]]; then
		[[ -e $NGINX_STREAM ]] || need+=(libnginx-mod-stream)
		command -v strace >/dev/null || need+=(strace)
	fi
	((${#need[@]})) || return 0
	if ((EUID != 0)); then
		echo "bench/run.sh: missing ${need[*]}; run as root or install them" >&2
		exit 1
	fi
	note "installing ${need[*]}"
	# Keep the packages from starting their system services on :80.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		created=1
	fi
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	local rc=$?
	((created)) && rm -f /usr/sbin/policy-rc.d
	((rc == 0)) || exit 1
}

build() {
	note "building unstuck and bench/cmd/..."
	mkdir -p "$BIN"
	go build -o "$BIN/unstuck" ./cmd/unstuck || exit 1
	go build -o "$BIN/" ./bench/cmd/... || exit 1
}

# ---------------------------------------------------------------- proxies

# nginx_main DIR [WORKERS]: the main context of the proxies' nginx.conf:
# WORKERS (default two) workers with room for 19,000 connections, the pid
# file and error log in DIR.
nginx_main() {
	cat <<EOF
worker_processes ${2:-2};
worker_rlimit_nofile 20000;
daemon off;
pid $1/nginx.pid;
error_log $1/nginx-error.log warn;
events { worker_connections 19000; }
EOF
}

# nginx_http_base DIR [long-keepalive]: the first lines of an nginx.conf's
# http context: its files in DIR, no access log; with long-keepalive,
# client connections kept for 10 million requests or 300 s idle.
nginx_http_base() {
	cat <<EOF
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
	if [[ ${2:-} == long-keepalive ]]; then
		printf '    keepalive_requests 10000000;\n    keepalive_timeout 300s;\n'
	fi
}

# nginx_proxy_server LISTEN: an http server block that listens on LISTEN
# and proxies everything to upstream backend over HTTP/1.1 keep-alive.
nginx_proxy_server() {
	cat <<EOF
    server {
        listen $1;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
}

# start_nginx NAME DIR <CONF: a proxy's nginx on CONF, written to
# DIR/nginx.conf, its files in DIR; the master's pid is in $LAST.
start_nginx() {
	cat >"$2/nginx.conf"
	# shellcheck disable=SC2086 # PROXY_PIN: a command prefix or nothing
	start "$1" "$2/nginx.stderr" ${PROXY_PIN:-} nginx -p "$2" -c "$2/nginx.conf" -e "$2/nginx-error.log"
}

# start_haproxy NAME DIR <CFG: HAProxy on CFG, written to DIR/NAME.cfg, its
# log DIR/NAME.log; its pid is in $LAST.
start_haproxy() {
	cat >"$2/$1.cfg"
	# shellcheck disable=SC2086 # PROXY_PIN: a command prefix or nothing
	start "$1" "$2/$1.log" ${PROXY_PIN:-} haproxy -db -f "$2/$1.cfg"
}

# haproxy_http_defaults: the defaults section of the HTTP phases' HAProxy
# (bar the idle-timeout race's, which keeps HAProxy's own): connections
# kept 300 s and reused always.
haproxy_http_defaults() {
	cat <<EOF
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
EOF
}

# start_upstream_nginx PORT: the fast upstream of the throughput phase.
# UP_PIN, if set, is a command prefix such as "taskset -c 0".
start_upstream_nginx() {
	local dir=$TMP/upstream-nginx
	mkdir -p "$dir"
	cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
$(nginx_http_base "$dir" long-keepalive)
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / { return 200 "hello"; }
    }
}
EOF
	# shellcheck disable=SC2086 # UP_PIN: a command prefix or nothing
	start upstream-nginx "$dir/stderr" ${UP_PIN:-} nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
	UPSTREAM_PID=$LAST
	if ! wait_port "$1"; then
		tail -n 5 "$dir/error.log" >&2
		stop "$UPSTREAM_PID"
		return 1
	fi
	UPSTREAM_PIDS="$UPSTREAM_PID $(children "$UPSTREAM_PID")"
}

# start_proxies BASE POOL: the five proxies of a phase, forwarding to
# 127.0.0.1:BASE. Sets NGINX_PIDS, HAPROXY_PID, FH_PID, HU_PID, UNSTUCK_PID
# and PROXY_PIDS. PROXY_PIN, if set, is a command prefix such as
# "taskset -c 1" for every proxy, and PROXY_WORKERS (default 2) nginx's
# workers and HAProxy's threads; the Go proxies take GOMAXPROCS from the
# CPUs they may run on.
start_proxies() {
	local base=$1 pool=$2 up=127.0.0.1:$1 dir=$TMP/proxies-$1 workers=${PROXY_WORKERS:-2} pin=${PROXY_PIN:-}
	mkdir -p "$dir"
	# nginx keeps its keepalive cache per worker: half the pool each, but
	# for the half-close phase each worker may hold every connection.
	local keep=$((pool / 2))
	((pool > 1024)) && keep=$pool

	start_nginx nginx "$dir" <<EOF
$(nginx_main "$dir" "$workers")
http {
$(nginx_http_base "$dir" long-keepalive)
    upstream backend {
        server $up;
        keepalive $keep;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
$(nginx_proxy_server "127.0.0.1:$((base + 1)) backlog=4096")
}
EOF
	local nginx_master=$LAST

	start_haproxy haproxy "$dir" <<EOF
global
    nbthread $workers
    maxconn 9000
    # Let idle server connections use the file descriptors: the default
    # ratios (25/20%) drop pooled connections during the 8,000 burst.
    tune.pool-high-fd-ratio 100
    tune.pool-low-fd-ratio 95
$(haproxy_http_defaults)
frontend fe
    bind 127.0.0.1:$((base + 2))
    maxconn 9000
    default_backend be
backend be
    server up $up pool-purge-delay 300s
EOF
	HAPROXY_PID=$LAST

	# shellcheck disable=SC2086
	start fasthttp "$dir/fhproxy.log" $pin "$BIN/fhproxy" -listen "127.0.0.1:$((base + 3))" -upstream "$up" -max-conns $((pool * 2))
	FH_PID=$LAST
	# shellcheck disable=SC2086
	start httputil "$dir/httputil.log" $pin "$BIN/httputilproxy" -listen "127.0.0.1:$((base + 4))" -upstream "$up" -max-idle "$pool"
	HU_PID=$LAST

	cat >"$dir/unstuck.yaml" <<EOF
admin: {listen: "", debug_listen: ""}
listeners:
  app:
    listen: 127.0.0.1:$((base + 5))
upstreams:
  backend:
    endpoints: ["$up"]
    pool: {max_conns: $((pool * 2)), max_idle: $pool, learn_idle_timeout: ${UNSTUCK_LEARN:-true}}
EOF
	# shellcheck disable=SC2086
	start unstuck "$dir/unstuck.log" $pin "$BIN/unstuck" --config "$dir/unstuck.yaml"
	UNSTUCK_PID=$LAST
	UNSTUCK_LOG=$dir/unstuck.log

	wait_ports "$dir" "$base" "1 2 3 4 5" "$nginx_master" "$HAPROXY_PID" "$FH_PID" "$HU_PID" "$UNSTUCK_PID" || return 1
	NGINX_PIDS="$nginx_master $(children "$nginx_master")"
	PROXY_PIDS="$NGINX_PIDS $HAPROXY_PID $FH_PID $HU_PID $UNSTUCK_PID"
}

stop_proxies() {
	# shellcheck disable=SC2086 # word splitting intended
	stop $PROXY_PIDS
}

# --------------------------------------------------------------- phase 1

# wrk_ms VALUE: a wrk latency such as 512.00us, 1.23ms or 1.01s in ms.
wrk_ms() {
	awk -v v="$1" 'BEGIN {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
		printf "%.2f", n }'
}

# tput_run CONNS NAME PORT PIDS: one wrk measurement of the proxy on PORT
# whose processes are PIDS, appended to $TPUT_ROWS ($TMP/tput.rows unless
# set) as: conns name req/s p50 p99 requests proxy-ticks errors
# upstream-ticks machine-ticks other-ticks proxy-user-ticks. "Other" is
# machine CPU time used by neither the proxy, the upstream ($UPSTREAM_PIDS)
# nor wrk: someone else's work. While it exceeds 5% of the
# machine the run is repeated, 3 tries at most, and the quietest kept.
tput_run() {
	local c=$1 name=$2 url=http://127.0.0.1:$3/ pids=$4
	local try log t0 u0 m0 p0 t1 u1 m1 p1 w other row best_other=-1 best_row=""
	local hz rps reqs p50 p99 errs
	hz=$(getconf CLK_TCK)
	wrk -t2 -c"$c" -d"$WARM" "$url" >/dev/null 2>&1
	for try in 1 2 3; do
		log=$TMP/wrk-$name-$c-$try.txt
		times >"$TMP/times0" # wrk's CPU time shows in the children's line
		# shellcheck disable=SC2086 # pid lists
		t0=$(cpu_ticks $pids) u0=$(cpu_ticks $UPSTREAM_PIDS) m0=$(busy_ticks) p0=$(user_ticks $pids)
		wrk -t2 -c"$c" -d"$DUR" --latency "$url" >"$log" 2>&1
		# shellcheck disable=SC2086 # pid lists
		t1=$(cpu_ticks $pids) u1=$(cpu_ticks $UPSTREAM_PIDS) m1=$(busy_ticks) p1=$(user_ticks $pids)
		times >"$TMP/times1"
		w=$(awk -v hz="$hz" '
			function sec(x, m) { m = x; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", x); sub(/s$/, "", x); return m * 60 + x }
			FNR == 2 { v = (sec($1) + sec($2)) * hz; if (FILENAME ~ /times1$/) d += v; else d -= v }
			END { printf "%.0f", d }' "$TMP/times0" "$TMP/times1")
		other=$(((m1 - m0) - (t1 - t0) - (u1 - u0) - w))
		rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$log")
		reqs=$(awk '/requests in/ {print $1}' "$log")
		p50=$(wrk_ms "$(awk '$1 == "50%" {print $2}' "$log")")
		p99=$(wrk_ms "$(awk '$1 == "99%" {print $2}' "$log")")
		errs=$(awk '/Socket errors/ {gsub(",", ""); e = $4 + $6 + $8 + $10} /Non-2xx/ {e += $5} END {print e + 0}' "$log")
		row="$c $name ${rps:-0} $p50 $p99 ${reqs:-0} $((t1 - t0)) $errs $((u1 - u0)) $((m1 - m0)) $other $((p1 - p0))"
		if ((best_other < 0 || other < best_other)); then
			best_other=$other best_row=$row
		fi
		note "   c=$c $name: ${rps:-?} req/s (others used $(awk -v t="$other" -v hz="$hz" 'BEGIN {printf "%.1f", t / hz}') CPU-s)"
		# Quiet enough: others below 5% of 2 cores for the run.
		((other * 100 <= 5 * 2 * ${DUR%s} * hz)) && break
	done
	echo "$best_row" >>"${TPUT_ROWS:-$TMP/tput.rows}"
}

phase_throughput() {
	note "1. throughput and latency ($DUR per run)"
	quiet_wait
	start_upstream_nginx $TPUT || return 1
	# shellcheck disable=SC2086
	start_proxies $TPUT $POOL || { stop $UPSTREAM_PIDS; return 1; }
	local names=(direct nginx haproxy fasthttp httputil unstuck)
	local ports=($TPUT $((TPUT + 1)) $((TPUT + 2)) $((TPUT + 3)) $((TPUT + 4)) $((TPUT + 5)))
	local pids=("" "$NGINX_PIDS" "$HAPROXY_PID" "$FH_PID" "$HU_PID" "$UNSTUCK_PID")
	local c i r
	: >"$TMP/tput.rows"
	# Rounds go over every proxy in turn, so that a burst of other work on
	# the machine hits one run of each, not every run of one proxy; each
	# proxy's median run (by req/s) is reported.
	for c in 64 512; do
		for ((r = 1; r <= ROUNDS; r++)); do
			for i in "${!names[@]}"; do
				tput_run "$c" "${names[$i]}" "${ports[$i]}" "${pids[$i]}"
			done
		done
	done
	awk '
		{ key = $1 " " $2; if (!(key in n)) order[++k] = key; n[key]++; rps[key, n[key]] = $3 + 0; row[key, n[key]] = $0 }
		END { for (i = 1; i <= k; i++) {
			key = order[i]; m = n[key]
			for (a = 1; a <= m; a++) idx[a] = a
			for (a = 2; a <= m; a++) for (j = a; j > 1 && rps[key, idx[j - 1]] > rps[key, idx[j]]; j--) { t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t }
			print row[key, idx[int((m + 1) / 2)]] } }
	' "$TMP/tput.rows" >"$TMP/tput.median"
	stop_proxies
	# shellcheck disable=SC2086
	stop $UPSTREAM_PIDS

	say_section "1. Throughput and latency"
	say "wrk -t2 -d$DUR --latency against each, one after another, after a $WARM warm-up; upstream: nginx (1 worker) answering \`return 200 \"hello\"\`."
	say "$ROUNDS rounds over all proxies in turn; each row is that proxy's median run by req/s (all its columns from that run)."
	say "req/CPU-s: requests completed per CPU-second (user+sys from /proc/PID/stat) of the proxy's processes alone (nginx: master and both workers)."
	say "user / sys µs/req: the proxy's CPU time per request in user space (the proxy's own code, and for Go its runtime) and in the kernel"
	say "(system calls, which on loopback include TCP's work for the receiving side)."
	say "Ratios are to nginx at the same connection count. Errors: wrk socket errors plus non-2xx responses."
	say "machine CPU-s: busy CPU time of the whole machine during the run (at most 2 x $DUR). other CPU-s: the part used by neither"
	say "proxy, upstream nor wrk (other work on the machine); a run where it exceeded 5% of the machine was repeated (3 tries at most) and the quietest kept."
	say ""
	say "| conns | proxy | req/s | vs nginx | p50 ms | p99 ms | req/CPU-s | vs nginx | user µs/req | sys µs/req | proxy CPU-s | upstream CPU-s | machine CPU-s | other CPU-s | errors |"
	say "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	awk -v hz="$(getconf CLK_TCK)" '
		{ c[NR] = $1; n[NR] = $2; rps[NR] = $3; p50[NR] = $4; p99[NR] = $5; reqs[NR] = $6; cpu[NR] = $7; err[NR] = $8; up[NR] = $9; all[NR] = $10; oth[NR] = $11; usr[NR] = $12
		  if ($2 == "nginx") { nrps[$1] = $3; if ($7 > 0) nper[$1] = $6 / ($7 / hz) } }
		END { for (i = 1; i <= NR; i++) {
			per = "-"; perr = "-"; cs = "-"; uus = "-"; sus = "-"
			if (n[i] != "direct" && cpu[i] > 0) { v = reqs[i] / (cpu[i] / hz); per = sprintf("%.0f", v); cs = sprintf("%.2f", cpu[i] / hz)
				if (reqs[i] > 0) { uus = sprintf("%.1f", usr[i] / hz * 1e6 / reqs[i]); sus = sprintf("%.1f", (cpu[i] - usr[i]) / hz * 1e6 / reqs[i]) }
				if (nper[c[i]] > 0) perr = sprintf("%.2f", v / nper[c[i]]) }
			r = (nrps[c[i]] > 0) ? sprintf("%.2f", rps[i] / nrps[c[i]]) : "-"
			printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %.2f | %.2f | %s |\n", c[i], n[i], rps[i], r, p50[i], p99[i], per, perr, uus, sus, cs, up[i] / hz, all[i] / hz, oth[i] / hz, err[i] } }
	' "$TMP/tput.median" | tee -a "$RUN_OUT"
	drops_note
	say ""
}

# ------------------------------------------------------------ fixed rate

# json_field FILE NAME...: the values of the named fields of the one-line
# JSON object in FILE (numbers and plain strings), space-separated, "-" for
# a missing one.
json_field() {
	local f=$1
	shift
	awk -v names="$*" '{
		s = $0; gsub(/^[ {]+|[ }]+$/, "", s)
		n = split(s, kv, /,"/)
		for (i = 1; i <= n; i++) { k = kv[i]; sub(/^"/, "", k); v = k; sub(/".*/, "", k); sub(/^[^:]*:/, "", v); gsub(/"/, "", v); val[k] = v }
		m = split(names, want, " ")
		for (i = 1; i <= m; i++) printf "%s%s", (i > 1 ? " " : ""), ((want[i] in val) ? val[want[i]] : "-")
		print "" }' "$f"
}

# fr_measure MODE RATES: the fixedrate runs of one setting (shared or
# pinned), appended to $TMP/fr-MODE.rows as: rate conns proxy round
# achieved p50 p90 p99 p999 max errors unsent cpu_us_per_request.
fr_measure() {
	local mode=$1 rates=$2 gen_pin=""
	[[ $mode == pinned ]] && gen_pin="taskset -c 0"
	quiet_wait
	start_upstream_nginx $FIXED || return 1
	start_proxies $FIXED $POOL || { stop $UPSTREAM_PIDS; return 1; }
	local names=(direct nginx haproxy fasthttp unstuck)
	local ports=($FIXED $((FIXED + 1)) $((FIXED + 2)) $((FIXED + 3)) $((FIXED + 5)))
	local pids=("" "$NGINX_PIDS" "$HAPROXY_PID" "$FH_PID" "$UNSTUCK_PID")
	local spec rate c r k i n=${#names[@]} rc=0 out=$TMP/fr.json err=$TMP/fr.err t0 t1 reqs cpu hz
	hz=$(getconf CLK_TCK)
	: >"$TMP/fr-$mode.rows"
	# For each rate, rounds over every proxy in turn, each round starting
	# from the next one, so that other work on the machine and the order
	# hit every proxy alike.
	for spec in $rates; do
		rate=${spec%/*} c=${spec#*/}
		for ((r = 1; r <= FR_ROUNDS; r++)); do
			for ((k = 0; k < n; k++)); do
				i=$(((k + r - 1) % n))
				# shellcheck disable=SC2086 # pid lists, gen_pin a prefix or nothing
				t0=$(cpu_ticks ${pids[$i]})
				# shellcheck disable=SC2086
				if ! run "$out" "$err" $gen_pin "$BIN/openloop" -url "http://127.0.0.1:${ports[$i]}/" -c "$c" -rate "$rate" \
					-d "$FR_DUR" -warmup "$FR_WARM" -timeout 5s; then
					rc=1
					sed "s/^/$mode ${names[$i]} $spec: /" "$err" >>"$TMP/fr.errors"
					continue
				fi
				# shellcheck disable=SC2086
				t1=$(cpu_ticks ${pids[$i]})
				# The proxy's CPU over warm-up and measured run, per request
				# of both (the warm-up runs at the same rate).
				reqs=$(json_field "$out" requests)
				cpu=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" -v d="${FR_DUR%s}" -v w="${FR_WARM%s}" -v p="${pids[$i]}" \
					'BEGIN { if (p == "" || n == 0) print "-"; else printf "%.1f", t / hz * 1e6 / (n * (d + w) / d) }')
				echo "$rate $c ${names[$i]} $r $(json_field "$out" achieved_rps p50_ms p90_ms p99_ms p999_ms max_ms errors unsent) $cpu" >>"$TMP/fr-$mode.rows"
				note "   $mode $spec ${names[$i]} round $r: $(json_field "$out" achieved_rps p50_ms p99_ms p999_ms errors) $cpu (req/s p50 p99 p99.9 errors CPU-µs/req)"
			done
		done
	done
	stop_proxies
	# shellcheck disable=SC2086
	stop $UPSTREAM_PIDS
	return $rc
}

# fr_table MODE: the table of fr_measure MODE's rows.
fr_table() {
	say "| req/s / conns | proxy | req/s | p50 | p90 | p99 | p99.9 | max | added p50 | added p99 | added p99.9 | added p99 vs nginx | added p99.9 vs nginx | CPU µs/req | CPU vs nginx | errors |"
	say "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	awk '
		function med(key, f,    m, a, j, t, v) {
			m = cnt[key]
			for (a = 1; a <= m; a++) v[a] = val[key, a, f]
			for (a = 2; a <= m; a++) for (j = a; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
			return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
		}
		function ratio(x, y) { return (y > 0) ? sprintf("%.2f", x / y) : "-" }
		{ key = $1 "/" $2 " " $3; if (!(key in cnt)) order[++k] = key; cnt[key]++
		  for (f = 5; f <= 13; f++) val[key, cnt[key], f] = $f }
		END {
			for (i = 1; i <= k; i++) { key = order[i]; for (f = 5; f <= 10; f++) M[key, f] = med(key, f)
				M[key, 13] = (val[key, 1, 13] == "-") ? -1 : med(key, 13)
				e = 0; for (a = 1; a <= cnt[key]; a++) e += val[key, a, 11] + val[key, a, 12]; E[key] = e }
			for (i = 1; i <= k; i++) {
				key = order[i]; split(key, p, " "); d = p[1] " direct"; ng = p[1] " nginx"
				split(p[1], rc, "/"); beh = (M[key, 5] < 0.95 * rc[1]) ? " behind" : ""
				printf "| %s | %s | %.0f%s | %.3f | %.3f | %.3f | %.3f | %.3f", p[1], p[2], M[key, 5], beh, M[key, 6], M[key, 7], M[key, 8], M[key, 9], M[key, 10]
				if (p[2] == "direct" || !((d, 5) in M)) printf " | - | - | - | - | -"
				else {
					a50 = M[key, 6] - M[d, 6]; a99 = M[key, 8] - M[d, 8]; a999 = M[key, 9] - M[d, 9]
					n99 = M[ng, 8] - M[d, 8]; n999 = M[ng, 9] - M[d, 9]
					printf " | %.3f | %.3f | %.3f | %s | %s", a50, a99, a999, ratio(a99, n99), ratio(a999, n999)
				}
				if (M[key, 13] < 0) printf " | - | -"
				else printf " | %.1f | %s", M[key, 13], ratio(M[key, 13], M[ng, 13])
				printf " | %d |\n", E[key]
			} }' "$TMP/fr-$1.rows" | tee -a "$RUN_OUT"
}

phase_fixedrate() {
	note "fixedrate: open-loop latency at fixed rates ($FR_RATES req/s / connections; $FR_DUR per run, $FR_ROUNDS rounds; pinned: $FR_PIN_RATES)"
	local rc=0 mode
	: >"$TMP/fr.errors"
	fr_measure shared "$FR_RATES" || rc=1
	# A sidecar with one CPU: each proxy on CPU 1 alone (nginx one worker,
	# HAProxy one thread, the Go proxies GOMAXPROCS 1 from their affinity),
	# generator and upstream on CPU 0, so that neither takes the proxy's
	# CPU and the proxy's own cost is what is left.
	if [[ -n $FR_PIN_RATES ]] && (($(nproc) >= 2)); then
		UP_PIN="taskset -c 0" PROXY_PIN="taskset -c 1" PROXY_WORKERS=1 fr_measure pinned "$FR_PIN_RATES" || rc=1
	fi

	say_section "9. Fixed-rate latency (open loop)"
	say "bench/cmd/openloop: keep-alive HTTP/1.1 connections that send GETs on a fixed schedule (connection i at i·N/R + k·N/R s),"
	say "whether or not earlier answers have come back; a request's latency runs from the time it was meant to be sent, so"
	say "waiting behind a slow answer counts (no coordinated omission). Log-linear histogram, under 0.8% error. Each run: $FR_WARM"
	say "warm-up at the rate, then $FR_DUR measured. Upstream: nginx (1 worker) answering \`return 200 \"hello\"\`; proxies as in"
	say "the throughput phase (fasthttp: bench/cmd/fhproxy). For each rate, $FR_ROUNDS rounds over the five in turn, each round"
	say "starting from the next; each figure is the median over the rounds (of 2: their mean) of that percentile, in ms."
	say "added: the proxy's percentile minus direct's at the same rate (direct's includes the generator's own timer wake-ups"
	say "and the upstream, which a proxy's path also has); vs nginx: the proxy's added ÷ nginx's added (below 1: less than nginx)."
	say "req/s: measured requests ÷ the time from the first measured send to the last answer; \"behind\": under 95% of the rate,"
	say "the schedule ran ahead of the answers (the target, or the machine's 2 cores shared by generator, proxy and upstream,"
	say "saturated): its latencies are queueing, not the proxy's cost per request."
	say "CPU µs/req: the proxy's processes' CPU time (user + system, /proc/PID/stat) over the run and its warm-up, per request."
	say "Samples per run: the rate × $FR_DUR ($(awk -v r="${FR_RATES%%/*}" -v d="${FR_DUR%s}" 'BEGIN { printf "%d", r * d }') at ${FR_RATES%%/*} req/s): where under 10,000, p99.9 is one of the"
	say "run's few slowest requests and moves from round to round by more than the differences between proxies."
	say ""
	for mode in shared pinned; do
		[[ -s $TMP/fr-$mode.rows ]] || continue
		if [[ $mode == shared ]]; then
			say "Shared: every process may run on both cores (nginx 2 workers, HAProxy 2 threads, Go GOMAXPROCS 2)."
		else
			say ""
			say "Pinned, a sidecar with one CPU: each proxy alone on CPU 1 (nginx 1 worker, HAProxy nbthread 1, the Go proxies"
			say "GOMAXPROCS 1, from their CPU affinity), generator and upstream on CPU 0."
		fi
		say ""
		fr_table $mode
	done
	drops_note
	say ""
	say "Every run, in the order run (ms; errors: failed requests and non-2xx; unsent: requests more than 5 s behind the schedule):"
	say ""
	{
		printf 'setting\trate\tconns\tproxy\tround\treq/s\tp50\tp90\tp99\tp99.9\tmax\terrors\tunsent\tCPU-µs/req\n'
		for mode in shared pinned; do
			[[ -s $TMP/fr-$mode.rows ]] && sed "s/^/$mode /" "$TMP/fr-$mode.rows" | tr ' ' '\t'
		done
	} | column -t -s $'\t' | say_code
	say ""
	report_errors openloop $rc "$TMP/fr.errors"
	# The analysis of where unstuck's tail comes from, written by hand
	# from profiles (bench/tail.md): kept with the tables it explains.
	if [[ -s $ROOT/bench/tail.md ]]; then
		say ""
		tee -a "$RUN_OUT" <"$ROOT/bench/tail.md"
	fi
}

# --------------------------------------------------------------- phase 2

phase_halfclose() {
	note "2. half-close detection ($HC_SIZES idle connections, about 1.5 minutes)"
	quiet_wait
	# Without learn_idle_timeout: this upstream FINs every connection at
	# the same idle age, which unstuck would learn from the first FINs and
	# then retire its connections before (pool/retire.go; the race phase's
	# idle part measures that), leaving no FIN to time.
	UNSTUCK_LEARN=false start_proxies $HALF $BIG_POOL || return 1
	local b=$HALF
	run "$TMP/halfclose.md" "$TMP/halfclose.err" "$BIN/halfclose" -listen 127.0.0.1:$b -sizes $HC_SIZES \
		-target ideal \
		-target unstuck=127.0.0.1:$((b + 5)) \
		-target httputil=127.0.0.1:$((b + 4)) \
		-target nginx=127.0.0.1:$((b + 1)) \
		-target haproxy=127.0.0.1:$((b + 2))
	local rc=$?
	stop_proxies

	say_section "2. Half-close detection"
	say "The upstream (bench/cmd/halfclose) makes each proxy open N connections to it (N concurrent requests, held until all N arrived),"
	say "waits until they are idle in the proxy's pool, sends FIN on each and times, per connection, from its own FIN to the proxy's close (EOF/RST)."
	say "FINs: 'every 5ms' sends them one at a time, 5 ms apart, as an upstream's idle timeouts do; 'at once' sends all N back to back"
	say "(the 200-at-once rows are extra information: there the loop of 200 shutdown calls itself takes a few ms on this machine)."
	say "Each row is the median (by p99) of 3 rounds."
	say "ideal: a separate process with one goroutine blocked reading each connection, closing it on EOF: the floor of this measurement."
	say "The ideal ratio compares rows with the same N and FINs."
	say "Pools: nginx keepalive $BIG_POOL per worker, HAProxy http-reuse always with pool-purge-delay 300s and tune.pool-low-fd-ratio 95, httputil MaxIdleConnsPerHost $BIG_POOL, unstuck max_idle $BIG_POOL."
	say "Targets: unstuck p99 under 1 ms at 200 with FINs one every 5 ms, and ahead of the three peers; within 1.5x the ideal peer at 8,000 at once."
	say ""
	tee -a "$RUN_OUT" <"$TMP/halfclose.md"
	drops_note
	report_errors halfclose $rc "$TMP/halfclose.err"
	say ""
}

# report_errors NAME RC FILE: append a program's failure and stderr, if any.
report_errors() {
	if (($2 != 0)); then say "" && say "$1 exited with status $2."; fi
	if [[ -s $3 ]]; then
		say ""
		say "Notes from $1 (stderr):"
		tail -n 20 "$3" | say_code
	fi
}

# --------------------------------------------------------------- phase 3

phase_race() {
	note "3. keep-alive race ($RACE_N requests per proxy)"
	quiet_wait
	start_proxies $RACE $POOL || return 1
	local b=$RACE
	run "$TMP/race.md" "$TMP/race.err" "$BIN/race" -listen 127.0.0.1:$b -requests "$RACE_N" \
		-target direct=127.0.0.1:$b \
		-target nginx=127.0.0.1:$((b + 1)) \
		-target haproxy=127.0.0.1:$((b + 2)) \
		-target fasthttp=127.0.0.1:$((b + 3)) \
		-target httputil=127.0.0.1:$((b + 4)) \
		-target unstuck=127.0.0.1:$((b + 5))
	local rc=$?
	stop_proxies

	say_section "3. Keep-alive race"
	say "The upstream (bench/cmd/race) closes the connection right after a random 20% of its responses (FIN behind the last byte, no Connection: close)."
	say "32 client connections send $RACE_N requests per target, GET and POST alternating, each with a unique X-Request-Id; the client never retries."
	say "direct: the same client straight to the upstream. Duplicates: extra copies of a POST id that reached the upstream."
	say "'Failed POSTs the upstream did get': POSTs the client saw fail although the upstream had received them."
	say ""
	tee -a "$RUN_OUT" <"$TMP/race.md"
	drops_note
	report_errors race $rc "$TMP/race.err"
	say ""
	race_idle
}

# start_idle_proxies BASE: nginx, HAProxy and unstuck at their defaults for
# upstream keep-alive, forwarding to 127.0.0.1:BASE. Sets PROXY_PIDS.
start_idle_proxies() {
	local base=$1 up=127.0.0.1:$1 dir=$TMP/idle-proxies-$1-$RANDOM
	mkdir -p "$dir"
	# nginx: upstream keepalive, keepalive_timeout (60s) and
	# keepalive_requests left at their defaults.
	start_nginx nginx "$dir" <<EOF
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 1024; }
http {
$(nginx_http_base "$dir")
    upstream backend {
        server $up;
        keepalive 32;
    }
$(nginx_proxy_server "127.0.0.1:$((base + 1))")
}
EOF
	local nginx_master=$LAST
	# HAProxy: http-reuse safe (its default, written out), pool settings at
	# their defaults; the timeouts it requires.
	start_haproxy haproxy "$dir" <<EOF
global
    nbthread 2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse safe
frontend fe
    bind 127.0.0.1:$((base + 2))
    default_backend be
backend be
    server up $up
EOF
	local haproxy_pid=$LAST
	# unstuck: pool defaults (learn_idle_timeout on, retire_margin 20%).
	cat >"$dir/unstuck.yaml" <<EOF
admin: {listen: "127.0.0.1:$((base + 9))", debug_listen: ""}
listeners:
  app:
    listen: 127.0.0.1:$((base + 5))
upstreams:
  backend:
    endpoints: ["$up"]
EOF
	start unstuck "$dir/unstuck.log" "$BIN/unstuck" --config "$dir/unstuck.yaml"
	local unstuck_pid=$LAST
	wait_ports "$dir" "$base" "1 2 5" "$nginx_master" "$haproxy_pid" "$unstuck_pid" || return 1
	PROXY_PIDS="$nginx_master $(children "$nginx_master") $haproxy_pid $unstuck_pid"
}

# race_idle: the race phase's idle-timeout part, two variants of the
# upstream, each with freshly started proxies.
race_idle() {
	local b=$IDLE variant ka rc
	say "### Against an upstream that closes idle connections"
	say ""
	say "The upstream (bench/cmd/race -idle 300ms) closes a connection idle for 300 ms (close, no response in flight) and never after a response."
	say "First without any Keep-Alive header, then announcing it with \`Keep-Alive: timeout=0.3\` on every response. $IDLE_CONNS client"
	say "connections per target send one POST each at once (a burst), wait for the $IDLE_CONNS answers, then all stay idle a random 250-350 ms,"
	say "so the upstream connections each proxy pooled after a burst sit idle that long before the next burst reuses them: about half of"
	say "the gaps last past the upstream's 300 ms. $IDLE_BURSTS bursts per target, $((IDLE_CONNS * IDLE_BURSTS)) POSTs, each with a unique X-Request-Id; the client"
	say "never retries. The proxies are at their defaults for upstream keep-alive, started afresh for each variant: nginx: upstream keepalive 32,"
	say "keepalive_timeout at its default (60 s); HAProxy: http-reuse safe, pool settings at their defaults; unstuck: pool defaults"
	say "(learn_idle_timeout on, retire_margin 20%). direct: the same client straight to the upstream, the race without a proxy."
	say "Upstream connections: those it accepted during the target's run; idle closes: those it closed for the 300 ms."
	say ""
	for variant in none timeout=0.3; do
		ka=""
		[[ $variant != none ]] && ka=$variant
		note "3b. idle-timeout upstream, Keep-Alive: $variant ($((IDLE_CONNS * IDLE_BURSTS)) POSTs per proxy)"
		start_idle_proxies "$b" || return 1
		run "$TMP/idle-$variant.md" "$TMP/idle-$variant.err" "$BIN/race" -listen 127.0.0.1:$b -idle 300ms -keepalive "$ka" \
			-pace-min 250ms -pace-max 350ms -concurrency "$IDLE_CONNS" -bursts "$IDLE_BURSTS" \
			-target direct=127.0.0.1:$b \
			-target nginx=127.0.0.1:$((b + 1)) \
			-target haproxy=127.0.0.1:$((b + 2)) \
			-target unstuck=127.0.0.1:$((b + 5))
		rc=$?
		curl -s "http://127.0.0.1:$((b + 9))/metrics" 2>/dev/null | grep -E '^unstuck_upstream_learned_idle_timeout_seconds' >"$TMP/idle-$variant.metrics"
		stop_proxies
		if [[ $variant == none ]]; then
			say "No Keep-Alive header:"
		else
			say "\`Keep-Alive: $variant\` on every response:"
		fi
		say ""
		tee -a "$RUN_OUT" <"$TMP/idle-$variant.md"
		if [[ -s $TMP/idle-$variant.metrics ]]; then
			say ""
			say "unstuck's admin /metrics at the end: \`$(tr '\n' ' ' <"$TMP/idle-$variant.metrics" | sed 's/ $//')\`"
		fi
		report_errors "race (idle, Keep-Alive: $variant)" $rc "$TMP/idle-$variant.err"
		say ""
	done
	drops_note
}

# --------------------------------------------------------------- phase 4

phase_memory() {
	note "4. memory ($MEM_N idle connections of each kind)"
	quiet_wait
	local dir=$TMP/memory i pids=()
	mkdir -p "$dir"
	# Two fresh unstuck processes: one for app connections, one for pooled ones.
	for i in 5 6; do
		cat >"$dir/unstuck-$i.yaml" <<EOF
admin: {listen: "", debug_listen: ""}
listeners:
  app:
    listen: 127.0.0.1:$((MEM + i))
upstreams:
  backend:
    endpoints: ["127.0.0.1:$MEM"]
    pool: {max_conns: $BIG_POOL, max_idle: $BIG_POOL, idle_timeout: 0s}
EOF
		start unstuck "$dir/unstuck-$i.log" "$BIN/unstuck" --config "$dir/unstuck-$i.yaml"
		pids+=("$LAST")
		if ! wait_port $((MEM + i)); then
			tail -n 5 "$dir/unstuck-$i.log" >&2
			stop "${pids[@]}"
			return 1
		fi
	done
	run "$TMP/memory.md" "$TMP/memory.err" "$BIN/memory" -listen 127.0.0.1:$MEM -n $MEM_N \
		-app 127.0.0.1:$((MEM + 5)) -app-pid "${pids[0]}" \
		-pooled 127.0.0.1:$((MEM + 6)) -pooled-pid "${pids[1]}"
	local rc=$?
	stop "${pids[@]}"

	say_section "4. Memory"
	say "unstuck's VmRSS (/proc/PID/status) before and after $MEM_N idle connections of each kind, each kind on a fresh unstuck"
	say "(bench/cmd/memory). App connections: one request each, then left open. Pooled upstream connections: made by $MEM_N concurrent"
	say "requests held at the upstream until all arrived, app side then closed; pool idle_timeout 0 so they stay."
	say "Each reading is taken once the RSS is stable (VmRSS sampled every 250 ms, changed by at most 1% over 2 s), at least 3 s and at most 15 s"
	say "after the traffic; 'settled after' says when. unstuck releases an idle app connection's goroutine and buffers after idle_release_after"
	say "(1 s) and returns freed memory to the OS after release_memory_after_idle (2 s) without requests, so the readings include both."
	say "Target: under 8 KiB each."
	say ""
	tee -a "$RUN_OUT" <"$TMP/memory.md"
	drops_note
	report_errors memory $rc "$TMP/memory.err"
	say ""
}

# --------------------------------------------------------------- phase 5

phase_legacy() {
	note "5. CLOSE_WAIT under the legacy workload"
	quiet_wait
	start_proxies $LEGACY $POOL || return 1
	local b=$LEGACY
	# shellcheck disable=SC2086 # pid lists are comma-joined below
	run "$TMP/legacy.md" "$TMP/legacy.err" "$BIN/legacy" -listen 127.0.0.1:$b -rounds "$LEGACY_ROUNDS" \
		-target direct=127.0.0.1:$b \
		-target "nginx=127.0.0.1:$((b + 1))@$(echo $NGINX_PIDS | tr ' ' ',')" \
		-target "haproxy=127.0.0.1:$((b + 2))@$HAPROXY_PID" \
		-target "fasthttp=127.0.0.1:$((b + 3))@$FH_PID" \
		-target "httputil=127.0.0.1:$((b + 4))@$HU_PID" \
		-target "unstuck=127.0.0.1:$((b + 5))@$UNSTUCK_PID"
	local rc=$?
	stop_proxies

	say_section "5. CLOSE_WAIT under the legacy workload"
	say "The upstream (bench/cmd/legacy) closes connections idle for 1 s. The legacy client holds 500 keep-alive connections and sends"
	say "$LEGACY_ROUNDS rounds of one GET on each, 1.5 s apart; a connection it finds closed or that fails it abandons without closing and"
	say "replaces. Counted 1.5 s after the last round, from /proc/net/tcp{,6}: the client's sockets towards the target and the proxy's"
	say "sockets (by its PIDs) in CLOSE_WAIT."
	say ""
	tee -a "$RUN_OUT" <"$TMP/legacy.md"
	drops_note
	report_errors legacy $rc "$TMP/legacy.err"
	say ""
}

# --------------------------------------------------------------- phase 6

phase_microbench() {
	note "6. go test -bench ./pool/ ./proxy/"
	quiet_wait
	say_section "6. Go microbenchmarks"
	say "\`go test -run XXX -bench . -benchmem -benchtime $BENCHTIME ./pool/ ./proxy/\`"
	say ""
	go test -run XXX -bench . -benchmem -benchtime "$BENCHTIME" ./pool/ ./proxy/ 2>&1 | say_code
}

# --------------------------------------------------------------- phase 7

# start_tcp_proxies: the TCP-mode proxies of phase 7, forwarding to
# 127.0.0.1:$TCP. Sets TCP_NGINX_PIDS, TCP_HAPROXY_PID, TCP_HASPLICE_PID,
# TCP_UNSTUCK_PID and TCP_PIDS.
start_tcp_proxies() {
	local dir=$TMP/tcp up=127.0.0.1:$TCP
	mkdir -p "$dir"

	start_nginx nginx-stream "$dir" <<EOF
load_module $NGINX_STREAM;
$(nginx_main "$dir")
stream {
    upstream backend { server $up; }
    server {
        listen 127.0.0.1:$((TCP + 1)) backlog=4096;
        proxy_pass backend;
        proxy_half_close on;
        proxy_connect_timeout 5s;
        proxy_timeout 300s;
    }
}
EOF
	local nginx_master=$LAST

	# HAProxy twice: as is, and splicing both ways. (option splice-auto
	# moved most bytes with recvfrom/sendto here: 69k of each against 15k
	# splices for 1.5 GiB.)
	local name port splice
	for name in haproxy haproxy-splice; do
		port=$((TCP + 2)) splice=""
		[[ $name == haproxy-splice ]] && port=$((TCP + 3)) splice="option splice-request
    option splice-response"
		start_haproxy "$name" "$dir" <<EOF
global
    nbthread 2
    # With splicing each connection may hold a pipe (2 fds): stay well
    # under the open files limit.
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    $splice
frontend fe
    bind 127.0.0.1:$port
    maxconn 4000
    default_backend be
backend be
    server up $up
EOF
		if [[ $name == haproxy ]]; then TCP_HAPROXY_PID=$LAST; else TCP_HASPLICE_PID=$LAST; fi
	done

	# unstuck, its admin listener on +9 for the profile. Its config file
	# has a directory of its own: unstuck watches the file's directory and
	# reads the file again at every event there, such as a log line
	# written to this phase's directory.
	mkdir -p "$dir/unstuck"
	cat >"$dir/unstuck/unstuck.yaml" <<EOF
admin: {listen: 127.0.0.1:$((TCP + 9)), debug_listen: 127.0.0.1:$((TCP + 8)), pprof: true}
listeners:
  app: {listen: 127.0.0.1:$((TCP + 5)), protocol: tcp, upstream: backend}
upstreams:
  backend: {endpoints: ["$up"], pool: {min_idle: 0}}
EOF
	start unstuck "$dir/unstuck.log" "$BIN/unstuck" --config "$dir/unstuck/unstuck.yaml"
	TCP_UNSTUCK_PID=$LAST

	wait_ports "$dir" "$TCP" "1 2 3 5" "$nginx_master" "$TCP_HAPROXY_PID" "$TCP_HASPLICE_PID" "$TCP_UNSTUCK_PID" || return 1
	TCP_NGINX_PIDS="$nginx_master $(children "$nginx_master")"
	TCP_PIDS="$TCP_NGINX_PIDS $TCP_HAPROXY_PID $TCP_HASPLICE_PID $TCP_UNSTUCK_PID"
}

# pprof_during PROFILE SECONDS PORT OUT ERR CMD...: a CPU profile of the
# unstuck whose debug listener (admin.pprof on) is on 127.0.0.1:PORT, SECONDS long, in
# PROFILE (pprof's errors in profile.err beside it), taken while CMD runs
# (run OUT ERR CMD...; it should run a little longer). It fails if no
# profile came.
pprof_during() {
	local prof=$1 secs=$2 port=$3 out=$4 err=$5 dir pid
	shift 5
	dir=$(dirname "$prof")
	PPROF_TMPDIR=$dir go tool pprof -proto -seconds="$secs" \
		"http://127.0.0.1:$port/debug/pprof/profile" >"$prof" 2>"$dir/profile.err" &
	pid=$!
	STARTED[$pid]=pprof
	sleep 0.5
	run "$out" "$err" "$@"
	wait "$pid"
	unset "STARTED[$pid]"
	[[ -s $prof ]]
}

# tcp_profile: a CPU profile of the measured unstuck under the pairs load
# alone, in $TMP/tcp/unstuck-pairs.pprof.
tcp_profile() {
	local dir=$TMP/tcp
	pprof_during "$dir/unstuck-pairs.pprof" "$TCP_PROF" $((TCP + 8)) "$dir/profile-run.md" "$dir/profile-run.err" \
		"$BIN/tcpbench" -listen "127.0.0.1:$TCP" \
		-tests cps -rounds 1 -warm=false -cps-max 1000000 -cps-time "$((TCP_PROF + 1))s" -hz "$(getconf CLK_TCK)" \
		-target "unstuck=127.0.0.1:$((TCP + 5))@$TCP_UNSTUCK_PID"
}

# strace_end PID: ends what runs under strace, PID: a TERM to the traced
# process itself (strace's child, which this script did not start
# directly), so that strace sees it exit and writes its output; then up
# to 10 s for strace to end, and stop.
strace_end() {
	local child i
	child=$(pgrep -P "$1" | head -n 1)
	[[ -n $child ]] && kill -TERM "$child"
	for ((i = 0; i < 100; i++)); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	stop "$1"
}

# strace_proxy NAME PORT TRACE LOAD CMD...: runs CMD (a proxy listening on
# 127.0.0.1:PORT) under strace -f -c, with -e trace=TRACE unless TRACE is
# empty, for its whole life: start, LOAD through it (bulk: TCP_BULK one
# way and both ways; pairs: TCP_STRACE_PAIRS pairs), SIGTERM. strace's
# summary is in $TMP/tcp/strace-NAME.txt, the load's runs in
# $TMP/tcp/strace-NAME.tsv and its table in $TMP/tcp/strace-NAME.md.
strace_proxy() {
	local name=$1 port=$2 trace=$3 load=$4 dir=$TMP/tcp sp
	shift 4
	local opts=(-f -c -o "$dir/strace-$name.txt") tests=(-tests up,both -bulk "$TCP_BULK")
	[[ -n $trace ]] && opts+=(-e "trace=$trace")
	[[ $load == pairs ]] && tests=(-tests cps -cps-max "$TCP_STRACE_PAIRS" -cps-time 30s)
	rm -f "$dir/strace-$name.txt"
	start "strace-$name" "$dir/strace-$name.log" strace "${opts[@]}" "$@"
	sp=$LAST
	wait_port "$port" || { stop "$sp"; return 1; }
	run "$dir/strace-$name.md" "$dir/strace-$name.err" "$BIN/tcpbench" -listen "127.0.0.1:$TCP" \
		"${tests[@]}" -rounds 1 -warm=false -hz "$(getconf CLK_TCK)" \
		-raw "$dir/strace-$name.tsv" -target "$name=127.0.0.1:$port"
	strace_end "$sp"
	[[ -s $dir/strace-$name.txt ]]
}

# strace_one_pair: the system calls that one pair makes in unstuck
# (strace -f, sockets, pipes and the poller), in $TMP/tcp/one-pair.txt.
strace_one_pair() {
	local dir=$TMP/tcp sp n
	rm -f "$dir/one-pair.strace"
	start strace-one "$dir/strace-one.log" strace -f -o "$dir/one-pair.strace" \
		-e trace=%network,splice,pipe2,fcntl,ioctl,epoll_ctl,shutdown,close \
		"$BIN/unstuck" --config "$dir/unstuck/unstuck.yaml"
	sp=$LAST
	wait_port $((TCP + 5)) || { stop "$sp"; return 1; }
	sleep 0.5
	n=$(wc -l <"$dir/one-pair.strace")
	run "$dir/one-pair.md" "$dir/one-pair.err" "$BIN/tcpbench" -listen "127.0.0.1:$TCP" \
		-tests cps -rounds 1 -warm=false -cps-conns 1 -cps-max 1 -target "unstuck=127.0.0.1:$((TCP + 5))"
	sleep 0.5
	# The pair's lines: from its accept on, before unstuck is stopped.
	tail -n +$((n + 1)) "$dir/one-pair.strace" | sed 's/^[0-9]* *//' | grep -v '^--- SIG\|EAGAIN.*accept4\|^accept4(.*EAGAIN' |
		cut -c1-150 >"$dir/one-pair.txt"
	strace_end "$sp"
	[[ -s $dir/one-pair.txt ]]
}

# strace_table: the system calls per pair of each proxy traced under the
# pairs load, the most frequent first, as a markdown table.
strace_table() {
	local dir=$TMP/tcp name files=() pairs=() heads=""
	for name in unstuck haproxy nginx; do
		[[ -s $dir/strace-$name-pairs.txt ]] || continue
		files+=("$dir/strace-$name-pairs.txt")
		pairs+=("$(awk -F'\t' 'NR > 1 {s += $7} END {print s + 0}' "$dir/strace-$name-pairs.tsv")")
		heads="$heads $name"
	done
	((${#files[@]})) || return 1
	awk -v heads="$heads" -v pairs="${pairs[*]}" '
		FNR == 1 { f++ }
		$4 ~ /^[0-9]+$/ && $NF ~ /^[a-z0-9_]+$/ && $NF != "total" {
			if (!($NF in seen)) { seen[$NF] = 1; list[++n] = $NF }
			c[$NF, f] = $4; tot[f] += $4
		}
		END {
			nf = split(heads, h, " "); split(pairs, p, " ")
			for (i = 1; i <= n; i++) key[i] = c[list[i], 1] + 0
			for (i = 2; i <= n; i++) for (j = i; j > 1 && key[j - 1] < key[j]; j--) {
				t = key[j]; key[j] = key[j - 1]; key[j - 1] = t; t = list[j]; list[j] = list[j - 1]; list[j - 1] = t }
			printf "| system call |"; for (k = 1; k <= nf; k++) printf " %s |", h[k]; print ""
			printf "|---|"; for (k = 1; k <= nf; k++) printf "---:|"; print ""
			printf "| pairs traced |"; for (k = 1; k <= nf; k++) printf " %d |", p[k]; print ""
			printf "| **all, per pair** |"; for (k = 1; k <= nf; k++) printf " **%.1f** |", (p[k] ? tot[k] / p[k] : 0); print ""
			for (i = 1; i <= n; i++) {
				big = 0
				for (k = 1; k <= nf; k++) if (p[k] && c[list[i], k] / p[k] >= 0.05) big = 1
				if (!big) continue
				printf "| %s |", list[i]
				for (k = 1; k <= nf; k++) printf " %.2f |", (p[k] ? c[list[i], k] / p[k] : 0)
				print ""
			}
		}' "${files[@]}"
}

TCP_STRACE=splice,read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg,sendfile

phase_tcp() {
	note "7. TCP mode ($TCP_ROUNDS rounds of $TCP_BULK bulk and up to $TCP_CPS_MAX pairs or $TCP_CPS_TIME; then a profile and strace)"
	quiet_wait
	start_tcp_proxies || return 1
	local dir=$TMP/tcp b=$TCP hz
	hz=$(getconf CLK_TCK)
	# shellcheck disable=SC2086 # pid lists are comma-joined below
	run "$dir/tcp.md" "$dir/tcp.err" "$BIN/tcpbench" -listen "127.0.0.1:$b" \
		-rounds "$TCP_ROUNDS" -bulk "$TCP_BULK" -cps-conns 32 -cps-max "$TCP_CPS_MAX" -cps-time "$TCP_CPS_TIME" \
		-hz "$hz" -subject unstuck -raw "$dir/tcp-runs.tsv" \
		-target "direct=127.0.0.1:$b" \
		-target "haproxy=127.0.0.1:$((b + 2))@$TCP_HAPROXY_PID" \
		-target "haproxy+splice=127.0.0.1:$((b + 3))@$TCP_HASPLICE_PID" \
		-target "nginx=127.0.0.1:$((b + 1))@$(echo $TCP_NGINX_PIDS | tr ' ' ',')" \
		-target "unstuck=127.0.0.1:$((b + 5))@$TCP_UNSTUCK_PID"
	local rc=$? prc=0 src=0 name
	note "   CPU profile of unstuck under the pairs load (${TCP_PROF}s)"
	tcp_profile || prc=1
	# shellcheck disable=SC2086
	stop $TCP_PIDS

	# The same proxies again, one at a time under strace -f -c (their
	# ports are free again): unstuck for a bulk transfer (the calls that
	# move bytes), then each for the pairs load (every call).
	note "   unstuck under strace -f -c: $TCP_BULK one way, then both ways"
	strace_proxy unstuck-bulk $((b + 5)) "$TCP_STRACE" bulk "$BIN/unstuck" --config "$dir/unstuck/unstuck.yaml" || src=1
	note "   unstuck, HAProxy and nginx under strace -f -c: $TCP_STRACE_PAIRS pairs each"
	strace_proxy unstuck-pairs $((b + 5)) "" pairs "$BIN/unstuck" --config "$dir/unstuck/unstuck.yaml"
	strace_proxy haproxy-pairs $((b + 2)) "" pairs haproxy -db -f "$dir/haproxy.cfg"
	strace_proxy nginx-pairs $((b + 1)) "" pairs nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log"
	strace_one_pair

	say_section "7. TCP mode"
	say "bench/cmd/tcpbench is the upstream and the client; every proxy forwards to it on 127.0.0.1:$b, and direct is the client connected to it."
	say "unstuck: \`protocol: tcp\`, \`pool: {min_idle: 0}\`, other keys at their defaults (half_close propagate, listener linger reset)."
	say "HAProxy: mode tcp, nbthread 2, as is (it splices nothing) and with \`option splice-request\` and \`option splice-response\` (haproxy+splice:"
	say "every byte spliced; \`option splice-auto\` left most of them to recvfrom/sendto here)."
	say "nginx: \`stream { proxy_pass; proxy_half_close on; }\`, worker_processes 2, proxy_buffer_size at its default (16k)."
	say "Bulk: $TCP_BULK through one connection, client to upstream (one way: timed until the upstream's count of the bytes is back),"
	say "upstream to client (one way back: until the client's EOF), and both at once (MB/s of the two directions together)."
	say "Pairs: 32 workers, each connecting, sending 128 bytes, reading a 512-byte reply and closing (the upstream closes on the client's FIN),"
	say "until $TCP_CPS_MAX pairs or $TCP_CPS_TIME per run; a pair's time runs from connect to its reply."
	say "$TCP_ROUNDS rounds: in each, every test runs through every target in turn, each round starting from another target; rows are medians"
	say "over the rounds, and 'by round' gives the ratio in each round."
	say "CPU: user+sys of the proxy's processes (nginx: master and workers) from /proc/PID/stat ($hz ticks a second), summed over all rounds,"
	say "per GB (10^9 bytes through the proxy; both ways counts both directions) or per 1,000 pairs. '+ ksoftirqd': what the kernel's"
	say "ksoftirqd threads used meanwhile, per the same unit: packet processing (on loopback, the receiving side's TCP work) that the kernel"
	say "deferred from the senders' system calls, which no process's /proc/PID/stat counts; the direct row is the floor. Client, upstream"
	say "and proxy share the 2 cores: a proxy that needs less CPU leaves more to the other two, so MB/s and conn/s here are bounded by the CPU"
	say "of all three."
	say "Other work, cores: CPU the rest of the machine (neither tcpbench nor the proxy measured) used during that target's runs, in cores of 2"
	say "(lowest–highest, median): on a shared machine, the noise in each run."
	say "Targets (from the issue): unstuck's MB/s at least the others' (ratio ≥ 1.00), its conn/s at least 0.9 of theirs."
	say ""
	tee -a "$RUN_OUT" <"$dir/tcp.md"
	drops_note
	grep -v '^tcpbench: round ' "$dir/tcp.err" >"$dir/tcp.notes"
	report_errors tcpbench $rc "$dir/tcp.notes"
	local rsts
	rsts=$(awk -F'\t' '$3 == "unstuck" && $17 == "RST"' "$dir/tcp-runs.tsv" | wc -l)
	if ((rsts > 0)); then
		say ""
		say "'Ended by RST, not FIN': the client had read every byte, and where the upstream's FIN was due its read got ECONNRESET."
		say "unstuck does this when the app half-closes first and the upstream closes after it (here: both ways, where the client sends"
		say "its FIN after its bytes and the upstream closes once it has read it): the upstream's FIN ends the pair and is not passed on;"
		say "the app connection is closed with the listener's linger, reset by default, whose RST stands in for the FIN whenever all data"
		say "is acknowledged by then. An app that reads to EOF sees an error after a clean end. (With \`linger: graceful\` on the listener"
		say "it gets its FIN.) These runs are counted as complete: no byte was lost."
	fi
	say ""
	say "Every run, in the order run (value: MB/s or conn/s; ticks at $hz a second, -1: no process to read; syn_retrans: SYNs the whole"
	say "machine sent again during the run, each a connect that waited 1 s or more; end: how a bulk connection ended at the client):"
	say ""
	column -t -s $'\t' "$dir/tcp-runs.tsv" | say_code
	say ""

	say "### unstuck's system calls during a bulk transfer"
	say ""
	if ((src)); then
		say "strace gave no summary (see the messages above)."
		report_errors tcpbench 1 "$dir/strace-unstuck-bulk.err"
	else
		local calls errs moved per f=$dir/strace-unstuck-bulk.txt
		calls=$(awk '$NF == "splice" {print $4}' "$f")
		errs=$(awk '$NF == "splice" && NF == 6 {print $5}' "$f")
		moved=$(awk -F'\t' 'NR > 1 && $18 == "" {s += $6} END {printf "%.0f", s}' "$dir/strace-unstuck-bulk.tsv")
		per=$(awk -v c="${calls:-0}" -v e="${errs:-0}" -v n="$moved" 'BEGIN { if (c - e > 0) printf "%.0f", 2 * n / (c - e) / 1024 }')
		say "The same unstuck configuration, run for its whole life as \`strace -f -c -e trace=$TCP_STRACE\`:"
		say "it started, moved $TCP_BULK one way through one connection and $TCP_BULK each way through another, and was stopped (SIGTERM)."
		say "(Under strace the transfers are slower; only the counts matter here.)"
		say ""
		grep -v '^$' "$dir/strace-unstuck-bulk.md" | head -n 3 | tee -a "$RUN_OUT"
		say ""
		say_code <"$f"
		say ""
		say "$moved bytes went through unstuck in ${calls:-0} splice calls, ${errs:-0} of which returned EAGAIN (socket empty or pipe full:"
		say "the goroutine then waits in the poller). Each byte is spliced twice (socket to pipe, pipe to socket): about ${per:-?} KiB per"
		say "call that moved bytes. The few read and write calls are the Go runtime's and startup's (the config file, the poller's"
		say "wake-ups): no byte of the transfers went through user space."
	fi
	say ""

	say "### System calls per short pair"
	say ""
	say "Each proxy (same configuration as above) run alone under \`strace -f -c\` (every system call, all threads and processes) for its"
	say "whole life while $TCP_STRACE_PAIRS pairs went through it (32 workers); calls per pair, the ones at 0.05 or more in any proxy."
	say "Startup and shutdown are included (a handful of calls, some hundredths per pair). Under strace pairs run far slower; only the counts matter."
	say ""
	strace_table >"$dir/strace-table.md" && tee -a "$RUN_OUT" <"$dir/strace-table.md" || say "strace gave no summary (see the messages above)."
	say ""
	if [[ -s $dir/one-pair.txt ]]; then
		say "One pair through unstuck, call by call (\`strace -f -e trace=%network,splice,pipe2,fcntl,ioctl,epoll_ctl,shutdown,close\`, a fresh"
		say "unstuck, one pair from one worker; the first pair also makes the two pipes that later pairs take from Go's pipe pool):"
		say ""
		say_code <"$dir/one-pair.txt"
		say ""
	fi

	say "### Where unstuck's CPU goes under the pairs load"
	say ""
	if ((prc)); then
		say "No profile (see the messages above)."
		report_errors pprof 1 "$dir/profile.err"
	else
		say "A ${TCP_PROF}s CPU profile (the debug listener's /debug/pprof/profile) of the measured unstuck while tcpbench ran pairs through it alone"
		say "(32 workers, $((TCP_PROF + 1))s; the profiler's own cost included):"
		say ""
		grep -v '^$' "$dir/profile-run.md" | head -n 3 | cut -d'|' -f1-6 | sed 's/$/|/' | tee -a "$RUN_OUT"
		say ""
		say_pprof_tops "$dir/unstuck-pairs.pprof" 45 \
			"\`go tool pprof -top -cum\`, the call paths that take the most (time in the kernel shows as Syscall6 and the like):" \
			"\`go tool pprof -top\`, by the time spent in each function itself:"
	fi
	say ""
}

# --------------------------------------------------------------- phase 8

# start_tls_rig: the TLS upstream (bench/cmd/tlsbench serve, which writes
# the CA and the certificate to $TMP/tls/certs) and the three proxies of
# phase 8, each with three front ports: one to a keep-alive TLS listener of
# the upstream (wrk), one to a TLS listener that closes connections idle
# for 1 s (the paced client) and one to a plain-HTTP listener (wrk, the
# baseline); each proxy has listeners of its own, so that the upstream
# counts each one's handshakes apart. Sets TLS_UP_PID,
# TLS_NGINX_PIDS, TLS_HAPROXY_PID, TLS_UNSTUCK_PID and TLS_PIDS.
start_tls_rig() {
	local dir=$TMP/tls b=$TLS name
	mkdir -p "$dir/certs" "$dir/unstuck"
	start tlsbench "$dir/serve.log" "$BIN/tlsbench" serve -dir "$dir/certs" -name "$TLS_NAME" -stats "127.0.0.1:$b" \
		-keepalive "ka-nginx=127.0.0.1:$((b + 21))" -keepalive "ka-haproxy=127.0.0.1:$((b + 22))" \
		-keepalive "ka-unstuck=127.0.0.1:$((b + 25))" \
		-idle "idle-nginx=127.0.0.1:$((b + 31))" -idle "idle-haproxy=127.0.0.1:$((b + 32))" \
		-idle "idle-unstuck=127.0.0.1:$((b + 35))" \
		-plain "plain-nginx=127.0.0.1:$((b + 51))" -plain "plain-haproxy=127.0.0.1:$((b + 52))" \
		-plain "plain-unstuck=127.0.0.1:$((b + 55))"
	TLS_UP_PID=$LAST
	# The stats listener opens after the certificates are written and the
	# TLS listeners listen.
	if ! wait_port "$b"; then
		tail -n 5 "$dir/serve.log" >&2
		stop "$TLS_UP_PID"
		return 1
	fi
	local ca=$dir/certs/ca.pem

	start_nginx nginx "$dir" <<EOF
$(nginx_main "$dir")
http {
$(nginx_http_base "$dir" long-keepalive)
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # nginx 1.22 offers only TLS 1.2 to upstreams unless told (1.3 is its
    # default from 1.23.4); the others negotiate 1.3.
    proxy_ssl_protocols TLSv1.2 TLSv1.3;
    proxy_ssl_session_reuse on;
    proxy_ssl_verify on;
    proxy_ssl_trusted_certificate $ca;
    proxy_ssl_server_name on;
    proxy_ssl_name $TLS_NAME;
    upstream tls_ka {
        server 127.0.0.1:$((b + 21));
        keepalive $((POOL / 2));
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    upstream tls_idle {
        server 127.0.0.1:$((b + 31));
        keepalive $((POOL / 2));
        keepalive_timeout 300s;
    }
    upstream plain_ka {
        server 127.0.0.1:$((b + 51));
        keepalive $((POOL / 2));
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$((b + 1)) backlog=4096;
        location / { proxy_pass https://tls_ka; }
    }
    server {
        listen 127.0.0.1:$((b + 11));
        location / { proxy_pass https://tls_idle; }
    }
    server {
        listen 127.0.0.1:$((b + 41)) backlog=4096;
        location / { proxy_pass http://plain_ka; }
    }
}
EOF
	local nginx_master=$LAST

	local srv="ssl verify required ca-file $ca sni str($TLS_NAME) pool-purge-delay 300s"
	start_haproxy haproxy "$dir" <<EOF
global
    nbthread 2
    maxconn 9000
$(haproxy_http_defaults)
frontend fe_ka
    bind 127.0.0.1:$((b + 2))
    default_backend be_ka
frontend fe_idle
    bind 127.0.0.1:$((b + 12))
    default_backend be_idle
frontend fe_plain
    bind 127.0.0.1:$((b + 42))
    default_backend be_plain
backend be_ka
    server up 127.0.0.1:$((b + 22)) $srv
backend be_idle
    server up 127.0.0.1:$((b + 32)) $srv
backend be_plain
    server up 127.0.0.1:$((b + 52)) pool-purge-delay 300s
EOF
	TLS_HAPROXY_PID=$LAST

	# unstuck's config file in a directory of its own (see start_tcp_proxies).
	local tls="tls: {enabled: true, ca_file: $ca, server_name: $TLS_NAME}"
	cat >"$dir/unstuck/unstuck.yaml" <<EOF
admin: {listen: 127.0.0.1:$((b + 9)), debug_listen: 127.0.0.1:$((b + 8)), pprof: true}
listeners:
  ka: {listen: 127.0.0.1:$((b + 5)), upstream: ka}
  idle: {listen: 127.0.0.1:$((b + 15)), upstream: idle}
  plain: {listen: 127.0.0.1:$((b + 45)), upstream: plain}
upstreams:
  ka:
    endpoints: ["127.0.0.1:$((b + 25))"]
    pool: {max_conns: $((POOL * 2)), max_idle: $POOL}
    $tls
  idle:
    endpoints: ["127.0.0.1:$((b + 35))"]
    $tls
  plain:
    endpoints: ["127.0.0.1:$((b + 55))"]
    pool: {max_conns: $((POOL * 2)), max_idle: $POOL}
EOF
	start unstuck "$dir/unstuck.log" "$BIN/unstuck" --config "$dir/unstuck/unstuck.yaml"
	TLS_UNSTUCK_PID=$LAST

	wait_ports "$dir" "$b" "1 2 5 11 12 15 41 42 45" "$nginx_master" "$TLS_HAPROXY_PID" "$TLS_UNSTUCK_PID" "$TLS_UP_PID" || return 1
	TLS_NGINX_PIDS="$nginx_master $(children "$nginx_master")"
	TLS_PIDS="$TLS_NGINX_PIDS $TLS_HAPROXY_PID $TLS_UNSTUCK_PID $TLS_UP_PID"
}

# tls_profile: a CPU profile of unstuck under wrk (its keep-alive port) in
# $TMP/tls/unstuck-wrk.pprof.
tls_profile() {
	local dir=$TMP/tls
	pprof_during "$dir/unstuck-wrk.pprof" "$TLS_PROF" $((TLS + 8)) "$dir/profile-wrk.txt" "$dir/profile-wrk.err" \
		wrk -t2 -c"$TLS_WRK_CONNS" -d"$((TLS_PROF + 1))s" "http://127.0.0.1:$((TLS + 5))/"
}

# pprof_share PROFILE REGEX: the percentage of PROFILE's samples spent in
# functions (flat) whose names match REGEX.
pprof_share() {
	go tool pprof -top -nodecount=100000 "$1" 2>/dev/null |
		awk -v re="$2" '/^ *[0-9.]+(s|ms|us)? +[0-9.]+%/ && $6 ~ re { sub(/%/, "", $2); s += $2 } END { printf "%.1f", s }'
}

# round_ratio ROWS METRIC A B [text]: over the rounds of a tput rows file
# (each line: round, then tput_run's fields), the median, lowest and highest
# of A's METRIC divided by B's in the same round, and how many rounds had
# both; METRIC rps (req/s) or cpr (proxy CPU ticks per request). With
# "text": "MEDIAN (LOWEST–HIGHEST)".
round_ratio() {
	awk -v a="$3" -v b="$4" -v metric="$2" -v text="${5:-}" '
		{ r = $1; if (r > nr) nr = r; v[r, $3] = (metric == "rps") ? $4 : (($7 > 0) ? $8 / $7 : 0) }
		END { m = 0
			for (r = 1; r <= nr; r++) if (v[r, a] > 0 && v[r, b] > 0) x[++m] = v[r, a] / v[r, b]
			for (i = 2; i <= m; i++) for (j = i; j > 1 && x[j - 1] > x[j]; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t }
			if (!m) { if (text != "") printf "-"; exit }
			if (text != "") printf "%.2f (%.2f–%.2f)", x[int((m + 1) / 2)], x[1], x[m]
			else printf "%.2f %.2f %.2f %d", x[int((m + 1) / 2)], x[1], x[m], m }' "$1"
}

phase_tls() {
	note "8. TLS to the upstream ($TLS_ROUNDS rounds of wrk -c$TLS_WRK_CONNS for $DUR, 3 proxies with TLS and without; a ${TLS_PROF}s profile; $TLS_PACE_ROUNDS rounds of $TLS_BURSTS bursts of $TLS_PACE_CONNS)"
	quiet_wait
	start_tls_rig || return 1
	local dir=$TMP/tls b=$TLS hz r k i
	hz=$(getconf CLK_TCK)
	local names=(nginx haproxy unstuck nginx-plain haproxy-plain unstuck-plain)
	local ports=($((b + 1)) $((b + 2)) $((b + 5)) $((b + 41)) $((b + 42)) $((b + 45)))
	local pids=("$TLS_NGINX_PIDS" "$TLS_HAPROXY_PID" "$TLS_UNSTUCK_PID" "$TLS_NGINX_PIDS" "$TLS_HAPROXY_PID" "$TLS_UNSTUCK_PID")

	# (1) wrk, the proxies in turn, with TLS and without (the same proxies
	# and upstream process), each round starting from another.
	UPSTREAM_PIDS=$TLS_UP_PID
	TPUT_ROWS=$dir/tput.rows
	: >"$TPUT_ROWS"
	for ((r = 1; r <= TLS_ROUNDS; r++)); do
		for ((k = 0; k < ${#names[@]}; k++)); do
			i=$(((k + r - 1) % ${#names[@]}))
			tput_run "$TLS_WRK_CONNS" "${names[$i]}" "${ports[$i]}" "${pids[$i]}"
			sed -i "\$s/^/$r /" "$TPUT_ROWS"
		done
	done
	unset TPUT_ROWS
	"$BIN/tlsbench" stats -stats "127.0.0.1:$b" >"$dir/stats-wrk.tsv" 2>&1
	note "   CPU profile of unstuck under wrk (${TLS_PROF}s)"
	local prc=0 pct_crypto="" pct_sys="" pct_rt=""
	if tls_profile; then
		pct_crypto=$(pprof_share "$dir/unstuck-wrk.pprof" '^(crypto/|vendor/golang.org/x/crypto)')
		pct_sys=$(pprof_share "$dir/unstuck-wrk.pprof" '^(syscall\.|internal/runtime/syscall|runtime/internal/syscall)')
		pct_rt=$(pprof_share "$dir/unstuck-wrk.pprof" '^runtime\.')
	else
		prc=1
	fi

	# (2) the paced client against the upstream that closes idle connections.
	note "   paced bursts: handshakes per 1,000 requests"
	run "$dir/pace.md" "$dir/pace.err" "$BIN/tlsbench" pace -stats "127.0.0.1:$b" \
		-rounds "$TLS_PACE_ROUNDS" -bursts "$TLS_BURSTS" -conns "$TLS_PACE_CONNS" -gap 1200ms \
		-raw "$dir/pace-runs.tsv" -subject unstuck \
		-target "nginx=127.0.0.1:$((b + 11))" -target "haproxy=127.0.0.1:$((b + 12))" \
		-target "unstuck=127.0.0.1:$((b + 15))"
	local rc=$?
	"$BIN/tlsbench" get "http://127.0.0.1:$((b + 9))/metrics" 2>&1 | grep '^unstuck_upstream_tls_handshakes_total' >"$dir/unstuck-metrics.txt"
	"$BIN/tlsbench" stats -stats "127.0.0.1:$b" >"$dir/stats-end.tsv" 2>&1
	# shellcheck disable=SC2086
	stop $TLS_PIDS

	# The median run of each proxy by req/s, and the ratios round by round.
	awk '
		{ n[$3]++; rps[$3, n[$3]] = $4 + 0; row[$3, n[$3]] = $0 }
		END { split("nginx haproxy unstuck nginx-plain haproxy-plain unstuck-plain", names, " ")
			for (x = 1; x <= 6; x++) { key = names[x]; m = n[key]; if (!m) continue
				for (a = 1; a <= m; a++) idx[a] = a
				for (a = 2; a <= m; a++) for (j = a; j > 1 && rps[key, idx[j - 1]] > rps[key, idx[j]]; j--) { t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t }
				print row[key, idx[int((m + 1) / 2)]] } }
	' "$dir/tput.rows" >"$dir/tput.median"

	say_section "8. TLS to the upstream"
	say "The upstream is bench/cmd/tlsbench: net/http HTTPS servers (HTTP/1.1, ALPN http/1.1, a 5-byte body) with a CA and an ECDSA P-256"
	say "certificate for $TLS_NAME that it makes at start (crypto/x509). It counts every handshake, full or resumed"
	say "(\`tls.ConnectionState.DidResume\` in its \`VerifyConnection\`), on listeners of each proxy's own. Every proxy verifies the"
	say "certificate against the CA and the name $TLS_NAME, which it sends as SNI, and keeps upstream connections alive:"
	say "unstuck \`tls: {enabled: true, ca_file, server_name: $TLS_NAME}\` (its session cache is built in), pool as in section 1;"
	say "nginx (worker_processes 2) \`proxy_pass https://\` to an \`upstream\` block with \`keepalive $((POOL / 2))\`, \`proxy_http_version 1.1\`,"
	say "\`proxy_set_header Connection \"\"\`, \`proxy_ssl_session_reuse on\`, \`proxy_ssl_verify on\`, \`proxy_ssl_trusted_certificate\`,"
	say "\`proxy_ssl_server_name on\`, \`proxy_ssl_name $TLS_NAME\` and \`proxy_ssl_protocols TLSv1.2 TLSv1.3\` (nginx 1.22 leaves 1.3 out by default);"
	say "HAProxy (nbthread 2) \`server ... ssl verify required ca-file ... sni str($TLS_NAME)\` (it checks the certificate against the SNI;"
	if awk -F'\t' 'NR > 1 && $4 != $2 + $3 { bad = 1 } END { exit bad }' "$dir/stats-end.tsv"; then
		say "a wrong name gets a 503), \`http-reuse always\`. Every handshake of all three was at TLS 1.3 (tls13 in the upstream's counters below)."
	else
		say "a wrong name gets a 503), \`http-reuse always\`. Not every handshake was at TLS 1.3: see tls13 in the upstream's counters below."
	fi
	say "Targets (from the issue): unstuck's req/s at least nginx's; against the upstream that closes idle connections, every"
	say "handshake of unstuck's but the first resumed."
	say ""
	say "### Throughput and latency"
	say ""
	say "wrk -t2 -c$TLS_WRK_CONNS -d$DUR --latency to each proxy (plain HTTP from wrk to the proxy), after a $WARM warm-up, the upstream keeping"
	say "connections. Mode TLS: the proxy to tlsbench's keep-alive TLS listener; plain: the same proxy process to a plain-HTTP listener of"
	say "the same tlsbench process (the same net/http server without TLS): the baseline that shows what TLS costs each proxy."
	say "Rounds: $TLS_ROUNDS, over the six (three proxies, two modes) in turn, each round starting from another. Rows: each one's median run"
	say "by req/s (every column from that run); 'unstuck / this' compares within a mode. req/CPU-s and µs/req: the proxy's processes'"
	say "user+sys (/proc/PID/stat). upstream CPU-s: tlsbench's in that run; other CPU-s: used by neither proxy, upstream nor wrk (a run where"
	say "it passed 5% of the machine was repeated, 3 tries at most, and the quietest kept)."
	say "Absolute numbers on this shared 2-core VM are noise; the ratios, from runs side by side in the same rounds, are the result."
	say ""
	say "| mode | proxy | req/s | unstuck / this | p50 ms | p99 ms | req/CPU-s | unstuck / this | user µs/req | sys µs/req | upstream CPU-s | other CPU-s | errors |"
	say "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	awk -v hz="$hz" '
		{ name = $3; mode = "TLS"; if (sub(/-plain$/, "", name)) mode = "plain"
		  md[NR] = mode; n[NR] = name; rps[NR] = $4; p50[NR] = $5; p99[NR] = $6; reqs[NR] = $7; cpu[NR] = $8; err[NR] = $9; up[NR] = $10; oth[NR] = $12; usr[NR] = $13
		  per[NR] = (cpu[NR] > 0) ? reqs[NR] / (cpu[NR] / hz) : 0
		  if (name == "unstuck") { urps[mode] = rps[NR]; uper[mode] = per[NR] } }
		END { for (i = 1; i <= NR; i++) {
			r = (rps[i] > 0) ? sprintf("%.2f", urps[md[i]] / rps[i]) : "-"
			pr = (per[i] > 0) ? sprintf("%.2f", uper[md[i]] / per[i]) : "-"
			uus = (reqs[i] > 0) ? sprintf("%.1f", usr[i] / hz * 1e6 / reqs[i]) : "-"
			sus = (reqs[i] > 0) ? sprintf("%.1f", (cpu[i] - usr[i]) / hz * 1e6 / reqs[i]) : "-"
			printf "| %s | %s | %s | %s | %s | %s | %.0f | %s | %s | %s | %.2f | %.2f | %s |\n", md[i], n[i], rps[i], r, p50[i], p99[i], per[i], pr, uus, sus, up[i] / hz, oth[i] / hz, err[i] } }
	' "$dir/tput.median" | tee -a "$RUN_OUT"
	say ""
	say "By round, unstuck's value divided by the other's, from runs of the same round (req/s, req/CPU-s: above 1 is unstuck ahead;"
	say "p99: below 1 is unstuck ahead):"
	say ""
	say "| round | TLS req/s vs nginx | vs HAProxy | plain req/s vs nginx | vs HAProxy | TLS req/CPU-s vs nginx | vs HAProxy | plain req/CPU-s vs nginx | vs HAProxy | TLS p99 vs nginx | vs HAProxy |"
	say "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	awk -v hz="$hz" '
		{ r = $1; if (r > nr) nr = r; rps[r, $3] = $4; p99[r, $3] = $6; per[r, $3] = ($8 > 0) ? $7 / ($8 / hz) : 0 }
		function q(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
		END { for (r = 1; r <= nr; r++)
			printf "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r,
				q(rps[r, "unstuck"], rps[r, "nginx"]), q(rps[r, "unstuck"], rps[r, "haproxy"]),
				q(rps[r, "unstuck-plain"], rps[r, "nginx-plain"]), q(rps[r, "unstuck-plain"], rps[r, "haproxy-plain"]),
				q(per[r, "unstuck"], per[r, "nginx"]), q(per[r, "unstuck"], per[r, "haproxy"]),
				q(per[r, "unstuck-plain"], per[r, "nginx-plain"]), q(per[r, "unstuck-plain"], per[r, "haproxy-plain"]),
				q(p99[r, "unstuck"], p99[r, "nginx"]), q(p99[r, "unstuck"], p99[r, "haproxy"]) }
	' "$dir/tput.rows" | tee -a "$RUN_OUT"
	say ""
	say "What TLS costs each proxy, by round: req/s with TLS divided by req/s plain, and CPU per request with TLS divided by CPU per"
	say "request plain (runs of the same round):"
	say ""
	say "| round | req/s TLS ÷ plain: unstuck | nginx | HAProxy | CPU/request TLS ÷ plain: unstuck | nginx | HAProxy |"
	say "|---:|---:|---:|---:|---:|---:|---:|"
	awk -v hz="$hz" '
		{ r = $1; if (r > nr) nr = r; rps[r, $3] = $4; cpr[r, $3] = ($7 > 0) ? $8 / $7 : 0 }
		function q(a, b) { return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "-" }
		END { for (r = 1; r <= nr; r++)
			printf "| %d | %s | %s | %s | %s | %s | %s |\n", r,
				q(rps[r, "unstuck"], rps[r, "unstuck-plain"]), q(rps[r, "nginx"], rps[r, "nginx-plain"]), q(rps[r, "haproxy"], rps[r, "haproxy-plain"]),
				q(cpr[r, "unstuck"], cpr[r, "unstuck-plain"]), q(cpr[r, "nginx"], cpr[r, "nginx-plain"]), q(cpr[r, "haproxy"], cpr[r, "haproxy-plain"]) }
	' "$dir/tput.rows" | tee -a "$RUN_OUT"
	drops_note
	say ""
	say "Upstream connections and handshakes over all the wrk runs with TLS and their warm-ups (the upstream's counters; requests: those it"
	say "answered):"
	say ""
	say "| proxy | upstream connections | full handshakes | resumed | requests |"
	say "|---|---:|---:|---:|---:|"
	awk -F'\t' '$1 ~ /^ka-/ { sub(/^ka-/, "", $1); printf "| %s | %d | %d | %d | %d |\n", $1, $5, $2, $3, $6 }' "$dir/stats-wrk.tsv" | tee -a "$RUN_OUT"
	say ""

	say "### Handshakes against an upstream that closes idle connections"
	say ""
	say "The upstream's listeners for this part close a connection idle for 1 s (close_notify, then FIN). bench/cmd/tlsbench pace:"
	say "$TLS_PACE_CONNS keep-alive client connections to the proxy send one GET each at the same moment (a burst), wait for the $TLS_PACE_CONNS"
	say "answers, then stay idle 1.2 s, by which time the upstream has closed every connection the proxy kept: each burst needs new"
	say "upstream connections, and each of those a handshake. $TLS_BURSTS bursts per run; a proxy's first run starts with one request alone"
	say "and 1.2 s idle, so that a proxy with a session cache has a session before the first burst. Rounds: $TLS_PACE_ROUNDS, over the three"
	say "in turn, each round starting from another. Full: a handshake with the certificate; resumed: with a session ticket"
	say "(TLS 1.3 PSK). Request latency: a request's time at the client, handshake included."
	say ""
	tee -a "$RUN_OUT" <"$dir/pace.md"
	say ""
	if [[ -s $dir/unstuck-metrics.txt ]]; then
		say "unstuck's own count (admin /metrics at the end; upstream idle is the one above, ka the wrk part):"
		say ""
		say_code <"$dir/unstuck-metrics.txt"
		say ""
	fi
	grep -v '^tlsbench: round ' "$dir/pace.err" >"$dir/pace.notes"
	report_errors "tlsbench pace" $rc "$dir/pace.notes"

	# The reading: the targets, from this run's numbers.
	say "### Reading"
	say ""
	local q h_u u_full reqs
	q=$(round_ratio "$dir/tput.rows" rps unstuck nginx)
	if [[ -n $q ]]; then
		local med lo hi m verdict
		read -r med lo hi m <<<"$q"
		if awk -v x="$med" 'BEGIN { exit !(x >= 1) }'; then
			verdict="target (≥ 1.00) met"
		else
			verdict="target (≥ 1.00) missed by $(awk -v x="$med" 'BEGIN { printf "%.0f", (1 - x) * 100 }')%"
		fi
		say "- req/s with TLS: unstuck at ${med}x nginx's (median over $m round(s); lowest $lo, highest $hi): $verdict."
		say "  Against HAProxy: $(round_ratio "$dir/tput.rows" rps unstuck haproxy text)."
		say "  Without TLS, in the same rounds: $(round_ratio "$dir/tput.rows" rps unstuck-plain nginx-plain text) of nginx's,"
		say "  $(round_ratio "$dir/tput.rows" rps unstuck-plain haproxy-plain text) of HAProxy's."
		say "- What TLS costs (req/s with TLS ÷ plain, median over rounds): unstuck $(round_ratio "$dir/tput.rows" rps unstuck unstuck-plain text),"
		say "  nginx $(round_ratio "$dir/tput.rows" rps nginx nginx-plain text), HAProxy $(round_ratio "$dir/tput.rows" rps haproxy haproxy-plain text);"
		say "  CPU per request with TLS ÷ plain: unstuck $(round_ratio "$dir/tput.rows" cpr unstuck unstuck-plain text),"
		say "  nginx $(round_ratio "$dir/tput.rows" cpr nginx nginx-plain text), HAProxy $(round_ratio "$dir/tput.rows" cpr haproxy haproxy-plain text)."
		local pmed
		read -r pmed _ < <(round_ratio "$dir/tput.rows" rps unstuck-plain nginx-plain)
		if ((!prc)); then
			say "- unstuck's CPU profile under wrk with TLS (below): $pct_sys% of the samples in system calls, $pct_crypto% in crypto/ (the"
			say "  encryption and the TLS record layer's own code), $pct_rt% in the Go runtime."
		fi
		if [[ -n $pmed ]] && awk -v t="$med" -v p="$pmed" 'BEGIN { exit !(t < 1 && p - t <= 0.15) }'; then
			say "- With TLS unstuck is at ${med}x nginx's req/s, without it ${pmed}x in the same rounds: most of the gap is there without TLS,"
			say "  in what each request costs around the encryption (system calls, the Go runtime), not in the encryption."
		elif [[ -n $pmed ]] && awk -v t="$med" -v p="$pmed" 'BEGIN { exit !(t < 1 && p - t > 0.15) }'; then
			say "- With TLS unstuck is at ${med}x nginx's req/s, without it ${pmed}x in the same rounds: TLS widens the gap."
		fi
	fi
	u_full=$(awk -F'\t' '$2 == "unstuck" { s += $7 } END { print s + 0 }' "$dir/pace-runs.tsv" 2>/dev/null)
	h_u=$(awk -F'\t' '$2 == "unstuck" { s += $7 + $8 } END { print s + 0 }' "$dir/pace-runs.tsv" 2>/dev/null)
	reqs=$(awk -F'\t' '$2 == "unstuck" { s += $3 } END { print s + 0 }' "$dir/pace-runs.tsv" 2>/dev/null)
	if [[ -n $u_full ]] && ((h_u > 0)); then
		local others
		others=$(awk -F'\t' '$2 != "unstuck" && NR > 1 { f[$2] += $7; h[$2] += $7 + $8 } END { sep = ""; for (k in f) { printf "%s%s %d of %d", sep, k, f[k], h[k]; sep = ", " } }' "$dir/pace-runs.tsv")
		if ((u_full <= 1)); then
			say "- handshakes: unstuck made $h_u for $reqs paced requests, $u_full of them full: all but the first resumed, target met. Full handshakes of the others: $others."
		else
			say "- handshakes: unstuck made $h_u for $reqs paced requests, $u_full of them full: target (all but the first resumed) missed by $((u_full - 1)). Full handshakes of the others: $others."
		fi
	fi
	say "- The others' extra full handshakes came when a burst first reached a worker or thread holding no session yet: nginx keeps"
	say "  upstream sessions per worker process (without a \`zone\` in the upstream block, as here; with one they live in shared"
	say "  memory, which this run does not measure) and HAProxy per thread, two of each here, and connections opened at once in one"
	say "  without a session all handshake in full. unstuck keeps one session cache per upstream for the whole process."
	local kaf kac
	read -r kaf kac < <(awk -F'\t' '$1 == "ka-unstuck" { print $2, $5 }' "$dir/stats-wrk.tsv")
	if [[ -n $kaf ]] && ((kaf > 1)); then
		say "- Cold start: when wrk's first $TLS_WRK_CONNS connections arrived at once, unstuck dialed its upstream connections at once too, before"
		say "  any session existed: $kaf of its $kac connections to the keep-alive upstream were full handshakes$(awk -F'\t' '$1 ~ /^ka-/ && $1 != "ka-unstuck" { sub(/^ka-/, "", $1); printf "%s%s %d of %d", sep, $1, $2, $5; sep = ", " } BEGIN { sep = " (" } END { if (sep == ", ") print ")" }' "$dir/stats-wrk.tsv"). Only"
		say "  dials made before the first handshake to an upstream completes find its cache empty; later ones, as the paced part shows, resume."
	fi
	say ""
	say "### Where unstuck's CPU goes under wrk"
	say ""
	if ((prc)); then
		say "No profile (see the messages above)."
		report_errors pprof 1 "$dir/profile.err"
	else
		local f=$dir/unstuck-wrk.pprof
		say "A ${TLS_PROF}s CPU profile (the debug listener's /debug/pprof/profile) of the measured unstuck under wrk -c$TLS_WRK_CONNS alone"
		say "($(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$dir/profile-wrk.txt") req/s meanwhile, the profiler's cost included). Share of the samples:"
		say "crypto/ (AES-GCM sealing and opening, TLS records) $pct_crypto%,"
		say "system calls (syscall.*, internal/runtime/syscall.*: time in the kernel) $pct_sys%,"
		say "runtime (scheduler, GC, allocation) $pct_rt%."
		say ""
		say_pprof_tops "$f" 35 "\`go tool pprof -top -cum\`:" "\`go tool pprof -top\` (by the time in each function itself):"
	fi
	say ""
	say "The upstream's counters at the end of the phase (listeners ka-*: wrk with TLS; plain-*: wrk without; idle-*: the paced client;"
	say "tls13: handshakes at TLS 1.3; handshake_errors: failed handshakes it logged):"
	say ""
	column -t -s $'\t' "$dir/stats-end.tsv" | say_code
	say ""
	say "Every paced run, in the order run:"
	say ""
	column -t -s $'\t' "$dir/pace-runs.tsv" | say_code
	say ""
}

# merge_results OLD NEW PROVENANCE: OLD with the sections ("## " headings)
# of NEW in place of those of the same title, or added at the end, each
# with the line PROVENANCE under its heading. OLD keeps its top and its
# closing "Run took" line.
merge_results() {
	awk -v prov="$3" '
		FNR == 1 { file++; sec = "" }
		/^Run took / { if (file == 1) tail = $0; next }
		/^## / {
			sec = $0
			if (file == 1) { if (!(sec in old)) oorder[++on] = sec; old[sec] = 1 }
			else { if (!(sec in new)) norder[++nn] = sec; new[sec] = 1 }
			body[file, sec] = $0 "\n"
			if (file == 2) body[2, sec] = body[2, sec] "\n" prov "\n"
			next
		}
		sec == "" { if (file == 1) top = top $0 "\n"; next }
		{ body[file, sec] = body[file, sec] $0 "\n" }
		END {
			printf "%s", top
			for (i = 1; i <= on; i++) { s = oorder[i]; printf "%s", (s in new) ? body[2, s] : body[1, s] }
			for (i = 1; i <= nn; i++) { s = norder[i]; if (!(s in old)) printf "%s", body[2, s] }
			if (tail != "") print tail
		}' "$1" "$2"
}

# ------------------------------------------------------------------- main

install_missing
build
# Up to 8,000 connections each side of a proxy: raise the soft limit.
ulimit -n "$(ulimit -Hn)"

start_time=$(date +%s)
# A run of only some phases keeps the other sections of $OUT.
PARTIAL=0
for phase in $ALL_PHASES; do
	[[ " $PHASES " == *" $phase "* ]] || PARTIAL=1
done
if ((PARTIAL)) && [[ -s $OUT ]]; then
	RUN_OUT=$TMP/results.md
	PROVENANCE="Measured by a separate run, bench/run.sh$( ((QUICK)) && echo ' --quick') with BENCH_PHASES=\"$PHASES\", on $(date -u '+%Y-%m-%d %H:%M UTC') at unstuck $(git rev-parse --short HEAD 2>/dev/null) (load average at start $(cut -d' ' -f1-3 /proc/loadavg)); the table at the top describes the run of the other sections."
fi
: >"$RUN_OUT"
say "# unstuck benchmark results"
say ""
say "| | |"
say "|---|---|"
say "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
say "| run | bench/run.sh$( ((QUICK)) && echo ' --quick') |"
say "| unstuck | $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain -- . ':!bench' 2>/dev/null | awk '{f = f sep $2; sep = ", "} END {if (f != "") print "plus uncommitted changes to " f}') |"
say "| CPU | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores |"
say "| kernel | $(uname -sr) |"
say "| open files | $(ulimit -n) per process |"
say "| load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |"
say "| go | $(go version | awk '{print $3}') |"
say "| nginx | $(nginx -v 2>&1 | sed 's/.*version: //') |"
say "| haproxy | $(haproxy -v | awk 'NR == 1 {print $3}') |"
say "| wrk | $(wrk -v 2>&1 | awk 'NR == 1 {print $2}') |"
say ""
say "All processes on 127.0.0.1 of this machine, sharing its cores: load generator, proxy and upstream."
say "nginx: worker_processes 2, upstream keepalive (half the pool per worker), proxy_http_version 1.1, Connection \"\"."
say "HAProxy: nbthread 2, http-reuse always. fasthttp: fasthttp.Server + HostClient (bench/cmd/fhproxy)."
say "httputil: net/http/httputil.ReverseProxy (bench/cmd/httputilproxy). unstuck: GOMAXPROCS default, config file per phase."
say ""

for phase in $PHASES; do
	"phase_$phase" || say "The $phase phase failed (see the messages above)."
done

say ""
say "Run took $(($(date +%s) - start_time)) s."
if [[ $RUN_OUT != "$OUT" ]]; then
	merge_results "$OUT" "$RUN_OUT" "$PROVENANCE" >"$TMP/merged.md" && cp "$TMP/merged.md" "$OUT"
fi
note "wrote $OUT"
