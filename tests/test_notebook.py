"""Charts shown in Jupyter draw offline (issue 26): mi_probe._core.notebook's renderer.

Altair's default renderer loads Vega from a CDN, so charts are blank without network.
These tests check the renderer's MIME bundle in-process, run its script in Node (when
there is one) with a stub page to see that the inlined bundle draws the chart, and
execute real notebooks with nbclient in a kernel of this virtual environment whose
network is blocked: the saved outputs must carry the chart's data and vega-embed
itself, and nothing that would fetch code.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import altair as alt
import polars as pl
import pytest

from mi_probe._core import notebook

#: What would make an output fetch code: a CDN host, or a script loaded by URL.
FETCHES = re.compile(r"cdn\.|jsdelivr|unpkg|<script[^>]*\bsrc\s*=", re.IGNORECASE)

#: The inlined bundle's last statement: vega-embed itself is in the output.
INLINE_EMBED = "window.vegaEmbed="

#: The inlined bundle alone is about 0.9 MB; an output is that plus its spec.
MAX_OUTPUT = 1_200_000


@pytest.fixture(autouse=True)
def _altair_renderer():
    """Each test leaves altair's renderer as it found it."""
    active, options = alt.renderers.active, dict(alt.renderers.options)
    yield
    alt.renderers.enable(active, **options)


def small_chart(values=("alpha-7", "beta-11")) -> alt.Chart:
    frame = pl.DataFrame({"variant": list(values), "score": [0.125, 0.875][:len(values)]})
    return alt.Chart(frame).mark_bar().encode(x="variant", y="score")


def vegalite(data: dict) -> dict:
    """The Vega-Lite spec of a MIME bundle, under ``application/vnd.vegalite.v<N>+json``
    (a ``+json`` type: nbformat lets no other ``vnd`` type hold a JSON object)."""
    (key,) = [k for k in data if k.startswith("application/vnd.vegalite.")]
    assert re.fullmatch(r"application/vnd\.vegalite\.v\d+\+json", key), key
    return data[key]


# ------------------------------------------------------------------ the MIME bundle

def test_the_renderer_inlines_vega_and_draws_into_a_div_of_its_own():
    chart = small_chart()
    (data, metadata), (again, _) = (notebook.inline_renderer(chart.to_dict()) for _ in range(2))
    page = data["text/html"]
    assert INLINE_EMBED in page and "alpha-7" in page and "0.875" in page
    assert not FETCHES.search(page)
    assert len(page) < MAX_OUTPUT
    ids = [re.search(r'<div id="(mi-probe-chart-[0-9a-f]+)"', p)[1]  # type: ignore[index]
           for p in (page, again["text/html"])]
    assert ids[0] != ids[1]  # two outputs on one page never draw into each other's div
    assert html.escape(notebook.NOT_DRAWN) in page  # what a reader sees where the script cannot run
    assert vegalite(data) == chart.to_dict() and data["text/plain"].startswith("<Altair chart")
    assert metadata == {}
    # the run's defaults: SVG, and no "open in Vega editor" link (it needs the network)
    assert '"editor": false' in page and '"renderer": "svg"' in page


def test_data_cannot_break_out_of_the_output_script():
    page = notebook.inline_renderer(small_chart(["</script><script>alert(1)</script>",
                                                 "<!--"]).to_dict())[0]["text/html"]
    assert page.count("</script>") == 1 and "<!--" not in page
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in page


def test_use_inline_renderer_leaves_a_renderer_the_user_chose():
    alt.renderers.enable("default")
    alt.renderers.set_embed_options(actions=False)
    notebook.use_inline_renderer()
    assert alt.renderers.active == notebook.RENDERER_NAME
    data, metadata = small_chart()._repr_mimebundle_()  # what Jupyter asks the chart for
    assert INLINE_EMBED in data["text/html"] and '"actions": false' in data["text/html"]
    vegalite_key = next(k for k in data if "vegalite" in k)
    assert metadata == {vegalite_key: {"embed_options": {"actions": False}}}
    notebook.use_inline_renderer()  # again: nothing changes
    assert alt.renderers.active == notebook.RENDERER_NAME

    alt.renderers.enable("png")
    notebook.use_inline_renderer()
    assert alt.renderers.active == "png"
    notebook.use_inline_renderer(force=True)
    assert alt.renderers.active == notebook.RENDERER_NAME


# ------------------------------------------------------------------ the script, in Node

#: Runs the <script> of one output (argv[2]) in Node against a stub page: once where an
#: earlier output already ran the bundle (the output must only call vega-embed, with its
#: own div and spec), then twice on a fresh page (the bundle must run, and run again for
#: a second output without redeclaring anything). The spec is then drawn headless to
#: SVG with the inlined vega-embed. Prints one JSON line.
NODE_DRIVER = r"""
const fs = require("fs"), vm = require("vm");
const page = fs.readFileSync(process.argv[2], "utf8");
const [, id, script] = page.match(
  /<div id="([^"]+)">[\s\S]*?<script type="text\/javascript">([\s\S]*)<\/script>/);
const key = script.match(/"(__mi_probe_vega_embed_[0-9a-f]+)"\);\s*$/)[1];
const errors = [];
console.error = (e) => errors.push(String(e));
function element(id) {
  return {id, textContent: "", innerHTML: "", style: {}, childNodes: [],
          classList: {add() {}, remove() {}}, appendChild() {}, append() {},
          setAttribute() {}, removeAttribute() {}, addEventListener() {},
          removeEventListener() {}, getRootNode() { return null; }};
}
const div = element(id);
globalThis.window = globalThis;
globalThis.document = {currentScript: {previousElementSibling: div},
                       getElementById: () => null, createElement: () => element("")};
const calls = [];
window[key] = (el, spec, opts) => { calls.push({el, spec, opts}); return Promise.resolve({}); };
vm.runInThisContext(script);
delete window[key];
vm.runInThisContext(script);
vm.runInThisContext(script);
const embed = window[key];
(async () => {
  const result = await embed(element("headless"), calls[0].spec,
    {actions: false, defaultStyle: false, tooltip: false, renderer: "none"});
  const svg = await result.view.toSVG();
  await new Promise((done) => setTimeout(done, 100));  // the stub-page draws fail: let them
  console.log(JSON.stringify({
    calledWithItsDiv: calls.length === 1 && calls[0].el === div, options: calls[0].opts,
    embed: typeof embed, globalsLeft: ["vega", "vegaLite", "vegaEmbed"].filter((n) => n in window),
    svg, errors}));
})().catch((e) => console.log(JSON.stringify({failed: String(e.stack)})));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the output's script")
def test_the_output_script_draws_the_chart_with_the_inlined_bundle(tmp_path):
    page = tmp_path / "output.html"
    page.write_text(notebook.inline_renderer(small_chart().to_dict())[0]["text/html"])
    driver = tmp_path / "driver.js"
    driver.write_text(NODE_DRIVER)
    done = subprocess.run(["node", str(driver), str(page)], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "failed" not in seen, seen.get("failed")
    assert seen["calledWithItsDiv"] and seen["embed"] == "function"
    assert seen["options"]["renderer"] == "svg" and seen["options"]["mode"] == "vega-lite"
    assert seen["globalsLeft"] == []  # the page's own vega globals are left as they were
    assert seen["svg"].startswith("<svg") and "alpha-7" in seen["svg"] and "beta-11" in seen["svg"]


# ------------------------------------------------------------------ real notebooks

#: First cell: the kernel is this virtual environment's Python, and any connection it
#: tries outside a Unix socket fails and is recorded (the kernel's own ZeroMQ sockets
#: are not Python sockets).
GUARD = f"""\
import socket, sys
assert sys.prefix == {sys.prefix!r}, sys.prefix
_tried = []
_connect = socket.socket.connect
def _no_network(self, address, *args):
    if self.family == getattr(socket, "AF_UNIX", None):
        return _connect(self, address, *args)
    _tried.append(address)
    raise OSError(f"network blocked by the test: {{address!r}}")
def _no_network_ex(self, address, *args):
    try:
        _no_network(self, address, *args)
    except OSError:
        return 111
    return 0
socket.socket.connect, socket.socket.connect_ex = _no_network, _no_network_ex
"""

#: Last cell: nothing tried the network.
NO_NETWORK_TRIED = 'assert not _tried, f"the kernel tried the network: {_tried}"'

#: Proxies that lead nowhere: an HTTP client that ignores the guard still cannot connect.
NOWHERE = "http://127.0.0.1:9"
KERNEL = "mi-probe-test-venv"


@pytest.fixture(scope="module")
def jupyter():
    """(nbformat, nbclient), or a skip when the [notebook] extra is not installed."""
    reason = "running notebooks needs the [notebook] extra (nbclient, nbformat, ipykernel)"
    nbformat = pytest.importorskip("nbformat", reason=reason)
    nbclient = pytest.importorskip("nbclient", reason=reason)
    pytest.importorskip("ipykernel", reason=reason)
    return nbformat, nbclient


def execute(jupyter, folder: Path, cells: list[str], monkeypatch) -> tuple[object, str]:
    """Run ``cells`` (between GUARD and NO_NETWORK_TRIED) in a fresh kernel of this
    Python; returns the executed notebook and the text of it saved to disk."""
    nbformat, nbclient = jupyter
    # a kernelspec of its own, naming this interpreter: never a "python3" found elsewhere
    spec_dir = folder / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    frozen = ["-Xfrozen_modules=off"] if sys.version_info >= (3, 11) else []
    proxies = {name: NOWHERE for name in ("http_proxy", "https_proxy", "all_proxy",
                                          "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, *frozen, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mi-probe tests", "language": "python",
        "env": {**proxies, "no_proxy": "", "NO_PROXY": "",
                "IPYTHONDIR": str(folder / "ipython")}}))
    monkeypatch.setenv("JUPYTER_PATH", str(folder / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(folder / "runtime"))

    new = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[new(GUARD), *map(new, cells), new(NO_NETWORK_TRIED)])
    nbclient.NotebookClient(nb, timeout=120, startup_timeout=90, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(folder)}}).execute()
    saved = folder / "executed.ipynb"
    nbformat.write(nb, saved)  # what a reader reopens
    return nb, saved.read_text()


def charts_of(cell) -> list[dict]:
    """The MIME bundles a cell displayed (its result and display() calls)."""
    return [out["data"] for out in cell.outputs
            if out["output_type"] in ("execute_result", "display_data")]


def assert_drawn_offline(data: dict, *values: str) -> None:
    page = data["text/html"]
    assert INLINE_EMBED in page and "mi-probe-chart-" in page
    assert all(v in page for v in values), [v for v in values if v not in page]
    assert not FETCHES.search(page), FETCHES.search(page)
    assert len(page) < MAX_OUTPUT


def test_a_chart_draws_offline_in_a_notebook(jupyter, tmp_path, monkeypatch):
    nb, saved = execute(jupyter, tmp_path, ["""\
from mi_probe._core.notebook import use_inline_renderer
use_inline_renderer()
import altair as alt
import polars as pl
frame = pl.DataFrame({"variant": ["alpha-7", "beta-11"], "score": [0.125, 0.875]})
alt.Chart(frame).mark_bar().encode(x="variant", y="score")
"""], monkeypatch)
    (data,) = charts_of(nb.cells[1])  # type: ignore[attr-defined]
    assert_drawn_offline(data, "alpha-7", "beta-11", "0.875")
    assert {"variant": "alpha-7", "score": 0.125} in next(iter(vegalite(data)["datasets"].values()))
    assert not FETCHES.search(saved) and saved.count(INLINE_EMBED) == 1


@pytest.fixture(scope="module")
def tiny_run(jupyter, tmp_path_factory, shared_cache, one_thread):
    """A complete tiny layer_mi run (one seed, one epoch: a few seconds)."""
    from conftest import TINY_SPEC

    import mi_probe

    out = tmp_path_factory.mktemp("notebook") / "run"
    result = mi_probe.run(TINY_SPEC, out=out, cache_dir=shared_cache, model__train__epochs=1,
                          progress=False, log=lambda line: None)
    assert result.status == "complete"
    return out


def test_run_figures_draw_offline_in_a_notebook(jupyter, tmp_path, monkeypatch, tiny_run):
    """``Run.figures`` enables the inline renderer itself: the notebook never calls it."""
    import mi_probe

    nb, saved = execute(jupyter, tmp_path, [f"""\
import mi_probe
run = mi_probe.load_run({str(tiny_run)!r})
run.figures["layer_i_ty"]
""", """\
from IPython.display import display
for name, chart in run.figures.items():
    display(chart)
"""], monkeypatch)
    run = mi_probe.load_run(tiny_run)
    figures = run.figures
    sites = sorted(set(run.tables["layer_mi"]["site"]))
    (first,) = charts_of(nb.cells[1])  # type: ignore[attr-defined]
    assert "mi-probe-chart-" in first["text/html"], (
        "Run.figures drew with altair's default renderer, which loads Vega from a CDN: "
        "Run.figures must call mi_probe._core.notebook.use_inline_renderer()")
    assert_drawn_offline(first, *sites)
    assert vegalite(first) == figures["layer_i_ty"].to_dict()
    shown = charts_of(nb.cells[2])  # type: ignore[attr-defined]
    assert [vegalite(d) for d in shown] == [c.to_dict() for c in figures.values()]
    for data in shown:
        assert_drawn_offline(data)
    assert not FETCHES.search(saved) and saved.count(INLINE_EMBED) == 1 + len(figures)
