# Part of ctr2svc's service helper (the same in every package; the helper passes what differs).
# Writes the runtime config.json: the packaged one (as ctr2svc writes it, one array item a line) with
# the admin's settings from /etc/NAME (ENVFILE, ARGSFILE, MOUNTSFILE) applied. awk, because it is on every host (Debian's mawk,
# busybox awk on Alpine) and JSON tools are not.
#   env:    KEY=VALUE lines; they replace the image's value of KEY or add it.
#   args:   one argument a line; if any, they replace the image's command (the entrypoint stays).
#   mounts: "SOURCE DESTINATION [OPTIONS]" lines; OPTIONS is ro (default) or rw.
#   network: host or private (read by the helper, which passes NETWORK).
#   userns: host or auto (read by the helper, which passes the range as USERNS_START, USERNS_SIZE).
# Lines starting with # and empty lines are skipped everywhere.

function fail(file, n, msg) {
    printf "%s: %s line %d: %s\n", NAME, file, n, msg > "/dev/stderr"
    failed = 1
    exit 1
}

# Character by character: awks disagree on what "\\\\" means in a gsub replacement.
function quote(s,    out, i, c) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\" || c == "\"") out = out "\\" c
        else if (c == "\t") out = out "\\t"
        else out = out c
    }
    return "\"" out "\""
}

function readlines(file, kind,    line, n, count) {
    count = 0
    while ((getline line < file) > 0) {
        n++
        sub(/\r$/, "", line)
        if (line ~ /^[ \t]*(#|$)/) continue
        if (kind == "env") {
            if (line !~ /^[^=# \t][^= \t]*=/) fail(file, n, "not KEY=VALUE")
            envkey[substr(line, 1, index(line, "=") - 1)] = 1
            env[++envn] = line
        } else if (kind == "args") {
            args[++argn] = line
        } else {
            split("", f)
            nf = split(line, f, /[ \t]+/)
            if (nf < 2 || nf > 3 || f[1] !~ /^\// || f[2] !~ /^\//) fail(file, n, "not SOURCE DESTINATION [ro|rw]")
            if (nf == 3 && f[3] != "ro" && f[3] != "rw") fail(file, n, "options must be ro or rw")
            msrc[++mountn] = f[1]; mdst[mountn] = f[2]; mopt[mountn] = (nf == 3 ? f[3] : "ro")
        }
    }
    close(file)
}

function item(line) {
    sub(/^ +/, "", line)
    sub(/,$/, "", line)
    return line
}

function emit(indent, n, list,    i) {
    for (i = 1; i <= n; i++) print indent list[i] (i < n ? "," : "")
}

BEGIN {
    readlines(ENVFILE, "env")
    readlines(ARGSFILE, "args")
    readlines(MOUNTSFILE, "mounts")
}

# "args" and "env" of the process: collect the image's items, write the merged list.
/^    "(args|env)": \[/ {
    key = ($0 ~ /"args"/) ? "args" : "env"
    n = 0
    split("", items)
    if ($0 !~ /\],?$/) {
        while ((getline line) > 0 && line !~ /^    \],?$/) items[++n] = item(line)
        end = line
    } else {
        end = ($0 ~ /,$/) ? "    ]," : "    ]"
    }
    m = 0
    split("", out)
    if (key == "env") {
        # HOSTNAME first, as Docker sets it (the host's name: host networking); the image's or the
        # admin's own HOSTNAME replaces it.
        has_hostname = ("HOSTNAME" in envkey)
        for (i = 1; i <= n; i++) if (items[i] ~ /^"HOSTNAME=/) has_hostname = 1
        if (!has_hostname && HOSTNAME != "") out[++m] = quote("HOSTNAME=" HOSTNAME)
        for (i = 1; i <= n; i++) {
            k = items[i]; sub(/^"/, "", k); sub(/=.*/, "", k)
            if (!(k in envkey)) out[++m] = items[i]
        }
        for (i = 1; i <= envn; i++) out[++m] = quote(env[i])
    } else {
        for (i = 1; i <= n; i++) if (i <= ENTRYPOINT_N || argn == 0) out[++m] = items[i]
        for (i = 1; i <= argn; i++) out[++m] = quote(args[i])
    }
    print "    \"" key "\": ["
    emit("      ", m, out)
    print end
    next
}

# An absolute cgroup path worked out at start (crun), instead of the packaged relative one.
CGROUPS_PATH != "" && /^    "cgroupsPath": / {
    print "    \"cgroupsPath\": " quote(CGROUPS_PATH) (($0 ~ /,$/) ? "," : "")
    next
}

# The network ($CONFIG_DIR/network): the host's, or the private namespace at NETNS_PATH with a UTS
# namespace of its own whose name is HOSTNAME. The packaged file has one or the other; both ways are
# rewritten here. ctr2svc writes "hostname" right after "ociVersion", never last: no comma to mend.
# nspawn (NSPAWN set) registers with machined only a container with a UTS namespace: with the host's
# network it gets one too, named as the host (HOSTNAME is the host's name then).
/^  "hostname": / { next }
/^  "ociVersion": / {
    print
    if (NETWORK == "private" || NSPAWN) print "  \"hostname\": " quote(HOSTNAME) ","
    next
}
/^    "namespaces": \[$/ {
    print
    n = 0
    split("", body)
    while ((getline line) > 0 && line !~ /^    \],?$/) {
        if (line ~ /^      \{$/) { body[++n] = ""; dropped[n] = 0; continue }
        if (line ~ /^      \},?$/) continue
        if (line ~ /^        "type": "(network|uts|user)"/) dropped[n] = 1
        body[n] = body[n] line "\n"
    }
    end = line
    m = 0
    split("", kept)
    for (i = 1; i <= n; i++) if (!dropped[i]) kept[++m] = body[i]
    if (NETWORK == "private") kept[++m] = "        \"type\": \"network\",\n        \"path\": " quote(NETNS_PATH) "\n"
    if (NETWORK == "private" || NSPAWN) kept[++m] = "        \"type\": \"uts\"\n"
    if (USERNS_START != "") kept[++m] = "        \"type\": \"user\"\n"
    for (i = 1; i <= m; i++) {
        print "      {"
        printf "%s", kept[i]
        print "      }" (i < m ? "," : "")
    }
    print end
    next
}

# A user namespace (USERNS_START): the container's ids 0 to USERNS_SIZE-1 are the host's from
# USERNS_START. ctr2svc writes "linux" with "resources" first: the mappings go before it, with commas.
USERNS_START != "" && /^  "linux": \{$/ {
    print
    print "    \"uidMappings\": [{\"containerID\": 0, \"hostID\": " USERNS_START ", \"size\": " USERNS_SIZE "}],"
    print "    \"gidMappings\": [{\"containerID\": 0, \"hostID\": " USERNS_START ", \"size\": " USERNS_SIZE "}],"
    next
}
/^    "(uid|gid)Mappings": / { next }

# In a user namespace that does not own the network namespace (the host's, or the one `ip netns add`
# made), the kernel refuses a new sysfs: the host's /sys is bound read-only instead, as rootless runc does.
USERNS_START != "" && /^      "destination": "\/sys",$/ { sysmount = 1 }
sysmount && /^      "type": "sysfs",$/ { print "      \"type\": \"bind\","; next }
sysmount && /^      "source": "sysfs",$/ { print "      \"source\": \"/sys\","; next }
sysmount && /^      "options": \[$/ { print; print "        \"rbind\","; sysmount = 0; next }
sysmount && /^    },?$/ { sysmount = 0 }

# The mounts: the admin's binds go after the package's last one (the only "    }" without a comma).
/^  "mounts": \[/ { inmounts = 1 }
inmounts && /^    }$/ && mountn {
    print "    },"
    for (i = 1; i <= mountn; i++) {
        print "    {"
        print "      \"destination\": " quote(mdst[i]) ","
        print "      \"type\": \"bind\","
        print "      \"source\": " quote(msrc[i]) ","
        # nspawn takes neither ro nor rw: a read-only one is in readonlyPaths (below).
        if (NSPAWN) print "      \"options\": [\"rbind\"]"
        else print "      \"options\": [\"rbind\", \"" mopt[i] "\"]"
        print "    }" (i < mountn ? "," : "")
    }
    next
}
inmounts && /^  \],?$/ { inmounts = 0 }

# nspawn (NSPAWN set): the admin's read-only mounts are made read-only as readonlyPaths, which the
# packaged config always has for it (ctr2svc/service/nspawn.py).
NSPAWN && /^    "readonlyPaths": \[/ {
    n = 0
    split("", ro)
    for (i = 1; i <= mountn; i++) if (mopt[i] == "ro") ro[++n] = "      " quote(mdst[i])
    if (!n) { print; next }
    if ($0 ~ /\]/) {
        print "    \"readonlyPaths\": ["
        emit("", n, ro)
        print "    ]" (($0 ~ /,$/) ? "," : "")
    } else {
        print
        for (i = 1; i <= n; i++) print ro[i] ","
    }
    next
}
{ print }
