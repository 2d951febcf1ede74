"""A folder given as data takes its input size from the model.

The data is loaded before the model (the model's head is checked against the data's classes), so a
folder's dataset is loaded again at the size the model declares (:func:`robustkit.models.inputsize.
declared_input`: zoo metadata, timm's ``pretrained_cfg``, torchvision's weights transforms, RobustBench's
dataset, an ``input_size`` attribute of your own model). Listing a folder is cheap; no image has been
decoded by then. The run states the size it used and where it came from in one line
(``input 224x224 from timm pretrained_cfg of resnet18.a1_in1k``), logged, stored in ``summary.json``
(``input``) and shown in the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..data.loading import load_dataset
from ..models.inputsize import InputSize, declared_input


def fit_to_model(
    data: Any, split: str, root: str | Path | None, dataset: Dataset, net: Any, info: dict[str, Any]
) -> tuple[Dataset, dict[str, Any] | None]:
    """``dataset`` (loaded from ``data``, ``split``, ``root``) at the input size the model ``net`` (with its
    provenance ``info``) declares, and the record of the size used; ``(dataset, None)`` for data whose size
    does not follow the model (built-in data, manifests of fixed-size formats, tensors)."""
    if getattr(dataset, "input_from", None) is None:
        return dataset, None
    declared = declared_input(net, info)
    if declared is not None and dataset.input_from == "data":
        dataset = load_dataset(data, split, root=root, model_input=declared.preprocessing())
    return dataset, input_statement(dataset, declared)


def input_statement(dataset: Any, declared: InputSize | None) -> dict[str, Any]:
    """What a run records of the input size of ``dataset`` (a folder given as data, its ``input_from`` set)
    given what the model ``declared``: size, clip length, resize, where from, and the one ``line`` it states."""
    len(dataset)  # an image folder's own size is its first readable image's, found when it is first sized
    size = dataset.size
    h, w = (size, size) if isinstance(size, int) else size
    frames = getattr(dataset, "frames", None)
    used = InputSize(int(h), int(w), "", resize=getattr(dataset, "resize", None), frames=frames)
    origin = dataset.input_from
    if origin == "model" and declared is not None:
        source = declared.source
        line = f"input {used.dims} from {source}"
        if frames and not declared.frames:
            line += f" ({frames} frames: the video folder default)"
    elif origin == "manifest":
        source = "the manifest's preprocessing"
        line = f"input {used.dims} from {source}"
        if declared is not None:
            line += f" (the model declares {declared.dims}, from {declared.source})"
    else:
        source = "robustkit's video folder defaults" if frames else "the images' own size"
        line = f"input {used.dims}: {source} (the model declares no input size)"
    return {**used.as_dict(), "from": origin, "source": source, "line": line}


def model_input(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``model_input`` to load another split of the same data at the size a run used (``record`` from
    :func:`fit_to_model`); None when the size did not come from the model."""
    if not record or record.get("from") != "model":
        return None
    h, w = record["size"]
    return InputSize(h, w, record["source"], resize=record["resize"], frames=record["frames"]).preprocessing()
