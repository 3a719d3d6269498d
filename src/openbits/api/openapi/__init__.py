"""The OpenAPI 3.1 document of the HTTP API (SPEC §4, §6), served at ``GET /openapi.json``.

Built as Python data from the code it describes wherever it can: the BitsClientJob
instance from ``model.CIM_PROPERTIES``, PATCH from ``model.WRITABLE_PROPERTIES``,
BitsServicePolicy from ``policy.PROPERTIES``, one path per instance method from the
service's public table ``service.methods.METHODS``.  tests/unit/test_openapi.py checks it against the
routes of ``make_app`` in both directions, and tests/integration/test_api_fuzz.py fuzzes
a live daemon with it.

``schemas`` holds the component schemas and the builders they are written with, ``methods`` the
instance methods' parameters, ``paths`` one builder per group of routes; this module puts them
together.
"""

from __future__ import annotations

import copy
import functools

from openbits import __version__
from openbits.api.openapi.methods import METHODS
from openbits.api.openapi.paths import paths
from openbits.api.openapi.schemas import (
    BASE,
    CLASS,
    ERROR,
    FILE,
    JOB_PROPERTIES,
    POLICY_KINDS,
    RANGE,
    STATUSES,
    Schema,
    job_instance,
    json_content,
    policy_schema,
    query_row,
    ref,
)

__all__ = ["BASE", "CLASS", "JOB_PROPERTIES", "METHODS", "POLICY_KINDS", "STATUSES", "document"]


@functools.cache
def _document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "openbits",
            "version": __version__,
            "description": "The openbits daemon's API, shaped after the BITS WMI provider "
            "(root\\microsoft\\bits): JSON over the daemon's Unix socket, the caller identified "
            "by its peer credentials. Input property and parameter names are matched "
            "case-insensitively; output uses the WMI spelling.",
        },
        "servers": [
            {"url": "http://localhost", "description": "the daemon's Unix socket"},
            {
                "url": "https://127.0.0.1:8765",
                "description": "the TCP listener of `openbits serve --listen 127.0.0.1:8765` (HTTPS "
                "with --tls-cert/--tls-key): every request needs Authorization: Bearer <token> "
                "(else 401), within the token's scope (else 403)",
            },
        ],
        "security": [{}, {"bearer": []}],
        "paths": paths(),
        "components": {
            "schemas": {
                "BitsClientJob": job_instance(),
                "BitsClientFile": FILE,
                "Range": RANGE,
                "QueryRow": query_row(),
                "Error": ERROR,
                "BitsServicePolicy": policy_schema(changes=False),
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from POST /tokens; needed on the TCP listener only "
                    "(the Unix socket knows its caller by SO_PEERCRED)",
                }
            },
            "responses": {
                "401": {
                    "description": "the TCP listener without a valid bearer token (E_ACCESSDENIED; "
                    "the same answer for an unknown, revoked or expired token)",
                    "content": json_content(ref("Error")),
                },
                "429": {
                    "description": "the TCP listener: too many invalid bearer tokens from this "
                    "address; Retry-After says when it looks at a token again (E_ACCESSDENIED)",
                    "content": json_content(ref("Error")),
                },
                **{
                    status: {
                        "description": text,
                        "content": json_content(ref("Error")),
                    }
                    for status, text in STATUSES.items()
                },
            },
        },
    }


def document() -> Schema:
    """The OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
