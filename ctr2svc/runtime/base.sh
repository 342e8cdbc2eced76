# shellcheck shell=sh
# Paths and small tools every part uses. Every process costs a start a millisecond or more
# (bench/README.md): what can be done with the shell's builtins is.

# The paths that follow from service.env, and the host-wide ones (one per host, every service's).
derive_paths() {
    BUNDLE="$STATE_DIR/bundle"
    RUNC="${CTR2SVC_RUNC:-$RUNTIME}"
    CONFIG_AWK="$HELPER_DIR/config.awk"
    NETWORK_AWK="$HELPER_DIR/network.awk"
    NETNS_PATH="/run/netns/$NETNS"
    # netavark's and aardvark-dns's state, the network lock and the published ports' claims.
    NET_STATE=/run/ctr2svc
    # What netavark set up for this service, which its teardown needs: outside $STATE_DIR, which systemd
    # deletes after a stop even when the teardown was cut short (the next cleanup then finishes it).
    NET_JSON="$NET_STATE/services/$NAME.json"
    # The address book of the private networks (ipam.sh); services' data directories hold their side.
    IPAM_DIR=/var/lib/ctr2svc
    SERVICES_DATA=/var/lib
    # The user namespaces' ranges (userns.sh).
    USERNS_DIR="$IPAM_DIR/userns"
    SUBUID=/etc/subuid
    PODMAN_NETWORKS=/etc/containers/networks
    # The overlay's lower layers (shared layers), as mount_root names them.
    LOWER_DIR=$LAYERS_DIR
    LOWER_LIST=$LOWER
    # A user namespace's idmapped shared layers (userns.sh): outside $STATE_DIR, which package scripts
    # delete with rm -rf.
    IDMAP_DIR="$NET_STATE/idmapped/$NAME"
    # Where the container's ids are on the host: 0, or a user namespace's range (userns.sh).
    SHIFT=0
    USERNS_START=
    # The image's writable layer is marked with the root directory's mode and owner (mount.sh).
    LAYER_MARK=".root-$ROOT_MODE-$ROOT_UID-$ROOT_GID"
}

runc_() {
    "$RUNC" --root "$STATE_DIR/runc" "$@"
}

# Centiseconds since boot, in $now: a clock that neither the admin nor NTP moves, read with builtins.
clock() {
    read -r up _ </proc/uptime
    # "1234.56": seconds, then two digits of hundredths ("05" is read without its 0: not octal).
    hundredths=${up#*.}
    now=$((${up%.*} * 100 + ${hundredths#0}))
}

# The unit's cgroup (cgroup v2), in $own, from /proc/self/cgroup's "0::PATH" line.
own_cgroup() {
    own=
    while IFS= read -r line; do
        case "$line" in
            0::*) own=${line#0::} ;;
        esac
    done </proc/self/cgroup
}

# On a unified cgroup hierarchy runc creates the container's cgroup beside its own: moving into a leaf
# of the unit's cgroup first makes that "inside the unit", where the unit's limits apply.
enter_leaf_cgroup() {
    [ -f /sys/fs/cgroup/cgroup.controllers ] || return 0
    own_cgroup
    [ -n "$own" ] && [ "$own" != / ] || return 0
    if ! { { [ -d "/sys/fs/cgroup$own/supervisor" ] || mkdir "/sys/fs/cgroup$own/supervisor"; } \
        && echo $$ >"/sys/fs/cgroup$own/supervisor/cgroup.procs"; }; then
        echo "$NAME: cannot move into $own/supervisor; the container's cgroup will be outside the unit" >&2
    fi
}

# copy SOURCE DEST: a small text file (/etc/hosts), with builtins; an empty DEST if SOURCE is missing.
copy() {
    : >"$2"
    [ -r "$1" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s\n' "$line"
    done <"$1" >"$2"
}

# read_mode FILE FIRST SECOND: the admin's choice in $CONFIG_DIR/FILE, its first word, in $mode (empty
# without the file or a word), with builtins; a word that is neither choice stops the helper, naming both.
read_mode() {
    mode=
    [ -r "$CONFIG_DIR/$1" ] || return 0
    while read -r word rest || [ -n "$word" ]; do
        case "$word" in
            '' | '#'*) continue ;;
        esac
        if [ "$word" != "$2" ] && [ "$word" != "$3" ]; then
            echo "$NAME: $CONFIG_DIR/$1 says '$word': write $2 or $3 there" >&2
            exit 1
        fi
        mode=$word
        return 0
    done <"$CONFIG_DIR/$1"
}
