"""Bad options and arguments to one trial's commands (``plan``, ``model-summary``, ``train``, ``export``):
each exits 2 with the option, the value and the fix, before any data is prepared or Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.badinput.harness import Case, check, ids


def _yaml(text: str, name: str = "trial.yaml") -> object:
    return lambda tmp: (tmp / name).write_text(text)


def _case(id: str, args: tuple[str, ...], *expect: str, setup: object = None) -> Case:
    return Case(id=id, args=args, expect=expect, setup=setup)  # type: ignore[arg-type]


TRIAL = _yaml("optim.epochs: 1\n", "t.yaml")
NOT_INT = r"not a valid integer|valid integer"
CASES: list[Case] = [
    # plan: the cluster's shape
    _case(
        "plan-gpus-zero",
        ("plan", "--gpus", "0"),
        r"--gpus 0: must be a whole number of GPUs from 1",
        r"--gpus 8",
    ),
    _case("plan-gpus-negative", ("plan", "--gpus", "-4"), r"--gpus -4: must be", r"write e\.g\. --gpus 8"),
    _case("plan-gpus-huge", ("plan", "--gpus", "10" * 20), r"--gpus 1010.*: must be .* to 65536"),
    _case("plan-gpus-text", ("plan", "--gpus", "eight"), r"--gpus", NOT_INT),
    _case("plan-gpus-nan", ("plan", "--gpus", "nan"), r"--gpus", NOT_INT),
    _case("plan-gpus-fraction", ("plan", "--gpus", "1.5"), r"--gpus", NOT_INT),
    _case("plan-nodes-zero", ("plan", "--nodes", "0"), r"--nodes 0: must be from 1 to --gpus", r"--nodes 2"),
    _case("plan-nodes-negative", ("plan", "--gpus", "8", "--nodes", "-1"), r"--nodes -1: must be"),
    _case(
        "plan-nodes-more-than-gpus",
        ("plan", "--gpus", "2", "--nodes", "4"),
        r"--nodes 4: must be from 1 to --gpus \(2\)",
    ),
    _case(
        "plan-gpus-uneven-over-nodes",
        ("plan", "--gpus", "3", "--nodes", "2"),
        r"split evenly",
        r"--gpus 4 --nodes 2",
    ),
    _case("plan-nodes-text", ("plan", "--nodes", "two"), r"--nodes", NOT_INT),
    _case(
        "plan-gpu-mem-zero",
        ("plan", "--gpu-mem", "0"),
        r"--gpu-mem 0\.0: must be a finite number of GiB",
        r"--gpu-mem 80",
    ),
    _case("plan-gpu-mem-negative", ("plan", "--gpu-mem", "-80"), r"--gpu-mem -80\.0: must be"),
    _case("plan-gpu-mem-nan", ("plan", "--gpu-mem", "nan"), r"--gpu-mem nan: must be a finite number"),
    _case("plan-gpu-mem-inf", ("plan", "--gpu-mem", "inf"), r"--gpu-mem inf: must be a finite number"),
    _case("plan-gpu-mem-overflow", ("plan", "--gpu-mem", "1e400"), r"--gpu-mem inf: must be a finite number"),
    _case("plan-gpu-mem-huge", ("plan", "--gpu-mem", "1e12"), r"at most 4096", r"--gpu-mem 80"),
    _case(
        "plan-gpu-mem-text", ("plan", "--gpu-mem", "80GB"), r"--gpu-mem", r"not a valid float|valid number"
    ),
    # configs: files and values
    _case("plan-config-missing", ("plan", "nope.yaml"), r"nope\.yaml", r"file not found"),
    _case("plan-config-a-folder", ("plan", "."), r"is a directory, not a file", r"give a YAML file"),
    _case(
        "plan-unknown-preset",
        ("plan", "--set", "model.preset=huge"),
        r"model\.preset: must be one of",
        r"'huge'",
    ),
    _case("plan-set-without-equals", ("plan", "--set", "model.preset"), r"--set expects KEY=VALUE"),
    _case("train-config-missing", ("train", "trial.yaml"), r"trial\.yaml", r"file not found"),
    _case("train-config-a-folder", ("train", "sub"), r"is a directory", setup=lambda t: (t / "sub").mkdir()),
    _case(
        "train-bad-dtype",
        ("train", "trial.yaml"),
        r"optim\.precision",
        r"fp16",
        setup=_yaml("optim.precision: fp16\n"),
    ),
    _case(
        "train-unknown-key",
        ("train", "trial.yaml"),
        r"optim\.learning_rate",
        setup=_yaml("optim.learning_rate: 0.1\n"),
    ),
    _case(
        "train-name-with-slash",
        ("train", "t.yaml", "--name", "../escape"),
        r"--name '\.\./escape': a run name is one folder name",
        setup=TRIAL,
    ),
    _case(
        "train-name-dotdot",
        ("train", "t.yaml", "--name", ".."),
        r"--name '\.\.': a run name is one folder name",
        setup=TRIAL,
    ),
    _case(
        "train-storage-a-file",
        ("train", "t.yaml", "--storage", "runs"),
        r"--storage runs: a file, not a directory",
        setup=lambda t: ((t / "runs").write_text("x\n"), TRIAL(t)),
    ),
    _case(
        "model-summary-unknown-preset",
        ("model-summary", "--preset", "13b"),
        r"Invalid value for '--preset'",
        r"'13b' is not one of 'tiny', 'small', '1b', '11b'",
    ),
    _case("model-summary-bad-fusion", ("model-summary", "--fusion", "9"), r"fusion\.levels"),
    _case("model-summary-bad-freeze", ("model-summary", "--freeze", "everything"), r"freeze"),
    _case(
        "model-summary-bad-injection",
        ("model-summary", "--injection", "sideways"),
        r"Invalid value for '--injection'",
        r"'sideways' is not one of 'none', 'concat', 'parallel'",
    ),
    # export's own options
    _case(
        "export-checkpoint-missing",
        ("export", "ck", "--out", "o"),
        r"CHECKPOINT ck: missing",
        r"checkpoint_NNNNNN",
    ),
    _case(
        "export-checkpoint-a-file",
        ("export", "ck", "--out", "o"),
        r"CHECKPOINT ck: a file",
        setup=lambda t: (t / "ck").write_text("x\n"),
    ),
    _case(
        "export-bad-dtype",
        ("export", "ck", "--out", "o", "--dtype", "int8"),
        r"Invalid value for '--dtype'",
        r"'int8' is not one of 'fp32', 'bf16'",
    ),
    _case("export-out-missing", ("export", "ck"), r"--out"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check(case, tmp_path, monkeypatch)
