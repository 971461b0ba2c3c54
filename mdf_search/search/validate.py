"""Validation of a loaded spec beyond its schema: everything that needs the arms; runs nothing.

``space.load_spec`` checks the file and each key; ``validate_spec`` then builds the arms and checks each
one's trial through ``TrialConfig.from_flat`` (at the nuisance defaults and the first seed) and
``presets.require_weights`` (the sweep builds every arm for real: 11b needs ``model.weights``), the
baseline, the design size against ``budget.trials``, a GPU share that two ranks of one trial would have
to split, and, when GPUs are declared, each arm's memory plan (``train.memory.plan_trial``: a meta-device
estimate, no weights loaded). ``validate_files`` is the
``validate`` command's report: a summary per file, its problems and notes, and what its design can detect
(``report.power``). Problems read ``<file>: <where>: <what is wrong>; <fix>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mdf_search.config import ConfigError, TrialConfig
from mdf_search.fields import short_repr
from mdf_search.model.presets import get_preset, require_weights
from mdf_search.report.power import Power, design_power
from mdf_search.search.designs import arms, baseline_arms, num_trials, trial_params, trials_per_arm
from mdf_search.search.space import SearchSpec, SpecError, load_spec
from mdf_search.train.memory import plan_trial, worker_gpu_mem_gb


def validate_spec(spec: SearchSpec) -> list[str]:
    """Problems beyond the schema: every arm's trial through ``TrialConfig.from_flat``, the baseline,
    the design size against ``budget.trials``, and the memory plan when GPUs are declared."""
    return check_design(spec)[0]


def cache_warning(spec: SearchSpec, storage: str | None) -> str | None:
    """On a multi-node cluster: a warning when the spec's trials keep their data under a node-local
    cache root and ``storage`` (``--storage``; None: the default) cannot carry the data artefacts to the
    other nodes either (``data.artefacts.node_local_note``); None otherwise."""
    from mdf_search.data.artefacts import node_local_note
    from mdf_search.train.builders import cache_root

    roots = set()
    for arm in arms(spec):
        try:
            roots.add(str(cache_root(TrialConfig.from_flat(trial_params(spec, arm, spec.seeds[0])))))
        except (ConfigError, ValueError):
            continue  # the arm's own problem is reported as such
    notes = [note for root in sorted(roots) if (note := node_local_note(root, storage))]
    return notes[0] if notes else None


def validate_files(
    paths: list[str] | list[Path], *, cluster: bool = False, storage: str | None = None
) -> tuple[int, list[str]]:
    """Exit code (0 ok, 2 any problem) and report lines: a summary per file, then its problems and notes,
    then what its design can detect (``report.power``) with a warning when a test cannot reach α.
    ``cluster``: the study is for a multi-node cluster: warn when its data cannot reach every node
    (:func:`cache_warning`, with ``storage`` the ``--storage`` it will run with)."""
    code, lines = 0, []
    for path in paths:
        try:
            spec = load_spec(path)
        except SpecError as err:
            code = 2
            lines.append(f"{path}: INVALID ({len(err.problems)} problem(s))")
            lines.extend(f"  {p}" for p in err.problems)
            continue
        problems, notes, summary = check_design(spec)
        lines.append(
            f"{path}: {'ok' if not problems else f'INVALID ({len(problems)} problem(s))'}: {summary}"
        )
        lines.extend(f"  {p}" for p in problems)
        lines.extend(f"  note: {n}" for n in notes)
        if not problems:
            power = spec_power(spec)
            head, *tests = power.describe()
            lines.append(f"  power: {head}")
            lines.extend(f"    {t}" for t in tests)
            lines.extend(f"  warning: {w}" for w in power.warnings())
            if cluster and (note := cache_warning(spec, storage)):
                lines.append(f"  warning: {note}")
        code = max(code, 2 if problems else 0)
    return code, lines


def spec_power(spec: SearchSpec) -> Power:
    """``design_power`` for a valid spec: the seeds every arm shares (grid/ofat: all of them; tpe/qmc/gp:
    seeds go round-robin within an arm's trials, so ``min(seeds, trials per arm)``) and the non-baseline
    arms (0 without a baseline that matches exactly one arm)."""
    arm_list = arms(spec)
    n_seeds = len(spec.seeds)
    if spec.is_sampler:
        n_seeds = min(n_seeds, trials_per_arm(spec, len(arm_list)))
    n_arms = len(arm_list) - 1 if len(baseline_arms(spec, arm_list)) == 1 else 0
    return design_power(n_seeds, n_arms)


def _where(ids: list[str], total: int) -> str:
    if len(ids) == total and total > 1:
        return f"every arm ({total})"
    return "arm " + ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")


def check_design(spec: SearchSpec) -> tuple[list[str], list[str], str]:
    """(problems, notes, one-line summary): what ``validate_spec``/``validate_files`` report."""
    src, problems, notes = spec.path, [], []
    arm_list = arms(spec)
    ids = [a.id for a in arm_list]
    by_problem: dict[str, list[str]] = {}
    configs: dict[str, TrialConfig] = {}
    for arm in arm_list:
        params = trial_params(spec, arm, spec.seeds[0])
        try:
            cfg = configs[arm.id] = TrialConfig.from_flat(params)
            require_weights(get_preset(cfg.model.preset), cfg.model.weights)  # the sweep builds it for real
        except ConfigError as err:
            for p in err.problems:
                by_problem.setdefault(p, []).append(arm.id)
        except ValueError as err:
            by_problem.setdefault(str(err), []).append(arm.id)
    problems += [f"{src}: {_where(where, len(ids))}: {p}" for p, where in by_problem.items()]

    if spec.baseline is not None:
        matched = baseline_arms(spec, arm_list)
        if len(matched) != 1:
            what = (
                "matches no arm"
                if not matched
                else f"matches {len(matched)} arms {short_repr([a.id for a in matched], 300)}"
            )
            problems.append(
                f"{src}: baseline: {short_repr(dict(spec.baseline), 200)} {what}; name exactly one of the "
                f"arms: {short_repr(ids, 400)}" + ("; add the other scientific keys" if matched else "")
            )

    total = num_trials(spec)
    cap = spec.budget.trials
    if spec.is_sampler:
        per_arm = trials_per_arm(spec, len(ids))
        size = f"{len(ids)} arm(s) x {per_arm} trial(s) per arm = {total} trials"
        if per_arm < 1:
            problems.append(
                f"{src}: budget.trials: {cap} is fewer than the {len(ids)} arms, so some arm gets no trial; "
                f"raise it to at least {len(ids)} (or set budget.trials_per_arm)"
            )
        elif cap is not None and total > cap:
            problems.append(
                f"{src}: budget.trials: the design needs {size}, over budget.trials={cap}; raise "
                f"budget.trials to {total} or lower budget.trials_per_arm"
            )
    else:
        size = f"{len(ids)} arm(s) x {len(spec.seeds)} seed(s) = {total} trials"
        if cap is not None and total > cap:
            problems.append(
                f"{src}: budget.trials: the {spec.design} design has {size}, over budget.trials={cap}; "
                f"raise budget.trials to {total}, or drop values or seeds"
            )
        elif cap is not None and cap > total:
            notes.append(f"budget.trials={cap} exceeds the design's {total} trials; the sweep runs {total}")

    res = spec.resources
    if 0 < res.gpus_per_worker < 1 and res.workers > 1:
        problems.append(
            f"{src}: resources.gpus_per_worker: {res.gpus_per_worker:g} with workers: {res.workers}: Ray packs "
            "a trial's fractional workers onto one GPU, and NCCL refuses two ranks of one trial on one GPU; "
            "share GPUs between one-worker trials (workers: 1), or give each worker a whole GPU"
        )
    memory = ""
    if spec.resources.gpus_per_worker > 0 and configs:
        memory = _memory(spec, configs, problems)
    summary = f"experiment {spec.experiment}, design {spec.design}, {size}{memory}"
    return problems, notes, summary


def _memory(spec: SearchSpec, configs: Mapping[str, TrialConfig], problems: list[str]) -> str:
    """Plan each arm (at the nuisance defaults) on the declared GPUs (a meta-device build: no weights)."""
    res = spec.resources
    mem = worker_gpu_mem_gb(res.gpu_mem_gb, res.gpus_per_worker)
    worst: tuple[float, str] = (0.0, "")
    for arm_id, cfg in configs.items():
        plan = plan_trial(cfg, gpus=res.workers, gpu_mem_gb=mem)
        if not plan.fits:
            problems.append(f"{spec.path}: arm {arm_id}: does not fit on {res.workers} GPU(s): {plan.reason}")
        worst = max(worst, (plan.total_gb, arm_id))
    return f", memory up to {worst[0]:.1f} of {mem:g} GiB per GPU on {res.workers} GPU(s) ({worst[1]})"
