"""The course as a learner sees it: JupyterLab from the course environment on loopback, opened in headless
Chromium (the distribution's `chromium` and `chromium-driver`, driven by Selenium; nothing is downloaded).

* Notebook 01 is run cell by cell through the UI (Shift+Enter), a cost slider is moved with the arrow keys, and
  the break-even in the redrawn plot's legend must change to what the cost model gives for the new price. The
  kernel draws plots as SVG with text kept as text (``JupyterLabServer(svg_figures=True)``) so the legend can be
  read; the notebook itself is unchanged.
* The answer browser of 05.2 is rendered from the executed notebook in the course run folder (the widget state
  papermill saved) and must show the first evaluated question with every variant's answer.

Each test runs in a network namespace with only loopback (helpers/airgap.py): the test re-runs itself there, so
JupyterLab, its kernels, chromedriver and Chromium cannot reach anything beyond this machine; where no namespace
can be made it runs here and says so. JupyterLab listens on 127.0.0.1 either way, and Chromium runs without its
background networking. Screenshots go to ``<run>/browser/``. Where the browser packages or selenium are missing,
the tests skip and say which. For development without the full course, ``COURSE_BROWSER_RUN_DIR=<run folder>``
uses that folder (for 05.2 one made by ``python -m helpers course run --only 05 05.2 --run-dir <run folder>``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import nbformat
import pytest

from helpers import airgap, cost
from helpers.jupyterlab import JupyterLabServer

pytestmark = pytest.mark.course

ROOT = Path(__file__).resolve().parent.parent
NB01 = ROOT / "notebooks" / "01-warum-self-hosting.ipynb"
NB052 = "05.2-model-evaluation.ipynb"
# Headless, and nothing of Chromium's own traffic (component updates, sync, field trials, QUIC probes).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]
CELL_TIMEOUT = 300      # one cell on a loaded 2-core machine (first imports of pandas/matplotlib)
PAGE_TIMEOUT = 180


def _browser_missing() -> str | None:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (Python package)")
    if missing:
        return (f"browser test needs {', '.join(missing)}: `apt-get install chromium chromium-driver` (as root) and "
                "`pip install selenium`, or run scripts/setup_env.sh as root")
    return None


@pytest.fixture(scope="module")
def run_dir(request) -> Path:
    """The course run folder: ``COURSE_BROWSER_RUN_DIR`` while developing, else the session's course run."""
    if os.environ.get("COURSE_BROWSER_RUN_DIR"):
        path = Path(os.environ["COURSE_BROWSER_RUN_DIR"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)   # before the (long) course run
    path, _, proc = request.getfixturevalue("course_run")
    assert proc.returncode == 0, f"course run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return path


@pytest.fixture
def browser(monkeypatch):
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")   # Selenium Manager must not look for drivers online
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _ran_airgapped(request, run_dir: Path) -> bool:
    """Outside the namespace: run this very test again inside one (pytest in a subprocess) and check it passed.
    Returns True when that happened (the caller is done), False when the test must run right here."""
    if os.environ.get("COURSE_BROWSER_AIRGAPPED") == "1":
        return False
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    reason = airgap.unavailable_reason()
    if reason:
        print(f"\nNOTE: browser test without network namespace ({reason}); JupyterLab on loopback only.")
        return False
    env = dict(os.environ, COURSE_BROWSER_AIRGAPPED="1", COURSE_BROWSER_RUN_DIR=str(run_dir))
    cmd = airgap.command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "course",
                          f"{Path(__file__).relative_to(ROOT)}::{request.node.name}"])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    out = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"{request.node.name} failed inside the air-gapped namespace:\n{out}"
    assert re.search(r"\b1 passed\b", proc.stdout), f"{request.node.name} did not pass inside the namespace:\n{out}"
    return True


# --------------------------------------------------------------------------- small waits (polls, no fixed sleeps)
def _wait(driver, condition, timeout: float, what: str, shots: Path | None = None):
    """Poll ``condition()`` until it is truthy; on timeout save a screenshot and fail saying what was awaited."""
    deadline = time.time() + timeout
    value = None
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    if shots is not None:
        name = re.sub(r"[^\w.-]+", "-", what)
        driver.save_screenshot(str(shots / f"timeout-{name}.png"))
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")


def _open_notebook(driver, lab: JupyterLabServer, name: str, n_cells: int, shots: Path) -> None:
    driver.get(lab.notebook_url(name))
    js = driver.execute_script
    _wait(driver, lambda: js("return document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length") == n_cells,
          PAGE_TIMEOUT, f"{name}: all {n_cells} cells shown", shots)
    _wait(driver, lambda: js("var e = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                             "return e && e.getAttribute('data-status') === 'idle'"
                             " && !document.querySelector('.jp-NotebookPanel .jp-Spinner')"),
          PAGE_TIMEOUT, f"{name}: kernel idle", shots)


def _kernel_idle_and_prompt(driver, index: int) -> str | None:
    """The execution count shown for cell ``index`` once it has run and the kernel is idle, else None."""
    return driver.execute_script(
        "var ind = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        "if (!ind || ind.getAttribute('data-status') !== 'idle') return null;"
        "var cell = document.querySelectorAll('.jp-NotebookPanel .jp-Cell')[arguments[0]];"
        "var p = cell && cell.querySelector('.jp-InputPrompt');"
        "var m = p && p.textContent.match(/\\[(\\d+)\\]/); return m ? m[1] : null;", index)


def _run_cell_by_cell(driver, nb: nbformat.NotebookNode, shots: Path) -> None:
    """Select the first cell, then Shift+Enter through the notebook, waiting for each code cell's result."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")[0].click()
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()   # command mode
    for i, cell in enumerate(nb.cells):
        last = i == len(nb.cells) - 1
        modifier = Keys.CONTROL if last else Keys.SHIFT      # Ctrl+Enter on the last cell: no new empty cell
        ActionChains(driver).key_down(modifier).send_keys(Keys.ENTER).key_up(modifier).perform()
        if cell.cell_type == "code":
            _wait(driver, lambda: _kernel_idle_and_prompt(driver, i), CELL_TIMEOUT, f"cell {i} to run", shots)


def _save_and_read(driver, path: Path, shots: Path) -> nbformat.NotebookNode:
    """Ctrl+S in the UI, then read what JupyterLab wrote (once every code cell has its execution count)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()

    def saved():
        nb = nbformat.read(path, as_version=4)
        return nb if all(c.get("execution_count") for c in nb.cells if c.cell_type == "code") else None

    return _wait(driver, saved, 60, f"{path.name} saved with every code cell run", shots)


def _text_outputs(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


BREAK_EVEN_LEGEND = re.compile(r"Break-even ≈ ([\d,]+) Anfragen/Monat")


def _legend_break_even(driver, widget) -> int | None:
    """The break-even in the legend of the plot the slider widget drew last (an SVG whose text stays text)."""
    src = driver.execute_script("var i = arguments[0].querySelector('.widget-output img'); return i && i.src;",
                                widget)
    if not src or not src.startswith("data:image/svg+xml"):
        return None
    svg = urllib.parse.unquote(src.split(",", 1)[1])
    match = BREAK_EVEN_LEGEND.search(svg)
    return int(match.group(1).replace(",", "")) if match else None


def _shot(driver, element, path: Path) -> Path:
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"screenshot {path} looks empty"
    return path


# --------------------------------------------------------------------------- the tests
def test_notebook_01_slider_moves_the_break_even(request, run_dir):
    """Notebook 01 run cell by cell in JupyterLab; the API-price slider moved with the keyboard redraws the plot,
    and its legend's break-even follows the cost model for the new price."""
    if _ran_airgapped(request, run_dir):
        return
    browser = request.getfixturevalue("browser")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = run_dir / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="lab-01-"))
    shutil.copy(NB01, root / NB01.name)
    nb = nbformat.read(NB01, as_version=4)
    # own run folder for the UI run: the course run's metrics/01.json stays as papermill wrote it
    lab = JupyterLabServer(root, run_dir / "browser" / "run-01", log_path=shots / "jupyterlab-01.log",
                           svg_figures=True)
    try:
        lab.start()
        _open_notebook(browser, lab, NB01.name, len(nb.cells), shots)
        _run_cell_by_cell(browser, nb, shots)
        saved = _save_and_read(browser, root / NB01.name, shots)
        errors = [o for c in saved.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"notebook 01 raised in the UI: {errors[0].get('ename')}: {errors[0].get('evalue')}"
        assert (run_dir / "browser" / "run-01" / "metrics" / "01.json").exists(), "last cell (metrics) did not run"

        printed = next(_text_outputs(c) for c in saved.cells if "Break-even (GPU läuft immer)" in _text_outputs(c))
        printed_be = int(re.search(r"Break-even \(GPU läuft immer\):\s+([\d,]+)", printed).group(1).replace(",", ""))

        js = browser.execute_script
        slider = _wait(browser, lambda: js(
            "return [...document.querySelectorAll('.widget-hslider')].find("
            "e => e.querySelector('.widget-label').textContent.trim() === 'API €/1M out');"), 60,
            "the 'API €/1M out' slider", shots)
        widget = js("return arguments[0].closest('.widget-interact');", slider)
        before = _wait(browser, lambda: _legend_break_even(browser, widget), 60, "the break-even plot", shots)
        assert before == printed_be, "the slider plot starts from another break-even than the notebook printed"
        readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
        price_before = float(readout.text)
        _shot(browser, widget, shots / "01-slider-before.png")

        handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
        js("arguments[0].focus();", handle)
        for _ in range(20):                                   # 20 steps of 0.1 €/1M output tokens
            handle.send_keys(Keys.ARROW_RIGHT)
        price = float(_wait(browser, lambda: readout.text if float(readout.text) != price_before else None, 30,
                            "the slider readout to move", shots))
        assert price == pytest.approx(price_before + 2.0)
        base = cost.CostInputs(output_tokens_per_s=cost.measured_throughput("batch")["tokens_per_s"])
        expected = cost.break_even_requests(base.with_(api_eur_per_m_output=price))
        after = _wait(browser, lambda: (lambda v: v if v and v == pytest.approx(expected, rel=1e-3) else None)(
            _legend_break_even(browser, widget)), 60, f"the legend to show break-even ≈ {expected:,.0f}", shots)
        assert after < before    # a dearer API pays off a GPU at fewer requests
        _shot(browser, widget, shots / "01-slider-after.png")
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_notebook_052_answer_browser_renders(request, run_dir):
    """The executed 05.2 from the run folder, opened in JupyterLab, shows the answer browser with the first
    evaluated question, its reference and every variant's answer from <run>/evaluation/metrics.json."""
    if _ran_airgapped(request, run_dir):
        return
    browser = request.getfixturevalue("browser")
    from selenium.webdriver.common.by import By

    executed = run_dir / "notebooks" / NB052
    results = run_dir / "evaluation" / "metrics.json"
    assert executed.exists() and results.exists(), f"no executed 05.2 with results in {run_dir}"
    items = json.loads(results.read_text(encoding="utf-8"))["items"]
    first = [it for it in items if it["id"] == items[0]["id"]]
    shots = run_dir / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="lab-052-"))
    shutil.copy(executed, root / NB052)
    lab = JupyterLabServer(root, run_dir / "browser" / "run-05.2", log_path=shots / "jupyterlab-05.2.log")
    try:
        lab.start()
        lab.trust(root / NB052)       # papermill's output is untrusted; widget views render only when trusted
        nb = nbformat.read(root / NB052, as_version=4)
        _open_notebook(browser, lab, NB052, len(nb.cells), shots)
        js = browser.execute_script
        view = _wait(browser, lambda: js(
            "return [...document.querySelectorAll('.widget-html')].find(e => e.textContent.includes('Frage:'));"),
            PAGE_TIMEOUT, "the answer browser's HTML", shots)
        text = " ".join(view.text.split())
        assert first[0]["id"] in text and " ".join(first[0]["question"].split()) in text
        for it in first:
            assert f"{it['variant']} (finish_reason={it['finish_reason']}" in text
            assert " ".join(it["answer"].split()) in text, f"answer of {it['variant']} not shown"
        box = js("return arguments[0].closest('.widget-vbox');", view)
        picks = [js("return arguments[0].options[arguments[0].selectedIndex].textContent.trim();", s)
                 for s in box.find_elements(By.CSS_SELECTOR, "select")]
        assert picks == ["alle", first[0]["id"]]
        _shot(browser, box, shots / "05.2-answer-browser.png")
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)
