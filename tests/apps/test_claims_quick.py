"""nmsparse.claims: the claims report (quick smoke run end to end, and its pure helpers)."""

import json
import math
import random
import statistics

import pytest

from nmsparse.apps.claims import (
    STES, STRUCTURES, ClaimsConfig, aggregate, claim_checks, configurations, log10_diversity_per_64,
    main, results_table, spearman,
)
from nmsparse.errors import NMSparseError


def test_quick_report_end_to_end(tmp_path):
    out = main(quick=True, out=str(tmp_path), verbose=False)
    cfg = ClaimsConfig.quick()
    assert len(out["records"]) == len(configurations(cfg)) * cfg.seeds == 28
    lines = [json.loads(line) for line in (tmp_path / "claims.jsonl").read_text().splitlines()]
    assert len(lines) == 29 and "summary" in lines[-1] and lines[-1]["env"]["config"]["seeds"] == 2
    for rec in out["records"]:
        # Every structure here keeps half the weights of the sparsified layers; dense keeps all.
        assert rec["density"] == (1.0 if rec["structure"] == "dense" else 0.5) or rec["structure"] == "8:16T@greedy"
        if rec["structure"] == "8:16T@greedy":  # the 2-approximation may keep fewer than n per row
            assert 0.4 < rec["density"] <= 0.5
        if rec["task"] == "digits":
            assert 0.0 <= rec["value"] <= 1.0
        else:
            assert 0.0 < rec["value"] < math.log(256) + 0.5 and rec["val_ppl"] == pytest.approx(math.exp(rec["value"]))
    assert (tmp_path / "claims.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Reproducible: re-running one configuration gives the same numbers.
    from nmsparse.apps.claims import _WORKER, _worker_init, _worker_run

    _worker_init(cfg)  # what a run gets: the config's data and thread count
    try:
        again_all = {task: _worker_run((task, "2:4", "srste", 1)) for task in ("digits", "lm")}
    finally:
        _WORKER.clear()
    for task, again in again_all.items():
        first = next(r for r in out["records"] if (r["task"], r["structure"], r["ste"], r["seed"]) == (task, "2:4", "srste", 1))
        assert again["value"] == first["value"] and again["kept"] == first["kept"]
    md = (tmp_path / "claims.md").read_text()
    assert md.startswith("| structure |") and "| 8:16T@greedy |" in md and "nmsparse bench claims --quick" in md


def test_configurations_cover_every_structure_with_both_estimators():
    cfg = ClaimsConfig()
    confs = configurations(cfg)
    assert len(confs) == 2 * (1 + 2 * (len(STRUCTURES) - 1))
    assert ("lm", "dense", "-") in confs and ("digits", "8:16T@greedy", "srste") in confs
    assert {s for _, s, _ in confs} == set(STRUCTURES)


def test_diversity_closed_forms():
    # log10(#masks on a 16x16 block) / 4, by hand.
    assert log10_diversity_per_64("dense") == 0.0
    assert log10_diversity_per_64("1:2") == pytest.approx(32 * math.log10(2))
    assert log10_diversity_per_64("2:4") == pytest.approx(16 * math.log10(6))
    assert log10_diversity_per_64("4:8") == pytest.approx(8 * math.log10(70))
    assert log10_diversity_per_64("50%") == pytest.approx(math.log10(math.comb(64, 32)))  # an 8x8 block, as demo
    assert log10_diversity_per_64("2:4T@greedy") == pytest.approx(4 * math.log10(90))  # 90 transposable 4x4 tiles
    assert log10_diversity_per_64("4:8T@exact") == pytest.approx(math.log10(116963796250))


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(3, 12)
        x = [rng.randint(0, 4) for _ in range(n)]  # ties on purpose
        y = [rng.random() for _ in range(n)]
        if len(set(x)) < 2:
            assert math.isnan(spearman(x, y))
            continue
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def _records():
    out = []
    for seed, bump in enumerate((0.0, 0.01, 0.02)):
        for structure, ste, acc, loss in (
            ("dense", "-", 0.99, 1.5), ("50%", "ste", 0.98, 1.6), ("2:4", "ste", 0.97, 1.7),
            ("1:2", "ste", 0.95, 1.9), ("2:4T@exact", "ste", 0.96, 1.8),
        ):
            fam = {"dense": "dense", "50%": "unstructured", "2:4T@exact": "transposable exact"}.get(structure, "row-wise")
            base = {"structure": structure, "ste": ste, "seed": seed, "family": fam, "seconds": 1.0 + seed,
                    "cpu_seconds": 0.5, "kept": 0.8, "log10_div64": log10_diversity_per_64(structure)}
            out.append(dict(base, task="digits", metric="accuracy", value=acc - bump))
            out.append(dict(base, task="lm", metric="val_loss", value=loss + bump))
    return out


def test_aggregate_table_and_checks():
    rows = aggregate(_records())
    dense = next(r for r in rows if r["task"] == "digits" and r["structure"] == "dense")
    assert dense["n"] == 3 and dense["mean"] == pytest.approx(0.98) and dense["std"] == pytest.approx(0.01)
    lm = next(r for r in rows if r["task"] == "lm" and r["structure"] == "2:4")
    ppl = [math.exp(v) for v in (1.7, 1.71, 1.72)]
    assert lm["ppl_mean"] == pytest.approx(statistics.fmean(ppl)) and lm["ppl_std"] == pytest.approx(statistics.stdev(ppl))
    table = results_table(rows, ("dense", "2:4", "4:8"))
    assert "| dense | 0.00 | 98.00 ± 1.00 | 98.00 ± 1.00 |" in table
    assert "| 4:8 | 14.76 | - | - | - | - | - | - |" in table
    checks = "\n".join(claim_checks(rows))
    # Diversity ranks 2:4T < 1:2 < 2:4 < 50%, quality ranks 1:2 < 2:4T < 2:4 < 50%:
    # rank differences (1, 1, 0, 0), rho = 1 - 6 * 2 / (4 * 15) = 0.8 for both tasks.
    assert "digits ste: (a) Spearman rho(log10 diversity, quality) = +0.80 over 4 structures" in checks
    assert "lm ste: (a) Spearman rho(log10 diversity, quality) = +0.80" in checks
    assert "digits ste: (b) 2:4T@exact - dense = -3.000 pts acc" in checks
    # Same seed, same shift: the paired gap has no spread.
    assert "lm ste: (c) paired 2:4 - dense = +0.200 ± 0.000 nats/byte over 3 seeds" in checks


def test_bad_config_is_refused():
    with pytest.raises(NMSparseError, match="seeds"):
        main(quick=True, seeds=0, verbose=False)
    with pytest.raises(NMSparseError, match="tasks"):
        ClaimsConfig(tasks=("imagenet",)).check()
    with pytest.raises(ValueError):
        ClaimsConfig(structures=("3:2",)).check()
    with pytest.raises(NMSparseError, match="jobs"):
        ClaimsConfig(jobs=0).check()
    assert STES == ("ste", "srste")
