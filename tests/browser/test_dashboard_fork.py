"""A new session from a snapshot, from the detail page (no engine: the service's fork is
a fake that behaves as :func:`dockyard.sessions.snapshots.fork` does: the session in the
caller's tenant, the snapshot in that session's tenant's namespace, the new session
created in it). The form's CSRF token, the CLI's own message for a bad id beside the
field, tenant scoping and the new session's page as the result."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest

from dockyard.errors import InvalidInput, NotFound
from dockyard.sessions import snapshots as snapshotting
from tests.browser import test_dashboard_detail as detail
from tests.browser.conftest import Served, as_missing, log_in, seed, shoot
from tests.browser.test_dashboard_browser import accessible
from tests.browser.test_dashboard_http import _client, csrf_of
from tests.browser.test_dashboard_http import log_in as http_log_in

engine = detail.engine  # the detail page's fake engine and acme's login, reused
acme = detail.acme

SNAPSHOTS = {("acme", "before-upgrade"), ("blue", "blue-one"), ("acme", "other-a2")}
"""(tenant, name) of the snapshots on the fake engine (the engine fixture lists them too)."""


@pytest.fixture
def forks(served: Served, engine: detail.Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``Sessions.fork`` replaced; each call recorded as (session, as, tenant, snapshot)."""
    sessions, calls = served.sessions, []

    def fork(
        session: str, as_: str, tenant: str | None = None, snapshot: str | None = None, **_: Any
    ) -> dict[str, Any]:
        record = sessions.registry.find(session, tenant)
        calls.append((session, as_, tenant, snapshot))
        snapshotting.validate_name(as_, "as")
        if (record.tenant, snapshot) not in SNAPSHOTS:
            scope = f" of tenant {record.tenant}" if record.tenant else ""
            raise NotFound(f"no snapshot {snapshot!r}{scope} on engine {record.host}")
        seed(sessions, record.tenant, as_)
        return {"sessionId": as_}

    monkeypatch.setattr(sessions, "fork", fork)
    return calls


def test_the_snapshots_list_forks_with_the_token_and_the_clis_message(
    served: Served, forks: list[Any], acme: httpx.Client
) -> None:
    kept = acme.get("/sessions/a1/kept").text
    form = kept.split('id="h-snapshots"', 1)[1].split("</form>", 1)[0]
    assert 'action="/sessions/a1/fork"' in form
    assert 'name="snapshot" value="before-upgrade"' in form
    assert 'name="as"' in form
    assert "New session from this snapshot" in form
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token
    assert token.group(1) == csrf_of(acme, "/sessions/a1")
    asked = {"snapshot": "before-upgrade", "as": "f1"}
    # Without the token (or with a wrong one): refused, nothing called.
    for csrf in ({}, {"csrf": token.group(1)[:-1] + "x"}):
        refused = acme.post("/sessions/a1/fork", data={**asked, **csrf})
        assert refused.status_code == 403
        assert "token is missing or wrong" in refused.text
    assert forks == []
    # A bad id: the CLI's message (the service's fork raises it), beside the field.
    with pytest.raises(InvalidInput) as cli:
        snapshotting.fork(served.sessions, "a1", "Bad Id", "acme", "before-upgrade")
    bad = acme.post("/sessions/a1/fork", data={**asked, "as": "Bad Id", "csrf": token.group(1)})
    assert bad.status_code == 422
    beside = re.search(r'<ul class="field-problems" id="e-as">(.*?)</ul>', bad.text, re.S)
    assert beside, bad.text
    assert [html.unescape(p) for p in re.findall(r"<li>(.*?)</li>", beside.group(1))] == (
        cli.value.problems
    )
    assert 'aria-invalid="true"' in bad.text
    assert 'value="Bad Id"' in bad.text  # the form keeps what was typed
    assert forks == []
    # The new session's page is the result.
    done = acme.post("/sessions/a1/fork", data={**asked, "csrf": token.group(1)})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/sessions/f1"
    assert forks == [("a1", "f1", "acme", "before-upgrade")]
    assert acme.get("/sessions/f1").status_code == 200
    # The form alone, for a page without the script.
    alone = acme.get("/sessions/a1/fork", params={"snapshot": "before-upgrade"})
    assert "New session from snapshot <code>before-upgrade</code> of <code>a1</code>" in alone.text


def test_another_tenants_session_or_snapshot_is_not_found(
    served: Served, forks: list[Any], acme: httpx.Client
) -> None:
    token = csrf_of(acme, "/sessions/a1")
    asked = {"csrf": token, "as": "f2"}
    # Another tenant's session: not found like a missing one, the service is not asked.
    other = acme.post("/sessions/b1/fork?tenant=blue", data={**asked, "snapshot": "blue-one"})
    missing = acme.post("/sessions/nope/fork", data={**asked, "snapshot": "blue-one"})
    assert other.status_code == missing.status_code == 404
    assert as_missing(other.text, "b1") == missing.text
    assert acme.get("/sessions/b1/fork?tenant=blue&snapshot=blue-one").status_code == 404
    assert forks == []
    # Another tenant's snapshot from one's own session: not found like a missing one.
    theirs = acme.post("/sessions/a1/fork", data={**asked, "snapshot": "blue-one"})
    none = acme.post("/sessions/a1/fork", data={**asked, "snapshot": "no-such"})
    assert theirs.status_code == none.status_code == 404
    assert as_missing(theirs.text, "blue-one", "no-such") == none.text
    assert forks == [("a1", "f2", "acme", "blue-one"), ("a1", "f2", "acme", "no-such")]
    assert [r.session_id for r in served.sessions.registry.all()] == ["a1", "a2", "b1"]
    # An admin forks in the tenant it names; the result keeps that tenant.
    with _client(served) as admin:
        http_log_in(admin, served.keys["admin"])
        token = csrf_of(admin, "/")
        done = admin.post(
            "/sessions/b1/fork?tenant=blue",
            data={"csrf": token, "as": "b2", "snapshot": "blue-one"},
        )
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/sessions/b2?tenant=blue"
    assert forks[-1] == ("b1", "b2", "blue", "blue-one")


def test_fork_from_the_browser(page: Any, served: Served, forks: list[Any]) -> None:
    log_in(page, served.url, served.keys["acme"])
    page.goto(served.url + "/sessions/a1")
    # The snapshots' list (loaded after the page): one form per snapshot, each labelled.
    page.get_by_label("New session id from snapshot before-upgrade").fill("Bad Id")
    accessible(page)
    page.get_by_role("button", name="New session from this snapshot (before-upgrade)").click()
    # The form again, the problem beside the field (its description), nothing created.
    field = page.get_by_label("New session id")
    assert field.get_attribute("aria-invalid") == "true"
    assert "as: 'Bad Id' is not allowed" in page.locator("#e-as").inner_text()
    assert forks == []
    accessible(page)
    shoot(page, "fork-problem")
    field.fill("f3")
    page.get_by_role("button", name="New session from this snapshot").click()
    page.wait_for_url(served.url + "/sessions/f3")
    assert page.locator("h1").inner_text().startswith("Session f3")
    assert forks == [("a1", "f3", "acme", "before-upgrade")]
