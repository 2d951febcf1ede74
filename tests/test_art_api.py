"""robustkit.art: the ART-compatible API on tiny models (layouts, ranges, labels, masks, patches,
set_params, estimators both ways, ART attacks in recipes, ART estimators in robustkit.evaluate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import nn

import robustkit.art as rka
from robustkit.attacks import ATTACKS, create_attack
from robustkit.errors import ConfigError, InputError, ModelError
from robustkit.functional.random import sample_generators


class Permute(nn.Module):
    def __init__(self, model: nn.Module, perm: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.perm = model, perm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(self.perm))


def tiny_video() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()


def classifier(model: nn.Module, shape=(3, 16, 16), nb_classes=10, **kw) -> PyTorchClassifier:
    kw.setdefault("clip_values", (0.0, 1.0))
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=nb_classes,
        device_type="cpu",
        **kw,
    )


@pytest.fixture
def clf(tiny_model) -> PyTorchClassifier:
    return classifier(tiny_model)


@pytest.fixture
def xy(tiny_batch) -> tuple[np.ndarray, np.ndarray]:
    x, y = tiny_batch
    return x.numpy(), y.numpy()


# ---------------------------------------------------------------------------------------- classes
def test_every_registered_attack_has_an_art_class(clf):
    names = rka.class_names()
    assert sorted(names.values()) == ATTACKS.names()
    video = classifier(tiny_video(), shape=(3, 4, 16, 16), nb_classes=5)
    for name, key in names.items():
        cls = getattr(rka, name)
        assert cls is rka.attack_class(key) and cls.__name__ == name and cls.key == key
        from art.attacks.attack import EvasionAttack

        assert issubclass(cls, EvasionAttack)
        fields = set(create_attack(key).params())
        assert fields <= set(cls.attack_params) | {"patch", "texture"}
        assert {"batch_size", "seed", "verbose"} <= set(cls.attack_params)
        kind = getattr(ATTACKS.get(key), "input_kind", "image")
        instance = cls(video if kind == "video" else clf, verbose=False)
        assert "verbose=False" in repr(instance)
    assert issubclass(rka.Patch, rka.RobustkitPatchAttack)
    with pytest.raises(AttributeError):
        rka.NoSuchAttack  # noqa: B018


def test_factory_uses_recipe_names_and_suggests(clf):
    a = rka.attack("pgd", clf, eps=4 / 255, steps=3)
    assert isinstance(a, rka.PGD) and a.eps == 4 / 255 and a.robustkit_attack().steps == 3
    assert isinstance(rka.attack("PGD", clf), rka.PGD)
    with pytest.raises(ConfigError, match="did you mean 'pgd'"):
        rka.attack("pgdd", clf)
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        rka.attack("pgd", clf, stepz=3)


def test_set_params_raises_like_art(clf):
    ours = rka.attack("pgd", clf, eps=4 / 255)
    theirs = ProjectedGradientDescent(clf, eps=4 / 255, eps_step=1 / 255)
    for attack in (ours, theirs):
        with pytest.raises(ValueError, match="cannot be set"):
            attack.set_params(no_such_param=1)
        with pytest.raises(ValueError):
            attack.set_params(eps=-1.0)
        with pytest.raises(ValueError):
            attack.set_params(batch_size=0)
    with pytest.raises(ValueError):
        ours.set_params(norm="L7")
    with pytest.raises(ValueError):
        ours.set_params(steps=0)
    assert ours.eps == 4 / 255 and ours.batch_size == 128  # unchanged after the failures
    ours.set_params(eps=2 / 255, steps=2)
    assert ours.robustkit_attack().eps == 2 / 255 and ours.robustkit_attack().steps == 2


# ---------------------------------------------------------------------------------------- generate
def test_generate_labels_dtype_and_budget(clf, xy):
    x, y = xy
    a = rka.attack("pgd", clf, eps=8 / 255, steps=3, seed=1, verbose=False)
    adv = a.generate(x, y)
    assert adv.dtype == np.float32 and adv.shape == x.shape
    assert np.abs(adv - x).max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    np.testing.assert_array_equal(a.generate(x, np.eye(10, dtype=np.float32)[y]), adv)  # one-hot == indices
    pred = clf.predict(x).argmax(1)
    np.testing.assert_array_equal(a.generate(x), a.generate(x, pred))  # y=None attacks the predictions
    assert a.last_result.success.shape == (len(x),) and a.last_result.counters["backward"] == 3
    with pytest.raises(InputError):
        a.generate(x, y[:3])
    with pytest.raises(InputError, match="clip_values"):
        a.generate(x * 2 + 1, y)
    with pytest.raises(ConfigError, match="unexpected"):
        a.generate(x, y, foo=1)


def test_targeted_y_is_the_target(clf, xy):
    x, _ = xy
    target = (clf.predict(x).argmax(1) + 1) % 10
    a = rka.attack("pgd", clf, eps=1.0, steps=20, targeted=True, random_start=False, seed=0, verbose=False)
    adv = a.generate(x, target)
    hit = clf.predict(adv).argmax(1) == target
    np.testing.assert_array_equal(hit, a.last_result.success.cpu().numpy())
    assert hit.mean() >= 0.5


def test_clip_values_rescale_budgets(tiny_model, xy):
    x, y = xy
    unit = rka.attack("pgd", classifier(tiny_model), eps=4 / 255, steps=3, random_start=False, verbose=False)
    c255 = classifier(tiny_model, clip_values=(0.0, 255.0), preprocessing=(0.0, 255.0))
    wide = rka.attack("pgd", c255, eps=4.0, steps=3, random_start=False, verbose=False)
    assert rka.attack("pgd", c255).eps == pytest.approx(8.0)  # default 8/255 shown in the estimator's units
    assert wide.robustkit_attack().eps == pytest.approx(4 / 255)
    a, b = unit.generate(x, y), wide.generate(x * 255, y) / 255
    assert np.abs(a - b).max() < 1e-4


def test_channels_last_and_preprocessing(tiny_model, xy):
    x, y = xy
    mean, std = np.array([0.4, 0.5, 0.6], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    first = classifier(tiny_model, preprocessing=(mean, std))
    last = classifier(Permute(tiny_model, (0, 3, 1, 2)), shape=(16, 16, 3), channels_first=False,
                      preprocessing=(mean, std))  # fmt: skip
    kw = dict(eps=4 / 255, steps=3, seed=3, verbose=False)
    a = rka.attack("pgd", first, **kw).generate(x, y)
    b = rka.attack("pgd", last, **kw).generate(x.transpose(0, 2, 3, 1), y)
    np.testing.assert_allclose(b.transpose(0, 3, 1, 2), a, atol=1e-6)
    for est, xin in ((first, x), (last, x.transpose(0, 2, 3, 1))):
        module = rka.from_estimator(est)
        with torch.no_grad():
            np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), est.predict(xin), atol=1e-5)


def test_mask_keeps_features_outside(clf, xy):
    x, y = xy
    a = rka.attack("pgd", clf, eps=16 / 255, steps=3, seed=0, verbose=False)
    shared = np.zeros((1, 3, 16, 16), np.float32)
    shared[..., 4:12, 4:12] = 1
    adv = a.generate(x, y, mask=shared)
    assert np.array_equal(adv[..., :4, :], x[..., :4, :]) and np.abs(adv - x).max() > 0
    per = np.zeros_like(x)
    per[::2, :, :8] = 1  # top half for even samples, bottom half for odd ones
    per[1::2, :, 8:] = 1
    adv = a.generate(x, y, mask=per)
    assert np.array_equal(adv[per == 0], x[per == 0]) and np.abs(adv - x)[per == 1].max() > 0
    pred = clf.predict(adv).argmax(1)
    np.testing.assert_array_equal(a.last_result.success.cpu().numpy(), pred != y)
    with pytest.raises(ConfigError, match="broadcast"):
        a.generate(x, y, mask=np.ones((5, 5)))


# ---------------------------------------------------------------------------------------- patch
def test_patch_follows_adversarial_patch_pytorch(tiny_model, xy):
    x, y = xy
    est = classifier(tiny_model, clip_values=(0.0, 255.0), preprocessing=(0.0, 255.0))
    a = rka.attack(
        "patch", est, max_iter=3, batch_size=4, size=0.2, targeted=False, eval_draws=0, seed=0, verbose=False
    )
    patch, mask = a.generate(x * 255, y)
    assert patch.shape == mask.shape and patch.shape[0] == 3 and patch.shape[1] == patch.shape[2]
    assert patch.min() >= 0 and patch.max() <= 255 and patch.max() > 1  # in the estimator's range
    assert mask.max() == pytest.approx(1.0) and mask[0, 0, 0] < 0.5  # circle
    np.testing.assert_allclose(a.patch, patch)
    out = a.apply_patch(x * 255, scale=0.4)
    assert out.shape == x.shape and np.abs(out - x * 255).max() > 1
    where = np.zeros((1, 16, 16), bool)
    where[0, 3, 3] = True  # every centre at (row 3, col 3): the far corner stays untouched
    out = a.apply_patch(x * 255, scale=0.3, mask=where)
    np.testing.assert_array_equal(out[..., 10:, 10:], (x * 255)[..., 10:, 10:])
    assert np.abs(out[..., 1:6, 1:6] - x[..., 1:6, 1:6] * 255).max() > 1
    ext = a.apply_patch(x * 255, scale=0.3, patch_external=np.full_like(patch, 255.0), mask=where)
    assert ext[:, :, 3, 3].min() == pytest.approx(255.0, abs=1e-3)
    targeted = rka.attack("patch", est, max_iter=1, targeted=True, verbose=False)
    with pytest.raises(InputError, match="one target class"):
        targeted.generate(x * 255, y)
    with pytest.raises(ConfigError, match="apply_patch"):
        a.generate(x * 255, y, mask=where)


# ---------------------------------------------------------------------------------------- estimators
def test_to_estimator_and_back(tiny_model, tiny_batch):
    x, y = tiny_batch
    est = rka.to_estimator(tiny_model, input_shape=(3, 16, 16))
    assert est.nb_classes == 10 and est.clip_values[1] == 1.0 and est.model is tiny_model
    np.testing.assert_allclose(est.predict(x.numpy()), tiny_model(x).detach().numpy(), atol=1e-6)
    wide = rka.to_estimator(tiny_model, input_shape=(16, 16, 3), layout="NHWC", clip_values=(0, 255))
    np.testing.assert_allclose(
        wide.predict(x.numpy().transpose(0, 2, 3, 1) * 255), est.predict(x.numpy()), atol=1e-5
    )
    back = rka.from_estimator(wide)
    with torch.no_grad():
        np.testing.assert_allclose(back(x).numpy(), tiny_model(x).numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="input_shape"):
        rka.to_estimator(tiny_model)


def test_video_frame_layouts():
    net = tiny_video()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 4, 16, 16, generator=g)  # (N, C, T, H, W)
    frames = x.permute(0, 2, 1, 3, 4).numpy()  # ART's (N, T, C, H, W)
    est = rka.to_estimator(net, input_shape=(4, 3, 16, 16), layout="NTCHW")
    assert est.input_shape == (4, 3, 16, 16)
    with torch.no_grad():
        logits = net(x).numpy()
    np.testing.assert_allclose(est.predict(frames), logits, atol=1e-5)
    module = rka.from_estimator(est)  # (T, C, H, W) detected from the shape
    assert module.layout == "NTCHW"
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), logits, atol=1e-5)
    y = logits.argmax(1)
    for layout, xin, back in ((None, frames, (0, 2, 1, 3, 4)), ("NCTHW", x.numpy(), (0, 1, 2, 3, 4))):
        e = est if layout is None else rka.to_estimator(net, input_shape=(3, 4, 16, 16))
        adv = rka.attack("pgd", e, eps=4 / 255, steps=2, seed=5, verbose=False).generate(xin, y)
        native = create_attack("pgd", eps=4 / 255, steps=2)(net, x, torch.from_numpy(y),
                                                             generator=sample_generators(5, range(3)))  # fmt: skip
        np.testing.assert_allclose(adv.transpose(back), native.x_adv.numpy(), atol=1e-6)
    if "video-pgd" in ATTACKS:
        adv = rka.attack("video-pgd", est, verbose=False).generate(frames, y)
        assert adv.shape == frames.shape


def test_from_estimator_preprocessing_defences(tiny_model, tiny_batch):
    from art.defences.preprocessor import SpatialSmoothing, SpatialSmoothingPyTorch

    x, _ = tiny_batch
    smooth = SpatialSmoothingPyTorch(
        window_size=3, channels_first=True, clip_values=(0.0, 1.0), device_type="cpu"
    )
    est = classifier(tiny_model, preprocessing_defences=[smooth], preprocessing=(0.5, 0.25))
    with torch.no_grad():
        np.testing.assert_allclose(rka.from_estimator(est)(x).numpy(), est.predict(x.numpy()), atol=1e-5)
    numpy_only = classifier(tiny_model, preprocessing_defences=[SpatialSmoothing(window_size=3)])
    with pytest.raises(ModelError, match="numpy"):
        rka.from_estimator(numpy_only)


def test_load_model_accepts_estimators(clf, tiny_model, tiny_batch):
    from robustkit.models.loading import load_model

    model, info = load_model(clf)
    assert isinstance(model, rka.EstimatorModel) and model.model is tiny_model
    x, _ = tiny_batch
    with torch.no_grad():
        assert torch.equal(model(x), tiny_model(x))


# ---------------------------------------------------------------------------------------- recipes
def test_art_attacks_in_recipes(tiny_model, tiny_batch):
    from robustkit.evaluation.suite import load_suite
    from robustkit.models.state import preserved  # noqa: F401  (the contract the attack call relies on)

    suite = load_suite({"name": "t", "attacks": [
        {"attack": "art.ProjectedGradientDescent", "eps": ["2/255", "8/255"], "eps_step": "1/255", "max_iter": 3},
    ]})  # fmt: skip
    assert [e.name for e in suite.entries] == [
        "art.ProjectedGradientDescent@2/255",
        "art.ProjectedGradientDescent@8/255",
    ]
    entry = suite.entries[1]
    assert entry.attack.threat.eps == pytest.approx(8 / 255) and entry.attack.threat.name == "Linf"
    assert suite.resolved()["attacks"][1]["max_iter"] == 3
    x, y = tiny_batch
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    result = entry.attack(tiny_model, x, y, generator=sample_generators(0, range(len(x))))
    assert tiny_model.training and all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert (result.x_adv - x).abs().max() <= 8 / 255 + 1e-6
    tiny_model.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(
            result.success.numpy(), (tiny_model(result.x_adv).argmax(1) != y).numpy()
        )
    assert result.counters["backward"] >= 3
    for bad, match in (
        ({"attack": "art.ProjectedGradientDescnt"}, "did you mean 'ProjectedGradientDescent'"),
        ({"attack": "art.ProjectedGradientDescent", "max_iters": 3}, "did you mean 'max_iter'"),
        ({"attack": "art.ProjectedGradientDescent", "eps": -1}, "nonnegative"),
        ({"attack": "art.AdversarialPatchPyTorch"}, "robustkit's `patch`"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_suite({"attacks": [bad]})
