"""The distribution stage: what happens to packages once they are built.

Records of builds that let an unchanged image be "up to date" (record), the summaries `--json`
prints (summary), signed apt/dnf/apk repositories (repo), and `update`, which rebuilds what moved in
the registry and publishes it (update).
"""
