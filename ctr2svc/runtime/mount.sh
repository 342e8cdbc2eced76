# shellcheck shell=sh
# The container's root: an overlay of the image (the package's rootfs, or its layer packages) and an
# empty writable layer, mounted at $ROOT; and the data directories (volumes) that outlive it.

# mounts_on PATH: how many mounts are stacked on PATH, in $mounts, from the kernel's own table. Not
# from what PATH shows: once a package upgrade has deleted the image below a mounted root, the root
# looks empty while it is still mounted. (Mount points are escaped there: \040 for a space. Service
# names cannot hold such characters, so $ROOT is compared as it is.)
mounts_on() {
    mounts=0
    while read -r _ _ _ _ point _; do
        if [ "$point" = "$1" ]; then
            mounts=$((mounts + 1))
        fi
    done </proc/self/mountinfo
}

# unmount_all PATH: every mount stacked on PATH, top first (a leaked one included); lazily when busy.
unmount_all() {
    mounts_on "$1"
    tries=0
    while [ "$mounts" -gt 0 ]; do
        if [ "$tries" -ge 64 ]; then
            echo "$NAME: $1 is still mounted $mounts times: unmount it by hand (umount -l $1)" >&2
            return 1
        fi
        umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true
        tries=$((tries + 1))
        mounts_on "$1"
    done
}

# new_layer DIR: an empty writable layer. The merged root takes the upper layer's mode and owner, the
# image's root directory's; the directory named after them says so to fresh_layer.
new_layer() {
    rm -rf "$1"
    # shellcheck disable=SC2174 # -m is meant for all three
    mkdir -p -m "$ROOT_MODE" "$1/upper" "$1/work" "$1/$LAYER_MARK"
    if [ "$ROOT_UID" != 0 ] || [ "$ROOT_GID" != 0 ] || [ "$SHIFT" != 0 ]; then
        chown "$((ROOT_UID + SHIFT)):$((ROOT_GID + SHIFT))" "$1/upper"
    fi
}

# fresh_layer DIR: the writable layer a stop made (after_stop) for this image's root, never mounted
# since (overlayfs leaves work/work behind): a start can take it as it is, with no process.
fresh_layer() {
    [ -d "$1/$LAYER_MARK" ] && [ -d "$1/upper" ] && [ -d "$1/work" ] || return 1
    for entry in "$1/upper"/* "$1/upper"/.[!.]* "$1/upper"/..?* "$1/work"/* "$1/work"/.[!.]* "$1/work"/..?*; do
        if [ -e "$entry" ] || [ -L "$entry" ]; then
            return 1
        fi
    done
}

# mount_root DIR: the root mounted at $ROOT with DIR as its writable layer.
mount_root() {
    fresh_layer "$1" || new_layer "$1"
    if [ -z "$LOWER" ]; then
        mount -t overlay overlay -o "lowerdir=$IMAGE_DIR/rootfs,upperdir=$1/upper,workdir=$1/work" "$ROOT"
    else
        # Lower layers named relative to $LOWER_DIR ($LAYERS_DIR, or their idmapped mounts': userns.sh):
        # the options stay short whatever the layer count.
        cd "$LOWER_DIR" || return
        mounted=0
        mount -t overlay overlay -o "lowerdir=$LOWER_LIST,upperdir=$1/upper,workdir=$1/work" "$ROOT" || mounted=$?
        cd /
        return "$mounted"
    fi
}

# Shared layers: each layer package is installed, and is the layer the image names ($LAYERS: directory,
# layer id and package, three words a layer).
# shellcheck disable=SC2120 # its arguments are the list eval sets
check_layers() {
    eval "set -- $LAYERS"
    while [ "$#" -ge 3 ]; do
        id=
        read -r id 2>/dev/null <"$LAYERS_DIR/$1/id" || true
        if [ "$id" != "$2" ]; then
            echo "$NAME: the image layer $2 is not installed: install the package $3" >&2
            exit 1
        fi
        shift 3
    done
}

# init_volume HOST_DIR CONTAINER_PATH UID GID MODE SEED
init_volume() {
    [ -d "$1" ] && return 0
    # Seeded from the image's root: with shared layers, once prepare has mounted it.
    [ "$6" = yes ] && [ -z "$SEED_ROOT" ] && return 0
    mkdir -p "${1%/*}"
    rm -rf "$1.new"
    mkdir "$1.new"
    # Like a new Docker volume, a new data dir starts with what the image holds at that path.
    if [ "$6" = yes ]; then
        cp -a "$SEED_ROOT$2/." "$1.new/"
    fi
    chown "$(($3 + SHIFT)):$(($4 + SHIFT))" "$1.new"
    chmod "$5" "$1.new"
    # Renamed into place last, so an interrupted copy is redone rather than taken as done.
    mv "$1.new" "$1"
}

# The data directory and the volumes ($VOLUMES: six words a volume, init_volume's arguments).
# shellcheck disable=SC2120 # its arguments are the list eval sets
init_data() {
    if [ ! -d "$DATA_DIR" ]; then
        mkdir -p "$DATA_DIR"
        chmod 0700 "$DATA_DIR"
    fi
    [ -d "$VOLUMES_DIR" ] || mkdir -p "$VOLUMES_DIR"
    shift_volumes
    eval "set -- $VOLUMES"
    while [ "$#" -ge 6 ]; do
        init_volume "$1" "$2" "$3" "$4" "$5" "$6"
        shift 6
    done
}
