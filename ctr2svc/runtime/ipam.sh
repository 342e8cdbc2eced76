# shellcheck shell=sh
# The private networks' address book: which /24 each network has, which address each service has. The
# records live on disk, so they survive reboots: $IPAM_DIR/networks/NETWORK holds a network's /24 (its
# first three numbers), $IPAM_DIR/addresses/ADDRESS names the service that holds ADDRESS, and the
# service's own $SERVICES_DATA/NAME/address must agree, or the claim is stale (the service was purged,
# moved elsewhere, or crashed between the two writes) and the address free again. A purge deletes the
# data directory and so gives its address back; a remove keeps it. Every function here is called with
# the network lock held (network.sh): one start at a time changes the book.

# address_free ADDRESS: nobody else holds it.
address_free() {
    holder=
    read -r holder 2>/dev/null <"$IPAM_DIR/addresses/$1" || return 0
    [ "$holder" = "$NAME" ] && return 0
    held=
    read -r held 2>/dev/null <"$SERVICES_DATA/$holder/address" || true
    [ "$held" != "$1" ]
}

# subnet_held PREFIX: a service other than this one holds an address in the /24 PREFIX.
subnet_held() {
    for claim in "$IPAM_DIR/addresses/$1".*; do
        holder=
        read -r holder 2>/dev/null <"$claim" || continue
        [ "$holder" = "$NAME" ] && continue
        held=
        read -r held 2>/dev/null <"$SERVICES_DATA/$holder/address" || continue
        [ "$held" = "${claim##*/}" ] && return 0
    done
    return 1
}

# subnet_free PREFIX [own]: the /24 PREFIX can be this network's: no other network's services are on
# it, the host routes it nowhere but to this network's bridge, and no podman network has it. "own": it
# is this network's record, whose services may be on it.
subnet_free() {
    for record in "$IPAM_DIR/networks"/*; do
        [ "${record##*/}" = "$NETWORK_NAME" ] && continue
        recorded=
        read -r recorded 2>/dev/null <"$record" || continue
        [ "$recorded" = "$1" ] && subnet_held "$1" && return 1
    done
    [ "${2:-}" = own ] || ! subnet_held "$1" || return 1
    routed=$(ip -4 route show exact "$1.0/24" 2>/dev/null) || routed=
    case "$routed" in
        "" | *" dev $BRIDGE "*) ;;
        *) return 1 ;;
    esac
    ! grep -qs "\"$1.0/24\"" "$PODMAN_NETWORKS"/*.json
}

# The network's /24 in $SUBNET_PREFIX and its gateway in $GATEWAY: the packaged one (the default
# network's is fixed), else the one it had, else the first free one of $SUBNET_CANDIDATES.
allocate_subnet() {
    if [ -z "$SUBNET_PREFIX" ]; then
        read -r SUBNET_PREFIX 2>/dev/null <"$IPAM_DIR/networks/$NETWORK_NAME" || true
        if [ -z "$SUBNET_PREFIX" ] || ! subnet_free "$SUBNET_PREFIX" own; then
            SUBNET_PREFIX=
            for candidate in $SUBNET_CANDIDATES; do
                if subnet_free "$candidate"; then
                    SUBNET_PREFIX=$candidate
                    break
                fi
            done
            if [ -z "$SUBNET_PREFIX" ]; then
                echo "$NAME: no /24 left for the network $NETWORK_NAME (all of $SUBNET_CANDIDATES are taken): purge an application's packages" >&2
                exit 1
            fi
            [ -d "$IPAM_DIR/networks" ] || mkdir -p "$IPAM_DIR/networks"
            # Another network's record of this /24 is a purged application's (no service is on it, as
            # subnet_free found): it goes, or this network's next service would take it for a network
            # still there, and move this one off the /24 its first service is on.
            for record in "$IPAM_DIR/networks"/*; do
                [ "${record##*/}" != "$NETWORK_NAME" ] || continue
                recorded=
                read -r recorded 2>/dev/null <"$record" || continue
                [ "$recorded" != "$SUBNET_PREFIX" ] || rm -f "$record"
            done
            echo "$SUBNET_PREFIX" >"$IPAM_DIR/networks/$NETWORK_NAME.new"
            mv "$IPAM_DIR/networks/$NETWORK_NAME.new" "$IPAM_DIR/networks/$NETWORK_NAME"
        fi
    fi
    GATEWAY="$SUBNET_PREFIX.1"
}

# The service's address, in $address: the one it had (kept in $DATA_DIR/address across restarts,
# upgrades and a remove), else the lowest free one.
allocate_address() {
    address=
    read -r address 2>/dev/null <"$DATA_DIR/address" || true
    # An address on another network (the service's network changed, or its application's /24) goes.
    case "$address" in
        "$SUBNET_PREFIX".*) ;;
        *) address= ;;
    esac
    if [ -z "$address" ] || ! address_free "$address"; then
        address=
        i=2
        while [ "$i" -lt 255 ]; do
            if address_free "$SUBNET_PREFIX.$i"; then
                address="$SUBNET_PREFIX.$i"
                break
            fi
            i=$((i + 1))
        done
        if [ -z "$address" ]; then
            echo "$NAME: no address left on the network $NETWORK_NAME ($SUBNET_PREFIX.0/24): purge a service's package" >&2
            exit 1
        fi
    fi
    [ -d "$IPAM_DIR/addresses" ] || mkdir -p "$IPAM_DIR/addresses"
    # The claim first, then the service's own record: a crash between the two leaves a claim that
    # address_free sees as stale.
    echo "$NAME" >"$IPAM_DIR/addresses/$address"
    echo "$address" >"$DATA_DIR/address"
}
