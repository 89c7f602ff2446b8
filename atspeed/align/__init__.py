"""Draft alignment: losses that train the draft model to be accepted more often by the target."""

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

__all__ = [
    "ALIGN_LOSSES",
    "atspeed_r_loss",
    "atspeed_s_loss",
    "atspeed_s_terms",
    "combine",
    "rec_loss",
    "seqkd_loss",
    "tvdkd_loss",
    "wordkd_loss",
]
