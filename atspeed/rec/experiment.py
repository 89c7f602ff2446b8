"""An evaluation run as `atspeed evaluate` and `atspeed demo` make it, and the demo's choice of models.

`evaluate_run` loads a dataset and a target (and draft), runs every decoding method at every K on
the evaluated users, prints the table, and writes results.{json,csv,png} together with what was
run (dataset, models, device, settings, versions), so a table can be traced back from its own file.
`demo` wraps it: the synthetic dataset unless one is given, and the committed synthetic models when
nothing needs training, otherwise a target and a draft trained here (resumable).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from atspeed.decoding.checks import check_int
from atspeed.rec.data import eval_cases, load_dataset
from atspeed.rec.evaluate import MethodResult, evaluate_decoding
from atspeed.rec.recommend import PRETRAINED, Recommender, load_recommender, model_dir
from atspeed.rec.report import format_table, write_report
from atspeed.rec.synthetic import write_synthetic
from atspeed.rec.train import train_recipe

DEMO_RECIPES = ("default", "tiny")  # default: the target and draft recipes; tiny: both tiny (smoke runs)
Log = Callable[[str], None]


def evaluate_run(
    data_dir: str | os.PathLike,
    target: str | os.PathLike,
    draft: str | os.PathLike | None = None,
    ks: Sequence[int] = (5, 10, 20),
    *,
    methods: Sequence[str] | None = None,
    users: int | None = None,
    batch_size: int = 1,
    draft_beams: int | None = None,
    gamma: int = 3,
    out: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    split: str = "test",
    log: Log = print,
) -> list[MethodResult]:
    """Every method (default: all that apply) at every K on the first `users` users of `split`; the table
    goes to `log`, and with `out` the report (results.json holds the run's settings under "meta")."""
    if users is not None:  # checked here, not after the run: the report's JSON holds them as plain ints
        users = check_int("users", users, note=" (or None for all)")
    batch_size, gamma = check_int("batch_size", batch_size), check_int("gamma", gamma)
    if draft_beams is not None:
        draft_beams = check_int("draft_beams", draft_beams, note=" (or None for 2K)")
    ds = load_dataset(data_dir, allow_duplicate_ids=True)
    cases = eval_cases(ds, split)[:users]
    rec = load_recommender(target, data_dir, draft, device=device, dtype=getattr(torch, dtype),
                           allow_duplicate_ids=True)
    desc = f"{ds.name}: {len(cases)} {split} users, {_sizes(rec)}"
    log(f"{desc}; {device} {dtype}, {torch.get_num_threads()} threads, batch size {batch_size}")
    rows = evaluate_decoding(rec, cases, ks, methods, batch_size=batch_size, draft_beams=draft_beams, gamma=gamma)
    log(format_table(rows))
    if out is not None:
        meta = {"dataset": ds.name, "synthetic": ds.synthetic, "users": len(cases), "split": split,
                "target": str(target), "draft": str(draft) if draft else None, "device": device, "dtype": dtype,
                "batch_size": batch_size, "gamma": gamma, "draft_beams": draft_beams or "2K",
                "torch": torch.__version__, "threads": torch.get_num_threads()}
        paths = write_report(rows, out, meta, title=desc)
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    return rows


def _sizes(rec: Recommender) -> str:
    """'target 4.20 M params, draft 0.31 M'."""
    sizes = f"target {sum(p.numel() for p in rec.target.parameters()) / 1e6:.2f} M params"
    if rec.draft is not None:
        sizes += f", draft {sum(p.numel() for p in rec.draft.parameters()) / 1e6:.2f} M"
    return sizes


def demo(
    out: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    target: str | os.PathLike | None = None,
    draft: str | os.PathLike | None = None,
    users: int = 100,
    ks: Sequence[int] = (5, 10, 20),
    epochs: float = 1.0,
    train_steps: int | None = None,
    recipe: str = "default",
    log: Log = print,
) -> list[MethodResult]:
    """The recommendation demo in `out`: data (the synthetic set unless `data_dir`), a target and a draft
    (given, committed, or trained here for `epochs` or `train_steps`), then `evaluate_run` with a report."""
    if recipe not in DEMO_RECIPES:
        raise ValueError(f"Unknown demo recipe {recipe!r}; choose one of {', '.join(DEMO_RECIPES)}.")
    for given in (target, draft):  # a wrong model folder fails before anything is written
        if given is not None:
            model_dir(given)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    committed = data_dir is None and train_steps is None and recipe == "default"
    if data_dir is None:
        data_dir = out / "data"
        write_synthetic(data_dir)
        log(f"synthetic dataset (not real users) written to {data_dir}")
    settings = dict(data_dir=data_dir, out=out, committed=committed, recipe=recipe, epochs=epochs,
                    steps=train_steps, log=log)
    target = target if target is not None else _demo_model("target", **settings)
    draft = draft if draft is not None else _demo_model("draft", **settings)
    return evaluate_run(data_dir, target, draft, ks, users=users, out=out, log=log)


def _demo_model(role: str, *, data_dir: str | os.PathLike, out: Path, committed: bool, recipe: str, epochs: float,
                steps: int | None, log: Log) -> Path:
    """The committed synthetic `role` model when the demo runs as shipped; else one trained in `out/role`."""
    shipped = PRETRAINED / f"synthetic-{role}"
    if committed and shipped.exists():
        log(f"{role}: committed weights {shipped} (see its README for the command that made them)")
        return shipped
    kind = "tiny" if recipe == "tiny" else role
    log(f"training {kind} -> {out / role} ({f'{steps} steps' if steps else f'{epochs:g} epochs'}; "
        "resumes if interrupted)")
    return train_recipe(data_dir, out / role, kind, allow_duplicate_ids=True, epochs=epochs, max_steps=steps or -1,
                        save_steps=max(50, steps or 500), logging_steps=max(1, (steps or 500) // 5), log=log)
