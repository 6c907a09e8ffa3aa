"""The worker pays torch's one-off import cost while it starts, not on the event loop.

The online scorer imports torch on its first training step, and the first Adam optimizer imports
``torch._dynamo`` besides (~3 s here). In a worker that step runs inside a batch on the event loop, so
without a preload the first seconds after start-up stall every batch, ``/ready`` and ``/metrics``. Each
check runs in a fresh interpreter: ``sys.modules`` of the test process already holds torch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_creating_the_worker_app_preloads_torch(tmp_path) -> None:
    out = _run(f"""
        import sys
        from streams.app import create_app
        from streams.settings import Settings
        before = "torch" in sys.modules, "torch._dynamo" in sys.modules
        create_app(Settings(encoder="none", data_dir={str(tmp_path)!r}, web_port=6066))
        print(before, ("torch" in sys.modules, "torch._dynamo" in sys.modules))
    """)
    assert out.split("\n")[0] == "(False, False) (True, True)", "importing the app stays light; creating it preloads"


def test_after_the_preload_the_first_training_step_imports_nothing() -> None:
    code = """
        import sys
        import numpy as np
        from models import OnlineScorer, preload_torch
        {preload}
        s = OnlineScorer(n_features=5, seed=0)
        rng = np.random.default_rng(0)
        before = set(sys.modules)
        steps = sum(s.observe(rng.normal(size=(8, 5)).astype(np.float32)) for _ in range(s.batch_groups))
        print(steps, len(set(sys.modules) - before))
    """
    assert _run(code.format(preload="assert preload_torch() > 0")).split() == ["1", "0"]
    # the control: without it the first step is where torch (hundreds of modules) gets imported
    steps, imported = _run(code.format(preload="")).split()
    assert steps == "1" and int(imported) > 100
