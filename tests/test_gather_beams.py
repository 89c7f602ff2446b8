"""gather_beams: each request's new beams take the rows of the old beams they extend."""

from __future__ import annotations

import pytest
import torch

from atspeed.decoding.beam import gather_beams


def looped(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.stack([t[b, idx[b]] for b in range(t.shape[0])])


@pytest.mark.parametrize("trailing", [(), (7,), (3, 5)])
def test_gather_beams_takes_each_requests_own_rows(trailing):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 4, *trailing, generator=g)
    idx = torch.randint(0, 4, (3, 6), generator=g)  # more new beams than old ones, repeats allowed
    assert torch.equal(gather_beams(t, idx), looped(t, idx))


def test_gather_beams_reads_an_expanded_tensor():
    rows = torch.tensor([[True, False, True], [False, True, True]])[:, None, :].expand(2, 4, 3)
    idx = torch.tensor([[3, 0], [1, 1]])
    assert torch.equal(gather_beams(rows, idx), looped(rows, idx))
