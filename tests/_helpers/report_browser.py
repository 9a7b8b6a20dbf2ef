"""Open an HTML report in headless Chromium and check it (no tests in here).

`browser_check(page, tmp)`: a copy of the page (in `tmp`) gets a small script as the first thing in
its <head>: it records console.error calls, uncaught errors, failed resources and unhandled
rejections, and on `load` writes into a <pre id="algm-check"> node, as JSON: every image with its
natural size, every table with its width and right edge, the viewport and page widths. Chromium
runs it with `--dump-dom` (a virtual-time budget lets the page load completely) and the node is
parsed back. Chromium's own console log (`--enable-logging=stderr`) is read too: the page must log
nothing at all (the log does not tell a message's level). No DevTools protocol, no Python browser package.

`screenshot(page, path, height)`: the original page at 1280 px wide, the whole page tall.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

WIDTH = 1280

CHECK_JS = r"""
(function () {
  var errors = [];
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
  window.addEventListener("error", function (ev) {
    var t = ev.target;
    if (t && t !== window && t.tagName) {
      errors.push("failed to load: <" + t.tagName.toLowerCase() + "> " + String(t.src || t.href || "").slice(0, 60));
    } else {
      errors.push("uncaught: " + ev.message);
    }
  }, true);
  window.addEventListener("unhandledrejection", function (ev) { errors.push("unhandled rejection: " + ev.reason); });
  window.addEventListener("load", function () {
    var root = document.documentElement;
    var res = {
      viewport: root.clientWidth, page_width: root.scrollWidth, height: root.scrollHeight,
      body_right: document.body.getBoundingClientRect().right,
      images: Array.prototype.map.call(document.images, function (i) {
        return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
      }),
      tables: Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
        var r = t.getBoundingClientRect();
        return {width: r.width, left: r.left, right: r.right, first: (t.innerText || "").slice(0, 40)};
      }),
      errors: errors
    };
    var pre = document.createElement("pre");
    pre.id = "algm-check";
    pre.textContent = JSON.stringify(res);
    document.body.appendChild(pre);
  });
})();
"""


def chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _flags(profile: Path, height: int) -> list[str]:
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
            "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}"]


#: a page's console message in Chromium's log (`...:INFO:CONSOLE:4] "text", source: URL (4)`; the level
#: in front is the logger's, not the message's, so every page message is reported)
_CONSOLE = re.compile(r"CONSOLE[^\]]*\] \"(.*)\", source: (.*)$")


def browser_check(page: Path, tmp: Path, timeout: float = 60) -> dict:
    """The checks of the module doc on `page`; returns the JSON the page wrote, plus `console`: the
    page's messages in Chromium's log, and `bad_images`, `wide_tables`: the failures."""
    tmp.mkdir(parents=True, exist_ok=True)
    text = Path(page).read_text(encoding="utf-8")
    m = re.search(r"<head[^>]*>", text, flags=re.I)
    if not m:
        raise AssertionError(f"{page} has no <head>")
    copy = tmp / "checked.html"
    copy.write_text(text[:m.end()] + f"<script>{CHECK_JS}</script>" + text[m.end():], encoding="utf-8")
    cmd = _flags(tmp / "profile-check", 1000) + ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
                                                  "--dump-dom", copy.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    node = re.search(r'<pre id="algm-check">(.*?)</pre>', p.stdout, flags=re.S)
    if not node:
        raise AssertionError(f"the check script wrote no result (chromium exit {p.returncode}): "
                             f"{p.stderr[-1500:]}")
    import html

    res = json.loads(html.unescape(node.group(1)))
    res["console"] = [f"{mm.group(1)} ({mm.group(2)})" for mm in map(_CONSOLE.search, p.stderr.splitlines()) if mm]
    res["bad_images"] = [i for i in res["images"] if not i["complete"] or i["width"] <= 0 or i["height"] <= 0]
    limit = res["viewport"] + 0.5
    res["wide_tables"] = [t for t in res["tables"] if t["right"] > limit or t["left"] < -0.5]
    return res


def screenshot(page: Path, path: Path, height: int, tmp: Path, timeout: float = 60) -> Path:
    """A PNG of `page` at 1280 px wide and `height` px tall (the whole page: pass its scroll height)."""
    height = int(min(max(height, 600), 16000))
    cmd = _flags(tmp / "profile-shot", height) + [f"--screenshot={path}", Path(page).as_uri()]
    subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return path
