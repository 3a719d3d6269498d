"""nginx as a reverse proxy in front of one upstream, configured as README's "Upload server"
section says (BITS_POST passes through; bodies streamed, not buffered).

The fixed nginx of tests/support/nginx.py serves files; this one only proxies ``/`` to
``http://127.0.0.1:UPSTREAM`` (the path unchanged), over a ServerProcess.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.nginx import find_nginx
from tests.support.process import HOST, ServerProcess, free_ports


def proxy_config(workdir: Path, port: int, upstream_port: int) -> str:
    tmp = workdir / "tmp"
    user = "user root root;" if os.geteuid() == 0 else ""
    return f"""\
{user}
worker_processes 1;
pid "{workdir / "nginx.pid"}";
error_log "{workdir / "error.log"}" info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path "{tmp / "client_body"}";
    proxy_temp_path "{tmp / "proxy"}";
    fastcgi_temp_path "{tmp / "fastcgi"}";
    uwsgi_temp_path "{tmp / "uwsgi"}";
    scgi_temp_path "{tmp / "scgi"}";
    access_log "{workdir / "access.log"}";
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://{HOST}:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_request_buffering off;
            proxy_buffering off;
            client_max_body_size 64m;
        }}
    }}
}}
"""


class NginxProxy:
    """An nginx reverse proxy on a free port of 127.0.0.1."""

    def __init__(self, workdir: Path, upstream_port: int) -> None:
        binary = find_nginx()
        if binary is None:
            raise RuntimeError("nginx not found")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        self.port = free_ports(1)[0]
        conf = workdir / "nginx.conf"
        conf.write_text(proxy_config(workdir, self.port, upstream_port))
        argv = [binary, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
        self.process = ServerProcess(
            "nginx", argv, [self.port], workdir / "nginx.log", extra_logs=[workdir / "error.log"]
        )

    def __enter__(self) -> NginxProxy:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()
