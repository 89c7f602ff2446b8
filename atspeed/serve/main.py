"""Start the service: load the recommender once, then run uvicorn until SIGTERM / Ctrl-C.

    python -m atspeed.serve [--data DIR] [--target T] [--draft D] [--method tree|speculative|hf] [--port P]
    python -m atspeed.serve --engine ray [--replicas N] [--gpus-per-replica F] [--ray-address ADDR]

Without --data and --target it serves the committed demo models on the synthetic dataset (written
to a temporary folder), so one command starts a working service. On SIGTERM uvicorn stops taking
connections and lets in-flight requests finish; then the batcher decodes what it still holds,
and the process exits 0. With `--engine ray` the same app runs on Ray Serve (`ray_serve.py`).
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from atspeed.serve.config import ServeConfig

if TYPE_CHECKING:
    from atspeed.rec.recommend import Recommender


def serve(config: ServeConfig) -> None:
    """Load, warm up and serve until stopped. Bad settings raise ValueError / FileNotFoundError first.
    `engine="ray"` deploys the same app on Ray Serve instead (`atspeed.serve.ray_serve`)."""
    config.check()
    if config.engine == "ray":
        return _ray_serve().serve_on_ray(config)
    import torch
    import uvicorn

    from atspeed.serve.app import create_app

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    rec, keys = load(config)
    app = create_app(rec, config, keys)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                           timeout_graceful_shutdown=30))
    _sigterm_exits_0()
    server.run()


def load(config: ServeConfig) -> tuple[Recommender, list | None]:
    """The recommender and item keys that `config` names; without --data and --target, the demo models on
    the synthetic data, written to a scratch folder that is gone once they are loaded (Ray replicas call
    this too, on their own node: the defaults resolve there)."""
    from atspeed.rec.recommend import load_recommender
    from atspeed.rec.synthetic import write_synthetic

    target, draft = model_folders(config)
    with tempfile.TemporaryDirectory(prefix="atspeed-serve-") as scratch:
        data = config.data
        if data is None:
            data = Path(scratch) / "synthetic"
            write_synthetic(data)
        rec = load_recommender(target, data, draft, device=config.device, allow_duplicate_ids=True)
        return rec, item_keys(data)


def model_folders(config: ServeConfig) -> tuple[Path, Path | None]:
    """The target and draft folders (the demo models by default), checked against the method."""
    from atspeed.rec.recommend import PRETRAINED, check_method

    target = config.target or PRETRAINED / "synthetic-target"
    draft = config.draft
    if draft is None and config.target is None and config.method == "speculative":
        draft = PRETRAINED / "synthetic-draft"
    check_method(config.method, has_draft=draft is not None)
    return Path(target), None if draft is None else Path(draft)


def _ray_serve():
    """atspeed.serve.ray_serve, or a ValueError that says how to install Ray Serve."""
    try:
        import atspeed.serve.ray_serve as ray_serve
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("ray", "grpc"):  # Ray without its serve extra lacks grpc
            raise
        raise ValueError('--engine ray needs Ray Serve, which is not installed: pip install "atspeed[ray]"') from e
    return ray_serve


def _sigterm_exits_0() -> None:
    """SIGTERM is the normal way to stop a service: exit 0 after it. uvicorn drains on SIGTERM, then
    re-raises it to the handler found before it started (the default one would end the process with
    -15); this handler ends it with SystemExit(0) instead."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_0)


def _exit_0(*_: object) -> None:
    raise SystemExit(0)


def item_keys(data_dir: str | Path) -> list | None:
    """meta.json's original item keys (item id i -> item_keys[i]), where the dataset has them."""
    meta = Path(data_dir) / "meta.json"
    return json.loads(meta.read_text()).get("item_keys") if meta.exists() else None


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m atspeed.serve`: the `atspeed serve` command itself (the CLI parses, checks and reports
    errors as one 'Error:' line with exit status 2; this only names the program)."""
    from atspeed.cli import serve as command

    command.main(sys.argv[1:] if argv is None else list(argv), prog_name="python -m atspeed.serve")
