"""A throw-away JupyterLab server for browser tests, and the steps a user takes in it.

Adapted from a proven Playwright + Debian chromium recipe. What it handles (each was a
real failure): running as root needs ``--allow-root``; Lab reports an idle kernel before
one exists, so "Run All Cells" is retried until a prompt shows ``[*]``/``[n]``; no
autosave, no news toast, checkpoints and workspaces in a temporary folder, so the
notebook under test is never written to. Playwright is imported lazily (this module is
also collected by ``--doctest-modules`` where Playwright may be missing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
STDERR_OUTPUT = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"


def chromium_path() -> str:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def stack_problem() -> str | None:
    """Why the browser tests cannot run here, or None when everything is installed."""
    import importlib.util

    if not Path(chromium_path()).exists():
        return f"no chromium at {chromium_path()} (install Debian's 'chromium' or set CHROMIUM)"
    for module in ("playwright", "jupyterlab", "anywidget"):
        if importlib.util.find_spec(module) is None:
            return f"the python package {module!r} is missing (pip install -e '.[browser]')"
    if not (Path(sys.executable).parent / "jupyter-lab").exists():
        return f"no jupyter-lab next to {sys.executable}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


@dataclass
class Lab:
    """A running JupyterLab: ``url(notebook)`` to open a notebook, ``kernel_idle`` to poll."""

    base: str
    token: str
    proc: subprocess.Popen
    log: Path

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}&reset"

    def kernel_idle(self, notebook: str) -> bool:
        try:
            sessions = _get_json(f"{self.base}/api/sessions?token={self.token}")
        except OSError:
            return False
        return any(s.get("path", "").endswith(notebook)
                   and s.get("kernel", {}).get("execution_state") == "idle" for s in sessions)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _settings(workdir: Path) -> Path:
    root = workdir / "settings" / "@jupyterlab"
    for ext, text in (("apputils-extension/notification", '{"fetchNews": "false"}'),
                      ("docmanager-extension/plugin", '{"autosave": false}')):
        path = root / f"{ext}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return workdir / "settings"


@contextmanager
def jupyter_lab(root: Path, workdir: Path, timeout: float = 60.0) -> Iterator[Lab]:
    """Start ``jupyter lab`` serving ``root`` on 127.0.0.1; stop exactly its process group."""
    port, token = _free_port(), "test-" + os.urandom(6).hex()
    bindir = Path(sys.executable).parent
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(_settings(workdir)),
               JUPYTER_RUNTIME_DIR=str(workdir / "runtime"), JUPYTER_PLATFORM_DIRS="1",
               JUPYTERLAB_WORKSPACES_DIR=str(workdir / "workspaces"), PYTHONUNBUFFERED="1",
               PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(bindir / "jupyter-lab"), f"--port={port}", "--ip=127.0.0.1", "--no-browser",
           f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}", "--ServerApp.password=",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", f"--FileCheckpoints.checkpoint_dir={workdir / 'checkpoints'}",
           f"--LabApp.workspaces_dir={workdir / 'workspaces'}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = workdir / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)     # own process group: we stop exactly it
    lab = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        _wait_up(lab, timeout)
        yield lab
    finally:
        _stop(proc)


def _wait_up(lab: Lab, timeout: float) -> None:
    from sage_nb.testing import wait_for

    def up() -> bool:
        if lab.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with rc={lab.proc.returncode}:\n{lab.log_tail()}")
        try:
            _get_json(f"{lab.base}/api/status?token={lab.token}")
        except OSError:
            return False
        return True

    try:
        wait_for(up, timeout, interval=0.2)
    except TimeoutError:
        raise RuntimeError(f"jupyter lab not up after {timeout} s:\n{lab.log_tail()}") from None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def run_all_cells(page: Any, lab: Lab, notebook: str, timeout_ms: int = 60_000, tries: int = 4) -> None:
    """Run > Run All Cells through the menu bar, as a user would; retried while Lab races."""
    from playwright.sync_api import TimeoutError as PWTimeout

    from sage_nb.testing import wait_for

    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_ms)
    wait_for(lambda: lab.kernel_idle(notebook), timeout_ms / 1000, interval=0.2)
    started = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                        .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""
    for _ in range(tries):
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout_ms)
        page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=15_000)
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=15_000)
        try:
            page.wait_for_function(started, timeout=8000)
            return
        except PWTimeout:
            dialog = page.locator(".jp-Dialog .jp-mod-accept")
            if dialog.count():
                dialog.first.click()
                try:
                    page.wait_for_function(started, timeout=8000)
                    return
                except PWTimeout:
                    pass
            page.keyboard.press("Escape")
    raise PWTimeout(f"no cell started after {tries} 'Run All Cells' clicks")


def wait_all_cells_ran(page: Any, timeout_ms: int = 60_000) -> str | None:
    """Wait until no cell is queued or running; the first cell traceback, or None."""
    page.wait_for_function(
        """(sel) => {
             const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
             if (prompts.some(t => t.includes('*'))) return false;
             const tb = [...document.querySelectorAll(sel)].some(e => e.textContent.includes('Traceback'));
             return tb || prompts.every(t => /\\[\\d+\\]/.test(t));
           }""", arg=STDERR_OUTPUT, timeout=timeout_ms)
    errors = page.locator(STDERR_OUTPUT, has_text="Traceback")
    return errors.first.inner_text()[-1500:] if errors.count() else None


# JS: load the widget's ES module from its source text and render it with a fake model
# (get / set / on / off / save_changes / send, as anywidget gives it).
RENDER_WITH_FAKE_MODEL = """async ([src, state]) => {
  const url = URL.createObjectURL(new Blob([src], {type: 'text/javascript'}));
  const mod = await import(url);
  const listeners = {};
  window.sageSent = [];
  window.sageModel = {
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; (listeners['change:' + k] || []).forEach((f) => f()); },
    save_changes: () => {},
    on: (name, f) => { (listeners[name] = listeners[name] || []).push(f); },
    off: (name, f) => { listeners[name] = (listeners[name] || []).filter((g) => g !== f); },
    send: (msg) => window.sageSent.push(msg),
  };
  const el = document.createElement('div');
  document.body.append(el);
  mod.default.render({model: window.sageModel, el});
  return true;
}"""


def render_with_fake_model(page: Any, js_source: str, state: dict[str, Any], css: str = "") -> None:
    """Render the widget JS into a blank page from a Python widget's ``get_state()``."""
    page.set_content("<!DOCTYPE html><html><body style='margin:16px'></body></html>")
    if css:
        page.add_style_tag(content=css)
    page.evaluate(RENDER_WITH_FAKE_MODEL, [js_source, state])
