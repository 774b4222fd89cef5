"""The stdlib text corpus and the small byte-level transformer LM (nmsparse.examples.lm)."""

import math
import os

import pytest
import torch

import nmsparse as nms
from nmsparse.errors import NMSparseError
from nmsparse.examples.lm import (
    STDLIB_FILES, STDLIB_FILES_LARGE, VOCAB_SIZE, CharTransformer, count_parameters, evaluate_lm, load_stdlib_corpus,
    sample_windows, train_lm,
)
from nmsparse.nn import sparsified_parameters


@pytest.fixture(scope="module")
def corpus():
    return load_stdlib_corpus()


def test_corpus_is_the_named_files_split_per_file(corpus):
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    assert list(STDLIB_FILES) == sorted(STDLIB_FILES)
    sizes = [len(open(os.path.join(root, f), "rb").read().replace(b"\r\n", b"\n")) for f in STDLIB_FILES]
    # Every byte lands in exactly one split; files are joined by one b"\n" in each split.
    assert len(corpus.train) + len(corpus.valid) == sum(sizes) + 2 * (len(sizes) - 1)
    assert len(corpus.valid) == sum(s - int(s * 0.9) for s in sizes) + len(sizes) - 1
    first = open(os.path.join(root, STDLIB_FILES[0]), "rb").read()
    assert bytes(corpus.train[:100].tolist()) == first[:100]
    assert corpus.train.dtype == torch.uint8


def test_corpus_is_deterministic(corpus):
    again = load_stdlib_corpus()
    assert again.sha256 == corpus.sha256
    assert torch.equal(again.train, corpus.train) and torch.equal(again.valid, corpus.valid)


def test_missing_sources_give_a_clear_error(tmp_path):
    (tmp_path / "abc.py").write_text("x = 1\n")
    with pytest.raises(NMSparseError, match=r"argparse\.py.*frozen"):
        load_stdlib_corpus(files=("abc.py", "argparse.py"), root=str(tmp_path))
    with pytest.raises(NMSparseError, match="valid_fraction"):
        load_stdlib_corpus(valid_fraction=1.0)


def test_model_is_causal_and_seeded():
    model = CharTransformer(d_model=32, n_layers=2, n_heads=2, d_ff=64, context=16, seed=3)
    x = torch.randint(0, VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(0))
    y = model(x)
    assert y.shape == (2, 16, VOCAB_SIZE)
    x2 = x.clone()
    x2[:, 9] = (x2[:, 9] + 1) % VOCAB_SIZE
    y2 = model(x2)
    assert torch.equal(y[:, :9], y2[:, :9])          # the past never sees the future
    assert not torch.allclose(y[:, 9:], y2[:, 9:])
    same = CharTransformer(d_model=32, n_layers=2, n_heads=2, d_ff=64, context=16, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))


def test_bad_model_arguments():
    with pytest.raises(NMSparseError, match="divisible"):
        CharTransformer(d_model=30, n_heads=4)
    with pytest.raises(NMSparseError, match="d_ff"):
        CharTransformer(d_ff=0)
    with pytest.raises(NMSparseError, match="context"):
        CharTransformer(context=8)(torch.zeros(1, 9, dtype=torch.long))


def test_uniform_model_scores_log_256(corpus):
    model = CharTransformer(d_model=32, n_layers=1, n_heads=2, d_ff=64, context=32, seed=0)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    assert evaluate_lm(model, corpus.valid, max_windows=8) == pytest.approx(math.log(256), abs=1e-5)


def test_sparse_training_keeps_8_16T_and_learns(corpus):
    model = CharTransformer(d_model=32, n_layers=1, n_heads=2, d_ff=64, context=32, seed=0)
    nms.sparsify_(model, "8:16T", method="greedy", update_every=5, exclude=["head"])
    names = sorted(sparsified_parameters(model))
    assert names == sorted(f"blocks.0.{n}.weight" for n in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.fc1", "mlp.fc2"))
    result = train_lm(model, corpus, steps=40, batch_size=8, seed=0, eval_windows=16)
    assert result.val_loss < math.log(256) - 1.0 and result.steps == 40
    assert result.val_ppl == pytest.approx(math.exp(result.val_loss))
    for module, pname in sparsified_parameters(model).values():
        # The greedy 2-approximation may keep fewer than 8 in a row (Hubara et al. 2021, Alg. 2).
        nms.check_mask(module.parametrizations[pname][0].mask, "8:16T")


def test_large_corpus_extends_the_small_one():
    assert list(STDLIB_FILES_LARGE) == sorted(set(STDLIB_FILES_LARGE)) and set(STDLIB_FILES) < set(STDLIB_FILES_LARGE)
    assert len(STDLIB_FILES_LARGE) == 101
    big = load_stdlib_corpus(STDLIB_FILES_LARGE)
    assert len(big.train) > 4 * len(load_stdlib_corpus().train) and big.files == STDLIB_FILES_LARGE


def test_sample_windows_are_seeded_slices_of_the_text():
    tokens = torch.arange(1000)
    a, b = sample_windows(tokens, 5, 17, seed=3), sample_windows(tokens, 5, 17, seed=3)
    assert a.shape == (5, 17) and a.dtype == torch.long and torch.equal(a, b)
    assert not torch.equal(a, sample_windows(tokens, 5, 17, seed=4))
    for row in a:  # every window is a contiguous run of the text
        start = int(row[0])
        assert torch.equal(row, tokens[start : start + 17])
    with pytest.raises(NMSparseError, match="length"):
        sample_windows(tokens, 1, 1001)


def test_count_parameters_is_the_dense_count():
    model = CharTransformer(d_model=16, n_layers=1, n_heads=2, d_ff=32, context=8, seed=0)
    expected = 256 * 16 + 8 * 16 + (2 * 16) * 2 + 4 * (16 * 16 + 16) + (16 * 32 + 32) + (32 * 16 + 16) + 2 * 16 + (16 * 256 + 256)
    assert count_parameters(model) == expected
    nms.sparsify_(model, "2:4", exclude="head")
    assert count_parameters(model) == expected
