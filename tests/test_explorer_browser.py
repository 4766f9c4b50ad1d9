"""The attention explorer in a real browser: JupyterLab + headless Chromium (playwright) on notebook 07.

Runs only through ``make browser-test`` (which sets VIT_EDU_BROWSER_TEST=1 and installs
requirements-browser.txt) and is skipped without playwright or a Chromium: playwright's own browser download
is not needed, the system's Chromium is used (``apt-get install chromium``; or set VIT_EDU_CHROMIUM to a
Chrome/Chromium executable). ``make test`` skips it with that reason.

It copies notebook 07 into a temporary folder (the repository is never touched), starts JupyterLab there on a
free port with a token, runs the notebook, clicks a patch on the explorer's figure and moves the layer slider,
and checks that the displayed map changes and equals the model's attention for that patch, computed here.
The explorer's picture is saved as explorer.png under $VIT_EDU_FIGURES (a temporary folder under pytest;
``make explorer-screenshot`` points it at figures/ for the README).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_attention_maps.ipynb"

if os.environ.get("VIT_EDU_BROWSER_TEST") != "1":
    pytest.skip("the browser test runs with `make browser-test`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: make browser-test installs it",
                             exc_type=ImportError)
CHROMIUM = os.environ.get("VIT_EDU_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)
if CHROMIUM is None:
    pytest.skip("no Chromium found: apt-get install chromium (or set VIT_EDU_CHROMIUM)", allow_module_level=True)

STATE = ".vit-edu-explorer-state"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a temporary folder, one server per test (no tab or kernel left over from another):
    (url of a notebook in it, with the token; the folder)."""
    root = tmp_path
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    no_news = {"fetchNews": "false", "checkForUpdates": False}  # no pop-up over the page
    (settings / "notification.jupyterlab-settings").write_text(json.dumps(no_news))
    env = {k: v for k, v in os.environ.items() if k not in ("VIT_EDU_STATIC", "JPY_SESSION_NAME")}
    env.update(VIT_EDU_FIGURES=str(root / "figures"), JUPYTER_CONFIG_DIR=str(root / "config"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"), IPYTHONDIR=str(root / "ipython"),
               JUPYTERLAB_SETTINGS_DIR=str(root / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
               PYTHONHASHSEED="0")
    port, token = free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--ServerApp.allow_root=True")
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"{base}/lab/tree/{{}}?reset&token={token}", root  # reset: a fresh workspace
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def reference_patch_map(state: dict) -> np.ndarray:
    """The model's attention for the explorer's selection, computed here from notebook 07's own test images."""
    from vit_edu.training import pretrained_course_model
    from vit_edu.training.data import ShapesDataset

    model, info = pretrained_course_model()
    image = ShapesDataset(n=256, seed=2027, return_mask=True, palette=info["palette"])[state["image"]][0]
    with torch.no_grad():
        _, attentions = model.eval()(image[None], return_attention=True)
    gh, gw = state["grid"]
    query = 1 + state["row"] * gw + state["col"]  # the class token first, then the patches row by row
    return attentions[state["layer"]][0, state["head"], query, 1:].reshape(gh, gw).numpy()


def read_state(page) -> dict:
    return json.loads(page.locator(STATE).last.get_attribute("data-state"))


def wait_for_state(page, predicate, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(page)
        if predicate(state):
            return state
        time.sleep(0.2)
    pytest.fail(f"the explorer never showed {what}; last state {read_state(page)}")


def run_all(page) -> None:
    """Run > Run All Cells; again if the kernel never got busy (a click that came too early)."""
    for _ in range(3):
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
        try:
            page.locator(".jp-StatusBar-TextItem", has_text="Busy").first.wait_for(timeout=20_000)
            return
        except sync_api.TimeoutError:
            page.keyboard.press("Escape")
    pytest.fail("Run All Cells never started the kernel")


@pytest.mark.parametrize("scale", [1, 2], ids=["screen", "hidpi-screen"])
def test_clicking_a_patch_shows_its_attention_in_jupyterlab(lab, scale) -> None:
    """Notebook 07, run in JupyterLab on a screen of ``scale`` device pixels per CSS pixel (2: a laptop's
    high-resolution screen, where the picture has four times the pixels)."""
    url, root = lab
    folder = root / f"scale{scale}"  # one copy per run: a session (and kernel) of its own
    folder.mkdir()
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    url = url.format(f"{folder.name}/{NOTEBOOK.name}")
    before = NOTEBOOK.read_bytes()
    launch = {"executable_path": CHROMIUM, "headless": True}
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        launch["args"] = ["--no-sandbox"]  # Chromium refuses to sandbox as root (containers)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(**launch)
        page = browser.new_page(viewport={"width": 1700, "height": 1100}, device_scale_factor=scale)
        try:
            page.goto(url)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            kernel = page.locator(".jp-StatusBar-TextItem", has_text="Idle").first
            kernel.wait_for(timeout=90_000)  # the kernel has started
            page.keyboard.press("Control+b")  # close the file browser: room for the whole figure
            run_all(page)
            page.wait_for_selector(STATE, state="attached", timeout=240_000)
            explorer = page.locator(".jp-OutputArea-output", has=page.locator(STATE)).last
            canvas = explorer.locator("canvas").first
            canvas.wait_for(timeout=60_000)
            explorer.scroll_into_view_if_needed()
            time.sleep(2)  # the first full draw arrives after the widget is shown
            first = read_state(page)
            shot_before = canvas.screenshot()

            # click the middle of a patch other than the selected one, on the image panel
            target = (2, 1) if (first["row"], first["col"]) != (2, 1) else (5, 1)
            box = canvas.bounding_box()
            left, top, right, bottom = first["image_axes"]
            gh, gw = first["grid"]
            x = box["x"] + box["width"] * (left + (right - left) * (target[1] + 0.5) / gw)
            y = box["y"] + box["height"] * (top + (bottom - top) * (target[0] + 0.5) / gh)
            page.mouse.click(x, y)
            clicked = wait_for_state(page, lambda s: (s["row"], s["col"]) == target, f"patch {target} after the click")
            time.sleep(1.5)  # the canvas receives its new picture
            shot_after = canvas.screenshot()
            assert shot_after != shot_before, "the displayed figure did not change after the click"
            assert not np.allclose(clicked["patch_map"], first["patch_map"], atol=1e-4)
            np.testing.assert_allclose(np.array(clicked["patch_map"]), reference_patch_map(clicked), atol=1e-5)

            # the layer slider, by keyboard: one step right
            handle = explorer.locator(".widget-slider", has_text="layer").locator(".noUi-handle").first
            handle.focus()
            page.keyboard.press("ArrowRight")
            moved = wait_for_state(page, lambda s: s["layer"] == clicked["layer"] + 1, "the next layer")
            assert (moved["row"], moved["col"]) == target
            np.testing.assert_allclose(np.array(moved["patch_map"]), reference_patch_map(moved), atol=1e-5)
            time.sleep(1.5)
            assert canvas.screenshot() != shot_after, "the displayed figure did not change after the slider"
            page.keyboard.press("ArrowLeft")  # and back, for the picture: the first layer's local head
            wait_for_state(page, lambda s: s["layer"] == clicked["layer"], "the first layer again")
            time.sleep(1.5)

            if scale == 1:  # the README's picture
                from vit_edu.explain.viz import figures_dir

                area, picture = explorer.bounding_box(), canvas.bounding_box()  # without blank space on the right
                page.screenshot(path=str(figures_dir() / "explorer.png"), clip={
                    "x": area["x"], "y": area["y"], "height": area["height"],
                    "width": min(area["width"], picture["x"] + picture["width"] + 8 - area["x"])})
        except BaseException:  # pytest.fail's exception too
            page.screenshot(path=str(folder / "failure.png"))
            print(f"JupyterLab's page at the failure: {folder / 'failure.png'}; its log: {root / 'lab.log'}")
            raise
        finally:
            browser.close()
    assert NOTEBOOK.read_bytes() == before  # the repository's notebook is untouched
