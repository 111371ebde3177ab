"""Fit arithmetic and the alternatives offered, on the bundled catalog's figures (the planners are
tested on a catalog of their own in test_plan.py)."""

from __future__ import annotations

from gpumod_tasks.fit import simulate, time_share_peak


def test_rag_fits_with_exact_headroom(repo_catalog):
    c = repo_catalog
    fit = simulate(c, [c.presets[s] for s in c.modes["rag"].service_ids], 24564)
    assert fit.headline() == "Fits: 7500 / 24564 MB (headroom: 17064 MB)"
    assert fit.alternatives == ()


def test_over_budget_alternatives_are_computed_from_the_catalog(repo_catalog):
    c = repo_catalog
    ids = ["vllm-embedding-code", "glm-code", "vllm-embedding"]  # 2500 + 19100 + 5000 = 26600
    fit = simulate(c, [c.presets[s] for s in ids], 24564, 0)
    assert not fit.fits and fit.over_by_mb == 26600 - 24564
    kinds = {a.kind: a for a in fit.alternatives}
    # time-share: residuals 512 + 0 + 512 plus the largest awake delta (19100 - 0)
    assert kinds["time-share"].total_mb == 512 + 0 + 512 + 19100
    assert kinds["time-share"].fits
    # glm-code: 170 MB/1K x 32 K = 5440 MB of KV; one halving saves 2720 MB -> 23880 fits
    rc = kinds["reduce-context"]
    assert "32768 -> 16384" in rc.description and rc.total_mb == 26600 - 2720 and rc.fits
    # swap vllm-embedding (5000) for the smallest same-category preset that fits: vllm-reranker (2000)
    swaps = [a for a in fit.alternatives if a.kind == "swap"]
    assert any("swap vllm-embedding (5000 MB) for vllm-reranker (2000 MB" in a.description and a.total_mb == 23600 for a in swaps)


def test_time_share_needs_two_sleepers(repo_catalog):
    c = repo_catalog
    assert time_share_peak([c.presets["gemma-agent"], c.presets["vllm-embedding"]]) is None
