"""One run configuration: built once (from the CLI or from keyword arguments), validated here, written
to ``config.yaml``, and the one judge of whether a run directory may be resumed.

``RunConfig.identity()`` covers everything that can change a result: what is evaluated (model spec or
name, the sha256 of a weights file's content and of an in-memory model's parameters), the data (spec,
or the sha256 of tensors given directly; root, split, limit), the resolved suite, the seed, the fast-path options, the
declared capabilities and transfer sources, EOT draws, verdict draws, an eps override and the class count.
Options that cannot change a result stay out of it (batch size, threads, progress, output directory,
gallery size, report, profile): a run resumed with another batch size attacks every sample not yet done
and ends with the same outcomes as an uninterrupted run. A batch-dependent model is the exception: its
results depend on its batches, so its run refuses another batch size.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .. import schema
from ..data.loading import tensor_dataset
from ..defenses.adaptive import MIN_DRAWS, check_names
from ..defenses.base import Capabilities, Defense, as_defense
from ..device import resolve_device
from ..errors import ConfigError, InputError
from ..files import atomic_write, storage_error
from ..models.fastpath import FastPath, make_fastpath
from ..models.normalized import parse_normalize
from ..registry import check_keys, dataclass_fields
from .suite import Suite, load_suite, parse_eps, with_eps

CONFIG_FILE = "config.yaml"
CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """The sha256 of named tensors (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def content_sha256(obj: Any) -> str | None:
    """The content hash of an in-memory model (its parameters and buffers; an ART estimator's or a
    ``Defense``'s torch model) or of data given as tensors (``(x, y)``, or an in-memory dataset holding
    tensors ``x`` and ``y``); None for anything else (a spec string, a dataset on disk)."""
    inner = getattr(obj, "model", None)
    if not isinstance(obj, nn.Module) and isinstance(inner, nn.Module):
        obj = inner
    if isinstance(obj, nn.Module):
        return tensors_sha256(obj.state_dict())
    if not isinstance(obj, tuple | list) and all(
        isinstance(getattr(obj, k, None), torch.Tensor) for k in "xy"
    ):
        obj = (obj.x, obj.y)
    if isinstance(obj, tuple | list) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return tensors_sha256({str(k): t for k, t in enumerate(obj)})
    return None


def merge_capabilities(a: Capabilities, b: Capabilities | None) -> Capabilities:
    """Both sets of declared capabilities (flags OR-ed, non-differentiable modules joined in order)."""
    if b is None:
        return a
    names = tuple(dict.fromkeys((*a.non_differentiable, *b.non_differentiable)))
    return Capabilities(stochastic=a.stochastic or b.stochastic, non_differentiable=names,
                        batch_dependent=a.batch_dependent or b.batch_dependent)  # fmt: skip


def _is_tensors(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


def _positive(value: Any, flag: str, optional: bool = False) -> None:
    if not (optional and value is None):
        schema.integer(value, flag, minimum=1)


AMP = (None, "none", "fp32", "bf16")


def check_compile(value: Any) -> bool | str:
    """``compile``: false, true (inductor) or the name of a backend ``torch.compile`` knows."""
    if isinstance(value, bool) or value in (None, "inductor"):
        return bool(value) if not isinstance(value, str) else value
    schema.string(value, "--compile")
    from torch._dynamo import list_backends

    if value not in list_backends(exclude_tags=()):
        raise schema.fail("--compile", f"a torch.compile backend ({', '.join(list_backends())})", value)
    return value


def _label(spec: Any) -> str | None:
    if spec is None or isinstance(spec, str | Path):
        return None if spec is None else str(spec)
    return str(getattr(spec, "name", None) or type(spec).__name__)


def _yaml_normalize(value: Any) -> Any:
    """A parsed ``normalize`` as config.yaml holds it (lists, so that a stored identity compares equal)."""
    return value if isinstance(value, str) else [list(value[0]), list(value[1])]


def _sources(model: Any) -> dict[str, str | None] | None:
    """A Defense's transfer sources by name and content hash (each is one more view of the run)."""
    if not isinstance(model, Defense) or not model.sources:
        return None
    return {name: content_sha256(src) for name, src in sorted(model.sources.items())}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a run needs to know from its caller (see the module docstring for the identity).

    ``model``: None (the zoo model for ``data``), a spec string, an ``nn.Module``, a callable, an
    ART estimator or a :class:`~robustkit.defenses.base.Defense` (``as_defense(...)``: its name names
    the run, its capabilities and transfer sources are part of the identity; ``capabilities`` given here
    are added to its own); ``data``: a dataset name, manifest path, folder (read at the input size the model
    declares: ``robustkit.evaluation.inputs``), dataset object or ``(x, y)`` tensors (a dataset of
    ``num_classes`` classes once built); ``suite``: a recipe name, path, dict or
    :class:`Suite` (loaded here; with ``eps``, every attack that has an eps runs at ``eps`` instead:
    ``suite.with_eps``).
    """

    model: Any = None
    data: Any = "shapes"
    suite: Any = "quick"
    weights: str | Path | None = None
    data_root: str | Path | None = None
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    model_name: str | None = None
    # adaptive evaluation (``robustkit.defenses.adaptive``): capabilities declared for a plain model (a
    # ``Defense`` brings its own), EOT draws inside gradient attacks and fresh draws for the verdict of a
    # stochastic model; ``eps`` overrides the eps of every attack of the suite; ``num_classes`` for
    # ``(x, y)`` data; ``keep_adversarial`` stores every adversarial example (``RunResult.adversarial``)
    capabilities: Capabilities | None = None
    eot_samples: int = 20
    draws: int = 10
    eps: float | str | None = None
    num_classes: int | None = None
    keep_adversarial: bool = False
    # the model's input normalization (``robustkit.models.normalized.parse_normalize``: None for the
    # architecture's own) and the library's pretrained weights (torchvision / timm architectures)
    normalize: Any = None
    pretrained: bool | str = False
    fold_bn: bool = False
    channels_last: bool = False
    compile: bool | str = False
    amp: str | None = None
    # how the run goes; none of these can change a result
    out: str | Path = "reports"
    name: str | None = None
    device: str | torch.device = "auto"
    batch_size: int = 128
    threads: int | None = None
    gallery: int = 8
    overwrite: bool = False
    progress: bool = True
    report: bool = True
    profile: bool = False
    # derived from the above when the configuration is built
    fastpath: FastPath = field(init=False, repr=False)
    weights_sha256: str | None = field(init=False, default=None)
    model_sha256: str | None = field(init=False, default=None)
    data_sha256: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        _positive(self.batch_size, "--batch-size")
        _positive(self.limit, "--limit", optional=True)
        _positive(self.threads, "--threads", optional=True)
        schema.integer(self.seed, "--seed")
        schema.integer(self.gallery, "gallery (a number of examples)", minimum=0)
        schema.string(self.split, "split (a split name such as 'test')")
        for flag in (
            "keep_adversarial",
            "fold_bn",
            "channels_last",
            "overwrite",
            "progress",
            "report",
            "profile",
        ):
            schema.boolean(getattr(self, flag), flag)
        schema.choice(self.amp, "--amp", AMP)
        check_compile(self.compile)
        if self.name is not None:
            schema.string(self.name, "--name")
        if not isinstance(self.out, str | Path) or not str(self.out):
            raise schema.fail("--out", "a directory path", self.out)
        resolve_device(self.device)
        _positive(self.eot_samples, "--eot-samples")
        schema.integer(self.draws, "--draws (fresh draws of a stochastic model's verdict)", minimum=MIN_DRAWS)
        _positive(self.num_classes, "num_classes", optional=True)
        if self.capabilities is not None and not isinstance(self.capabilities, Capabilities):
            raise ConfigError(f"capabilities must be a robustkit Capabilities, got {self.capabilities!r}")
        put = object.__setattr__  # frozen: derived fields are set once, here
        put(self, "normalize", parse_normalize(self.normalize))
        put(self, "fastpath", make_fastpath(self.channels_last, self.compile, self.amp, self.fold_bn))
        if not isinstance(self.suite, Suite):
            put(self, "suite", load_suite(self.suite))
        if self.eps is not None:
            put(self, "eps", parse_eps(self.eps, "--eps"))
            put(self, "suite", with_eps(self.suite, self.eps))
        if _is_tensors(self.data):
            put(self, "data", tensor_dataset(*self.data, num_classes=self.num_classes))
        elif self.num_classes is not None and len(getattr(self.data, "classes", ())) != self.num_classes:
            raise ConfigError(
                f"num_classes={self.num_classes} applies to (x, y) tensor data; {self.data_name!r} names its "
                "own classes: drop num_classes"
            )
        if isinstance(self.model, Defense) and (self.normalize is not None or self.pretrained):
            raise ConfigError("a Defense brings its own model: drop normalize/pretrained")
        if isinstance(self.model, Defense) and self.capabilities is not None:
            caps = merge_capabilities(self.model.capabilities, self.capabilities)
            put(self, "model", dataclasses.replace(self.model, capabilities=caps))
        if isinstance(self.model, Defense) or (isinstance(self.model, nn.Module) and self.capabilities):
            check_names(self.defense_for(getattr(self.model, "model", self.model)))
        if self.weights is not None:
            path = Path(self.weights).expanduser()
            if path.is_dir():
                raise InputError(f"--weights {path} is a directory; give the weights file in it")
            if not path.is_file():
                raise InputError(f"weights file {path} does not exist")
            put(self, "weights_sha256", file_sha256(path))
        put(self, "model_sha256", content_sha256(self.model))
        put(self, "data_sha256", content_sha256(self.data))

    @classmethod
    def build(cls, **options: Any) -> RunConfig:
        """The configuration from keyword arguments; an unknown one fails with a suggestion."""
        check_keys(options, dataclass_fields(cls), "evaluate")
        return cls(**options)

    @classmethod
    def from_cli(cls, args: Any) -> RunConfig:
        """The configuration of ``robustkit evaluate`` from its parsed arguments (``--stochastic``,
        ``--batch-dependent`` and ``--bpda NAME`` declare capabilities)."""
        flags = (args.stochastic, args.batch_dependent, tuple(args.bpda or ()))
        caps = Capabilities(*flags[:2], non_differentiable=flags[2]) if any(flags) else None
        return cls(model=args.model, data=args.data, suite=args.suite, weights=args.weights,
                   capabilities=caps, eps=args.eps, eot_samples=args.eot_samples, draws=args.draws,
                   normalize=getattr(args, "normalize", None), pretrained=getattr(args, "pretrained", False),
                   data_root=args.data_root, limit=args.limit, seed=args.seed, fold_bn=args.fold_bn,
                   channels_last=args.channels_last, compile=args.compile, amp=args.amp, out=args.out,
                   name=args.name, device=args.device, batch_size=args.batch_size, threads=args.threads,
                   overwrite=args.overwrite, progress=not args.quiet, profile=args.profile)  # fmt: skip

    def replace(self, **changes: Any) -> RunConfig:
        """A new configuration with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def declared(self) -> Capabilities | None:
        """The declared capabilities: a Defense's own (with ``capabilities`` added), or ``capabilities``."""
        return self.model.capabilities if isinstance(self.model, Defense) else self.capabilities

    def defense_for(self, net: nn.Module) -> Defense:
        """The Defense the runner adapts (``robustkit.defenses.adaptive.adapt``) given ``net``, the model as
        loaded on the device: ``model``'s Defense (name, capabilities, sources, info) around ``net``, or
        ``net`` named after the run's model with the declared ``capabilities``."""
        if isinstance(self.model, Defense):
            return dataclasses.replace(self.model, model=net)
        return as_defense(net, name=self.model_label or type(net).__name__, capabilities=self.capabilities)

    @property
    def data_name(self) -> str:
        return _label(self.data) or "data"

    @property
    def model_label(self) -> str | None:
        return self.model_name or _label(self.model)

    def identity(self) -> dict[str, Any]:
        """What decides resume: two configurations with the same identity give the same results."""
        return {
            "model": self.model_label,
            "model_sha256": self.model_sha256,
            "weights_sha256": self.weights_sha256,
            "data": self.data_name,
            "data_sha256": self.data_sha256,
            "data_root": str(self.data_root) if self.data_root else None,
            "split": self.split,
            "suite": self.suite.resolved(),
            "limit": self.limit,
            "seed": self.seed,
            "fastpath": self.fastpath.as_dict() if self.fastpath.active else None,
            "capabilities": self.declared.as_dict() if self.declared else None,
            "sources": _sources(self.model),
            "eot_samples": self.eot_samples,
            "draws": self.draws,
            "eps": self.eps,
            "num_classes": self.num_classes,
            **({"normalize": _yaml_normalize(self.normalize)} if self.normalize is not None else {}),
            **({"pretrained": self.pretrained} if self.pretrained else {}),
        }

    def as_dict(self) -> dict[str, Any]:
        """The resolved configuration as written to ``config.yaml`` (identity first, then options)."""
        options = {k: getattr(self, k) for k in ("batch_size", "threads", "gallery")}
        return {**self.identity(), "weights": str(self.weights) if self.weights else None,
                "device": str(self.device), **options}  # fmt: skip

    def write(self, run_dir: Path, **resolved: Any) -> Path:
        """Write ``config.yaml`` into ``run_dir`` (``resolved``: what loading found, e.g. the model's name)."""
        text = yaml.safe_dump(
            {**self.as_dict(), **({"resolved": resolved} if resolved else {})}, sort_keys=False
        )
        return atomic_write(Path(run_dir) / CONFIG_FILE, text)

    def differences(self, run_dir: Path) -> list[str] | None:
        """The identity keys in which the run stored in ``run_dir`` differs (None: no config.yaml there)."""
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            return None
        fix = (
            "robustkit cannot tell which run this directory holds. Pass --overwrite (overwrite=True) to "
            f"start the run over, or move {path.parent} away"
        )
        try:
            old = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise storage_error(path, exc, fix) from exc
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise storage_error(path, ValueError(f"not valid YAML: {str(exc).splitlines()[0]}"), fix) from exc
        if not isinstance(old, dict) or "suite" not in old:
            raise storage_error(path, ValueError("not a robustkit run configuration"), fix)
        return [k for k, v in self.identity().items() if old.get(k) != v]
