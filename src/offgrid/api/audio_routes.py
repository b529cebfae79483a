"""``POST /v1/audio/transcriptions``: OpenAI's transcription route, relayed to the engine of
a model with an audio projector (llama-server answers it through its multimodal path).

The body is a form (multipart), not JSON, so this route is FastAPI's rather than the
relay's hot path: it reads the ``model`` field, checks the size, and passes the body on to
the engine as it came, through the same scheduler, queue and metrics as every other model
request. Without python-multipart: the stdlib's MIME parser reads the form.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy

from fastapi import APIRouter, Request, Response

from offgrid.api.deps import RuntimeDep
from offgrid.api.dialects import FORM_ROUTES
from offgrid.api.relay.request import read_body
from offgrid.errors import BadRequestError

__all__ = ["form_fields", "router"]

router = APIRouter()

PATH = "/v1/audio/transcriptions"
assert PATH in FORM_ROUTES


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The text fields of a ``multipart/form-data`` body (files left out)."""
    if not content_type.startswith("multipart/form-data"):
        raise BadRequestError("Send the audio as multipart/form-data, with 'file' and 'model'.")
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode(errors="replace") if isinstance(payload, bytes) else ""
        elif isinstance(name, str):
            fields.setdefault(f"{name}:file", part.get_filename() or "")
    return fields


_FORM = {  # the body in the OpenAPI schema (read by hand below, so FastAPI cannot tell it)
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "model"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                        "language": {"type": "string"},
                        "prompt": {"type": "string"},
                        "response_format": {"type": "string"},
                        "temperature": {"type": "number"},
                    },
                }
            }
        },
    }
}


@router.post(PATH, openapi_extra=_FORM)
async def transcriptions(request: Request, runtime: RuntimeDep) -> Response:
    """Transcribe an audio file with a model that has an audio projector."""
    body = await read_body(request.scope, request.receive, runtime.settings.max_request_bytes)
    content_type = request.headers.get("content-type", "")
    fields = await asyncio.to_thread(form_fields, content_type, body)  # up to 32 MiB of MIME
    if not fields.get("model"):
        raise BadRequestError("'model' is required: the id of an installed model.", param="model")
    if "file:file" not in fields:
        raise BadRequestError("'file' is required: the audio to transcribe.", param="file")
    answer = await runtime.relay.whole(
        PATH, body, runtime.resolve(fields["model"]), content_type=content_type
    )
    return Response(answer.body, answer.status, media_type="application/json")
