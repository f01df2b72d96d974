"""Write ``docs/scenarios.md``: what bncheck reports and advises on models trained right and
wrong, next to the held-out accuracy measured without bncheck.

    pip install -e ".[test]"
    python docs/gen_scenarios.py            # about ten minutes on 2 cores

Every model is trained here on 1,400 of scikit-learn's 1,797 digits (nothing is downloaded) and
measured on the other 397 with Keras alone: inference mode, training mode, and after a precise-BN
recalibration through Keras's own moving-average update (``fixtures/zoo.py``). bncheck then runs
as a user runs it, through its command line: ``inspect`` on the file alone, ``inspect --data`` on
the labelled training digits, and ``recalibrate --data TRAIN --validate HELD_OUT``.

The script checks each piece of advice against the measurement and exits 1 if one does not hold:
a healthy model gets no warning or error; "would raise/lower accuracy" must point the way the
held-out accuracy moves; a model recalibrate writes must not be worse on held-out data; one it
refuses must be one that recalibrating makes worse (or one with nothing to re-estimate).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import zoo  # noqa: E402

TARGET = ROOT / "docs" / "scenarios.md"


@dataclass(frozen=True)
class Scenario:
    name: str
    story: str
    train: Callable[[zoo.Digits], keras.Model]
    classes: int = 10
    healthy: bool = False
    include_frozen: bool = False
    """Recalibrate frozen layers too, in the measurement and in ``bncheck recalibrate``."""


SCENARIOS = (
    Scenario(
        "healthy CNN, 10 classes",
        "3-BN CNN, `fit` 20 epochs, batch 32, learning rate decaying to 0",
        lambda d: zoo.fit(zoo.cnn(10), d.x_train, d.y_train, epochs=20, decay=True),
        healthy=True,
    ),
    Scenario(
        "healthy MLP, 10 classes",
        "2-BN MLP, `fit` 20 epochs, batch 64, learning rate decaying to 0",
        lambda d: zoo.fit(zoo.mlp(10), d.x_train, d.y_train, epochs=20, batch_size=64, decay=True),
        healthy=True,
    ),
    Scenario(
        "healthy CNN, 2 classes",
        "3-BN CNN on odd/even digits, `fit` 15 epochs, batch 16, decaying rate",
        lambda d: zoo.fit(zoo.cnn(2), d.x_train, d.y_train, epochs=15, batch_size=16, decay=True),
        classes=2,
        healthy=True,
    ),
    Scenario(
        "healthy MLP, 2 classes",
        "2-BN MLP on odd/even digits, `fit` 15 epochs, batch 32, decaying rate",
        lambda d: zoo.fit(zoo.mlp(2), d.x_train, d.y_train, epochs=15, decay=True),
        classes=2,
        healthy=True,
    ),
    Scenario(
        "stale: short fit",
        "3-BN CNN, `fit` 1 epoch at learning rate 0.01, momentum 0.99",
        lambda d: zoo.fit(zoo.cnn(10), d.x_train, d.y_train, epochs=1, learning_rate=0.01),
    ),
    Scenario(
        "stale: fit without decay",
        "3-BN CNN, `fit` 30 epochs, batch 128, constant learning rate 0.001, momentum 0.99",
        lambda d: zoo.fit(zoo.cnn(10), d.x_train, d.y_train, epochs=30, batch_size=128),
    ),
    Scenario(
        "no training=True, small",
        "3-BN CNN, `tf.function` loop calling `model(x)`, 2,000 steps",
        lambda d: zoo.fit_without_training_flag(zoo.cnn(10), d.x_train, d.y_train, steps=2000),
    ),
    Scenario(
        "no training=True, deep",
        "20-BN CNN, `tf.function` loop calling `model(x)`, 600 steps",
        lambda d: zoo.fit_without_training_flag(zoo.deep_cnn(10), d.x_train, d.y_train, steps=600),
    ),
    Scenario(
        "frozen base, trained head",
        "CNN `fit` on digits 0-4, frozen (`trainable=False`), new head `fit` on all ten",
        lambda d: zoo.frozen_base_with_new_head(d, seed=21),
    ),
    Scenario(
        "frozen base, recalibrated too",
        "the same model, its frozen base recalibrated as well (`--include-frozen`)",
        lambda d: zoo.frozen_base_with_new_head(d, seed=21),
        include_frozen=True,
    ),
    Scenario(
        "augmentation inside the model",
        "3-BN CNN shifting and zooming its input in training, `fit` 20 epochs, decaying rate",
        lambda d: zoo.fit(zoo.cnn(10, augment=True), d.x_train, d.y_train, epochs=20, decay=True),
    ),
    Scenario(
        "TimeDistributed BatchNorm",
        "rows of each image through TimeDistributed Dense + BatchNorm, `fit` 20 epochs, decaying",
        lambda d: zoo.fit(zoo.rows_model(10), d.x_train, d.y_train, epochs=20, decay=True),
        healthy=True,
    ),
    Scenario(
        "no training=True, no gamma or beta",
        "3-BN CNN, `center=False, scale=False`, loop calling `model(x)`, 2,000 steps",
        lambda d: zoo.fit_without_training_flag(
            zoo.cnn(10, affine=False), d.x_train, d.y_train, steps=2000
        ),
    ),
    Scenario(
        "momentum 1.0",
        "3-BN CNN with momentum 1.0, `fit` 20 epochs, decaying rate",
        lambda d: zoo.fit(zoo.cnn(10, momentum=1.0), d.x_train, d.y_train, epochs=20, decay=True),
    ),
    Scenario(
        "momentum 0.1",
        "3-BN CNN with momentum 0.1 (PyTorch's convention), `fit` 20 epochs, decaying rate",
        lambda d: zoo.fit(zoo.cnn(10, momentum=0.1), d.x_train, d.y_train, epochs=20, decay=True),
    ),
)


@dataclass
class Row:
    scenario: Scenario
    inference: float
    training: float
    recalibrated: float
    static: list[dict] = field(default_factory=list)
    probed: list[dict] = field(default_factory=list)
    decision: str = ""
    written_accuracy: float | None = None
    problems: list[str] = field(default_factory=list)


def bncheck(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "bncheck", *args], capture_output=True, text=True, check=False
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"bncheck {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.returncode, done.stdout


def findings(*args: str) -> list[dict]:
    _, out = bncheck("inspect", *args, "--format", "json", "--fail-on", "never")
    return json.loads(out)["models"][0]["findings"]


def measure(
    model: keras.Model, data: zoo.Digits, include_frozen: bool
) -> tuple[float, float, float]:
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    if include_frozen:
        for layer in zoo.batchnorm_layers(copy):
            layer.trainable = True
    zoo.recalibrate(copy, data.x_train)
    return (
        zoo.accuracy(model, data.x_test, data.y_test, training=False),
        zoo.accuracy(model, data.x_test, data.y_test, training=True),
        zoo.accuracy(copy, data.x_test, data.y_test, training=False),
    )


def held_out(path: Path, data: zoo.Digits) -> float:
    return zoo.accuracy(keras.models.load_model(path, compile=False), data.x_test, data.y_test)


def run(scenario: Scenario, index: int, work: Path) -> Row:
    data = zoo.digits(seed=0)
    if scenario.classes == 2:
        data = data.relabelled(zoo.odd_even)
    train, test = work / f"train{scenario.classes}.npz", work / f"test{scenario.classes}.npz"
    np.savez(train, x=data.x_train, y=data.y_train)
    np.savez(test, x=data.x_test, y=data.y_test)
    keras.utils.set_random_seed(100 + index)
    model = scenario.train(data)
    path = work / f"model{index}.keras"
    model.save(path)
    row = Row(scenario, *measure(model, data, scenario.include_frozen))
    row.static = findings(str(path))
    row.probed = findings(str(path), "--data", str(train))
    out = work / f"fixed{index}.keras"
    extra = ["--include-frozen"] if scenario.include_frozen else []
    code, text = bncheck(
        "recalibrate", str(path), "--data", str(train), "--validate", str(test), "-o", str(out),
        *extra,
    )  # fmt: skip
    lines = text.splitlines()
    if out.exists():
        row.written_accuracy = held_out(out, data)
        row.decision = f"writes it: {row.written_accuracy:.1%}"
    elif any("nothing recalibrated" in line for line in lines):
        row.decision = "nothing to re-estimate (" + _kept(lines) + ")"
    else:
        refusal = next(line for line in lines if line.startswith("not written"))
        fall = re.search(r"would fall from (\S+) to ([^\s;]+)", refusal)
        row.decision = (
            f"refuses: held-out accuracy would fall from {fall[1]} to {fall[2]}"
            if fall
            else "refuses: "
            + refusal.removeprefix("not written: ")
            .split("; pass --force")[0]
            .replace(f"{test} ", "the held-out digits ")  # no temporary path in the docs
        )
    row.problems = check(row)
    return row


def _kept(lines: list[str]) -> str:
    statuses = {line.split(":")[0] for line in lines if line.startswith("kept (")}
    return ", ".join(sorted(status.removeprefix("kept (").rstrip(")") for status in statuses))


def check(row: Row) -> list[str]:
    """Each piece of advice against the held-out measurement."""
    problems = []
    serious = [f for f in row.static + row.probed if f["severity"] != "info"]
    if row.scenario.healthy and serious:
        problems.append(f"healthy model with {len(serious)} warnings/errors")
    effect = [f for f in row.probed if f["rule"] == "BN015"]
    change = row.recalibrated - row.inference
    for finding in effect:
        if "would raise" in finding["message"] and change <= 0:
            problems.append(f"BN015 says recalibrating helps; held-out change {change:+.1%}")
        if "would lower" in finding["message"] and change >= 0:
            problems.append(f"BN015 says recalibrating hurts; held-out change {change:+.1%}")
    if row.written_accuracy is not None and row.written_accuracy < row.inference - 0.005:
        problems.append(
            f"recalibrate wrote a worse model ({row.inference:.1%} -> {row.written_accuracy:.1%})"
        )
    if row.decision.startswith("refuses") and change > 0.005:
        problems.append(f"recalibrate refused a repair that helps ({change:+.1%})")
    return problems


def summarise(found: list[dict]) -> str:
    if not found:
        return "nothing"
    counts: dict[tuple[str, str], int] = {}
    for finding in found:
        key = (finding["rule"], finding["severity"])
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(
        f"{rule} {severity}" + (f" x{count}" if count > 1 else "")
        for (rule, severity), count in counts.items()
    )


def advice(found: list[dict]) -> str:
    """BN015's measured verdict, or BN013's cause, in a few words."""
    for finding in found:
        if finding["rule"] == "BN015":
            message = finding["message"].split(": ", 1)[1]
            return message.split(": bncheck recalibrate")[0].split("; keep it")[0]
        if finding["rule"] == "BN013":
            return "collapse: " + finding["message"].rsplit(": ", 1)[1]
    return "-"


def render(rows: list[Row]) -> str:
    lines = [
        "# What bncheck says about models trained right and wrong",
        "",
        "Generated by `python docs/gen_scenarios.py`: each model trained on 1,400 of the 1,797",
        "scikit-learn digits, measured on the other 397 with Keras alone (inference mode,",
        "training mode, and recalibrated by Keras's own moving-average update with momentum",
        "(k-1)/k), then checked by bncheck as a user runs it: `inspect MODEL`,",
        "`inspect MODEL --data TRAIN.npz` (labelled: its figures are on the training digits), and",
        "`recalibrate MODEL --data TRAIN.npz --validate HELD_OUT.npz -o OUT`. The script fails",
        "if a piece of advice disagrees with the held-out measurement.",
        "",
        "| scenario | held-out accuracy: inference / training mode / recalibrated | "
        "`inspect` | `inspect --data` | measured advice | `recalibrate --validate` |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| **{row.scenario.name}**: {row.scenario.story} | {row.inference:.1%} / "
            f"{row.training:.1%} / {row.recalibrated:.1%} | {summarise(row.static)} | "
            f"{summarise(row.probed)} | {advice(row.probed)} | {row.decision} |"
        )
    lines += [
        "",
        "Severities: an `info` finding never fails `--fail-on error` or `warning`. BN001: "
        "statistics never updated; BN007: frozen layer; BN008: momentum 1.0; BN009: momentum "
        "below 0.5; BN013: inference collapse; BN014: stale statistics; BN015: what "
        "re-estimating the statistics would change, measured.",
        "",
        f"Machine: {os.cpu_count()} CPU cores; Keras {keras.__version__}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bncheck-scenarios-") as scratch:
        for index, scenario in enumerate(SCENARIOS):
            row = run(scenario, index, Path(scratch))
            print(
                f"{scenario.name}: {row.inference:.1%} / {row.training:.1%} / "
                f"{row.recalibrated:.1%}; {summarise(row.probed)}; {row.decision}"
                + "".join(f"\n  PROBLEM: {problem}" for problem in row.problems),
                flush=True,
            )
            rows.append(row)
    TARGET.write_text(render(rows))
    if any(row.problems for row in rows):
        raise SystemExit("some advice does not hold: see PROBLEM lines above")


if __name__ == "__main__":
    main()
