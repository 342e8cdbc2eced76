# Part of ctr2svc's service helper (the same in every package; the helper passes what differs).
# Writes netavark's options for the service (JSON, on stdout) from /etc/NAME/ports (PORTSFILE), one
# "[IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]" a line, and "PROTOCOL PORT" lines to PORTLIST, which the
# helper checks are free before netavark forwards them. Lines starting with # and empty lines are
# skipped. awk, as for config.awk: on every host, unlike JSON tools.

function fail(file, n, msg) {
    printf "%s: %s line %d: %s\n", NAME, file, n, msg > "/dev/stderr"
    exit 1
}

# A JSON string, character by character: awks disagree on what "\\\\" means in a gsub replacement.
function quote(s,    out, i, c) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\" || c == "\"") out = out "\\" c
        else out = out c
    }
    return "\"" out "\""
}

function port(text) {
    return text ~ /^[0-9]+$/ && text + 0 >= 1 && text + 0 <= 65535
}

BEGIN {
    n = 0
    mappings = ""
    printf "" > PORTLIST
    while ((getline line < PORTSFILE) > 0) {
        n++
        sub(/\r$/, "", line)
        gsub(/^[ \t]+|[ \t]+$/, "", line)
        if (line ~ /^(#|$)/) continue
        proto = "tcp"
        if (line ~ /\/(tcp|udp)$/) {
            proto = substr(line, length(line) - 2)
            line = substr(line, 1, length(line) - 4)
        }
        split("", f)
        nf = split(line, f, ":")
        ip = ""
        if (nf == 3) {
            ip = f[1]
            f[1] = f[2]
            f[2] = f[3]
        }
        if (nf < 2 || nf > 3 || !port(f[1]) || !port(f[2]) \
            || (nf == 3 && ip !~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/))
            fail(PORTSFILE, n, "not [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]")
        key = proto " " (f[1] + 0)
        if (key in seen) fail(PORTSFILE, n, "host port " (f[1] + 0) "/" proto " is published twice")
        seen[key] = 1
        print key > PORTLIST
        mappings = mappings (mappings == "" ? "" : ",") "\n    {\"host_ip\": \"" ip "\", \"container_port\": " \
            (f[2] + 0) ", \"host_port\": " (f[1] + 0) ", \"range\": 1, \"protocol\": \"" proto "\"}"
    }
    close(PORTSFILE)
    close(PORTLIST)
    print "{"
    print "  \"container_id\": " quote(CONTAINER_ID) ","
    print "  \"container_name\": " quote(NAME) ","
    print "  \"networks\": {"
    # The MAC address follows from the IP address, as Docker's do: the same after a restart, so that
    # neighbours' ARP caches (the host's, the other services') stay right.
    split(ADDRESS, octet, ".")
    mac = sprintf("02:c2:%02x:%02x:%02x:%02x", octet[1], octet[2], octet[3], octet[4])
    print "    " quote(NETWORK_NAME) ": {\"interface_name\": \"eth0\", \"static_ips\": [\"" ADDRESS "\"], \"static_mac\": \"" mac "\","
    # ALIASES: the names the other services reach this one by, separated by spaces.
    n = split(ALIASES, alias, " ")
    names = ""
    for (i = 1; i <= n; i++) names = names (i > 1 ? ", " : "") quote(alias[i])
    print "      \"aliases\": [" names "]}"
    print "  },"
    print "  \"network_info\": {"
    print "    " quote(NETWORK_NAME) ": {"
    print "      \"name\": " quote(NETWORK_NAME) ", \"id\": " quote(NETWORK_ID) ", \"driver\": \"bridge\","
    print "      \"network_interface\": " quote(BRIDGE) ","
    print "      \"subnets\": [{\"subnet\": \"" SUBNET_PREFIX ".0/24\", \"gateway\": \"" SUBNET_PREFIX ".1\"}],"
    print "      \"ipv6_enabled\": false, \"internal\": false, \"dns_enabled\": true,"
    print "      \"ipam_options\": {\"driver\": \"host-local\"}"
    print "    }"
    print "  },"
    print "  \"port_mappings\": [" mappings (mappings == "" ? "" : "\n  ") "]"
    print "}"
}
