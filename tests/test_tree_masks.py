"""Tree attention bookkeeping: who sees which cache slot, and what compaction keeps."""

import torch

from atspeed.decoding.tree import additive_mask, compaction_plan, level_inputs, node_visibility, select_slots

T, F = True, False


def test_each_new_token_sees_its_beams_prefix_and_itself_but_not_its_siblings():
    parent_rows = torch.tensor([[[T, T, F], [T, F, T]]])  # 2 beams over 3 cached slots
    mask, positions, rows = level_inputs(parent_rows, depth=2, prompt_lengths=torch.tensor([5]), dtype=torch.float32)
    assert rows.tolist() == [[[T, T, F, T, F], [T, F, T, F, T]]]
    assert positions.tolist() == [[7, 7]]  # prompt length + depth, shared by the level
    assert mask.shape == (1, 1, 2, 5) and (mask == 0).tolist() == rows[:, None].tolist()


def test_a_node_sees_its_root_and_all_its_new_ancestors():
    roots = torch.tensor([[[T, F], [F, T]]])  # 2 roots over 2 slots
    # node 0 under root 1; node 1 under node 0 (index 2 + 0); node 2 under root 0
    parents = torch.tensor([[1, 2, 0]])
    rows = node_visibility(roots, parents, max_depth=2)
    assert rows.tolist() == [[[F, T, T, F, F], [F, T, T, T, F], [T, F, F, F, T]]]


def test_masked_slots_get_the_dtypes_minimum():
    mask = additive_mask(torch.tensor([[[T, F]]]), torch.float16)
    assert mask.tolist() == [[[[0.0, torch.finfo(torch.float16).min]]]]


def test_compaction_keeps_live_slots_in_order_and_pads_short_rows_with_dead_ones():
    rows = torch.tensor([[[T, F, T, F]], [[F, F, F, T]]])  # 2 requests, 1 beam, 4 slots
    keep = compaction_plan([rows])
    assert keep[0].tolist() == [0, 2] and keep[1][0].item() == 3
    kept = select_slots(rows, keep)
    assert kept.tolist() == [[[T, T]], [[T, F]]]  # the padding slot is seen by no beam


def test_nothing_to_compact_when_every_slot_is_live():
    assert compaction_plan([torch.ones(1, 2, 3, dtype=torch.bool)]) is None
