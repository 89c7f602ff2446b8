"""Start the service: load the recommender once, then run uvicorn until SIGTERM / Ctrl-C.

    python -m atspeed.serve [--data DIR] [--target T] [--draft D] [--method tree|speculative|hf] [--port P]

Without --data and --target it serves the committed demo models on the synthetic dataset (written
to a temporary folder), so one command starts a working service. On SIGTERM uvicorn stops taking
connections and lets in-flight requests finish; then the batcher decodes what it still holds,
and the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from atspeed.serve.config import SERVE_METHODS, ServeConfig


def serve(config: ServeConfig) -> None:
    """Load, warm up and serve until stopped. Bad settings raise ValueError / FileNotFoundError first."""
    config.check()
    import torch
    import uvicorn

    from atspeed.rec.recommend import PRETRAINED, check_method, load_recommender
    from atspeed.rec.synthetic import write_synthetic
    from atspeed.serve.app import create_app

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    target = config.target or PRETRAINED / "synthetic-target"
    draft = config.draft
    if draft is None and config.target is None and config.method == "speculative":
        draft = PRETRAINED / "synthetic-draft"
    with tempfile.TemporaryDirectory(prefix="atspeed-serve-") as scratch:
        data = config.data
        if data is None:
            data = Path(scratch) / "synthetic"
            write_synthetic(data)
        check_method(config.method, has_draft=draft is not None)
        rec = load_recommender(target, data, draft, device=config.device, allow_duplicate_ids=True)
        app = create_app(rec, config, item_keys(data))
        server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                               timeout_graceful_shutdown=30))
        _sigterm_exits_0()
        server.run()


def _sigterm_exits_0() -> None:
    """SIGTERM is the normal way to stop a service: exit 0 after it. uvicorn drains on SIGTERM, then
    re-raises it to the handler found before it started (the default one would end the process with
    -15); this handler ends it with SystemExit(0) instead, and the scratch data folder is removed."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_0)


def _exit_0(*_: object) -> None:
    raise SystemExit(0)


def item_keys(data_dir: str | Path) -> list | None:
    """meta.json's original item keys (item id i -> item_keys[i]), where the dataset has them."""
    meta = Path(data_dir) / "meta.json"
    return json.loads(meta.read_text()).get("item_keys") if meta.exists() else None


def parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(prog="python -m atspeed.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="dataset folder (default: the synthetic demo data)")
    p.add_argument("--target", type=Path, help="target model folder (default: the demo target)")
    p.add_argument("--draft", type=Path, help="draft model folder (speculative; default with the demo target)")
    p.add_argument("--method", choices=SERVE_METHODS, default=d.method)
    p.add_argument("--device", default=d.device)
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="requests decoded together, at most")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="longest wait for a batch to fill")
    p.add_argument("--max-k", type=int, default=d.max_k)
    p.add_argument("--max-history", type=int, default=d.max_history, help="items per request, at most")
    p.add_argument("--max-users", type=int, default=d.max_users, help="users per /recommend/batch call")
    p.add_argument("--threads", type=int, default=None, help="torch threads for decoding")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m atspeed.serve`: a settings or loading error is one 'Error:' line and exit status 2."""
    args = vars(parser().parse_args(argv))
    try:
        serve(ServeConfig(**args))
    except (ValueError, FileNotFoundError) as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)
