"""The status page: one self-contained HTML document for operations staff.

The page is rendered on the server from `Observability.status()`, so it
reads well without scripts, and its inline script then fetches
`/status.json` every two seconds and redraws the same parts. Nothing is
loaded from anywhere else. Every value from the rules or the events (rule
names, parameters, explanations) can hold markup written by whoever wrote a
rule file, so the server escapes all of it and the script only ever sets
`textContent`, never HTML.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from html import escape
from typing import Any

import orjson

__all__ = ["explain_briefly", "render_status_page"]

# The chart's drawing box; one point per second of a ten-minute span.
_CHART_WIDTH = 600
_CHART_HEIGHT = 100


def explain_briefly(why: Mapping[str, Any]) -> str:
    """Return an action's reasons in one line: condition, value, events."""
    parts = [str(why.get("condition") or "condition not recorded")]
    if why.get("value") is not None:
        parts.append(f"value seen {_show(why['value'])}")
    events = why.get("events") or []
    parts.append(f"{len(events)} {'event' if len(events) == 1 else 'events'}")
    parts.append(f"rules version {why.get('rules_version') or 'not recorded'}")
    return "; ".join(parts)


def render_status_page(status: Mapping[str, Any], nonce: str) -> str:
    """Return the status page with the data of `status` already in place.

    Args:
        status: What `Observability.status()` returns.
        nonce: The Content-Security-Policy nonce of the inline style and
            script; a fresh one per response.
    """
    counts = status["counts"]
    rates = status["rates"]
    minutes = rates["seconds"] // 60
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Rules engine status</title>
<style nonce="{escape(nonce)}">{_STYLE}</style>
</head>
<body>
<header>
  <h1>Rules engine</h1>
  {_badges(status)}
  <span class="muted">as of <span id="now">{escape(status["now"])}</span></span>
  <span id="offline" class="badge bad" hidden>status server unreachable</span>
</header>
{_stale_box(status)}
<main>
<section class="row">
  <div class="card">
    <h2>Tier</h2>
    <p id="tier-name" class="tier">{_text(status["tier"]["name"] or "none")}</p>
    <table id="tier-config">{_tier_rows(status["tier"]["config"])}</table>
  </div>
  <div class="card">
    <h2>Events</h2>
    <table id="counts">{_count_rows(counts)}</table>
  </div>
</section>
<section class="row">
  {_chart("events", "Events per second", rates["events"], minutes)}
  {_chart("actions", "Actions per second", rates["actions"], minutes)}
</section>
<section class="card">
  <h2>Recent actions <span class="muted">newest first</span></h2>
  <div class="scroll">
  <table class="list">
    <thead><tr><th>event time</th><th>rule</th><th>action</th><th>outcome</th>
    <th>params</th><th>why</th></tr></thead>
    <tbody id="actions">{_action_rows(status["actions"])}</tbody>
  </table>
  </div>
</section>
<section class="card">
  <h2>Rules <span class="muted">version
  <code id="rules-version">{_text(status["rules"]["version"] or "none")}</code>,
  loaded <span id="rules-loaded">{_text(status["rules"]["loaded_at"] or "never")}
  </span></span></h2>
  <table class="list">
    <thead><tr><th>name</th><th>kind</th><th>mode</th><th>priority</th>
    <th>file</th></tr></thead>
    <tbody id="rules">{_rule_rows(status["rules"]["rules"])}</tbody>
  </table>
</section>
</main>
<script nonce="{escape(nonce)}">{_SCRIPT}</script>
</body>
</html>
"""


def _text(value: Any) -> str:
    return escape(str(value))


def _show(value: Any) -> str:
    # Compact JSON, as the script's JSON.stringify writes it.
    return orjson.dumps(value).decode()


def _badges(status: Mapping[str, Any]) -> str:
    alive = status["health"]["alive"]
    ready = status["readiness"]["ready"]
    reason = status["readiness"]["reason"]
    return (
        f'<span id="health" class="badge {"good" if alive else "bad"}">'
        f"{'alive' if alive else 'stalled'}</span>\n"
        f'  <span id="ready" class="badge {"good" if ready else "bad"}" '
        f'title="{_text(reason)}">{"ready" if ready else "not ready"}</span>'
    )


def _stale_box(status: Mapping[str, Any]) -> str:
    reload = status["reload"]
    stale = reload is not None and not reload["ok"]
    at = reload["at"] if reload else ""
    problems = "\n".join(reload["problems"]) if reload else ""
    version = status["rules"]["version"] or "none"
    return (
        f'<div id="stale" class="stale"{"" if stale else " hidden"}>'
        f'<strong>The rules on disk failed to load at <span id="stale-at">'
        f'{_text(at)}</span>; version <code id="stale-version">{_text(version)}'
        "</code> keeps running.</strong>"
        f'<pre id="stale-problems">{_text(problems)}</pre></div>'
    )


def _tier_rows(config: Mapping[str, Any] | None) -> str:
    if not config:
        return '<tr><td class="muted">no tiers defined</td></tr>'
    return _rows(
        config.items(),
        lambda item: [(item[0], "head"), (_settings_text(item[1]), "")],
    )


def _settings_text(values: Any) -> str:
    if not isinstance(values, Mapping):
        return _show(values)
    return ", ".join(f"{key} {_show(value)}" for key, value in values.items())


def _count_rows(counts: Mapping[str, Any]) -> str:
    return _rows(
        counts.items(),
        lambda item: [
            (item[0], "head"),
            ("unknown" if item[1] is None else str(item[1]), "num"),
        ],
    )


def _chart(name: str, title: str, series: list[int], minutes: int) -> str:
    peak = max(series, default=0)
    return f"""<div class="card chart">
    <h2>{_text(title)} <span class="muted">last {minutes} minutes, peak
    <span id="{name}-peak">{peak}</span></span></h2>
    <svg viewBox="0 0 {_CHART_WIDTH} {_CHART_HEIGHT}" preserveAspectRatio="none"
      role="img" aria-label="{_text(title)}">
      <line class="axis" x1="0" y1="{_CHART_HEIGHT}" x2="{_CHART_WIDTH}"
        y2="{_CHART_HEIGHT}"/>
      <polyline id="{name}-line" points="{_chart_points(series)}"/>
    </svg>
    <div class="axis-labels"><span>-{minutes} min</span><span>now</span></div>
  </div>"""


def _chart_points(series: list[int]) -> str:
    if not series:
        return ""
    peak = max(max(series), 1)
    step = _CHART_WIDTH / max(len(series) - 1, 1)
    # A margin at the top keeps the peak's line from being cut in half.
    scale = (_CHART_HEIGHT - 4) / peak
    return " ".join(
        f"{index * step:.1f},{_CHART_HEIGHT - value * scale:.1f}"
        for index, value in enumerate(series)
    )


def _rows(items: Iterable[Any], cells: Callable[[Any], list[tuple[str, str]]]) -> str:
    """Return table rows; a cell is (text, CSS class), class "head" makes a th."""
    rows = []
    for item in items:
        row = ""
        for text, css in cells(item):
            if css == "head":
                row += f"<th>{_text(text)}</th>"
            elif css:
                row += f'<td class="{css}">{_text(text)}</td>'
            else:
                row += f"<td>{_text(text)}</td>"
        rows.append(f"<tr>{row}</tr>")
    return "".join(rows)


def _action_rows(actions: list[Mapping[str, Any]]) -> str:
    if not actions:
        return '<tr><td colspan="6" class="muted">no actions yet</td></tr>'
    return _rows(
        actions,
        lambda a: [
            (a["at"], "nowrap"),
            (a["rule"], "nowrap"),
            (a["action"], "nowrap"),
            (a["outcome"], f"outcome {a['outcome']}"),
            (_show(a["params"]), "code"),
            (explain_briefly(a["why"]), ""),
        ],
    )


def _rule_rows(rules: list[Mapping[str, Any]]) -> str:
    if not rules:
        return '<tr><td colspan="5" class="muted">no rules loaded</td></tr>'
    return _rows(
        rules,
        lambda r: [
            (r["name"], ""),
            (r["kind"], ""),
            (r["mode"], ""),
            (str(r["priority"]), ""),
            (f"{r['file']}:{r['line']}", "code"),
        ],
    )


_STYLE = """
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328;
  background: #f6f8fa; }
header { display: flex; gap: .75rem; align-items: center; padding: .75rem 1.25rem;
  background: #fff; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.25rem; margin: 0 .5rem 0 0; }
h2 { font-size: 1rem; margin: 0 0 .5rem; }
main { padding: 1rem 1.25rem; display: grid; gap: 1rem; }
.row { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr));
  gap: 1rem; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: .75rem 1rem; min-width: 0; }
.muted { color: var(--muted); font-weight: normal; }
.badge { border-radius: 1rem; padding: .1rem .6rem; font-size: .8rem;
  font-weight: 600; }
.good { background: #dafbe1; color: #116329; }
.bad { background: #ffebe9; color: #a40e26; }
.stale { margin: 1rem 1.25rem 0; padding: .75rem 1rem; background: #fff8c5;
  border: 1px solid #d4a72c; border-radius: 6px; }
.stale pre { white-space: pre-wrap; margin: .5rem 0 0; font-size: .8rem; }
.tier { font-size: 1.6rem; font-weight: 700; margin: 0 0 .5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .2rem .5rem .2rem 0; }
.list th { border-bottom: 1px solid var(--line); font-size: .8rem;
  color: var(--muted); }
.list td { border-bottom: 1px solid #eaeef2; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.code, code { font-family: ui-monospace, monospace; font-size: .8rem;
  word-break: break-all; }
.nowrap { white-space: nowrap; }
.outcome.ok { color: #116329; } .outcome.failed { color: #a40e26; }
.outcome.shadow { color: var(--muted); }
.scroll { max-height: 28rem; overflow: auto; }
.chart svg { width: 100%; height: 8rem; display: block; }
.chart polyline { fill: none; stroke: #0969da; stroke-width: 1.5;
  vector-effect: non-scaling-stroke; }
.chart .axis { stroke: var(--line); vector-effect: non-scaling-stroke; }
.axis-labels { display: flex; justify-content: space-between; font-size: .75rem;
  color: var(--muted); }
"""

# The script mirrors the Python renderers above; it builds elements and sets
# their text, so no value from the server is ever parsed as HTML.
_SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
// The chart box is the one the server drew the first lines in.
const box = $("events-line").ownerSVGElement.viewBox.baseVal;
const W = box.width, H = box.height;
const show = (value) => JSON.stringify(value);

function explainBriefly(why) {
  const parts = [why.condition || "condition not recorded"];
  if (why.value !== undefined && why.value !== null) {
    parts.push("value seen " + show(why.value));
  }
  const n = (why.events || []).length;
  parts.push(n + (n === 1 ? " event" : " events"));
  parts.push("rules version " + (why.rules_version || "not recorded"));
  return parts.join("; ");
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, css] of cells) {
    const td = document.createElement(css === "head" ? "th" : "td");
    td.textContent = text;
    if (css && css !== "head") td.className = css;
    tr.appendChild(td);
  }
  return tr;
}

function fill(id, items, cells, empty, span) {
  const rows = items.map((item) => row(cells(item)));
  if (rows.length === 0) {
    const tr = row([[empty, "muted"]]);
    if (span) tr.firstChild.colSpan = span;
    rows.push(tr);
  }
  $(id).replaceChildren(...rows);
}

function points(series) {
  if (series.length === 0) return "";
  const peak = Math.max(1, ...series);
  const step = W / Math.max(series.length - 1, 1);
  const scale = (H - 4) / peak;
  return series.map((v, i) =>
    (i * step).toFixed(1) + "," + (H - v * scale).toFixed(1)).join(" ");
}

function badge(id, good, text, title) {
  const el = $(id);
  el.textContent = text;
  el.className = "badge " + (good ? "good" : "bad");
  if (title !== undefined) el.title = title;
}

function settingsText(values) {
  if (values === null || typeof values !== "object") return show(values);
  return Object.entries(values).map(([k, v]) => k + " " + show(v)).join(", ");
}

function render(s) {
  $("now").textContent = s.now;
  badge("health", s.health.alive, s.health.alive ? "alive" : "stalled");
  badge("ready", s.readiness.ready, s.readiness.ready ? "ready" : "not ready",
        s.readiness.reason);
  const stale = s.reload !== null && !s.reload.ok;
  $("stale").hidden = !stale;
  $("stale-at").textContent = s.reload ? s.reload.at : "";
  $("stale-version").textContent = s.rules.version || "none";
  $("stale-problems").textContent = s.reload ? s.reload.problems.join("\\n") : "";
  $("tier-name").textContent = s.tier.name || "none";
  fill("tier-config", Object.entries(s.tier.config || {}),
       ([section, values]) => [[section, "head"], [settingsText(values), ""]],
       "no tiers defined");
  fill("counts", Object.entries(s.counts), ([name, value]) =>
       [[name, "head"], [value === null ? "unknown" : String(value), "num"]], "");
  for (const name of ["events", "actions"]) {
    $(name + "-line").setAttribute("points", points(s.rates[name]));
    $(name + "-peak").textContent = String(Math.max(0, ...s.rates[name]));
  }
  fill("actions", s.actions, (a) => [
    [a.at, "nowrap"], [a.rule, "nowrap"], [a.action, "nowrap"],
    [a.outcome, "outcome " + a.outcome], [show(a.params), "code"],
    [explainBriefly(a.why), ""]], "no actions yet", 6);
  $("rules-version").textContent = s.rules.version || "none";
  $("rules-loaded").textContent = s.rules.loaded_at || "never";
  fill("rules", s.rules.rules, (r) => [
    [r.name, ""], [r.kind, ""], [r.mode, ""], [String(r.priority), ""],
    [r.file + ":" + r.line, "code"]], "no rules loaded", 5);
}

async function refresh() {
  try {
    const response = await fetch("/status.json", {cache: "no-store"});
    if (!response.ok) throw new Error(String(response.status));
    render(await response.json());
    $("offline").hidden = true;
  } catch (error) {
    $("offline").hidden = false;
  }
}

setInterval(refresh, 2000);
"""
