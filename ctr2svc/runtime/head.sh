# shellcheck shell=sh
# ctr2svc's service helper: runs one service with runc (or crun). The same program in every package a
# given ctr2svc builds; what differs between services is data, read from service.env beside it (written
# by ctr2svc, shell-quoted values only). The systemd unit calls `prepare`, `start` (detached), `stop` and
# `cleanup`; the OpenRC script `prepare`, `run` (foreground) and `cleanup`. Changes here are lost on
# upgrade. Its parts, one concern each, are ctr2svc/runtime/*.sh in ctr2svc's source.
set -eu

case $0 in
    */*) HELPER_DIR=${0%/*} ;;
    *) HELPER_DIR=. ;;
esac
# shellcheck source=/dev/null # written per package, by ctr2svc (units.service_env)
. "$HELPER_DIR/service.env"
