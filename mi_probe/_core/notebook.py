"""Charts in Jupyter that draw offline: an Altair renderer with Vega inlined.

Altair's default renderer writes HTML whose script loads vega, vega-lite and
vega-embed from a CDN, so a chart shown in a notebook is blank without network (a
cluster node, a plane, a firewall). The renderer here draws the chart the way the
run's ``index.html`` does (:func:`mi_probe._core.report.chart_html`): the vega +
vega-lite + vega-embed bundle of vl-convert (the Vega-Lite version altair targets)
is inlined in the output, so nothing is fetched.

Each output carries the whole bundle (about 0.9 MB of JavaScript; one chart's
output is that plus its spec). Including it only once per notebook is not reliable:
outputs are drawn again, in whatever order the frontend chooses, when a notebook is
reopened (JupyterLab draws cells as they scroll into view), and an output that relied
on an earlier one would stay blank once that one is cleared or its cell deleted. So
every output is self-contained, and the page only *evaluates* the bundle once: the
first output that runs stores vega-embed under a page-wide key (one per bundle
version) and the others reuse it. The bundle runs inside a function, so two outputs on
one page never redeclare its top-level names, and the page's own ``vega``,
``vegaLite`` and ``vegaEmbed`` globals (another renderer's) are left as they were.

The chart is drawn into its own ``<div>`` (a fresh id per output, found from the
script as altair's template does, since JupyterLab runs the script before the output
is attached to the page). The div holds a line of text that says why a chart is
missing where scripts do not run (an untrusted notebook, a static viewer);
vega-embed replaces it with the chart. The MIME bundle also carries the spec under
the Vega-Lite MIME type (``application/vnd.vegalite.v6+json``), for frontends that
draw that type natively and for tools that read the spec from the saved notebook.
JupyterLab and Notebook 7 show the HTML all the same: they rank ``text/html`` above
their own Vega renderer, which knows Vega-Lite only up to v5.

:func:`use_inline_renderer` enables the renderer unless the user chose another one.
This module never imports torch.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import uuid
from typing import Any

#: The name the renderer is registered under (``alt.renderers.enable(RENDERER_NAME)``).
RENDERER_NAME = "mi_probe_inline"

#: Text in the chart's div until vega-embed draws over it: what a reader sees where
#: the output's script does not run.
NOT_DRAWN = ("This chart is drawn by the JavaScript in this output, which has not run "
             "here. In Jupyter, trust the notebook (jupyter trust NOTEBOOK, or File > "
             "Trust Notebook) or run the cell again.")


def _script_json(obj: Any) -> str:
    """``obj`` as a JavaScript literal safe inside ``<script>`` (no ``</script>`` or
    ``<!--`` breakout). NaN and infinities are written as JavaScript reads them (a
    user's chart may hold them; the run's charts never do)."""
    text = json.dumps(obj)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _bundle() -> tuple[str, str]:
    """(the vega + vega-lite + vega-embed bundle, safe inside ``<script>``; the page key
    its vega-embed is stored under). Built once per process (about 1 s), the same
    bundle the run's HTML figures inline."""
    from mi_probe._core.report import _js_bundle

    script = _js_bundle()
    key = "__mi_probe_vega_embed_" + hashlib.sha1(script.encode()).hexdigest()[:12]
    return re.sub(r"</(script)", r"<\\/\1", script, flags=re.IGNORECASE), key


def _mime_types() -> tuple[str, str]:
    """(Vega-Lite, Vega) MIME types for the versions altair targets, in the form
    JupyterLab uses (``application/vnd.vegalite.v6+json``).

    Not altair 6's own ``application/vnd.vegalite.v6.json``: nbformat lets only
    ``application/json`` and ``application/...+json`` types hold JSON objects, so a
    notebook holding the spec under that name fails validation when it is saved."""
    import altair as alt

    vegalite = alt.SCHEMA_VERSION.lstrip("v").split(".")[0]
    vega = str(alt.VEGA_VERSION).lstrip("v").split(".")[0]
    return (f"application/vnd.vegalite.v{vegalite}+json", f"application/vnd.vega.v{vega}+json")


def _vegafusion(spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(spec, is Vega): with altair's VegaFusion data transformer enabled the spec is
    compiled to Vega first, as altair's own renderers do; otherwise it is unchanged."""
    try:
        from altair.utils._vegafusion_data import (
            compile_with_vegafusion,
            using_vegafusion,
        )
    except ImportError:  # an altair without VegaFusion support
        return spec, False
    if using_vegafusion():
        return compile_with_vegafusion(spec), True
    return spec, False


def inline_renderer(spec: dict[str, Any], embed_options: dict[str, Any] | None = None,
                    **_ignored: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Altair renderer: the chart ``spec`` (a Vega-Lite dict) as a Jupyter MIME bundle
    that draws without network.

    ``text/html`` holds a div with a fresh id and a script with the Vega bundle inlined
    that draws the chart into it; the Vega-Lite MIME type holds the spec (with
    ``embed_options`` in its metadata, as altair's mimetype renderer does); ``text/plain``
    names the chart. ``embed_options`` (``alt.renderers.set_embed_options`` or
    ``chart.display(...)``) override the run's defaults: SVG, export and source actions,
    no "open in Vega editor" link (that needs the network). Options meant for other
    renderers are ignored.
    """
    from mi_probe._core.report import _EMBED_OPTIONS

    spec, is_vega = _vegafusion(spec)
    options: dict[str, Any] = {**_EMBED_OPTIONS, "mode": "vega" if is_vega else "vega-lite",
                               **(embed_options or {})}
    bundle, key = _bundle()
    div = f"mi-probe-chart-{uuid.uuid4().hex}"
    page = f"""<style>
  #{div}.vega-embed {{ width: 100%; display: flex; }}
  #{div}.vega-embed details, #{div}.vega-embed details summary {{ position: relative; }}
</style>
<div id="{div}"><p style="font-style: italic;">{html.escape(NOT_DRAWN)}</p></div>
<script type="text/javascript">
(function (spec, embedOpt, divId, key) {{
  var out = document.currentScript && document.currentScript.previousElementSibling;
  if (!out || out.id !== divId) {{ out = document.getElementById(divId); }}
  function fail(err) {{
    if (out) {{ out.textContent = "mi-probe: the chart could not be drawn: " + err; }}
    console.error(err);
  }}
  try {{
    if (typeof window[key] !== "function") {{
      var names = ["vega", "vegaLite", "vegaEmbed"], saved = {{}};
      names.forEach(function (n) {{ saved[n] = [n in window, window[n]]; }});
      (function () {{
{bundle}
      }}).call(window);
      window[key] = window.vegaEmbed;
      names.forEach(function (n) {{
        if (saved[n][0]) {{ window[n] = saved[n][1]; }} else {{ delete window[n]; }}
      }});
    }}
    window[key](out, spec, embedOpt).catch(fail);
  }} catch (err) {{
    fail(err);
  }}
}})({_script_json(spec)}, {_script_json(options)}, {_script_json(div)}, {_script_json(key)});
</script>
"""
    vegalite_mime, vega_mime = _mime_types()
    mime = vega_mime if is_vega else vegalite_mime
    text = "<Altair chart: drawn by its HTML output, with Vega inlined (no network needed)>"
    data = {"text/html": page, mime: spec, "text/plain": text}
    metadata = {mime: {"embed_options": embed_options}} if embed_options else {}
    return data, metadata


def use_inline_renderer(force: bool = False) -> None:
    """Show Altair charts in Jupyter with Vega inlined, so they draw offline.

    Registers :func:`inline_renderer` as ``"mi_probe_inline"`` and enables it when
    altair's active renderer is still its ``"default"`` (whose output loads Vega from a
    CDN), keeping any embed options set on it. A renderer the user chose
    (``alt.renderers.enable("mimetype")``, ``"png"``, ...) is left alone unless
    ``force``. Calling it again changes nothing; ``alt.renderers.enable("default")``
    undoes it.
    """
    import altair as alt

    alt.renderers.register(RENDERER_NAME, inline_renderer)
    active = alt.renderers.active
    if active == RENDERER_NAME or not (force or active == "default"):
        return
    alt.renderers.enable(RENDERER_NAME, **alt.renderers.options)
