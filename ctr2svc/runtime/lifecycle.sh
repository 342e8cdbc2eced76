# shellcheck shell=sh
# The container's life: prepare (root, data, config, network), start or run, stop, cleanup.

status() {
    if [ "$RUNTIME" = nspawn ]; then
        nspawn_status
        return
    fi
    runc_ state "$NAME" 2>/dev/null | sed -n 's/^ *"status": "\(.*\)",$/\1/p'
}

prepare() {
    cleanup
    read_network_mode
    userns_setup allocate
    if [ -n "$LOWER" ]; then
        check_layers
    else
        shift_rootfs
        init_data
    fi
    # One mkdir for all: each process costs a start a few milliseconds (bench/README.md).
    if ! [ -d "$BUNDLE" ] || ! [ -d "$ROOT" ] || ! [ -d "$STATE_DIR/runc" ]; then
        # 0700: the bundle holds the admin's environment, and $STATE_DIR may be passable (userns.sh).
        # shellcheck disable=SC2174 # -m is meant for the three, whose parent $STATE_DIR exists or is made
        mkdir -p -m 0700 "$BUNDLE" "$ROOT" "$STATE_DIR/runc"
    fi
    render_config
    if [ "$NETWORK" = host ]; then
        host_files
        warn_unpublished
    fi
    userns_state
    # The container's writable layer starts empty at every start, like a fresh `docker run`: what must
    # persist belongs in a volume. It lives on disk; /run (memory) is the fallback for a /var/lib that
    # cannot hold an overlay's upper layer (an overlayfs itself, for instance).
    idmap_layers
    if ! mount_root "$OVERLAY_DIR" 2>/dev/null; then
        echo "$NAME: cannot use $OVERLAY_DIR for the writable layer; using $STATE_DIR/overlay (memory)" >&2
        rm -rf "$OVERLAY_DIR"
        mount_root "$STATE_DIR/overlay"
        chmod 0700 "$STATE_DIR/overlay"
    fi
    if [ -n "$LOWER" ]; then
        # Volumes are seeded from the image's root, which only the mount puts together.
        SEED_ROOT="$ROOT"
        init_data
    fi
    if [ "$NETWORK" = private ]; then
        # Last: nothing to undo when something above fails.
        network_setup
    fi
}

# `runc run --detach`: systemd adopts the container's init as the unit's main process (Type=forking).
start() {
    enter_leaf_cgroup
    userns_enter
    if [ "$STDIO" = pipe ]; then
        # The container's stdout and stderr are a pipe, as under Docker, not the journal's socket: the
        # image opens /dev/stdout or /dev/stderr (a log file linked there, say), which cannot be done on
        # a socket (ENXIO). The one process it costs, cat, forwards the pipe to the journal and exits
        # when the container's last process has closed it.
        rm -f "$STATE_DIR/stdio"
        mkfifo -m 0600 "$STATE_DIR/stdio"
        cat "$STATE_DIR/stdio" &
        exec 3>"$STATE_DIR/stdio"
        rm -f "$STATE_DIR/stdio"
        runc_ run --detach --pid-file "$STATE_DIR/pid" --bundle "$BUNDLE" "$NAME" >&3 2>&3
        exec 3>&-
    else
        runc_ run --detach --pid-file "$STATE_DIR/pid" --bundle "$BUNDLE" "$NAME"
    fi
    # systemd reads the PID file once this returns, and supervises that process only if it is its child
    # by then. crun can return before the process that spawned the container's init has exited and
    # handed it over ("Supervising process ... which is not our child": its exit then goes unnoticed and
    # a stop ends in SIGKILL). Wait for the handover, 10 s at most; builtins only, so runc's case (the
    # parent is gone already) costs nothing. runc and crun write the PID without a newline: read then
    # fails although it sets the variable.
    read -r pid <"$STATE_DIR/pid" || [ -n "$pid" ]
    clock
    deadline=$((now + 1000))
    while read -r stat 2>/dev/null <"/proc/$pid/stat"; do
        # shellcheck disable=SC2086 # split on purpose: the fields after "(comm) "
        set -- ${stat##*) }
        comm=
        read -r comm 2>/dev/null <"/proc/$2/comm" || true
        case "$comm" in
            crun | runc | "${RUNC##*/}") ;;
            *) break ;;
        esac
        clock
        [ "$now" -lt "$deadline" ] || break
        sleep 0.05
    done
    register_machine "$pid"
}

# The container as a machine of systemd-machined, as podman's and nspawn's are: `machinectl list` and
# `machinectl status NAME` show it, with the unit's process tree. RegisterMachine records the leader's
# unit (this service) and creates no scope of its own; machined forgets the machine when the unit
# stops. Only on a systemd host with machined installed (systemd-container); in the background, so
# that the start does not wait on D-Bus.
register_machine() {
    [ -d /run/systemd/system ] || return 0
    [ -x /lib/systemd/systemd-machined ] || [ -x /usr/lib/systemd/systemd-machined ] || return 0
    command -v busctl >/dev/null 2>&1 || return 0
    busctl call org.freedesktop.machine1 /org/freedesktop/machine1 org.freedesktop.machine1.Manager \
        RegisterMachine sayssus "$NAME" 0 ctr2svc container "$1" "$ROOT" >/dev/null 2>"$STATE_DIR/machine.err" ||
        echo "$NAME: not registered with systemd-machined: $(cat "$STATE_DIR/machine.err")" >&2 &
}

# In the foreground, for supervisors that watch their child (OpenRC's supervise-daemon): runc passes
# the signals it gets on to the container's init and exits with its status.
run() {
    # supervise-daemon respawns a crashed runc with this alone (not prepare): a runc killed with SIGKILL
    # leaves its container running, which would make `runc run` refuse the id; it goes first.
    if [ -e "$STATE_DIR/runc/$NAME" ]; then
        # runc waits for the killed init to be reaped (an init that reaps no orphans leaves it a zombie),
        # and keeps its state when it cannot remove the cgroup (OpenRC's own, on a hybrid hierarchy):
        # either way, `runc run` would refuse the id.
        timeout -s KILL 10 "$RUNC" --root "$STATE_DIR/runc" delete --force "$NAME" >/dev/null 2>&1 || true
        rm -rf "${STATE_DIR:?}/runc/$NAME"
    fi
    userns_enter
    exec "$RUNC" --root "$STATE_DIR/runc" run --bundle "$BUNDLE" "$NAME"
}

# To completion, for a unit others wait for to finish (Type=oneshot): from a leaf of the unit's cgroup,
# as start does, runc in the foreground; it passes the stop signal on and exits with the container.
run_once() {
    if [ "$RUNTIME" = nspawn ]; then
        nspawn_start
    fi
    enter_leaf_cgroup
    userns_enter
    exec "$RUNC" --root "$STATE_DIR/runc" run --bundle "$BUNDLE" "$NAME"
}

# The container's init, in $pid, and its start time in $started (a PID the kernel gave to another
# process since is not taken for it): from the PID file runc wrote for systemd, else from runc.
find_init() {
    pid=
    started=
    if [ "$RUNTIME" = nspawn ]; then
        if nspawn_init && init_alive; then started=$starttime; fi
        return 0
    fi
    read -r pid 2>/dev/null <"$STATE_DIR/pid" || [ -n "$pid" ] || true
    if [ -z "$pid" ]; then
        pid=$(runc_ state "$NAME" 2>/dev/null | sed -n 's/^ *"pid": \([0-9][0-9]*\),$/\1/p') || pid=
    fi
    case "$pid" in
        '' | 0 | *[!0-9]*) pid= ;;
        *) if init_alive; then started=$starttime; fi ;;
    esac
}

# init_alive: the process $pid runs (not gone, not a zombie) and, once $started is known, is the one
# that started then. Its start time in $starttime. Builtins only: the stop polls it ten times a second.
init_alive() {
    stat=
    read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
    # shellcheck disable=SC2086 # split on purpose: the fields after "(comm) ", the 3rd field first
    set -- ${stat##*) }
    starttime=${20}
    [ "$1" != Z ] && [ "$1" != X ] && { [ -z "$started" ] || [ "$starttime" = "$started" ]; }
}

# Whether the container runs: its init by /proc, else (its PID unknown) by runc.
still_running() {
    if [ -n "$started" ]; then
        init_alive
    else
        [ "$(status)" = running ]
    fi
}

# The image's stop signal, $STOP_TIMEOUT seconds by the clock for the container to exit, then SIGKILL,
# then what cleanup does. The unit's TimeoutStopSec leaves room for all of it.
stop() {
    clock
    deadline=$((now + STOP_TIMEOUT * 100))
    find_init
    if [ "$RUNTIME" != nspawn ]; then
        runc_ kill "$NAME" "$STOP_SIGNAL" 2>/dev/null || true
    elif [ -n "$nspawn_pid" ]; then
        # nspawn sends the init the image's stop signal (--kill-signal).
        kill -s TERM "$nspawn_pid" 2>/dev/null || true
    fi
    while still_running; do
        clock
        if [ "$now" -ge "$deadline" ]; then
            echo "$NAME: still running after ${STOP_TIMEOUT}s; killing it" >&2
            if [ "$RUNTIME" = nspawn ]; then
                # The kernel kills every process of the init's PID namespace with it.
                kill -s KILL "$pid" 2>/dev/null || true
            else
                runc_ kill --all "$NAME" KILL 2>/dev/null || true
            fi
            break
        fi
        sleep 0.1
    done
    if [ "$RUNTIME" = nspawn ] && [ -n "$nspawn_pid" ]; then
        # nspawn unregisters the machine and exits once it has reaped the init: a second or so.
        clock
        deadline=$((now + 500))
        while nspawn_alive && [ "$now" -lt "$deadline" ]; do
            sleep 0.1
            clock
        done
    fi
    after_stop
}

# What a stop leaves, undone: the container (a crash's, too: `runc run` would refuse the same id), every
# mount on the root, the network. Failing to unmount fails it, after the rest was done.
cleanup() {
    # Its state directory says whether there is a container: asking runc costs a process at every start.
    if [ -e "$STATE_DIR/runc/$NAME" ]; then
        runc_ delete --force "$NAME" >/dev/null 2>&1 || true
    fi
    unmounted=0
    unmount_all "$ROOT" || unmounted=1
    if [ "$unmounted" = 0 ]; then
        unmount_idmapped || unmounted=1
    fi
    network_cleanup
    return "$unmounted"
}

# After a stop: what cleanup does, then the next start's empty writable layer made now, when time is
# no one's concern (a start then needs no process for it).
after_stop() {
    cleanup
    if [ -d "$DATA_DIR" ] && [ -d "$OVERLAY_DIR" ]; then
        userns_setup
        new_layer "$OVERLAY_DIR" 2>/dev/null || true
    fi
}
