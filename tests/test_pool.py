"""The unlabeled pool's helpers (nnunet_mgcl.data.pool) that need no preprocessed data."""
from __future__ import annotations

from nnunet_mgcl.data.pool import held_out_pool


def test_held_out_pool_scans_are_stable_and_leave_scans_to_train_on():
    pool = [f"case{i:03d}" for i in range(20)]
    held = held_out_pool(pool, 0.2)
    assert len(held) == 4 and set(held) <= set(pool)
    assert held_out_pool(list(reversed(pool)), 0.2) == held                 # independent of the order
    assert set(held_out_pool(pool + ["extra"], 0.2)) & set(held)            # mostly the same when the pool grows
    assert held_out_pool(["a"], 0.2) == [] and len(held_out_pool(["a", "b"], 0.9)) == 1
    assert held_out_pool(pool, 0.0) == []
