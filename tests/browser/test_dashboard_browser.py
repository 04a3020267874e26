"""The dashboard in headless Chromium over seeded sessions (no engine): log in with the
keyboard, a tenant's table, an admin's tenant filter, the create form's inline problems,
the detail page and the destroy confirmation; labels, keyboard reach and contrast on
every page. Screenshots for docs/dashboard.md when DOCKYARD_SCREENSHOTS is set."""

from __future__ import annotations

import re
import time
from typing import Any

from dockyard.sessions import audit
from dockyard.sessions.stats_history import Sample, StatsHistory
from tests.browser.conftest import Served, log_in, seed, shoot

# Every text node's colour against the first opaque background behind it (WCAG 2 ratio).
CONTRAST = """() => {
  const lum = (c) => {
    const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map((v) => {
      v = Number(v) / 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const opaque = (c) => !/rgba\\(.*,\\s*0\\)$/.test(c) && c !== "transparent";
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = getComputedStyle(el).backgroundColor;
      if (opaque(c)) { return c; }
    }
    return "rgb(255, 255, 255)";
  };
  const low = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el.getClientRects().length) { continue; }
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || el.closest(".skip")) { continue; }
    const [a, b] = [lum(style.color), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) { low.push(`${node.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)}`); }
  }
  return low;
}"""

# Form controls without a label a screen reader reads.
UNLABELLED = """() => Array.from(document.querySelectorAll("input, select, textarea, button"))
  .filter((el) => el.type !== "hidden")
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
                  && !(el.tagName === "BUTTON" && el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 80))"""


def accessible(page: Any) -> None:
    assert page.evaluate(UNLABELLED) == [], page.url
    assert page.evaluate(CONTRAST) == [], page.url
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").count() == 1, page.url


def test_log_in_by_keyboard_and_see_only_your_tenant(page: Any, served: Served) -> None:
    page.goto(served.url + "/")
    page.wait_for_url(served.url + "/login")
    accessible(page)
    shoot(page, "login")
    # The key field has focus; typing and Enter log in (no mouse).
    page.keyboard.type(served.keys["acme"])
    page.keyboard.press("Enter")
    page.wait_for_url(served.url + "/")
    rows = page.locator("tbody#rows tr[data-session]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.session)")) == ["a1", "a2"]
    assert page.get_by_text("b1", exact=True).count() == 0
    accessible(page)
    shoot(page, "sessions")
    # The first Tab reaches the skip link, which moves focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    # Sorting by age descending keeps the tenant's rows; the rows read again after an
    # event of the stream stay scoped and sorted.
    page.get_by_role("link", name="Session", exact=True).click()
    page.wait_for_url("**order=desc**")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.session)") == ["a2", "a1"]
    log = served.sessions.where.audit_log
    with (
        page.expect_response(lambda r: "/rows?" in r.url and r.status == 200),
        audit.recorded(log, "pause", session="a1", tenant="acme"),
    ):
        pass
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.session)") == ["a2", "a1"]


def test_an_admin_sees_every_tenant_and_filters(page: Any, served: Served) -> None:
    log_in(page, served.url, served.keys["admin"])
    rows = page.locator("tbody#rows tr[data-session]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.session)")) == ["a1", "a2", "b1"]
    page.get_by_label("Tenant").fill("blue")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**tenant=blue**")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.session)") == ["b1"]
    shoot(page, "sessions-admin")


def test_create_form_shows_each_problem_beside_its_field(page: Any, served: Served) -> None:
    log_in(page, served.url, served.keys["acme"])
    page.get_by_role("link", name="New session").click()
    accessible(page)
    page.get_by_label("Session id").fill("web1")
    page.get_by_label("Project directory (cwd)").fill("srv/app")
    page.get_by_label("Ports").fill("3000, 70000")
    shoot(page, "new")
    page.get_by_role("button", name="Create session").click()
    ports = page.locator("#e-ports")
    assert "request.container.ports[1]: 70000 is not allowed" in ports.inner_text()
    assert "integer container port 1-65535" in ports.inner_text()
    # All at once: the cwd's problem is beside its own field in the same answer.
    assert "request.cwd: 'srv/app' is not allowed" in page.locator("#e-cwd").inner_text()
    assert page.get_by_label("Ports").get_attribute("aria-invalid") == "true"
    # What was typed stays in the form; the problem summary has focus.
    assert page.get_by_label("Ports").input_value() == "3000, 70000"
    assert page.evaluate("document.activeElement.id") == "problems"
    accessible(page)
    shoot(page, "new-invalid")
    assert [r.session_id for r in served.sessions.registry.all("acme")] == ["a1", "a2"]


def test_detail_and_the_destroy_confirmation_name_the_session(page: Any, served: Served) -> None:
    log_in(page, served.url, served.keys["acme"])
    page.get_by_role("link", name="a2", exact=True).click()
    page.wait_for_url(served.url + "/sessions/a2")
    assert page.locator("h1").inner_text().startswith("Session a2")
    assert "dockyard attach a2 --tenant acme" in page.get_by_label("Command").input_value()
    assert '"sessionId": "a2"' in page.get_by_label("Manifest JSON").inner_text()
    preview = page.get_by_role("link", name="preview http://127.0.0.1:41000/")
    assert preview.get_attribute("href") == "http://127.0.0.1:41000/"
    accessible(page)
    shoot(page, "detail")
    page.get_by_role("link", name="Destroy…").click()
    page.wait_for_url(served.url + "/sessions/a2/destroy")
    assert "Destroy session a2?" in page.locator("h1").inner_text()
    assert page.get_by_role("button", name="Destroy a2").is_visible()
    accessible(page)
    shoot(page, "destroy-confirm")
    page.get_by_role("link", name="Cancel").click()
    page.wait_for_url(served.url + "/sessions/a2")


def test_the_table_renders_500_sessions(page: Any, served: Served) -> None:
    """500 sessions (records and manifests as the service layer writes them): the page
    lists them all, sortable; the time to render is printed for docs/performance.md."""
    for n in range(500):
        seed(served.sessions, "load", f"s{n:03d}")
    log_in(page, served.url, served.keys["admin"])
    started = time.perf_counter()
    page.goto(served.url + "/?tenant=load&sort=session&order=desc")
    rendered = time.perf_counter() - started
    rows = page.locator("tbody#rows tr[data-session]")
    assert rows.count() == 500
    assert rows.first.get_attribute("data-session") == "s499"
    timing = page.evaluate(
        "(() => { const n = performance.getEntriesByType('navigation')[0];"
        " return [n.responseStart - n.requestStart, n.domContentLoadedEventEnd - n.startTime]; })()"
    )
    print(
        f"dashboard table, 500 sessions: goto {rendered:.3f} s, server "
        f"{timing[0] / 1000:.3f} s, DOMContentLoaded {timing[1] / 1000:.3f} s"
    )


def test_memory_and_disk_bars_in_the_table_and_the_last_hour_on_the_detail(
    page: Any, served: Served
) -> None:
    """The server's rings (fed by its sampler; here directly) give the table its meters
    and the detail page its chart over the last hour."""
    history = StatsHistory()
    served.app.state.stats_history = history
    now, gib = time.time(), 1024**3
    for minutes, memory in ((50, 1), (20, 2), (1, 3)):
        history.record(
            "acme", "a1", Sample(now - 60 * minutes, memory * gib, 4 * gib, gib, 8 * gib, 5.0)
        )
    history.record("blue", "b1", Sample(now, gib, 2 * gib, gib, 2 * gib, 1.0))
    log_in(page, served.url, served.keys["acme"])
    memory = page.get_by_role("meter", name="Memory of a1: 3.0 GiB of 4.0 GiB (75%)")
    assert memory.get_attribute("value") == str(3 * gib)
    assert memory.get_attribute("max") == str(4 * gib)
    assert page.get_by_role("meter", name="Disk of a1: 1.0 GiB of 8.0 GiB (12%)").count() == 1
    assert page.locator('tr[data-session="a2"]').get_by_text("no sample").count() == 2
    assert page.get_by_role("meter").count() == 2  # never blue's
    shoot(page, "sessions-meters")
    page.get_by_role("link", name="a1", exact=True).click()
    chart = page.get_by_role("img", name=re.compile("^The last hour"))
    assert chart.count() == 1
    caption = page.locator("#chart-caption").inner_text()
    assert "Memory: now 75%, lowest 25%, highest 75% of its limit" in caption
    points = page.locator("polyline.memory").get_attribute("points") or ""
    xs = [float(p.split(",")[0]) for p in points.split()]
    assert len(xs) == 3
    assert xs == sorted(xs)
    assert 90 < xs[0] < 110  # 50 minutes ago: a sixth of 600 from the left
    accessible(page)
    shoot(page, "detail-chart")
