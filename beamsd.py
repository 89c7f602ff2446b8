"""Alias of `atspeed.beamsd` for the original README's `from beamsd import ...` form."""

from atspeed.beamsd import *  # noqa: F401,F403
from atspeed.beamsd import beam_search_by_TreeAttn, replace_beam_search_with_TreeAttn  # noqa: F401
