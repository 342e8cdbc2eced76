# shellcheck shell=sh
# --runtime nspawn: systemd-nspawn --oci-bundle runs the bundle prepare made in the foreground, as the
# unit's main process (Type=notify), in the unit's cgroup (--keep-unit), registered with
# systemd-machined by itself. The container's init is nspawn's child: the health check, the readiness
# wait and the stop find it from nspawn's PID, which the start writes where runc writes the init's.

# `nspawn`: this shell becomes nspawn, which runs until the container's init exits and exits with its
# status. nspawn passes the SIGTERM the stop sends it on to the init as the image's stop signal.
nspawn_start() {
    echo "$$" >"$STATE_DIR/pid"
    # nspawn refuses a root without /usr ("doesn't look like it has an OS tree"), which an image made
    # FROM scratch or of busybox alone has none of: an empty one in the writable layer, gone at the
    # next start, lets it run.
    [ -d "$ROOT/usr" ] || mkdir "$ROOT/usr"
    # What nspawn masks /proc/kcore, /proc/sysrq-trigger and the like with: an empty file of mode 0000,
    # which the config binds at /run/systemd/inaccessible (ctr2svc/service/nspawn.py says why).
    if ! [ -e "$STATE_DIR/inaccessible/reg" ]; then
        mkdir -p "$STATE_DIR/inaccessible"
        (umask 0777 && : >"$STATE_DIR/inaccessible/reg")
    fi
    register=no
    # machined is there to register with on a systemd host that has systemd-container (the
    # package's dependency); elsewhere (a test host without systemd) nspawn runs unregistered.
    if [ -d /run/systemd/system ] && command -v machinectl >/dev/null 2>&1; then
        register=yes
    fi
    # nspawn gives a container with no systemd of its own a cgroup v1 "name=systemd" hierarchy unless
    # told otherwise: cgroup v2, as runc (and Docker, on a v2 host) give it, wherever v2 is mounted.
    if [ -e /sys/fs/cgroup/cgroup.controllers ] || [ -d /sys/fs/cgroup/unified ]; then
        export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
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
    # Not before the helper has become nspawn (its mkdir is a child too), nor once the PID is another's.
    comm=
    read -r comm 2>/dev/null <"/proc/$nspawn_pid/comm" || true
    [ "$comm" = systemd-nspawn ] || return 1
    # nspawn is the init's parent (it reaps it); the kernel's list has no newline.
    read -r pid _ 2>/dev/null <"/proc/$nspawn_pid/task/$nspawn_pid/children" || [ -n "$pid" ] || return 1
    # While the container starts, that child is for a moment nspawn's own helper: the init is PID 1
    # of a PID namespace of its own ("NSpid: PID 1" in its status).
    while read -r key host inner _; do
        if [ "$key" = NSpid: ]; then
            [ "$inner" = 1 ] && [ "$host" = "$pid" ]
            return
        fi
    done 2>/dev/null <"/proc/$pid/status"
    return 1
}

# Whether nspawn ($nspawn_pid) runs: not gone, not a zombie its parent has yet to reap.
nspawn_alive() {
    stat=
    read -r stat 2>/dev/null <"/proc/$nspawn_pid/stat" || return 1
    # shellcheck disable=SC2086 # split on purpose: the fields after "(comm) ", the state first
    set -- ${stat##*) }
    [ "$1" != Z ] && [ "$1" != X ]
}

nspawn_status() {
    if nspawn_init; then
        echo running
    else
        echo stopped
    fi
}

# nspawn_exec COMMAND...: COMMAND in the container, as `runc exec` runs it: in all the init's
# namespaces and its root, as the config's user, with the config's environment (the init's own may
# have changed since: an entrypoint that drops privileges with su, say). nspawn has no exec of its own.
# Unlike runc exec, it keeps the helper's capabilities and cgroup, and no seccomp filter applies.
nspawn_exec() {
    nspawn_init || return 1
    uid=$(sed -n 's/^      "uid": \([0-9][0-9]*\),\{0,1\}$/\1/p' "$BUNDLE/config.json")
    gid=$(sed -n 's/^      "gid": \([0-9][0-9]*\),\{0,1\}$/\1/p' "$BUNDLE/config.json")
    set -- nsenter --target "$pid" --all --root --wd --setuid "${uid:-0}" --setgid "${gid:-0}" -- "$@"
    # process.env, one item a line as config.awk writes it, with the escapes it writes undone (\\, \"
    # and \t; others, such as the \uXXXX Python writes for a character beyond ASCII, stay as they are).
    # The order does not matter.
    environment=$(awk '
        /^    "env": \[\]/ { exit }
        /^    "env": \[/ { on = 1; next }
        on && /^    \],?$/ { exit }
        on {
            sub(/^ *"/, ""); sub(/",?$/, "")
            out = ""
            for (i = 1; i <= length($0); i++) {
                c = substr($0, i, 1)
                if (c == "\\") {
                    i++
                    c = substr($0, i, 1)
                    if (c == "t") c = "\t"
                    else if (c != "\\" && c != "\"") c = "\\" c
                }
                out = out c
            }
            print out
        }' "$BUNDLE/config.json") || return 1
    while IFS= read -r assignment; do
        case "$assignment" in
            ?*=*) set -- "$assignment" "$@" ;;
        esac
    done <<EOF
$environment
EOF
    env -i "$@"
}
