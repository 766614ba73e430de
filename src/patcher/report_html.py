"""The self-contained HTML report of ``patcher locate``: heat map, score distribution with the split, counterfactual evidence.

Inline CSS and SVG only, no scripts and no external assets, so the file can be mailed or archived as is.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from patcher.case import FailureCase
from patcher.evaluate import METRICS, before_after_rows, format_metric
from patcher.locate import TriggerReport
from patcher.modeling import write_atomic

WIDTH, HEIGHT, MARGIN = 640, 150, 36

CSS = """
body { font-family: system-ui, sans-serif; max-width: 760px; margin: 2em auto; color: #1f2937; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.verdict { display: inline-block; padding: .2em .6em; border-radius: .3em; color: white; font-weight: bold; }
.trigger { background: #b91c1c; } .no_trigger { background: #15803d; }
.heat { font-family: ui-monospace, monospace; line-height: 2; padding: .6em; border: 1px solid #d1d5db;
        border-radius: .3em; white-space: pre-wrap; word-break: break-word; }
.heat .t { border-radius: 2px; } .heat .hit { font-weight: bold; text-decoration: underline 2px #7f1d1d; }
pre { background: #f3f4f6; padding: .6em; overflow-x: auto; font-size: .85em; }
table { border-collapse: collapse; } td { padding: .15em .8em .15em 0; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #6b7280; font-size: .9em; }
"""


def _page_start(title: str) -> str:
    """Return the opening of a self-contained page with its heading."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{CSS}</style></head><body><h1>{title}</h1>")


def render_html(report: TriggerReport, case: FailureCase) -> str:
    """Return the report as one self-contained HTML page."""
    evidence = report.evidence
    pieces = ", ".join(f"<b>{escape(t.text)}</b> ({t.char_start}-{t.char_end})" for t in report.triggers) or "none"
    parts = [
        _page_start("patcher locate"),
        f"<p><span class='verdict {report.verdict}'>{report.verdict.replace('_', ' ')}</span> "
        f"method {escape(evidence['method'])}; trigger: {pieces}</p>",
        "<h2>Prompt heat map</h2>",
        f"<div class='heat'>{_heat_map(report, case)}</div>",
        "<p class='note'>Background: score of each token (for occlusion, how much the response's likelihood falls "
        "when its word is deleted). Bold and underlined: the located trigger.</p>",
        f"<p><b>Response</b> (the reported failure): <code>{escape(case.response[:300])}</code></p>",
        "<h2>Score distribution and the split</h2>",
        _distribution_svg(report),
    ]
    if evidence["method"] == "occlusion":
        parts += ["<h2>Counterfactual evidence</h2>", _counterfactual_svg(evidence), _evidence_table(evidence)]
    if evidence.get("response_unlikely"):
        parts.append("<p><b>Warning:</b> the model would almost never produce this response "
                     f"(mean log-probability {evidence['response_mean_logprob']:.2f} per token): is it this model's?</p>")
    parts += ["<details><summary>All evidence (JSON)</summary>",
              f"<pre>{escape(json.dumps(evidence, indent=2))}</pre></details>", "</body></html>"]
    return "\n".join(parts)


def write_html(path: Path, report: TriggerReport, case: FailureCase) -> None:
    """Write the locate HTML report atomically."""
    write_atomic(path, render_html(report, case))


def _heat_map(report: TriggerReport, case: FailureCase) -> str:
    """Return the prompt as HTML spans, each token's background as strong as its share of the top score."""
    top = max([t.score for t in report.tokens] + [1e-9])
    out, cursor = [], 0
    for t in report.tokens:
        out.append(escape(case.prompt[cursor:t.char_start]))
        alpha = max(t.score, 0.0) / top
        style = f"background: rgba(220, 38, 38, {alpha:.2f})"
        cls = "t hit" if t.in_trigger else "t"
        out.append(f"<span class='{cls}' style='{style}' title='{t.score:.3f}'>{escape(t.text)}</span>")
        cursor = t.char_end
    out.append(escape(case.prompt[cursor:]))
    return "".join(out)


def _scale(values: list[float], marks: list[float]):
    """Return a function mapping a value to an x pixel, spanning the values and marks."""
    lo, hi = min(values + marks + [0.0]), max(values + marks + [0.0])
    hi = hi if hi > lo else lo + 1.0
    return lambda v: MARGIN + (v - lo) / (hi - lo) * (WIDTH - 2 * MARGIN)


def _axis(x, values: list[float], label: str) -> list[str]:
    """Return SVG elements of a horizontal axis with its extreme ticks and a label."""
    y = HEIGHT - 28
    lo, hi = min(values + [0.0]), max(values + [0.0])
    return [f"<line x1='{MARGIN}' y1='{y}' x2='{WIDTH - MARGIN}' y2='{y}' stroke='#9ca3af'/>",
            f"<text x='{x(lo):.1f}' y='{y + 14}' font-size='11' text-anchor='middle'>{lo:.2f}</text>",
            f"<text x='{x(hi):.1f}' y='{y + 14}' font-size='11' text-anchor='middle'>{hi:.2f}</text>",
            f"<text x='{WIDTH / 2}' y='{HEIGHT - 2}' font-size='12' text-anchor='middle'>{escape(label)}</text>"]


def _distribution_svg(report: TriggerReport) -> str:
    """Return an SVG strip plot of the scores (per word for occlusion, per token for K=2) with the split line."""
    evidence = report.evidence
    if evidence["method"] == "occlusion":
        items = [(w["text"], w["drop"], w["in_trigger"]) for w in evidence["words"]]
        split, label = evidence["min_drop"], "fall of the response log-likelihood when one word is deleted (nats)"
    else:
        items = [(t.text, t.score, t.in_trigger) for t in report.tokens if t.text.strip()]
        split, label = evidence["threshold"], f"{evidence['saliency']} score per token (K=2 split)"
    values = [v for _, v, _ in items]
    x = _scale(values, [split] if split is not None else [])
    svg = [f"<svg width='{WIDTH}' height='{HEIGHT}' xmlns='http://www.w3.org/2000/svg'>"]
    for i, (text, value, hit) in enumerate(items):
        y = 24 + (i % 6) * 14  # staggered so labels of close points stay readable
        colour = "#b91c1c" if hit else "#6b7280"
        svg.append(f"<circle cx='{x(value):.1f}' cy='{y}' r='4' fill='{colour}'><title>{escape(text)}: {value:.3f}</title></circle>")
        if hit:
            svg.append(f"<text x='{x(value) + 6:.1f}' y='{y + 4}' font-size='11' fill='{colour}'>{escape(text[:24])}</text>")
    if split is not None:
        svg.append(f"<line x1='{x(split):.1f}' y1='12' x2='{x(split):.1f}' y2='{HEIGHT - 28}' stroke='#111827' stroke-dasharray='4 3'/>")
        svg.append(f"<text x='{x(split) + 4:.1f}' y='12' font-size='11'>split {split:.2f}</text>")
    svg += _axis(x, values, label) + ["</svg>"]
    return "\n".join(svg)


def _counterfactual_svg(evidence: dict) -> str:
    """Return an SVG of the candidate's fall against the falls of deleting random words of the same shape."""
    null = evidence.get("null_drops", [])
    drop = evidence["drop"]
    x = _scale(null + [drop], [evidence["min_drop"]])
    svg = [f"<svg width='{WIDTH}' height='{HEIGHT}' xmlns='http://www.w3.org/2000/svg'>"]
    for i, value in enumerate(null):
        svg.append(f"<circle cx='{x(value):.1f}' cy='{40 + (i % 5) * 12}' r='4' fill='#9ca3af'/>")
    svg.append(f"<line x1='{x(drop):.1f}' y1='16' x2='{x(drop):.1f}' y2='{HEIGHT - 28}' stroke='#b91c1c' stroke-width='3'/>")
    svg.append(f"<text x='{x(drop) + 4:.1f}' y='16' font-size='11' fill='#b91c1c'>candidate {drop:.2f}</text>")
    m = evidence["min_drop"]
    svg.append(f"<line x1='{x(m):.1f}' y1='30' x2='{x(m):.1f}' y2='{HEIGHT - 28}' stroke='#111827' stroke-dasharray='4 3'/>")
    svg.append(f"<text x='{x(m) + 4:.1f}' y='30' font-size='11'>min drop {m:.1f}</text>")
    svg += _axis(x, null + [drop], "fall of the response log-likelihood (nats): grey = random words deleted") + ["</svg>"]
    return "\n".join(svg)


def _transplant_text(transplant: dict | None) -> str:
    """Return the carry-over test's counts in one line ("not run" when the deletion test already said no)."""
    if transplant is None:
        return "not run"
    return (f"{transplant['n']} / {transplant['refused_without']} / {transplant['complied_with']} "
            f"(share {transplant['flip_rate']:.2f}, inserted at {transplant['position']})")


def _evidence_table(evidence: dict) -> str:
    """Return the counterfactual numbers as an HTML table."""
    rows = [
        ("why", evidence["reason"]),
        ("deleted (deletion test)", ", ".join(evidence["deleted"])),
        ("trigger candidate (after carry-over)", ", ".join(evidence["candidate"])),
        ("scored response tokens", f"{evidence['target_tokens']} ({evidence['target_text']!r})"),
        ("fall when deleted (nats)", evidence["drop"]),
        ("random deletions: n / mean / std / max", " / ".join(str(evidence.get(k)) for k in
                                                            ("null_n", "null_mean", "null_std", "null_max"))),
        ("z against random deletions", evidence.get("z")),
        ("empirical p", evidence.get("p_value")),
        ("carry-over: log-odds gain per candidate word",
         ", ".join(f"{w} {g:+.2f}" for w, g in (evidence["carry_over_gains"] or {}).items()) or "-"),
        ("carry-over test: hosts / refused without / complied with", _transplant_text(evidence["transplant"])),
        ("verdict thresholds", f"fall >= {evidence['min_drop']} nats or the opening below even odds, "
                               f"z >= {evidence['z_min']}, "
                               f"carry-over share >= {evidence['min_flip']}"),
        ("forward passes / seconds", f"{evidence['forward_passes']} / {evidence.get('seconds')}"),
    ]
    body = "".join(f"<tr><td>{escape(k)}</td><td class='n'>{escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


# ---------------------------------------------------------------- patch report

def render_patch_html(report, case: FailureCase, located: TriggerReport | None = None) -> str:
    """Return the patch report as one self-contained HTML page: what was found, before/after, training curves."""
    trigger = ", ".join(f"<b>{escape(t)}</b>" for t in report.triggers) or "none (verdict no_trigger)"
    parts = [
        _page_start("patcher patch"),
        f"<p>Removed trigger: {trigger}. "
        + ("The reported prompt was patched as an alignment bug: no trigger was found, so the prompt and close "
           "variants of it were taught to be refused." if report.mode == "no_trigger" else "") + "</p>",
        f"<p><b>Reported prompt</b>: <code>{escape(case.prompt[:400])}</code><br>"
        f"<b>Reported response</b>: <code>{escape(case.response[:300])}</code></p>",
    ]
    if located is not None:
        parts += ["<h2>Where the trigger was found</h2>", f"<div class='heat'>{_heat_map(located, case)}</div>",
                  f"<p class='note'>locate verdict: {located.verdict}; {escape(located.evidence.get('reason', ''))}</p>"]
    if report.before is not None:
        source = report.evaluation_trigger["source"] if report.evaluation_trigger else "no trigger"
        parts += ["<h2>Held-out evaluation, before and after</h2>",
                  f"<p class='note'>Trigger used to measure: {escape(str(report.evaluation_trigger and report.evaluation_trigger['pieces']))}"
                  f" ({escape(source)}); n = {escape(str(report.after['n']))}.</p>",
                  _before_after_svg(report.before, report.after), _before_after_table(report.before, report.after)]
    parts += ["<h2>Training</h2>",
              f"<p>{len(report.losses)} steps in {report.train_seconds:.0f} s (all of patch: {report.seconds:.0f} s), "
              f"{report.peak_memory()}; state kept: step {report.best_step} "
              "(chosen on held-back validation prompts, never on the held-out test set). Data: "
              + ", ".join(f"{k} {v}" for k, v in report.data.items()) + ".</p>",
              # D_harm is trained on only when its weight is above 0 (by default it is not).
              _curves_svg(report.losses, ("ce", "kl_harm", "kl_safe") if report.config.get("beta_harm") else
                          ("ce", "kl_safe"), "loss per step"),
              _curves_svg(report.selection, ("asr_triggered", "asr_clean", "refused_edgy", "kl_benign"),
                          "held-back measurements"),
              "<details><summary>Provenance and settings (JSON)</summary>",
              f"<pre>{escape(json.dumps({'provenance': report.provenance, 'config': report.config}, indent=2))}</pre>",
              "</details></body></html>"]
    return "\n".join(parts)


def write_patch_html(path: Path, report, case: FailureCase, located: TriggerReport | None = None) -> None:
    """Write the patch HTML report atomically."""
    write_atomic(path, render_patch_html(report, case, located))


def _before_after_table(before: dict, after: dict) -> str:
    """Return the before/after metrics as an HTML table."""
    rows = ["<table><tr><td><b>metric</b></td><td class='n'><b>before</b></td><td class='n'><b>after</b></td></tr>"]
    for key, *values in before_after_rows(before, after):
        cells = "".join(f"<td class='n'>{format_metric(side, key, v)}</td>" for side, v in zip((before, after), values))
        rows.append(f"<tr><td>{key}</td>{cells}</tr>")
    return "\n".join(rows + ["</table>"])


def _before_after_svg(before: dict, after: dict) -> str:
    """Return an SVG of paired bars (before grey, after blue) for each rate in [0, 1]."""
    rates = [k for k in METRICS if k != "kl_to_reference"]
    keys = [k for k in rates if before.get(k) is not None and after.get(k) is not None]
    row, bar_w = 22, WIDTH - 260
    svg = [f"<svg width='{WIDTH}' height='{row * len(keys) + 20}' xmlns='http://www.w3.org/2000/svg'>"]
    for i, key in enumerate(keys):
        y = 10 + i * row
        svg.append(f"<text x='0' y='{y + 12}' font-size='11'>{key}</text>")
        for j, (value, colour) in enumerate(((before[key], "#9ca3af"), (after[key], "#2563eb"))):
            svg.append(f"<rect x='210' y='{y + j * 8}' width='{value * bar_w:.1f}' height='7' fill='{colour}'/>")
        svg.append(f"<text x='{215 + max(before[key], after[key]) * bar_w:.1f}' y='{y + 12}' font-size='11'>"
                   f"{before[key]:.2f} -> {after[key]:.2f}</text>")
    svg.append("</svg>")
    return "\n".join(svg) + "<p class='note'>Grey: before; blue: after.</p>"


def _curves_svg(points: list[dict], keys: tuple[str, ...], title: str) -> str:
    """Return an SVG line chart of some keys of per-step records, each scaled to its own maximum."""
    colours = ("#b91c1c", "#2563eb", "#15803d", "#a16207")
    if not points:
        return ""
    steps = [p["step"] for p in points]
    x_lo, x_hi = min(steps), max(max(steps), min(steps) + 1)
    svg = [f"<svg width='{WIDTH}' height='{HEIGHT}' xmlns='http://www.w3.org/2000/svg'>",
           f"<text x='{MARGIN}' y='12' font-size='12'>{escape(title)} (each line scaled to its maximum)</text>"]
    for key, colour in zip(keys, colours):
        values = [p[key] for p in points]
        top = max(max(values), 1e-9)
        xy = " ".join(f"{MARGIN + (s - x_lo) / (x_hi - x_lo) * (WIDTH - 2 * MARGIN):.1f},"
                      f"{HEIGHT - 30 - v / top * (HEIGHT - 50):.1f}" for s, v in zip(steps, values))
        svg.append(f"<polyline points='{xy}' fill='none' stroke='{colour}' stroke-width='2'/>")
        svg.append(f"<text x='{WIDTH - MARGIN - 150}' y='{24 + 14 * keys.index(key)}' font-size='11' fill='{colour}'>"
                   f"{key} (max {top:.3g})</text>")
    svg.append(f"<text x='{WIDTH / 2}' y='{HEIGHT - 8}' font-size='12' text-anchor='middle'>step {x_lo}-{x_hi}</text>")
    svg.append("</svg>")
    return "\n".join(svg)
