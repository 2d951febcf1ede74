"""The bad-input catalogue: each case gives a clear message, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import errno
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from robustkit.api import evaluate
from robustkit.cli import main
from robustkit.errors import ConfigError, InputError
from robustkit.files import inside


def _run(tmp_path, capsys, *args):
    out = tmp_path / "out"
    code = main(["evaluate", "--out", str(out), "--quiet", "--limit", "8", *args])
    err = capsys.readouterr().err
    return code, err, out


def _suite(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return str(p)


# ----------------------------------------------------------------------------- the catalogue (issue 18)
# Every bad input below exits 2 before anything is written, with a message naming the file (recipe,
# manifest, data file) or the option and the field, and no traceback. Recipes: (id, YAML, fragment).
P = "attacks: [{attack: pgd, %s}]"
RECIPES = [
    ("malformed-yaml", "attacks: [{attack: pgd, eps: [1/255}", "malformed YAML"),
    ("key-typo", P % "epz: 0.1", "did you mean 'eps'"),
    ("attack-typo", "attacks: [{attack: pgdx}]", "did you mean 'pgd'"),
    ("attack-list", "attacks: [{attack: [pgd]}]", "attacks[0].attack must be the name of a registered attack"),
    ("attack-mapping", "attacks: [{attack: {name: pgd}}]", "attacks[0].attack must be the name"),
    ("attack-number", "attacks: [{attack: 5}]", "attacks[0].attack must be the name"),
    ("attack-null", "attacks: [{attack: null}]", "attacks[0].attack must be the name"),
    ("attack-missing", "attacks: [{eps: 1/255}]", "needs an 'attack' key"),
    ("entry-not-mapping", "attacks: [pgd]", "needs an 'attack' key"),
    ("attacks-empty", "attacks: []", "'attacks' must be a non-empty list"),
    ("attacks-string", "attacks: pgd", "'attacks' must be a non-empty list"),
    ("attacks-missing", "name: x", "'attacks' must be a non-empty list"),
    ("top-level-list", "- attack: pgd", "a suite must be a mapping"),
    ("top-level-scalar", "hello", "a suite must be a mapping"),
    ("empty-file", "", "a suite must be a mapping"),
    ("top-key-typo", "atacks: [{attack: pgd}]", "did you mean 'attacks'"),
    ("suite-name-list", "name: [a]\nattacks: [{attack: fgsm}]", "name must be a string"),
    ("description-mapping", "description: {a: 1}\nattacks: [{attack: fgsm}]", "description must be a string"),
    ("entry-name-list", "attacks: [{attack: fgsm, name: [x]}]", "attacks[0].name must be a non-empty string"),
    ("entry-name-empty", "attacks: [{attack: fgsm, name: ''}]", "attacks[0].name must be a non-empty string"),
    ("duplicate-names", "attacks: [{attack: fgsm, name: a}, {attack: pgd, name: a}]", "must be unique"),
    ("steps-fraction", P % "steps: 2.5", "attacks[0].steps must be an integer"),
    ("steps-zero", P % "steps: 0", "attacks[0].steps must be an integer >= 1"),
    ("steps-negative", P % "steps: -3", "attacks[0].steps must be an integer >= 1"),
    ("steps-word", P % "steps: ten", "attacks[0].steps must be an integer"),
    ("steps-bool", P % "steps: true", "attacks[0].steps must be an integer"),
    ("steps-list", P % "steps: [10]", "attacks[0].steps must be an integer"),
    ("steps-inf", P % "steps: .inf", "attacks[0].steps must be an integer"),
    ("step-size-nan", P % "step_size: .nan", "attacks[0].step_size must be a finite number"),
    ("step-size-negative", P % "step_size: -0.1", "attacks[0].step_size must be a number > 0"),
    ("step-size-zero", P % "step_size: 0", "attacks[0].step_size must be a number > 0"),
    ("step-size-word", P % "step_size: abc", "attacks[0].step_size must be a number"),
    ("eps-nan", P % "eps: .nan", "attacks[0].eps must be a finite number"),
    ("eps-nan-named", "attacks: [{attack: pgd, name: p, eps: .nan}]", "attacks[0].eps must be a finite number"),
    ("eps-inf", P % "eps: .inf", "attacks[0].eps must be a finite number"),
    ("l2-eps-inf", P % "norm: L2, eps: .inf", "attacks[0].eps must be a finite number"),
    ("eps-true", P % "eps: true", "attacks[0].eps must be a number"),
    ("eps-false", P % "eps: false", "attacks[0].eps must be a number"),
    ("eps-empty-list", P % "eps: []", "attacks[0].eps (a number or a list of numbers) must be a non-empty list"),
    ("eps-mapping", P % "eps: {a: 1}", "attacks[0].eps must be a number"),
    ("eps-two-dots", P % "eps: '1.2.3/255'", "attacks[0].eps must be a number such as 8/255"),
    ("eps-double-fraction", P % "eps: '8/255/2'", "attacks[0].eps must be a number such as 8/255"),
    ("eps-division-by-zero", P % "eps: 8/0", "division by zero"),
    ("eps-negative", P % "eps: -0.1", "eps must be a number >= 0"),
    ("eps-not-in-255", P % "eps: 8", "did you mean 8/255"),
    ("eps-word", P % "eps: abc", "eps must be a number"),
    ("eps-sweep-nan", P % "eps: [1/255, .nan]", "attacks[0].eps[1] must be a finite number"),
    ("eps-sweep-word", P % "eps: [1/255, abc]", "attacks[0].eps[1] must be a number"),
    ("norm-unknown", P % "norm: l3", "unknown norm"),
    ("norm-list", P % "norm: [Linf]", "attacks[0].norm must be a string"),
    ("restarts-zero", P % "restarts: 0", "attacks[0].restarts must be an integer >= 1"),
    ("restarts-fraction", P % "restarts: 1.5", "attacks[0].restarts must be an integer"),
    ("random-start-word", P % "random_start: maybe", "attacks[0].random_start must be true or false"),
    ("targeted-number", P % "targeted: 1", "attacks[0].targeted must be true or false"),
    ("loss-list", P % "loss: [ce]", "attacks[0].loss must be a string"),
    ("eot-samples-zero", P % "eot_samples: 0", "attacks[0].eot_samples must be an integer >= 1"),
    ("apgd-rho-nan", "attacks: [{attack: apgd-ce, rho: .nan}]", "attacks[0].rho must be a finite number"),
    ("square-queries-zero", "attacks: [{attack: square, queries: 0}]", "attacks[0].queries must be an integer >= 1"),
    ("square-p-init-inf", "attacks: [{attack: square, p_init: .inf}]", "attacks[0].p_init must be a finite number"),
    ("patch-max-iter-fraction", "attacks: [{attack: patch, max_iter: 2.5}]", "attacks[0].max_iter must be an integer"),
    ("patch-lr-negative", "attacks: [{attack: patch, learning_rate: -1}]", "attacks[0].learning_rate must be a number > 0"),
    ("fgsm-second-entry", "attacks: [{attack: fgsm}, {attack: fgsm, name: b, eps: .nan}]", "attacks[1].eps must be a finite"),
]  # fmt: skip


@pytest.mark.parametrize("text,message", [pytest.param(t, m, id=i) for i, t, m in RECIPES])
def test_bad_recipes(tmp_path, capsys, text, message):
    suite = _suite(tmp_path, text)
    code, err, out = _run(tmp_path, capsys, "--suite", suite)
    assert code == 2 and message in err and suite in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_binary_recipe_file(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_bytes(b"\xff\xfe\x00garbage")
    code, err, out = _run(tmp_path, capsys, "--suite", str(suite))
    assert code == 2 and str(suite) in err and "cannot read the recipe" in err and not out.exists()


def _folder(root, classes=2, n=3, size=32):
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((size, size, 3), 40 * i + 90 * c, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _png_header(path, w, h):
    """A PNG that declares ``w`` x ``h`` pixels (what PIL's guard reads before decoding anything)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _gtsrb(root, missing=False, class_id="1", columns=True):
    d = root / "Final_Test" / "Images"
    d.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId" if columns else "Filename;ClassId"]
    for i in range(20):
        name = f"{i:05d}.ppm"
        if not (missing and i == 17):  # a file listed past the first batch is gone
            Image.fromarray(np.full((30, 30, 3), 10 * i, dtype=np.uint8)).save(d / name)
        cid = class_id if i == 15 else "1"
        rows.append(f"{name};30;30;2;2;27;27;{cid}" if columns else f"{name};{cid}")
    (d / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


IMG = "name: tiny\nformat: imagefolder\nroot: {root}\n"
VID = "name: v\nformat: ucf101\nroot: {root}\npreprocessing: {{%s}}\n"
# Manifests: (id, manifest text with {root} for a folder of 2 classes, fragment naming the field)
MANIFESTS = [
    ("size-negative", IMG + "preprocessing: {{size: -5}}", "preprocessing.size must be an integer >= 1, got -5"),
    ("size-word", IMG + "preprocessing: {{size: abc}}", "preprocessing.size must be an integer >= 1, got 'abc'"),
    ("size-zero", IMG + "preprocessing: {{size: 0}}", "preprocessing.size must be an integer >= 1"),
    ("size-fraction", IMG + "preprocessing: {{size: 2.5}}", "preprocessing.size must be an integer"),
    ("size-bool", IMG + "preprocessing: {{size: true}}", "preprocessing.size must be an integer"),
    ("resize-negative", IMG + "preprocessing: {{resize: -1}}", "preprocessing.resize must be an integer >= 1"),
    ("on-corrupt-explode", IMG + "preprocessing: {{on_corrupt: explode}}", "preprocessing.on_corrupt must be one of skip, error"),
    ("max-pixels-zero", IMG + "preprocessing: {{max_pixels: 0}}", "preprocessing.max_pixels must be an integer >= 1"),
    ("max-pixels-word", IMG + "preprocessing: {{max_pixels: lots}}", "preprocessing.max_pixels must be an integer"),
    ("preprocessing-typo", IMG + "preprocessing: {{sise: 32}}", "did you mean 'size'"),
    ("preprocessing-list", IMG + "preprocessing: [size]", "preprocessing must be a mapping"),
    ("format-missing", "name: x\nroot: {root}\n", "missing 'format'"),
    ("format-unknown", "format: imagefoldr\nroot: {root}\n", "format must be one of"),
    ("format-list", "format: [imagefolder]\nroot: {root}\n", "format must be one of"),
    ("top-key-typo", "format: imagefolder\nrooot: {root}\n", "did you mean 'root'"),
    ("classes-empty", IMG + "classes: []", "classes must be a non-empty list"),
    ("classes-string", IMG + "classes: abc", "classes must be a non-empty list"),
    ("classes-nested", IMG + "classes: [[a], b]", "classes[0] must be a class name"),
    ("fewer-classes-than-folders", IMG + "classes: [a]", "the manifest lists 1 classes, but"),
    ("more-classes-than-folders", IMG + "classes: [a, b, c]", "the manifest lists 3 classes, but"),
    ("splits-list", IMG + "splits: [test]", "splits must be a mapping"),
    ("splits-value-list", IMG + "splits: {{test: [val]}}", "splits.test must be a non-empty string"),
    ("name-list", "name: [x]\nformat: imagefolder\nroot: {root}\n", "name must be a string"),
    ("root-missing-dir", "format: imagefolder\nroot: {root}/nowhere\n", "does not exist"),
    ("no-root", "format: imagefolder\n", "no 'root' in the manifest"),
    ("manifest-list", "- format: imagefolder", "a manifest must be a mapping"),
    ("manifest-empty", "", "a manifest must be a mapping"),
    ("manifest-malformed", "format: [imagefolder\n", "malformed YAML"),
    ("cifar-size", "format: cifar10-python\nroot: {root}\npreprocessing: {{size: 64}}\n", "preprocessing.size must be one of 32"),
    ("gtsrb-crop-word", "format: gtsrb\nroot: {root}\npreprocessing: {{crop_roi: maybe}}\n", "preprocessing.crop_roi must be true or false"),
    ("gtsrb-size-negative", "format: gtsrb\nroot: {root}\npreprocessing: {{size: -1}}\n", "preprocessing.size must be an integer >= 1"),
    ("faces-align-number", "format: face-folder\nroot: {root}\npreprocessing: {{align: 3}}\n", "preprocessing.align must be true or false"),
    ("faces-min-images-zero", "format: face-folder\nroot: {root}\npreprocessing: {{min_images: 0}}\n", "preprocessing.min_images must be an integer >= 1"),
    ("video-frames-zero", VID % "frames: 0", "preprocessing.frames must be an integer >= 1"),
    ("video-sampling", VID % "sampling: sideways", "preprocessing.sampling must be one of uniform, random"),
    ("video-clips-fraction", VID % "clips: 1.5", "preprocessing.clips must be an integer"),
    ("video-fold-zero", "format: hmdb51\nroot: {root}\nsplits: {{fold: 0}}\n", "splits.fold must be an integer >= 1"),
    ("videofolder-stride-zero", "format: videofolder\nroot: {root}\npreprocessing: {{stride: 0}}\n", "preprocessing.stride must be an integer >= 1"),
]  # fmt: skip


@pytest.mark.parametrize("text,message", [pytest.param(t, m, id=i) for i, t, m in MANIFESTS])
def test_bad_manifests(tmp_path, capsys, text, message):
    root = _folder(tmp_path / "imgs")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text.format(root=root))
    code, err, out = _run(
        tmp_path, capsys, "--data", str(manifest), "--model", "tests.test_bad_input:two_class"
    )
    assert code == 2 and message in err and "Traceback" not in err, err
    assert str(manifest) in err or "--data-root" in err  # the file is named
    assert not out.exists()


def _corrupt_all(root):
    for f in root.rglob("*.png"):
        f.write_bytes(b"\x89PNG broken")


def _bomb(root):
    _png_header(root / "c1" / "huge.png", 20000, 20000)


def _no_images(root):
    for f in root.rglob("*.png"):
        f.rename(f.with_suffix(".txt"))


def _cifar_truncated(root):
    (root / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:40]
    )


def _cifar_evil(root):
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": [0]}, f)


def _cifar_wrong_shape(root):
    (root / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    )


def _cifar_no_labels(root):
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))


# Data files: (id, what to write, the --data arguments, fragment naming the file)
DATA = [
    ("png-20000x20000", "folder", _bomb, "huge.png has 400,000,000 pixels, over the limit of 89,478,485 pixels"),
    ("every-image-corrupt", "folder", _corrupt_all, "every image is corrupt"),
    ("class-folders-without-images", "manifest", _no_images, "holds no images"),
    ("folder-without-images-or-videos", "folder", _no_images, "holds no images or videos in class sub-folders"),
    ("corrupt-image-on-corrupt-error", "error", lambda r: (r / "c0" / "0.png").write_bytes(b"bad"), "corrupt image"),
    ("pixel-limit-from-manifest", "small-limit", None, "0.png has 1,024 pixels, over the limit of 100 pixels"),
    ("folder-without-class-folders", "flat", None, "holds no images or videos in class sub-folders"),
    ("gtsrb-missing-file-past-first-batch", "gtsrb-missing", None, "lists 1 image file(s) that do not exist (first:"),
    ("gtsrb-classid-word", "gtsrb-word", None, "non-integer ClassId"),
    ("gtsrb-classid-out-of-range", "gtsrb-99", None, "ClassId 99 is outside [0, 43)"),
    ("gtsrb-columns-missing", "gtsrb-columns", None, "lacks GTSRB columns"),
    ("cifar-truncated", "cifar", _cifar_truncated, "test_batch is corrupt"),
    ("cifar-pickle-runs-code", "cifar", _cifar_evil, "refusing to unpickle"),
    ("cifar-wrong-shape", "cifar", _cifar_wrong_shape, "'data' must be (N, 3072) uint8"),
    ("cifar-no-labels", "cifar", _cifar_no_labels, "lacks the 'data' and 'labels' fields"),
    ("cifar-batch-missing", "cifar", lambda r: None, "test_batch is missing"),
]  # fmt: skip


@pytest.mark.parametrize("kind,damage,message", [pytest.param(k, d, m, id=i) for i, k, d, m in DATA])
def test_bad_data_files(tmp_path, capsys, kind, damage, message):
    root = tmp_path / "data"
    model = "tests.test_bad_input:two_class"
    if kind.startswith("gtsrb"):
        _gtsrb(root, missing=kind == "gtsrb-missing", class_id={"gtsrb-word": "x", "gtsrb-99": "99"}.get(kind, "1"),
               columns=kind != "gtsrb-columns")  # fmt: skip
        args = ["--data", "gtsrb", "--data-root", str(root), "--batch-size", "4", "--limit", "20"]
    elif kind == "cifar":
        root.mkdir()
        damage(root)
        args, model = ["--data", "cifar10", "--data-root", str(root)], "tests.test_bad_input:cifar_like"
    elif kind == "flat":
        root.mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a.png")
        args = ["--data", str(root)]
    else:
        _folder(root)
        if damage:
            damage(root)
        manifest = tmp_path / "m.yaml"
        pre = {"error": "{on_corrupt: error}", "small-limit": "{max_pixels: 100}"}.get(kind, "{}")
        manifest.write_text(f"format: imagefolder\nroot: {root}\npreprocessing: {pre}\n")
        args = ["--data", str(root) if kind == "folder" else str(manifest)]
    code, err, out = _run(tmp_path, capsys, *args, "--model", model)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert str(root) in err or str(tmp_path / "m.yaml") in err  # the file (or its folder) is named
    assert not out.exists()


OPTIONS = [
    ("compile-unknown-backend", ["--compile", "nosuchbackend"], "--compile must be a torch.compile backend"),
    ("eps-word", ["--eps", "abc"], "--eps must be a number"),
    ("eps-zero", ["--eps", "0"], "--eps must be a number > 0"),
    ("eps-negative", ["--eps=-1"], "--eps must be a number > 0"),
    ("eps-nan", ["--eps", "nan"], "--eps must be a"),
    ("eps-inf", ["--eps", "inf"], "--eps must be a"),
    ("eps-two-dots", ["--eps", "1.2.3/255"], "--eps must be a number such as 8/255"),
    ("eps-division-by-zero", ["--eps", "8/0"], "--eps: division by zero"),
    ("batch-size-zero", ["--batch-size", "0"], "--batch-size: expected a positive integer"),
    ("batch-size-fraction", ["--batch-size", "2.5"], "--batch-size: expected a positive integer"),
    ("limit-zero", ["--limit", "0"], "--limit: expected a positive integer"),
    ("limit-word", ["--limit", "all"], "--limit: expected a positive integer"),
    ("threads-zero", ["--threads", "0"], "--threads: expected a positive integer"),
    ("eot-samples-zero", ["--eot-samples", "0"], "--eot-samples: expected a positive integer"),
    ("draws-too-few", ["--draws", "3"], "--draws (fresh draws of a stochastic model's verdict) must be an integer >= 10"),
    ("seed-word", ["--seed", "abc"], "--seed: invalid int value"),
    ("amp-fp16", ["--amp", "fp16"], "--amp: invalid choice"),
    ("device-unknown", ["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    ("name-empty", ["--name", ""], "--name must be a non-empty string"),
    ("suite-unknown", ["--suite", "quik"], "did you mean 'quick'"),
    ("suite-missing-file", ["--suite", "{tmp}/nope.yaml"], "suite file {tmp}/nope.yaml does not exist"),
    ("suite-is-a-directory", ["--suite", "{tmp}"], "--suite {tmp} is a directory"),
    ("weights-missing-file", ["--model", "resnet18", "--weights", "{tmp}/w.pt"], "weights file {tmp}/w.pt does not exist"),
    ("weights-is-a-directory", ["--model", "resnet18", "--weights", "{tmp}"], "--weights {tmp} is a directory"),
    ("data-unknown", ["--data", "shapez"], "did you mean 'shapes'"),
    ("data-missing-manifest", ["--data", "{tmp}/m.yaml"], "dataset manifest {tmp}/m.yaml does not exist"),
    ("data-root-missing", ["--data", "cifar10", "--data-root", "{tmp}/nowhere"], "{tmp}/nowhere (from --data-root) does not exist"),
]  # fmt: skip


@pytest.mark.parametrize("args,message", [pytest.param(a, m, id=i) for i, a, m in OPTIONS])
def test_bad_options(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        code, err, out = _run(tmp_path, capsys, *args)
    except SystemExit as exc:  # argparse's own checks: exit 2 naming the option
        code, err, out = exc.code, capsys.readouterr().err, tmp_path / "out"
    assert code == 2 and message.replace("{tmp}", str(tmp_path)) in err and "Traceback" not in err, err
    assert not out.exists()


def test_the_catalogue_holds_at_least_100_bad_inputs():
    cases = {(kind, c[0]) for kind, cases in [("recipe", RECIPES), ("manifest", MANIFESTS), ("data", DATA),
                                              ("option", OPTIONS)] for c in cases}  # fmt: skip
    assert len(cases) == len(RECIPES) + len(MANIFESTS) + len(DATA) + len(OPTIONS) >= 100


@pytest.mark.parametrize(
    "text,check",
    [
        (
            "attacks: [{attack: pgd, steps: 3.0, eps: '8/255'}]",
            lambda e: e.params == {"steps": 3, "eps": 8 / 255},
        ),
        ("attacks: [{attack: pgd, eps: [1/255, 2/255]}]", lambda e: e.name == "pgd@1/255"),
        ("attacks: [{attack: pgd, norm: L2, eps: 0.5, step_size: 0.1}]", lambda e: e.attack.step_size == 0.1),
        ("attacks: [{attack: fgsm, eps: 0}]", lambda e: e.eps == 0),
    ],
    ids=["integral-float-and-fraction-string", "eps-sweep", "l2-finite", "eps-zero-is-allowed"],
)
def test_valid_edge_values_are_accepted(tmp_path, text, check):
    from robustkit.evaluation.suite import load_suite

    assert check(load_suite(_suite(tmp_path, text)).entries[0])


def test_a_folder_of_class_folders_is_data_named_after_itself(tmp_path, capsys):
    root = _folder(tmp_path / "myfolder")
    code, err, out = _run(tmp_path, capsys, "--data", str(root), "--model", "tests.test_bad_input:two_class",
                          "--suite", _suite(tmp_path, "attacks: [{attack: fgsm, eps: 1/255}]"))  # fmt: skip
    assert code == 0, err
    import json

    (run,) = out.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert run.name.endswith("two_class-myfolder-s") and summary["n_samples"] == 6, run.name


def test_missing_and_empty_dataset_dirs(tmp_path, capsys):
    code, err, out = _run(tmp_path, capsys, "--data", "cifar10", "--data-root", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err and "does not exist" in err and not out.exists()
    (tmp_path / "empty").mkdir()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: e\nformat: imagefolder\nroot: {tmp_path / 'empty'}\n")
    code, err, out = _run(tmp_path, capsys, "--data", str(manifest))
    assert code == 2 and "no class sub-folders" in err and not out.exists()


def test_labels_out_of_range(tmp_path, capsys):
    root = tmp_path / "cifar"
    root.mkdir()
    rng = np.random.default_rng(0)
    (root / "test_batch").write_bytes(
        pickle.dumps({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 12, 3]})
    )
    code, err, out = _run(
        tmp_path,
        capsys,
        "--data",
        "cifar10",
        "--data-root",
        str(root),
        "--model",
        "tests.test_bad_input:cifar_like",
    )
    assert code == 2 and "labels" in err and "outside" in err and not out.exists()


def cifar_like():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


def nan_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), _Lambda(lambda z: z * float("nan")))


def wrong_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))


def probability_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), nn.Softmax(dim=1))


def not_a_tensor():
    return _Lambda(lambda x: {"logits": x.mean()})


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    "factory,message",
    [
        ("nan_model", "NaN"),
        ("wrong_classes", "returns 7 classes but the dataset has 10"),
        ("probability_model", "returns probabilities"),
        ("not_a_tensor", "logits tensor"),
    ],
)
def test_misbehaving_models(tmp_path, capsys, factory, message):
    code, err, out = _run(tmp_path, capsys, "--model", f"tests.test_bad_input:{factory}")
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_inputs_outside_unit_range_or_wrong_shape(tmp_path):
    x, y = torch.rand(4, 3, 32, 32) * 3, torch.zeros(4, dtype=torch.long)
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        evaluate(model=cifar_like(), data=(x, y), out=tmp_path, progress=False)
    with pytest.raises(InputError, match="shape"):
        evaluate(model=cifar_like(), data=(torch.rand(4, 32, 32), y), out=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bad_checkpoints(tmp_path, capsys):
    import torchvision

    good = torchvision.models.get_model("resnet18", weights=None, num_classes=10).state_dict()
    torch.save(good, tmp_path / "good.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:1000])
    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"fc.weight": Payload()}, f)
    for name, message in [
        ("trunc.pt", "truncated"),
        ("wrong.safetensors", "does not fit"),
        ("evil.pt", "could run code"),
    ]:
        code, err, out = _run(tmp_path, capsys, "--model", "resnet18", "--weights", str(tmp_path / name))
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
        assert not out.exists()


def test_corrupt_images_are_skipped_and_counted(tmp_path, capsys):
    for c, cls in enumerate(["a", "b"]):
        d = tmp_path / "imgs" / cls
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 60 * i + 100 * c, dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "imgs" / "a" / "bad.png").write_bytes(b"\x89PNG broken")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"name: tiny\nformat: imagefolder\nroot: {tmp_path / 'imgs'}\npreprocessing: {{size: 32}}\n"
    )
    code, err, out = _run(
        tmp_path,
        capsys,
        "--data",
        str(manifest),
        "--model",
        "tests.test_bad_input:two_class",
        "--suite",
        _suite(tmp_path, "attacks: [{attack: fgsm, eps: 1/255}]"),
    )
    assert code == 0, err
    import json

    summary = json.loads(next(out.iterdir()).joinpath("summary.json").read_text())
    assert (
        summary["n_samples"] == 6
        and len(summary["skipped_files"]) == 1
        and summary["skipped_files"][0].endswith("bad.png")
    )


def two_class():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))


def test_output_paths_cannot_escape(tmp_path):
    with pytest.raises(ConfigError, match="escapes the run directory"):
        inside(tmp_path, "../elsewhere")
    assert inside(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()


def test_full_disk_while_writing(tmp_path, capsys, monkeypatch, shapes_model):
    from robustkit.evaluation import runner

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runner, "atomic_write", full)
    code, err, out = _run(
        tmp_path, capsys, "--suite", _suite(tmp_path, "attacks: [{attack: fgsm, eps: 1/255}]")
    )
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not list(out.rglob("summary.json")) and not list(out.rglob("report.html"))


def test_internal_errors_exit_1_and_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    from robustkit.evaluation import config

    def boom(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(config, "load_suite", boom)
    code, err, _ = _run(tmp_path, capsys)
    assert code == 1 and "internal error" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "evaluate", "--out", str(tmp_path / "o"), "--quiet"])
