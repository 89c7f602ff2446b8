"""An alignment run from folders, as `atspeed align` starts it: load the dataset, target and optional
starting draft, make (or resume, or reuse) the teacher data the method needs, then train."""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator

from atspeed.align.teacher import TEACHER_FILE, generate_teacher_data, load_teacher_data
from atspeed.align.trainer import TEACHER_METHODS, AlignConfig, AlignResult, align
from atspeed.rec.data import load_dataset
from atspeed.rec.recipes import new_model
from atspeed.rec.recommend import load_recommender


def align_job(
    data_dir: str | os.PathLike,
    target: str | os.PathLike,
    out: str | os.PathLike,
    *,
    teacher_dir: str | os.PathLike | None = None,
    target_logits: str | os.PathLike | None = None,
    draft: str | os.PathLike | None = None,
    kind: str = "draft",
    device: str = "cpu",
    **settings: Any,
) -> AlignResult:
    """Train a draft (from `draft`, else a new `kind` model) to agree with the target; `settings` are
    AlignConfig's fields. Methods that learn from the target's beams need `teacher_dir`;
    `target_logits` keeps the target's logits on the fixed rows there (see `align`)."""
    method = settings["method"]
    if method in TEACHER_METHODS and teacher_dir is None:
        raise ValueError(f"method {method} trains on the target's beams: give a teacher data folder.")
    ds = load_dataset(data_dir, allow_duplicate_ids=True)
    rec = load_recommender(target, data_dir, draft, device=device, allow_duplicate_ids=True)
    teacher_data = None
    if method in TEACHER_METHODS:
        # under `accelerate launch` the main process makes (or resumes) the teacher data and the others
        # wait, then read it: two processes writing and merging the same chunks would race
        with Accelerator().main_process_first():
            if not os.path.exists(os.path.join(teacher_dir, TEACHER_FILE)):  # a finished folder is reused
                generate_teacher_data(rec, ds, teacher_dir, k=settings["teacher_beams"])
        teacher_data = load_teacher_data(teacher_dir)
    torch.manual_seed(settings["seed"])
    start = rec.draft if rec.draft is not None else new_model(kind, rec.tokenizer)
    return align(rec.target, start, rec.tokenizer, ds, teacher_data, out, AlignConfig(**settings), target_logits)
