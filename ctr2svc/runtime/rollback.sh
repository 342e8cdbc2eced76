# shellcheck shell=sh
# Upgrades that roll back, after the restart (snapshot.sh armed it, before): the new version ready, or
# its data put aside, the snapshot put back and the previous version's kept unit installed (systemd),
# or its kept files named in the file the package's init script reads (OpenRC).

# upgrade_ready SECONDS: the new version became ready: its --ready-port listens, its health check
# passes, or (neither) its container ran $STEADY seconds without stopping.
upgrade_ready() {
    if [ -n "$READY_PORT" ]; then
        wait_ready "$READY_PORT" "$1"
    elif [ -n "$HEALTH_CMD" ]; then
        wait_healthy "$1"
    else
        find_init
        if [ -z "$started" ] && [ "${INIT:-systemd}" = openrc ]; then
            # supervise-daemon's start returns before its child has run runc: the container comes a
            # moment later, or (a version that fails at once) never, which STEADY seconds tell.
            clock
            until=$((now + STEADY * 100))
            while [ -z "$started" ] && [ "$now" -lt "$until" ]; do
                sleep 0.2
                find_init
                clock
            done
        fi
        if [ -z "$started" ]; then
            echo "$NAME: the container is not running" >&2
            return 1
        fi
        clock
        deadline=$((now + STEADY * 100))
        while [ "$now" -lt "$deadline" ]; do
            if ! init_alive; then
                echo "$NAME: the container stopped within $STEADY s of its start" >&2
                return 1
            fi
            sleep 0.2
            clock
        done
    fi
}

# The unit a rollback writes, which runs the previous version's kept files: in /etc, where it overrides
# the package's (in /lib) until the next upgrade removes it, its first line says whose it is.
OVERRIDE_DIR=/etc/systemd/system
OVERRIDE_MARK="# Written by ctr2svc's rollback"

# Under OpenRC the init script stays the package's file (apk audit checks it; a .deb's is a conffile
# the admin may have changed): a rollback names the kept helper and image in this file instead, which
# the init script reads when present (templates/openrc/init.j2), and the next upgrade or the removal
# deletes it with the rest of the rollback's state.
openrc_file() {
    echo "$ROLLBACK_DIR/openrc"
}

ours() {
    first=
    read -r first 2>/dev/null <"$1" || true
    case "$first" in
        "$OVERRIDE_MARK"*) return 0 ;;
    esac
    return 1
}

# The command that starts the service (the restart that follows stop_restored: see there).
start_command() {
    if [ "${INIT:-systemd}" = openrc ]; then
        echo "rc-service $NAME start"
    else
        echo "systemctl start $NAME.service"
    fi
}

# stop_restored: the version a rollback restored, which runs from its kept files, stopped by its own
# unit (or OpenRC file), and that removed: the package's is the unit again. Fails if there was none. The restart
# that follows must then be a start (rpm's try-restart would leave the stopped service stopped).
stop_restored() {
    if [ "${INIT:-systemd}" = openrc ]; then
        [ -e "$(openrc_file)" ] || return 1
        rc-service "$NAME" stop || true
        rm -f "$(openrc_file)"
        return 0
    fi
    ours "$OVERRIDE_DIR/$NAME.service" || return 1
    systemctl stop "$NAME.service" || true
    rm -f "$OVERRIDE_DIR/$NAME.service"
    systemctl daemon-reload
}

# upgrade_restart VERSION COMMAND...: the service restarted with COMMAND; when the preinst armed a
# rollback for VERSION, the new version must then be ready within the admin's ready-timeout: exits 0
# (the snapshot and the kept files removed), or 3 (not ready: roll_back is next), or COMMAND's status.
upgrade_restart() {
    version=$1
    shift
    read_rollback_config
    if read_state && [ "$TO" = "$version" ] && [ "$STATUS" = refused ]; then
        # (apk: its pre-upgrade refused, and it unpacked all the same.) No restart: the previous
        # version runs on, and from its kept files from now on, as after a rollback.
        run_kept
        echo "$NAME: the upgrade to $TO was refused (no room for the snapshot a rollback needs, $(log_hint)): $FROM keeps running; free some space and install $TO again" >&2
        return 4
    elif [ "$TO" = "$version" ] && [ "$STATUS" = rolled-back ]; then
        # Configured again (dpkg --configure -a): the previous version runs and stays.
        echo "$NAME: version $TO did not become ready and was rolled back to $FROM ($(log_hint)): install a fixed version, or the package file of this one again (dpkg -i) to retry it" >&2
        return 4
    elif [ "$TO" = "$version" ] && [ "$STATUS" = armed ]; then
        :
    else
        # (An upgrade after a rollback that was not armed: the service was stopped at the upgrade.)
        if stop_restored; then
            # shellcheck disable=SC2046 # two or three words
            set -- $(start_command)
        fi
        forget_rollback
        "$@"
        return
    fi
    if stop_restored; then
        # shellcheck disable=SC2046 # two or three words
        set -- $(start_command)
    fi
    clock
    begun=$now
    restarted=0
    said=$(timeout "$READY_TIMEOUT" "$@" 2>&1) || restarted=$?
    clock
    left=$((READY_TIMEOUT - (now - begun) / 100))
    if [ "$restarted" = 124 ] || { [ "$restarted" = 0 ] && [ "$left" -le 0 ]; }; then
        reason="the restart took longer than the ready-timeout of $READY_TIMEOUT s"
    elif [ "$restarted" != 0 ]; then
        reason="the restart failed ($(echo "$said" | head -n 1))"
    elif reason=$(upgrade_ready "$left" 2>&1); then
        clock
        say "version $TO is ready ($(((now - begun) / 100)) s after its restart): the rollback snapshot is removed"
        forget_rollback
        return 0
    fi
    say "version $TO is not ready: ${reason#"$NAME: "}; rolling back to $FROM" 3
    return 3
}

# run_kept: under OpenRC, the previous version's kept files named for the init script, which runs
# them from its next start on; the state says so.
run_kept() {
    # Read by the init script (as root, in a 0700 directory): quoted values only.
    {
        echo "$OVERRIDE_MARK: $TO did not become ready or was refused, $FROM runs from $PREVIOUS_DIR."
        echo "# Read by $UNIT_PATH; the next upgrade of the package removes it."
        # sh runs the kept helper: /var or /opt may be mounted noexec.
        echo "ctr2svc_sh=/bin/sh"
        echo "ctr2svc_helper='$PREVIOUS_DIR/libexec/service'"
        # The kept image's owners are right (hard links of the image's files) and no package manager
        # resets them: nothing for the start to restore (its ownership.sh would the packaged rootfs').
        echo "ctr2svc_ownership=/dev/null"
    } >"$(openrc_file).new"
    mv "$(openrc_file).new" "$(openrc_file)"
    STATUS=rolled-back
    write_state
}

# roll_back VERSION: with the new version stopped, the data put back as it was before the upgrade (the
# failed version's kept beside it), and the previous version's kept unit installed in /etc, where it
# overrides the package's until the next upgrade. The caller starts it.
roll_back() {
    read_rollback_config
    if ! read_state || [ "$TO" != "$1" ] || [ "$STATUS" != armed ]; then
        echo "$NAME: no rollback of version $1 is armed" >&2
        return 1
    fi
    failed="$DATA_DIR.failed-$TO"
    n=1
    while [ -e "$failed" ] || [ -L "$failed" ]; do
        n=$((n + 1))
        failed="$DATA_DIR.failed-$TO.$n"
    done
    if mv "$DATA_DIR" "$failed" 2>/dev/null; then
        if ! mv "$ROLLBACK_DIR/data" "$DATA_DIR" 2>/dev/null; then
            cp -a "$ROLLBACK_DIR/data" "$DATA_DIR.new"
            mv "$DATA_DIR.new" "$DATA_DIR"
            rm -rf "$ROLLBACK_DIR/data"
        fi
    else
        # A mount point (the data on a file system of its own), which cannot be renamed: the failed
        # data copied aside, then the snapshot copied in. A copy that fails stops here, the data and
        # the snapshot as they were.
        cp -a "$DATA_DIR" "$failed"
        find "$DATA_DIR" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
        cp -a "$ROLLBACK_DIR/data/." "$DATA_DIR/"
        rm -rf "$ROLLBACK_DIR/data"
    fi
    if [ "${INIT:-systemd}" = openrc ]; then
        run_kept
        say "rolled back to $FROM: $DATA_DIR is as it was before the upgrade ($METHOD); the data $TO left is in $failed" 3
        return 0
    fi
    override="$OVERRIDE_DIR/$NAME.service"
    if [ -e "$override" ] && ! ours "$override"; then
        # It overrides any unit the rollback could write (/etc comes first): the admin's unit runs.
        say "$override is the admin's own unit: the rollback writes none, and that unit is what starts" 4
        override="$ROLLBACK_DIR/unit.unused"
    fi
    {
        echo "$OVERRIDE_MARK: $TO did not become ready, $FROM runs from $PREVIOUS_DIR."
        echo "# The next upgrade of the package removes it."
        # sh runs the kept helper: /var or /opt may be mounted noexec.
        sed "s#=$LIBEXEC/service #=/bin/sh $PREVIOUS_DIR/libexec/service #" "$PREVIOUS_DIR/unit"
    } >"$override.new"
    mv "$override.new" "$override"
    STATUS=rolled-back
    write_state
    say "rolled back to $FROM: $DATA_DIR is as it was before the upgrade ($METHOD); the data $TO left is in $failed" 3
}
