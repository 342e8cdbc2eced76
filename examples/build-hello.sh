#!/bin/sh
# Regenerates examples/hello: an OCI image layout (tag 1.0) holding a busybox httpd that serves
# "Hello from ctr2svc" on port 8080 as the non-root user www (uid/gid 101).
#
# Usage: sudo examples/build-hello.sh [OUTPUT_DIR]      (default: examples/hello next to this script)
# Needs: root (files owned by uid 101 go into the layer), umoci, busybox-static (/bin/busybox).
# SOURCE_DATE_EPOCH (default below) fixes every timestamp: with the same busybox binary, reruns give
# byte-identical blobs.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/hello}
busybox=${BUSYBOX:-/bin/busybox}
tag=1.0
: "${SOURCE_DATE_EPOCH:=1735689600}" # 2025-01-01T00:00:00Z
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

if [ "$(id -u)" != 0 ]; then
    echo "build-hello.sh: run as root (umoci must store uid 101 owners in the layer)" >&2
    exit 1
fi
if ! "$busybox" --list | grep -qx httpd; then
    echo "build-hello.sh: $busybox is not a busybox with httpd (apt-get install busybox-static)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layout=$work/hello
bundle=$work/bundle

umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$bundle"
rootfs=$bundle/rootfs

# --- rootfs -----------------------------------------------------------------------------------
umask 022
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/usr/local/bin" "$rootfs/www" "$rootfs/data" "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
chmod 0755 "$rootfs/bin/busybox"
for applet in sh cat env httpd id kill ls; do
    ln -s busybox "$rootfs/bin/$applet"
done

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
www:x:101:101:www:/www:/bin/sh
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
www:x:101:
EOF

cat >"$rootfs/www/index.html" <<'EOF'
<!DOCTYPE html>
<html><head><title>hello</title></head>
<body><h1>Hello from ctr2svc</h1></body></html>
EOF

cat >"$rootfs/usr/local/bin/entrypoint.sh" <<'EOF'
#!/bin/sh
# busybox httpd has no SIGTERM handler, and PID 1 of a pid namespace ignores signals it does not
# handle: a shell stays PID 1 and turns SIGTERM into a prompt, clean exit.
httpd -f -v -p "${PORT:-8080}" -h /www &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0' TERM INT
wait "$child"
EOF
chmod 0755 "$rootfs/usr/local/bin/entrypoint.sh"

chmod 1777 "$rootfs/tmp"
chown 101:101 "$rootfs/data"

# Layer entries carry mtimes: pin them all (symlinks too, hence -h).
find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# --- image ------------------------------------------------------------------------------------
# History entries carry a time: pin it (a layer without history confuses some tools), and let the
# config change add none.
umoci repack --image "$layout:$tag" \
    --history.created "$created" --history.created_by "examples/build-hello.sh" "$bundle"
umoci config --no-history --image "$layout:$tag" \
    --created "$created" \
    --architecture amd64 --os linux \
    --config.user www \
    --config.entrypoint /usr/local/bin/entrypoint.sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env PORT=8080 \
    --config.exposedports 8080/tcp \
    --config.volume /data \
    --config.stopsignal SIGTERM \
    --config.workingdir /www \
    --config.label org.opencontainers.image.title=hello \
    --config.label "org.opencontainers.image.description=Tiny busybox httpd saying hello, the ctr2svc demo image" \
    --config.label "org.opencontainers.image.version=$tag" \
    --config.label org.opencontainers.image.licenses=GPL-2.0-only
# umoci new/repack left the intermediate manifests and configs behind.
umoci gc --layout "$layout"

rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$layout" "$out"
# Readable by whoever runs ctr2svc on a checkout; no owner from the build box.
chown -R 0:0 "$out"
find "$out" -type d -exec chmod 0755 {} +
find "$out" -type f -exec chmod 0644 {} +
echo "wrote $out (tag $tag): $(jq -r '.manifests[0].digest' "$out/index.json")"
