"""Screenshots of a run's index.html in headless Chromium, to look at what a reader sees.

    python scripts/report_screenshots.py RUN_DIR [--out DIR] [--chromium PATH]

Writes ``top.png`` (the first screen of the page) and one ``figure-<name>.png`` per
figure (the figure as the page shows it: its caption and image with the page's style)
into ``--out`` (default ``RUN_DIR/screenshots``), and checks that the page does not
scroll sideways in a 1,280 px window (wide tables scroll inside their own boxes); exits
1 when it does. RUN_DIR may also be a ``mi-probe compare`` output folder. Needs a
Chromium binary (Debian: ``apt-get install chromium`` or ``chromium-headless-shell``);
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WINDOW = "1280,1000"


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    for name in ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome",
                 "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(chromium: str, url: str, out: Path, window: str = WINDOW) -> None:
    with tempfile.TemporaryDirectory() as profile:  # no shared state between shots
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={window}",
             f"--screenshot={out}", url],
            capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed on {url}: {result.stderr[-500:]}")


#: appended before the page's own last </body> (the inlined Vega bundle holds the string
#: "</body>" too, so the first one is inside a script): try to scroll far right, then
#: write how far the page moved into the DOM
_SCROLL_PROBE = ("<script>setTimeout(function(){window.scrollTo(10000,0);var p=document."
                 "createElement('pre');p.textContent='MI_PROBE_SCROLLX='+window.scrollX;"
                 "document.body.appendChild(p)},2500)</script>")


def sideways_scroll(chromium: str, index: Path, width: int = 1280) -> int:
    """How many pixels ``index`` scrolls sideways in a ``width`` px window (0: none)."""
    text = index.read_text(encoding="utf-8")
    cut = text.rindex("</body>")
    with tempfile.TemporaryDirectory() as profile:
        probe = index.parent / ".scroll-probe.html"
        probe.write_text(text[:cut] + _SCROLL_PROBE + text[cut:], encoding="utf-8")
        try:
            dom = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                 "--hide-scrollbars", f"--user-data-dir={profile}",
                 f"--window-size={width},900", "--virtual-time-budget=8000", "--dump-dom",
                 probe.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
        finally:
            probe.unlink()
    found = re.search(r"MI_PROBE_SCROLLX=(\d+)", dom)
    if found is None:
        raise RuntimeError(f"{index}: the scroll probe did not run in chromium")
    return int(found.group(1))


def figure_pages(index: Path, folder: Path) -> list[tuple[str, Path]]:
    """One page per figure of ``index``: the page's head and that figure alone (headless
    Chromium screenshots do not scroll to a fragment reliably)."""
    page = index.read_text(encoding="utf-8")
    head = page[:page.index("<body>") + len("<body>")]
    base = f'<base href="{index.parent.resolve().as_uri()}/">'
    head = head.replace("<head>", "<head>" + base, 1)
    pages = []
    for match in re.finditer(r'<figure id="([^"]+)".*?</figure>', page, re.S):
        path = folder / f"{match.group(1)}.html"
        path.write_text(head + match.group(0) + "</body></html>", encoding="utf-8")
        pages.append((match.group(1), path))
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--chromium")
    args = parser.parse_args(argv)
    index = args.run_dir / "index.html"
    if not index.is_file():
        print(f"error: {index} does not exist", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("error: no Chromium found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as pages:
        shots = [("top", index.resolve().as_uri(), WINDOW)]
        shots += [(name, page.as_uri(), "1280,900")
                  for name, page in figure_pages(index, Path(pages))]
        for name, url, window in shots:
            path = out / f"{name}.png"
            screenshot(chromium, url, path, window)
            print(path)
    moved = sideways_scroll(chromium, index)
    print(f"{index}: scrolls sideways by {moved} px in a 1280 px window")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
