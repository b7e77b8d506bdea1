"""Browser test of the SmoothGen book: build it, serve it locally, open every page in Chromium.

The book must work offline: every page is checked for requests to hosts other than the local
server, images that do not load, math that MathJax did not render, HTTP errors and console
errors; the home page's navigation must list every chapter of ``book/_toc.yml`` (without the
executed notebooks that are not in ``book/notebooks/``: ``book/_ext/study_notebooks.py`` leaves them
out of the build, and the test applies the same filter). Chapters must link to their executed
notebook when it is present and show the "not yet in this build" box otherwise; the model cards
must render as tables with the checkpoints' data.

Needs a Chromium and the Python package ``playwright``: ``$SMOOTHGEN_CHROMIUM``, the Debian package
``chromium`` (``apt-get install -y chromium``, what CI installs), or Playwright's own download
(``playwright install chromium``, for a user without root). Without one the test is skipped with a
line saying so, except under CI (``$CI`` set), where it fails. Screenshots of the home page, of an experiment
chapter and of one executed notebook page (when one is present) go to
``$SMOOTHGEN_ARTIFACTS/book/`` (default ``artifacts/book/`` in the repository).
The book is built by the test (``jupyter-book build book/ -W -n --keep-going`` into a temporary
folder) unless ``$SMOOTHGEN_BOOK_HTML`` points at a fresh build.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import math
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
import pytest
import yaml

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
CHECKPOINTS = REPO / "data" / "checkpoints"
sys.path.insert(0, str(BOOK / "_ext"))
from model_cards import load_card  # noqa: E402 (the book's model-card reader)
from study_notebooks import present_toc  # noqa: E402 (the book's own toc filter)
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
NOTEBOOK_SHOTS = ("notebooks/03_cifar10", "notebooks/04_ptb", "notebooks/01_smoothing_classifiers",
                  "notebooks/02_certificates")
"""Executed notebook pages to screenshot: the first one that exists."""
MODEL_CARDS = {
    "classifiers": ("classifier_cifar10", "classifier_cifar10_sigma0.12", "classifier_cifar10_sigma0.25",
                    "classifier_cifar10_sigma0.50"),
    "cifar10": ("diffusion_cifar10",),
    "ptb": ("lm_ptb",),
}
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
    model_cards: list[str] = field(default_factory=list)
    main_links: list[str] = field(default_factory=list)
    missing_boxes: int = 0
    main_images: int = 0
    stderr_outputs: int = 0
    injected_cells: int = 0
    math_elements: int = 0
    unrendered_math: int = 0
    mathjax_containers: int = 0
    mathjax_errors: int = 0
    raw_delimiters: bool = False
    nav_links: list[str] = field(default_factory=list)
    image_scales: list[list] = field(default_factory=list)
    title: str = ""
    title_first: bool = True
    overflowing: list[str] = field(default_factory=list)


def load_toc(toc_path: Path) -> dict:
    """A jb-book ``_toc.yml`` as the build sees it: executed notebooks that are absent left out."""
    return present_toc(yaml.safe_load(toc_path.read_text(encoding="utf-8")), toc_path.parent)


def toc_files(toc_path: Path) -> list[str]:
    """Every file the build includes from a jb-book ``_toc.yml`` (root first), without suffix."""
    toc = load_toc(toc_path)
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


def chapter_notebooks(toc_path: Path) -> dict[str, str]:
    """Chapter -> its executed-notebook section (``notebooks/...``), from the unfiltered toc."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    found = {}
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            for section in chapter.get("sections", []):
                if str(section.get("file", "")).startswith("notebooks/"):
                    found[chapter["file"]] = section["file"]
    return found


def screenshot_pages(html_dir: Path) -> tuple[str, ...]:
    """The home page, the experiment chapter and the first executed notebook page that exists."""
    notebooks = [n for n in NOTEBOOK_SHOTS if (html_dir / f"{n}.html").exists()]
    return ("intro", EXPERIMENT_PAGE, *notebooks[:1])


def shot_path(name: str) -> Path:
    """Where the screenshot of page ``name`` goes (``notebooks/x`` -> ``notebooks_x.png``)."""
    return artifacts_dir() / f"{name.replace('/', '_')}.png"


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
    # The kernel that executes the notebook chapters logs its own transport notice ("[IPKernelApp] WARNING |
    # Kernel is running over TCP"): not a warning of the build.
    build_log = "\n".join(line for line in log.splitlines() if "[IPKernelApp]" not in line)
    assert "WARNING" not in build_log, f"book build printed warnings:\n{build_log[-6000:]}"
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

    def handle(self) -> None:
        """Serve, ignoring clients that hang up first (a closed page's late favicon request)."""
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            return


def chromium_path(playwright_own: str | None = None) -> str:
    """A Chromium to drive: ``$SMOOTHGEN_CHROMIUM``, a system Chromium, or Playwright's own download.

    When none is found the test is skipped with one line saying how to get one, except under CI
    (``$CI`` set), where a missing browser is a failure: CI installs it and must run the test.
    """
    candidates = [os.environ.get("SMOOTHGEN_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                  playwright_own]
    found = next((c for c in candidates if c and Path(c).exists()), None)
    if found:
        return found
    advice = ("no Chromium found: install it (Debian/Ubuntu as root: `apt-get install -y chromium`; any user: "
              "`playwright install chromium`) or set SMOOTHGEN_CHROMIUM")
    if os.environ.get("CI"):
        pytest.fail(advice)
    pytest.skip(f"browser test skipped: {advice}")


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
    model_cards: Array.from(document.querySelectorAll('table.model-card')).map(t => t.textContent),
    main_links: Array.from(main.querySelectorAll('a.reference.internal')).map(a => a.getAttribute('href')),
    missing_boxes: main.querySelectorAll('.study-notebook-missing').length,
    main_images: main.querySelectorAll('img').length,
    stderr_outputs: main.querySelectorAll('.output.stderr').length,
    injected_cells: main.querySelectorAll('.tag_injected-parameters').length,
    broken_images: Array.from(document.images)
      .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.currentSrc || i.src),
    math_elements: math.length,
    unrendered_math: math.filter(e => !e.querySelector('mjx-container')).length,
    mathjax_containers: document.querySelectorAll('mjx-container').length,
    mathjax_errors: document.querySelectorAll('mjx-merror').length,
    raw_delimiters: ['\\\\(', '\\\\)', '\\\\[', '\\\\]', '$$'].some(d => text.includes(d)),
    nav_links: Array.from(document.querySelectorAll('nav.bd-docs-nav a.reference.internal'))
      .map(a => a.getAttribute('href')),
    image_scales: Array.from(main.querySelectorAll('div.cell_output img'))
      .filter(i => i.naturalWidth > 0)
      .map(i => [(i.currentSrc || i.src).split('/').pop(), i.getBoundingClientRect().width / i.naturalWidth]),
    title: document.title,
    title_first: (() => {
      const article = document.querySelector('article.bd-article') || main;
      const heading = article.querySelector('h1'), cell = article.querySelector('div.cell');
      return !cell || (!!heading && !!(heading.compareDocumentPosition(cell) & Node.DOCUMENT_POSITION_FOLLOWING));
    })(),
    overflowing: (() => {
      const article = document.querySelector('article.bd-article') || main;
      const right = article.getBoundingClientRect().right + 1;
      const scrolls = e => { for (let a = e.parentElement; a && a !== article; a = a.parentElement) {
        if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(a).overflowX)) return true; } return false; };
      return Array.from(article.querySelectorAll('table, img, pre, div.cell_output, figure, svg'))
        .filter(e => !e.closest('mjx-container') && e.getBoundingClientRect().right > right && !scrolls(e))
        .map(e => `${e.tagName.toLowerCase()}.${e.className} (${Math.round(e.getBoundingClientRect().width)} px)`);
    })(),
  };
}
"""
REFRESH = re.compile(r'<meta http-equiv="refresh" content="[^"]*url=([^"]+)"', re.IGNORECASE)


def redirect_target(html_file: Path) -> str | None:
    """The page that ``html_file`` redirects to with a meta refresh (index.html does), if any."""
    found = REFRESH.search(html_file.read_text(encoding="utf-8"))
    return found.group(1) if found else None


def visit(browser: Browser, url: str, name: str, redirect: str | None, shoot: bool) -> PageReport:
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
    if shoot:
        shot = shot_path(name)
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    context.close()
    return report


def site_pages(html_dir: Path) -> list[str]:
    """Every HTML page of the build, without suffix (chapters, notebooks/..., index, search, ...);
    Sphinx's own folders (``_static``, ``_sources``, ...) are not pages."""
    pages = (p.relative_to(html_dir).with_suffix("") for p in html_dir.rglob("*.html"))
    return sorted(p.as_posix() for p in pages if not any(part.startswith("_") for part in p.parts))


@pytest.fixture(scope="module")
def reports(html_dir: Path, base_url: str) -> dict[str, PageReport]:
    """Open every page of the built book in headless Chromium once; keep what each page did."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install playwright "
                    "(only the package; the system Chromium is used)")
    with sync_playwright() as pw:
        executable = chromium_path(pw.chromium.executable_path)
    shots = screenshot_pages(html_dir)
    for name in shots:  # no stale screenshot may pass for this run's
        shot_path(name).unlink(missing_ok=True)
    start = time.perf_counter()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        found = {name: visit(browser, f"{base_url}{name}.html", name,
                             redirect_target(html_dir / f"{name}.html"), name in shots)
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


def test_favicon_is_served(base_url: str) -> None:
    """Browsers ask for /favicon.ico on pages without an icon link (the redirecting index.html)."""
    with urllib.request.urlopen(f"{base_url}favicon.ico", timeout=10) as response:
        assert response.status == 200 and len(response.read()) > 100


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
    linked = {Path(href.split("#")[0]).with_suffix("").as_posix() for href in reports[root].nav_links}
    missing = [c for c in chapters if c not in linked]
    assert not missing, f"chapters missing from the navigation of {root}.html: {missing}"


def test_screenshots_are_saved(html_dir: Path, reports: dict[str, PageReport]) -> None:
    for name in screenshot_pages(html_dir):
        shot = shot_path(name)
        assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {name} at {shot}"


def test_chapters_point_to_their_notebooks(reports: dict[str, PageReport]) -> None:
    """A chapter links to its executed notebook when present, else it shows the warning box."""
    wrong = {}
    for chapter, notebook in chapter_notebooks(BOOK / "_toc.yml").items():
        report, present = reports[chapter], (BOOK / f"{notebook}.ipynb").exists()
        linked = f"{notebook}.html" in {href.split("#")[0] for href in report.main_links}
        ok = (linked and report.missing_boxes == 0) if present else (not linked and report.missing_boxes == 1)
        if not ok:
            wrong[chapter] = {"notebook present": present, "linked": linked, "boxes": report.missing_boxes}
        if present and notebook not in reports:
            wrong[notebook] = "executed notebook present but its page was not built"
    assert not wrong, f"chapters that do not match their notebooks: {wrong}"


def test_notebook_pages_show_results(reports: dict[str, PageReport]) -> None:
    """Executed notebooks show figures, no stderr (progress bars) and no injected-parameters cell."""
    pages = {n: r for n, r in reports.items() if n.startswith("notebooks/")}
    bad = {n: {"images": r.main_images, "stderr outputs": r.stderr_outputs, "injected cells": r.injected_cells}
           for n, r in pages.items() if r.main_images == 0 or r.stderr_outputs or r.injected_cells}
    assert not bad, f"notebook pages that do not render as results: {bad}"


def test_pages_fit_their_column_and_titles_are_unique(html_dir: Path, reports: dict[str, PageReport]) -> None:
    """No table, figure or output sticks out of the text column (wide ones scroll inside it), notebook
    pages open with their title, and no two pages share a title (the sidebar would list both alike;
    index.html only redirects to the first chapter)."""
    wide = {n: r.overflowing for n, r in reports.items() if r.overflowing}
    assert not wide, f"elements wider than the column: {wide}"
    late = [n for n, r in reports.items() if not r.title_first]
    assert not late, f"pages whose first cell comes before their title: {late}"
    titles = {}
    for name, report in reports.items():
        if redirect_target(html_dir / f"{name}.html") is None:
            titles.setdefault(report.title, []).append(name)
    assert not {t: n for t, n in titles.items() if len(n) > 1}, "pages sharing a title"


# matplotlib draws notebook figures at 100 dpi, so its default 10 pt text is 13.9 px tall at natural size;
# shown at this fraction of their natural width or more, that text stays at least 9 px tall.
MIN_FIGURE_SCALE = 9 / (10 * 100 / 72)


def test_notebook_figures_keep_legible_text(reports: dict[str, PageReport]) -> None:
    """Executed notebooks' figures are not shrunk to fit the column (wide ones scroll with their output),
    so their text keeps the size it was drawn at."""
    small = {n: [(src, round(scale, 2)) for src, scale in r.image_scales if scale < MIN_FIGURE_SCALE]
             for n, r in reports.items()}
    assert not {n: v for n, v in small.items() if v}, f"figures shrunk below {MIN_FIGURE_SCALE:.2f} of their size"


def test_model_cards_render(reports: dict[str, PageReport]) -> None:
    """Each model card is a table with the checkpoint's name, size, data, hardware, sha256, metrics."""
    for page, names in MODEL_CARDS.items():
        tables = reports[page].model_cards
        assert len(tables) == len(names), f"{page}: {len(tables)} model-card tables, expected {len(names)}"
        for name, text in zip(names, tables):
            card = json.loads((CHECKPOINTS / f"{name}.json").read_text(encoding="utf-8"))
            expected = [f"Model card of {name}", card["sha256"], f"{card['parameters']:,}", card["data_variant"],
                        card["hardware"], f"{card['wall_time_s']:.1f} s", *(f"Metric: {k}" for k in card["metrics"])]
            missing = [e for e in expected if e not in text]
            assert not missing, f"{page}: the card of {name} lacks {missing}"


def test_present_toc_drops_only_absent_notebooks(tmp_path: Path) -> None:
    """The toc filter keeps present notebooks and every non-notebook entry, and drops empty sections."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_a.ipynb").write_text("{}", encoding="utf-8")
    toc = {"format": "jb-book", "root": "intro", "parts": [{"caption": "c", "chapters": [
        {"file": "a", "sections": [{"file": "notebooks/01_a"}]},
        {"file": "b", "sections": [{"file": "notebooks/02_b"}]},
        {"file": "c", "sections": [{"file": "notebooks/03_c"}, {"file": "missing_page"}]}]}]}
    chapters = present_toc(toc, tmp_path)["parts"][0]["chapters"]
    assert chapters == [{"file": "a", "sections": [{"file": "notebooks/01_a"}]}, {"file": "b"},
                        {"file": "c", "sections": [{"file": "missing_page"}]}]
    assert toc["parts"][0]["chapters"][1]["sections"] == [{"file": "notebooks/02_b"}], "input was modified"
    with pytest.raises(ValueError, match="root"):
        present_toc({"parts": []}, tmp_path)


def test_load_card_checks_the_weights(tmp_path: Path) -> None:
    """A shipped card loads; a wrong name, a missing field or changed weights are refused."""
    card = load_card(CHECKPOINTS, "lm_ptb")
    assert card["name"] == "lm_ptb"
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"weights")
    good = {**card, "name": "m", "file": weights.name, "sha256": hashlib.sha256(b"weights").hexdigest()}
    (tmp_path / "m.json").write_text(json.dumps(good), encoding="utf-8")
    assert load_card(tmp_path, "m")["sha256"] == good["sha256"]
    with pytest.raises(ValueError, match="no model card"):
        load_card(tmp_path, "absent")
    (tmp_path / "other.json").write_text(json.dumps(good), encoding="utf-8")
    with pytest.raises(ValueError, match="names the model 'm'"):
        load_card(tmp_path, "other")
    (tmp_path / "m.json").write_text(json.dumps({k: v for k, v in good.items() if k != "seed"}), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks \\['seed'\\]"):
        load_card(tmp_path, "m")
    (tmp_path / "m.json").write_text(json.dumps(good), encoding="utf-8")
    weights.write_bytes(b"changed")
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_card(tmp_path, "m")


def test_result_role_reads_json_keys_and_single_csv_rows(tmp_path: Path) -> None:
    """``{result}`` formats a JSON key or the one CSV row a query selects; anything else is an error."""
    from study_results import ResultError, lookup

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "s.json").write_text(json.dumps({"a": 0.8123, "m": "projection", "none": None,
                                                       "params": {"n": 40, "grid": {"w": 2.0}}}))
    (tmp_path / "x" / "t.csv").write_text('method,sigma_rel,fid\nnaive,0.1,30.5\nprojection,0.1,25.25\n')
    assert lookup(tmp_path, "x/s.json#a:.0%") == "81%"
    assert lookup(tmp_path, "x/s.json#a") == "0.812"
    assert lookup(tmp_path, "x/s.json#m:s") == "projection"
    assert lookup(tmp_path, "x/s.json#params.n:d") == "40" and lookup(tmp_path, "x/s.json#params.grid.w:g") == "2"
    assert lookup(tmp_path, 'x/t.csv?method == "projection"#fid:.1f') == "25.2"
    assert lookup(tmp_path, "x/s.json#none:.1%") == "none (no configuration qualified)"
    assert lookup(tmp_path, "x/t.csv?sigma_rel == 0.1#fid@max:.2f") == "30.50"
    assert lookup(tmp_path, "x/t.csv#fid@count:d") == "2" and lookup(tmp_path, "x/t.csv#fid@mean:.3f") == "27.875"
    for bad, match in [("x/s.json#b", "no key"), ("x/s.json#params.m", "no key 'm'"), ("x/s.json#a.b", "no key 'b'"),
                       ("x/u.json#a", "no result file"),
                       ("x/t.csv?sigma_rel == 0.1#fid", "2 rows"), ("x/s.json", "expected"),
                       ("x/t.csv#fid@mode", "unknown aggregate"), ('x/t.csv?method == "soft"#fid@min', "no row")]:
        with pytest.raises(ResultError, match=match):
            lookup(tmp_path, bad)


def test_example_role_computes_closed_forms_with_the_library() -> None:
    """``{example}`` calls a registered function with the role's settings and formats the result."""
    from scipy import stats
    from worked_examples import EXAMPLES, ExampleError, compute, lookup, parse

    assert parse("cohen_radius?p=0.98&sigma=0.25:.2f") == ("cohen_radius", {"p": 0.98, "sigma": 0.25}, ".2f")
    assert parse("phi?x=1") == ("phi", {"x": 1}, ".4g")
    # Cohen et al.'s panda: p_A = 0.98 at σ = 0.25 gives R = Φ⁻¹(0.98) σ ≈ 2.05 σ ≈ 0.51.
    assert compute("cohen_radius?p=0.98&sigma=0.25") == pytest.approx(stats.norm.ppf(0.98) * 0.25, rel=1e-12)
    assert lookup("cohen_radius?p=0.98&sigma=0.25:.2f") == "0.51"
    assert compute("cohen_radius?p=0.8&pb=0.15&sigma=2") == pytest.approx(stats.norm.ppf(0.8) - stats.norm.ppf(0.15))
    # The table of classifiers.md: all n draws agree, p̲ = α^{1/n}.
    assert lookup("clopper_pearson_lower?k=100&n=100&alpha=0.001:.6f") == "0.933254"
    assert lookup("max_radius?n=100000&alpha=0.001:.4f") == "3.8115"
    assert compute("max_radius?n=100&alpha=0.001&sigma=0.5") == pytest.approx(0.5 * stats.norm.ppf(0.001 ** 0.01))
    n = compute("samples_for_radius?radius=2&alpha=0.001")  # n > ln(1/α) / ln(1/Φ(2))
    assert n == math.floor(math.log(1000) / -math.log(stats.norm.cdf(2))) + 1
    assert compute("tv_bound?r=1&sigma=0.5") == pytest.approx(2 * stats.norm.cdf(1.0) - 1)
    assert compute("w1_radius?eps=0.1&sigma=0.5") == pytest.approx(2 * 0.5 * stats.norm.ppf(0.55))
    assert compute("np_lower?p=0.9&r=0.25&sigma=0.5") == pytest.approx(stats.norm.cdf(stats.norm.ppf(0.9) - 0.5))
    assert compute("sigma_eff?sigma=0.5&steps=50") == pytest.approx(0.5 / math.sqrt(50))
    assert compute("sigma_eff?sigma=5&steps=50&first=0.5") == pytest.approx((4 + 49 / 25) ** -0.5)
    eta = compute("dkw_margin?n=1000&alpha=0.001")
    assert eta == pytest.approx(math.sqrt(math.log(1000) / 2000))
    assert lookup("variance_tv?d=128&kappa=1.05:.3f") == "0.303"  # the table of adaptive.md
    assert lookup("dkw_samples?r=0.1&alpha=0.001&factor=10:,d") == "217,195"
    assert lookup("center_min_samples?delta=0.05:,d") == "1,199"  # ⌈ln(400) / 0.005⌉, the reference's Δ and α₁
    assert set(EXAMPLES) >= {"cohen_radius", "tv_bound", "clopper_pearson_lower", "w1_radius", "concentration_tv"}
    for bad, match in [("no_such_thing?p=0.5", "unknown example"), ("cohen_radius?p=0.9&q=0.5", "unexpected keyword"),
                       ("cohen_radius?sigma=1", "missing a required"), ("cohen_radius?p=high", "not a number"),
                       ("cohen_radius?p=0.9&p=0.8", "twice"), ("cohen_radius?p", "not <key>=<value>"),
                       ("cohen_radius?p=1.5", "refused"), ("tv_bound?r=1:.2z", "bad format"),
                       ("max_radius?n=0.5&alpha=0.001", "integer"), ("?p=1", "expected")]:
        with pytest.raises(ExampleError, match=match):
            lookup(bad)


def test_every_example_in_the_chapters_computes() -> None:
    """Every ``{example}`` in the chapters names a value (the build would warn otherwise; this finds it
    without a build)."""
    from worked_examples import lookup

    found = 0
    for chapter in sorted(BOOK.glob("*.md")):
        for text in re.findall(r"\{example\}`([^`]*)`", chapter.read_text()):
            lookup(text)
            found += 1
    assert found > 0


COURSE_CHAPTERS = ("intro", "classifiers", "generators", "cifar10", "ptb", "meaningful", "adaptive", "attacks",
                   "overhead", "ablations", "limitations", "reproducing")
"""Chapters written as course material (learning goals, prerequisites, key takeaways, exercises with solutions)."""


def test_chapters_are_course_material() -> None:
    """Each chapter opens with learning goals and prerequisites, closes with key takeaways right before its
    exercises, and every exercise (``ex-<chapter>-<k>``, numbered from 1) has a solution collapsed by default."""
    assert set(COURSE_CHAPTERS) <= set(toc_files(BOOK / "_toc.yml"))
    for name in COURSE_CHAPTERS:
        text = (BOOK / f"{name}.md").read_text()
        goals, prereq = text.find(":::{admonition} Learning goals"), text.find(":::{admonition} Prerequisites")
        first_section = text.find("\n## ")
        assert 0 < goals < prereq < first_section, f"{name}: goals, then prerequisites, before the first section"
        bullets = re.findall(r"^- ", text[goals:prereq], re.M)
        assert 3 <= len(bullets) <= 5, f"{name}: {len(bullets)} learning goals"
        sections = re.findall(r"^## (.+)$", text, re.M)
        assert sections[-2:] == ["Key takeaways", "Exercises"], f"{name}: ends with {sections[-2:]}"
        takeaways = text[text.index("## Key takeaways"):text.index("## Exercises")]
        assert 3 <= len(re.findall(r"^- ", takeaways, re.M)) <= 6, f"{name}: 3 to 6 key takeaways"
        labels = re.findall(r"^:label: (ex-[\w-]+)$", text, re.M)
        assert labels == [f"ex-{name}-{k}" for k in range(1, len(labels) + 1)] and labels, f"{name}: {labels}"
        solutions = re.findall(r"^:{3,}\{solution\} (ex-[\w-]+)\n:class: dropdown$", text, re.M)
        assert solutions == labels, f"{name}: exercises {labels} but collapsed solutions {solutions}"
        assert not re.search(r"^\d+\. ", text[text.index("## Exercises"):], re.M), f"{name}: a plain numbered exercise"


# ----------------------------------------------------------------------------- numbers in prose come from results
_CODE_FENCES = {"", "python", "bash", "text", "console", "yaml", "toml", "{code-cell}", "{model-card}",
                "{study-notebook}"}
_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+|\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)? ?%)")


def _prose(text: str) -> str:
    """A chapter's prose: code blocks, math, inline code, roles (``{result}`` included) and link targets removed;
    the text inside directives (theorems, admonitions, exercises) kept."""
    out, stack = [], []
    for line in text.splitlines():
        fence = re.match(r"^\s*(`{3,}|:{3,})\s*(\S*)", line)
        if fence:
            mark, lang = fence.groups()
            if stack and stack[-1][0] == mark and not lang:
                stack.pop()
                continue
            if all(keep for _, keep in stack):
                stack.append((mark, bool(lang) and lang.split()[0] not in _CODE_FENCES))
                continue
        if all(keep for _, keep in stack) and not re.match(r"^\s*:[\w-]+:", line):
            out.append(line)
    prose = re.sub(r"\$\$.*?\$\$", "", "\n".join(out), flags=re.S)
    for pattern in (r"\{[\w:-]+\}`[^`]*`", r"`[^`]*`", r"\$[^$\n]*\$", r"\]\([^)]*\)", r"(Figure|Table) \d+\.\d+"):
        prose = re.sub(pattern, "", prose)
    return prose


# Typed numbers that are settings, targets or closed-form values, not results: each is checked elsewhere
# in this file (the preset values) or is a fact of the tooling.
_ALLOWED = {
    "ablations.md": {"95 %"},
    "adaptive.md": {"0.016", "0.076", "0.148", "0.063", "0.303", "0.554", "0.944", "1.000", "5 %", "95 %"},
    "meaningful.md": {"0.85", "25 %", "0.9", "1.25", "1.1", "95 %"},
    "reproducing.md": {"3.10", "10,000"},
}


def test_chapters_type_no_result_numbers() -> None:
    """Every decimal, percentage or large number in a chapter's prose is a ``{result}`` role, or an allowed
    setting / closed-form value (listed above, and checked below)."""
    typed, unused = {}, {}
    for chapter in sorted(BOOK.glob("*.md")):
        if chapter.name == "README.md":
            continue
        found = {m.group(0) for m in _NUMBER.finditer(_prose(chapter.read_text()))}
        allowed = _ALLOWED.get(chapter.name, set())
        if found - allowed:
            typed[chapter.name] = sorted(found - allowed)
        if allowed - found:
            unused[chapter.name] = sorted(allowed - found)
    assert not typed, f"numbers typed in prose (use the result role, see book/_ext/study_results.py): {typed}"
    assert not unused, f"allowed numbers that no chapter types any more (drop them from _ALLOWED): {unused}"


def test_allowed_numbers_are_the_settings_and_formulas_they_claim_to_be() -> None:
    from scipy import stats

    from smoothgen.presets import STUDY_PRESETS

    p08 = STUDY_PRESETS["08_meaningful_radii"]["cpu"]
    assert (p08["target_consistency"], p08["target_fid_ratio"], p08["target_bleu"], p08["target_ppl_ratio"]) == \
        (0.85, 1.25, 0.9, 1.1)
    table = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", (BOOK / "adaptive.md").read_text(), re.M)
    assert len(table) == 3
    for row in table:  # the likelihood-ratio test of two Gaussian variances: F_d(u*) − F_d(u*/κ²)
        d = int(row[0])
        for kappa, printed in zip((1.01, 1.05, 1.10), row[1:]):
            u = 2 * d * math.log(kappa) / (1 - kappa**-2)
            assert f"{stats.chi2.cdf(u, d) - stats.chi2.cdf(u / kappa**2, d):.3f}" == printed


def test_missing_browser_is_a_skip_for_users_and_a_failure_under_ci(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("SMOOTHGEN_CHROMIUM", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="browser test skipped: no Chromium found"):
        chromium_path(str(tmp_path / "absent"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no Chromium found"):
        chromium_path(None)
    (tmp_path / "chrome").write_text("")
    assert chromium_path(str(tmp_path / "chrome")) == str(tmp_path / "chrome")  # Playwright's own download


def test_certify_from_scratch_is_executed_and_agrees_with_the_library(html_dir: Path) -> None:
    """The classifiers chapter runs its twelve-line CERTIFY at build time: on a linear classifier both it
    and SmoothGen's certify at most the exact radius (the distance to the boundary) and close to it."""
    page = (html_dir / "classifiers.html").read_text(encoding="utf-8")
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", page)).split())
    found = re.search(r"exact radius from scratch smoothgen((?: \d [\d.]+ [\d.]+ [\d.]+){3})", text)
    assert found, "the executed table of the from-scratch CERTIFY is not on the page"
    for exact, ours, theirs in np.array(found.group(1).split(), dtype=float).reshape(3, 4)[:, 1:]:
        assert 0.9 * exact < ours <= exact and 0.9 * exact < theirs <= exact
