"""``bncheck plot`` draws a model's BN layers; these check the image is there and shows what the
report says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from bncheck.engine import inspect_path
from bncheck.findings import ModelResult, Severity
from bncheck.model import ModelDescription
from bncheck.plot import SEVERITY_COLORS, ProbeOverlay, plot_model
from bncheck.settings import Settings
from tests.conftest import FIXTURES, CliResult

Run = Callable[..., CliResult]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def shaded_pixels(png: Path, severity: Severity) -> int:
    """Pixels of the light shade that marks a layer with a finding of this severity."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    image = imread(png)[..., :3]
    shade = 1 - 0.16 + 0.16 * np.array(to_rgb(SEVERITY_COLORS[severity]))
    return int(np.all(np.abs(image - shade) < 0.02, axis=-1).sum())


def test_plot_writes_a_png_with_the_flagged_layers_marked(run_cli: Run, tmp_path: Path) -> None:
    flagged, healthy = tmp_path / "untouched.png", tmp_path / "healthy.png"
    result = run_cli("plot", FIXTURES / "keras3/untouched_stats.keras", "-o", flagged)
    assert (result.code, result.out, result.err) == (0, f"wrote {flagged}\n", "")
    assert run_cli("plot", FIXTURES / "keras3/healthy_cnn.keras", "--output", healthy).code == 0
    for png in (flagged, healthy):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 20_000
    assert shaded_pixels(flagged, Severity.ERROR) > 50_000  # both layers shaded in every panel
    assert shaded_pixels(healthy, Severity.ERROR) == 0


def test_svg_names_layers_rules_and_the_model(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative path keeps the title on one line wherever the checkout lies (long ones wrap).
    monkeypatch.chdir(FIXTURES)
    target = tmp_path / "plot.svg"
    assert run_cli("plot", "keras3/dead_channels.keras", "-o", target).code == 0
    svg = target.read_text()
    assert svg.lstrip().startswith("<?xml")
    assert (
        "keras3/dead_channels.keras (keras): 2 BatchNorm layers; 0 errors, 0 warnings, 1 info"
        in svg
    )
    assert "bn1  BN005" in svg  # the flagged layer, with its rule
    assert "paths below cnn/" in svg
    assert "dead channels (%)" in svg


def test_the_picture_follows_the_configuration_like_the_report(
    run_cli: Run, tmp_path: Path
) -> None:
    """The plot judges nothing itself: ignoring a rule takes its shading and its panel's bars
    away, as it takes the finding out of the report."""
    model = FIXTURES / "keras3/dead_channels.keras"
    judged, ignored = tmp_path / "judged.png", tmp_path / "ignored.png"
    assert run_cli("plot", model, "-o", judged).code == 0
    config = tmp_path / "bncheck.toml"
    config.write_text('ignore = ["BN005"]\n')
    assert run_cli("plot", model, "-o", ignored, "--config", config).code == 0
    assert shaded_pixels(judged, Severity.INFO) > 10_000
    assert shaded_pixels(ignored, Severity.INFO) == 0
    dark = np.array([0x52, 0x52, 0x52]) / 255  # the dead-channel bars

    def bars(png: Path) -> int:
        """Pixels of the bars' colour (anti-aliased text has a few of the same grey)."""
        from matplotlib.image import imread

        return int(np.all(np.abs(imread(png)[..., :3] - dark) < 0.004, axis=-1).sum())

    assert bars(judged) > 10 * max(bars(ignored), 100)


def test_model_level_findings_are_listed_and_neighbours_stay_apart(tmp_path: Path) -> None:
    from bncheck.probe.options import ProbeOptions

    data = str(FIXTURES / "data/digits_0_1.npy")
    stale = inspect_path(
        str(FIXTURES / "probe/stale_stats.keras"), Settings(), ProbeOptions(data=data)
    )
    assert any(f.layer is None for f in stale.findings)  # BN015, about the model
    target = tmp_path / "stale.png"
    plot_model(stale, str(target))
    svg_target = tmp_path / "stale.svg"
    plot_model(stale, str(svg_target))
    assert "BN015 recalibration-effect: output 'head'" in svg_target.read_text()
    # Three adjacent flagged layers: the shade stops between them.
    from matplotlib.image import imread

    image = imread(target)[..., :3]
    shade = 1 - 0.16 + 0.16 * np.array(to_rgb(SEVERITY_COLORS[Severity.ERROR]))
    shaded = np.all(np.abs(image - shade) < 0.02, axis=-1).astype(int)
    columns_per_row = [int(np.sum(np.diff(np.r_[0, row, 0]) == 1)) for row in shaded]
    assert max(columns_per_row) >= 3


def test_probe_measurements_add_a_staleness_panel_and_the_collapse_point(tmp_path: Path) -> None:
    result = inspect_path(str(FIXTURES / "keras3/nested.keras"), Settings())
    assert result.description is not None
    paths = [layer.path for layer in result.description.layers]
    overlay = ProbeOverlay(
        staleness={path: float(i) for i, path in enumerate(paths)}, collapse_layer=paths[3]
    )
    with_probe, without = tmp_path / "probe.svg", tmp_path / "static.svg"
    plot_model(result, str(with_probe), overlay)
    plot_model(result, str(without))
    svg = with_probe.read_text()
    assert "x BN014 threshold" in svg and "BN014 threshold" in svg
    assert "inference collapses from here" in svg
    assert "BN014 threshold" not in without.read_text()


def test_a_model_without_batchnorm_layers_says_so(tmp_path: Path) -> None:
    empty = ModelResult("m.keras", "keras", ModelDescription("m.keras", "keras", ()))
    target = tmp_path / "empty.svg"
    plot_model(empty, str(target))
    assert "no BatchNorm layers" in target.read_text()


def test_a_checkpoint_that_lost_its_statistics_counts_its_layers_like_the_report(
    tmp_path: Path,
) -> None:
    lost = inspect_path(str(FIXTURES / "checkpoints/tf1_trainable_only"), Settings())
    target = tmp_path / "lost.svg"
    plot_model(lost, str(target))
    svg = target.read_text()
    assert "3 BatchNorm layers; 3 errors" in svg
    assert "no BatchNorm layer has moving statistics to draw" in svg


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["plot", "missing.keras", "-o", "{tmp}/x.png"],
            3,
            "missing.keras: no such file or directory",
        ),
        (
            ["plot", str(FIXTURES / "keras3/nested.keras"), "-o", "{tmp}/x.jpg"],
            2,
            "must end in .png or .svg",
        ),
        (
            ["plot", str(FIXTURES / "keras3/nested.keras"), "-o", "{tmp}/no/dir/x.png"],
            2,
            "cannot write --output",
        ),
        (["plot", str(FIXTURES / "keras3/nested.keras")], 2, "Missing option '--output'"),
    ],
)
def test_plot_errors_are_one_line(
    run_cli: Run, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = run_cli(*(arg.replace("{tmp}", str(tmp_path)) for arg in args))
    assert result.code == code
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.err.startswith("bncheck: error: ") and message in result.err
    assert list(tmp_path.iterdir()) == []


def test_a_probe_run_gives_the_overlay_its_staleness_and_collapse_point() -> None:
    """The overlay carries what the probe measured, relative to BN014's thresholds: the layers
    BN014 reports are exactly those above 1, with its own figures; and the collapse point is
    BN013's."""
    from bncheck.plot import probe_overlay
    from bncheck.probe.options import ProbeOptions

    data = str(FIXTURES / "data/digits_0_1.npy")
    stale = inspect_path(
        str(FIXTURES / "probe/stale_stats.keras"), Settings(), ProbeOptions(data=data)
    )
    overlay = probe_overlay(stale, max_mean_shift=0.5, max_variance_factor=2.0)
    assert overlay is not None and overlay.collapse_layer is None
    assert set(overlay.staleness) == {"cnn/bn1", "cnn/bn2", "cnn/bn3"}
    reported = {
        f.layer: f.details for f in stale.findings if f.rule == "BN014" and f.layer is not None
    }
    assert set(reported) == {path for path, value in overlay.staleness.items() if value > 1}
    for path, details in reported.items():
        expected = max(
            details["mean_shift"] / 0.5, np.log(details["variance_factor"]) / np.log(2.0)
        )
        assert overlay.staleness[path] == pytest.approx(expected)

    collapsed = inspect_path(
        str(FIXTURES / "probe/no_training_flag.keras"), Settings(), ProbeOptions()
    )
    overlay = probe_overlay(collapsed, 0.5, 2.0)
    [bn013] = [f for f in collapsed.findings if f.rule == "BN013"]
    assert overlay is not None and overlay.collapse_layer == bn013.details["first_layer"]
    assert overlay.staleness == {}  # synthetic data cannot measure staleness
    static = inspect_path(str(FIXTURES / "keras3/nested.keras"), Settings())
    assert probe_overlay(static, 0.5, 2.0) is None


def test_plot_takes_the_probe_options(run_cli: Run, tmp_path: Path) -> None:
    target = tmp_path / "stale.svg"
    data = FIXTURES / "data/digits_0_1.npy"
    result = run_cli("plot", FIXTURES / "probe/stale_stats.keras", "--data", data, "-o", target)
    assert result.code == 0, result.err
    assert "staleness" in target.read_text()
    refused = run_cli("plot", FIXTURES / "keras3/nested.keras", "--seed", "3", "-o", target)
    assert refused.code == 2
    assert refused.err == "bncheck: error: --seed only applies with --probe or --data\n"


def test_a_long_title_wraps_instead_of_running_off_the_picture(tmp_path: Path) -> None:
    import re
    import shutil

    long_name = tmp_path / ("a_model_whose_name_goes_on_" * 6 + "and_on.keras")
    shutil.copy(FIXTURES / "probe/stale_stats.keras", long_name)
    result = inspect_path(str(long_name), Settings())
    target = tmp_path / "long.svg"
    plot_model(result, str(target))
    svg = target.read_text()
    # The figure is 9 inches wide: no title line may hold more than 12 characters per inch.
    lines = [text for text in re.findall(r"<text[^>]*>([^<]*)</text>", svg) if text.strip()]
    title = [line for line in lines if "a_model_whose" in line or "and_on.keras" in line]
    assert len(title) >= 2
    assert all(len(line) <= 108 for line in title)
