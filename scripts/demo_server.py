"""A small static file server for `make run`'s demonstration (Range and ETag support)."""

from __future__ import annotations

import sys

from aiohttp import web


def main() -> None:
    root, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    app.router.add_static("/", root)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
