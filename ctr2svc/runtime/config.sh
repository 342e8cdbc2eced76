# shellcheck shell=sh
# The runtime bundle's config.json: the packaged one with the admin's settings from $CONFIG_DIR, and the
# files the container gets from the host (/etc/hosts, /etc/resolv.conf, /etc/hostname).

# The admin's choice of network, in $NETWORK: the first word of $CONFIG_DIR/network, with builtins.
read_network_mode() {
    read_mode network host private
    [ -z "$mode" ] || NETWORK=$mode
}

# With the host's network nothing is published: say so when the ports file lists ports.
warn_unpublished() {
    [ -r "$CONFIG_DIR/ports" ] || return 0
    while read -r word rest || [ -n "$word" ]; do
        case "$word" in
            '' | '#'*) continue ;;
        esac
        echo "$NAME: the network is the host's ($CONFIG_DIR/network): the ports in $CONFIG_DIR/ports are not published; the service's own ports are the host's" >&2
        return 0
    done <"$CONFIG_DIR/ports"
}

# Written again only when something it is made of changed: this package's config ($RENDER_KEY), the
# host name, the cgroup, or a file in $CONFIG_DIR edited since (its modification time, as make does).
render_config() {
    cgroups_path=
    if [ "${RUNC##*/}" = crun ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        # crun reads a relative cgroupsPath from the top of the hierarchy (runc from its own cgroup):
        # name the unit's cgroup, so that the container stays inside the unit and its limits apply.
        own_cgroup
        if [ -n "$own" ] && [ "$own" != / ]; then
            cgroups_path="$own/$NAME"
        fi
    fi
    if [ "$NETWORK" = private ]; then
        # Its own UTS namespace: the service's name.
        hostname=$NAME
    else
        read -r hostname </proc/sys/kernel/hostname
    fi
    inputs="$RENDER_KEY $IMAGE_DIR $NETWORK $hostname $cgroups_path $USERNS_START"
    rendered=
    IFS= read -r rendered 2>/dev/null <"$BUNDLE/inputs" || true
    # shellcheck disable=SC3013 # -nt: dash's, bash's and busybox's test have it, which is every /bin/sh here
    if [ "$rendered" = "$inputs" ] && [ -f "$BUNDLE/config.json" ] \
        && ! [ "$CONFIG_DIR/env" -nt "$BUNDLE/config.json" ] \
        && ! [ "$CONFIG_DIR/args" -nt "$BUNDLE/config.json" ] \
        && ! [ "$CONFIG_DIR/mounts" -nt "$BUNDLE/config.json" ]; then
        return 0
    fi
    # The record of what it was made of goes first and comes back last: a render cut short is redone.
    # (Emptied with a redirection, the config written in place, deleted if awk fails: processes cost
    # a start.)
    : >"$BUNDLE/inputs"
    nspawn=
    [ "$RUNTIME" != nspawn ] || nspawn=1
    awk -v NAME="$NAME" -v ENTRYPOINT_N="$ENTRYPOINT_N" -v CGROUPS_PATH="$cgroups_path" -v NSPAWN="$nspawn" \
        -v HOSTNAME="$hostname" -v NETWORK="$NETWORK" -v NETNS_PATH="$NETNS_PATH" \
        -v USERNS_START="$USERNS_START" -v USERNS_SIZE="$USERNS_SIZE" \
        -v ENVFILE="$CONFIG_DIR/env" -v ARGSFILE="$CONFIG_DIR/args" -v MOUNTSFILE="$CONFIG_DIR/mounts" \
        -f "$CONFIG_AWK" "$IMAGE_DIR/config.json" >"$BUNDLE/config.json" || {
        rm -f "$BUNDLE/config.json"
        return 1
    }
    echo "$inputs" >"$BUNDLE/inputs"
}

# The container's /etc/resolv.conf, /etc/hosts and /etc/hostname with the host's network: the host's,
# as copies made at each start that the container may change, as under Docker.
host_files() {
    copy /etc/hosts "$STATE_DIR/hosts"
    copy /etc/resolv.conf "$STATE_DIR/resolv.conf"
    echo "$hostname" >"$STATE_DIR/hostname"
}
