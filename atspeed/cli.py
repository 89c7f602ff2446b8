"""Command-line interface: `atspeed --help`.

    atspeed demo                      synthetic data + the committed small models -> quality/speed table + plot
    atspeed data synthetic OUT        write the synthetic dataset
    atspeed data prepare LOG OUT      interaction log (CSV/Parquet) -> splits + semantic IDs
    atspeed train DATA OUT            train a target or draft recommender
    atspeed teacher / align           teacher data, and draft alignment (AtSpeed-S/-R and baselines)
    atspeed evaluate                  Recall/NDCG and speed of every decoding method, table + JSON/CSV/PNG
    atspeed recommend                 top-K items for one history, or a batch job (in-process or Ray Data)
    atspeed bench decode | trie       speed benchmarks on built-in models

Item ids on the command line are the ones in `sequential_*.txt` (1-based); the Python API is 0-based.

Bad input (a missing or broken file, a wrong option value) ends with one line `Error: ...` that
names the file or option, and exit status 2; `atspeed --debug COMMAND` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click
import torch

from atspeed.rec.data import eval_cases, find_index_file, load_dataset, load_index
from atspeed.rec.recommend import METHODS, PRETRAINED, check_k, check_method

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# what the library raises for bad input (files, folders, values, unsupported settings): shown as one line
USER_ERRORS = (ValueError, OSError, NotImplementedError)


class InputError(click.ClickException):
    """A problem with the command's input or files: `Error: <message>` on one line, exit status 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class _Commands(click.Group):
    """The `atspeed` group: a library error caused by the user's input becomes an InputError."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            if ctx.params.get("debug"):
                raise
            raise InputError(str(e)) from e


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


def _ks(value: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in value.replace(",", " ").split()})
    except ValueError:
        raise click.BadParameter(f"expected integers like '5,10,20', got {value!r}") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter("every K must be >= 1")
    return ks


def _methods(value: str) -> list[str]:
    methods = [m for m in value.replace(",", " ").split() if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise click.BadParameter(f"choose from {', '.join(METHODS)}; got {value!r}")
    return methods


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="ATSPEED_DEBUG", help="show the traceback of an error")
def main(debug: bool) -> None:
    """atspeed: fast beam search by tree attention and speculative beam search, for LLM-based
    generative recommendation and any Hugging Face causal LM."""


# ------------------------------------------------------------------------------------------------
# data


@main.group()
def data() -> None:
    """Build datasets in the on-disk format (<name>.index.json + sequential_{train,valid,test}.txt)."""


@data.command("synthetic")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--items", default=512, show_default=True)
@click.option("--users", default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
def data_synthetic(out: Path, items: int, users: int, seed: int) -> None:
    """Write the seeded SYNTHETIC dataset (clustered users over hierarchical items) to OUT."""
    from atspeed.rec.synthetic import SyntheticConfig, write_synthetic

    ds = write_synthetic(out, SyntheticConfig(num_items=items, num_users=users, seed=seed))
    click.echo(f"wrote {out}: {ds.num_items} items, {len(ds.users)} users (synthetic)")


@data.command("prepare")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="custom", show_default=True, help="dataset name (<name>.index.json)")
@click.option("--user-col", default="user", show_default=True)
@click.option("--item-col", default="item", show_default=True)
@click.option("--time-col", default="timestamp", show_default=True)
@click.option("--features", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="item feature vectors (.npy) to cluster instead of co-occurrence embeddings")
@click.option("--levels", default=3, show_default=True, help="residual k-means levels (+1 disambiguation level)")
@click.option("--codes", default=256, show_default=True, help="codes per level")
@click.option("--seed", default=0, show_default=True)
def data_prepare(log: Path, out: Path, name: str, user_col: str, item_col: str, time_col: str,
                 features: Path | None, levels: int, codes: int, seed: int) -> None:
    """Interaction log LOG (CSV or Parquet: user, item, timestamp) -> 8:1:1 global-time splits and
    semantic IDs (residual k-means) in OUT."""
    from atspeed.rec.prepare import prepare_dataset, read_interactions

    frame = read_interactions(log, user_col=user_col, item_col=item_col, time_col=time_col)
    ds = prepare_dataset(frame, out, name=name, item_features=features, levels=levels,
                         codes_per_level=codes, seed=seed)
    click.echo(f"wrote {out}: {ds.num_items} items, {len(ds.users)} users")


# ------------------------------------------------------------------------------------------------
# train


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["target", "draft", "tiny"]), default="target", show_default=True,
              help="model recipe (atspeed.rec.recipes)")
@click.option("--epochs", default=10.0, show_default=True)
@click.option("--max-steps", default=-1, show_default=True, help="> 0 overrides --epochs")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--save-steps", type=click.IntRange(min=1), default=500, show_default=True,
              help="steps between checkpoints (the last 2 are kept)")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="continue from OUT's last complete checkpoint")
@click.option("--allow-duplicate-ids", is_flag=True, help="accept an index where items share a semantic ID")
def train(data_dir: Path, out: Path, kind: str, epochs: float, max_steps: int, batch_size: int, lr: float,
          seed: int, save_steps: int, resume: bool, allow_duplicate_ids: bool) -> None:
    """Train a recommender from scratch on DATA_DIR's train split; the model lands in OUT/final."""
    final = _train_recipe(data_dir, out, kind, allow_duplicate_ids=allow_duplicate_ids, seed=seed, epochs=epochs,
                          max_steps=max_steps, batch_size=batch_size, lr=lr, save_steps=save_steps, resume=resume)
    click.echo(f"saved {final}")


def _train_recipe(data_dir: Path, out: Path, kind: str, *, allow_duplicate_ids: bool, seed: int = 0,
                  **settings) -> Path:
    """A fresh model of recipe `kind`, seeded, trained on `data_dir` (settings go to atspeed.rec.train.train)."""
    from atspeed.rec.recipes import new_model
    from atspeed.rec.tokenizer import build_tokenizer
    from atspeed.rec.train import last_checkpoint
    from atspeed.rec.train import train as run_training

    ds = load_dataset(data_dir, allow_duplicate_ids=allow_duplicate_ids)
    tokenizer = build_tokenizer(ds.index)
    torch.manual_seed(seed)
    model = new_model(kind, tokenizer)
    click.echo(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
               f"{ds.name} ({ds.num_items} items)")
    checkpoint = last_checkpoint(out) if settings.get("resume", True) and out.is_dir() else None
    if checkpoint is not None:
        click.echo(f"resuming from {checkpoint}")
    return run_training(model, tokenizer, ds, out, seed=seed, **settings)


# ------------------------------------------------------------------------------------------------
# evaluate / recommend


def _evaluate(data_dir: Path, target: Path, draft: Path | None, ks: list[int], *, methods: list[str] | None = None,
              users: int | None = None, batch_size: int = 1, draft_beams: int | None = None, gamma: int = 3,
              out: Path | None = None, device: str = "cpu", dtype: str = "float32", split: str = "test") -> None:
    """Shared by `evaluate` and `demo`: load, run every method at every K, print and save the table."""
    from atspeed.rec.evaluate import evaluate_decoding
    from atspeed.rec.recommend import load_recommender
    from atspeed.rec.report import format_table, write_report

    ds = load_dataset(data_dir, allow_duplicate_ids=True)
    cases = eval_cases(ds, split)
    if users is not None:
        cases = cases[:users]
    rec = load_recommender(target, data_dir, draft, device=device, dtype=DTYPES[dtype], allow_duplicate_ids=True)
    n_target = sum(p.numel() for p in rec.target.parameters())
    desc = f"{ds.name}: {len(cases)} {split} users, target {n_target / 1e6:.2f} M params"
    if rec.draft is not None:
        desc += f", draft {sum(p.numel() for p in rec.draft.parameters()) / 1e6:.2f} M"
    click.echo(f"{desc}; {device} {dtype}, {torch.get_num_threads()} threads, batch size {batch_size}")
    rows = evaluate_decoding(rec, cases, ks, methods, batch_size=batch_size, draft_beams=draft_beams, gamma=gamma)
    click.echo(format_table(rows))
    if out is not None:
        meta = {"dataset": ds.name, "synthetic": ds.synthetic, "users": len(cases), "split": split,
                "target": str(target), "draft": str(draft) if draft else None, "device": device, "dtype": dtype,
                "batch_size": batch_size, "gamma": gamma, "draft_beams": draft_beams or "2K",
                "torch": torch.__version__, "threads": torch.get_num_threads()}
        paths = write_report(rows, out, meta, title=desc)
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _eval_options(f):
    options = [
        click.option("--ks", default="5,10,20", show_default=True, callback=lambda c, p, v: _ks(v),
                     help="beam sizes K (one beam search per K)"),
        click.option("--methods", default=None, callback=lambda c, p, v: v and _methods(v),
                     help=f"subset of {', '.join(METHODS)} (default: all that apply)"),
        click.option("--users", type=int, default=None, help="evaluate the first N test users only"),
        click.option("--batch-size", default=1, show_default=True, help="users decoded together"),
        click.option("--draft-beams", type=int, default=None, help="draft beams N (default 2K)"),
        click.option("--gamma", default=3, show_default=True, help="levels drafted per round"),
        click.option("--device", default="cpu", show_default=True),
        click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--target", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--draft", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@_eval_options
@click.option("--split", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder for results.json, results.csv and results.png")
def evaluate(data_dir, target, draft, ks, methods, users, batch_size, draft_beams, gamma, device, dtype, split,
             out) -> None:
    """Recall@K / NDCG@K and speed of HF beam search, tree attention and speculative decoding, side by side."""
    _evaluate(data_dir, target, draft, ks, methods=methods, users=users, batch_size=batch_size,
              draft_beams=draft_beams, gamma=gamma, out=out, device=device, dtype=dtype, split=split)


@main.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--target", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--draft", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--history", default=None, help="one user's items, oldest first, 1-based as in sequential_*.txt")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="batch job: users.parquet or users.jsonl with columns user, history (1-based items)")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="batch job: lists.parquet (user, items, scores); bad rows go to lists.errors.parquet")
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--method", type=click.Choice(METHODS), default="tree", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="batch job: in this process, or on Ray Data (a pool of actors)")
@click.option("--batch-size", default=16, show_default=True, help="users decoded together")
@click.option("--actors", default=1, show_default=True, help="Ray: actors, each loads the models once")
@click.option("--gpus-per-actor", default=0.0, show_default=True)
@click.option("--cpus-per-actor", default=1.0, show_default=True)
@click.option("--ray-address", default=None, help="Ray: a running cluster (default: start a local one)")
@click.option("--overwrite", is_flag=True, help="batch job: replace an existing output (atomically)")
def recommend(data_dir: Path, target: Path, draft: Path | None, history: str | None, input_path: Path | None,
              output: Path | None, k: int, method: str, device: str, engine: str, batch_size: int, actors: int,
              gpus_per_actor: float, cpus_per_actor: float, ray_address: str | None, overwrite: bool) -> None:
    """Top-K next items: for one --history (printed), or for every user of --input (written to --output)."""
    if (history is None) == (input_path is None):
        raise click.UsageError("give exactly one of --history (one user) or --input (a batch job).")
    if input_path is not None and output is None:
        raise click.UsageError("--input needs --output (a .parquet file).")
    with _about("--draft"):
        check_method(method, has_draft=draft is not None)
    num_items = len(load_index(find_index_file(data_dir), allow_duplicate_ids=True))
    with _about("-k"):
        check_k(k, num_items)
    if input_path is not None:
        _recommend_batch(input_path, output, target, data_dir, draft, k, method, batch_size, device, engine,
                         actors, gpus_per_actor, cpus_per_actor, ray_address, overwrite)
        return
    from atspeed.rec.recommend import load_recommender
    from atspeed.rec.recommend import recommend as run

    items = _history(history, num_items)
    rec = load_recommender(target, data_dir, draft, device=device, allow_duplicate_ids=True)
    out = run(rec, [items], k, method=method)
    click.echo(f"{'rank':>4} {'item':>7} {'score':>9}  semantic ID")
    for rank, (item, score) in enumerate(zip(out.items[0], out.scores[0].tolist(), strict=True), start=1):
        click.echo(f"{rank:>4} {item + 1:>7} {score:>9.4f}  {''.join(rec.index[item])}")


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


def _recommend_batch(input_path: Path, output: Path, target: Path, data_dir: Path, draft: Path | None, k: int,
                     method: str, batch_size: int, device: str, engine: str, actors: int, gpus_per_actor: float,
                     cpus_per_actor: float, ray_address: str | None, overwrite: bool) -> None:
    settings = dict(k=k, method=method, batch_size=batch_size, overwrite=overwrite, allow_duplicate_ids=True)
    if engine == "ray":
        result = _ray_engine().run_ray(input_path, output, target, data_dir, draft, num_actors=actors,
                                       num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=cpus_per_actor,
                                       address=ray_address, **settings)
    else:
        from atspeed.rec.batch import run_local

        result = run_local(input_path, output, target, data_dir, draft, device=device, **settings)
    click.echo(f"{result.users} users -> {result.output}; {result.errors} bad rows -> {result.errors_output}; "
               f"{result.users_per_second:.1f} users/s ({engine})")


# ------------------------------------------------------------------------------------------------
# draft alignment


@main.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--target", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="cache folder (resumed if unfinished)")
@click.option("-k", "--top-k", "k", default=20, show_default=True, help="target beams kept per prompt")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--chunk-size", default=1024, show_default=True, help="prompts per resumable chunk")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="decode here, or on Ray Data (one actor pool per chunk: use a large --chunk-size)")
@click.option("--actors", default=1, show_default=True)
@click.option("--gpus-per-actor", default=0.0, show_default=True)
@click.option("--ray-address", default=None, help="Ray: a running cluster (default: start a local one)")
def teacher(data_dir: Path, target: Path, out: Path, k: int, batch_size: int, chunk_size: int, device: str,
            dtype: str, engine: str, actors: int, gpus_per_actor: float, ray_address: str | None) -> None:
    """Teacher data for alignment: the target's top-K items for every training prompt (safetensors, resumable)."""
    from functools import partial

    from atspeed.align.teacher import generate_teacher_data
    from atspeed.rec.recommend import load_recommender

    rec = load_recommender(target, data_dir, device=device, dtype=DTYPES[dtype], allow_duplicate_ids=True)
    rank = None
    if engine == "ray":
        rank = partial(_ray_engine().rank_histories, k=k, target_dir=target, data_dir=data_dir, batch_size=batch_size,
                       allow_duplicate_ids=True, num_actors=actors, num_gpus_per_actor=gpus_per_actor,
                       address=ray_address)
    path = generate_teacher_data(rec, load_dataset(data_dir, allow_duplicate_ids=True), out, k=k,
                                 batch_size=batch_size, chunk_size=chunk_size, rank=rank)
    click.echo(f"teacher data in {path}")


@main.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--target", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--teacher", "teacher_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="teacher data folder (`atspeed teacher`); made here if missing (methods that need it)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="the aligned draft lands in OUT/final, the acceptance history in OUT/history.json")
@click.option("--method", type=click.Choice(["atspeed-s", "atspeed-r", "wordkd", "tvdkd", "seqkd", "none"]),
              default="atspeed-s", show_default=True)
@click.option("--draft", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="start from this draft (default: a fresh model of --kind)")
@click.option("--kind", type=click.Choice(["draft", "tiny"]), default="draft", show_default=True)
@click.option("--alpha", default=0.7, show_default=True, help="(1 - alpha) L_rec + alpha L_align")
@click.option("--top-k", "top_k", default=20, show_default=True, help="AtSpeed-S: the draft's top-k set")
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--mask-to-valid/--no-mask-to-valid", default=True, show_default=True,
              help="compare distributions over the tokens a valid item may take")
@click.option("--teacher-beams", default=20, show_default=True, help="target beams trained on per prompt")
@click.option("--on-policy", is_flag=True, help="also align on the draft's own beams")
@click.option("--epochs", default=1, show_default=True)
@click.option("--max-steps", type=int, default=None)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--eval-every", default=500, show_default=True, help="steps between acceptance checks")
@click.option("--eval-users", default=256, show_default=True, help="validation users of each check")
@click.option("-k", "--beams", "k", default=20, show_default=True, help="K of the acceptance check")
@click.option("--gamma", default=3, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="device of the teacher-data run")
def align(data_dir: Path, target: Path, teacher_dir: Path | None, out: Path, method: str, draft: Path | None,
          kind: str, alpha: float, top_k: int, temperature: float, mask_to_valid: bool, teacher_beams: int,
          on_policy: bool, epochs: int, max_steps: int | None, batch_size: int, lr: float, seed: int,
          eval_every: int, eval_users: int, k: int, gamma: int, device: str) -> None:
    """Train a draft to agree with the target (AtSpeed-S / -R or a baseline); keeps the draft with the best
    acceptance. Runs under `accelerate launch` too."""
    from atspeed.align.teacher import TEACHER_FILE, generate_teacher_data, load_teacher_data
    from atspeed.align.trainer import TEACHER_METHODS, AlignConfig
    from atspeed.align.trainer import align as run_alignment
    from atspeed.rec.recipes import new_model
    from atspeed.rec.recommend import load_recommender

    ds = load_dataset(data_dir, allow_duplicate_ids=True)
    rec = load_recommender(target, data_dir, draft, device=device, allow_duplicate_ids=True)
    teacher_data = None
    if method in TEACHER_METHODS:
        if teacher_dir is None:
            raise click.UsageError(f"--method {method} trains on the target's beams: give --teacher DIR.")
        if not (teacher_dir / TEACHER_FILE).exists():  # made (or resumed) here; a finished one is reused
            generate_teacher_data(rec, ds, teacher_dir, k=teacher_beams)
        teacher_data = load_teacher_data(teacher_dir)
    torch.manual_seed(seed)
    start = rec.draft if rec.draft is not None else new_model(kind, rec.tokenizer)
    cfg = AlignConfig(method=method, alpha=alpha, top_k=top_k, temperature=temperature, mask_to_valid=mask_to_valid,
                      teacher_beams=teacher_beams, on_policy=on_policy, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every, eval_users=eval_users, k=k,
                      gamma=gamma)
    result = run_alignment(rec.target, start, rec.tokenizer, ds, teacher_data, out, cfg)
    click.echo(f"best acceptance {result.best_acceptance:.3f} levels/round at step {result.best_step}; "
               f"saved {result.final}")


# ------------------------------------------------------------------------------------------------
# demo


@main.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="a dataset folder (e.g. ../shared/data/beauty); default: the built-in synthetic dataset")
@click.option("--target", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="a trained target (default: the committed synthetic model, or train one for --data)")
@click.option("--draft", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("atspeed-demo"),
              show_default=True, help="work folder: data, trained models, results.{json,csv,png}")
@click.option("--users", type=int, default=100, show_default=True, help="test users to evaluate")
@click.option("--ks", default="5,10,20", show_default=True, callback=lambda c, p, v: _ks(v))
@click.option("--epochs", type=float, default=1.0, show_default=True,
              help="training epochs when models are trained (with --data, or with --train-steps)")
@click.option("--train-steps", type=int, default=None,
              help="train target and draft for this many steps instead of using committed weights")
@click.option("--recipe", type=click.Choice(["default", "tiny"]), default="default", show_default=True,
              help="tiny: both models from the tiny recipe (fast smoke runs)")
def demo(data_dir: Path | None, target: Path | None, draft: Path | None, out: Path, users: int, ks: list[int],
         epochs: float, train_steps: int | None, recipe: str) -> None:
    """The recommendation demo, offline: data -> target + draft -> HF vs tree attention vs speculative
    beam search, quality and speed side by side (table, results.json/csv and results.png in OUT)."""
    out.mkdir(parents=True, exist_ok=True)
    committed = data_dir is None and train_steps is None and recipe == "default"
    if data_dir is None:
        from atspeed.rec.synthetic import write_synthetic

        data_dir = out / "data"
        write_synthetic(data_dir)
        click.echo(f"synthetic dataset (not real users) written to {data_dir}")
    for role, kind in (("target", "target"), ("draft", "draft")):
        if (target if role == "target" else draft) is not None:
            continue
        if committed and (PRETRAINED / f"synthetic-{role}").exists():
            path = PRETRAINED / f"synthetic-{role}"
            click.echo(f"{role}: committed weights {path} (see its README for the command that made them)")
        else:
            path = _train_for_demo(data_dir, out / role, "tiny" if recipe == "tiny" else kind, epochs, train_steps)
        if role == "target":
            target = path
        else:
            draft = path
    _evaluate(data_dir, target, draft, ks, users=users, out=out)


def _train_for_demo(data_dir: Path, out: Path, kind: str, epochs: float, steps: int | None) -> Path:
    click.echo(f"training {kind} -> {out} ({f'{steps} steps' if steps else f'{epochs:g} epochs'}; "
               "resumes if interrupted)")
    return _train_recipe(data_dir, out, kind, allow_duplicate_ids=True, epochs=epochs, max_steps=steps or -1,
                         save_steps=max(50, steps or 500), logging_steps=max(1, (steps or 500) // 5))


# ------------------------------------------------------------------------------------------------
# bench


@main.group()
def bench() -> None:
    """Speed benchmarks (ratios measured side by side in one run)."""


@bench.command("decode")
@click.option("--beams", "-k", default=20, show_default=True, help="beam size K (items returned)")
@click.option("--draft-beams", "-n", default=40, show_default=True, help="draft beams N")
@click.option("--gamma", default=3, show_default=True, help="draft length")
@click.option("--new-tokens", default=4, show_default=True, help="tokens to generate (an item ID is 4)")
@click.option("--prompt-len", default=84, show_default=True)
@click.option("--repeats", default=5, show_default=True)
def bench_decode(beams: int, draft_beams: int, gamma: int, new_tokens: int, prompt_len: int, repeats: int) -> None:
    """HF beam search vs tree attention vs strict speculative beam search on a built-in random model pair
    (no downloads): same outputs, and how long each took."""
    from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
    from atspeed.benchmarking import compare
    from atspeed.models import draft_target_pair

    torch.manual_seed(0)
    target, draft = draft_target_pair("cpu", noise=0.0)
    prompt = torch.randint(3, target.config.vocab_size, (1, prompt_len))
    inputs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
    click.echo(f"target: random Llama {target.config.num_hidden_layers}x{target.config.hidden_size}; draft: its "
               f"first layer (always agrees). prompt {prompt_len} tokens, K={beams}, {new_tokens} new tokens")
    with torch.inference_mode():
        runs = {
            "HF generate(num_beams=K)": lambda: target.generate(
                **inputs, max_new_tokens=new_tokens, num_beams=beams, num_return_sequences=beams,
                return_dict_in_generate=True, output_scores=True),
            "tree attention": lambda: beam_search_by_TreeAttn(target, inputs, max_new_tokens=new_tokens,
                                                             beam_size=beams),
            "speculative (strict)": lambda: beam_search_by_SD(target, draft, inputs, max_new_tokens=new_tokens,
                                                              gamma=gamma, beam_size=beams,
                                                              draft_beam_size=max(beams, draft_beams)),
        }
        results = compare(runs, repeats)
    hf_ms, hf_out = results["HF generate(num_beams=K)"]
    ref = hf_out.sequences[:, prompt_len:]
    click.echo(f"\n{'method':<26} {'ms':>8} {'speedup':>8}  same top-{beams} as HF")
    for name, (ms, result) in results.items():
        seqs = result.sequences if name.startswith("HF") else result["beam_sequences"]
        same = torch.equal(seqs[:, prompt_len:], ref)
        click.echo(f"{name:<26} {ms:>8.1f} {hf_ms / ms:>7.2f}x  {'yes' if same else 'NO'}")
    sd = results["speculative (strict)"][1]
    click.echo(f"\nspeculative: {sd['n_run']} round(s), {sd['ave_accept_steps']:.2f} accepted levels per round, "
               f"{sd['target_calls']} target forward call(s)")


@bench.command("trie", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def bench_trie(ctx: click.Context) -> None:
    """Per-step cost of the vectorised trie constraint vs HF's prefix_allowed_tokens_fn (options: --help)."""
    from atspeed.rec.bench_trie import main as run

    run(ctx.args)


if __name__ == "__main__":
    main()
