"""EOT on kornia containers: gradients through every transform, exact replay, batching, grid."""

from __future__ import annotations

import json

import pytest
import torch

from robustkit.eot import EOT, ORDER, TRANSFORMS, EOTParams, EvalGrid, make_eot, mean_over_draws
from robustkit.errors import ConfigError

FULL = EOT(
    rotation=20, scale=(0.8, 1.2), translate=0.1, perspective=0.3, brightness=0.1, contrast=0.2, gamma=0.2,
    hue=0.05, saturation=0.2, noise=0.02, blur=1.0, jpeg=(50, 90), n_samples=4,
)  # fmt: skip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_transform_is_active_and_built_with_p_one():
    assert FULL.active == ORDER
    for module in FULL.container.children():
        assert module.p == 1.0


@pytest.mark.parametrize("kind", [k for k in ORDER if k != "jpeg"])
def test_gradcheck_float64(kind):
    eot = FULL.only([kind])
    x = (torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=gen(1)) * 0.6 + 0.2).requires_grad_(True)
    params = eot.sample(1, gen(2), (8, 8))
    assert torch.autograd.gradcheck(lambda t: eot.apply(t, params), (x,), eps=1e-6, atol=1e-4, fast_mode=True)


def test_jpeg_is_differentiable():
    """The JPEG codec quantizes (no gradcheck); its surrogate gradient must reach every image."""
    eot = FULL.only(["jpeg"])
    x = torch.rand(2, 3, 16, 16, generator=gen(3)).requires_grad_(True)
    out, _ = eot.draw(x, gen(4), n_samples=1)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(1) > 0).all()


def test_gradients_flow_through_the_full_chain():
    x = torch.rand(2, 3, 16, 16, generator=gen(5)).requires_grad_(True)
    out, params = FULL.draw(x, gen(6))
    assert out.shape == (8, 3, 16, 16) and params.n == 8
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert (grad.flatten(1).abs().sum(1) > 0).all()


def test_replay_is_exact_and_survives_json():
    x = torch.rand(3, 3, 16, 16, generator=gen(7))
    out, params = FULL.draw(x, gen(8))
    rows = x.repeat(FULL.n_samples, 1, 1, 1)
    assert torch.equal(FULL.apply(rows, params), out)
    blob = json.loads(json.dumps(params.as_artifact()))
    assert torch.equal(FULL.apply(rows, EOTParams.from_artifact(blob)), out)


def test_same_generator_same_draws_and_global_rng_untouched():
    x = torch.rand(2, 3, 16, 16, generator=gen(9))
    state = torch.random.get_rng_state()
    a, _ = FULL.draw(x, gen(10))
    b, _ = FULL.draw(x, gen(10))
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_per_sample_generators_make_draws_batch_independent():
    x = torch.rand(3, 3, 16, 16, generator=gen(11))
    eot = FULL.only(["affine", "brightness", "noise"])
    whole, _ = eot.draw(x, [gen(20 + i) for i in range(3)], n_samples=2)
    single, _ = eot.draw(x[1:2], [gen(21)], n_samples=2)
    assert torch.equal(whole.view(2, 3, 3, 16, 16)[:, 1], single.view(2, 1, 3, 16, 16)[:, 0])


def test_identity_and_mean_over_draws():
    x = torch.rand(2, 3, 8, 8, generator=gen(12))
    same, _ = EOT(n_samples=3).draw(x, gen(0))
    assert torch.equal(same, x.repeat(3, 1, 1, 1))
    vals = torch.arange(6.0)  # rows: draw-major, 2 images
    assert torch.equal(mean_over_draws(vals, 2), torch.tensor([2.0, 3.0]))


def test_recorded_params_select_rows():
    x = torch.rand(2, 3, 8, 8, generator=gen(13))
    out, params = FULL.draw(x, gen(14))
    rows = torch.tensor([1, 5])
    assert torch.equal(FULL.apply(x.repeat(4, 1, 1, 1)[rows], params.select(rows)), out[rows])


def test_heldout_is_wider_and_only_restricts():
    held = FULL.heldout(1.5)
    assert held.rotation == 30 and held.scale[0] < FULL.scale[0] and held.scale[1] > FULL.scale[1]
    assert set(FULL.only(["affine", "noise"]).active) == {"affine", "noise"}


def test_grid_params_and_curves():
    grid = EvalGrid(rotations=(0.0, 90.0), scales=(1.0,), brightnesses=(0.0, 0.3))
    x = torch.rand(2, 3, 8, 8, generator=gen(15))
    params = grid.image_params(2, (8, 8))
    out = grid.eot().apply(x.repeat(4, 1, 1, 1), params)
    assert torch.allclose(out[:2], x, atol=1e-5)  # rotation 0, scale 1, brightness 0 is the identity
    assert torch.allclose(out[2:4], (x + 0.3).clamp(0, 1), atol=1e-5)
    hits = torch.tensor([[0, 0], [1, 1], [1, 0], [1, 1]], dtype=torch.bool)
    curves = grid.curves(hits)
    assert curves["rotation"]["success_rate"] == [0.5, 0.75]
    assert curves["brightness"]["success_rate"] == [0.25, 1.0]
    json.dumps(curves)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="rotaton.*did you mean 'rotation'"):
        make_eot({"rotaton": 10})
    with pytest.raises(ConfigError, match="perspective"):
        EOT(perspective=1.5)
    with pytest.raises(ConfigError, match="jpeg"):
        EOT(jpeg=(0, 120))
    assert make_eot({"scale": [0.9, 1.1]}, n_samples=5).n_samples == 5


@pytest.mark.parametrize("kind", list(TRANSFORMS))
def test_each_transform_is_one_spec(kind):
    """A transform's spec switches it on and off, builds its kornia module, samples parameters that
    replay bit for bit through the artifact."""
    spec = TRANSFORMS[kind]
    alone = FULL.only([kind])
    assert alone.active == (kind,) and spec.active(alone)
    assert not spec.active(FULL.only([k for k in TRANSFORMS if k != kind]))
    assert [type(m) for m in alone.container.children()] == [type(spec.module(FULL))]
    x = torch.rand(3, 3, 12, 12, generator=gen(4))
    rows, params = alone.draw(x, gen(5))
    assert set(params.values) == {kind}
    replayed = alone.apply(x.repeat(alone.n_samples, 1, 1, 1), EOTParams.from_artifact(params.as_artifact()))
    assert torch.equal(rows, replayed)
