"""CONTRIBUTING.md's recipes work as written.

Every fenced block whose first line is ``# recipe: NAME — PATH`` is taken from the page and executed as
the module it would be (a ``types.ModuleType`` under a ``_recipe_*`` name in the package of PATH), with
the attack, defense and report-section registries restored afterwards. Then each recipe's promise is
checked on tiny problems: the attack is created by name, keeps the registry-wide properties and runs in
an evaluation of its suite recipe; the defense is listed, its loss adds the noise, and it trains and
loads; the report section appears in a rendered page and its navigation; the per-sample metric reaches
the store and the report. The file names and the layer order the page cites are checked against the
tree and ``tests/test_architecture.py``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import robustkit
from robustkit.attacks import ATTACKS
from robustkit.defenses.base import DEFENSES, Capabilities, Defense
from robustkit.defenses.loading import load_defense, train_defense
from robustkit.evaluation.store import STORE_FILE
from robustkit.functional.random import sample_generators
from robustkit.report import layout
from robustkit.report.load import load_run
from robustkit.report.render import SECTIONS, render_html, run_view
from robustkit.training.data import DataSpec
from robustkit.training.settings import StepContext

from .test_architecture import LAYERS
from .test_attack_properties import EPS, problem, run
from .test_report_views import HOSTILE_RUN, build_run
from .test_run_config import _data, _model

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "CONTRIBUTING.md"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one thread is as fast, and kinder
RECIPE = re.compile(r"# recipe: (?P<name>[\w-]+) — (?P<path>\S+)\n")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a markdown page as (language, code)."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def recipes() -> dict[str, tuple[str, str]]:
    """recipe name -> (the path it says it is, its code)."""
    found: dict[str, tuple[str, str]] = {}
    for _, code in fenced_blocks(PAGE.read_text()):
        m = RECIPE.match(code)
        if m:
            assert m["name"] not in found, f"two recipes named {m['name']}"
            found[m["name"]] = (m["path"], code)
    return found


@pytest.fixture
def registries(monkeypatch):
    """Every registry a recipe adds to, put back as it was after the test."""
    ATTACKS.load_all()
    DEFENSES.load_all()
    monkeypatch.setattr(ATTACKS, "_items", dict(ATTACKS._items))
    monkeypatch.setattr(DEFENSES, "_items", dict(DEFENSES._items))
    monkeypatch.setattr(layout, "_SECTIONS", list(layout._SECTIONS))
    monkeypatch.setattr(layout._REGISTERED, "sources", dict(layout._REGISTERED.sources))
    return monkeypatch


def execute(name: str, monkeypatch) -> types.ModuleType:
    """Run recipe ``name`` as a module of the package its path names (relative imports work)."""
    path, code = recipes()[name]
    parts = Path(path).with_suffix("").parts
    package = ".".join(parts[:-1])
    module = types.ModuleType(f"{package + '.' if package else ''}_recipe_{name.replace('-', '_')}")
    module.__package__ = package
    module.__file__ = str(PAGE)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, f"{PAGE.name}: recipe {name}", "exec"), module.__dict__)  # noqa: S102
    return module


def evaluate(suite, tmp_path: Path, name: str) -> robustkit.RunResult:
    model = _model()
    return robustkit.evaluate(
        model, _data(model, 12), suite, out=tmp_path, name=name, batch_size=5, device="cpu", progress=False
    )


def test_the_page_has_every_recipe_and_cites_real_files():
    found = recipes()
    assert set(found) == {"attack", "attack-suite", "defense", "section", "metric"}
    text = PAGE.read_text()
    cited = set(re.findall(r"\b((?:robustkit|tests|attacks|scripts)/[\w/.-]*\w)", text))
    new = {path for path, _ in found.values()}
    missing = sorted(p for p in cited - new if not (ROOT / p).exists())
    assert missing == [], f"CONTRIBUTING.md cites files that do not exist: {missing}"


def test_the_layer_order_is_the_architecture_tests():
    (line,) = [code for lang, code in fenced_blocks(PAGE.read_text()) if lang == "text" and "→" in code]
    assert [tuple(s.strip() for s in layer.split(",")) for layer in line.strip().split("→")] == LAYERS


def test_the_attack_recipe_is_an_attack_with_a_suite(registries, tmp_path):
    execute("attack", registries)
    attack = robustkit.create_attack("mi-fgsm", eps=8 / 255, steps=3)
    assert type(attack).__name__ == "MIFGSM" and "mi-fgsm" in ATTACKS.names()
    with pytest.raises(robustkit.ConfigError, match="did you mean 'decay'"):
        robustkit.create_attack("mi-fgsm", decya=0.5)
    # the registry-wide properties: bounds, seeds, eps = 0, and it does attack (at 4x the property
    # tests' budget, where PGD breaks this tiny problem too)
    model, x, y = problem("mi-fgsm")
    for norm in ("Linf", "L2"):
        eps = 4 * EPS[norm]
        mi = robustkit.create_attack("mi-fgsm", norm=norm, eps=eps, steps=5, random_start=True)
        res, again = run(mi, model, x, y, seed=3), run(mi, model, x, y, seed=3)
        assert torch.equal(res.x_adv, again.x_adv) and torch.equal(res.success, again.success)
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert (mi.threat.norm(res.x_adv - x) <= eps * (1 + 1e-5) + 1e-6).all()
        with torch.no_grad():
            pred = model(res.x_adv).argmax(1)
        assert torch.equal(res.success, pred != y) and res.success.any()
    zero = robustkit.create_attack("mi-fgsm", eps=0.0, steps=3)
    assert torch.equal(run(zero, model, x, y).x_adv, x)
    # the suite recipe runs it through robustkit.evaluate
    _, suite_text = recipes()["attack-suite"]
    suite = yaml.safe_load(suite_text)
    result = evaluate(suite, tmp_path, "mi")
    attacks = {a["attack"]: a for a in result.summary["attacks"]}
    assert set(attacks) == {"mi-fgsm"} and len(result.summary["attacks"]) == 2
    assert all(a["complete"] for a in result.summary["attacks"])
    strong = max(result.summary["attacks"], key=lambda a: a["eps"])
    assert strong["robust_accuracy"] < result.summary["clean_accuracy"]
    assert "mi-fgsm" in result.report.read_text()


def test_the_defense_recipe_is_listed_trains_and_loads(registries, tmp_path):
    execute("defense", registries)
    assert "gaussian-augment" in DEFENSES.names()
    recipe = DEFENSES.create("gaussian-augment")
    assert recipe.sigma == 0.25 and recipe.capabilities == Capabilities()
    # the loss is cross-entropy on noisy inputs, the noise drawn from the step's generator
    model = recipe.build(DataSpec("shapes", 10, (3, 32, 32)), recipe.settings).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)

    def loss(r) -> torch.Tensor:
        return r.loss(
            model, x, y, StepContext(settings=r.settings, generator=torch.Generator().manual_seed(5))
        )

    with torch.no_grad():
        plain = F.cross_entropy(model(x), y)
        assert torch.equal(loss(recipe), loss(recipe)) and not torch.equal(loss(recipe), plain)
        assert torch.equal(loss(dataclasses.replace(recipe, sigma=0.0)), plain)
    info = train_defense(
        "gaussian-augment", "shapes", out_dir=tmp_path, epochs=1, train_size=16, batch_size=8, device="cpu",
        progress=False, test_size=8,
    )  # fmt: skip
    assert info["recipe"] == "gaussian-augment" and info["cost"]["steps"] == 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in info["history"])
    defense = load_defense(f"gaussian-augment:{tmp_path / 'model.safetensors'}", dataset="shapes")
    assert isinstance(defense, Defense) and defense.capabilities == recipe.capabilities
    with torch.no_grad():
        assert defense.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_the_section_recipe_shows_in_the_report_and_its_navigation(registries, tmp_path):
    execute("section", registries)
    keys = [key for key, _ in SECTIONS]
    assert keys.index("attacks") < keys.index("sole-breaks") == keys.index("findings") - 1
    run_dir = build_run(tmp_path, name=HOSTILE_RUN, attack_names={"pgd8": "<svg onload=alert(4)>"})
    loaded = load_run(run_dir)
    rows = {r["attack"]: r for r in run_view(loaded, "r0")["sole_breaks"]}
    # build_run: each attack keeps a nested prefix of the clean-correct samples 0-4, 6-10 robust;
    # ROA keeps 9 of them, PGD at 2/255 8, and only AutoAttack breaks sample 2
    assert rows["roa"]["broken"] == 1 and rows["pgd@2/255"]["broken"] == 2
    assert rows["autoattack@8/255"]["samples"] == [2]
    assert [name for name, r in rows.items() if r["sole"]] == ["autoattack@8/255"]
    html = render_html([loaded])
    assert '<a href="#r0-sole-breaks">Sole breaks</a>' in html
    assert html.index('data-section="attacks"') < html.index('id="r0-sole-breaks" data-section="sole-breaks"')
    assert html.index('data-section="sole-breaks"') < html.index('data-section="findings"')
    assert "<svg onload" not in html and "&lt;svg onload=alert(4)&gt;" in html
    assert html.count("<script") == 1 and 'http-equiv="Content-Security-Policy"' in html


def test_a_section_brings_its_own_template_file_and_keeps_the_registry_sound(registries, tmp_path):
    template = tmp_path / "count.html.j2"
    template.write_text(
        '<section id="{{ a }}-count" data-section="count"><p>{{ run.count }} attacks</p></section>'
    )
    robustkit.report.register_section(
        "count", template="_count.html.j2", source=template, anchors=[("count", "Count")],
        views={"count": lambda run: len(run.attacks)},
    )  # fmt: skip
    assert [key for key, _ in SECTIONS][-1] == "count"
    html = render_html([load_run(build_run(tmp_path))])
    assert '<section id="r0-count" data-section="count"><p>7 attacks</p></section>' in html
    bad = [
        ({"template": "_x.html.j2", "anchors": [("summary", "Again")]}, "used by another section"),
        ({"template": "_x.html.j2", "views": {"header": len}}, "view name 'header'"),
        ({"template": "_missing.html.j2"}, "no template '_missing.html.j2'"),
        ({"template": "_macros.html.j2", "source": "x"}, "exists already"),
        ({"template": "_x.html.j2", "source": "x", "after": "nowhere"}, "no section 'nowhere'"),
    ]
    for change, message in bad:
        args = {"anchors": [("other", "Other")], "views": {}} | change
        with pytest.raises(robustkit.ConfigError, match=message):
            robustkit.report.register_section("other", **args)
    with pytest.raises(robustkit.ConfigError, match="registered already"):
        robustkit.report.register_section(
            "summary", template="_summary.html.j2", anchors=[("s", "S")], views={}
        )


def test_the_metric_recipe_reaches_the_store_and_the_report(registries, tmp_path):
    execute("metric", registries)
    suite = {"name": "margin", "attacks": [{"attack": "fgsm-margin", "eps": "8/255"}]}
    result = evaluate(suite, tmp_path, "margin")
    db = sqlite3.connect(result.run_dir / STORE_FILE)  # the stored rows, as written
    try:
        stored = dict(db.execute("SELECT idx, metrics FROM outcomes WHERE attacked").fetchall())
    finally:
        db.close()
    assert stored and all(set(json.loads(m)) == {"margin"} for m in stored.values())
    loaded = load_run(result.run_dir)
    (rows,) = loaded.outcomes.values()
    outcomes = [o for o in rows.values() if o.attacked]
    assert sorted(o.idx for o in outcomes) == sorted(stored)
    # the margin is positive exactly where the sample survived the attack
    assert all((o.metrics["margin"] > 0) == o.robust for o in outcomes)
    assert {o.robust for o in outcomes} == {True, False}
    metrics = run_view(loaded, "r0")["metrics"]
    mean = sum(o.metrics["margin"] for o in outcomes) / len(outcomes)
    assert "margin" in metrics["names"] and metrics["rows"][0]["metrics"]["margin"] == pytest.approx(mean)
    for html in (render_html([loaded]), result.report.read_text()):
        assert '<th class="num">margin</th>' in html and f"{mean:.3g}" in html
    # and the same numbers when the attack is called directly, per-sample generators and all
    model = _model()
    x, y = _data(model, 12)
    res = robustkit.create_attack("fgsm-margin", eps=8 / 255)(
        model, x, y, generator=sample_generators(0, range(12))
    )
    assert res.metrics["margin"].shape == (12,) and torch.equal(res.metrics["margin"] > 0, ~res.success)
