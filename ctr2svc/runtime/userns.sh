# shellcheck shell=sh
# User namespaces (--userns auto, /etc/NAME/userns): root in the container is not root on the host. A
# service gets $USERNS_SIZE host ids of its own, the container's 0 to 65535, allocated once (at install)
# and kept across restarts, upgrades and a remove, until a purge deletes its data directory. The book:
# $USERNS_DIR/START names the service that holds the range starting at START, and the service's own
# $DATA_DIR/userns says "START SIZE"; a claim whose service does not say so (purged, or crashed between
# the two writes) is stale and the range free, as with the private network's addresses (ipam.sh).
# The image's files, the writable layer, the volumes and the files the container gets from the host
# are owned by the mapped ids on the host; the runtime config gets the namespace and its mappings
# (config.awk). Shared layers are every service's: they are not shifted but mounted idmapped and
# read-only (idmap.pl) below $IDMAP_DIR, and the overlay is made of those.

USERNS_SIZE=65536

# The admin's choice, in $USERNS: the first word of $CONFIG_DIR/userns, with builtins.
read_userns_mode() {
    read_mode userns auto host
    [ -z "$mode" ] || USERNS=$mode
}

# The pool ranges come from, in $pool_start and $pool_size: the admin's "ctr2svc:START:COUNT" line in
# /etc/subuid (the gids are the same numbers), else 0x70000000 up to 0x7ffe0000: above the ranges
# useradd gives users (from 100000) and systemd-nspawn's (0x80000-0x6fffffff), below systemd's foreign
# range (0x7ffe0000).
userns_pool() {
    pool_start=1879048192
    pool_size=268304384
    [ -r "$SUBUID" ] || return 0
    while IFS=: read -r user start count || [ -n "$user" ]; do
        if [ "$user" = ctr2svc ]; then
            pool_start=$start
            pool_size=$count
        fi
    done <"$SUBUID"
}

# userns_free START: no other service holds the range starting at START.
userns_free() {
    holder=
    read -r holder 2>/dev/null <"$USERNS_DIR/$1" || return 0
    [ "$holder" = "$NAME" ] && return 0
    held=
    read -r held _ 2>/dev/null <"$SERVICES_DATA/$holder/userns" || true
    [ "$held" != "$1" ]
}

# The service's range, in $USERNS_START: the one it has, else the lowest free one of the pool, claimed
# under a lock (two installs at once never get the same range).
allocate_userns() {
    USERNS_START=
    read -r USERNS_START _ 2>/dev/null <"$DATA_DIR/userns" || true
    holder=
    if [ -n "$USERNS_START" ]; then
        read -r holder 2>/dev/null <"$USERNS_DIR/$USERNS_START" || true
        [ "$holder" = "$NAME" ] && return 0
    fi
    [ -d "$USERNS_DIR" ] || mkdir -p "$USERNS_DIR"
    exec 8>"$USERNS_DIR/.lock"
    flock 8
    if [ -z "$USERNS_START" ] || ! userns_free "$USERNS_START"; then
        USERNS_START=
        userns_pool
        i=0
        while [ "$i" -lt $((pool_size / USERNS_SIZE)) ]; do
            if userns_free $((pool_start + i * USERNS_SIZE)); then
                USERNS_START=$((pool_start + i * USERNS_SIZE))
                break
            fi
            i=$((i + 1))
        done
        if [ -z "$USERNS_START" ]; then
            exec 8>&-
            echo "$NAME: no user namespace range left ($pool_size ids from $pool_start, /etc/subuid's ctr2svc line): purge a service's package" >&2
            exit 1
        fi
    fi
    if [ ! -d "$DATA_DIR" ]; then
        mkdir -p "$DATA_DIR"
        chmod 0700 "$DATA_DIR"
    fi
    # The claim first, then the service's own record: a crash between the two leaves a stale claim.
    echo "$NAME" >"$USERNS_DIR/$USERNS_START"
    echo "$USERNS_START $USERNS_SIZE" >"$DATA_DIR/userns"
    exec 8>&-
}

# The mode in $USERNS and, in $SHIFT, where the container's ids are on the host (0: no user namespace).
# "allocate": a range is claimed when the service has none (install, start); otherwise it is only read
# (the cleanup after a stop).
userns_setup() {
    read_userns_mode
    SHIFT=0
    USERNS_START=
    if [ "$USERNS" = auto ] && [ "$RUNTIME" = nspawn ]; then
        # nspawn maps users its own way (--private-users) and its OCI reader was not proven with ours.
        echo "$NAME: $CONFIG_DIR/userns says auto, which this nspawn service cannot use: write host there, or rebuild with --runtime runc" >&2
        exit 1
    fi
    if [ "$USERNS" = auto ]; then
        if [ "${1:-}" = allocate ]; then
            if [ -n "$LOWER" ] && ! command -v perl >/dev/null 2>&1; then
                echo "$NAME: a user namespace over shared layers needs perl (idmapped mounts): install perl, or write host in $CONFIG_DIR/userns" >&2
                exit 1
            fi
            allocate_userns
        else
            read -r USERNS_START _ 2>/dev/null <"$DATA_DIR/userns" || true
        fi
        SHIFT=${USERNS_START:-0}
    fi
    LAYER_MARK=".root-$ROOT_MODE-$((ROOT_UID + SHIFT))-$((ROOT_GID + SHIFT))"
}

# The owner of PATH, in $owner (one process: stat is in coreutils and busybox alike).
owner_of() {
    owner=$(stat -c %u "$1")
}

# The image's files owned as $SHIFT says. "always": shift them whatever the root directory's owner
# says (an install: the package manager has just written them as root). At a start only when a range
# was ever allocated (the admin may have switched), so that a service without one pays no process.
shift_rootfs() {
    [ -z "$LOWER" ] || return 0
    [ "$SHIFT" != 0 ] || [ -e "$DATA_DIR/userns" ] || return 0
    if [ "${1:-}" != always ]; then
        owner_of "$IMAGE_DIR/rootfs"
        [ "$owner" != $((ROOT_UID + SHIFT)) ] || return 0
    fi
    if [ "$SHIFT" = 0 ] && [ "${1:-}" = always ]; then
        # Installed as the package wrote it, and ownership.sh without an offset has run.
        return 0
    fi
    if [ "$SHIFT" = 0 ]; then
        echo "$NAME: giving the image's files their own ids back (no user namespace)" >&2
    else
        echo "$NAME: giving the image's files the ids of the container's user namespace (+$SHIFT)" >&2
    fi
    sh "$IMAGE_DIR/ownership.sh" "$SHIFT"
}

# shift_tree DIR FROM TO: the ids in FROM..FROM+65535 of every file below DIR moved to TO..; others
# stay. One chown per owner for all its files (awk sorts them into lists), then the set-id bits chown
# cleared. (Names with a newline are not shifted.)
shift_tree() {
    lists=$(mktemp -d)
    find "$1" -exec stat -c '%u %g %a %n' {} + | awk -v from="$2" -v to="$3" -v size="$USERNS_SIZE" \
        -v lists="$lists" '{
            u = $1; g = $2; mode = $3
            path = substr($0, length($1) + length($2) + length($3) + 4)
            if (u >= from && u < from + size) u = u - from + to
            if (g >= from && g < from + size) g = g - from + to
            print path > (lists "/" u ":" g)
            if (length(mode) > 3) print mode " " path > (lists "/modes")
        }'
    for list in "$lists"/*:*; do
        [ -e "$list" ] || continue
        tr '\n' '\0' <"$list" | xargs -0 chown -h "${list##*/}" --
    done
    if [ -e "$lists/modes" ]; then
        while read -r mode path; do
            [ -L "$path" ] || chmod "$mode" "$path"
        done <"$lists/modes"
    fi
    rm -rf "$lists"
}

# The volumes of a service whose mode changed since they were made: the volumes directory's owner
# says which ids they have.
shift_volumes() {
    [ "$SHIFT" != 0 ] || [ -e "$DATA_DIR/userns" ] || return 0
    [ -d "$VOLUMES_DIR" ] || return 0
    owner_of "$VOLUMES_DIR"
    [ "$owner" != "$SHIFT" ] || return 0
    for volume in "$VOLUMES_DIR"/* "$VOLUMES_DIR"/.[!.]*; do
        [ -e "$volume" ] || continue
        echo "$NAME: giving $volume the ids of the container's user namespace (+$SHIFT; was +$owner)" >&2
        shift_tree "$volume" "$owner" "$SHIFT"
    done
    chown "$SHIFT:$SHIFT" "$VOLUMES_DIR"
}

# The container's own /etc/hosts, /etc/resolv.conf and /etc/hostname are its root's to write, as under
# Docker; $STATE_DIR/userns tells the start that the container has a user namespace.
userns_state() {
    if [ "$SHIFT" = 0 ]; then
        rm -f "$STATE_DIR/userns"
        return 0
    fi
    : >"$STATE_DIR/userns"
    if [ "$NETWORK" = host ]; then
        chown "$SHIFT:$SHIFT" "$STATE_DIR/hosts" "$STATE_DIR/resolv.conf" "$STATE_DIR/hostname"
    fi
}

# Right before runc: the container's root mounts its root directory by path, as the mapped id, which
# must be able to pass $STATE_DIR. systemd sets the directory's mode (RuntimeDirectoryMode=0700)
# before each of the unit's commands, so it is done here, in the command that runs runc; its owner
# stays root (systemd would chown the whole tree back, the container's root included, at the next
# command). Only the names below it can be reached: the bundle and runc's state are 0700.
userns_enter() {
    if [ -e "$STATE_DIR/userns" ]; then
        chmod 0711 "$STATE_DIR"
    fi
}

# Shared layers seen with the range's ids: each layer's rootfs mounted idmapped at $IDMAP_DIR/LAYER,
# which the overlay then takes as its lower layers (mount_root). The layers on disk stay as installed,
# shared by every service.
# shellcheck disable=SC2120 # its arguments are the list eval sets
idmap_layers() {
    [ -n "$LOWER" ] && [ "$SHIFT" != 0 ] || return 0
    eval "set -- $LAYERS"
    pairs=
    while [ "$#" -ge 3 ]; do
        mkdir -p "$IDMAP_DIR/$1"
        pairs="$pairs $LAYERS_DIR/$1/rootfs $IDMAP_DIR/$1"
        shift 3
    done
    # shellcheck disable=SC2086 # split on purpose: the layers' paths are ctr2svc's own names
    if ! perl "$HELPER_DIR/idmap.pl" "$SHIFT" "$USERNS_SIZE" $pairs; then
        unmount_idmapped || true
        echo "$NAME: cannot mount the shared layers with the ids of the user namespace: write host in $CONFIG_DIR/userns" >&2
        return 1
    fi
    LOWER_DIR=$IDMAP_DIR
    LOWER_LIST=
    rest=$LOWER
    while [ -n "$rest" ]; do
        layer=${rest%%:*}
        LOWER_LIST="$LOWER_LIST${LOWER_LIST:+:}${layer%/rootfs}"
        case "$rest" in
            *:*) rest=${rest#*:} ;;
            *) rest= ;;
        esac
    done
}

# The idmapped layers of a user namespace, once the root above them is gone (cleanup).
unmount_idmapped() {
    [ -d "$IDMAP_DIR" ] || return 0
    for layer in "$IDMAP_DIR"/*; do
        [ -d "$layer" ] || continue
        unmount_all "$layer" || return 1
        rmdir "$layer"
    done
    rmdir "$IDMAP_DIR"
}
