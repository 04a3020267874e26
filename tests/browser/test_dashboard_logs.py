"""The detail page's live log tail over plain HTTP (no browser, no engine): the route
streams what the data plane's ``logs(tail, follow=True)`` yields, as SSE frames of JSON
lines, for the cookie's tenant only, and closes the engine's stream when the page goes.
The seeded sessions (tests/browser/conftest.py): acme has a1 and a2, blue has b1."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dockyard.api.dashboard import logtail
from tests.browser.conftest import Served, as_missing, shoot
from tests.browser.conftest import log_in as browser_log_in
from tests.browser.test_dashboard_http import _client, log_in


class Output:
    """A container's output as the data plane hands it over: chunks (split anywhere)
    from a blocking iterator, and a stop that ends it from any thread."""

    def __init__(self, *first: bytes) -> None:
        self.chunks: queue.Queue[bytes | Exception | None] = queue.Queue()
        for chunk in first:
            self.chunks.put(chunk)
        self.stopped = threading.Event()

    def read(self) -> Iterator[bytes]:
        while (chunk := self.chunks.get()) is not None:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    def stop(self) -> None:
        self.stopped.set()
        self.chunks.put(None)


class Client:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


class Workspace:
    def __init__(self, output: Output, asked: list[Any]) -> None:
        self.output, self.asked, self.client = output, asked, Client()

    def logs(self, tail: int | None = None, follow: bool = False) -> tuple[Iterator[bytes], Any]:
        self.asked.append(("logs", tail, follow))
        return self.output.read(), self.output.stop


@pytest.fixture
def output(served: Served, monkeypatch: pytest.MonkeyPatch) -> tuple[Output, list[Any]]:
    made = Output(b"one\ntw", b"o\n")
    asked: list[Any] = []
    opened: list[Workspace] = []

    def workspace(session: str, tenant: str | None = None, limits: Any = None) -> Workspace:
        served.sessions.registry.find(session, tenant)  # another tenant's: not found
        asked.append(("workspace", session, tenant))
        opened.append(Workspace(made, asked))
        return opened[-1]

    monkeypatch.setattr(served.sessions, "workspace", workspace)
    asked.append(opened)
    return made, asked


def _messages(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of each SSE message (comments skipped)."""
    event, data = "message", ""
    for line in lines:
        if line == "":
            if data:
                yield event, data
            event, data = "message", ""
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data += line[6:]


def test_the_live_tail_streams_lines_as_text_for_the_cookies_tenant(
    served: Served, output: tuple[Output, list[Any]]
) -> None:
    made, asked = output
    opened = asked.pop()
    with _client(served) as acme:
        assert log_in(acme, served.keys["acme"]).status_code == 303
        page = acme.get("/sessions/a1")
        assert 'data-live="/sessions/a1/logs/live"' in page.text
        with acme.stream("GET", "/sessions/a1/logs/live", timeout=httpx.Timeout(15.0)) as stream:
            assert stream.status_code == 200, stream.read()
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["cache-control"] == "no-cache"
            raw: list[str] = []
            got: list[str] = []

            def lines() -> Iterator[str]:
                for line in stream.iter_lines():
                    raw.append(line)
                    yield line

            messages = _messages(lines())
            while got != ["one", "two"]:
                event, data = next(messages)
                assert event == "message"
                got += json.loads(data)
            # A line split across chunks comes whole; hostile bytes stay inside the JSON.
            made.chunks.put(b"thr")
            made.chunks.put(b"ee\n<script>alert(1)</script>\ndata: forged\r\n\xff\n")
            while len(got) < 6:
                event, data = next(messages)
                got += json.loads(data)
            assert got[2:] == ["three", "<script>alert(1)</script>", "data: forged", "\ufffd"]
            assert "data: forged" not in raw  # never a line of the frame itself
            assert not any(line.startswith("event:") for line in raw)
        # The page went: the engine's stream is stopped and its client closed.
        assert made.stopped.wait(10), "the engine's log stream was not stopped"
        assert opened[0].client.closed.wait(10)
    assert asked == [("workspace", "a1", "acme"), ("logs", logtail.TAIL_LINES, True)]
    deadline = time.monotonic() + 10
    while served.app.state.dashboard_log_streams.open:
        assert time.monotonic() < deadline, "the key's stream slot was not given back"
        time.sleep(0.05)


def _answer(client: httpx.Client, path: str) -> tuple[int, str]:
    """The status, and the body unless it is a stream (which would not end)."""
    with client.stream("GET", path) as answer:
        if answer.status_code == 200:
            return 200, ""
        return answer.status_code, answer.read().decode()


def test_another_tenants_session_is_not_found_and_nothing_is_read(
    served: Served, output: tuple[Output, list[Any]]
) -> None:
    made, asked = output
    asked.pop()
    with _client(served) as acme:
        log_in(acme, served.keys["acme"])
        missing = _answer(acme, "/sessions/nope/logs/live")
        assert missing[0] == 404
        for path in ("/sessions/b1/logs/live", "/sessions/b1/logs/live?tenant=blue"):
            status, text = _answer(acme, path)
            assert status == 404, (path, text)
            assert as_missing(text, "b1") == missing[1]
    assert asked == []
    with _client(served) as stranger:
        assert stranger.get("/sessions/a1/logs/live").status_code == 401
    # An admin reads it in the tenant it names.
    with _client(served) as admin:
        log_in(admin, served.keys["admin"])
        made.chunks.put(None)  # the output ends after the tail
        answer = admin.get("/sessions/b1/logs/live?tenant=blue", timeout=15)
        assert answer.status_code == 200
        messages = list(_messages(iter(answer.text.split("\n"))))
        assert [x for e, d in messages if e == "message" for x in json.loads(d)] == ["one", "two"]
        assert messages[-1][0] == "end"  # the page stops listening
    assert asked == [("workspace", "b1", "blue"), ("logs", logtail.TAIL_LINES, True)]


def test_output_is_cut_into_bounded_lines_and_frames() -> None:
    lines = logtail.Lines()
    assert lines.feed(b"a\r\nb") == ["a"]
    assert lines.feed(b"c\n") == ["bc"]
    long = lines.feed(b"x" * (5 * logtail.MAX_LINE))  # no newline: let out, cut
    assert len(long) == 1
    assert len(long[0]) == logtail.MAX_LINE
    assert long[0].endswith("…")
    assert lines.feed(b"tail") == []
    assert lines.rest() == ["tail"]
    many = [str(n) for n in range(3 * logtail.TAIL_LINES)]
    sent = json.loads(logtail.frame(many)[6:])
    assert sent == many[-logtail.TAIL_LINES :]
    assert b"\n" not in logtail.frame(["a\nb", "c\rd", "\u2028"])[6:-2]


def test_the_page_adds_lines_live_as_text_and_keeps_its_last_200(
    page: Any, served: Served, output: tuple[Output, list[Any]]
) -> None:
    made, asked = output
    asked.pop()
    browser_log_in(page, served.url, served.keys["acme"])
    page.goto(served.url + "/sessions/a1")
    tail = page.get_by_label("Log tail text")
    page.wait_for_function("() => document.getElementById('logs').textContent === 'one\\ntwo\\n'")
    assert page.locator("#logs-mode").inner_text() == "(live)"
    page.evaluate("window.notReloaded = true")
    made.chunks.put(b"<img src=x onerror=window.pwned=1> done\n")
    page.wait_for_function("() => document.getElementById('logs').textContent.includes('done')")
    assert "<img src=x onerror=window.pwned=1> done" in tail.inner_text()
    assert page.locator("#logs img").count() == 0
    assert page.evaluate("window.pwned") is None
    made.chunks.put(b"".join(b"n%d\n" % n for n in range(500)))
    page.wait_for_function("() => document.getElementById('logs').textContent.endsWith('n499\\n')")
    kept = tail.inner_text().splitlines()
    assert len(kept) == logtail.TAIL_LINES
    assert kept[0] == "n300"
    made.chunks.put(None)  # the output ends: the page stops following and says so
    page.get_by_text("the container's output ended").wait_for()
    assert page.evaluate("window.notReloaded") is True
    shoot(page, "detail-log-tail")


def _within(stream: httpx.Response, seconds: float = 10.0) -> Iterator[str]:
    """The stream's lines, failing if it has not ended after ``seconds`` (keep-alives
    would keep a read timeout from ever firing)."""
    deadline = time.monotonic() + seconds
    for line in stream.iter_lines():
        assert time.monotonic() < deadline, f"the stream did not end in {seconds} s"
        yield line


def _ends(stream: httpx.Response) -> list[tuple[str, str]]:
    """Every message until the stream ends."""
    return list(_messages(_within(stream)))


def test_the_stream_ends_with_the_login_and_with_the_server(
    served: Served, output: tuple[Output, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    made, asked = output
    asked.pop()
    monkeypatch.setattr(logtail, "KEEPALIVE_S", 0.2)
    timeout = httpx.Timeout(10.0)
    with _client(served) as blue:
        log_in(blue, served.keys["blue"])
        with blue.stream("GET", "/sessions/b1/logs/live", timeout=timeout) as stream:
            assert stream.status_code == 200
            served.store.revoke(served.keys["blue"].split("_")[1])
            seen = _ends(stream)
        assert [x for e, d in seen for x in json.loads(d)] == ["one", "two"]  # no end event
        assert made.stopped.wait(10)
    with _client(served) as admin:
        log_in(admin, served.keys["admin"])
        made.stopped.clear()
        while not made.chunks.empty():  # the first stream's stop
            made.chunks.get()
        made.chunks.put(b"three\n")
        with admin.stream("GET", "/sessions/a1/logs/live?tenant=acme", timeout=timeout) as stream:
            assert stream.status_code == 200
            messages = _messages(_within(stream))
            assert next(messages) == ("message", '["three"]')
            served.app.state.events.close()  # what the server does when it stops
            assert list(messages) == []  # ended, and not because the output did
        assert made.stopped.wait(10)


def test_a_broken_engine_stream_ends_the_tail_with_what_came(
    served: Served, output: tuple[Output, list[Any]]
) -> None:
    made, asked = output
    asked.pop()
    made.chunks.put(b"half a li")
    made.chunks.put(ConnectionError("the engine went away"))
    with _client(served) as acme:
        log_in(acme, served.keys["acme"])
        with acme.stream("GET", "/sessions/a1/logs/live", timeout=httpx.Timeout(10.0)) as stream:
            assert stream.status_code == 200
            seen = _ends(stream)
    assert [x for e, d in seen if e == "message" for x in json.loads(d)] == [
        "one",
        "two",
        "half a li",
    ]
    assert seen[-1][0] == "end"
