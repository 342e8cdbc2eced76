# shellcheck shell=sh
# The private network: the service's own network namespace, wired by netavark (podman's network stack)
# to the bridge of its network: the one every ctr2svc service shares, or its compose application's own.
# Addresses come from ipam.sh.

# netavark and aardvark-dns live in podman's helper directory, which distributions place differently.
find_netavark() {
    for dir in /usr/libexec/podman /usr/lib/podman /usr/local/libexec/podman; do
        if [ -x "$dir/netavark" ]; then
            NETAVARK="$dir/netavark"
            AARDVARK="$dir/aardvark-dns"
            return 0
        fi
    done
    echo "$NAME: netavark is not installed, and the private network needs it: install the netavark package" >&2
    exit 1
}

# Not with the lock's descriptor: the aardvark-dns it starts stays, and would hold the lock forever.
netavark_() {
    "$NETAVARK" --config "$NET_STATE" --aardvark-binary "$AARDVARK" "$@" 9>&-
}

# One service at a time changes the host's share of the network: addresses, port claims, netavark's
# bridge and firewall rules. The lock goes with the process (or with unlock_network).
lock_network() {
    if ! [ -d "$NET_STATE/ports" ] || ! [ -d "$NET_STATE/services" ]; then
        mkdir -p "$NET_STATE/ports" "$NET_STATE/services"
    fi
    exec 9>"$NET_STATE/lock"
    flock 9
}

unlock_network() {
    exec 9>&-
}

# Fails, naming the port and its holder, when a port to publish ("PROTOCOL PORT" lines on stdin) is
# another service's or a listening socket's on this host: netavark would forward it regardless, and
# the one holding it would silently stop getting its connections.
check_ports() {
    # The host's listening TCP and bound UDP sockets among them, from /proc/net with one awk (ss,
    # which can name the holder, costs 10 ms a port: it runs only for a port that is taken).
    taken=$(awk -v list="$STATE_DIR/ports" '
        function number(hex,    i, n) {
            for (i = 1; i <= length(hex); i++) n = n * 16 + index("0123456789ABCDEF", substr(hex, i, 1)) - 1
            return n
        }
        BEGIN { while ((getline line < list) > 0) wanted[line] = 1 }
        FNR > 1 && (FILENAME ~ /udp/ ? $4 == "07" : $4 == "0A") {
            key = (FILENAME ~ /udp/ ? "udp " : "tcp ") number(substr($2, length($2) - 3))
            if (key in wanted) printf " %s ", key
        }' /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null) || taken=
    while read -r proto port; do
        holder=
        read -r holder 2>/dev/null <"$NET_STATE/ports/$proto-$port" || true
        if [ -n "$holder" ] && [ "$holder" != "$NAME" ] && [ -e "/run/netns/ctr2svc-$holder" ]; then
            echo "$NAME: cannot publish port $port/$proto: the service $holder publishes it" >&2
            return 1
        fi
        case "$taken" in
            *" $proto $port "*) ;;
            *) continue ;;
        esac
        if [ "$proto" = udp ]; then flag=-u; else flag=-t; fi
        found=$(ss -Hlnp "$flag" "sport = :$port" 2>/dev/null) || found=
        if [ -n "$found" ]; then
            who=$(echo "$found" | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n 1)
            echo "$NAME: cannot publish port $port/$proto: ${who:-a process} listens on it on this host" >&2
            return 1
        fi
    done
}

# systemd-networkd with a catch-all .network file (Type=ether, Name=*) takes any new veth to run DHCP
# on it, and in doing so takes netavark's veths off the bridge: tell it that those and the bridge are
# not its to manage. A runtime file, so once per boot.
unmanage_links() {
    [ -d /run/systemd/netif ] || return 0
    # (One that an older helper wrote names only ctr2svc0: written again.)
    grep -qs 'c2s-\*' /run/systemd/network/00-ctr2svc.network && return 0
    mkdir -p /run/systemd/network
    printf '%s\n' "# Written by $0: netavark's bridges and veths are netavark's, not networkd's." \
        '[Match]' "Name=ctr2svc0 c2s-* veth*" '' '[Link]' 'Unmanaged=yes' >/run/systemd/network/00-ctr2svc.network
    networkctl reload >/dev/null 2>&1 || true
}

# The bridge's MAC address, fixed the first time (3: set by hand) so that the services' ARP entries for
# the gateway stay right while others start and stop: made from the gateway's address, as the
# services' are from theirs (network.awk; BRIDGE_MAC in ctr2svc/service/network.py for the default network).
pin_bridge_mac() {
    read -r assigned <"/sys/class/net/$BRIDGE/addr_assign_type" || assigned=
    if [ "$assigned" != 3 ]; then
        # The gateway's four numbers, split at the dots (this function's own positional parameters).
        ifs=$IFS
        IFS=.
        # shellcheck disable=SC2086
        set -- $GATEWAY
        IFS=$ifs
        ip link set dev "$BRIDGE" address "$(printf '02:c2:%02x:%02x:%02x:%02x' "$1" "$2" "$3" "$4")"
    fi
}

# An address, the published ports checked, the namespace, then netavark (veth on the bridge, NAT,
# port forwarding, the service's name in aardvark-dns). Once $NET_JSON exists, cleanup undoes it all,
# whatever failed after.
network_setup() {
    find_netavark
    lock_network
    allocate_subnet
    allocate_address
    awk -v NAME="$NAME" -v ADDRESS="$address" -v SUBNET_PREFIX="$SUBNET_PREFIX" \
        -v PORTSFILE="$CONFIG_DIR/ports" -v PORTLIST="$STATE_DIR/ports" \
        -v CONTAINER_ID="$CONTAINER_ID" -v NETWORK_NAME="$NETWORK_NAME" -v NETWORK_ID="$NETWORK_ID" \
        -v BRIDGE="$BRIDGE" -v ALIASES="$ALIASES" \
        -f "$NETWORK_AWK" >"$NET_JSON.new"
    check_ports <"$STATE_DIR/ports"
    unmanage_links
    mv "$NET_JSON.new" "$NET_JSON"
    ip netns add "$NETNS"
    if ! netavark_ setup "$NETNS_PATH" <"$NET_JSON" >"$STATE_DIR/network.status" 2>&1; then
        echo "$NAME: netavark could not set up the network: $(cat "$STATE_DIR/network.status")" >&2
        network_teardown
        exit 1
    fi
    while read -r proto port; do
        echo "$NAME" >"$NET_STATE/ports/$proto-$port"
    done <"$STATE_DIR/ports"
    pin_bridge_mac
    unlock_network
    # The container's resolver is aardvark-dns on the bridge: the other services by name, the host's
    # resolvers for the rest. Its hosts file and name are its own.
    : >"$STATE_DIR/resolv.conf.new"
    if [ -r /etc/resolv.conf ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            case "$line" in
                search* | domain* | options*) printf '%s\n' "$line" ;;
            esac
        done </etc/resolv.conf >"$STATE_DIR/resolv.conf.new"
    fi
    echo "nameserver $GATEWAY" >>"$STATE_DIR/resolv.conf.new"
    mv "$STATE_DIR/resolv.conf.new" "$STATE_DIR/resolv.conf"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n' "$address" "$NAME" \
        >"$STATE_DIR/hosts"
    echo "$NAME" >"$STATE_DIR/hostname"
}

# What netavark set up, undone (its firewall rules, the veth, the name in aardvark-dns, which exits
# with the last name), the namespace deleted and the ports' claims released. Called with the lock held.
network_teardown() {
    if [ -e "$NET_JSON" ] && [ -e "$NETNS_PATH" ]; then
        netavark_ teardown "$NETNS_PATH" <"$NET_JSON" >/dev/null 2>&1 || true
    fi
    if [ -e "$NETNS_PATH" ]; then
        ip netns delete "$NETNS" 2>/dev/null || true
    fi
    for claim in "$NET_STATE"/ports/*; do
        holder=
        read -r holder 2>/dev/null <"$claim" || continue
        if [ "$holder" = "$NAME" ]; then
            rm -f "$claim"
        fi
    done
    rm -f "$NET_JSON"
    prune_firewall
}

# netavark leaves its host-wide chains behind, empty, when the last container of the last network
# has gone (under podman too). Once no netavark network is left on this host, they go, and the rules
# that jump to them, so that a host whose services are stopped has none of their rules.
prune_firewall() {
    for link in /sys/class/net/ctr2svc0 /sys/class/net/c2s-*; do
        [ -e "$link" ] && return 0
    done
    command -v iptables >/dev/null 2>&1 || return 0
    nat=$(iptables -w -t nat -S 2>/dev/null) || return 0
    filter=$(iptables -w -t filter -S 2>/dev/null) || return 0
    case "$nat$filter" in
        # Another network (podman's) still has ports forwarded or containers.
        *"-A NETAVARK-HOSTPORT-DNAT "* | *"-N NETAVARK-DN-"* | *"-A NETAVARK_FORWARD "*) return 0 ;;
    esac
    for table in nat filter; do
        if [ "$table" = nat ]; then rules=$nat; else rules=$filter; fi
        echo "$rules" | while IFS= read -r rule; do
            case "$rule" in
                "-A "*" -j NETAVARK-HOSTPORT-"* | "-A "*" -j NETAVARK_FORWARD"*)
                    # iptables -S quotes a comment as the shell would: eval splits it back.
                    eval "iptables -w -t $table -D ${rule#-A }" 2>/dev/null || true
                    ;;
            esac
        done
        echo "$rules" | while read -r new chain; do
            case "$new $chain" in
                "-N NETAVARK-HOSTPORT-"* | "-N NETAVARK_FORWARD")
                    iptables -w -t "$table" -F "$chain" 2>/dev/null || true
                    iptables -w -t "$table" -X "$chain" 2>/dev/null || true
                    ;;
            esac
        done
    done
}

# The network torn down, whatever it now is: the admin may have switched it since it was set up.
network_cleanup() {
    if [ -e "$NET_JSON" ] || [ -e "$NETNS_PATH" ]; then
        find_netavark
        lock_network
        network_teardown
        unlock_network
    fi
}
