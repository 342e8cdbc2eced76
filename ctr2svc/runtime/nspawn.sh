# shellcheck shell=sh
# --runtime nspawn: systemd-nspawn --oci-bundle runs the bundle prepare made in the foreground, as the
# unit's main process (Type=notify), in the unit's cgroup (--keep-unit), registered with
# systemd-machined by itself. The container's init is nspawn's child: the health check, the readiness
# wait and the stop find it from nspawn's PID, which the start writes where runc writes the init's.

# `nspawn`: this shell becomes nspawn, which runs until the container's init exits and exits with its
# status. nspawn passes the SIGTERM the stop sends it on to the init as the image's stop signal.
nspawn_start() {
    echo "$$" >"$STATE_DIR/pid"
    register=no
    # machined is there to register with on a systemd host that has systemd-container (the
    # package's dependency); elsewhere (a test host without systemd) nspawn runs unregistered.
    if [ -d /run/systemd/system ] && command -v machinectl >/dev/null 2>&1; then
        register=yes
    fi
    if [ "$STDIO" = pipe ]; then
        # As start does for runc: the container's stdout and stderr are a pipe that cat forwards.
        rm -f "$STATE_DIR/stdio"
        mkfifo -m 0600 "$STATE_DIR/stdio"
        cat "$STATE_DIR/stdio" &
        exec >"$STATE_DIR/stdio" 2>&1
        rm -f "$STATE_DIR/stdio"
    fi
    exec "${CTR2SVC_NSPAWN:-systemd-nspawn}" --quiet --oci-bundle="$BUNDLE" --machine="$NAME" \
        --keep-unit --register="$register" --kill-signal="$STOP_SIGNAL" --notify-ready=no
}

# The container's init, in $pid, and nspawn's PID, in $nspawn_pid; fails when either is gone.
nspawn_init() {
    pid=
    nspawn_pid=
    read -r nspawn_pid 2>/dev/null <"$STATE_DIR/pid" || [ -n "$nspawn_pid" ] || return 1
    # nspawn is the init's parent (it reaps it); the kernel's list has no newline.
    read -r pid _ 2>/dev/null <"/proc/$nspawn_pid/task/$nspawn_pid/children" || [ -n "$pid" ]
}

nspawn_status() {
    if nspawn_init; then
        echo running
    else
        echo stopped
    fi
}

# nspawn_exec COMMAND...: COMMAND in the container, as `runc exec` runs it: in all its namespaces and
# its root, as the config's user, with the init's environment (nspawn gives no exec of its own).
# Unlike runc exec, it keeps the helper's capabilities and cgroup, and no seccomp filter applies.
nspawn_exec() {
    nspawn_init || return 1
    uid=$(sed -n 's/^      "uid": \([0-9][0-9]*\),\{0,1\}$/\1/p' "$BUNDLE/config.json")
    gid=$(sed -n 's/^      "gid": \([0-9][0-9]*\),\{0,1\}$/\1/p' "$BUNDLE/config.json")
    environment=$(tr '\0' '\n' <"/proc/$pid/environ") || return 1
    set -- nsenter --target "$pid" --all --root --wd --setuid "${uid:-0}" --setgid "${gid:-0}" -- "$@"
    # One assignment a line (a value with a newline in it is cut there); the order does not matter.
    while IFS= read -r assignment; do
        case "$assignment" in
            ?*=*) set -- "$assignment" "$@" ;;
        esac
    done <<EOF
$environment
EOF
    env -i "$@"
}
