# shellcheck shell=sh
# The command line: what the unit, the OpenRC script and the package scripts call.

derive_paths
# Where new volumes are seeded from: the package's rootfs, or with shared layers the mounted root,
# once prepare has mounted it.
if [ -z "$LOWER" ]; then
    SEED_ROOT="$IMAGE_DIR/rootfs"
else
    SEED_ROOT=
fi

case "${1:-}" in
    prepare) prepare ;;
    start) start ;;
    nspawn) nspawn_start ;;
    run) run ;;
    run-once) run_once ;;
    stop) stop ;;
    cleanup) after_stop ;;
    init-data)
        # The package's post-install: a user namespace's range is allocated, the image's files shifted
        # (the service's own copy: shared layers are mounted idmapped at each start instead).
        userns_setup allocate
        shift_rootfs always
        init_data
        ;;
    status) status ;;
    wait-ready) wait_ready "$2" "${3:-90}" ;;
    health) health ;;
    exec)
        shift
        nspawn_exec "$@"
        ;;
    wait-healthy) wait_healthy "${2:-90}" ;;
    upgrade-restart)
        shift
        upgrade_restart "$@"
        ;;
    roll-back) roll_back "$2" ;;
    *)
        echo "usage: $0 prepare|start|run|run-once|stop|cleanup|init-data|status|wait-ready PORT [SECONDS]|health|wait-healthy [SECONDS]|upgrade-restart VERSION COMMAND...|roll-back VERSION|nspawn|exec COMMAND..." >&2
        exit 2
        ;;
esac
