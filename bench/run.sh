#!/usr/bin/env bash
# bench/run.sh [--quick] — unstuck's benchmark suite, in one run.
#
# Installs what it lacks (nginx, haproxy, wrk), builds unstuck and the
# helper programs in bench/cmd, then measures unstuck beside nginx, HAProxy,
# a plain fasthttp.HostClient proxy and net/http/httputil, all on
# 127.0.0.1, one after another:
#   1. throughput and latency (wrk), and requests per CPU-second of the proxy
#   2. half-close detection: upstream FIN on an idle pooled connection to
#      the proxy's close, 200 connections (FINs one every 5 ms, then at
#      once) and 8,000 at once
#   3. the keep-alive race: failed requests and duplicate POSTs
#   4. unstuck's RSS per idle pooled upstream and per idle app connection
#   5. CLOSE_WAIT sockets under a legacy client
#   6. go test -bench for pool/ and proxy/
# It prints the tables and writes them to bench/RESULTS.md. It asserts
# nothing. Full run ~7 minutes, --quick ~2. Needs root to install packages.
# BENCH_PHASES="throughput race" runs only those phases (names: throughput
# halfclose race memory legacy microbench).
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
TMP=$(mktemp -d /tmp/unstuck-bench.XXXXXX)

if ((QUICK)); then
	DUR=3s WARM=1s ROUNDS=1 RACE_N=10000 LEGACY_ROUNDS=2 BENCHTIME=200ms
else
	DUR=6s WARM=1s ROUNDS=3 RACE_N=50000 LEGACY_ROUNDS=4 BENCHTIME=1s
fi
PHASES=${BENCH_PHASES:-throughput halfclose race memory legacy microbench}
HC_SIZES=200/5ms,200,8000 # half-close phase: idle connections, /GAP: FINs one every GAP, else at once
MEM_N=8000        # connections of each kind for the memory phase
POOL=512          # idle upstream connections each proxy keeps (nginx: half per worker)
BIG_POOL=8192     # the same for the half-close and memory phases

# Ports: phase base + 0 upstream, +1 nginx, +2 HAProxy, +3 fasthttp,
# +4 httputil, +5 unstuck.
TPUT=19000 HALF=19100 RACE=19200 LEGACY=19300 MEM=19400

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

say() { printf '%s\n' "$*" | tee -a "$OUT"; }
note() { printf '==> %s\n' "$*" >&2; }

install_missing() {
	local need=() created=0
	command -v nginx >/dev/null || need+=(nginx)
	command -v haproxy >/dev/null || need+=(haproxy)
	command -v wrk >/dev/null || need+=(wrk)
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

# start_upstream_nginx PORT: the fast upstream of the throughput phase.
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
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / { return 200 "hello"; }
    }
}
EOF
	start upstream-nginx "$dir/stderr" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
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
# and PROXY_PIDS.
start_proxies() {
	local base=$1 pool=$2 up=127.0.0.1:$1 dir=$TMP/proxies-$1
	mkdir -p "$dir"
	# nginx keeps its keepalive cache per worker: half the pool each, but
	# for the half-close phase each worker may hold every connection.
	local keep=$((pool / 2))
	((pool > 1024)) && keep=$pool

	cat >"$dir/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream backend {
        server $up;
        keepalive $keep;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$((base + 1)) backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
	start nginx "$dir/nginx.stderr" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log"
	local nginx_master=$LAST

	cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 9000
    # Let idle server connections use the file descriptors: the default
    # ratios (25/20%) drop pooled connections during the 8,000 burst.
    tune.pool-high-fd-ratio 100
    tune.pool-low-fd-ratio 95
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
frontend fe
    bind 127.0.0.1:$((base + 2))
    maxconn 9000
    default_backend be
backend be
    server up $up pool-purge-delay 300s
EOF
	start haproxy "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
	HAPROXY_PID=$LAST

	start fasthttp "$dir/fhproxy.log" "$BIN/fhproxy" -listen "127.0.0.1:$((base + 3))" -upstream "$up" -max-conns $((pool * 2))
	FH_PID=$LAST
	start httputil "$dir/httputil.log" "$BIN/httputilproxy" -listen "127.0.0.1:$((base + 4))" -upstream "$up" -max-idle "$pool"
	HU_PID=$LAST

	cat >"$dir/unstuck.yaml" <<EOF
admin: {listen: ""}
listeners:
  app:
    listen: 127.0.0.1:$((base + 5))
upstreams:
  backend:
    endpoints: ["$up"]
    pool: {max_conns: $((pool * 2)), max_idle: $pool}
EOF
	start unstuck "$dir/unstuck.log" "$BIN/unstuck" --config "$dir/unstuck.yaml"
	UNSTUCK_PID=$LAST
	UNSTUCK_LOG=$dir/unstuck.log

	local p
	for p in 1 2 3 4 5; do
		if ! wait_port $((base + p)); then
			tail -n 5 "$dir"/*.log "$dir"/*.stderr >&2
			stop "$nginx_master" "$HAPROXY_PID" "$FH_PID" "$HU_PID" "$UNSTUCK_PID"
			return 1
		fi
	done
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
# whose processes are PIDS, appended to $TMP/tput.rows as: conns name req/s
# p50 p99 requests proxy-ticks errors upstream-ticks machine-ticks
# other-ticks proxy-user-ticks. "Other" is machine CPU time used by neither the proxy, the
# upstream nor wrk: someone else's work. While it exceeds 5% of the
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
	echo "$best_row" >>"$TMP/tput.rows"
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

	say "## 1. Throughput and latency"
	say ""
	[[ -n $QUIET_NOTE ]] && say "$QUIET_NOTE" && say ""
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
	' "$TMP/tput.median" | tee -a "$OUT"
	drops_note
	say ""
}

# --------------------------------------------------------------- phase 2

phase_halfclose() {
	note "2. half-close detection ($HC_SIZES idle connections, about 1.5 minutes)"
	quiet_wait
	start_proxies $HALF $BIG_POOL || return 1
	local b=$HALF
	run "$TMP/halfclose.md" "$TMP/halfclose.err" "$BIN/halfclose" -listen 127.0.0.1:$b -sizes $HC_SIZES \
		-target ideal \
		-target unstuck=127.0.0.1:$((b + 5)) \
		-target httputil=127.0.0.1:$((b + 4)) \
		-target nginx=127.0.0.1:$((b + 1)) \
		-target haproxy=127.0.0.1:$((b + 2))
	local rc=$?
	stop_proxies

	say "## 2. Half-close detection"
	say ""
	[[ -n $QUIET_NOTE ]] && say "$QUIET_NOTE" && say ""
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
	tee -a "$OUT" <"$TMP/halfclose.md"
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
		say '```'
		tail -n 20 "$3" | tee -a "$OUT"
		say '```'
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

	say "## 3. Keep-alive race"
	say ""
	[[ -n $QUIET_NOTE ]] && say "$QUIET_NOTE" && say ""
	say "The upstream (bench/cmd/race) closes the connection right after a random 20% of its responses (FIN behind the last byte, no Connection: close)."
	say "32 client connections send $RACE_N requests per target, GET and POST alternating, each with a unique X-Request-Id; the client never retries."
	say "direct: the same client straight to the upstream. Duplicates: extra copies of a POST id that reached the upstream."
	say "'Failed POSTs the upstream did get': POSTs the client saw fail although the upstream had received them."
	say ""
	tee -a "$OUT" <"$TMP/race.md"
	drops_note
	report_errors race $rc "$TMP/race.err"
	say ""
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
admin: {listen: ""}
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

	say "## 4. Memory"
	say ""
	[[ -n $QUIET_NOTE ]] && say "$QUIET_NOTE" && say ""
	say "unstuck's VmRSS (/proc/PID/status) before and after $MEM_N idle connections of each kind, each kind on a fresh unstuck"
	say "(bench/cmd/memory). App connections: one request each, then left open. Pooled upstream connections: made by $MEM_N concurrent"
	say "requests held at the upstream until all arrived, app side then closed; pool idle_timeout 0 so they stay."
	say "Each reading is taken once the RSS is stable (VmRSS sampled every 250 ms, changed by at most 1% over 2 s), at least 3 s and at most 15 s"
	say "after the traffic; 'settled after' says when. unstuck releases an idle app connection's goroutine and buffers after idle_release_after"
	say "(1 s) and returns freed memory to the OS after release_memory_after_idle (2 s) without requests, so the readings include both."
	say "Target: under 8 KiB each."
	say ""
	tee -a "$OUT" <"$TMP/memory.md"
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

	say "## 5. CLOSE_WAIT under the legacy workload"
	say ""
	[[ -n $QUIET_NOTE ]] && say "$QUIET_NOTE" && say ""
	say "The upstream (bench/cmd/legacy) closes connections idle for 1 s. The legacy client holds 500 keep-alive connections and sends"
	say "$LEGACY_ROUNDS rounds of one GET on each, 1.5 s apart; a connection it finds closed or that fails it abandons without closing and"
	say "replaces. Counted 1.5 s after the last round, from /proc/net/tcp{,6}: the client's sockets towards the target and the proxy's"
	say "sockets (by its PIDs) in CLOSE_WAIT."
	say ""
	tee -a "$OUT" <"$TMP/legacy.md"
	drops_note
	report_errors legacy $rc "$TMP/legacy.err"
	say ""
}

# --------------------------------------------------------------- phase 6

phase_microbench() {
	note "6. go test -bench ./pool/ ./proxy/"
	quiet_wait
	say "## 6. Go microbenchmarks"
	say ""
	[[ -n $QUIET_NOTE ]] && say "$QUIET_NOTE" && say ""
	say "\`go test -run XXX -bench . -benchmem -benchtime $BENCHTIME ./pool/ ./proxy/\`"
	say ""
	say '```'
	go test -run XXX -bench . -benchmem -benchtime "$BENCHTIME" ./pool/ ./proxy/ 2>&1 | tee -a "$OUT"
	say '```'
}

# ------------------------------------------------------------------- main

install_missing
build
# Up to 8,000 connections each side of a proxy: raise the soft limit.
ulimit -n "$(ulimit -Hn)"

start_time=$(date +%s)
: >"$OUT"
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
note "wrote $OUT"
