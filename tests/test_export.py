"""`robustkit export`: a run's artefacts as PNGs at physical size and a true-size print sheet PDF;
`robustkit palette`: a palette measured from a photo of a printed colour chart."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from robustkit.cli import main
from robustkit.errors import ConfigError, InputError
from robustkit.functional.palette import load_palette
from robustkit.report.export import A4_INCHES, export_run, inside

SUITE = {
    "name": "tiny-physical",
    "attacks": [
        {"attack": "eyeglass", "name": "glasses", "steps": 2, "eval_draws": 0, "eval_grid": False,
         "tv_weight": 1.0, "nps_weight": 1.0},
        {"attack": "sticker", "name": "sticker", "steps": 2, "eval_draws": 0, "eval_grid": False,
         "eot": {"n_samples": 1}},
        {"attack": "patch", "name": "patch", "max_iter": 2, "batch_size": 4, "train_samples": 8,
         "eval_draws": 0, "eval_grid": False, "eot": {"n_samples": 1}},
    ],
}  # fmt: skip


def media_boxes(pdf: bytes) -> list[tuple[float, float]]:
    return [
        (float(w), float(h))
        for w, h in re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import robustkit
    from tests.conftest import TinyNet

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = TinyNet().eval()
    x = torch.rand(8, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample classified correctly: every attack runs
    out = tmp_path_factory.mktemp("runs")
    res = robustkit.evaluate(model=model, data=(x, y), num_classes=10, suite=SUITE, out=out,
                             name="phys", device="cpu", progress=False, report=False, batch_size=8)  # fmt: skip
    return res.run_dir


def test_export_writes_pngs_with_dpi_and_a_true_size_pdf(run_dir):
    done = export_run(run_dir, size_cm=5.08)  # 2 inches wide
    kinds = {a.kind for a in done.artefacts}
    assert {"eyeglass", "sticker", "patch"} <= kinds
    for art, png in zip(done.artefacts, done.pngs, strict=True):
        with Image.open(png) as im:
            assert im.mode == "RGBA"
            dpi = im.info["dpi"]
            # the physical width the metadata gives is the one asked for (PNG stores whole pixels per metre)
            assert im.width / dpi[0] == pytest.approx(2.0, rel=0.01)
            assert im.width == art.rgba.shape[-1] and im.height == art.rgba.shape[-2]
            alpha = torch.from_numpy(np.asarray(im.getchannel("A")).copy())
            assert alpha.max() == 255  # the artefact is there, cropped to its mask
    # the eyeglass frame is cropped to the frame: transparent outside the frame's mask
    glasses = next(p for a, p in zip(done.artefacts, done.pngs, strict=True) if a.kind == "eyeglass")
    with Image.open(glasses) as im:
        assert np.asarray(im.getchannel("A")).min() == 0
    pdf = done.pdf.read_bytes()
    assert pdf.startswith(b"%PDF")
    boxes = media_boxes(pdf)
    assert len(boxes) == len(done.artefacts)  # one page per artefact
    a4 = (A4_INCHES[0] * 72, A4_INCHES[1] * 72)
    for w, h in boxes:
        assert w == pytest.approx(a4[0], abs=0.5) and h == pytest.approx(a4[1], abs=0.5)
    assert load_palette(done.out / "palette.txt").shape == (30, 3)  # the run's palette is exported


def test_export_dpi_option_and_larger_pages_for_large_artefacts(run_dir):
    done = export_run(run_dir, "big", dpi=1.0, sheet=True)  # 1 pixel per inch: artefacts wider than A4
    for art, png in zip(done.artefacts, done.pngs, strict=True):
        with Image.open(png) as im:
            assert im.info["dpi"][0] == pytest.approx(1.0, rel=0.02)
            assert art.width_cm == pytest.approx(im.width * 2.54)
    widest = max(a.width_cm for a in done.artefacts) / 2.54 * 72
    assert max(w for w, _ in media_boxes(done.pdf.read_bytes())) >= widest  # the page grows to fit


def test_export_refuses_paths_outside_the_run(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="inside the run directory"):
        export_run(run_dir, tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="inside the run directory"):
        export_run(run_dir, "../escape")
    assert inside(run_dir, "sub/dir") == (run_dir / "sub" / "dir").resolve()
    assert main(["export", str(run_dir), "--out", "../../x"]) == 2


def test_export_command(run_dir, capsys):
    assert main(["export", str(run_dir), "--out", "cli", "--dpi", "96", "--no-pdf"]) == 0
    text = capsys.readouterr().out
    assert "96.0 dpi" in text and not (run_dir / "cli" / "print_sheet.pdf").exists()
    with pytest.raises(SystemExit) as stop:  # one or the other (argparse's usage error)
        main(["export", str(run_dir), "--dpi", "96", "--size-cm", "3"])
    assert stop.value.code == 2


def test_palette_from_a_photographed_chart(tmp_path):
    g = torch.Generator().manual_seed(3)
    colours = torch.randint(0, 256, (12, 3), generator=g)
    rows, cols, cell = 3, 4, 20
    img = torch.zeros(rows * cell, cols * cell, 3, dtype=torch.uint8)
    for k, c in enumerate(colours):
        r, q = divmod(k, cols)
        img[r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = c
    img[::cell] = 255  # white gaps between swatches, and a few specks in the cells, are ignored
    img[:, ::cell] = 255
    img[5, 5] = 0
    chart = tmp_path / "chart.png"
    Image.fromarray(img.numpy()).save(chart)
    out = tmp_path / "palette.txt"
    assert main(["palette", str(chart), "--grid", "3x4", "--out", str(out)]) == 0
    pal = load_palette(out)
    assert pal.shape == (12, 3)
    assert torch.allclose(pal * 255, colours.float(), atol=0.01)
    assert main(["palette", str(chart), "--grid", "3by4", "--out", str(out)]) == 2


def test_photos_of_the_printed_artefact_load_with_their_corners(tmp_path):
    import json

    from robustkit.data.loading import load_dataset

    root = tmp_path / "photos"
    g = torch.Generator().manual_seed(4)
    for cls in ("stop", "yield"):
        (root / cls).mkdir(parents=True)
        for k in range(2):
            px = (torch.rand(40, 60, 3, generator=g) * 255).to(torch.uint8).numpy()  # 60 wide, 40 high
            Image.fromarray(px).save(root / cls / f"shot{k}.png")
    # corners in the photo's pixels, pixel centres at integers: the edges of the box over columns 10..49 and
    # every row; resize to 20 (shorter side: x0.5 -> 30 x 20), centre crop 20 (5 px off the left): the crop's edges
    box = [[9.5, -0.5], [49.5, -0.5], [49.5, 39.5], [9.5, 39.5]]
    (root / "corners.json").write_text(json.dumps({"yield/shot1.png": box}))
    manifest = tmp_path / "printed.yaml"
    manifest.write_text(f"name: printed\nformat: photos\nroot: {root}\npreprocessing: {{size: 20}}\n")
    ds = load_dataset(str(manifest), "test")
    x, y = ds[3]
    assert x.shape == (3, 20, 20) and y == 1 and ds.classes == ["stop", "yield"]
    corners = ds.corners
    assert corners.shape == (4, 4, 2) and torch.isnan(corners[:3]).all()
    assert torch.allclose(corners[3], torch.tensor([[-0.5, -0.5], [19.5, -0.5], [19.5, 19.5], [-0.5, 19.5]]))
    assert ds.objects is None  # three photos have no corners: object-anchored attacks fall back to the image
    (root / "corners.json").write_text(
        json.dumps({f"{c}/shot{k}.png": box for c in ("stop", "yield") for k in (0, 1)})
    )
    ds = load_dataset(str(manifest), "test")
    assert ds.objects is not None and len(ds.objects) == 4
    assert float(ds.objects.footprint((20, 20)).min()) > 0.99  # the box is the whole crop, rim included
    (root / "corners.json").write_text(json.dumps({"yield/missing.png": [[0, 0], [1, 0], [1, 1], [0, 1]]}))
    with pytest.raises(InputError, match="not in"):
        load_dataset(str(manifest), "test")
    for bad in (
        [[0, 0], [1, 0], [1, 1]],
        [[0, 0], [1, 0], [1, 1], [0, "x"]],
        [[0, 0], [1, 0], [1, 1], [0, True]],
    ):
        (root / "corners.json").write_text(json.dumps({"yield/shot1.png": bad}))
        with pytest.raises(
            InputError, match=r"corners\.json: expected four \[x, y\] corners .* 'yield/shot1.png'"
        ):
            load_dataset(str(manifest), "test")


def test_flicker_and_framing_artefacts():
    from robustkit.report.export import artefacts_of

    seq = [[0.1, -0.2, 0.0], [0.0, 0.05, -0.1], [-0.3, 0.2, 0.1]]
    frame = torch.zeros(3, 16, 16)
    frame[:, :2] = 0.7  # a border two pixels wide at the top
    arts = artefacts_of(
        "flick", {"universal_flicker": seq, "flicker_offsets": [[[0, 0, 0]] * 3]}, size_cm=6, dpi=None
    )
    assert [a.kind for a in arts] == ["flicker"]
    assert torch.allclose(torch.tensor(arts[0].sequence), torch.tensor(seq))
    assert arts[0].rgba.shape == (4, 1, 3)  # one swatch per frame: mid-gray plus the offset
    assert torch.allclose(arts[0].rgba[:3, 0, 0], torch.tensor([0.6, 0.3, 0.5]))
    (framed,) = artefacts_of("frame", {"frame": frame, "framing_width": 2}, size_cm=None, dpi=None)
    assert framed.kind == "framing" and framed.rgba.shape == (4, 2, 16)  # cropped to the border
