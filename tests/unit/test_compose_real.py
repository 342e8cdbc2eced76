"""Compose as people write it (issue 24): what real compose files do that a package cannot do the same
way, each decided as docs/compose.md says: several networks, `~` in a bind mount, Docker's socket and
the labels of proxies that read it, the project's own directories mounted read-write, and files that
are not text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ctr2svc.errors import UsageError

from .test_compose import load, service, write


def refusal(path: Path) -> str:
    with pytest.raises(UsageError) as caught:
        load(path)
    return caught.value.one_line()


# --- networks -------------------------------------------------------------------------------------


def test_two_networks_on_one_service_are_refused(tmp_path: Path) -> None:
    text = "services:\n  api:\n    image: a:1\n    networks: [front, back]\nnetworks:\n  front:\n  back:\n"
    message = refusal(write(tmp_path / "p", text))
    assert "networks: the services are on 2 networks (back: api; front: api)" in message
    assert "put every service on one network" in message


def test_separate_networks_are_refused_not_merged(tmp_path: Path) -> None:
    """The front end and the database on networks of their own: compose keeps them apart, one network
    would not, so the file is refused rather than silently merged."""
    text = """
services:
  web: {image: web:1, networks: [front]}
  api: {image: api:1, networks: [front, back]}
  db: {image: db:1, networks: [back]}
networks:
  front:
  back:
"""
    message = refusal(write(tmp_path / "p", text))
    assert "(back: api, db; front: api, web)" in message
    # A service left on compose's default network is on a network of its own too.
    text = "services:\n  a: {image: a:1, networks: [net]}\n  b: {image: b:1}\nnetworks:\n  net:\n"
    assert "(default: b; net: a)" in refusal(write(tmp_path / "q", text))


def test_one_named_network_for_all_is_the_applications(tmp_path: Path) -> None:
    text = """
services:
  a: {image: a:1, networks: {shared: {aliases: [alpha]}}}
  b: {image: b:1, networks: [shared]}
  h: {image: h:1, network_mode: host}
networks:
  shared:
  unused:
"""
    app = load(write(tmp_path / "p", text))
    assert service(app, "a").aliases == ("a", "alpha") and service(app, "h").network == "host"


# --- bind mounts ----------------------------------------------------------------------------------


def test_a_bind_from_the_home_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compose expands ~ on the build machine: /root/x there means nothing on the host it is installed on."""
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    text = "services:\n  mc:\n    image: mc:1\n    volumes: ['~/minecraft_data:/data']\n"
    message = refusal(write(tmp_path / "p", text))
    assert f"services.mc.volumes[0]: {home}/minecraft_data is in the home directory" in message
    assert "write the host path the service should mount" in message


def test_the_docker_socket_is_refused_and_proxy_labels_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "services:\n  ui:\n    image: portainer:2\n"
    text += "    volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n"
    message = refusal(write(tmp_path / "p", text))
    assert "/var/run/docker.sock: there is no Docker daemon on a ctr2svc host" in message
    assert "drop the mount" in message
    text = "services:\n  go:\n    image: go:1\n    labels: ['traefik.enable=true', 'com.example.x=1']\n"
    app = load(write(tmp_path / "q", text))
    assert "traefik.enable=true" in service(app, "go").labels
    assert "the traefik labels are kept as annotations" in capsys.readouterr().err


def test_a_source_tree_is_the_packages_data_mounted_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """
services:
  web:
    image: php:8
    volumes:
      - ./app:/var/www/html
      - ./conf:/etc/app
      - ./static:/srv/static:ro
      - ./settings.yml:/app/settings.yml
"""
    path = write(
        tmp_path / "p",
        text,
        app__index_dot_php="<?php echo 1;\n",
        conf__a_dot_ini="[a]\n",
        static__s_dot_css="a{}\n",
        settings_dot_yml="x: 1\n",
    )
    opts = service(load(path), "web")
    files = {f.dest: f for f in opts.files}
    # The application's own files: replaced on upgrade, read-only, and said so.
    tree = files["/usr/share/p-web/files/app/index.php"]
    assert not tree.config and "/usr/share/p-web/files/app:/var/www/html:ro" in opts.volumes
    assert "mounted read-only (add :ro to say so)" in capsys.readouterr().err
    # Configuration: the admin's conffiles, as the file mounts them.
    assert files["/etc/p-web/files/conf/a.ini"].config and "/etc/p-web/files/conf:/etc/app:rw" in opts.volumes
    assert (
        files["/etc/p-web/files/static/s.css"].config
        and "/etc/p-web/files/static:/srv/static:ro" in opts.volumes
    )
    settings = files["/etc/p-web/files/settings.yml"]
    assert settings.config and settings.target == "/app/settings.yml" and not settings.read_only


def test_a_missing_or_empty_directory_is_a_data_directory(tmp_path: Path) -> None:
    text = "services:\n  db:\n    image: db:1\n    volumes: ['./data:/var/lib/db', './empty:/cache']\n"
    path = write(tmp_path / "p", text)
    (tmp_path / "p" / "empty").mkdir()
    opts = service(load(path), "db")
    assert opts.volume_paths == ("/var/lib/db", "/cache") and opts.files == () and opts.volumes == ()


def test_a_binary_file_is_packaged_as_it_is(tmp_path: Path) -> None:
    text = "services:\n  web:\n    image: ng:1\n"
    text += "    volumes: ['./site:/usr/share/nginx/html', './logo.png:/logo.png:ro']\n"
    path = write(tmp_path / "p", text, site__index_dot_html="<p>hi</p>\n")
    icon = b"\x00\x00\x01\x00\xff\xfe"
    (tmp_path / "p" / "site" / "favicon.ico").write_bytes(icon)
    (tmp_path / "p" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    files = {f.dest: f for f in service(load(path), "web").files}
    assert files["/usr/share/p-web/files/site/favicon.ico"].content == icon
    assert files["/usr/share/p-web/files/site/index.html"].content == "<p>hi</p>\n"
    assert files["/etc/p-web/files/logo.png"].content == b"\x89PNG\r\n\x1a\n\xff"


def test_every_refusal_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = """
services:
  proxy:
    image: traefik:3
    hostname: proxy
    volumes: ['/var/run/docker.sock:/var/run/docker.sock']
    networks: [front]
  app:
    build:
      context: .
      ssh: [default]
    networks: [front, back]
networks:
  front:
  back:
"""
    message = refusal(write(tmp_path / "p", text, Dockerfile="FROM scratch\n"))
    assert ": 4 problems: " in message, message
    for part in ("services.proxy.hostname", "docker.sock", "services.app.build.ssh", "on 2 networks"):
        assert part in message
    assert message.count("(hint: ") == 5


def test_a_volume_inside_a_read_only_source_tree_needs_its_mount_point(tmp_path: Path) -> None:
    """compose's node_modules idiom: an anonymous volume over part of a bound source tree. Packaged
    read-only, the tree has no node_modules for runc to mount on: refused with the way out."""
    text = "services:\n  web:\n    image: node:20\n    volumes: ['./src:/project', '/project/node_modules']\n"
    path = write(tmp_path / "p", text, src__index_dot_js="1;\n")
    message = refusal(path)
    assert "/project/node_modules is mounted inside /project" in message and "drop the bind mount" in message
    (tmp_path / "p" / "src" / "node_modules").mkdir()
    (tmp_path / "p" / "src" / "node_modules" / "x.js").write_text("2;\n")
    assert service(load(path), "web").volume_paths == ("/project/node_modules",)


def test_every_refusal_of_one_service_is_reported_at_once(tmp_path: Path) -> None:
    """Not only one per service: each key of a service is checked whatever the others hold."""
    text = """
services:
  a:
    image: a:1
    restart: on-failure:3
    stop_grace_period: 2h
    ports: ['80']
    volumes: ['/var/run/docker.sock:/x', './missing:/m:ro']
    healthcheck: {test: [CMD-SHELL, a, b]}
"""
    message = refusal(write(tmp_path / "p", text))
    assert ": 6 problems: " in message, message
    for key in ("restart", "stop_grace_period", "ports[0]", "volumes[0]", "volumes[1]", "healthcheck.test"):
        assert f"services.a.{key}" in message
