"""Helpers for the browser tests: a throw-away JupyterLab server driven by Playwright."""
