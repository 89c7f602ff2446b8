"""Command-line interface: `atspeed --help`.

    atspeed demo                      synthetic data + the committed small models -> quality/speed table + plot
    atspeed data synthetic OUT        write the synthetic dataset
    atspeed data prepare LOG OUT      interaction log (CSV/Parquet) -> splits + semantic IDs
    atspeed data fix-index DIR        make every semantic ID of an index unique (one more code)
    atspeed data reindex DIR --out D  semantic IDs learnt from the train split's co-occurrence
    atspeed train DATA OUT            train a target or draft recommender
    atspeed teacher / align           teacher data, and draft alignment (AtSpeed-S/-R and baselines)
    atspeed evaluate                  Recall/NDCG and speed of every decoding method, table + JSON/CSV/PNG
    atspeed recommend                 top-K items for one history, or a batch job (in-process or Ray Data)
    atspeed bench decode | trie | engine   speed benchmarks on built-in models

The commands parse their options and call the library (`atspeed.rec`, `atspeed.align`,
`atspeed.benchmarking`), which they import when they run: `atspeed --help` loads neither torch nor
transformers. Choice lists are read from the modules that own them (`_names`).

Item ids on the command line are the ones in `sequential_*.txt` (1-based); the Python API is 0-based.

Bad input (a missing or broken file, a wrong option value) ends with one line `Error: ...` that
names the file or option, and exit status 2; `atspeed --debug COMMAND` shows the traceback instead.
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from atspeed.rec.data import EVAL_SPLITS, count_ids, find_index_file, load_index
from atspeed.rec.recipes import SIZES as RECIPES

# what the library raises for bad input (files, folders, values, unsupported settings): shown as one line
USER_ERRORS = (ValueError, OSError, NotImplementedError)


def _names(module: str, name: str) -> tuple[str, ...]:
    """The names in `module.name` (a literal tuple, or a dict's keys), read from the module's source
    instead of imported: the lists stay with their owners, and listing them does not load torch.
    `tests/test_cli_startup.py` checks each against the imported value."""
    path = Path(__file__).resolve().parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(getattr(t, "id", None) == name for t in targets):
            return tuple(ast.literal_eval(node.value))
    raise LookupError(f"{path}: no literal {name} = ...")


METHODS = _names("atspeed.rec.recommend", "METHODS")
ALIGN_METHODS = _names("atspeed.align.trainer", "METHODS")
TEACHER_METHODS = _names("atspeed.align.trainer", "TEACHER_METHODS")  # the alignment methods that need --teacher
ENGINE_METHODS = _names("atspeed.benchmarking", "ENGINE_METHODS")
ALL_ENGINE_METHODS = _names("atspeed.benchmarking", "ALL_ENGINE_METHODS")  # engine-eager: GPU runs
MODEL_SIZES = _names("atspeed.models", "SIZES")
DEMO_RECIPES = _names("atspeed.rec.experiment", "DEMO_RECIPES")
OBJECTIVES = _names("atspeed.rec.train", "OBJECTIVES")
DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names
ENGINES = ("local", "ray")


class InputError(click.ClickException):
    """A problem with the command's input or files: `Error: <message>` on one line, exit status 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class _Command(click.Command):
    """An atspeed command: a library error caused by the user's input becomes an InputError, whether
    the command runs under `atspeed` or alone (`python -m atspeed.serve`)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            if ctx.find_root().params.get("debug") or os.environ.get("ATSPEED_DEBUG"):
                raise
            raise InputError(str(e)) from e


class _Commands(click.Group):
    """The `atspeed` group and its subgroups: their commands are _Commands."""

    command_class = _Command
    group_class = type  # subgroups are _Commands too


@contextlib.contextmanager
def _about(option: str) -> Iterator[None]:
    """A ValueError raised inside is reported as a bad value of `option`."""
    try:
        yield
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from e


def _ray_engine():
    """atspeed.rec.ray_engine, or an error that says how to install Ray."""
    try:
        import atspeed.rec.ray_engine as engine
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "ray":
            raise
        raise InputError('--engine ray needs Ray, which is not installed: pip install "atspeed[ray]"') from e
    return engine


# ------------------------------------------------------------------------------------------------
# option values and option groups, declared once


def _positive_ints(what: str) -> Callable[[click.Context, click.Parameter, str], list[int]]:
    """A callback: '5,10,20' or '5 10 20' -> [5, 10, 20] (sorted, once each), every value >= 1."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
        try:
            values = sorted({int(x) for x in value.replace(",", " ").split()})
        except ValueError:
            raise click.BadParameter(f"expected integers like '5,10,20', got {value!r}") from None
        if not values or values[0] < 1:
            raise click.BadParameter(f"every {what} must be >= 1")
        return values

    return parse


def _subset(choices: tuple[str, ...]) -> Callable[[click.Context, click.Parameter, str | None], list[str] | None]:
    """A callback: 'a,b' or 'a b' -> ['a', 'b'], each one of `choices` (None stays None: the default)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
        if value is None:
            return None
        names = value.replace(",", " ").split()
        if not names or any(n not in choices for n in names):
            raise click.BadParameter(f"choose from {', '.join(choices)}; got {value!r}")
        return names

    return parse


def _options(*options: Callable) -> Callable:
    """Several click options as one decorator, in the order given (as --help lists them)."""

    def apply(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)
NEW_FOLDER = click.Path(file_okay=False, path_type=Path)


class _FinitePositive(click.FloatRange):
    """A number > 0 that is finite: click's FloatRange lets nan and inf through."""

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


FINITE_POSITIVE = _FinitePositive()


def _data(required: bool = True, help: str = "dataset folder (<name>.index.json + sequential_*.txt)"):
    return click.option("--data", "data_dir", type=FOLDER, required=required, help=help)


def _target(required: bool = True, help: str = "target model folder (e.g. OUT/final of `atspeed train`)"):
    return click.option("--target", type=FOLDER, required=required, help=help)


def _draft(help: str = "draft model folder, for speculative decoding"):
    return click.option("--draft", type=FOLDER, default=None, help=help)


DEVICE = click.option("--device", default="cpu", show_default=True)
DTYPE = click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
KS = click.option("--ks", default="5,10,20", show_default=True, callback=_positive_ints("K"),
                  help="beam sizes K (one beam search per K)")
MODELS = _options(_data(), _target(required=False, help="target model folder (default: the one committed for the "
                                   "dataset: atspeed/rec/pretrained/<name>-target, e.g. beauty)"), _draft())


def _models(data_dir: Path, target: Path | None, draft: Path | None) -> tuple[Path, Path | None]:
    """--target and --draft, or the models committed for the dataset when --target is not given."""
    if target is not None:
        return target, draft
    from atspeed.rec.recommend import committed_models

    committed = committed_models(data_dir)
    if committed is None:
        raise click.UsageError(f"give --target: no model is committed for the dataset in {data_dir}.")
    return committed[0], draft or committed[1]
RAY = _options(
    click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                 help="decode in this process, or on Ray Data (a pool of actors)"),
    click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Ray: actors, each loads the models once"),
    click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True),
    click.option("--cpus-per-actor", type=click.FloatRange(min=0), default=1.0, show_default=True),
    click.option("--ray-address", default=None, help="Ray: a running cluster (default: start a local one)"),
)


def _ray_settings(actors: int, gpus_per_actor: float, cpus_per_actor: float, ray_address: str | None) -> dict:
    return dict(num_actors=actors, num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=cpus_per_actor,
                address=ray_address)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="ATSPEED_DEBUG", help="show the traceback of an error")
def main(debug: bool) -> None:
    """atspeed: fast beam search by tree attention and speculative beam search, for LLM-based
    generative recommendation and any Hugging Face causal LM."""


# ------------------------------------------------------------------------------------------------
# data

SEMANTIC_ID_SETTINGS = _options(
    click.option("--levels", type=click.IntRange(min=1), default=3, show_default=True,
                 help="residual k-means levels (+1 disambiguation level)"),
    click.option("--codes", type=click.IntRange(min=1), default=256, show_default=True, help="codes per level"),
    click.option("--seed", default=0, show_default=True),
)


@main.group()
def data() -> None:
    """Build datasets in the on-disk format (<name>.index.json + sequential_{train,valid,test}.txt)."""


@data.command("synthetic")
@click.argument("out", type=NEW_FOLDER)
@click.option("--items", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--users", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
def data_synthetic(out: Path, items: int, users: int, seed: int) -> None:
    """Write the seeded SYNTHETIC dataset (clustered users over hierarchical items) to OUT."""
    from atspeed.rec.synthetic import SyntheticConfig, write_synthetic

    ds = write_synthetic(out, SyntheticConfig(num_items=items, num_users=users, seed=seed))
    click.echo(f"wrote {out}: {ds.num_items} items, {len(ds.users)} users (synthetic)")


@data.command("prepare")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=NEW_FOLDER)
@click.option("--name", default="custom", show_default=True, help="dataset name (<name>.index.json)")
@click.option("--user-col", default="user", show_default=True)
@click.option("--item-col", default="item", show_default=True)
@click.option("--time-col", default="timestamp", show_default=True)
@click.option("--features", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="item feature vectors (.npy) to cluster instead of co-occurrence embeddings")
@SEMANTIC_ID_SETTINGS
def data_prepare(log: Path, out: Path, name: str, user_col: str, item_col: str, time_col: str,
                 features: Path | None, levels: int, codes: int, seed: int) -> None:
    """Interaction log LOG (CSV or Parquet: user, item, timestamp) -> 8:1:1 global-time splits and
    semantic IDs (residual k-means) in OUT."""
    from atspeed.rec.prepare import prepare_dataset

    ds = prepare_dataset(log, out, name=name, item_features=features, levels=levels, codes_per_level=codes,
                         seed=seed, user_col=user_col, item_col=item_col, time_col=time_col)  # meta.json names LOG
    click.echo(f"wrote {out}: {ds.num_items} items, {len(ds.users)} users")


@data.command("fix-index")
@click.argument("data_dir", metavar="DIR", type=FOLDER)
@click.option("--out", type=NEW_FOLDER, default=None,
              help="write the fixed dataset to this new folder (default: replace DIR's index in place)")
def data_fix_index(data_dir: Path, out: Path | None) -> None:
    """Make every semantic ID of DIR's index unique: items that share an ID get one more code that tells
    them apart (as `data prepare` does), so every item can be recommended. Retrain models afterwards."""
    from atspeed.rec.prepare import fix_index

    path, shared = fix_index(data_dir, out)
    click.echo(f"wrote {path}: {shared} items that shared a semantic ID now have their own "
               "(every ID one code longer)")


@data.command("reindex")
@click.argument("data_dir", metavar="DIR", type=FOLDER)
@click.option("--out", type=NEW_FOLDER, required=True, help="the new dataset folder")
@SEMANTIC_ID_SETTINGS
@click.option("--include-valid", is_flag=True,
              help="learn the IDs from train + valid items (for a final fit with `train --include-valid`)")
@click.option("--name", default=None, help="the new dataset's name (<name>.index.json; default: DIR's)")
def data_reindex(data_dir: Path, out: Path, levels: int, codes: int, seed: int, include_valid: bool,
                 name: str | None) -> None:
    """Copy DIR to OUT with semantic IDs learnt from its train split (co-occurrence embeddings and
    residual k-means, as `data prepare` makes them) instead of its index. Retrain models afterwards."""
    from atspeed.rec.prepare import reindex

    path = reindex(data_dir, out, levels=levels, codes_per_level=codes, seed=seed, include_valid=include_valid,
                   name=name)
    split = "train + valid items'" if include_valid else "train split's"
    click.echo(f"wrote {path}: semantic IDs from the {split} co-occurrence ({levels + 1} codes per item)")


# ------------------------------------------------------------------------------------------------
# train


@main.command()
@click.argument("data_dir", type=FOLDER)
@click.argument("out", type=NEW_FOLDER)
@click.option("--kind", type=click.Choice(RECIPES), default="target", show_default=True,
              help="model recipe (atspeed.rec.recipes)")
@click.option("--epochs", type=FINITE_POSITIVE, default=10.0, show_default=True)
@click.option("--max-steps", default=-1, show_default=True, help="> 0 overrides --epochs")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=FINITE_POSITIVE, default=1e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--save-steps", type=click.IntRange(min=1), default=500, show_default=True,
              help="steps between checkpoints (the last 2 are kept) and validations")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="sequence", show_default=True,
              help="sequence: every item of a user's window supervised in one pass; next-item: one example per item")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.1, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="dropout on embeddings and on each block's attention and MLP outputs while training")
@click.option("--scheduler", type=click.Choice(["linear", "cosine", "constant"]), default="cosine",
              show_default=True, help="learning-rate schedule")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.02, show_default=True)
@click.option("--eval-users", type=click.IntRange(min=0), default=1000, show_default=True,
              help="validation users scored (NDCG@10, beam search) every --save-steps; the best checkpoint "
                   "is the result (0: no validation, the last step is)")
@click.option("--patience", type=click.IntRange(min=1), default=3, show_default=True,
              help="stop after this many validations without a better NDCG@10")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="continue from OUT's last complete checkpoint")
@click.option("--allow-duplicate-ids", is_flag=True,
              help="accept an index where items share a semantic ID (better: `atspeed data fix-index`)")
@click.option("--include-valid", is_flag=True,
              help="train on train + valid items (the final fit before a test evaluation; needs --eval-users 0)")
def train(data_dir: Path, out: Path, kind: str, allow_duplicate_ids: bool, include_valid: bool, **settings) -> None:
    """Train a recommender from scratch on DATA_DIR's train split; the model lands in OUT/final."""
    from atspeed.rec.train import train_recipe

    final = train_recipe(data_dir, out, kind, allow_duplicate_ids=allow_duplicate_ids, include_valid=include_valid,
                         log=click.echo, **settings)
    click.echo(f"saved {final}")


# ------------------------------------------------------------------------------------------------
# evaluate / recommend


@main.command()
@MODELS
@KS
@click.option("--methods", default=None, callback=_subset(METHODS),
              help=f"subset of {', '.join(METHODS)} (default: all that apply)")
@click.option("--users", type=click.IntRange(min=1), default=None, help="evaluate the first N test users only")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="users decoded together")
@click.option("--draft-beams", type=click.IntRange(min=1), default=None, help="draft beams N (default 2K; at least K)")
@click.option("--gamma", type=click.IntRange(min=1), default=3, show_default=True, help="levels drafted per round")
@DEVICE
@DTYPE
@click.option("--split", type=click.Choice(EVAL_SPLITS), default="test", show_default=True)
@click.option("--out", type=NEW_FOLDER, default=None, help="folder for results.json, results.csv and results.png")
def evaluate(data_dir: Path, target: Path | None, draft: Path | None, ks: list[int], **settings) -> None:
    """Recall@K / NDCG@K and speed of HF beam search, tree attention and speculative decoding, side by side."""
    from atspeed.rec.experiment import evaluate_run

    target, draft = _models(data_dir, target, draft)
    evaluate_run(data_dir, target, draft, ks, log=click.echo, **settings)


@main.command()
@MODELS
@click.option("--history", default=None, help="one user's items, oldest first, 1-based as in sequential_*.txt")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="batch job: users.parquet or users.jsonl with columns user, history (1-based items)")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="batch job: lists.parquet (user, items, scores); bad rows go to lists.errors.parquet")
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--method", type=click.Choice(METHODS), default="tree", show_default=True)
@DEVICE
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="batch job: users decoded together")
@RAY
@click.option("--overwrite", is_flag=True, help="batch job: replace an existing output (atomically)")
def recommend(data_dir: Path, target: Path | None, draft: Path | None, history: str | None, input_path: Path | None,
              output: Path | None, k: int, method: str, device: str, batch_size: int, engine: str,
              overwrite: bool, **ray: object) -> None:
    """Top-K next items: for one --history (printed), or for every user of --input (written to --output)."""
    if (history is None) == (input_path is None):
        raise click.UsageError("give exactly one of --history (one user) or --input (a batch job).")
    if input_path is not None and output is None:
        raise click.UsageError("--input needs --output (a .parquet file).")
    if input_path is None and engine != "local":
        raise click.UsageError(f"--engine {engine} runs batch jobs (--input); one --history is decoded here.")
    from atspeed.rec.recommend import check_k, check_method

    target, draft = _models(data_dir, target, draft)
    with _about("--draft"):
        check_method(method, has_draft=draft is not None)
    index = load_index(find_index_file(data_dir), allow_duplicate_ids=True)
    num_items = len(index)
    with _about("-k"):
        check_k(k, num_items, count_ids(index))
    if input_path is None:
        _print_recommendations(data_dir, target, draft, _history(history, num_items), k, method, device)
        return
    settings = dict(k=k, method=method, batch_size=batch_size, overwrite=overwrite, allow_duplicate_ids=True)
    if engine == "ray":
        result = _ray_engine().run_ray(input_path, output, target, data_dir, draft, **settings, **_ray_settings(**ray))
    else:
        from atspeed.rec.batch import run_local

        result = run_local(input_path, output, target, data_dir, draft, device=device, **settings)
    click.echo(f"{result.users} users -> {result.output}; {result.errors} bad rows -> {result.errors_output}; "
               f"{result.users_per_second:.1f} users/s ({engine})")


def _history(text: str, num_items: int) -> list[int]:
    """--history's 1-based item ids as 0-based ids, all in the catalogue."""
    try:
        items = [int(x) - 1 for x in text.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"expected item ids like '12 7 301', got {text!r}", param_hint="--history") from None
    if not items:
        raise click.BadParameter("the history is empty: give at least one item id", param_hint="--history")
    bad = [i + 1 for i in items if not 0 <= i < num_items]
    if bad:
        raise click.BadParameter(f"items {bad} are not in the catalogue (1 … {num_items})", param_hint="--history")
    return items


def _print_recommendations(data_dir: Path, target: Path, draft: Path | None, items: list[int], k: int, method: str,
                           device: str) -> None:
    """One user's top-K items as a table: rank, item (1-based), beam score, semantic ID."""
    from atspeed.rec.recommend import load_recommender, recommend

    rec = load_recommender(target, data_dir, draft, device=device, allow_duplicate_ids=True)
    out = recommend(rec, [items], k, method=method)
    click.echo(f"{'rank':>4} {'item':>7} {'score':>9}  semantic ID")
    for rank, (item, score) in enumerate(zip(out.items[0], out.scores[0].tolist(), strict=True), start=1):
        click.echo(f"{rank:>4} {item + 1:>7} {score:>9.4f}  {''.join(rec.index[item])}")


# ------------------------------------------------------------------------------------------------
# draft alignment


@main.command()
@_data()
@_target()
@click.option("--out", type=NEW_FOLDER, required=True, help="cache folder (resumed if unfinished)")
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=20, show_default=True,
              help="target beams kept per prompt")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="prompts per resumable chunk (Ray: one actor pool per chunk, so make it large)")
@DEVICE
@DTYPE
@RAY
def teacher(data_dir: Path, target: Path, out: Path, k: int, batch_size: int, chunk_size: int, device: str,
            dtype: str, engine: str, **ray: object) -> None:
    """Teacher data for alignment: the target's top-K items for every training prompt (safetensors, resumable)."""
    from functools import partial

    import torch

    from atspeed.align.teacher import generate_teacher_data
    from atspeed.rec.data import load_dataset
    from atspeed.rec.recommend import load_recommender

    rank = None
    if engine == "ray":
        rank = partial(_ray_engine().rank_histories, k=k, target_dir=target, data_dir=data_dir, batch_size=batch_size,
                       allow_duplicate_ids=True, **_ray_settings(**ray))
    rec = load_recommender(target, data_dir, device=device, dtype=getattr(torch, dtype), allow_duplicate_ids=True)
    path = generate_teacher_data(rec, load_dataset(data_dir, allow_duplicate_ids=True), out, k=k,
                                 batch_size=batch_size, chunk_size=chunk_size, rank=rank)
    click.echo(f"teacher data in {path}")


@main.command()
@_data()
@_target()
@click.option("--teacher", "teacher_dir", type=NEW_FOLDER, default=None,
              help="teacher data folder (`atspeed teacher`); made here if missing (methods that need it)")
@click.option("--out", type=NEW_FOLDER, required=True,
              help="the aligned draft lands in OUT/final, the acceptance history in OUT/history.json; "
                   "an interrupted run resumes from OUT/checkpoint")
@click.option("--target-logits", type=NEW_FOLDER, default=None,
              help="keep the target's logits on the teacher (or TVD-KD's ground-truth) rows here, e.g. "
                   "TEACHER/target-logits: computed once (an epoch's target forwards), then read by every step, "
                   "epoch, seed and method instead of rerunning the target")
@click.option("--method", type=click.Choice(ALIGN_METHODS), default="atspeed-s", show_default=True)
@_draft(help="start from this draft (default: a fresh model of --kind)")
@click.option("--kind", type=click.Choice(RECIPES), default="draft", show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="(1 - alpha) L_rec + alpha L_align")
@click.option("--top-k", "top_k", type=click.IntRange(min=1), default=20, show_default=True,
              help="AtSpeed-S: the draft's top-k set")
@click.option("--temperature", type=FINITE_POSITIVE, default=1.0, show_default=True)
@click.option("--renormalize/--no-renormalize", default=True, show_default=True,
              help="AtSpeed-S: renormalise both distributions over the draft's top-k set (no: read the full "
                   "probabilities there, the paper code's default)")
@click.option("--mask-to-valid/--no-mask-to-valid", default=True, show_default=True,
              help="compare distributions over the tokens a valid item may take")
@click.option("--teacher-beams", type=click.IntRange(min=1), default=20, show_default=True,
              help="target beams trained on per prompt")
@click.option("--on-policy", is_flag=True, help="also align on the draft's own beams")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=FINITE_POSITIVE, default=1e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=0), default=500, show_default=True,
              help="steps between acceptance checks (0: before and after training only)")
@click.option("--eval-users", type=click.IntRange(min=1), default=256, show_default=True,
              help="validation users of each check")
@click.option("-k", "--beams", "k", type=click.IntRange(min=1), default=20, show_default=True,
              help="K of the acceptance check")
@click.option("--gamma", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="device of the teacher-data run")
def align(data_dir: Path, target: Path, teacher_dir: Path | None, out: Path, target_logits: Path | None,
          draft: Path | None, kind: str, device: str, **settings) -> None:
    """Train a draft to agree with the target (AtSpeed-S / -R or a baseline); keeps the draft with the best
    acceptance. Runs under `accelerate launch` too."""
    method = settings["method"]
    if method in TEACHER_METHODS and teacher_dir is None:
        raise click.UsageError(f"--method {method} trains on the target's beams: give --teacher DIR.")
    from atspeed.align.job import align_job

    result = align_job(data_dir, target, out, teacher_dir=teacher_dir, target_logits=target_logits, draft=draft,
                       kind=kind, device=device, **settings)
    click.echo(f"best acceptance {result.best_acceptance:.3f} levels/round at step {result.best_step}; "
               f"saved {result.final}")


# ------------------------------------------------------------------------------------------------
# serve

SERVE_METHODS = _names("atspeed.serve.config", "SERVE_METHODS")
SERVE_ENGINES = _names("atspeed.serve.config", "SERVE_ENGINES")


def _serve_option(name: str, **kwargs: Any) -> Callable:
    """The option of a numeric serve setting, its type, bounds and default taken from ServeConfig (a
    light import), so that the command and Python callers refuse the same values."""
    from atspeed.serve.config import SERVE_BOUNDS, ServeConfig

    kind, least, most = SERVE_BOUNDS[name]
    default = ServeConfig.__dataclass_fields__[name].default
    value_type = (click.IntRange if kind is int else click.FloatRange)(least, most)
    return click.option(f"--{name.replace('_', '-')}", type=value_type, default=default,
                        show_default=default is not None, **kwargs)


@main.command()
@_data(required=False, help="dataset folder (default: the synthetic demo data, in a temporary folder)")
@_target(required=False, help="target model folder (default: the committed demo target)")
@_draft(help="draft model folder, for --method speculative (default with the demo target: the demo draft)")
@click.option("--method", type=click.Choice(SERVE_METHODS), default="tree", show_default=True)
@DEVICE
@click.option("--host", default="127.0.0.1", show_default=True)
@_serve_option("port")
@_serve_option("max_batch", help="requests decoded together, at most (1: no batching)")
@_serve_option("max_wait_ms", help="longest wait for a batch to fill")
@_serve_option("max_k")
@_serve_option("max_history", help="items per request")
@_serve_option("max_users", help="users per /recommend/batch call")
@_serve_option("threads", help="torch threads for decoding")
@click.option("--engine", type=click.Choice(SERVE_ENGINES), default="local", show_default=True,
              help="uvicorn in this process, or Ray Serve: model replicas behind its HTTP proxy")
@_serve_option("replicas", help="Ray: model replicas, each loads the models once and batches its own requests")
@_serve_option("gpus_per_replica")
@_serve_option("cpus_per_replica")
@click.option("--ray-address", default=None, help="Ray: a running cluster (default: start a local one)")
def serve(data_dir: Path | None, **settings: object) -> None:
    """An HTTP JSON service: top-K items per history, concurrent requests batched (POST /recommend, /docs);
    `--engine ray` runs it on Ray Serve (replicas on a local Ray, or a cluster with --ray-address)."""
    from atspeed.serve import ServeConfig
    from atspeed.serve import serve as run_service

    run_service(ServeConfig(data=data_dir, **settings))


# ------------------------------------------------------------------------------------------------
# demo


@main.command()
@_data(required=False, help="a dataset folder (e.g. ../shared/data/beauty); default: the built-in synthetic one")
@_target(required=False, help="a trained target (default: the committed synthetic model, or train one for --data)")
@_draft()
@click.option("--out", type=NEW_FOLDER, default=Path("atspeed-demo"), show_default=True,
              help="work folder: data, trained models, results.{json,csv,png}")
@click.option("--users", type=click.IntRange(min=1), default=100, show_default=True, help="test users to evaluate")
@KS
@click.option("--epochs", type=FINITE_POSITIVE, default=1.0, show_default=True,
              help="training epochs when models are trained (with --data, or with --train-steps)")
@click.option("--train-steps", type=int, default=None,
              help="train target and draft for this many steps instead of using committed weights")
@click.option("--recipe", type=click.Choice(DEMO_RECIPES), default="default", show_default=True,
              help="tiny: both models from the tiny recipe (fast smoke runs)")
def demo(data_dir: Path | None, out: Path, **settings) -> None:
    """The recommendation demo, offline: data -> target + draft -> HF vs tree attention vs speculative
    beam search, quality and speed side by side (table, results.json/csv and results.png in OUT)."""
    from atspeed.rec.experiment import demo as run_demo

    run_demo(out, data_dir=data_dir, log=click.echo, **settings)


# ------------------------------------------------------------------------------------------------
# bench


@main.group()
def bench() -> None:
    """Speed benchmarks (ratios measured side by side in one run)."""


@bench.command("decode")
@click.option("--beams", "-k", type=click.IntRange(min=1), default=20, show_default=True,
              help="beam size K (items returned)")
@click.option("--draft-beams", "-n", type=click.IntRange(min=1), default=40, show_default=True, help="draft beams N")
@click.option("--gamma", type=click.IntRange(min=1), default=3, show_default=True, help="draft length")
@click.option("--new-tokens", type=click.IntRange(min=1), default=4, show_default=True,
              help="tokens to generate (an item ID is 4)")
@click.option("--prompt-len", type=click.IntRange(min=1), default=84, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
def bench_decode(**settings: int) -> None:
    """HF beam search vs tree attention vs strict speculative beam search on a built-in random model pair
    (no downloads): same outputs, and how long each took."""
    from atspeed.benchmarking import decode_benchmark

    click.echo(decode_benchmark(**settings))


@bench.command("trie")
@_data(required=False, help="dataset folder whose catalogue is used (default: the synthetic catalogue)")
@click.option("--batches", default="1,4,16", show_default=True, callback=_positive_ints("batch size"),
              help="requests B per step")
@click.option("--beams", "-k", type=click.IntRange(min=1), default=20, show_default=True, help="beams K per request")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True)
@DEVICE
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch CPU threads")
def bench_trie(data_dir: Path | None, batches: list[int], beams: int, repeats: int, device: str,
               threads: int) -> None:
    """Per-step cost of the vectorised trie constraint vs HF's prefix_allowed_tokens_fn, side by side."""
    from atspeed.rec.bench_trie import run

    click.echo(run(data_dir, batches, beams, repeats, device, threads))


@bench.command("engine")
@click.option("--size", type=click.Choice(MODEL_SIZES), default="cpu", show_default=True,
              help="built-in model pair (atspeed.models): cpu = 4x256 Llama, 1b = TinyLlama's shape")
@DEVICE
@DTYPE
@click.option("--batches", default="1,16", show_default=True, callback=_positive_ints("batch size"),
              help="requests B per call")
@click.option("--beams", "-k", default="1,20,128,256", show_default=True, callback=_positive_ints("K"),
              help="beam sizes K")
@click.option("--methods", default=",".join(ENGINE_METHODS), show_default=True, callback=_subset(ALL_ENGINE_METHODS))
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--hf-max-rows", type=click.IntRange(min=1), default=4096, show_default=True,
              help="skip HF above B*K beam rows")
@click.option("--noise", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="the noisy draft's disagreement")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's)")
def bench_engine(size: str, device: str, dtype: str, batches: list[int], beams: list[int], methods: list[str],
                 repeats: int, hf_max_rows: int, noise: float, threads: int | None) -> None:
    """The static engine vs HF generate() and the tree path (rec shape: 84-token prompt, 4 new tokens):
    ms per request, users/s, the roofline measured in the same run, methods whose output differs from HF's."""
    import torch

    from atspeed.benchmarking import engine_benchmark

    if threads:
        torch.set_num_threads(threads)
    engine_benchmark(size, device, dtype, batches, beams, tuple(methods), repeats=repeats, hf_max_rows=hf_max_rows,
                     noise=noise, print_fn=click.echo)


if __name__ == "__main__":
    main()
