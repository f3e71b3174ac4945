"""Screenshot a quantdoctor report (report/index.html) in headless Chromium, and fail if the
page logs a console error or requests anything from the network.

    python examples/screenshot_report.py report/index.html -o report.png [--width 1200]

Needs the ``dev`` extra (playwright) and Debian's ``chromium`` package; playwright drives
the system's Chromium, it downloads no browser.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def screenshot(page_path: Path, out: Path, width: int = 1200, full_page: bool = True) -> list[str]:
    """Load the page, save a PNG; returns the console errors and non-local requests."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "request",
            lambda r: None
            if r.url.startswith(("file:", "data:"))
            else problems.append(f"network request: {r.url}"),
        )
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(out), full_page=full_page)
        browser.close()
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="report/index.html")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.png"))
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--viewport-only", action="store_true", help="not the full page")
    args = parser.parse_args()
    problems = screenshot(args.page, args.output, args.width, not args.viewport_only)
    print(f"{args.output}: {args.output.stat().st_size} bytes")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
