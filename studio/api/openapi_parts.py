"""The pieces the OpenAPI document of /api/v1 is built from, shared by
openapi.py and the modules that describe a group of its paths
(openapi_steps.py)."""

from __future__ import annotations


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def answer(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def list_of(name: str) -> dict:
    return {"type": "object", "required": ["object", "data", "has_more"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": ref(name)},
                           "has_more": {"type": "boolean"}}}


ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
    "404": {"$ref": "#/components/responses/NotFound"},
}


def errors_of(*codes: str) -> dict:
    return {code: ERRORS[code] for code in codes}


def param(name: str, where: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


def id_param(name: str) -> dict:
    return param(name, "path", {"type": "integer"}, "Id (another team's id answers 404).")


def op(op_id: str, summary: str, ok: dict, *, params=(), errors=("401", "404"), body=None, ok_code="200",
        description: str = "", more: dict | None = None) -> dict:
    op = {"operationId": op_id, "summary": summary, "parameters": list(params),
          "responses": {ok_code: ok, **errors_of(*errors), **(more or {})}}
    if description:
        op["description"] = description
    if body:
        op["requestBody"] = body
    return op
