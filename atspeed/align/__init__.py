"""Draft alignment: train the draft so that the target accepts more of its beams (AtSpeed section 3).

losses.py         the alignment losses (AtSpeed-S, AtSpeed-R) and the paper's baselines
teacher.py        the target's top-K beams for every training prompt, cached on disk
rows.py           a batch of prompt + answer sequences and the logits a model gives the answers
target_logits.py  the frozen target's logits on the fixed training rows, computed once, on disk
trainer.py        the training loop (accelerate), with acceptance checks and best-draft selection
"""

from atspeed.align.losses import (
    ALIGN_LOSSES,
    atspeed_r_loss,
    atspeed_s_loss,
    atspeed_s_terms,
    combine,
    rec_loss,
    seqkd_loss,
    tvdkd_loss,
    wordkd_loss,
)
from atspeed.align.target_logits import TargetLogits, generate_target_logits, load_target_logits
from atspeed.align.teacher import TeacherData, generate_teacher_data, load_teacher_data
from atspeed.align.trainer import AlignConfig, AlignResult, align

__all__ = [
    "ALIGN_LOSSES",
    "AlignConfig",
    "AlignResult",
    "TargetLogits",
    "TeacherData",
    "align",
    "atspeed_r_loss",
    "atspeed_s_loss",
    "atspeed_s_terms",
    "combine",
    "generate_target_logits",
    "generate_teacher_data",
    "load_target_logits",
    "load_teacher_data",
    "rec_loss",
    "seqkd_loss",
    "tvdkd_loss",
    "wordkd_loss",
]
