"""Library code leaves the caller's random state alone: building or loading every zoo model (trained or
from the cache), generating every built-in dataset and building every defense."""

from __future__ import annotations

import pytest
import torch

from robustkit.builtin.shapes import shapes
from robustkit.builtin.zoo import ZOO, ZooEntry, load_zoo_model, register_small_resnet, zoo_path
from robustkit.data.synthetic import BUILTIN
from robustkit.defenses.base import DEFENSES
from robustkit.training.data import DataSpec


def rng_state() -> list[torch.Tensor]:
    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states += torch.cuda.get_rng_state_all()
    return states


def assert_untouched(before: list[torch.Tensor]) -> None:
    after = rng_state()
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("name", ZOO.names())
def test_loading_a_zoo_model_leaves_the_global_rng_alone(name):
    torch.manual_seed(1234)
    before = rng_state()
    load_zoo_model(name, progress=False)
    ZOO.create(name).build()
    assert_untouched(before)


@pytest.mark.parametrize("name", BUILTIN.names())
def test_generating_a_builtin_dataset_leaves_the_global_rng_alone(name):
    torch.manual_seed(1234)
    before = rng_state()
    BUILTIN.create(name, split="test", n=4)
    assert_untouched(before)


def test_training_a_zoo_model_on_first_use_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_CACHE", str(tmp_path))
    name = "test-rng-tiny-resnet"
    if name not in ZOO:
        entry = register_small_resnet(
            "test-rng-tiny", lambda split: shapes(split, n=64), 10, seed=3, epochs=1, about="tests"
        )
        assert isinstance(entry, ZooEntry) and entry.name == name
    torch.manual_seed(1234)
    before = rng_state()
    model = load_zoo_model(name, progress=False)
    assert_untouched(before)
    assert zoo_path(name).is_file() and not model.training


@pytest.mark.parametrize("name", DEFENSES.names())
def test_building_a_defense_leaves_the_global_rng_alone(name):
    recipe = DEFENSES.create(name)
    torch.manual_seed(1234)
    before = rng_state()
    recipe.build(DataSpec("shapes", 10, (3, 32, 32)), recipe.settings)
    assert_untouched(before)


def test_zoo_cache_names_are_unchanged():
    """The cache key of a zoo model depends on its name, version and torch only: moving the zoo did not
    invalidate any cached weights."""
    import hashlib
    import json

    blob = json.dumps({"name": "shapes-resnet", "version": "1", "torch": torch.__version__.split("+")[0]})
    assert (
        zoo_path("shapes-resnet").name
        == f"shapes-resnet-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.safetensors"
    )
