"""Run a command in a session: ``POST /api/sessions/{id}/exec`` streams server-sent events
``start`` (the exec id), ``stdout`` / ``stderr`` (pieces of output as they come), ``exit``
(the code; ``timedOut``, ``truncated``), and ``error`` if the stream fails after it began;
a comment line every second of quiet keeps proxies from closing it.

Output is the agent's data: it is never interpreted, only re-encoded (JSON strings, UTF-8
decoded with replacement; ``encoding=base64`` keeps bytes exact)."""

from __future__ import annotations

import base64
import binascii
import codecs
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ..errors import DockyardError, InvalidInput
from ..sessions import dataplane
from .errors import body
from .principal import Caller, Ctx
from .workspace import SessionId, TenantQuery, blocking, iterate, open_workspace

router = APIRouter(tags=["exec"])


class ExecBody(BaseModel):
    command: list[str] = Field(
        min_length=1, description="The program and its arguments (no shell unless you run one)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    cwd: str = Field(default="/workspace", description="Working directory, under /workspace.")
    timeout: float | None = Field(
        default=None,
        description="Seconds before the command's process group is killed (default 600).",
    )
    stdin: str | None = Field(default=None, description="Text given to the command's stdin.")
    stdinBase64: str | None = Field(default=None, description="Bytes for stdin, base64.")
    encoding: Literal["utf-8", "base64"] = Field(
        default="utf-8", description="How output pieces are carried in the events."
    )


class SignalBody(BaseModel):
    signal: str = Field(description=f"One of {', '.join(dataplane.SIGNALS)} (SIG prefix allowed).")


class Signalled(BaseModel):
    execId: str
    signal: str


EXAMPLE = {"command": ["sh", "-c", "echo hi; exit 3"], "timeout": 30}


def _request(given: ExecBody) -> dataplane.ExecRequest:
    data: bytes | None = None
    if given.stdin is not None and given.stdinBase64 is not None:
        raise InvalidInput("exec", ["stdin, stdinBase64: both given (allowed: one of them)"])
    if given.stdin is not None:
        data = given.stdin.encode("utf-8")
    elif given.stdinBase64 is not None:
        try:
            data = base64.b64decode(given.stdinBase64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("exec", ["stdinBase64: not base64"]) from None
    return dataplane.ExecRequest(tuple(given.command), given.env, given.cwd, given.timeout, data)


def sse(event: str, data: dict[str, Any]) -> bytes:
    # json.dumps escapes newlines and control characters: output cannot forge an event.
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(
    first: dataplane.Started,
    events: Any,
    encoding: str,
    scope: Any,
) -> AsyncIterator[bytes]:
    decoders = {
        s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")
    }
    yield sse("start", {"execId": first.exec_id})
    try:
        async for event in iterate(events):
            if isinstance(event, dataplane.Output):
                if encoding == "base64":
                    yield sse(event.stream, {"b64": base64.b64encode(event.data).decode()})
                else:
                    text = decoders[event.stream].decode(event.data)
                    if text:
                        yield sse(event.stream, {"data": text})
            elif isinstance(event, dataplane.Idle):
                yield b": idle\n\n"
            elif isinstance(event, dataplane.Exit):
                if encoding != "base64":
                    for stream, decoder in decoders.items():
                        tail = decoder.decode(b"", final=True)
                        if tail:
                            yield sse(stream, {"data": tail})
                yield sse(
                    "exit",
                    {
                        "code": event.code,
                        "timedOut": event.timed_out,
                        "truncated": event.truncated,
                        "durationMs": event.duration_ms,
                    },
                )
    except DockyardError as error:
        yield sse("error", body(error, scope))


@router.post(
    "/api/sessions/{session_id}/exec",
    summary="Run a command in the session (streamed as server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def run(
    session_id: SessionId,
    given: Annotated[ExecBody, Body(examples=[EXAMPLE])],
    request: Request,
    caller: Caller,
    ctx: Ctx,
    tenant: TenantQuery = None,
) -> StreamingResponse:
    """As the agent user in /workspace: events `start`, `stdout`, `stderr`, `exit`."""
    wanted = _request(given)
    workspace = await open_workspace(request, ctx, caller, session_id, tenant)
    wanted = wanted.checked(workspace.limits)
    events = workspace.exec(wanted)
    # The first event is taken here: a container that is gone or stopped answers 409
    # before the stream begins.
    first = await blocking(next, events)
    return StreamingResponse(
        _events(first, events, given.encoding, request.scope),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/api/sessions/{session_id}/exec/{exec_id}/signal",
    summary="Send a signal to a running command's process group",
)
async def send_signal(
    session_id: SessionId,
    exec_id: str,
    given: SignalBody,
    request: Request,
    caller: Caller,
    ctx: Ctx,
    tenant: TenantQuery = None,
) -> Signalled:
    name = dataplane.signal_name(given.signal)
    workspace = await open_workspace(request, ctx, caller, session_id, tenant)
    await ctx.call(workspace.signal, exec_id, name)
    return Signalled(execId=exec_id, signal=name)
