"""The papers' claims against robustkit's reduced-scale runs: which claims, the rules that give each its
verdict, and the table (Markdown, and an HTML section for the defenses report).

The stored runs (``benchmarks/results/claims.json``, written by ``benchmarks/defenses_claims.py``) hold one
record per (dataset, recipe, seed)::

    {"dataset": "shapes", "recipe": "abnn", "seed": 0, "num_classes": 10,
     "train": {"clean_test_accuracy": .., "passes_per_step": .., "relative_passes": .., "relative_seconds": ..},
     "eval": {"clean": .., "n": .., "attacks": {"pgd-linf": {"robust": .., "worst_view": "whole-batch",
                                                          "views": {"whole-batch": .., ...}}}}}

``derive(records)`` turns them into one row per claim. Every verdict follows from the stored numbers by
the rules below (``RULES`` is their text, rendered under the table):

- A figure is the mean ± sample standard deviation over seeds of one stored number: clean accuracy or robust
  accuracy from the evaluation (robust: the runner's worst view of that attack, adaptive views included),
  or the measured training cost per step relative to standard training.
- Precondition (else **vacuous**): every defense a claim compares trained, i.e. its mean clean accuracy is
  at least ``TRAINED_FACTOR`` × chance (1 / number of classes). A comparison against a network that never
  learned says nothing about the defense.
- A difference counts only when it exceeds the seeds' spread: gap = mean(A) − mean(B) in the claimed
  direction, margin = max(std(A) + std(B), ``MIN_GAP``). gap > margin: **holds**; gap < −margin:
  **reversed**; otherwise **not reproduced**.
- Walter et al.'s random-weights control additionally needs its robust accuracy ≈ 0 (mean ≤ ``NEAR_ZERO``)
  for **holds**.
"""

from __future__ import annotations

import html
import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HOLDS, NOT_REPRODUCED, REVERSED, VACUOUS = "holds", "not reproduced", "reversed", "vacuous"
VERDICTS = (HOLDS, NOT_REPRODUCED, REVERSED, VACUOUS)
MISSING = "not run"

TRAINED_FACTOR = 1.5  # a defense "trained" when its mean clean accuracy is at least 1.5 x chance
MIN_GAP = 0.01  # one point: the resolution of a 100-image evaluation
NEAR_ZERO = 0.05  # "robust accuracy ~ 0"

RULES = [
    "Figures: mean ± sample std over seeds of the stored per-seed numbers (clean and robust accuracy from "
    "robustkit's runner on the first n test images; robust = the worst of the attack's views, adaptive and "
    "transfer views included; training cost = measured network passes per step relative to a standard "
    "training step of the same network).",
    f"Vacuous: a compared defense did not train (mean clean accuracy below {TRAINED_FACTOR} × chance); the "
    "claim is then neither supported nor refuted.",
    f"A difference counts only beyond the seeds' spread: gap = mean(A) − mean(B) in the claimed direction, "
    f"margin = max(std(A) + std(B), {100 * MIN_GAP:.0f} point). Holds: gap > margin. Reversed: gap < −margin. "
    "Not reproduced: |gap| ≤ margin.",
    f"BN-only from random weights: holds needs, besides the gap to BN-only fine-tuning, a mean robust accuracy "
    f"≤ {100 * NEAR_ZERO:.0f}% at a clean accuracy ≥ {TRAINED_FACTOR} × chance (the control must train).",
]


# ----------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class Figure:
    """One stored number over seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    def text(self, scale: float = 100.0, unit: str = "") -> str:
        return f"{scale * self.mean:.1f} ± {scale * self.std:.1f}{unit}"


def compare(a: Figure, b: Figure, *, lower: bool = False) -> tuple[str, float, float]:
    """Verdict of the claim "A > B" (``lower``: "A < B") by the spread rule; returns (verdict, gap, margin)."""
    gap = (b.mean - a.mean) if lower else (a.mean - b.mean)
    margin = max(a.std + b.std, MIN_GAP)
    if gap > margin:
        return HOLDS, gap, margin
    if gap < -margin:
        return REVERSED, gap, margin
    return NOT_REPRODUCED, gap, margin


def trained(clean: Figure, num_classes: int) -> bool:
    return clean.mean >= TRAINED_FACTOR / num_classes


# ----------------------------------------------------------------------------- the claims
@dataclass(frozen=True)
class Claim:
    """A claim "``a`` beats ``b`` on ``quantity``" on ``dataset``.

    ``quantity``: ``clean``, ``robust:<attack>`` (an attack name of the evaluation suite) or ``cost``
    (relative passes per training step; lower is better). ``kind``: ``greater`` (the spread rule) or
    ``near-zero`` (Walter et al.'s random control: the spread rule against ``b`` plus robust ≈ 0).
    """

    key: str
    paper: str
    text: str
    dataset: str
    quantity: str
    a: str
    b: str
    published: str
    kind: str = "greater"

    @property
    def recipes(self) -> tuple[str, ...]:
        return (self.a, self.b)


ABNN, NOFROST, WALTER = "ABNN (Lo & Patel 2024)", "NoFrost (Wang et al. 2022)", "Walter et al. 2022"


def _published() -> dict[str, dict[str, Any]]:
    """The recipes' ``published`` dicts (the paper figures robustkit records next to each recipe)."""
    from ..defenses.base import DEFENSES  # the registry loads every backend

    out = {}
    for name in ("abnn", "standard", "pgd-at", "nofrost", "bn-at", "bn-finetune"):
        try:
            out[name] = dict(DEFENSES.create(name).published)
        except Exception:  # noqa: BLE001 - a registry without that recipe: no published anchor to show
            out[name] = {}
    return out


def _pct(v: Any) -> str:
    """A published figure as the paper prints it: 87.5, 74.06, 0.0."""
    if v is None:
        return "?"
    text = f"{100 * float(v):.2f}"
    return text[:-1] if text.endswith("0") else text


def _video(pub: Mapping[str, Any], key: str, baseline: str, claim: str) -> str:
    """ABNN's UCF-101 figure from ``published["video"]`` when the recipe records it, else the claim in words."""
    video = pub.get("video") or {}
    if key in video:
        other = (video.get(baseline) or {}).get(key) if isinstance(video.get(baseline), Mapping) else None
        return f"{video.get('dataset', 'UCF-101')}: ABNN {_pct(video[key])} vs {baseline} {_pct(other)}"
    return (
        f"UCF-101 (3D ResNet-18 substitute, 3D ResNeXt-101 target): {claim} "
        "(figure not recorded in the recipe's `published`)"
    )


def claims(published: Mapping[str, Mapping[str, Any]] | None = None) -> list[Claim]:
    """One claim per row, with the paper's figures from the recipes' ``published`` dicts."""
    pub = published if published is not None else _published()
    abnn, std, at = pub.get("abnn", {}), pub.get("standard", {}), pub.get("pgd-at", {})
    nof, bnat = pub.get("nofrost", {}), pub.get("bn-at", {})
    abnn_std, abnn_at = abnn.get("standard", std), abnn.get("pgd-at", at)
    nof_bnat = nof.get("bn-at", bnat)
    cifar = abnn.get("dataset", "CIFAR-10")
    imagenet = nof.get("dataset", "ImageNet, ResNet-50")
    return [
        Claim("abnn-pgd-image", ABNN, "PGD robustness on images: ABNN above the undefended network", "shapes",
              "robust:pgd-linf", "abnn", "standard",
              f"{cifar}: ABNN {_pct(abnn.get('pgd'))} vs no defense {_pct(abnn_std.get('pgd'))} "
              f"(PGD-AT {_pct(abnn_at.get('pgd'))})"),
        Claim("abnn-pgd-video", ABNN, "PGD robustness on video: ABNN above the undefended network",
              "shapes-video", "robust:video-pgd-linf", "abnn", "standard", _video(abnn, "pgd", "standard", "ABNN above no defense")),
        Claim("abnn-roa-video", ABNN, "ROA robustness on video: ABNN above the undefended network",
              "shapes-video", "robust:video-roa", "abnn", "standard", _video(abnn, "roa", "standard", "ABNN above no defense")),
        Claim("abnn-clean", ABNN, "Clean accuracy above adversarial training", "shapes", "clean", "abnn",
              "pgd-at", f"{cifar}: ABNN {_pct(abnn.get('clean'))} vs PGD-AT {_pct(abnn_at.get('clean'))}"),
        Claim("abnn-clean-video", ABNN, "Clean accuracy above adversarial training on video", "shapes-video", "clean",
              "abnn", "pgd-at", _video(abnn, "clean", "pgd-at", "ABNN above AT")),
        Claim("abnn-cost", ABNN, "Training cost 3N vs 12N: ABNN far cheaper per step than AT", "shapes", "cost",
              "abnn", "pgd-at",
              f"{abnn.get('training_cost_passes', 3)}N vs {abnn_at.get('training_cost_passes', 12)}N "
              f"(standard {abnn_std.get('training_cost_passes', 2)}N)"),
        Claim("nofrost-clean", NOFROST, "Clean accuracy: NoFrost above BN-based AT", "shapes", "clean", "nofrost",
              "bn-at", f"{imagenet}: NoFrost {_pct(nof.get('clean'))} vs BN-AT {_pct(nof_bnat.get('clean'))}"),
        Claim("nofrost-pgd", NOFROST, "PGD robustness: NoFrost above BN-based AT", "shapes", "robust:pgd-linf",
              "nofrost", "bn-at", f"{imagenet}: NoFrost {_pct(nof.get('pgd'))} vs BN-AT {_pct(nof_bnat.get('pgd'))}"),
        Claim("walter-at-vs-bn", WALTER, "Full AT more robust than BN-only adversarial fine-tuning", "shapes",
              "robust:pgd-linf", "pgd-at", "bn-finetune", "ordering full AT ≫ BN-only fine-tuning (CIFAR-10)"),
        Claim("walter-random", WALTER, "BN-only AT from random weights: robust ≈ 0 at non-trivial clean accuracy, "
              "below BN-only fine-tuning", "shapes", "robust:pgd-linf", "bn-finetune", "bn-random",
              "BN-only fine-tuning > BN-only from random ≈ 0 (CIFAR-10)", kind="near-zero"),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- from runs to rows
def _number(record: Mapping[str, Any], quantity: str) -> float | None:
    if quantity == "clean":
        return record.get("eval", {}).get("clean")
    if quantity == "cost":
        return record.get("train", {}).get("relative_passes")
    if quantity.startswith("robust:"):
        entry = record.get("eval", {}).get("attacks", {}).get(quantity.split(":", 1)[1])
        return None if entry is None else entry.get("robust")
    raise ValueError(f"unknown quantity {quantity!r}: expected clean, cost or robust:<attack>")


def _records(records: Iterable[Mapping[str, Any]], dataset: str, recipe: str) -> list[Mapping[str, Any]]:
    return sorted(
        (r for r in records if r["dataset"] == dataset and r["recipe"] == recipe), key=lambda r: r["seed"]
    )


def _figure(recs: list[Mapping[str, Any]], quantity: str) -> Figure | None:
    values = [_number(r, quantity) for r in recs]
    return Figure(tuple(float(v) for v in values)) if values and None not in values else None


def _views(recs: list[Mapping[str, Any]], quantity: str) -> str:
    """Which view gave the worst figure, over seeds (e.g. 'transfer:substitute 2/3, whole-batch 1/3')."""
    if not quantity.startswith("robust:"):
        return ""
    name = quantity.split(":", 1)[1]
    views = [r["eval"]["attacks"][name].get("worst_view") or "white-box" for r in recs]
    counts = {v: views.count(v) for v in dict.fromkeys(views)}
    return ", ".join(f"{v} {c}/{len(views)}" for v, c in counts.items())


def derive_row(claim: Claim, records: list[Mapping[str, Any]], attacks: Mapping[str, str]) -> dict[str, Any]:
    """One row of the table: figures, the evaluation that produced them and the verdict with its reason."""
    recs = {r: _records(records, claim.dataset, r) for r in claim.recipes}
    row: dict[str, Any] = {
        "key": claim.key, "paper": claim.paper, "claim": claim.text, "dataset": claim.dataset,
        "published": claim.published, "a": claim.a, "b": claim.b, "quantity": claim.quantity,
    }  # fmt: skip
    figs = {r: _figure(recs[r], claim.quantity) for r in claim.recipes}
    cleans = {r: _figure(recs[r], "clean") for r in claim.recipes}
    if any(f is None for f in (*figs.values(), *cleans.values())):
        missing = [r for r in claim.recipes if figs[r] is None or cleans[r] is None]
        return row | {"verdict": MISSING, "reason": f"no stored runs of {', '.join(missing)} on {claim.dataset}",
                      "figures": {}, "robustkit": "-", "evaluation": "-", "seeds": 0}  # fmt: skip
    fa, fb = figs[claim.a], figs[claim.b]
    assert fa is not None and fb is not None
    classes = int(recs[claim.a][0].get("num_classes") or 10)
    scale, unit = (1.0, "×") if claim.quantity == "cost" else (100.0, "")
    row["figures"] = {r: {"values": list(figs[r].values), "mean": figs[r].mean, "std": figs[r].std,  # type: ignore[union-attr]
                          "clean": list(cleans[r].values)} for r in claim.recipes}  # type: ignore[union-attr]  # fmt: skip
    row["seeds"] = min(fa.n, fb.n)
    row["robustkit"] = f"{claim.a} {fa.text(scale, unit)} vs {claim.b} {fb.text(scale, unit)}"
    if claim.quantity == "cost":
        times = {r: [rec.get("train", {}).get("relative_seconds") for rec in recs[r]] for r in claim.recipes}
        if all(None not in t and t for t in times.values()):
            row["robustkit"] += " passes/step; wall time " + " vs ".join(
                f"{Figure(tuple(times[r])).text(1.0, '×')}" for r in claim.recipes
            )
    row["evaluation"] = _evaluation(claim, recs, attacks)
    # precondition: the compared defenses trained (cost is measured whether or not they did)
    if claim.quantity != "cost":
        failed = [r for r in claim.recipes if not trained(cleans[r], classes)]  # type: ignore[arg-type]
        if failed:
            chance = 1 / classes
            parts = [f"{r} clean {cleans[r].text()}%" for r in failed]  # type: ignore[union-attr]
            return row | {"verdict": VACUOUS, "reason": f"did not train (below {TRAINED_FACTOR} × chance "
                          f"{100 * chance:.1f}% = {100 * TRAINED_FACTOR * chance:.1f}%): " + "; ".join(parts)}  # fmt: skip
    verdict, gap, margin = compare(fa, fb, lower=claim.quantity == "cost")
    direction = "<" if claim.quantity == "cost" else ">"
    reason = (f"{claim.a} {direction} {claim.b}: gap {scale * gap:+.1f}{unit or ' points'}, "
              f"margin {scale * margin:.1f}{unit or ' points'}")  # fmt: skip
    if claim.kind == "near-zero" and verdict == HOLDS and fb.mean > NEAR_ZERO:
        verdict = NOT_REPRODUCED
        reason += f"; but {claim.b}'s robust accuracy {fb.text()}% is not ≈ 0 (> {100 * NEAR_ZERO:.0f}%)"
    return row | {"verdict": verdict, "reason": reason}


def _evaluation(claim: Claim, recs: Mapping[str, list[Mapping[str, Any]]], attacks: Mapping[str, str]) -> str:
    if claim.quantity == "cost":
        return (
            "measured during training: network forward + backward passes per step (ABNN: target + substitute)"
        )
    n = recs[claim.a][0].get("eval", {}).get("n")
    head = f"runner, first {n} test images" if n else "runner"
    if claim.quantity == "clean":
        return f"clean accuracy ({head})"
    name = claim.quantity.split(":", 1)[1]
    worst = "; ".join(f"{r}: {_views(recs[r], claim.quantity)}" for r in claim.recipes)
    return f"{attacks.get(name, name)} ({head}); worst view {worst}"


def derive(
    stored: Mapping[str, Any], published: Mapping[str, Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every claim's row from the stored runs (``claims.json``: ``runs`` and ``protocol.attacks``)."""
    records = list(stored.get("runs", {}).values())
    attacks = stored.get("protocol", {}).get("attacks", {})
    return [derive_row(c, records, attacks) for c in claims(published)]


# ----------------------------------------------------------------------------- rendering
def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def departures(stored: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Each stored recipe's named departures from its paper (the recipe's ``departures``)."""
    from ..defenses.base import DEFENSES

    names = sorted({r["recipe"] for r in stored.get("runs", {}).values()})
    return {n: tuple(getattr(DEFENSES.create(n), "departures", ())) for n in names if n in DEFENSES}


def stale_settings(stored: Mapping[str, Any]) -> list[str]:
    """Stored runs trained with other settings than their recipe has now (a recipe changed after they
    ran and they were kept), one line per dataset and recipe: which settings, then and now."""
    import dataclasses

    from ..defenses.base import DEFENSES
    from ..training.settings import TrainSettings

    defaults = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    groups: dict[tuple[str, str, str], list[int]] = {}
    for r in stored.get("runs", {}).values():
        then = r.get("config", {}).get("settings")
        if not then or r["recipe"] not in DEFENSES:
            continue
        now = dataclasses.asdict(DEFENSES.create(r["recipe"]).trained_recipe().settings)
        diff = [
            f"{k} {then.get(k, defaults.get(k))} (now {v})"
            for k, v in now.items()
            if json.dumps(then.get(k, defaults.get(k)), default=str) != json.dumps(v, default=str)
        ]
        if diff:
            groups.setdefault((r["dataset"], r["recipe"], ", ".join(diff)), []).append(r["seed"])
    return [
        f"{d}/{n} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))}): trained with {diff}"
        for (d, n, diff), seeds in sorted(groups.items())
    ]


def render_markdown(stored: Mapping[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    """The claims note: protocol, the table (one row per claim), each verdict's reason, the rules."""
    rows = rows if rows is not None else derive(stored)
    p = stored.get("protocol", {})
    seeds = ", ".join(str(s) for s in p.get("seeds", []))
    quick = p.get("quick")
    lines = [
        f"# Paper claims at robustkit's reduced scale{' (QUICK smoke run: tiny budget, not evidence)' if quick else ''}",
        "",
        f"Every defense trained with seeds {seeds or '?'} on the built-in data ({p.get('scale_note', '')}); "
        f"evaluated through `robustkit.api.evaluate` (capabilities honored: ABNN attacked in every batch view "
        f"and by transfer from its substitute). Device {p.get('device', '?')}, {p.get('threads', '?')} threads, "
        f"{p.get('seconds', 0):.0f} s in all. Regenerate: `{p.get('command', 'python benchmarks/defenses_claims.py')}`.",
        "",
        "| # | paper | claim | paper's figure | robustkit (mean ± std over seeds) | evaluation | verdict |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for i, r in enumerate(rows, 1):
        lines.append("| " + " | ".join(_cell(v) for v in (
            i, r["paper"], f"{r['claim']} ({r['dataset']})", r["published"],
            f"{r['robustkit']} (n={r.get('seeds', 0)})", r["evaluation"], f"**{r['verdict']}**",
        )) + " |")  # fmt: skip
    lines += ["", "Why each verdict:", ""]
    lines += [f"{i}. {r['key']}: {r['verdict']}: {r['reason']}." for i, r in enumerate(rows, 1)]
    lines += ["", "Rules (robustkit/report/claims.py):", ""] + [f"- {rule}" for rule in RULES]
    named = {k: v for k, v in departures(stored).items() if v}
    if named:
        lines += ["", "Departures from the papers' recipes at this scale (each recipe's `departures`):", ""]
        lines += [f"- `{k}`: " + "; ".join(v) for k, v in named.items()]
    stale = stale_settings(stored)
    if stale:
        lines += [
            "",
            "Runs kept from before a recipe changed (their stored settings differ from the recipe's now):",
            "",
        ]
        lines += [f"- {line}" for line in stale]
    lines += ["", "Per-seed clean accuracy of every run (%):", "", "| dataset | recipe | " +
              " | ".join(f"seed {s}" for s in p.get("seeds", [])) + " |",
              "|---|---|" + "---|" * len(p.get("seeds", []))]  # fmt: skip
    for (dataset, recipe), recs in _by_recipe(stored).items():
        by_seed = {r["seed"]: r for r in recs}
        cells = [_pct(by_seed[s]["eval"].get("clean")) if s in by_seed else "-" for s in p.get("seeds", [])]
        lines.append(f"| {dataset} | {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _by_recipe(stored: Mapping[str, Any]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in stored.get("runs", {}).values():
        out.setdefault((r["dataset"], r["recipe"]), []).append(r)
    return out


VERDICT_CLASS = {HOLDS: "ok", NOT_REPRODUCED: "warn", REVERSED: "fail", VACUOUS: "warn", MISSING: "warn"}


def render_html_section(stored: Mapping[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    """The claims table as an HTML ``<section>`` (everything escaped) for the defenses report."""
    rows = rows if rows is not None else derive(stored)
    e = html.escape
    head = ["#", "paper", "claim", "paper's figure", "robustkit (mean ± std)", "evaluation", "verdict", "why"]
    body = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), r["paper"], f"{r['claim']} ({r['dataset']})", r["published"],
                 f"{r['robustkit']} (n={r.get('seeds', 0)})", r["evaluation"]]  # fmt: skip
        verdict = (
            f'<td class="{VERDICT_CLASS.get(r["verdict"], "warn")}"><strong>{e(r["verdict"])}</strong></td>'
        )
        body.append(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + verdict + f"<td>{e(r['reason'])}</td></tr>"
        )
    p = stored.get("protocol", {})
    return (
        '<section id="claims" data-section="claims">\n<h2>Paper claims at reduced scale</h2>\n'
        f'<p class="note">{_seeds(p)} per defense'
        f"{' (QUICK smoke run: not evidence)' if p.get('quick') else ''}; regenerate with "
        f"<code>{e(p.get('command', 'python benchmarks/defenses_claims.py'))}</code>.</p>\n"
        '<div class="table-wrap"><table>\n<thead><tr>'
        + "".join(f"<th>{e(h)}</th>" for h in head)
        + "</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table></div>\n<ul>"
        + "".join(f"<li>{e(rule)}</li>" for rule in RULES)
        + "</ul>\n"
        + "".join(
            f"<p><strong>{e(k)}</strong> departs from its paper: {e('; '.join(v))}</p>\n"
            for k, v in departures(stored).items()
            if v
        )
        + "".join(f"<p>Kept from before a recipe changed: {e(line)}</p>\n" for line in stale_settings(stored))
        + "</section>\n"
    )


def _seeds(protocol: Mapping[str, Any]) -> str:
    n = len(protocol.get("seeds", []))
    return f"{n} seed{'' if n == 1 else 's'}"


def insert_section(page: str, section: str) -> str:
    """``page`` (a robustkit report) with ``section`` after its comparison table (before the first run),
    replacing an earlier claims section."""
    start = page.find('<section id="claims"')
    if start >= 0:
        end = page.find("</section>", start) + len("</section>\n")
        page = page[:start] + page[end:]
    for anchor in ('<article class="run"', "</main>", "</body>"):
        at = page.find(anchor)
        if at >= 0:
            return page[:at] + section + page[at:]
    return page + section


def verdicts_in_markdown(text: str) -> list[str]:
    """The verdict column of the table in ``render_markdown``'s output (for checking a stored note)."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 7 and cells[0].isdigit():
            out.append(cells[-1].strip("*"))
    return out


README_BEGIN, README_END = (
    "<!-- claims:begin (benchmarks/defenses_claims.py writes this block) -->",
    "<!-- claims:end -->",
)


def render_summary(stored: Mapping[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    """The README's short form: one line per claim with its verdict, and the command."""
    rows = rows if rows is not None else derive(stored)
    p = stored.get("protocol", {})
    lines = [
        README_BEGIN,
        f"Seeds {', '.join(str(s) for s in p.get('seeds', []))}, scale: {p.get('scale_note', '?')}"
        + (" — a QUICK smoke run, not evidence" if p.get("quick") else "")
        + ". Full table, figures and rules: [reports/examples/claims.md](reports/examples/claims.md).",
        "",
        "| # | paper | claim | verdict |",
        "|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"| {i} | {_cell(r['paper'])} | {_cell(r['claim'])} ({r['dataset']}) | **{r['verdict']}** |"
        )
    return "\n".join(
        [*lines, "", f"Regenerate: `{p.get('command', 'python benchmarks/defenses_claims.py')}`", README_END]
    )


def replace_block(text: str, block: str) -> str:
    """``text`` with the claims block (between the markers) replaced by ``block``; unchanged without markers."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return text
    return text[:start] + block + text[end + len(README_END) :]


def verdicts_in_summary(text: str) -> list[str]:
    """The verdict column of the README block."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    out = []
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[0].isdigit():
            out.append(cells[-1].strip("*"))
    return out
