"""The bad-input catalogue for search-space YAML: each case is a hostile or mistaken file given to
``validate`` (or to ``sweep``/``resume``, which check the same spec first), refused with exit 2, an
error that names the file, the field and the fix, and no file changed. None of them starts Ray."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.badinput.harness import Case, check, ids

BASE = """\
experiment: bad
metric: val/macro_f1
mode: max
design: grid
seeds: [0, 1]
budget: {trials: 4, epochs: 1, max_wall_time: 10m}
baseline: {fusion.levels: none}
scientific:
  fusion.levels: [none, "23"]
nuisance:
  fusion.injection: {choices: [parallel], when: {fusion.levels: {not: none}}, otherwise: none}
fixed:
  model.preset: tiny
  run.device: cpu
resources: {workers: 1, concurrent_trials: 1}
study: {storage: null}
"""

# The alias bomb: 460 bytes that expand to 9^9 strings (one more level: 9^10).
LOL = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
LEVELS = "abcdefghij"


def bomb(levels: int) -> str:
    lines = [LOL]
    for prev, name in itertools.pairwise(LEVELS[:levels]):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n")
    return "".join(lines) + f"description: *{LEVELS[levels - 1]}\n" + BASE.split("\n", 1)[1]


def variant(*pairs: tuple[str, str]) -> str:
    """BASE with each ``old`` line (or fragment) replaced by ``new``."""
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def file(content: str | bytes, name: str = "spec.yaml") -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return setup


def files(**contents: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for name, content in contents.items():
            file(content, name.replace("__", "."))(tmp)

    return setup


def spec_case(id: str, content: str | bytes, *expect: str) -> Case:
    """``validate spec.yaml`` of ``content``: the error names spec.yaml and says ``expect``."""
    return Case(id, ("validate", "spec.yaml"), ("spec.yaml", *expect), setup=file(content))


LATIN1 = variant(("experiment: bad\n", "experiment: bad\ndescription: rétinopathie, oeil fatigué\n")).encode(
    "latin-1"
)
HUGE_INT = "9" * 5001
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4

TRACK = "study: {storage: null}\n"
RESOURCES = "resources: {workers: 1, concurrent_trials: 1}"
BUDGET = "budget: {trials: 4, epochs: 1, max_wall_time: 10m}"

CASES: list[Case] = [
    # Tracking, failures and cost (issue 14).
    spec_case(
        "tracking-backend-typo",
        variant((TRACK, TRACK + "tracking: {backend: mlflw}\n")),
        r"tracking\.backend",
        "did you mean 'mlflow'",
    ),
    spec_case(
        "tracking-option-of-another-backend",
        variant((TRACK, TRACK + "tracking: {backend: mlflow, project: p}\n")),
        r"tracking\.project",
        "backend wandb",
    ),
    spec_case(
        "tracking-unknown-key",
        variant((TRACK, TRACK + "tracking: {backend: wandb, grup: g}\n")),
        r"tracking\.grup",
        "choose among",
    ),
    spec_case(
        "tracking-a-scalar", variant((TRACK, TRACK + "tracking: mlflow\n")), "tracking", "must be a mapping"
    ),
    spec_case(
        "tracking-empty-uri",
        variant((TRACK, TRACK + 'tracking: {backend: mlflow, tracking_uri: ""}\n')),
        r"tracking\.tracking_uri",
        "remove the key",
    ),
    spec_case(
        "max-failures-below-minus-one",
        variant((RESOURCES, RESOURCES[:-1] + ", max_failures: -2}")),
        r"resources\.max_failures",
        ">= -1",
    ),
    spec_case(
        "placement-typo",
        variant((RESOURCES, RESOURCES[:-1] + ", placement: strict}")),
        r"resources\.placement",
        "did you mean 'strict_pack'",
    ),
    spec_case(
        "negative-price",
        variant((BUDGET, BUDGET[:-1] + ", price_per_gpu_hour: -1}")),
        r"budget\.price_per_gpu_hour",
        ">= 0",
    ),
    # Finding 3: limits before anything expands.
    spec_case("alias-bomb-460-bytes", bomb(9), "alias", "expand", r"limit|at most", "anchor"),
    spec_case("alias-bomb-one-more-level", bomb(10), "alias", "expand", r"limit|at most"),
    spec_case(
        "alias-uses-beyond-the-limit",
        variant(("experiment: bad\n", "experiment: bad\nx: &x 1\ny: [" + ", ".join(["*x"] * 2000) + "]\n")),
        "alias",
        r"at most \d+",
    ),
    spec_case("recursive-alias", variant(("seeds: [0, 1]", "seeds: &s [0, *s]")), "seeds", "contains it"),
    spec_case("deep-nesting-5000", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nest", r"at most \d+ levels"),
    spec_case(
        "deep-nesting-mappings", "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)), "nest"
    ),
    spec_case("file-over-the-size-limit", BASE + "#" * (2 * 1024 * 1024) + "\n", "MiB", r"at most|limit"),
    # Finding 5: encodings, binaries and huge numbers.
    spec_case("latin-1", LATIN1, "UTF-8", r"line 2", "re-?save|convert"),
    spec_case("utf-16-with-bom", BASE.encode("utf-16"), "UTF-16", "UTF-8", "re-?save|convert"),
    spec_case("utf-16-le-without-bom", BASE.encode("utf-16-le"), "UTF-16", "UTF-8"),
    spec_case("utf-32-with-bom", BASE.encode("utf-32"), "UTF-32", "UTF-8"),
    spec_case("binary-png", BINARY, "binary|not (a )?text", "YAML"),
    spec_case(
        "5001-digit-seed", variant(("seeds: [0, 1]", f"seeds: [0, {HUGE_INT}]")), r"seeds\[1\]", "5001 digits"
    ),
    spec_case(
        "5001-digit-epochs", variant(("epochs: 1,", f"epochs: {HUGE_INT},")), r"budget\.epochs", "digits"
    ),
    spec_case(
        "control-character",
        variant(("experiment: bad\n", 'experiment: bad\ndescription: "a\x07b"\n')),
        r"line 2",
        "character",
    ),
    # Finding 7: what the sweep rejects or runs wrongly.
    spec_case(
        "seed-above-int32", variant(("seeds: [0, 1]", "seeds: [0, 2147483648]")), r"seeds\[1\]", "2147483647"
    ),
    spec_case("negative-seed", variant(("seeds: [0, 1]", "seeds: [-1, 1]")), r"seeds\[0\]", ">= 0"),
    spec_case(
        "max-wall-time-nan",
        variant(("max_wall_time: 10m", "max_wall_time: .nan")),
        r"budget\.max_wall_time",
        "finite",
        "2h",
    ),
    spec_case(
        "max-wall-time-inf",
        variant(("max_wall_time: 10m", "max_wall_time: .inf")),
        r"budget\.max_wall_time",
        "finite",
        "null",
    ),
    spec_case(
        "max-wall-time-negative",
        variant(("max_wall_time: 10m", "max_wall_time: -5")),
        r"budget\.max_wall_time",
        ">= 0",
    ),
    spec_case(
        "max-wall-time-words",
        variant(("max_wall_time: 10m", "max_wall_time: ten minutes")),
        r"budget\.max_wall_time",
        "30m",
    ),
    spec_case(
        "experiment-name-300-bytes",
        variant(("experiment: bad", "experiment: " + "x" * 300)),
        "experiment",
        "at most 128 characters",
        "shorter",
    ),
    spec_case(
        "experiment-name-long-in-utf8",
        variant(("experiment: bad", "experiment: " + "é" * 100)),
        "experiment",
        "letters, digits",
    ),
    spec_case(
        "experiment-path-separator",
        variant(("experiment: bad", "experiment: a/../b")),
        "experiment",
        "directory",
    ),
    spec_case(
        "experiment-dot-dot", variant(("experiment: bad", "experiment: '..'")), "experiment", "directory"
    ),
    spec_case("experiment-nul", variant(("experiment: bad", 'experiment: "a\\0b"')), "experiment"),
    spec_case(
        "experiment-trailing-newline", variant(("experiment: bad", 'experiment: "bad\\n"')), "experiment"
    ),
    spec_case("experiment-a-number", variant(("experiment: bad", "experiment: 12")), "experiment", "string"),
    spec_case(
        "gpus-per-worker-inf",
        variant(("workers: 1,", "workers: 1, gpus_per_worker: .inf,")),
        r"resources\.gpus_per_worker",
        "finite",
    ),
    spec_case(
        "cpus-per-worker-inf",
        variant(("workers: 1,", "workers: 1, cpus_per_worker: .inf,")),
        r"resources\.cpus_per_worker",
        "finite",
    ),
    spec_case(
        "gpu-mem-nan", variant(("workers: 1,", "workers: 1, gpu_mem_gb: .nan,")), r"resources\.gpu_mem_gb"
    ),
    spec_case(
        "gpus-per-worker-absurd",
        variant(("workers: 1,", "workers: 1, gpus_per_worker: 1000,")),
        r"resources\.gpus_per_worker",
        "<=",
    ),
    spec_case(
        "concurrent-trials-absurd",
        variant(("concurrent_trials: 1", "concurrent_trials: 1000000000")),
        r"resources\.concurrent_trials",
        "at most 10000",
    ),
    spec_case("workers-absurd", variant(("workers: 1,", "workers: 100000,")), r"resources\.workers", "<="),
    spec_case(
        "max-gpu-hours-inf",
        variant(("max_wall_time: 10m", "max_wall_time: 10m, max_gpu_hours: .inf")),
        r"budget\.max_gpu_hours",
        "finite",
    ),
    spec_case(
        "asha-reduction-factor-inf",
        variant(("study:", "scheduler: {type: asha, reduction_factor: .inf}\nstudy:")),
        r"scheduler\.reduction_factor",
        "finite",
    ),
    spec_case("budget-trials-absurd", variant(("trials: 4,", f"trials: {10**12},")), r"budget\.trials", "<="),
    spec_case(
        "duplicate-experiment-key",
        variant(("mode: max\n", "mode: max\nexperiment: other\n")),
        "duplicate key 'experiment'",
        "line 4",
    ),
    spec_case(
        "duplicate-key-one-line",
        variant(("epochs: 1,", "epochs: 1, epochs: 2,")),
        "duplicate key 'epochs'",
        "keep one",
    ),
    spec_case(
        "study-storage-not-a-url",
        variant(("storage: null", "storage: not a database")),
        r"study\.storage",
        "postgresql|sqlite",
    ),
    # Schema, names and values.
    spec_case(
        "unknown-top-level-key",
        variant(("experiment: bad", "experment: bad")),
        "experment",
        "did you mean 'experiment'",
    ),
    spec_case(
        "unknown-flat-key",
        variant(("  model.preset: tiny", "  model.presets: tiny")),
        r"fixed\.model\.presets",
        "did you mean 'model.preset'",
    ),
    spec_case(
        "unknown-budget-key", variant(("epochs: 1,", "epoch: 1,")), r"budget\.epoch", "did you mean 'epochs'"
    ),
    spec_case("seeds-a-string", variant(("seeds: [0, 1]", 'seeds: "0,1"')), "seeds", "list"),
    spec_case("seeds-empty", variant(("seeds: [0, 1]", "seeds: []")), "seeds", "empty"),
    spec_case("mode-unknown", variant(("mode: max", "mode: maximize")), "mode", "did you mean 'max'"),
    spec_case("design-unknown", variant(("design: grid", "design: random")), "design", "grid"),
    spec_case("fusion-depth-9", variant(('[none, "23"]', '[none, "29"]')), r"fusion\.levels", "1..4"),
    spec_case("fusion-depth-letters", variant(('[none, "23"]', "[none, deep]")), r"fusion\.levels", "1234"),
    spec_case(
        "impossible-layer-map",
        variant(("  model.preset: tiny", "  model.preset: tiny\n  fusion.map: '1:3'")),
        r"fusion\.map",
        "levels",
    ),
    spec_case(
        "injection-unknown",
        variant(("choices: [parallel]", "choices: [sideways]")),
        r"fusion\.injection",
        "parallel",
    ),
    spec_case(
        "preset-unknown", variant(("model.preset: tiny", "model.preset: huge")), r"model\.preset", "tiny"
    ),
    spec_case(
        "lr-out-of-range",
        variant(("  run.device: cpu", "  run.device: cpu\n  optim.lr: 5")),
        r"optim\.lr",
        r"\(0\.0, 1\.0\]",
    ),
    spec_case(
        "fixed-value-a-mapping",
        variant(("  run.device: cpu", "  run.device: {a: 1}")),
        r"fixed\.run\.device",
        "scalar",
    ),
    spec_case(
        "seed-under-fixed",
        variant(("  run.device: cpu", "  run.device: cpu\n  seed: 3")),
        r"fixed\.seed",
        "seeds: \\[",
    ),
    spec_case(
        "key-in-two-sections",
        variant(("  run.device: cpu", "  run.device: cpu\n  fusion.levels: '23'")),
        r"fixed\.fusion\.levels",
        "one role",
    ),
    spec_case(
        "scientific-range",
        variant(('[none, "23"]', "{low: 1, high: 4}")),
        r"scientific\.fusion\.levels",
        "list the values",
    ),
    spec_case(
        "metric-on-test", variant(("metric: val/macro_f1", "metric: test/macro_f1")), "metric", "val/macro_f1"
    ),
    spec_case(
        "baseline-matches-no-arm",
        variant(("baseline: {fusion.levels: none}", "baseline: {fusion.levels: '1234'}")),
        "baseline",
        "among the values",
    ),
    spec_case("budget-under-the-design", variant(("trials: 4,", "trials: 3,")), r"budget\.trials", "raise"),
    spec_case(
        "grace-period-over-epochs",
        variant(("study:", "scheduler: {type: asha, grace_period: 5}\nstudy:")),
        r"scheduler\.grace_period",
        "budget.epochs",
    ),
    spec_case(
        "nuisance-range-nan",
        variant(("nuisance:\n", "nuisance:\n  optim.lr: {low: .nan, high: 1.0e-3}\n")),
        r"nuisance\.optim\.lr\.low",
        "finite",
    ),
    # The file itself.
    spec_case("empty-file", "", "experiment", "required"),
    spec_case("top-level-a-list", "- experiment: bad\n", "top level", "mapping"),
    spec_case(
        "syntax-error-line", BASE.replace('[none, "23"]', '[none, "23"'), r"line \d+", "malformed YAML"
    ),
    spec_case("tab-indentation", BASE.replace("  model.preset", "\tmodel.preset"), r"line 13", r"\\t|tab"),
    spec_case(
        "python-object-tag",
        variant(("experiment: bad", "experiment: !!python/object/apply:os.system ['true']")),
        "line 1",
        "constructor",
    ),
    Case(
        "directory-as-file",
        ("validate", "spec.yaml"),
        ("spec.yaml", "directory", "a file"),
        setup=lambda tmp: (tmp / "spec.yaml").mkdir(),
    ),
    Case("missing-file", ("validate", "absent.yaml"), ("absent.yaml", "not found")),
    Case(
        "validate-goes-on-after-bad-files",
        ("validate", "a.yaml", "b.yaml", "c.yaml", "good.yaml"),
        (
            r"a\.yaml: INVALID",
            "UTF-8",
            r"b\.yaml: INVALID",
            "UTF-16",
            r"c\.yaml: INVALID",
            "digits",
            r"good\.yaml: ok",
        ),
        setup=files(
            a__yaml=LATIN1,
            b__yaml=BASE.encode("utf-16"),
            c__yaml=variant(("seeds: [0, 1]", f"seeds: [{HUGE_INT}]")),
            good__yaml=BASE,
        ),
    ),
    Case(
        "sweep-of-an-alias-bomb",
        ("sweep", "spec.yaml", "--storage", "runs"),
        ("spec.yaml", "alias"),
        setup=file(bomb(9)),
    ),
    Case(
        "sweep-of-a-too-large-seed",
        ("sweep", "spec.yaml", "--storage", "runs"),
        ("spec.yaml", r"seeds\[1\]", "2147483647"),
        setup=file(variant(("seeds: [0, 1]", "seeds: [0, 4294967296]"))),
    ),
    Case(
        "resume-of-an-alias-bomb-spec",
        ("resume", "runs/bad"),
        (r"runs/bad/spec\.yaml", "alias"),
        setup=file(bomb(9), "runs/bad/spec.yaml"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check(case, tmp_path, monkeypatch)
