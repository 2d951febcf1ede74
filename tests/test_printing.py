"""Printability: palettes, Sharif et al.'s NPS and its usable penalty, palette quantization, print-aware
EOT, and the printability every physical attack reports."""

from __future__ import annotations

import pytest
import torch

from robustkit.attacks.eyeglass import Eyeglass
from robustkit.attacks.patch import Patch
from robustkit.attacks.sticker import Sticker
from robustkit.eot import EOT
from robustkit.errors import ConfigError, InputError
from robustkit.functional.palette import load_palette, palette_from_chart, parse_palette, save_palette
from robustkit.functional.penalties import log_nps, non_printability, sharif_nps, total_variation
from robustkit.functional.printing import color_transfer, palette_shift, printability, quantize_to_palette
from tests.conftest import TinyNet

PRINT_KEYS = {"nps", "tv", "palette_distance", "printable_fraction", "palette_success"}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shipped_palette_is_the_measured_30_colour_set():
    pal = load_palette()
    assert pal.shape == (30, 3)
    assert torch.allclose(pal * 255, (pal * 255).round(), atol=0.01)  # measured 8-bit levels
    assert torch.allclose(pal[14], torch.tensor([0.7098, 0.32157, 0.2]))
    assert load_palette("grid27").shape == (27, 3)
    assert load_palette(pal).data_ptr() != 0


def test_palette_files_round_trip_and_bad_ones_fail(tmp_path):
    pal = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.0, 0.5]])
    path = save_palette(pal, tmp_path / "p.txt", "two colours")
    assert torch.allclose(load_palette(str(path)), pal, atol=1e-5)
    assert torch.allclose(
        parse_palette("255, 0, 51\n# comment\n0 0 0\n"), torch.tensor([[1, 0, 0.2], [0, 0, 0]])
    )
    with pytest.raises(InputError, match="line 1"):
        parse_palette("0.1, 0.2\n")
    with pytest.raises(InputError, match="no colour"):
        parse_palette("# nothing\n")
    with pytest.raises(ConfigError, match="robustkit palette"):
        load_palette("no-such-palette")
    with pytest.raises(ConfigError, match="palette"):
        Eyeglass(palette=str(tmp_path / "missing.txt"))


def test_chart_sampling_reads_the_centre_of_each_cell():
    colours = torch.rand(6, 3, generator=gen(0))
    img = torch.ones(3, 30, 45)  # 2 x 3 cells of 15 x 15 with a one-pixel white grid
    for k, c in enumerate(colours):
        r, q = divmod(k, 3)
        img[:, r * 15 + 1 : (r + 1) * 15, q * 15 + 1 : (q + 1) * 15] = c[:, None, None]
    assert torch.allclose(palette_from_chart(img, 2, 3), colours)
    with pytest.raises(InputError):
        palette_from_chart(img[:1], 2, 3)


def test_sharif_nps_is_the_product_of_distances_and_zero_on_the_palette():
    pal = load_palette()
    x = torch.rand(2, 3, 4, 4, generator=gen(1))
    direct = (x.double().permute(0, 2, 3, 1)[..., None, :] - pal.double()).norm(dim=-1).prod(-1).mean((1, 2))
    assert torch.allclose(sharif_nps(x, pal), direct, rtol=1e-6)
    on = pal[:16].T.reshape(1, 3, 4, 4)
    assert float(sharif_nps(on, pal)) == 0.0
    assert float(sharif_nps(on.clamp_min(0.01) + 0.02, pal)) > 0
    assert torch.allclose(log_nps(x, pal).exp()[:, 0].mean((1, 2)), direct)


def test_penalty_gradient_works_at_ordinary_weights():
    pal = load_palette()
    x = torch.rand(1, 3, 8, 8, generator=gen(2)).requires_grad_(True)
    (g,) = torch.autograd.grad(non_printability(x, pal).sum(), x)
    per_pixel = g.norm(dim=1) * 64  # the penalty is a mean over 64 pixels
    assert per_pixel.min() > 0.5 and per_pixel.max() < 1.5  # about unit length wherever the pixel is
    # it points away from the nearest printable colour: a small descent step gets closer to the palette
    with torch.no_grad():
        closer = x - 0.01 * g / g.norm(dim=1, keepdim=True)
    near = lambda t: printability(t, palette=pal)["palette_distance"]  # noqa: E731
    assert float(near(closer)) < float(near(x.detach()))
    # the raw product's gradient spans many orders of magnitude from pixel to pixel: no one weight fits
    raw = x.detach().clone().requires_grad_(True)
    (g_raw,) = torch.autograd.grad(log_nps(raw, pal).exp().mean(), raw)
    assert g_raw.norm(dim=1).min() < 1e-6 * g_raw.norm(dim=1).max()


def test_quantize_to_palette_and_printability_report():
    pal = load_palette()
    x = torch.rand(2, 3, 8, 8, generator=gen(3))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    q = quantize_to_palette(x, pal, mask)
    assert torch.equal(q[..., :2, :], x[..., :2, :])  # outside the mask untouched
    rep = printability(q, mask, pal, tolerance=1e-4)
    assert torch.allclose(rep["palette_distance"], torch.zeros(2), atol=1e-6)
    assert torch.equal(rep["printable_fraction"], torch.ones(2)) and torch.equal(
        rep["nps"], torch.zeros(2).double()
    )
    before = printability(x, mask, pal)
    assert (before["palette_distance"] > 0.05).all() and (before["printable_fraction"] < 0.5).all()
    assert torch.allclose(before["tv"], total_variation(x, mask))


def test_colour_transfer_and_palette_shift():
    pal = load_palette()
    x = torch.rand(2, 3, 5, 5, generator=gen(4))
    eye, zero = torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3)
    assert torch.allclose(color_transfer(x, eye, zero), x)
    swap = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]]).expand(2, 3, 3)
    assert torch.allclose(color_transfer(x, swap, zero)[:, 0], x[:, 1])
    assert torch.allclose(palette_shift(x, pal, torch.zeros(2, 30, 3)), x)
    on = pal[3].view(1, 3, 1, 1).expand(1, 3, 2, 2)
    offsets = torch.zeros(1, 30, 3)
    offsets[0, 3] = torch.tensor([0.05, -0.05, 0.02])
    moved = palette_shift(on, pal, offsets, temperature=0.01)
    assert torch.allclose(moved - on, offsets[0, 3].view(1, 3, 1, 1).expand_as(on), atol=2e-3)


def test_print_aware_eot_changes_the_artefact_only_and_replays():
    eot = EOT(color_transfer=0.1, palette_jitter=0.05, rotation=5.0, n_samples=3)
    assert not eot.identity and eot.printing and EOT(color_transfer=0.1).active == ()
    x = torch.rand(2, 3, 16, 16, generator=gen(5)).requires_grad_(True)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 3:12] = 1
    rows, params = eot.draw(x, gen(6), mask=mask)
    assert "print" in params.values and params.values["print"]["palette_offsets"].shape == (6, 30, 3)
    assert torch.equal(rows, eot.apply(x.repeat(3, 1, 1, 1), params, mask))  # replay
    (g,) = torch.autograd.grad(rows.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    only_print = EOT(color_transfer=0.1, palette_jitter=0.05, n_samples=2)
    printed, _ = only_print.draw(x.detach(), gen(7), mask=mask)
    outside = (1 - mask).bool().expand_as(printed)
    assert torch.equal(printed[outside], x.detach().repeat(2, 1, 1, 1)[outside])
    assert not torch.equal(printed, x.detach().repeat(2, 1, 1, 1))
    wide = eot.heldout()
    assert wide.color_transfer > eot.color_transfer and wide.palette_jitter > eot.palette_jitter
    assert eot.only(["affine"]).printing is False and eot.only(["affine", "print"]).printing
    with pytest.raises(ConfigError, match="color_transfer"):
        EOT(color_transfer=0.7)


@pytest.fixture
def faces_like():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(4, 3, 32, 32, generator=gen(8))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize(
    "attack",
    [
        Eyeglass(
            steps=3, eval_draws=2, eval_grid=False, eot={"color_transfer": 0.05, "palette_jitter": 0.03}
        ),
        Sticker(steps=3, eval_draws=2, eval_grid=False, eot={"n_samples": 2, "palette_jitter": 0.03}),
        Patch(
            max_iter=3,
            batch_size=4,
            eval_draws=2,
            eval_grid=False,
            eot={"n_samples": 2, "color_transfer": 0.05},
        ),
    ],
    ids=["eyeglass", "sticker", "patch"],
)
def test_every_physical_attack_reports_printability(attack, faces_like):
    model, x, y = faces_like
    res = attack(model, x, y, generator=gen(9))
    assert set(res.metrics) >= PRINT_KEYS
    for key in PRINT_KEYS:
        v = res.metrics[key]
        assert v.shape == (4,) and torch.isfinite(v).all()
    assert ((res.metrics["printable_fraction"] >= 0) & (res.metrics["printable_fraction"] <= 1)).all()
    assert res.artifacts["palette"].shape == (30, 3)


def test_penalties_make_the_frame_smoother_and_more_printable(faces_like):
    model, x, y = faces_like
    plain = Eyeglass(steps=12, eval_draws=0, eval_grid=False, early_stop=False, loss="cw", kappa=1.0)
    printable = Eyeglass(steps=12, eval_draws=0, eval_grid=False, early_stop=False, loss="cw", kappa=1.0,
                         tv_weight=3.0, nps_weight=1.0, colors=("palette",))  # fmt: skip
    a, b = plain(model, x, y), printable(model, x, y)
    assert float(b.metrics["palette_distance"].mean()) < 0.5 * float(a.metrics["palette_distance"].mean())
    assert float(b.metrics["tv"].mean()) < float(a.metrics["tv"].mean())
    assert int(b.success.sum()) >= int(a.success.sum()) - 1


def test_palette_success_equals_success_for_a_frame_already_printable(faces_like, tmp_path):
    model, x, y = faces_like
    pal = save_palette(torch.tensor([[0.2, 0.4, 0.6], [0.8, 0.1, 0.1]]), tmp_path / "two.txt")
    attack = Eyeglass(steps=1, eval_draws=0, eval_grid=False, colors=("palette",), palette=str(pal))
    texture = load_palette(str(pal))[1].view(1, 3, 1, 1).expand(1, 3, 32, 32)
    from dataclasses import replace

    res = replace(attack, texture=texture)(model, x, y)
    assert torch.equal(res.metrics["palette_success"], res.success.float())
    assert torch.allclose(res.metrics["palette_distance"], torch.zeros(4), atol=2e-3)
    assert res.artifacts["palette"].shape == (2, 3)


def test_the_physical_suites_patch_weights_make_the_patch_smoother_and_more_printable():
    """The printability weights of attacks/physical.yaml's patch, against the same patch without them
    (the benchmark's before and after, at a small budget): TV and palette distance clearly lower."""
    from dataclasses import replace

    from robustkit.builtin.signs import signs
    from robustkit.evaluation.suite import load_suite

    (entry,) = [e for e in load_suite("physical").entries if e.attack.name == "patch"]
    after = replace(entry.attack, max_iter=15, batch_size=8, train_samples=16, eval_draws=0, eval_grid=False,
                    eot={"n_samples": 2})  # fmt: skip
    assert after.tv_weight > 0 and after.nps_weight > 0
    before = replace(after, tv_weight=0.0, nps_weight=0.0)
    ds = signs("train", n=16)
    torch.manual_seed(0)
    model = TinyNet(num_classes=len(ds.classes)).eval()
    out = {}
    for name, attack in (("before", before), ("after", after)):
        fit = attack.fit(model, ds.x, ds.y, generator=gen(0), objects=ds.objects)
        out[name] = fit(model, ds.x[:4], ds.y[:4], generator=gen(1), objects=ds.objects.select(range(4)))
    for key in ("tv", "palette_distance"):
        assert float(out["after"].metrics[key][0]) < 0.5 * float(out["before"].metrics[key][0]), key
