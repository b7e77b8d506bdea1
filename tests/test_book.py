"""Browser test of the SmoothGen book: build it, serve it locally, open every page in Chromium.

The book must work offline: every page is checked for requests to hosts other than the local
server, images that do not load, math that MathJax did not render, HTTP errors and console
errors; the home page's navigation must list every chapter of ``book/_toc.yml``.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``) and the Python package
``playwright`` (its own browser download is not used: Chromium is launched from
``/usr/bin/chromium`` or ``$SMOOTHGEN_CHROMIUM``). Screenshots of the home page and of one
experiment page go to ``$SMOOTHGEN_ARTIFACTS/book/`` (default ``artifacts/book/`` in the repository).
The book is built by the test (``jupyter-book build book/ -W -n --keep-going`` into a temporary
folder) unless ``$SMOOTHGEN_BOOK_HTML`` points at a fresh build.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import yaml

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
THEORY_PAGES = ("classifiers", "generators", "adaptive")
EXPERIMENT_PAGE = "cifar10"
SCREENSHOT_PAGES = ("intro", EXPERIMENT_PAGE)
LOCAL_HOST = "127.0.0.1"


@dataclass
class PageReport:
    """What one page did in the browser."""

    name: str
    requests: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    math_elements: int = 0
    unrendered_math: int = 0
    mathjax_containers: int = 0
    mathjax_errors: int = 0
    raw_delimiters: bool = False
    nav_links: list[str] = field(default_factory=list)


def toc_files(toc_path: Path) -> list[str]:
    """Every file named in a jb-book ``_toc.yml`` (root first), without suffix."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return [str(Path(f).with_suffix("")) for f in files]


def jupyter_book_executable() -> str:
    """The ``jupyter-book`` script of the running interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("jupyter-book")
    found = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if found is None:
        pytest.fail("jupyter-book is not installed: pip install -e '.[book]'")
    return found


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML root of a book built with warnings as errors.

    Builds into a temporary folder, unless ``$SMOOTHGEN_BOOK_HTML`` names the HTML folder of a
    build made with the same command just before (``make book`` then ``make test`` saves a build).
    """
    prebuilt = os.environ.get("SMOOTHGEN_BOOK_HTML")
    if prebuilt:
        html = Path(prebuilt)
        assert (html / "index.html").exists(), f"SMOOTHGEN_BOOK_HTML={prebuilt} holds no built book"
        return html
    out = tmp_path_factory.mktemp("book")
    cmd = [jupyter_book_executable(), "build", str(BOOK), "-W", "-n", "--keep-going",
           "--path-output", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    print(f"book build: {time.perf_counter() - start:.1f} s")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"book build failed (exit {proc.returncode}):\n{log[-6000:]}"
    assert "WARNING" not in log, f"book build printed warnings:\n{log[-6000:]}"
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def base_url(html_dir: Path) -> Iterator[str]:
    """Serve the built HTML on 127.0.0.1 (a free port) from a background thread."""
    handler = functools.partial(QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer((LOCAL_HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOCAL_HOST}:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static file handler that does not log every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        return


def chromium_path() -> str:
    """The system Chromium; fail (not skip) with the install command when it is missing."""
    path = os.environ.get("SMOOTHGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium not found: install it with "
                    "`apt-get update && apt-get install -y chromium` (or set SMOOTHGEN_CHROMIUM)")
    return path


def artifacts_dir() -> Path:
    """Where screenshots go: ``$SMOOTHGEN_ARTIFACTS`` or ``artifacts/book`` in the repository."""
    root = Path(os.environ.get("SMOOTHGEN_ARTIFACTS", REPO / "artifacts"))
    out = root / "book"
    out.mkdir(parents=True, exist_ok=True)
    return out


PAGE_PROBE = """
async () => {
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    await window.MathJax.startup.promise;
  }
  await document.fonts.ready;
  const math = Array.from(document.querySelectorAll('.math'));
  const main = document.querySelector('main') || document.body;
  const clone = main.cloneNode(true);
  clone.querySelectorAll('pre, code, mjx-container, script').forEach(e => e.remove());
  const text = clone.textContent;
  return {
    broken_images: Array.from(document.images)
      .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.currentSrc || i.src),
    math_elements: math.length,
    unrendered_math: math.filter(e => !e.querySelector('mjx-container')).length,
    mathjax_containers: document.querySelectorAll('mjx-container').length,
    mathjax_errors: document.querySelectorAll('mjx-merror').length,
    raw_delimiters: ['\\\\(', '\\\\)', '\\\\[', '\\\\]', '$$'].some(d => text.includes(d)),
    nav_links: Array.from(document.querySelectorAll('nav.bd-docs-nav a.reference.internal'))
      .map(a => a.getAttribute('href')),
  };
}
"""
REFRESH = re.compile(r'<meta http-equiv="refresh" content="[^"]*url=([^"]+)"', re.IGNORECASE)


def redirect_target(html_file: Path) -> str | None:
    """The page that ``html_file`` redirects to with a meta refresh (index.html does), if any."""
    found = REFRESH.search(html_file.read_text(encoding="utf-8"))
    return found.group(1) if found else None


def visit(browser: Browser, url: str, name: str, redirect: str | None) -> PageReport:
    """Open one page in a fresh browser context, let MathJax finish, record what the checks need."""
    report = PageReport(name=name)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("request", lambda r: report.requests.append(r.url))
    page.on("requestfailed", lambda r: report.failed_requests.append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and report.http_errors.append(f"{r.status} {r.url}"))
    page.on("console", lambda m: m.type == "error" and report.console_errors.append(m.text))
    page.on("pageerror", lambda e: report.console_errors.append(f"uncaught: {e}"))
    page.goto(url, wait_until="load")
    if redirect:
        page.wait_for_url(f"**/{redirect}", wait_until="load")
    probe = page.evaluate(PAGE_PROBE)
    page.wait_for_timeout(300)  # late requests (the favicon) and their console messages
    for key, value in probe.items():
        setattr(report, key, value)
    if name in SCREENSHOT_PAGES:
        shot = artifacts_dir() / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    context.close()
    return report


def site_pages(html_dir: Path) -> list[str]:
    """Every top-level HTML page of the build, without suffix (chapters, index, search, ...)."""
    return sorted(p.stem for p in html_dir.glob("*.html"))


@pytest.fixture(scope="module")
def reports(html_dir: Path, base_url: str) -> dict[str, PageReport]:
    """Open every page of the built book in headless Chromium once; keep what each page did."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install playwright "
                    "(only the package; the system Chromium is used)")
    executable = chromium_path()
    for name in SCREENSHOT_PAGES:  # no stale screenshot may pass for this run's
        (artifacts_dir() / f"{name}.png").unlink(missing_ok=True)
    start = time.perf_counter()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        found = {name: visit(browser, f"{base_url}{name}.html", name,
                             redirect_target(html_dir / f"{name}.html"))
                 for name in site_pages(html_dir)}
        browser.close()
    print(f"pages checked ({len(found)}, {time.perf_counter() - start:.1f} s): {', '.join(found)}")
    return found


def test_every_chapter_is_built(html_dir: Path) -> None:
    missing = [f for f in toc_files(BOOK / "_toc.yml") if not (html_dir / f"{f}.html").exists()]
    assert not missing, f"chapters in _toc.yml without a built page: {missing}"


def test_no_request_leaves_the_book(reports: dict[str, PageReport]) -> None:
    outside = {name: [u for u in r.requests
                      if urlsplit(u).scheme not in ("data", "blob", "about")
                      and urlsplit(u).hostname != LOCAL_HOST]
               for name, r in reports.items()}
    outside = {name: urls for name, urls in outside.items() if urls}
    assert not outside, f"pages requested resources outside the book: {outside}"
    assert all(r.requests for r in reports.values()), "some page recorded no request at all"


def test_every_request_succeeds(reports: dict[str, PageReport]) -> None:
    bad = {n: r.http_errors + r.failed_requests for n, r in reports.items()
           if r.http_errors or r.failed_requests}
    assert not bad, f"requests that failed: {bad}"


def test_every_image_loads(reports: dict[str, PageReport]) -> None:
    broken = {n: r.broken_images for n, r in reports.items() if r.broken_images}
    assert not broken, f"images with naturalWidth 0: {broken}"


def test_math_is_rendered(reports: dict[str, PageReport]) -> None:
    for name in THEORY_PAGES:
        assert reports[name].math_elements > 20, f"{name}: expected a page full of math"
    problems = {n: {"math elements": r.math_elements, "unrendered": r.unrendered_math,
                    "mjx-containers": r.mathjax_containers, "TeX errors": r.mathjax_errors,
                    "raw delimiters in text": r.raw_delimiters}
                for n, r in reports.items()
                if r.unrendered_math or r.mathjax_errors or r.raw_delimiters
                or r.mathjax_containers < r.math_elements}
    assert not problems, f"math not rendered by MathJax: {problems}"


def test_no_console_errors(reports: dict[str, PageReport]) -> None:
    errors = {n: r.console_errors for n, r in reports.items() if r.console_errors}
    assert not errors, f"console errors: {errors}"


def test_navigation_lists_every_chapter(reports: dict[str, PageReport]) -> None:
    root, *chapters = toc_files(BOOK / "_toc.yml")
    linked = {Path(href.split("#")[0]).stem for href in reports[root].nav_links}
    missing = [c for c in chapters if c not in linked]
    assert not missing, f"chapters missing from the navigation of {root}.html: {missing}"


def test_screenshots_are_saved(reports: dict[str, PageReport]) -> None:
    for name in SCREENSHOT_PAGES:
        shot = artifacts_dir() / f"{name}.png"
        assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {name} at {shot}"
