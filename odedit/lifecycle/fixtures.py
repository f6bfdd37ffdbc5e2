"""Test fixtures of the lifecycle (used by tests/test_*.py of the lifecycle): a tiny,
UNTRAINED world model built in seconds, demo request files, one Prefect test harness per
session, and an isolated state directory."""

from __future__ import annotations

import json
from pathlib import Path

_HARNESS = None


def tiny_world_model(out: str | Path, seed: int = 0) -> Path:
    """An untrained tiny LLaVA with the world's tokenizer and a train_report.json naming the
    world, so locality pools and regression probes come from World(seed)."""
    from odedit.models import tiny_llava
    from odedit.models.world import World

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    world = World(seed)
    spec = tiny_llava.TinyLlavaSpec(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=48,
                                    text_layers=2, text_heads=2, text_intermediate=96)
    tok = tiny_llava.train_word_tokenizer(world.corpus())
    tiny_llava.save(tiny_llava.build_model(tok, spec, seed=seed), tiny_llava.build_processor(tok, spec), out)
    (out / "train_report.json").write_text(json.dumps({"seed": seed, "world": world.params(), "steps": 0}))
    return out


def demo_batch(path: str | Path, n: int, seed: int = 0) -> Path:
    """`n` world demo requests written as JSONL at `path` (images beside it)."""
    from odedit.models.world import World

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reqs = World(0).demo_requests(n, path.parent, seed=seed)
    path.write_text("".join(r.model_dump_json() + "\n" for r in reqs))
    return path


def prefect_harness(request):
    """Enter ONE prefect_test_harness for the whole pytest session, whichever module asks first."""
    global _HARNESS
    if _HARNESS is None:
        from prefect.testing.utilities import prefect_test_harness

        cm = prefect_test_harness(server_startup_timeout=120)
        cm.__enter__()
        _HARNESS = cm
        request.session.addfinalizer(lambda: cm.__exit__(None, None, None))
    return _HARNESS
