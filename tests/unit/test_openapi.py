"""api.openapi: a valid OpenAPI 3.1 document that names every route of make_app, and no other.

Both directions: a route added without documenting it fails, and so does a documented path
that no route serves.  The schemas come from the code they describe (model.CIM_PROPERTIES,
policy.PROPERTIES, the service's method tables); these tests pin that they cannot drift.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from openbits import __version__
from openbits.api import openapi
from openbits.api.app import make_app
from openbits.config import Config
from openbits.errors import HResult, api_http_status
from openbits.model import CIM_PROPERTIES, WRITABLE_PROPERTIES, Job, JobFile
from openbits.policy import PROPERTIES as POLICY_PROPERTIES
from openbits.policy import READ_ONLY as POLICY_READ_ONLY
from openbits.service import Service
from openbits.service.methods import METHODS as SERVICE_METHODS
from openbits.store.sqlite import SqliteStore

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture
def app(tmp_path: Path) -> web.Application:
    config = Config(state_dir=str(tmp_path))
    return make_app(Service(SqliteStore(config.db_path), config))


def _routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route, lower-case, ``{job}`` as ``{JobId}``, ``{method}``
    expanded into every method name the service answers."""
    names = list(SERVICE_METHODS)
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # added by add_get
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = str(info.get("formatter") or info.get("path"))
        path = re.sub(r"\{job(:[^}]*)?\}", "{JobId}", path)
        if "{method}" in path:
            routes |= {(route.method.lower(), path.replace("{method}", n).lower()) for n in names}
        else:
            routes.add((route.method.lower(), path.lower()))
    return routes


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (verb, path.lower()) for path, item in doc["paths"].items() for verb in item if verb in HTTP_METHODS
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document()
    validate(doc)
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["version"] == __version__
    json.dumps(doc)  # plain JSON data


def test_every_route_is_documented_and_every_documented_path_is_a_route(app: web.Application) -> None:
    routes = _routes(app)
    documented = _documented(openapi.document())
    assert routes - documented == set(), "routes without a path in api/openapi/"
    assert documented - routes == set(), "documented paths that no route serves"


def test_one_path_per_instance_method_with_its_wmi_name() -> None:
    paths = openapi.document()["paths"]
    assert set(openapi.METHODS) == set(SERVICE_METHODS), "describe every method in METHODS"
    for key, method in SERVICE_METHODS.items():
        name = openapi.METHODS[key].name
        assert name.lower() == key
        assert name == method.name
        assert list(openapi.METHODS[key].params) == list(method.params), "the same parameters"
        assert f"{openapi.CLASS}/{{JobId}}/{name}" in paths
    assert f"{openapi.CLASS}/{{JobId}}/AddFileWithRanges" in paths


def test_operation_ids_are_unique() -> None:
    ids = [
        op["operationId"]
        for item in openapi.document()["paths"].values()
        for verb, op in item.items()
        if verb in HTTP_METHODS
    ]
    assert len(ids) == len(set(ids))


def test_the_instance_schema_has_every_cim_property_with_its_type() -> None:
    doc = openapi.document()
    job = doc["components"]["schemas"]["BitsClientJob"]
    assert list(job["properties"]) == list(CIM_PROPERTIES)
    assert set(openapi.JOB_PROPERTIES) == set(CIM_PROPERTIES), "a schema for every CIM property"
    assert set(job["required"]) == set(CIM_PROPERTIES) - {"Files", "CustomHeaders"}  # (write-only: omitted)
    assert job["properties"]["State"]["enum"] == list(range(9))
    assert job["properties"]["BytesTotal"]["maximum"] == 2**64 - 1
    patch = doc["paths"][f"{openapi.CLASS}/{{JobId}}"]["patch"]["requestBody"]["content"]
    assert set(patch["application/json"]["schema"]["properties"]) == set(WRITABLE_PROPERTIES)


def test_the_policy_schemas_have_every_property() -> None:
    doc = openapi.document()
    policy = doc["components"]["schemas"]["BitsServicePolicy"]
    assert set(policy["properties"]) == set(POLICY_PROPERTIES) | set(POLICY_READ_ONLY)
    assert {kind for _, kind in POLICY_PROPERTIES.values()} <= set(openapi.POLICY_KINDS)
    changes = doc["paths"][f"{openapi.BASE}/BitsServicePolicy"]["patch"]["requestBody"]["content"]
    assert set(changes["application/json"]["schema"]["properties"]) == set(POLICY_PROPERTIES)


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of ``schema`` that resolves the document's ``#/components/...`` refs."""
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def test_real_instances_and_the_error_body_conform() -> None:
    doc = openapi.document()
    job = Job(job_id="{6F1B5A4C-0D4E-4B8A-9F3E-2A1C5D6E7F80}", owner="alice", owner_uid=1000)
    job.files.append(JobFile("http://h/a", "/tmp/a"))
    job.files.append(JobFile("http://u:p@h/b", "/tmp/b", 10, 10, True, ranges=[(0, 10)]))
    instance = _validator(doc, {"$ref": "#/components/schemas/BitsClientJob"})
    instance.validate(job.to_cim())
    instance.validate(job.to_cim(files=False))
    error = _validator(doc, {"$ref": "#/components/schemas/Error"})
    code = HResult.BG_E_INVALID_STATE
    error.validate({"ReturnValue": int(code), "ErrorCode": code.hex, "Name": code.name, "Message": "m"})
    with pytest.raises(jsonschema.ValidationError):
        error.validate({"ReturnValue": int(code), "ErrorCode": code.hex})


def test_the_documented_statuses_are_those_api_http_status_answers() -> None:
    statuses = {str(api_http_status(int(h))) for h in HResult if int(h) & 0x80000000}
    assert statuses <= set(openapi.STATUSES)
    assert set(openapi.STATUSES) == {"400", "403", "404", "409", "413", "500", "507"}


async def test_served_at_get_openapi_json(app: web.Application) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == openapi.document()
