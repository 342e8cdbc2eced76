# shellcheck shell=sh
# Upgrades that roll back (docs/service.md#upgrades-that-roll-back). Before the new version's restart
# the data directory is snapshotted and the running version's helper, unit and image are kept (by the
# new package's preinst, which carries this part: the new helper is not unpacked yet); after the
# restart the new version must become ready, or the snapshot is put back and the previous version is
# started again from what was kept, and the package manager's step fails. Uses $NAME, $DATA_DIR,
# $CONFIG_DIR, $LIBEXEC, $UNIT_PATH (the unit, or OpenRC's init script), $INIT (systemd or openrc),
# $ROLLBACK_DIR (the state and the data's snapshot, on /var/lib's file system) and $PREVIOUS_DIR (the
# previous version's files, on the image's file system). This part arms a rollback; rollback.sh does it.

# say MESSAGE [PRIORITY]: to stderr (what apt and apk print) and to the service's log: under systemd
# its journal (a root process's entry naming the unit as its object is one `journalctl -u NAME`
# shows), under OpenRC syslog, tagged NAME (/var/log/messages with Alpine's syslogd), where a syslog
# daemon listens.
say() {
    echo "$NAME: $1" >&2
    if [ -S /run/systemd/journal/socket ]; then
        printf 'MESSAGE=%s\nSYSLOG_IDENTIFIER=%s\nOBJECT_SYSTEMD_UNIT=%s\nPRIORITY=%s\n' \
            "$NAME: $1" "$NAME" "$NAME.service" "${2:-5}" | logger --journald 2>/dev/null || true
    elif [ "${INIT:-systemd}" = openrc ] && [ -S /dev/log ] && command -v logger >/dev/null 2>&1; then
        # Names, not numbers: busybox's logger (Alpine's) takes only names.
        case "${2:-5}" in
            3) level=err ;;
            4) level=warning ;;
            *) level=notice ;;
        esac
        logger -t "$NAME" -p "daemon.$level" "$1" 2>/dev/null || true
    fi
}

# Where say's lines are, for the messages that point there.
log_hint() {
    if [ "${INIT:-systemd}" = openrc ]; then
        echo "rc-service $NAME status, and syslog"
    else
        echo "journalctl -u $NAME"
    fi
}

# The admin's choices, from $CONFIG_DIR/rollback: $ROLLBACK (on|off), $COPY_LIMIT (KiB), $READY_TIMEOUT
# and $STEADY (seconds). A bad line fails, naming the file and the line.
read_rollback_config() {
    ROLLBACK=on
    COPY_LIMIT=1048576
    READY_TIMEOUT=300
    STEADY=5
    [ -r "$CONFIG_DIR/rollback" ] || return 0
    line=0
    while read -r key value rest || [ -n "$key" ]; do
        line=$((line + 1))
        ok=
        case "$key" in
            '' | '#'*) continue ;;
            rollback)
                case "$value" in
                    on | off) ROLLBACK=$value ok=1 ;;
                esac
                ;;
            copy-limit)
                number=${value%[KMGT]}
                case "$number" in
                    '' | *[!0-9]*) ;;
                    *)
                        ok=1
                        case "$value" in
                            0) COPY_LIMIT=0 ;;
                            *K) COPY_LIMIT=$number ;;
                            *M) COPY_LIMIT=$((number * 1024)) ;;
                            *G) COPY_LIMIT=$((number * 1048576)) ;;
                            *T) COPY_LIMIT=$((number * 1073741824)) ;;
                            *) ok= ;;
                        esac
                        ;;
                esac
                ;;
            ready-timeout | steady)
                case "$value" in
                    '' | *[!0-9]* | 0*) ;;
                    *)
                        ok=1
                        # shellcheck disable=SC2034 # read after the restart (rollback.sh)
                        if [ "$key" = steady ]; then STEADY=$value; else READY_TIMEOUT=$value; fi
                        ;;
                esac
                ;;
        esac
        [ -n "$ok" ] && [ -z "$rest" ] && continue
        echo "$NAME: $CONFIG_DIR/rollback line $line: not 'rollback on|off', 'copy-limit SIZE' (0, or a number and K, M, G or T), 'ready-timeout SECONDS' or 'steady SECONDS'" >&2
        return 1
    done <"$CONFIG_DIR/rollback"
}

# snapshot_data DEST: a copy of the data directory at DEST, by the cheapest means its file system allows,
# named in $method: a btrfs snapshot, a reflink copy (shares the blocks: btrfs, XFS), else a plain copy
# when it is no larger than the admin's copy-limit. Returns 2, having copied nothing, when it is larger;
# 1 when it failed (no room: $why says why).
snapshot_data() {
    why=
    rm -rf "$1"
    if command -v btrfs >/dev/null 2>&1 && btrfs subvolume show "$DATA_DIR" >/dev/null 2>&1 \
        && btrfs subvolume snapshot "$DATA_DIR" "$1" >/dev/null 2>&1; then
        method="btrfs snapshot"
        return 0
    fi
    if cp -a --reflink=always "$DATA_DIR" "$1" 2>/dev/null; then
        method="reflink copy"
        return 0
    fi
    rm -rf "$1"
    size=$(du -sk "$DATA_DIR" | awk '{ print $1 }')
    if [ "$size" -gt "$COPY_LIMIT" ]; then
        why="$DATA_DIR holds $size KiB, more than the copy-limit of $COPY_LIMIT KiB ($CONFIG_DIR/rollback), and its file system makes neither snapshots nor reflinks"
        return 2
    fi
    free=$(df -Pk "${1%/*}" | awk 'NR == 2 { print $4 }')
    # The copy must not take the last free blocks the running service (or the unpack) needs.
    if [ "$((size + size / 10 + 1024))" -gt "$free" ]; then
        why="a copy of $DATA_DIR needs $size KiB and ${1%/*} has $free KiB free"
        return 1
    fi
    if ! why=$(cp -a "$DATA_DIR" "$1" 2>&1); then
        rm -rf "$1"
        why="cannot copy $DATA_DIR: $(echo "$why" | tail -n 1)"
        return 1
    fi
    method="copy ($size KiB)"
}

# The state of an upgrade: $FROM (the version that ran before), $TO (the new one), $STATUS (armed:
# snapshot taken; rolled-back: the previous version runs again; refused: no room for the snapshot, and
# the package manager unpacked the new version all the same) and $METHOD (the snapshot's).
read_state() {
    FROM='' TO='' STATUS='' METHOD=''
    [ -r "$ROLLBACK_DIR/state" ] || return 1
    # shellcheck source=/dev/null # written by write_state: quoted values only
    . "$ROLLBACK_DIR/state"
}

write_state() {
    printf "FROM='%s'\nTO='%s'\nSTATUS='%s'\nMETHOD='%s'\n" "$FROM" "$TO" "$STATUS" "$METHOD" \
        >"$ROLLBACK_DIR/state.new"
    mv "$ROLLBACK_DIR/state.new" "$ROLLBACK_DIR/state"
}

forget_rollback() {
    rm -rf "$ROLLBACK_DIR" "$PREVIOUS_DIR"
}

# keep_previous: the running version's helper (its directory: the program, service.env, its awk
# programs), unit and image, which the unpack replaces or deletes. The image as hard links: dpkg
# writes each new file beside the old one and renames it into place, and unlinks what the new version
# no longer has, which leaves the linked inodes intact; on the same file system it costs a directory
# entry a file and no data. The kept service.env points at the kept image.
keep_previous() {
    rm -rf "$PREVIOUS_DIR"
    mkdir -p "$PREVIOUS_DIR"
    # The previous version's service.env read by a shell of its own: its values are not this one's.
    # shellcheck disable=SC2016 # expanded by that shell
    image=$(sh -c '. "$1" && echo "$IMAGE_DIR"' sh "$LIBEXEC/service.env")
    if ! [ -d "$image" ]; then
        why="the running version's service.env names no image directory"
        return 1
    fi
    why=$(cp -a "$LIBEXEC" "$PREVIOUS_DIR/libexec" 2>&1 && cp -a "$UNIT_PATH" "$PREVIOUS_DIR/unit" 2>&1 \
        && cp -al "$image" "$PREVIOUS_DIR/image" 2>&1) || return 1
    echo "IMAGE_DIR='$PREVIOUS_DIR/image'" >>"$PREVIOUS_DIR/libexec/service.env"
}

# Whether the service runs: a stopped one has nothing to roll back to (the upgrade starts nothing).
service_active() {
    if [ "${INIT:-systemd}" = openrc ]; then
        [ -e /run/openrc/softlevel ] && rc-service "$NAME" status >/dev/null 2>&1
    else
        [ -d /run/systemd/system ] && systemctl --quiet is-active "$NAME.service" 2>/dev/null
    fi
}

# The new package's preinst, before an upgrade from FROM to TO: the snapshot and the previous version
# kept, or the upgrade refused (no room for the snapshot) before anything stopped, or a plain upgrade
# (rollback off, the service not running, the data too large to copy) with a warning.
arm_rollback() {
    read_rollback_config
    rolled_back=
    if read_state && [ "$STATUS" = rolled-back ] && [ -d "$PREVIOUS_DIR/image" ]; then
        # The version that runs is the one a rollback restored: it is the one to come back to.
        rolled_back=$FROM
    fi
    FROM=${rolled_back:-$1} TO=$2 STATUS=armed METHOD=
    if [ "$ROLLBACK" = off ] || ! service_active; then
        [ -n "$rolled_back" ] || forget_rollback
        return 0
    fi
    mkdir -p "$ROLLBACK_DIR"
    chmod 0700 "$ROLLBACK_DIR"
    if [ -z "$rolled_back" ] && ! keep_previous; then
        say "cannot keep version $FROM's files for a rollback ($why): upgrading to $TO without one" 4
        forget_rollback
        return 0
    fi
    status=0
    snapshot_data "$ROLLBACK_DIR/data" || status=$?
    if [ "$status" = 1 ]; then
        say "upgrade to $TO refused, $FROM keeps running: no room for the snapshot a rollback needs ($why); free some space, or write 'rollback off' in $CONFIG_DIR/rollback" 3
        rm -rf "$ROLLBACK_DIR/data"
        if [ -n "${UNPACKED_ANYWAY:-}" ]; then
            # apk unpacks the new version whatever its pre-upgrade says (it only marks the script as
            # failed): the refusal is then its post-upgrade's, which leaves FROM running from the
            # files kept here (upgrade_restart).
            STATUS=refused
            write_state
            return 1
        fi
        [ -n "$rolled_back" ] || forget_rollback
        return 1
    fi
    if [ "$status" = 2 ]; then
        say "upgrading to $TO without a rollback: $why" 4
        # (The files of a version a rollback restored stay: it runs from them until the restart.)
        [ -n "$rolled_back" ] || forget_rollback
        return 0
    fi
    METHOD=$method
    write_state
    say "upgrading from $FROM to $TO: $DATA_DIR kept for a rollback ($METHOD)"
}

