"""Reading a request body in any accepted encoding into a validated request schema.

- `application/json`: the schema's JSON (parsed with orjson).
- `multipart/form-data`: uploaded files become `images`; other form fields are JSON values or
  plain strings (`method=iwae`, `labels=[3]`).
- `application/x-npy`: the body is the array (`inputs`, or `z` for /decode); the other fields come
  from the query string.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from service.api.codecs import NPY_MEDIA_TYPE
from service.arrays import read_npy
from service.errors import InvalidInput, UnsupportedMediaType

SchemaT = TypeVar("SchemaT", bound=BaseModel)
IMAGES_FIELD = "images"


def _form_value(raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


async def read_body(
    request: Request, schema: type[SchemaT], array_field: str = "inputs"
) -> SchemaT:
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    data: dict[str, Any]
    if media in ("application/json", ""):
        body = await request.body()
        if not body:
            raise InvalidInput("request body is empty; send a JSON object", field="body")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
        if not isinstance(parsed, dict):
            raise InvalidInput("body must be a JSON object", field="body")
        data = parsed
    elif media == "multipart/form-data":
        data = {}
        images: list[bytes] = []
        try:
            form = await request.form(max_files=4096, max_fields=64)
        except (MultiPartException, HTTPException) as exc:  # malformed or over the limits
            reason = exc.message if isinstance(exc, MultiPartException) else exc.detail
            raise InvalidInput(f"multipart body cannot be read: {reason}", field="body") from None
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != IMAGES_FIELD:
                        raise InvalidInput(
                            f"files go in the '{IMAGES_FIELD}' field, not {key!r}", field=key
                        )
                    images.append(await value.read())
                else:
                    data[key] = _form_value(value)
        finally:
            await form.close()
        if images:
            data["images"] = images
    elif media == NPY_MEDIA_TYPE:
        data = {k: _form_value(v) for k, v in request.query_params.items()}
        data[array_field] = read_npy(await request.body(), array_field)
    else:
        raise UnsupportedMediaType(
            f"content type {media!r} is not accepted; use application/json, multipart/form-data "
            f"or {NPY_MEDIA_TYPE}",
            field="Content-Type",
        )
    return schema.model_validate(data)


def openapi_body(schema: type[BaseModel], array_field: str = "inputs") -> dict[str, Any]:
    """`openapi_extra` for routes that parse the body themselves, so the docs still show it."""
    ref = {"$ref": f"#/components/schemas/{schema.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "images": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                        },
                        "additionalProperties": True,
                    }
                },
                NPY_MEDIA_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": f"The `{array_field}` array as a .npy file; other "
                        "fields as query parameters.",
                    }
                },
            },
        }
    }
