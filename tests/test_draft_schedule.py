"""DraftSchedule: how many levels the draft proposes per round."""

from atspeed.decoding.speculative import DraftSchedule


def rounds(schedule: DraftSchedule, accept, n: int, remaining: int = 100) -> list[int]:
    """Run n rounds; `accept(gamma)` says how many drafted levels pass. Returns the gammas drafted."""
    drafted = []
    for _ in range(n):
        g = schedule.next_gamma(remaining)
        drafted.append(g)
        schedule.update(g, accept(g))
    return drafted


def test_fixed_schedule_always_drafts_gamma():
    assert rounds(DraftSchedule(3), lambda g: 0, 5) == [3, 3, 3, 3, 3]


def test_gamma_never_exceeds_the_tokens_left_minus_the_bonus():
    assert DraftSchedule(3).next_gamma(remaining=2) == 1
    assert DraftSchedule(3).next_gamma(remaining=1) == 0


def test_adaptive_schedule_grows_after_full_acceptance_up_to_max_gamma():
    assert rounds(DraftSchedule(1, adaptive=True, max_gamma=3), lambda g: g, 4) == [1, 2, 3, 3]


def test_adaptive_schedule_drops_to_the_accepted_levels_then_grows_again():
    assert rounds(DraftSchedule(3, adaptive=True), lambda g: min(g, 1), 3) == [3, 1, 2]


def test_useless_draft_is_probed_ever_more_rarely():
    drafted = rounds(DraftSchedule(3, adaptive=True, probe_every=2), lambda g: 0, 40)
    probes = [i for i, g in enumerate(drafted) if g]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert drafted[0] == 3 and all(g in (0, 1) for g in drafted[1:])
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]  # the wait doubles after each failed probe


def test_successful_probe_resumes_drafting():
    schedule = DraftSchedule(3, adaptive=True, probe_every=2)
    rounds(schedule, lambda g: 0, 10)  # learn that the draft is useless
    drafted = rounds(schedule, lambda g: g, 20)  # then it becomes perfect
    assert max(drafted) == 3
