#!/bin/sh
# The conformance probe: run as root inside a running container (`podman exec -u 0`, `runc exec
# --user 0:0`) with CONFORMANCE_PROBE=1 in its environment and CONFORMANCE_MARK=TEXT. Prints one
# "KEY<TAB>VALUE" line per fact about the container as its own processes see it: the init process
# (PID 1) and every other process of the service (the probe's own are skipped), namespaces, mounts,
# limits, the whole file tree but /proc, /sys and /dev, /etc/hosts, resolv.conf, hostname, and whether
# the service's stdout/stderr can be opened by path (what `ln -s /dev/stdout access.log` relies on).
# POSIX sh with GNU coreutils and findutils: every Debian-based image has them.
set -u
tab=$(printf '\t')
out() { printf '%s\t%s\n' "$1" "$2"; }
oneline() { tr '\n' '|' | sed 's/|$//'; }

# Processes of the service: per Name, each status field's distinct values.
for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [ -r "$d/environ" ] || continue
    if tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qx 'CONFORMANCE_PROBE=1'; then
        continue
    fi
    [ -r "$d/status" ] || continue
    name=$(sed -n 's/^Name:\t//p' "$d/status")
    [ -n "$name" ] || continue
    for f in Umask Uid Gid Groups CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp; do
        v=$(sed -n "s/^$f:[$tab ]*//p" "$d/status" | tr -s "$tab " ' ' | sed 's/ $//')
        out "proc.$name.$f" "$v"
    done
    out "proc.$name.count" 1
    [ "$pid" = 1 ] && out init.name "$name"
done | sort | awk -F '\t' '
    $1 ~ /\.count$/ { n[$1]++; next }
    !(($1, $2) in seen) { seen[$1, $2] = 1; if ($1 in v) v[$1] = v[$1] "," $2; else v[$1] = $2 }
    END { for (k in n) print k "\t" n[k]; for (k in v) print k "\t" v[k] }'

out init.cmdline "$(tr '\0' ' ' </proc/1/cmdline | sed 's/ $//')"
out init.cwd "$(readlink /proc/1/cwd)"
tr '\0' '\n' </proc/1/environ | while IFS= read -r kv; do
    [ -n "$kv" ] && out "init.env.${kv%%=*}" "${kv#*=}"
done
out init.oom_score_adj "$(cat /proc/1/oom_score_adj)"

for ns in /proc/1/ns/*; do
    out "ns.${ns##*/}" "$(readlink "$ns")"
done

# /proc/1/limits: "Max open files  1024  524288  files"
sed 1d /proc/1/limits | while IFS= read -r line; do
    name=$(printf '%s' "$line" | cut -c1-26 | sed 's/ *$//')
    values=$(printf '%s' "$line" | cut -c27- | awk '{print $1 " " $2}')
    out "limit.$name" "$values"
done

# Mounts: fstype and the flags that matter, per mount point (sizes, ids and devices left out).
awk '{
    for (i = 7; $i != "-"; i++) ;
    fstype = $(i + 1); split($6, o, ","); flags = ""
    for (j in o) if (o[j] ~ /^(ro|rw|nosuid|nodev|noexec)$/) flags = flags "," o[j]
    split($(i + 3), s, ","); super = ""
    for (j in s) if (s[j] ~ /^(ro|mode=.*)$/) super = super "," s[j]
    print "mount." $5 "\t" fstype " " substr(flags, 2) (super != "" ? " " substr(super, 2) : "")
}' /proc/1/mountinfo | sort -u

# The file tree as the container sees it (owner, mode, type, link target), /proc /sys /dev skipped.
find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o \
    -printf 'file.%p\t%y %U:%G %#m %l\n' 2>/dev/null | sed 's/ $//'
find /dev -mindepth 1 -maxdepth 1 -printf 'dev.%p\t%y %U:%G %#m %l\n' | sed 's/ $//'

out etc.hosts "$(oneline </etc/hosts)"
out etc.resolv.conf "$(grep -v '^#' /etc/resolv.conf 2>/dev/null | oneline)"
for f in /etc/hosts /etc/resolv.conf /etc/hostname; do
    if [ -e "$f" ]; then out "etc.exists.$f" yes; else out "etc.exists.$f" no; fi
    if (: >>"$f") 2>/dev/null; then out "etc.writable.$f" yes; else out "etc.writable.$f" no; fi
done
out etc.hostname "$(cat /etc/hostname 2>/dev/null)"
out uts.hostname "$(cat /proc/sys/kernel/hostname)"

# The service's own stdout/stderr, opened by path as `ln -s /dev/stdout access.log` makes nginx do.
for fd in 1 2; do
    if (echo "${CONFORMANCE_MARK:-probe} fd$fd" >>/proc/1/fd/$fd) 2>/dev/null; then
        out "stdio.open.fd$fd" yes
    else
        out "stdio.open.fd$fd" no
    fi
done

out exec.id "$(id)"
out exec.cwd "$(pwd)"
