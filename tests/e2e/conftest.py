"""Browser end-to-end tests: Debian's Chromium, driven by Playwright, against live servers.

Each test gets the web (`asgi:web`) and the gateway (`asgi:gateway`) served as `make
run` serves them, on loopback ports, in front of a live backend simulator with the
demo world loaded, and a fresh headless Chromium with an empty profile. Playwright
never downloads a browser: it drives the system's `/usr/bin/chromium` (Debian's
`chromium` package; `.ci/run` installs it). Where there is none the tests are
skipped, with the reason in the skip and a line at the end of the run.

`Browser.look(name)` runs axe-core (vendored, `vendor/axe-core`) in the page, in
light and in dark (`prefers-color-scheme`), and writes a screenshot of each to
`screenshots/<name>-light.png` and `-dark.png`; `Browser.assert_accessible()` fails
on any serious or critical violation seen, and `Browser.assert_fits()` on a table
that has to be scrolled sideways to be read in the 1280-pixel window (a column,
or a button, out of sight).

Timeouts are generous and every wait is on a condition: the suite must pass beside a
CPU hog (`make test-under-load`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

HERE = Path(__file__).resolve().parent
CHROMIUM = Path(os.environ.get("TESSERACT_E2E_CHROMIUM") or "/usr/bin/chromium")
#: No network of its own (updates, sync, QUIC), no GPU, a fresh profile per test.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE_VERSION = "4.14.1"
AXE_JS = HERE / "vendor" / "axe-core" / "axe.min.js"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
SCREENSHOTS = HERE / "screenshots"
#: Every browser wait (navigation, a selector, an expectation), in milliseconds.
TIMEOUT_MS = int(float(os.environ.get("TESSERACT_E2E_TIMEOUT_S") or 120) * 1000)
#: The impacts that fail a page.
BLOCKING_IMPACTS = ("serious", "critical")

_COUNT = pytest.StashKey[int]()
_REASON = pytest.StashKey["str | None"]()


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (install Debian's package: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


def _needs_chromium(item: pytest.Item) -> bool:
    """A test of this folder that opens the browser (through one of its fixtures)."""
    in_here = HERE in Path(str(item.path)).resolve().parents
    return in_here and bool({"browser", "chromium"} & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if _needs_chromium(item)]
    reason = skip_reason() if ours else None
    config.stash[_COUNT], config.stash[_REASON] = len(ours), reason
    for item in ours if reason else ():
        item.add_marker(pytest.mark.skip(reason=f"browser tests skipped: {reason}"))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    count = config.stash.get(_COUNT, 0)
    if not count:
        return
    reason = config.stash.get(_REASON, None)
    if reason:
        terminalreporter.write_sep(
            "=", f"browser tests SKIPPED ({count}): {reason}", yellow=True, bold=True
        )
    else:
        terminalreporter.write_line(
            f"browser tests: {count} collected, run in {CHROMIUM}; "
            f"screenshots in {SCREENSHOTS.relative_to(HERE.parent.parent)}/"
        )


# --------------------------------------------------------------------------- servers

T = TypeVar("T")


def in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` (database work) in a thread of its own.

    Playwright's sync API keeps an event loop running in the test's thread, where
    Django refuses the ORM; the live servers see what is committed, so a thread is
    as good. Its connection is closed after, or the test database cannot be dropped.
    """
    from django.db import connections

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class Site:
    web_url: str
    gateway_url: str
    simulator_url: str


@pytest.fixture
def site(transactional_db, settings, monkeypatch) -> Iterator[Site]:
    """The web and the gateway as two servers, the simulator, the demo world."""
    from backends.demo import demo_world_load
    from backends.simulator import create_app
    from backends.world import demo_world
    from billing import metering
    from routing.gateway.app import GatewayApp
    from tesseract_web import asgi
    from tests.gateway.conftest import TIME_SCALE, live_maps_clear
    from tests.servers import serve

    # A gateway app of its own: the process-wide one may serve another test server's
    # loop, and its HTTP and Redis clients cannot cross loops.
    monkeypatch.setattr(asgi, "gateway_http", GatewayApp())
    monkeypatch.setattr(metering, "STREAM", f"test:usage:{uuid.uuid4().hex}")
    # The servers' threads must not keep connections open past the test.
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    spec = demo_world()
    live_maps_clear()
    with contextlib.ExitStack() as stack:
        simulator_url = stack.enter_context(
            serve(create_app(spec, time_scale=TIME_SCALE, gateway_region="westeurope"))
        )
        demo_world_load(spec, simulator_url=simulator_url)
        gateway_url = stack.enter_context(serve(asgi.gateway))
        web_url = stack.enter_context(serve(asgi.web))
        settings.TESSERACT_WEB_URL, settings.TESSERACT_GATEWAY_URL = web_url, gateway_url
        yield Site(web_url=web_url, gateway_url=gateway_url, simulator_url=simulator_url)


# --------------------------------------------------------------------------- the browser


@dataclass
class Browser:
    """One page of a fresh Chromium, with the checks every main page gets."""

    page: Any
    site: Site
    violations: list[str] = field(default_factory=list)
    looked_at: list[str] = field(default_factory=list)
    #: pages with a scrolling box wider than the window shows, and by how many pixels
    sideways: list[str] = field(default_factory=list)

    def visit(self, path: str) -> Any:
        response = self.page.goto(self.site.web_url + path, wait_until="load")
        assert response is not None, f"GET {path}: no response"
        assert response.ok, f"GET {path}: {response.status}"
        return response

    def look(self, name: str) -> None:
        """Check accessibility and take a screenshot, in light and in dark."""
        self.page.wait_for_load_state("load")
        for scheme in ("light", "dark"):
            self.page.emulate_media(color_scheme=scheme)
            self.violations.extend(f"{name} ({scheme}): {v}" for v in axe_violations(self.page))
            SCREENSHOTS.mkdir(exist_ok=True)
            self.page.screenshot(path=str(SCREENSHOTS / f"{name}-{scheme}.png"), full_page=True)
        self.page.emulate_media(color_scheme="light")
        hidden = self.page.evaluate(_HIDDEN_SIDEWAYS)
        self.sideways.extend(f"{name}: {box} hides {px} px" for box, px in hidden)
        self.looked_at.append(name)

    def assert_accessible(self) -> None:
        assert self.looked_at, "no page was checked"
        assert not self.violations, "serious or critical accessibility violations:\n" + "\n".join(
            self.violations
        )

    def assert_fits(self) -> None:
        assert self.looked_at, "no page was checked"
        assert not self.sideways, "tables scrolled sideways at 1280 px:\n" + "\n".join(
            self.sideways
        )


#: Each table's scrolling box (`.scroll`) whose content is wider than the box, and the
#: page itself if it is wider than the window: (what it holds, the pixels out of sight).
#: A box that declares itself a sideways-scrolling region (`role="region"`, focusable,
#: labelled: the latency heat-map) is meant to.
_HIDDEN_SIDEWAYS = """() => {
  const boxes = [...document.querySelectorAll('.scroll')]
    .filter(box => box.getAttribute('role') !== 'region')
    .filter(box => box.scrollWidth > box.clientWidth + 1)
    .map(box => [
      (box.querySelector('caption, th') || box).textContent.trim().slice(0, 40),
      box.scrollWidth - box.clientWidth,
    ]);
  const page = document.documentElement;
  if (page.scrollWidth > page.clientWidth + 1)
    boxes.push(['the page', page.scrollWidth - page.clientWidth]);
  return boxes;
}"""


_AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    targets: v.nodes.slice(0, 5).map(n => n.target.join(" ")),
  }));
}"""


def axe_source() -> str:
    source = AXE_JS.read_text(encoding="utf-8")
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == AXE_SHA256, f"{AXE_JS} is not the pinned axe-core {AXE_VERSION}"
    return source


def axe_violations(page: Any) -> list[str]:
    """The page's serious and critical axe-core violations, one line each."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=axe_source())
    found = page.evaluate(_AXE_RUN)
    return [
        f"[{v['impact']}] {v['id']}: {v['help']} at {', '.join(v['targets'])}"
        for v in found
        if v["impact"] in BLOCKING_IMPACTS
    ]


def with_chromium(scenario: Callable[[Any], T]) -> T:
    """Run `scenario(page)` with a page of a fresh headless Chromium (an empty profile).

    In a thread of its own: Playwright's sync API switches greenlets, which leaves
    CPython 3.11's recursion counters of its thread unbalanced (a later `ast.parse`,
    such as pytest's assertion rewriting, then fails with "AST constructor recursion
    depth mismatch"). That thread ends with the browser; the test's thread is untouched.
    """
    import tempfile

    from playwright.sync_api import expect, sync_playwright

    def run() -> T:
        expect.set_options(timeout=TIMEOUT_MS)
        with (
            tempfile.TemporaryDirectory(prefix="tesseract-e2e-") as profile,
            sync_playwright() as pw,
        ):
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 860},
                color_scheme="light",
                timeout=TIMEOUT_MS,
            )
            try:
                context.set_default_timeout(TIMEOUT_MS)
                context.set_default_navigation_timeout(TIMEOUT_MS)
                return scenario(context.pages[0] if context.pages else context.new_page())
            finally:
                context.close()

    return in_thread(run)


@pytest.fixture
def chromium() -> Callable[[Callable[[Any], T]], T]:
    """`chromium(scenario)` runs `scenario(page)` in a fresh Chromium (no servers)."""
    return with_chromium


@pytest.fixture
def browser(site: Site) -> Callable[[Callable[[Browser], None]], Browser]:
    """`browser(scenario)` runs `scenario(Browser)` against the live site, in Chromium."""

    def run(scenario: Callable[[Browser], None]) -> Browser:
        def with_browser(page: Any) -> Browser:
            session = Browser(page=page, site=site)
            scenario(session)
            return session

        return with_chromium(with_browser)

    return run
