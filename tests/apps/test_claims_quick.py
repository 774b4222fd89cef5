"""nmsparse.claims: the claims report (a quick smoke run end to end, and its pure helpers)."""

import json
import math

import pytest
import torch

from nmsparse.apps.claims import (
    QUICK_BANNER, ClaimsConfig, aggregate, available_algorithms, claim_checks, configurations, main,
    records_per_item, report_from_jsonl,
)
from nmsparse.errors import NMSparseError


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("claims")
    return out, main(quick=True, out=str(out), verbose=False)


def test_quick_report_end_to_end(quick):
    out_dir, out = quick
    cfg = ClaimsConfig.quick().runnable()
    work = configurations(cfg)
    n_sparse = len([s for s in cfg.structures if s != "dense"])
    # per (task, seed): dense, dense fine-tuned, every sparse structure x algorithm; plus protocol 2.
    expected = 2 * cfg.seeds * (2 + n_sparse * len(cfg.algorithms)) + 2 * cfg.seeds * n_sparse * 2
    assert len(out["records"]) == sum(records_per_item(cfg, w) for w in work) == expected
    lines = [json.loads(line) for line in (out_dir / "claims.jsonl").read_text().splitlines()]
    assert len(lines) == expected + 1 and "summary" in lines[-1] and lines[-1]["env"]["config"]["seeds"] == 2
    for rec in out["records"]:
        assert rec["quick"] is True
        assert rec["density"] == (1.0 if rec["structure"] == "dense" else 0.5)
        if rec["task"] == "digits":
            assert 0.0 <= rec["value"] <= 1.0
        else:
            assert 0.0 < rec["value"] < math.log(256) + 0.5 and rec["val_ppl"] == pytest.approx(math.exp(rec["value"]))
            assert rec["tokens_seen"] == rec["steps"] * cfg.lm_batch * cfg.lm_context
        if rec["protocol"] == "oneshot":
            assert "value_pruned" in rec
        if rec["protocol"] == "scratch" and rec["structure"] != "dense" and rec["task"] == "lm":
            assert [s for s, _ in rec["flips"]] == ([2, 4, 6] if rec["variant"] == "fixed" else [2, 5])
            assert all(0.0 <= f <= 1.0 for _, f in rec["flips"])
    for key in ("plot", "flips"):
        assert open(out["paths"][key], "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out_dir / "claims.md").read_text()
    assert md.startswith("**" + QUICK_BANNER) and "nmsparse bench claims --quick" in md
    assert "| 4:8T |" in md and "Protocol 1" in md and "Protocol 2" in md


def test_quick_says_it_is_a_smoke_run(tmp_path, capsys):
    cfg_calls = []
    import nmsparse.apps.claims as claims

    real = claims.run_claims
    claims.run_claims = lambda cfg, progress=None: cfg_calls.append(cfg) or iter(())  # no training
    try:
        try:  # no records: whatever the rendering makes of that, the banner must already be out
            main(quick=True, out=str(tmp_path))
        except Exception:
            pass
    finally:
        claims.run_claims = real
    assert QUICK_BANNER in capsys.readouterr().out and "mean nothing" in QUICK_BANNER


def test_runs_are_reproducible(quick):
    _, out = quick
    from nmsparse.apps.claims import _WORKER, _worker_init, _worker_run

    cfg = ClaimsConfig.quick().runnable()
    _worker_init(cfg)  # what a run gets: the config's data
    try:
        again = _worker_run(("scratch", "lm", "2:4", "growing", 1)) + _worker_run(("group", "digits", 1))
    finally:
        _WORKER.clear()
    for rec in again:
        key = lambda r: (r["protocol"], r["task"], r["structure"], r["variant"], r["seed"])
        first = next(r for r in out["records"] if key(r) == key(rec))
        assert rec["value"] == first["value"] and rec["kept"] == first["kept"] and rec.get("flips") == first.get("flips")


def test_report_rerenders_from_jsonl(quick, tmp_path):
    out_dir, out = quick
    again = report_from_jsonl(str(out_dir / "claims.jsonl"), plot_path=str(tmp_path / "p.png"))
    assert again["markdown"] in out["markdown"] and again["checks"] == out["checks"]
    assert (tmp_path / "p_flips.png").exists()


def test_work_items_cover_both_protocols():
    cfg = ClaimsConfig()
    items = configurations(cfg)
    assert items[0] == ("group", "lm", 0)  # the longest items first
    scratch = [i for i in items if i[0] == "scratch"]
    assert len(scratch) == 2 * 7 * 2 * 3 and ("scratch", "digits", "8:16T", "growing", 2) in scratch
    assert {i[2] for i in scratch} == set(cfg.structures) - {"dense"}
    assert cfg.runnable().algorithms == tuple(a for a in cfg.algorithms if a in available_algorithms())


def test_bad_config_is_refused():
    with pytest.raises(NMSparseError, match="seeds"):
        main(quick=True, seeds=0, verbose=False)
    with pytest.raises(NMSparseError, match="tasks"):
        ClaimsConfig(tasks=("imagenet",)).check()
    with pytest.raises(ValueError):
        ClaimsConfig(structures=("3:2",)).check()
    with pytest.raises(NMSparseError, match="jobs"):
        ClaimsConfig(jobs=0).check()
    with pytest.raises(NMSparseError, match="algorithms"):
        ClaimsConfig(algorithms=("obs",)).check()
    with pytest.raises(NMSparseError, match="schedules"):
        ClaimsConfig(schedules=("cosine",)).check()
    with pytest.raises(NMSparseError, match="growth must be >= 1, got 0.5"):
        ClaimsConfig(growth=0.5).check()


def _rec(protocol, task, structure, variant, seed, value, pruned=None, flips=()):
    from nmsparse.apps.claims_common import family, log10_diversity_per_64

    rec = {"protocol": protocol, "task": task, "structure": structure, "variant": variant, "seed": seed,
           "family": family(structure), "metric": "val_loss", "value": value, "seconds": 1.0, "cpu_seconds": 1.0,
           "kept": 0.8, "density": 0.5, "log10_div64": log10_diversity_per_64(structure), "flips": [list(f) for f in flips]}
    if pruned is not None:
        rec["value_pruned"] = pruned
    return rec


def test_aggregate_checks_and_intervals():
    stats = pytest.importorskip("scipy.stats")
    recs = []
    base = {"dense": 1.50, "1:2": 1.80, "2:4": 1.70, "50%": 1.60, "2:4T": 1.90}  # loss falls as diversity rises
    for seed, shift in enumerate((0.0, 0.02, 0.07)):
        for s, v in base.items():
            variant = "-" if s == "dense" else "fixed"
            recs.append(_rec("scratch", "lm", s, variant, seed, v + shift, flips=[(20, 0.3), (40, 0.1)]))
            recs.append(_rec("oneshot", "lm", s, "finetune" if s == "dense" else "magnitude", seed, v + shift,
                             pruned=v + 2 * shift + 0.1))
    # Two seeds of 2:4 under "growing", paired against fixed: differences -0.05, -0.03; t(1) = 12.706.
    recs += [_rec("scratch", "lm", "2:4", "growing", k, 1.70 + d) for k, d in ((0, -0.05), (1, -0.01))]
    rows = aggregate(recs)
    dense = next(r for r in rows if r["protocol"] == "scratch" and r["structure"] == "dense")
    vals = [1.50, 1.52, 1.57]
    lo, hi = stats.t.interval(0.95, 2, loc=sum(vals) / 3, scale=stats.sem(vals))
    assert dense["mean"] == pytest.approx(sum(vals) / 3) and dense["ci"] == pytest.approx((hi - lo) / 2, rel=1e-4)
    fixed = next(r for r in rows if r["structure"] == "50%" and r["variant"] == "fixed")
    assert fixed["refreshes"] == 2 and fixed["flip_first"] == pytest.approx(0.3) and fixed["flip_mean"] == pytest.approx(0.2)
    checks = "\n".join(claim_checks(rows))
    # Diversity order 2:4T < 1:2 < 2:4 < 50%; quality (minus loss) in the same order: rho = +1, every seed.
    assert "lm scratch fixed (end of training): (a) Spearman rho(log10 diversity, quality) = +1.00 over 4 structures; per seed +1.00, +1.00, +1.00; same sign in every seed" in checks
    assert "lm oneshot magnitude (right after pruning): (a) Spearman rho(log10 diversity, quality) = +1.00" in checks
    # Same seed, same shift: a paired gap with no spread, hence an interval of width 0 that excludes 0.
    assert "lm scratch fixed: (b) paired 2:4 - dense = +0.200 ± 0.000 nats/byte over 3 seeds (95 % CI above 0)" in checks
    assert "lm scratch: (r) paired 2:4 growing - fixed = -0.040 ± 0.127 nats/byte over 2 seeds (95 % CI includes 0)" in checks
    # Protocol 1 compares with the fine-tuned dense model (pruned values differ, fine-tuned ones do not).
    assert "lm oneshot magnitude: (b) paired 50% - dense = +0.100 ± 0.000 nats/byte" in checks


def test_flip_rate_counts_changed_mask_entries():
    import nmsparse as nms
    from nmsparse.apps.claims_runs import flip_rate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 16))
    nms.sparsify_(model, "2:4T", update="static")
    before = [m.parametrizations.weight[0].mask.clone() for m in model]
    with torch.no_grad():
        model[0].parametrizations.weight.original.mul_(torch.rand(8, 16) * 4)
    nms.update_masks_(model, force=True)
    after = [m.parametrizations.weight[0].mask for m in model]
    changed = sum(int((a != b).sum()) for a, b in zip(before, after))
    assert changed > 0 and flip_rate(model) == pytest.approx(changed / (2 * 128))


def test_refresh_schedules():
    from nmsparse.apps.claims_runs import refresh_steps

    assert refresh_steps(100, 20, 0.1, "fixed", 1.5) == [20, 40, 60, 80]
    assert refresh_steps(1000, 20, 0.1, "growing", 1.5) == [20, 50, 95, 162, 264, 416, 643]
    assert refresh_steps(1000, 20, 0.1, "growing", 1.0) == refresh_steps(1000, 20, 0.1, "fixed", 1.0)
    with pytest.raises(NMSparseError, match="schedule"):
        refresh_steps(100, 20, 0.1, "cosine", 1.5)


def test_prune_seam_keeps_the_magnitude_mask():
    import nmsparse as nms
    from nmsparse.apps.claims_runs import prune_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    w = model[0].weight.detach().clone()
    prune_model(model, "4:8T", "magnitude", None, exclude=["2"])
    expect = nms.find_mask(w.abs(), "4:8T", method="exact")
    assert torch.equal(model[0].weight != 0, expect) and torch.count_nonzero(model[2].weight) == 64


def test_t_quantiles_and_spearman_match_scipy():
    import random

    stats = pytest.importorskip("scipy.stats")
    from nmsparse.apps.claims_stats import mean_ci, spearman, t975

    for df in range(1, 31):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)
    assert t975(100) == 1.96 and math.isnan(t975(0)) and math.isnan(mean_ci([1.0])[2])
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(3, 12)
        x = [rng.randint(0, 4) for _ in range(n)]  # ties on purpose
        y = [rng.random() for _ in range(n)]
        if len(set(x)) < 2:
            assert math.isnan(spearman(x, y))
            continue
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_first_edition_lines_are_refused(tmp_path):
    path = tmp_path / "claims.jsonl"
    path.write_text(json.dumps({"task": "lm", "structure": "2:4", "ste": "ste", "seed": 0, "value": 1.0, "run_id": "x"}) + "\n")
    with pytest.raises(NMSparseError, match="first edition"):
        report_from_jsonl(str(path))
