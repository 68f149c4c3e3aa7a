#!/usr/bin/env bash
# Instructions per Check, counted by callgrind (docs/performance.md, "Where
# the difference goes"): tollgate with the full policy and Redis, and the
# null ext_authz server making one Redis EVALSHA, under the same direct
# gRPC load. Instruction counts do not depend on what else the machine is
# doing, so the two figures compare across runs and machines of one
# architecture (valgrind hides SHA-NI: SHA-256 runs its portable code).
#
#   bench/callgrind.sh     about 3 minutes after the build
#
# Each server runs under valgrind inside `tollgate-bench grpc --only …`
# (tollgate through --tollgate, the null server through --null-wrapper);
# 8 s into the saturated one-connection round the counters are zeroed, 15 s
# later they are dumped, and the instructions are divided by the checks in
# between (the EVALSHA calls Redis counted: exactly one per admitted check
# with quota leases off, which is why tollgate runs with them off here,
# for both servers).
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/setup.sh >&2
for tool in valgrind callgrind_control redis-cli; do
    if ! command -v "$tool" >/dev/null; then
        echo "bench/callgrind.sh needs $tool: apt-get install valgrind redis-tools" >&2
        exit 1
    fi
done
cargo build --release -p tollgate -p tollgate-bench >&2

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# valgrind slows a server down about fifty times: a longer store timeout
# keeps tollgate from answering store_unavailable.
cat > "$dir/tollgate.sh" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --log-file="$dir/valgrind.%p.log" \
    --callgrind-out-file="$dir/server.%p.out" "$PWD/target/release/tollgate" "\$@" --store-timeout 2s
EOF
cat > "$dir/null.sh" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --log-file="$dir/valgrind.%p.log" \
    --callgrind-out-file="$dir/server.%p.out" "\$@"
EOF
chmod +x "$dir/tollgate.sh" "$dir/null.sh"

# measure <label> <--only text> <option> <wrapper>
measure() {
    local label=$1 only=$2 option=$3 wrapper=$4
    target/release/tollgate-bench grpc --repo . --only "$only" --seconds 25 --rounds 1 \
        "$option" "$wrapper" >"$dir/$label.out" 2>"$dir/$label.err" &
    local bench=$!
    local waited=0
    until grep -q 'over 1 connection' "$dir/$label.err"; do
        if ! kill -0 "$bench" 2>/dev/null || [ $waited -ge 300 ]; then
            echo "$label: the benchmark did not reach its first round" >&2
            cat "$dir/$label.err" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    local pid port
    pid=$(grep -o 'pid [0-9]*' "$dir/$label.err" | head -1 | cut -d' ' -f2)
    port=$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n 's|^redis://127\.0\.0\.1:\([0-9]*\).*|\1|p' | head -1)
    evalshas() {
        redis-cli -p "$port" INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p'
    }
    sleep 8
    callgrind_control -z "$pid" >/dev/null
    local before after
    before=$(evalshas)
    sleep 15
    after=$(evalshas)
    callgrind_control -d "$pid" >/dev/null
    # The window is measured; how the rest of the run (4 connections, open
    # loop) fares under valgrind does not matter here.
    wait "$bench" || true
    local total checks=$((after - before))
    total=$(sed -n 's/^totals: //p' "$dir/server.$pid.out.1")
    if [ "$checks" -le 0 ] || [ -z "$total" ]; then
        echo "$label: no checks counted" >&2
        exit 1
    fi
    awk -v label="$label" -v total="$total" -v checks="$checks" \
        'BEGIN { printf "%-30s %7.1fk instructions per check (%d checks)\n", label, total / checks / 1000, checks }'
}

echo "## callgrind: user-space instructions per Check (direct gRPC, one connection, 32 in flight)"
measure "null ext_authz + 1 EVALSHA" "1 EVALSHA" --null-wrapper "$dir/null.sh"
measure "tollgate, full policy, Redis, leases off" "Redis, leases off" --tollgate "$dir/tollgate.sh"
