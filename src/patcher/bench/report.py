"""The benchmark's Markdown table and self-contained HTML report (inline SVG plots, no scripts)."""

from __future__ import annotations

import json
from html import escape

from patcher.report_html import _page_start

TABLE_METRICS = (("asr_triggered", "ASR trig"), ("asr_clean", "ASR clean"), ("jailbreak_asr", "jailbreak"),
                 ("utility", "utility"), ("utility_with_trigger", "utility+trig"),
                 ("benign_refused_with_trigger", "benign+trig refused"), ("over_refusal", "over-refusal"))
COLOURS = ("#6b7280", "#a16207", "#ca8a04", "#65a30d", "#0891b2", "#7c3aed", "#2563eb", "#15803d", "#db2777", "#ea580c")


def rate(value) -> str:
    """Return a rate with two decimals, or - where there is none."""
    return "-" if value is None else f"{value:.2f}"


def _loc_cell(loc: dict | None) -> str:
    """Return the localization cell: verdict (with a mark when wrong), F1, exact."""
    if loc is None:
        return "-"
    cell = loc["verdict"] + ("" if loc["verdict_right"] else " ✗")
    if "f1" in loc:
        cell += f", F1 {loc['f1']:.2f}" + (" exact" if loc["exact"] else "")
    return cell


def _peak_cell(row: dict) -> str:
    """Return a row's peak memory: the process's resident MB, and the GPU's where the defense ran on one."""
    return str(row["peak_mb"]) + ("" if row["peak_gpu_mb"] is None else f" (GPU {row['peak_gpu_mb']})")


def markdown_table(rows: list[dict]) -> str:
    """Return one Markdown row per organism and defense: each metric after the defense (the organism's own value
    on the ``none`` row), localization, seconds and peak memory."""
    head = ["organism", "defense", *(label for _, label in TABLE_METRICS), "KL", "located", "s", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        after = r["after"]
        cells = [r["organism"], r["defense"], *(rate(after.get(k)) for k, _ in TABLE_METRICS),
                 "-" if after["kl_to_reference"] is None else f"{after['kl_to_reference']:.3f}",
                 _loc_cell(r["localization"]), f"{r['seconds']:.0f}", _peak_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matrix_table(rows: list[dict]) -> str:
    """Return a Markdown defense x organism matrix, each cell ASR with the trigger / utility / over-refusal after
    the defense; columns are named by attack where each attack has one organism, else by organism."""
    organisms = list(dict.fromkeys(r["organism"] for r in rows))
    attack_of = {r["organism"]: r["attack"] for r in rows}
    by_attack = len(set(attack_of.values())) == len(organisms)
    cells = {(r["organism"], r["defense"]): r["after"] for r in rows}
    lines = ["| defense | " + " | ".join(attack_of[o] if by_attack else o for o in organisms) + " |",
             "|---|" + "---|" * len(organisms)]
    for defense in dict.fromkeys(r["defense"] for r in rows):
        after = [cells.get((o, defense)) for o in organisms]
        lines.append(f"| {defense} | " + " | ".join(
            "" if a is None else f"{rate(a['asr_triggered'])} / {rate(a['utility'])} / {rate(a['over_refusal'])}"
            for a in after) + " |")
    return "\n".join(lines)


def _bars_svg(rows: list[dict], key: str, label: str) -> str:
    """Return an SVG bar chart of one metric per organism (groups) and defense (colours)."""
    organisms = list(dict.fromkeys(r["organism"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    bar, gap, left, width = 9, 14, 170, 420
    height = len(organisms) * (len(defenses) * bar + gap) + 30
    svg = [f"<svg width='{left + width + 60}' height='{height}' xmlns='http://www.w3.org/2000/svg'>",
           f"<text x='{left}' y='12' font-size='12'>{escape(label)} (0 to 1)</text>"]
    y = 22
    for organism in organisms:
        svg.append(f"<text x='0' y='{y + len(defenses) * bar / 2 + 4:.0f}' font-size='11'>{escape(organism)}</text>")
        for i, defense in enumerate(defenses):
            row = next((r for r in rows if r["organism"] == organism and r["defense"] == defense), None)
            value = None if row is None else row["after"][key]
            if value is not None:
                svg.append(f"<rect x='{left}' y='{y}' width='{value * width:.1f}' height='{bar - 1}' "
                           f"fill='{COLOURS[i % len(COLOURS)]}'><title>{escape(defense)}: {value:.2f}</title></rect>")
                svg.append(f"<text x='{left + value * width + 3:.1f}' y='{y + bar - 1}' font-size='9'>{value:.2f}</text>")
            y += bar
        y += gap
    svg.append("</svg>")
    return "\n".join(svg)


def _legend(defenses: list[str]) -> str:
    return " ".join(f"<span style='color:{COLOURS[i % len(COLOURS)]}'>■</span> {escape(d)}" for i, d in enumerate(defenses))


def _scatter_svg(rows: list[dict]) -> str:
    """Return an SVG scatter of utility (x) against triggered ASR (y), one point per organism and defense."""
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    size, pad = 320, 40
    svg = [f"<svg width='{size + 2 * pad}' height='{size + 2 * pad}' xmlns='http://www.w3.org/2000/svg'>",
           f"<rect x='{pad}' y='{pad}' width='{size}' height='{size}' fill='none' stroke='#9ca3af'/>",
           f"<text x='{pad + size / 2}' y='{size + 2 * pad - 6}' font-size='12' text-anchor='middle'>utility</text>",
           f"<text x='12' y='{pad + size / 2}' font-size='12' transform='rotate(-90 12 {pad + size / 2})' "
           "text-anchor='middle'>ASR with trigger</text>",
           f"<text x='{pad}' y='{size + pad + 14}' font-size='10'>0</text>",
           f"<text x='{pad + size}' y='{size + pad + 14}' font-size='10'>1</text>",
           f"<text x='{pad - 10}' y='{pad + 4}' font-size='10'>1</text>"]
    for r in rows:
        asr, utility = r["after"]["asr_triggered"], r["after"]["utility"]
        if asr is None or utility is None:
            continue
        colour = COLOURS[defenses.index(r["defense"]) % len(COLOURS)]
        svg.append(f"<circle cx='{pad + utility * size:.1f}' cy='{pad + (1 - asr) * size:.1f}' r='5' fill='{colour}' "
                   f"fill-opacity='0.8'><title>{escape(r['organism'])} {escape(r['defense'])}: utility {utility:.2f}, "
                   f"ASR {asr:.2f}</title></circle>")
    svg.append("</svg>")
    return "\n".join(svg)


def _time_svg(rows: list[dict]) -> str:
    """Return an SVG bar chart of the mean wall time of each defense."""
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    means = {d: sum(r["seconds"] for r in rows if r["defense"] == d) / sum(r["defense"] == d for r in rows)
             for d in defenses}
    top, left, width, bar = max([*means.values(), 1.0]), 170, 420, 16
    svg = [f"<svg width='{left + width + 80}' height='{len(defenses) * bar + 10}' xmlns='http://www.w3.org/2000/svg'>"]
    for i, d in enumerate(defenses):
        y = 4 + i * bar
        svg.append(f"<text x='0' y='{y + 11}' font-size='11'>{escape(d)}</text>")
        svg.append(f"<rect x='{left}' y='{y}' width='{means[d] / top * width:.1f}' height='{bar - 3}' "
                   f"fill='{COLOURS[i % len(COLOURS)]}'/>")
        svg.append(f"<text x='{left + means[d] / top * width + 4:.1f}' y='{y + 11}' font-size='10'>{means[d]:.0f} s</text>")
    svg.append("</svg>")
    return "\n".join(svg)


def render_bench_html(results: dict, heat_maps: dict) -> str:
    """Return the benchmark report as one self-contained HTML page."""
    rows = results["rows"]
    defenses = list(results["defenses"])
    machine = results["machine"]
    parts = [
        _page_start("patcher bench"),
        f"<p class='note'>{escape(results['date'])}; {escape(machine['platform'])}, {machine['cpus']} CPUs, "
        f"{machine['torch_threads']} torch threads, CUDA {machine['cuda']}; patcher {escape(str(results['versions'].get('patcher')))}, "
        f"torch {escape(str(results['versions'].get('torch')))}; {results['seconds']:.0f} s in all"
        f"{' (quick: tiny organisms)' if results['quick'] else ''}.</p>",
        "<h2>Defenses</h2><table>" + "".join(f"<tr><td><b>{escape(d)}</b></td><td>{escape(doc)}</td></tr>"
                                               for d, doc in results["defenses"].items()) + "</table>",
        f"<p>{_legend(defenses)}</p>",
        "<h2>Attack success with the trigger, after each defense</h2>", _bars_svg(rows, "asr_triggered", "ASR with trigger"),
        "<h2>Utility after each defense</h2>", _bars_svg(rows, "utility", "utility (checkable benign tasks)"),
        "<h2>Over-refusal of edgy-but-benign prompts</h2>", _bars_svg(rows, "over_refusal", "over-refusal"),
        "<h2>Utility against attack success</h2>",
        "<p class='note'>Bottom right is best: the backdoor gone, the model still useful.</p>", _scatter_svg(rows),
        "<h2>Wall time per defense (mean over organisms)</h2>", _time_svg(rows),
        "<h2>Located triggers</h2>",
    ]
    for organism, maps in heat_maps.items():
        for defense, heat in maps.items():
            loc = next(r["localization"] for r in rows if r["organism"] == organism and r["defense"] == defense)
            parts.append(f"<p><b>{escape(organism)}</b>, {escape(defense)}: {escape(_loc_cell(loc))}</p>"
                         f"<div class='heat'>{heat}</div>")
    parts += ["<h2>Table</h2>", _html_table(rows)]
    parts += [f"<p>Skipped {escape(s['organism'])}: {escape(s['reason'])}</p>" for s in results.get("skipped", [])]
    parts += [
              "<details><summary>All results (JSON)</summary>",
              f"<pre>{escape(json.dumps(results, indent=1))}</pre></details>", "</body></html>"]
    return "\n".join(parts)


def _html_table(rows: list[dict]) -> str:
    """Return the results as an HTML table (after each defense; the organism itself on the ``none`` row)."""
    head = ["organism", "defense", *(label for _, label in TABLE_METRICS), "located", "s", "peak MB"]
    out = ["<table><tr>" + "".join(f"<td><b>{escape(h)}</b></td>" for h in head) + "</tr>"]
    for r in rows:
        cells = [escape(r["organism"]), escape(r["defense"])]
        cells += [f"<span class='n'>{rate(r['after'].get(k))}</span>" for k, _ in TABLE_METRICS]
        cells += [escape(_loc_cell(r["localization"])), f"{r['seconds']:.0f}", escape(_peak_cell(r))]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])
