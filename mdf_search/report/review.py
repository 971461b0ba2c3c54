"""Report sections after the analysis: ablation path, Pareto fronts, learning curves, a reviewer's
warnings and the failure appendix (the exports live in ``report.exports``)."""

from __future__ import annotations

import math

import polars as pl

from mdf_search.report import figures as fg
from mdf_search.report import tables as tb
from mdf_search.report.compare import Comparison
from mdf_search.report.document import Section, TableBlock, d
from mdf_search.report.experiment import Experiment
from mdf_search.report.leaderboard import gpu_price, phase_frame
from mdf_search.results.schema import FAILED, PHASE_COLUMNS, Status

TRAIN_LOSS = ("train/loss", "train_loss")  # the loop's name, then the name experiments before it used
GAP = 0.1  # train − val accuracy (or macro-F1) at the kept epoch above which a reviewer asks "overfitting?"


def path_section(exp: Experiment, cmp: Comparison, sink: fg.FigureSink) -> Section:
    """Greedy path over the arms that exist: from the baseline, change the fewest factors (one when an arm
    exists for it) towards the best arm, choosing the best such arm at each step."""
    sec = Section("Ablation path", anchor="path")
    base, ranked, stats = cmp.base, cmp.ranked, cmp.stats
    if base is None or base not in stats or not ranked:
        sec.note("needs a baseline arm and completed trials; no path.")
        return sec
    if cmp.floor:
        sec.note(f"no path: {cmp.floor}.")
        return sec
    params = {a: {k: str(v) for k, v in p.items()} for a, p in exp.arm_params().items() if a in stats}
    target, current = ranked[0], base
    steps = [(base, "baseline", stats[base].mean)]
    marked = ["baseline"]  # each step's change with its data marked, for the table (the figure gets it plain)
    while current != target:
        todo = {k for k, v in params[target].items() if params[current].get(k) != v}
        best_step: tuple[int, float, str] | None = None
        for arm, p in params.items():
            changed = {k for k in p if p.get(k) != params[current].get(k)}
            if (
                arm == current
                or not changed
                or not changed <= todo | {k for k in changed if p[k] == params[target].get(k)}
            ):
                continue
            if any(p[k] != params[target].get(k) for k in changed):
                continue
            score = -stats[arm].mean if exp.descending else stats[arm].mean
            key = (len(changed), score, arm)
            if best_step is None or key < best_step:
                best_step = key
        if best_step is None:
            break
        arm = best_step[2]
        moved = [k for k in params[arm] if params[arm][k] != params[current].get(k)]
        change = ", ".join(f"{k}: {params[current].get(k)} → {params[arm][k]}" for k in moved)
        marked.append(", ".join(f"{d(k)}: {d(params[current].get(k))} → {d(params[arm][k])}" for k in moved))
        steps.append((arm, change, stats[arm].mean))
        current = arm
    rows = [
        [str(i), marked[i], d(arm), tb.num(v), tb.signed(v - steps[0][2])]
        for i, (arm, _, v) in enumerate(steps)
    ]
    sec.blocks.append(
        TableBlock(
            "ablation_path",
            ["step", "change", "arm", d(exp.metric), "Δ vs baseline"],
            rows,
            "greedy path over existing arms (mean over seeds)",
        )
    )
    if len(steps) > 1:
        sec.blocks.append(
            fg.path_figure(
                sink,
                exp.metric,
                [s[1] if i else "baseline" for i, s in enumerate(steps)],
                [s[2] for s in steps],
            )
        )
    if current != target:
        sec.note(f"the path stops at {d(current)}: no existing arm changes only factors towards {d(target)}.")
    return sec


def phase_blocks(exp: Experiment, sec: Section) -> None:
    """Where the time goes: per arm the median seconds of each phase (``train/phases.py``), and each
    phase's share of all trials' summed wall time."""
    trials = exp.trials
    if "features_reused" in trials.columns:  # frozen-feature reuse, train/features.py
        reused = trials.filter(pl.col("features_reused").is_in(["", "none"]).not_())
        counts = reused.group_by("arm", "features_reused", maintain_order=True).len()
        if counts.height:
            sec.text(
                "Frozen features came from the feature cache (@eval: evaluation batches only, training "
                "augments): "
                + "; ".join(
                    f"{d(r['arm'])}: {d(r['features_reused'])} ({r['len']} trials)"
                    for r in counts.iter_rows(named=True)
                )
                + "."
            )
    if "train_s" not in trials.columns or trials["train_s"].drop_nulls().len() == 0:
        sec.note("no phase times recorded: no breakdown of where the time goes.")
        return
    frame = phase_frame(trials, "arm").filter(pl.col("trials") > 0)
    columns = ["wall_s", *PHASE_COLUMNS, "startup_s"]
    rows = [
        [d(r["arm"]), str(r["trials"]), *(tb.num(r[c], 1) for c in columns), tb.num(r["train_share"], 2)]
        for r in frame.iter_rows(named=True)
    ]
    sec.blocks.append(
        TableBlock(
            "phase_times",
            ["arm", "trials", *columns, "train share"],
            rows,
            "where the time goes: median seconds per trial (every status), the fastest arm first; per "
            "trial the phases add up to wall_s; train share = summed train_s / summed wall_s",
        )
    )
    timed = trials.filter(pl.col("train_s").is_not_null() & pl.col("wall_s").is_not_null())
    wall = float(timed["wall_s"].sum())
    if wall > 0:
        shares = [(c, float(timed[c].fill_null(0).sum()) / wall) for c in PHASE_COLUMNS if c in timed.columns]
        shares.sort(key=lambda item: -item[1])
        sec.text(
            f"Of all {timed.height} trials' {wall:.0f} s of wall time: "
            + ", ".join(f"{c.removesuffix('_s')} {share:.0%}" for c, share in shares)
            + "."
        )


def price_block(exp: Experiment, sec: Section) -> None:
    """With ``budget.price_per_gpu_hour``: per arm the GPU-hours its trials spent (each trial's latest
    attempt, whatever its status: a failed trial's hours were spent too) and their cost, and the total."""
    price, trials = gpu_price(exp), exp.trials
    if price is None or "gpu_hours" not in trials.columns:
        return
    hours = pl.col("gpu_hours").cast(pl.Float64).fill_null(0)
    per_arm = trials.group_by("arm", maintain_order=True).agg(pl.len().alias("n"), hours.sum().alias("h"))
    rows = [
        [d(r["arm"]), str(r["n"]), tb.num(r["h"], 3), tb.num(r["h"] * price, 2)]
        for r in per_arm.sort("h", descending=True).iter_rows(named=True)
    ]
    total = float(per_arm["h"].sum())
    rows.append(["all", str(trials.height), tb.num(total, 3), tb.num(total * price, 2)])
    sec.blocks.append(
        TableBlock(
            "cost",
            ["arm", "trials", "GPU-hours", "cost"],
            rows,
            f"what the study cost: the trials' GPU-hours (every status) × budget.price_per_gpu_hour "
            f"({price:g} per GPU-hour)",
        )
    )


def pareto_section(exp: Experiment, sink: fg.FigureSink) -> Section:
    sec = Section("Cost: where the time goes, Pareto fronts", anchor="pareto")
    price_block(exp, sec)
    phase_blocks(exp, sec)
    ok = exp.ok()
    if ok.is_empty():
        sec.note("no finished trials with the metric yet.")
        return sec
    cost = "gpu_hours"
    if "gpu_hours" not in ok.columns or float(ok["gpu_hours"].fill_null(0).sum()) == 0:
        cost = "cpu_hours"
        sec.note("GPU-hours are all 0 (a CPU study): cost is CPU-hours (wall time × workers).")
    ys = ok[exp.metric].to_list()
    arms = ok["arm"].to_list()
    for name, col, label, log in (
        ("pareto_cost", cost, cost.replace("_", "-"), False),
        ("pareto_params", "trainable_params", "trainable parameters", True),
    ):
        if col not in ok.columns or ok[col].drop_nulls().len() == 0:
            sec.note(f"no {col} recorded: no {label} front.")
            continue
        xs = [float(v) if v is not None else math.nan for v in ok[col].to_list()]
        keep = [i for i in range(len(xs)) if math.isfinite(xs[i]) and (xs[i] > 0 or not log)]
        x2, y2, a2 = [xs[i] for i in keep], [ys[i] for i in keep], [arms[i] for i in keep]
        front = tb.pareto_front(x2, y2, exp.descending)
        sec.blocks.append(fg.pareto_figure(sink, name, label, exp.metric, x2, y2, a2, front, log_x=log))
        rows = [
            [
                d(ok["trial_id"][keep[i]]),
                d(a2[i]),
                tb.num(x2[i], 4) if x2[i] < 1e3 else f"{x2[i]:.3g}",
                tb.num(y2[i]),
            ]
            for i in sorted(front, key=lambda i: x2[i])
        ]
        sec.blocks.append(
            TableBlock(
                name,
                ["trial", "arm", label, d(exp.metric)],
                rows,
                f"Pareto front: {d(exp.metric)} vs {label}",
            )
        )
    return sec


def warnings_section(exp: Experiment, cmp: Comparison, reports: int) -> Section:
    sec = Section("Warnings a reviewer would raise", anchor="warnings")
    found = [cmp.floor] if cmp.floor else []
    if cmp.floor_arms and not cmp.floor:
        found.append(
            f"{len(cmp.floor_arms)} arm(s) predict a single class on validation in every selected trial "
            f"(the majority-class floor): {', '.join(map(d, cmp.floor_arms[:4]))}{' …' if len(cmp.floor_arms) > 4 else ''}."
        )
    found.extend(edge_warnings(exp, cmp))
    found.extend(power_warnings(cmp))
    finished = exp.trials.filter(pl.col("status") != Status.RUNNING)
    failed = finished.filter(pl.col("status").is_in(FAILED)).height
    if finished.height and failed / finished.height > 0.2:
        found.append(
            f"high failure rate: {failed} of {finished.height} finished trials ({failed / finished.height:.0%}) diverged, ran out of memory, were infeasible or errored."
        )
    running = exp.trials.filter(pl.col("status") == Status.RUNNING).height
    if running:
        found.append(f"{running} trial(s) still running: this report reads a partial experiment.")
    found.extend(gap_warnings(exp))
    if any(c.startswith("test/") for c in exp.trials.columns) and reports > 1:
        found.append(
            f"test metrics have been shown {reports} times for this experiment (reports.log): choosing a configuration after looking at test results biases them; select on validation."
        )
    if cmp.base is None:
        found.append("no baseline arm with results: improvements are not measured against the baseline MLLM.")
    for text in found:
        sec.text(text, "warning")
    if not found:
        sec.text(
            "none: best values are inside the search space, the seeds can reach α with the exact sign-flip "
            "test after Holm, failures ≤ 20 %, no train/validation gap."
        )
    return sec


def power_warnings(cmp: Comparison) -> list[str]:
    """What the seeds can detect (``report.power``): said again here, with the seeds actually shared."""
    out: list[str] = []
    one = sorted(a for a, s in cmp.stats.items() if len(s.seeds) < 2)
    if one:
        out.append(
            f"{len(one)} arm(s) with fewer than 2 completed seeds ({', '.join(map(d, one[:4]))}{' …' if len(one) > 4 else ''}): "
            "no Student-t CI and no seed-level test for them."
        )
    p = cmp.power
    if p.n_arms == 0:
        return out
    out.extend(w + "." for w in p.warnings())
    fewer = sorted(a for a, s in cmp.stats.items() if a != cmp.base and 0 < s.pairs < p.n_seeds)
    if fewer:
        out.append(
            f"{len(fewer)} arm(s) share fewer than {p.n_seeds} seeds with the baseline (trials that did not "
            f"complete): {', '.join(map(d, fewer[:4]))}{' …' if len(fewer) > 4 else ''}; their seed-level tests are weaker still."
        )
    return out


def edge_warnings(exp: Experiment, cmp: Comparison) -> list[str]:
    out: list[str] = []
    ok = exp.ok().sort(exp.metric, descending=exp.descending, maintain_order=True)  # ties: lowest trial id
    if exp.spec is None or ok.is_empty():
        return out
    best = ok.row(0, named=True)
    for key, param in exp.spec.nuisance.items():
        value = best.get(key)
        if (
            not param.is_range
            or not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or param.high <= param.low
        ):
            continue
        lo, hi, v = (
            (math.log(param.low), math.log(param.high), math.log(value))
            if param.log and value > 0 and param.low > 0
            else (param.low, param.high, value)
        )
        pos = (v - lo) / (hi - lo)
        if pos <= 0.05 or pos >= 0.95:
            out.append(
                f"best trial's {d(key)}={value:.4g} is at the {'low' if pos <= 0.05 else 'high'} edge of [{param.low:g}, {param.high:g}]: widen the range."
            )
    ranked = [] if cmp.floor else cmp.ranked
    params = exp.arm_params()
    for key, param in exp.spec.scientific.items():
        choices = list(param.choices or ())
        if (
            ranked
            and len(choices) > 2
            and all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices)
        ):
            value = params.get(ranked[0], {}).get(key)
            numbers = [float(c) for c in choices if isinstance(c, int | float)]
            if isinstance(value, int | float) and value in (min(numbers), max(numbers)):
                out.append(
                    f"best arm's {d(key)}={d(value)} is an end of the ordered values {d(choices)}: the optimum may lie beyond."
                )
    return out


def gap_warnings(exp: Experiment) -> list[str]:
    """Overfitting: the best trial's train/X against val/X at the epoch it kept (its ``train/accuracy``
    and ``train/loss`` are reported per epoch, so the epochs table is read first, the trial row after)."""
    ok = exp.ok().sort(exp.metric, descending=exp.descending, maintain_order=True)  # ties: lowest trial id
    if ok.is_empty():
        return []
    best = ok.row(0, named=True)
    row = exp.selected_epoch(str(best["trial_id"]), int(best["attempt"])) or {}
    merged = {**best, **{k: v for k, v in row.items() if v is not None}}
    out = []
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        train, val = merged.get(f"train/{key}"), merged.get(f"val/{key}")
        if isinstance(train, float) and isinstance(val, float) and train - val > GAP:
            epoch = f" at epoch {row['epoch']}" if row.get("epoch") is not None else ""
            loss = next((merged[c] for c in TRAIN_LOSS if isinstance(merged.get(c), float)), None)
            loss_text = f", train/loss {loss:.3f}" if loss is not None else ""
            out.append(
                f"large train/val gap in the best trial ({d(best['trial_id'])}){epoch}: train/{key}={train:.3f} "
                f"vs val/{key}={val:.3f}{loss_text} (overfitting?)."
            )
    return out


def failures_section(exp: Experiment, invalid: pl.DataFrame | None = None) -> Section:
    """Every trial that did not complete, and those that did with a non-finite study metric
    (``invalid``: from ``report.finite``, with its ``value``)."""
    sec = Section("Failure appendix", anchor="failures")
    values: dict[str, str] = {}
    if invalid is not None and invalid.height:
        values = {str(t): str(v) for t, v in invalid.select("trial_id", "value").iter_rows()}
    bad = exp.trials.filter(
        (pl.col("status") != Status.COMPLETED) | pl.col("trial_id").cast(pl.String).is_in(list(values))
    ).sort("trial_id")
    if bad.is_empty():
        sec.text("every trial completed.")
        return sec
    rows = []
    for r in bad.iter_rows(named=True):
        message = str(r.get("message") or "")
        if str(r["trial_id"]) in values:
            value = values[str(r["trial_id"])]
            message = f"{exp.metric} = {value}: not a valid result" + (f"; {message}" if message else "")
        rows.append(
            [
                d(r["trial_id"]),
                str(r.get("attempt")),
                d(r.get("arm")),
                d(r["status"]),
                str(r.get("epochs")),
                d(message[:300]),
            ]
        )
    sec.blocks.append(
        TableBlock(
            "failures",
            ["trial", "attempt", "arm", "status", "epochs", "message"],
            rows,
            "every trial that did not complete, or completed without a finite study metric",
        )
    )
    return sec
