"""bench/live_stack.py: packed stacks with kept sums and the dense one summed whole agree."""

from __future__ import annotations

from tests.benchkit import load_bench
from tests.tiny import make_llama


def test_packed_and_dense_stacks_give_the_same_bits_and_packed_holds_less():
    model, _ = make_llama(layers=2)
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)]
    bench = load_bench("live_stack")
    bench.RANK = 4  # the tiny matrices are 32 x 64
    rows = bench.run(model, n=20, every=10, repeats=2, names=names)
    assert [r["edits"] for r in rows] == [10, 20]
    for r in rows:
        assert r["same_bits"]
        assert r["packed-0"]["bytes"] * 2 < r["dense"]["bytes"]  # none kept rebuilt
        assert r["packed-31"]["bytes"] > r["dense"]["bytes"]  # all kept: 1 GiB holds them
    assert [r["packed"]["bytes"] - r["packed-31"]["bytes"] for r in rows] == [
        0,
        2 * len(names) * 32 * 64 * 4,  # at edit 16: the stack's sum, and without edit 10
    ]
    md = bench.table(rows, "head")
    assert "| 20 |" in md and "revert the third last, s, packed-31" in md
