"""Corpus builder, tokenizer cache, token files and deterministic batches."""

import json

import numpy as np
import pytest
import torch

from spectrakit.train import corpus as corpus_mod
from spectrakit.train.corpus import DataError, clean_play, embedded_corpus, hf_corpus, text_corpus
from spectrakit.train.data import bin_tokens, cached_tokens, prepare_data, train_batch, val_batches
from spectrakit.train.tokenizer import EOS, load_tokenizer, train_bpe


@pytest.fixture(scope="module")
def corpus():
    return embedded_corpus()


def test_embedded_corpus_holds_out_whole_documents(corpus):
    train_names = {d.name for d in corpus.train}
    val_names = {d.name for d in corpus.val}
    assert val_names == set(corpus_mod.VALIDATION_PLAYS) | set(corpus_mod.VALIDATION_BOOKS)
    assert not train_names & val_names
    assert {"hamlet", "macbeth", "Genesis", "Revelation"} <= train_names
    assert len(corpus.train) == 38 + 66 - len(val_names)
    val_chars = sum(len(d.text) for d in corpus.val)
    train_chars = sum(len(d.text) for d in corpus.train)
    assert 0.02 < val_chars / (val_chars + train_chars) < 0.1
    tempest = next(d for d in corpus.val if d.name == "the-tempest")
    assert tempest.text.startswith("# The Tempest") and "**" not in tempest.text
    jonah = next(d for d in corpus.val if d.name == "Jonah")
    assert "1 Now the word of the LORD came unto Jonah" in jonah.text


def test_clean_play_drops_markdown_emphasis():
    assert clean_play("**HAMLET**  \nTo be, or not  \n_Exit_\n") == "HAMLET\nTo be, or not\nExit\n"


def test_truncated_corpus_keeps_every_document(corpus):
    small = corpus.truncated(0.01)
    assert len(small.train) == len(corpus.train) and small.name.endswith("@0.01")
    assert all(s.text == d.text[: len(s.text)] for s, d in zip(small.train, corpus.train))
    with pytest.raises(ValueError, match="corpus_fraction"):
        corpus.truncated(0)


def test_text_folder_holds_out_whole_files(tmp_path):
    for i in range(10):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}\n" * 5)
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    c = text_corpus(tmp_path, val_fraction=0.2)
    assert [d.name for d in c.val] == ["doc8.txt", "doc9.txt"] and len(c.train) == 8


def test_single_text_file_splits_at_a_line_break(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("".join(f"line {i}\n" for i in range(100)))
    c = text_corpus(f, val_fraction=0.1)
    assert c.train[0].text + c.val[0].text == f.read_text()
    assert c.train[0].text.endswith("\n") and c.val[0].text.startswith("line ")


def test_text_data_errors_say_what_was_looked_for(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        text_corpus(tmp_path / "missing")
    with pytest.raises(DataError, match=r"no text files in .*\*\.txt"):
        text_corpus(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="UTF-8"):
        text_corpus(tmp_path)
    (tmp_path / "bad.txt").write_text("x")
    with pytest.raises(DataError, match="too short"):
        text_corpus(tmp_path / "bad.txt")


def test_hf_source_without_datasets_is_a_clear_error():
    pytest.importorskip("tokenizers")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="needs the 'datasets' package"):
            hf_corpus("hf:tiny_shakespeare")
    else:
        pytest.skip("datasets is installed; the network path is not unit-tested")


def test_bpe_training_is_deterministic_and_round_trips(corpus):
    texts = [d.text for d in corpus.truncated(0.01).train]
    a, b = train_bpe(texts, 600), train_bpe(texts, 600)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() == 600 and a.token_to_id(EOS) == 0
    sample = "To be, or not to be: that is the question.\nIn the beginning God created"
    assert a.decode(a.encode(sample).ids) == sample
    with pytest.raises(ValueError, match="vocab_size must be an integer in"):
        train_bpe(texts, 70000)


def test_token_cache_is_reused_and_rebuilt_when_corrupt(corpus, tmp_path):
    small = corpus.truncated(0.01)
    messages = []
    first = cached_tokens(small, 600, tmp_path, log=messages.append)
    assert any("training" in m for m in messages)
    assert first.train.dtype == np.uint16 and isinstance(first.train, np.memmap)
    tok = load_tokenizer(first.tokenizer_path)
    assert tok.decode(first.val[:200].tolist()) in small.val[0].text
    messages.clear()
    again = cached_tokens(small, 600, tmp_path, log=messages.append)
    assert messages == [] and np.array_equal(first.train, again.train)
    expected = np.array(first.train)
    # corrupt the token file: same size, different content -> checksum mismatch -> rebuilt
    path = first.tokenizer_path.parent / "train.u16"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    rebuilt = cached_tokens(small, 600, tmp_path, log=messages.append)
    assert any("stale or corrupt" in m for m in messages)
    assert np.array_equal(rebuilt.train, expected)
    # a truncated file and a broken meta.json are rebuilt too
    path.write_bytes(path.read_bytes()[:-2])
    messages.clear()
    cached_tokens(small, 600, tmp_path, log=messages.append)
    assert any("wrong size" in m for m in messages)
    (path.parent / "meta.json").write_text("{not json")
    messages.clear()
    cached_tokens(small, 600, tmp_path, log=messages.append)
    assert any("unreadable" in m for m in messages)
    # another vocab size or corpus gets its own cache folder
    other = cached_tokens(corpus.truncated(0.005), 600, tmp_path, log=messages.append)
    assert other.tokenizer_path.parent != first.tokenizer_path.parent
    meta = json.loads((first.tokenizer_path.parent / "meta.json").read_text())
    assert meta["vocab_size"] == 600 and set(meta["files"]) == {"tokenizer.json", "train.u16", "val.u16"}


def test_prepare_data_with_user_text_and_given_tokenizer(tmp_path, corpus):
    folder = tmp_path / "text"
    folder.mkdir()
    for d in corpus.truncated(0.01).train[:12]:
        (folder / f"{d.name}.txt").write_text(d.text)
    data = prepare_data(str(folder), vocab_size=400, cache_dir=tmp_path / "cache", val_fraction=0.2, log=print)
    assert data.vocab_size == 400 and len(data.train) > len(data.val) > 0
    again = prepare_data(str(folder), vocab_size=999, cache_dir=tmp_path / "cache", val_fraction=0.2,
                         tokenizer_file=data.tokenizer_path)
    assert again.vocab_size == 400 and np.array_equal(again.train, data.train)
    with pytest.raises(DataError, match="tokenizer file"):
        prepare_data(str(folder), vocab_size=400, cache_dir=tmp_path / "cache", tokenizer_file=tmp_path / "no.json")


def test_nanogpt_bin_files(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(300, dtype=np.uint16).tofile(tmp_path / "val.bin")
    data = prepare_data(str(tmp_path), vocab_size=1024)
    assert data.train[999] == 999 and len(data.val) == 300 and data.tokenizer_path is None
    with pytest.raises(DataError, match=f"{tmp_path / 'train.bin'} holds token id 512 \\(at position 512\\), but "
                                        "the vocabulary size is 512; its largest id is 999: pass --vocab-size 1000"):
        prepare_data(str(tmp_path), vocab_size=512)
    (tmp_path / "val.bin").unlink()
    with pytest.raises(DataError, match="missing: .*val.bin"):
        bin_tokens(tmp_path, 1024)


def test_every_token_id_of_bin_files_is_checked(tmp_path):
    """Ids >= the vocabulary size anywhere (in val.bin, or in train.bin past its first 2^20 tokens) are named
    with their file, id and position before training (they used to crash in the embedding: IndexError)."""
    train = np.zeros((1 << 20) + 5000, dtype=np.uint16)
    train[(1 << 20) + 17] = 700
    train.tofile(tmp_path / "train.bin")
    np.zeros(300, dtype=np.uint16).tofile(tmp_path / "val.bin")
    with pytest.raises(DataError, match=f"{tmp_path / 'train.bin'} holds token id 700 \\(at position 1048593\\)"):
        bin_tokens(tmp_path, 512)
    assert len(bin_tokens(tmp_path, 701).train) == len(train)
    val = np.zeros(300, dtype=np.uint16)
    val[299] = 65535
    val.tofile(tmp_path / "val.bin")
    with pytest.raises(DataError, match=f"{tmp_path / 'val.bin'} holds token id 65535 .*vocabulary size is 701"):
        bin_tokens(tmp_path, 701)


def test_train_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(5000, dtype=np.uint16)
    x, y = train_batch(tokens, 4, 16, seed=1, step=7, micro=0)
    x2, _ = train_batch(tokens, 4, 16, seed=1, step=7, micro=0)
    assert torch.equal(x, x2) and x.dtype == torch.int64 and x.shape == (4, 16)
    assert torch.equal(y, x + 1)  # targets are the next tokens
    assert not torch.equal(x, train_batch(tokens, 4, 16, seed=1, step=8)[0])
    assert not torch.equal(x, train_batch(tokens, 4, 16, seed=2, step=7)[0])
    assert not torch.equal(x, train_batch(tokens, 4, 16, seed=1, step=7, micro=1)[0])
    with pytest.raises(DataError, match="fewer than seq_len"):
        train_batch(tokens[:10], 4, 16, seed=0, step=0)


def test_val_batches_cover_the_split_without_overlap():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = val_batches(tokens, 4, 16, 3)
    assert len(batches) == 3
    starts = torch.cat([x[:, 0] for x, _ in batches])
    assert starts[0] == 0 and starts[-1] == 1000 - 17 and (starts.diff() >= 16).all()
    short = val_batches(tokens[:40], 4, 16, 3)
    assert sum(len(x) for x, _ in short) == 2  # the non-overlapping windows that fit
