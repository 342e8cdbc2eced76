"""A compose application written as people write them, for the compose tests (integration and VM).

Three services and a one-shot, from images shaped like the official ones (tests/support/realistic.py):

- web: Debian's nginx, its site file beside the compose file (a bind mount, packaged into /etc), the
  only published port, proxying to the app server by its service name;
- app: a small HTTP app server (busybox httpd and CGI scripts) that counts hits in the store (redis'
  protocol over nc), reads a file secret, runs with a read-only root and a tmpfs, health-checked;
- store: Debian's redis-server with a named volume, health-checked; the app waits for it to be healthy;
- seed: the app's image run once (SETNX) before the app starts (service_completed_successfully).

Interpolation: the registry, the app's tag and the published port come from `.env`. `$`, written as
compose files write it: the app's password (in `.env`), a value with `$$` and the app's health check
(`$${PORT}`, the container's own variable, for its shell).
"""

from __future__ import annotations

from pathlib import Path

from . import realistic
from .images import DEFAULT_PATH, build_image, install_busybox, put_dir, put_file

APP_PORT = 8000
WEB_PORT = 8080
TOKEN = "s3cret-token"  # noqa: S105 - a test secret
# The app's password as `.env` writes it (`$$` is one `$`; a lone `$` at the end stays), and as the
# container gets it.
PASSWORD_IN_DOTENV = "pa$$w0rd$"  # noqa: S105 - a test secret
PASSWORD = "pa$w0rd$"  # noqa: S105 - a test secret
GREETING = "costs $5"

APP_ENTRYPOINT = r"""#!/bin/sh
# The app server: busybox httpd with CGI on $PORT; "seed" sets the counter once, then exits.
set -eu
store() {
    printf '%s\r\nQUIT\r\n' "$1" | nc "$STORE_HOST" "$STORE_PORT" | head -n 1 | tr -d ':+\r'
}
case "${1:-serve}" in
serve)
    echo "app $APP_VERSION serving on port $PORT"
    exec httpd -f -p "$PORT" -h /www
    ;;
seed)
    echo "seeding: $(store 'SETNX hits 100')"
    ;;
*)
    exec "$@"
    ;;
esac
"""

HITS_CGI = r"""#!/bin/sh
n=$(printf 'INCR hits\r\nQUIT\r\n' | nc "$STORE_HOST" "$STORE_PORT" | head -n 1 | tr -d ':\r')
printf 'Content-Type: text/plain\r\n\r\nhits %s from app %s\n' "$n" "$APP_VERSION"
"""

READER_CGI = r"""#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\ntoken %s\n' "$(cat /run/secrets/app_token)"
"""

NGINX_SITE = f"""server {{
    listen 80;
    location / {{
        proxy_pass http://app:{APP_PORT};
    }}
}}
"""


def app_image(layout: Path, tag: str, version: str) -> str:
    """The app server, as an OCI layout tag (oci:LAYOUT:TAG)."""

    def populate(root: Path) -> None:
        applets = ("cat", "echo", "head", "httpd", "nc", "printf", "sleep", "tr", "wget", "nslookup")
        install_busybox(root, symlinks=applets)
        put_dir(root, "tmp", mode=0o1777)
        put_dir(root, "etc")
        put_file(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        put_file(root, "etc/group", "root:x:0:\n")
        put_file(root, "usr/local/bin/app", APP_ENTRYPOINT, mode=0o755)
        put_file(root, "www/index.html", f"app {version}\n")
        put_file(root, "www/health", "ok\n")
        put_file(root, "www/cgi-bin/hits", HITS_CGI, mode=0o755)
        put_file(root, "www/cgi-bin/token", READER_CGI, mode=0o755)

    return build_image(
        layout,
        tag,
        populate,
        entrypoint=["/usr/local/bin/app"],
        cmd=["serve"],
        env={"PATH": DEFAULT_PATH, "PORT": str(APP_PORT), "APP_VERSION": version},
        exposed_ports=[f"{APP_PORT}/tcp"],
    )


def compose_file() -> str:
    return f"""# The shop: a web front end, an app server and a store, as a compose file.
services:
  web:
    image: ${{REGISTRY}}/compose/nginx:1.0
    ports:
      - "${{WEB_PORT:-{WEB_PORT}}}:80"
    volumes:
      - ./nginx/app.conf:/etc/nginx/conf.d/app.conf:ro
    depends_on:
      app:
        condition: service_healthy
    restart: unless-stopped
    labels:
      com.example.role: frontend

  app:
    image: ${{REGISTRY}}/compose/app:${{APP_TAG}}
    environment:
      STORE_HOST: store
      STORE_PORT: "{realistic.REDIS_PORT}"
      APP_PASSWORD: ${{APP_PASSWORD}}
      APP_GREETING: "costs $$5"
    secrets:
      - app_token
    read_only: true
    tmpfs:
      - /tmp
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:$${{PORT}}/health"]
      interval: 10s
      timeout: 3s
      retries: 12
    depends_on:
      store:
        condition: service_healthy
      seed:
        condition: service_completed_successfully
    stop_grace_period: 10s

  seed:
    image: ${{REGISTRY}}/compose/app:${{APP_TAG}}
    command: ["seed"]
    environment:
      STORE_HOST: store
      STORE_PORT: "{realistic.REDIS_PORT}"
    depends_on:
      store:
        condition: service_healthy
    restart: "no"

  store:
    image: ${{REGISTRY}}/compose/redis:${{STORE_TAG:-7.0}}
    volumes:
      - storedata:/data
    healthcheck:
      test: ["CMD", "redis-cli", "-p", "{realistic.REDIS_PORT}", "ping"]
      interval: 10s
      retries: 12
    mem_limit: 256m

volumes:
  storedata:

secrets:
  app_token:
    file: ./app_token.txt
"""


def write_project(
    directory: Path, registry: str, *, app_tag: str = "1.0", store_tag: str = "7.0", web_port: int = WEB_PORT
) -> Path:
    """The compose file, its .env, the nginx site and the secret in DIRECTORY; returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nginx").mkdir(exist_ok=True)
    (directory / "nginx" / "app.conf").write_text(NGINX_SITE)
    (directory / "app_token.txt").write_text(TOKEN + "\n")
    env = f"REGISTRY={registry}\nAPP_TAG={app_tag}\nSTORE_TAG={store_tag}\nWEB_PORT={web_port}\n"
    env += f"APP_PASSWORD={PASSWORD_IN_DOTENV}\n"
    (directory / ".env").write_text(env)
    path = directory / "compose.yaml"
    path.write_text(compose_file())
    return path


def push_images(registry: object, work: Path) -> None:
    """The application's images in REGISTRY (a tests.support.registry.Registry): nginx 1.0, app 1.0
    and 2.0, redis 7.0 and 7.1 (the same image under two tags: an upgrade of the store)."""
    from .registry import Registry

    assert isinstance(registry, Registry)
    registry.push(realistic.build("nginx"), "compose/nginx", "1.0")
    for version in ("1.0", "2.0"):
        registry.push(app_image(work / "app", version, version), "compose/app", version)
    redis = realistic.build("redis")
    for tag in ("7.0", "7.1"):
        registry.push(redis, "compose/redis", tag)
