"""The toolkit's place in the layers: `atspeed.rec` decodes through the core (`atspeed.hf`,
`atspeed.decoding`), never through the original package's compatibility API (`atspeed.beamsd*`), and
its README entry points are importable from `atspeed.rec` without making `import atspeed.rec` heavy.
The import checks run in a fresh interpreter, so modules that other tests imported do not count."""

from __future__ import annotations

import json
import subprocess
import sys

LEGACY = ("atspeed.beamsd", "atspeed.beamsd4timing", "atspeed.beamsd_replace")


def modules_after(code: str) -> set[str]:
    """The names in sys.modules after running `code` in a new interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_every_rec_module_does_not_import_the_original_api():
    code = ("import importlib, pkgutil, atspeed.rec\n"
            "for m in pkgutil.iter_modules(atspeed.rec.__path__): importlib.import_module('atspeed.rec.' + m.name)")
    loaded = modules_after(code)
    assert "atspeed.rec.recommend" in loaded and "atspeed.rec.evaluate" in loaded
    assert loaded.isdisjoint(LEGACY)


def test_importing_atspeed_rec_alone_loads_neither_transformers_nor_torch():
    loaded = modules_after("import atspeed.rec")
    assert loaded.isdisjoint({"transformers", "torch", *LEGACY})


def test_the_readme_entry_points_are_exported_by_atspeed_rec():
    from atspeed.rec import evaluate_decoding, load_recommender, recommend
    from atspeed.rec.evaluate import evaluate_decoding as defined_evaluate
    from atspeed.rec.recommend import load_recommender as defined_load

    assert (load_recommender, evaluate_decoding) == (defined_load, defined_evaluate)
    assert callable(recommend) and recommend.__module__ == "atspeed.rec.recommend"


def test_recommend_is_the_function_even_after_its_module_was_imported_first():
    import atspeed.rec.recommend  # noqa: F401  (binds the submodule's name on the package, unless shadowed)
    from atspeed.rec import recommend

    assert callable(recommend) and recommend.__name__ == "recommend"
