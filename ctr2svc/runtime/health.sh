# shellcheck shell=sh
# Readiness (a port that listens) and the image's HEALTHCHECK ($HEALTH_CMD, run in the container).

# wait_ready PORT SECONDS: returns once something listens on TCP port PORT in the container's network,
# or fails after SECONDS or if the container stops. The host's network: its sockets are in the host's
# /proc/net/tcp. A private one (prepare left $NET_JSON): in its init's /proc/PID/net/tcp, the PID from
# runc, as OpenRC's `run` writes no PID file.
wait_ready() {
    port_hex=$(printf ':%04X' "$1")
    net=/proc/net
    [ -e "$NET_JSON" ] && net=
    clock
    deadline=$((now + $2 * 100))
    until [ -n "$net" ] && awk -v port="$port_hex" '
            $4 == "0A" && substr($2, length($2) - 4) == port { found = 1 }
            END { exit !found }' "$net/tcp" "$net/tcp6" 2>/dev/null; do
        if [ -e "$NET_JSON" ]; then
            if [ "$RUNTIME" = nspawn ]; then
                nspawn_init || pid=
            else
                pid=$(runc_ state "$NAME" 2>/dev/null | sed -n 's/^ *"pid": \([0-9][0-9]*\),$/\1/p')
            fi
            net=
            if [ -n "$pid" ] && [ "$pid" != 0 ]; then
                net=/proc/$pid/net
            fi
        fi
        if [ "$(status)" != running ]; then
            echo "$NAME: the container stopped before it listened on port $1" >&2
            return 1
        fi
        clock
        if [ "$now" -ge "$deadline" ]; then
            echo "$NAME: nothing listens on port $1 after $2 s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# health_check: the image's HEALTHCHECK run once in the container, within $HEALTH_TIMEOUT seconds.
# shellcheck disable=SC2120 # its arguments are the list eval sets
health_check() {
    eval "set -- $HEALTH_CMD"
    if [ "$RUNTIME" = nspawn ]; then
        timeout "$HEALTH_TIMEOUT" "$0" exec "$@" >/dev/null 2>&1
        return
    fi
    timeout "$HEALTH_TIMEOUT" "$RUNC" --root "$STATE_DIR/runc" exec "$NAME" "$@" >/dev/null 2>&1
}

# One health check, for the timer (systemd) or supervise-daemon (OpenRC): fails only after
# $HEALTH_RETRIES failures in a row; the caller restarts the service then.
health() {
    if [ -z "$HEALTH_CMD" ]; then
        echo "$NAME: the image has no health check" >&2
        return 2
    fi
    failures_file="$STATE_DIR/health-failures"
    # A container that is starting or stopping is the supervisor's business, not the health check's.
    if [ "$(status)" != running ]; then
        return 0
    fi
    if health_check; then
        rm -f "$failures_file"
        return 0
    fi
    failures=0
    read -r failures 2>/dev/null <"$failures_file" || true
    failures=$((failures + 1))
    if [ "$failures" -lt "$HEALTH_RETRIES" ]; then
        echo "$failures" >"$failures_file"
        echo "$NAME: health check failed ($failures of $HEALTH_RETRIES)" >&2
        return 0
    fi
    rm -f "$failures_file"
    echo "$NAME: unhealthy after $HEALTH_RETRIES failed health checks in a row; restarting" >&2
    return 1
}

# wait_healthy SECONDS: returns once the health check passes (checked every second), for the services
# that wait for this one to be healthy; fails when the container stops, or after SECONDS: when Docker
# would call it unhealthy (its start period, then $HEALTH_RETRIES failed checks).
wait_healthy() {
    clock
    deadline=$((now + $1 * 100))
    until health_check; do
        if [ "$(status)" != running ]; then
            echo "$NAME: the container stopped before its health check passed" >&2
            return 1
        fi
        clock
        if [ "$now" -ge "$deadline" ]; then
            echo "$NAME: unhealthy: its health check did not pass within $1 s" >&2
            return 1
        fi
        sleep 1
    done
}
