import contextlib

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache, so nothing depends on what an earlier run downloaded or built."""
    monkeypatch.setenv("PAPERZOO_CACHE", str(tmp_path / "cache"))


SMALL_DSR = [
    "data.train_steps=3000", "data.test_steps=2000", "data.transient=200",
    "task_args.seq_len=40", "task_args.forcing_interval=8",
    "train.steps=30", "train.batch_size=8", "train.eval_every=0", "train.ckpt_every=10", "train.log_every=1",
    "probe.every=10",
]


@contextlib.contextmanager
def killed_at_call(cls, method: str, call: int):
    """Inside the block, the ``call``-th call of ``cls.method`` raises KeyboardInterrupt (a run killed mid-step);
    the method is restored on leaving."""
    original, calls = getattr(cls, method), {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    setattr(cls, method, dying)
    try:
        yield
    finally:
        setattr(cls, method, original)
