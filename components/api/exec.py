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
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ..errors import DockyardError, InvalidInput
from ..sessions import dataplane
from .context import Context
from .errors import body
from .middleware import audit_request, request_id
from .principal import principal
from .workspace import SessionWorkspace, blocking, iterate, limits, open_workspace, streamed

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
    **streamed("text/event-stream"),
)
async def run(
    session: SessionWorkspace,
    given: Annotated[ExecBody, Body(examples=[EXAMPLE])],
    request: Request,
) -> StreamingResponse:
    """As the agent user in /workspace: events `start`, `stdout`, `stderr`, `exit`."""
    wanted = _request(given)
    workspace = await open_workspace(session)
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
async def send_signal(session: SessionWorkspace, exec_id: str, given: SignalBody) -> Signalled:
    name = dataplane.signal_name(given.signal)
    workspace = await open_workspace(session)
    await session.ctx.call(workspace.signal, exec_id, name)
    return Signalled(execId=exec_id, signal=name)


class InteractiveBody(ExecBody):
    tty: bool = Field(default=True, description="Run in a terminal (stdout only).")
    rows: int = Field(default=24, ge=1, le=1000)
    cols: int = Field(default=80, ge=1, le=1000)


# WebSocket close codes: 4000 + the HTTP status the same failure answers elsewhere.
def _close_code(error: DockyardError) -> int:
    return 4000 + int(error.http_status) if 400 <= error.http_status < 600 else 4500


@router.websocket("/api/sessions/{session_id}/exec/ws")
async def interactive(websocket: WebSocket, session_id: str, tenant: str | None = None) -> None:
    """A command with live stdin, signals and, by default, a terminal. The first message
    (JSON) is the exec body plus ``tty``, ``rows``, ``cols``. Then: binary messages are
    stdin; text messages are JSON ``{"eof": true}``, ``{"resize": [rows, cols]}``,
    ``{"signal": "INT"}``. The server sends ``{"event": "start", "execId"}``, binary
    output messages (first byte 1 stdout, 2 stderr, then the bytes), and
    ``{"event": "exit", …}`` before it closes; a failure is ``{"event": "error", "error"}``
    and close code 4000 + the HTTP status (4404 for another tenant's session)."""
    ctx: Context = websocket.app.state.context
    state = websocket.scope.setdefault("dockyard", {})
    state.update(request_id=request_id(), actor="anonymous", session=session_id)
    started = time.monotonic()
    code = 1000
    await websocket.accept()
    try:
        caller = await principal(websocket)  # type: ignore[arg-type]  # headers, app, scope
        scope = caller.scope(tenant)
        state["tenant"] = scope
        first = InteractiveBody.model_validate(await websocket.receive_json())
        wanted = _request(first)
        workspace = await ctx.call(ctx.sessions.workspace, session_id, scope, limits(ctx))
        wanted = wanted.checked(workspace.limits)
        events = workspace.exec(
            wanted, interactive=True, tty=first.tty, size=(first.rows, first.cols)
        )
        start = await blocking(next, events)
        if not isinstance(start, dataplane.Started):
            raise DockyardError("the exec did not start")
        await websocket.send_json({"event": "start", "execId": start.exec_id})
        await _session(websocket, workspace, start, events, wanted.stdin)
    except WebSocketDisconnect:
        code = 1001
    except DockyardError as error:
        code = _close_code(error)
        await _fail(websocket, error, code)
    except ValueError as error:  # the first message is not an exec body
        invalid = InvalidInput("exec", [f"request: {str(error).splitlines()[0]}"])
        code = _close_code(invalid)
        await _fail(websocket, invalid, code)
    finally:
        await audit_request(
            ctx,
            websocket.scope,
            ok=code in (1000, 1001),
            detail=f"WEBSOCKET {websocket.scope['path']} {code}",
            started=started,
        )


async def _session(
    websocket: WebSocket,
    workspace: dataplane.Workspace,
    start: dataplane.Started,
    events: Any,
    stdin: bytes | None,
) -> None:
    controls = start.controls
    if controls is None:
        raise DockyardError("the exec has no input side")
    outcome: dict[str, BaseException] = {}

    async def guarded(task: Any, group: Any) -> None:
        # An error ends the session for both tasks; it is re-raised once they are done.
        try:
            await task()
        except (DockyardError, WebSocketDisconnect) as error:
            outcome.setdefault("error", error)
        except OSError:
            pass  # the command's side went away: its exit (or the close) follows
        group.cancel_scope.cancel()

    async def pump() -> None:
        async for event in iterate(events):
            if isinstance(event, dataplane.Output):
                await websocket.send_bytes(
                    bytes([1 if event.stream == "stdout" else 2]) + event.data
                )
            elif isinstance(event, dataplane.Exit):
                await websocket.send_json(
                    {
                        "event": "exit",
                        "code": event.code,
                        "timedOut": event.timed_out,
                        "truncated": event.truncated,
                        "durationMs": event.duration_ms,
                    }
                )

    async def feed() -> None:
        if stdin:  # the body's stdin first, then the messages'
            await blocking(controls.write, stdin)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes") is not None:
                await blocking(controls.write, message["bytes"])
                continue
            try:
                order = json.loads(message.get("text") or "")
            except ValueError:
                order = None
            if not isinstance(order, dict):
                raise InvalidInput(
                    "exec", ["message: not a JSON object (allowed: eof, resize, signal)"]
                )
            if order.get("eof"):
                await blocking(controls.close_stdin)
            if "resize" in order:
                size = order["resize"]
                if not (
                    isinstance(size, list)
                    and len(size) == 2
                    and all(isinstance(n, int) for n in size)
                ):
                    raise InvalidInput("exec", ["resize: not [rows, cols]"])
                await blocking(controls.resize, size[0], size[1])
            if "signal" in order:
                await blocking(workspace.signal, start.exec_id, str(order["signal"]))

    async with anyio.create_task_group() as group:
        group.start_soon(guarded, pump, group)
        group.start_soon(guarded, feed, group)
    if "error" in outcome:
        raise outcome["error"]
    await websocket.close(1000)


async def _fail(websocket: WebSocket, error: DockyardError, code: int) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_json({"event": "error", **body(error, websocket.scope)})
        await websocket.close(code)
