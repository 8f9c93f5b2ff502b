"""Text: the corpora (fortunes, text:PATH, textfolder:PATH) and their split, the byte tokenizer, the Transformer (its
cache, its sampling, its pooling), generation with stop strings, and scoring in bits per character."""

import csv
import json
import lzma
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli, train_run

from genforge import rundir, runs
from genforge.data.text import FORTUNES_DIR, MAX_ENTRY, SEPARATOR, in_test, load_text
from genforge.data.tokens import ByteTokenizer, tokenizer_from_state, tokenizer_of, train_bpe
from genforge.errors import GenforgeError
from genforge.language.attribution import attention_rollout
from genforge.language.generation import complete
from genforge.language.scoring import bits_per_character, compressor_bits, token_losses
from genforge.models.transformer import Transformer, TransformerConfig
from genforge.onnx.export import OnnxPart
from genforge.tasks import language

fortunes = pytest.mark.skipif(not FORTUNES_DIR.is_dir(), reason="needs Debian's fortunes (make test installs it)")


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(**{"layers": 2, "heads": 2, "width": 32, "context": 16, "vocab_size": 256,
                               "end_token": 30, "dropout": 0.0, **kw})
    return Transformer(cfg, 5 if cfg.head == "classes" else 0).eval()


@fortunes
def test_fortunes_split_by_entry_the_same_every_run():
    corpus = load_text("fortunes")
    assert len(corpus.classes) >= 40 and {"computers", "science", "songs-poems"} <= set(corpus.classes)
    entries = len(corpus.train) + len(corpus.test)
    assert 14_000 < entries < 16_000
    assert 0.08 < len(corpus.test) / entries < 0.12  # TEST_SHARE: 10% by hash
    assert not set(corpus.train) & set(corpus.test)  # no entry (nor an exact duplicate of one) on both sides
    assert all(in_test(e) for e in corpus.test) and not any(in_test(e) for e in corpus.train)
    assert load_text("fortunes").checksum == corpus.checksum
    text = corpus.stream("train")
    assert "\x08" not in text and "\r" not in text  # overstriking and carriage returns cleaned
    assert text.count(SEPARATOR) == len(corpus.train)


def test_text_path_reads_paragraphs_of_a_file_or_a_folder(tmp_path):
    paragraphs = [f"Paragraph number {i}.\nIt has two lines." for i in range(120)]
    (tmp_path / "a.txt").write_text("\n\n".join(paragraphs[:70]) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("\ufeff" + "\r\n\r\n".join(paragraphs[70:]))  # BOM, Windows lines
    one = load_text(f"text:{tmp_path / 'a.txt'}")
    assert sorted(one.train + one.test) == sorted(paragraphs[:70])
    both = load_text(f"text:{tmp_path}")
    assert sorted(both.train + both.test) == sorted(paragraphs)
    assert both.test and both.train


def test_one_long_line_is_cut_into_entries_at_spaces(tmp_path):
    words = " ".join(f"word{i}" for i in range(200_000))  # 1.5 MB on one line
    (tmp_path / "line.txt").write_text(words)
    corpus = load_text(f"text:{tmp_path / 'line.txt'}")
    entries = corpus.train + corpus.test
    assert len(entries) > 10 and max(map(len, entries)) <= MAX_ENTRY
    assert all(not e.startswith(" ") for e in entries)


def test_utf16_with_its_mark_is_read(tmp_path):
    text = "\n\n".join(f"Grüße Nummer {i}" for i in range(50))
    (tmp_path / "u.txt").write_bytes(text.encode("utf-16"))
    corpus = load_text(f"text:{tmp_path / 'u.txt'}")
    assert "Grüße Nummer 7" in corpus.train + corpus.test


@pytest.mark.parametrize("content, words", [
    (b"", "the text is empty"),
    (b"\x00\x01\x02binary\x00" * 100, "is a binary file, not text"),
    ("café\n\n".encode("latin-1") * 50, "is not UTF-8 text (byte 3"),
])
def test_unreadable_text_is_one_clear_line(tmp_path, content, words):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(GenforgeError, match=words.replace("(", r"\(")):
        load_text(f"text:{path}")


def test_a_2_gib_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB on paper, nothing on disk
    with pytest.raises(GenforgeError, match=r"2\.0 GiB of text is more than the 1 GiB"):
        load_text(f"text:{path}")


def test_textfolder_labels_entries_by_subfolder(tmp_path):
    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        for i in range(40):
            (tmp_path / label / f"{i}.txt").write_text(f"a {label[:-1]} story, number {i}")
    corpus = load_text(f"textfolder:{tmp_path}")
    assert corpus.classes == ["cats", "dogs"]
    for entries, labels in ((corpus.train, corpus.train_labels), (corpus.test, corpus.test_labels)):
        assert all(("cat" in e) == (label == 0) for e, label in zip(entries, labels))
    (tmp_path / "birds").mkdir()
    with pytest.raises(GenforgeError, match="class folder 'birds' holds no text"):
        load_text(f"textfolder:{tmp_path}")


def test_textfolder_reads_a_csv_of_text_and_label_columns(tmp_path, capsys, monkeypatch):
    path = tmp_path / "reviews.csv"
    rows = [["id", "Label", "Text"]] + [[str(i), "good" if i % 2 else "bad",
                                          f'a {"fine" if i % 2 else "poor"}, "quoted"\nreview {i}'] for i in range(60)]
    with path.open("w", newline="", encoding="utf-8-sig") as f:  # with a byte-order mark, as spreadsheets write it
        csv.writer(f).writerows([*rows[:5], [], *rows[5:]])
    corpus = load_text(f"textfolder:{path}")
    assert corpus.classes == ["bad", "good"] and len(corpus.train) + len(corpus.test) == 60
    assert 'a fine, "quoted"\nreview 1' in corpus.train + corpus.test  # quoting and line breaks kept
    for entries, labels in ((corpus.train, corpus.train_labels), (corpus.test, corpus.test_labels)):
        assert all(("fine" in e) == (label == 1) for e, label in zip(entries, labels))
    code, out, _ = run_cli(capsys, monkeypatch, "data", "info", f"textfolder:{path}")
    assert code == 0 and "good" in out and "bad" in out
    path.write_text("text,kind\nhello,a\n")
    with pytest.raises(GenforgeError, match=r"needs a header with a 'text' and a 'label' column; .*\['text', 'kind'\]"):
        load_text(f"textfolder:{path}")
    path.write_text("text,label\nhello,a\nworld\n")
    with pytest.raises(GenforgeError, match=r"line 3 has no label"):
        load_text(f"textfolder:{path}")
    path.write_text(f"text,label\nhello,a\n{'word ' * 40_000},b\n")  # 200,000 characters in one cell
    with pytest.raises(GenforgeError, match=r"line 3 has a cell of more than 131,072 characters"):
        load_text(f"textfolder:{path}")


def test_bytes_round_trip_and_stream_whole_characters():
    tok = ByteTokenizer()
    text = "naïve café — 日本 🙂"
    ids = tok.encode(text)
    assert ids.dtype == torch.uint8 and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    pieces = list(tok.pieces(ids.tolist()))
    assert "".join(pieces) == text and "🙂" in pieces  # a 4-byte character comes out whole, once
    assert tok.decode([0xF0, 0x9F]) == "\ufffd"  # a cut character is a replacement, not an error


@pytest.fixture(scope="module")
def fortunes_bpe(fortunes_available):
    return train_bpe(load_text("fortunes").train, 2048)


def test_a_bpe_trained_on_fortunes_round_trips_any_text_and_compresses_english(fortunes_bpe):
    tok = fortunes_bpe
    assert tok.vocab_size == 2048 and tok.token_bytes(tok.end_id) == SEPARATOR.encode()
    for text in ["naïve café — 日本 🙂", f"two{SEPARATOR}entries\n\tand tabs", "\x00\x7f control", "", "ǅ" * 300]:
        ids = tok.encode(text)
        assert ids.dtype == torch.int16 and (len(ids) == 0 or int(ids.max()) < 2048)
        assert tok.decode(ids) == text  # nothing is unknown: every byte is a symbol
        assert "".join(tok.pieces(ids.tolist())) == text
        assert b"".join(tok.token_bytes(i) for i in ids.tolist()) == text.encode()
    assert tok.encode(f"a{SEPARATOR}b").tolist().count(tok.end_id) == 1  # the separator is one token of its own
    test = SEPARATOR.join(load_text("fortunes").test)
    assert len(tok.encode(test)) < 0.45 * len(test)  # measured 0.39 tokens a character on the test split
    assert tok.decode([tok.encode("🙂").tolist()[0]]) in ("\ufffd", "🙂")  # a cut character is a replacement


def test_data_info_counts_entries_characters_and_tokens_of_each_tokenizer(capsys, monkeypatch, fortunes_available):
    code, out, err = run_cli(capsys, monkeypatch, "data", "info", "fortunes", "--json")
    assert code == 0, err
    info = json.loads(out)
    corpus = load_text("fortunes")
    assert info["entries"] == {"train": len(corpus.train), "test": len(corpus.test)}
    chars, tokens = info["characters"], info["tokens"]
    assert tokens["bytes"]["test"] >= chars["test"]  # a byte a token: at least one per character
    assert 0.3 * chars["test"] < tokens["bpe 2048"]["test"] < 0.45 * chars["test"]  # measured 0.375
    assert set(info["duplicates"]) == {"within_train", "test_in_train"} and len(info["longest"]) == 5


def test_a_bpe_is_the_same_when_trained_again_and_rebuilt_from_its_state(fortunes_bpe):
    entries = load_text("fortunes").train[:3000]
    assert train_bpe(entries, 512).definition == train_bpe(entries, 512).definition
    rebuilt = tokenizer_from_state(json.loads(json.dumps(fortunes_bpe.state())))  # as meta.json holds it
    text = "A computer is a state of mind."
    assert rebuilt.encode(text).tolist() == fortunes_bpe.encode(text).tolist()


def test_a_bpe_language_model_trains_generates_and_is_fine_tuned_with_its_tokenizer(tmp_path, capsys, monkeypatch,
                                                                                   fortunes_available):
    small = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=64", "train.epochs=1",
             "train.threads=1", "data.test_subset=20", "model.bpe_vocab=512"]
    lm = train_run(tmp_path, "text-gpt-bpe", *small, "data.train_subset=16")
    meta = rundir.read_json(lm / "meta.json")
    assert meta["tokenizer"]["kind"] == "bpe" and meta["tokenizer"]["vocab_size"] == 512
    loaded = runs.load_run(lm)
    assert loaded.model.embed.num_embeddings == 512
    text = "".join(loaded.generate("Love is", max_tokens=20, seed=1))
    assert text == "".join(loaded.generate("Love is", max_tokens=20, seed=1))
    assert rundir.read_json(lm / "summary.json")["test_bpc"] > 0
    monkeypatch.setattr(language, "_TRAINED", {})  # as a new process: evaluate trains the BPE again
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", lm)
    assert code == 0 and "bits per character" in out, err
    config = lm / "config.yaml"
    config.write_text(config.read_text().replace("tokenizer_digest: ", "tokenizer_digest: 0000"))
    code, _, err = run_cli(capsys, monkeypatch, "evaluate", lm)  # as if another `tokenizers` had trained it
    assert code != 0 and "is not the one this run trained with" in err and "Traceback" not in err
    tuned = train_run(tmp_path, "fortunes-finetune", *small, "model.tokenizer=bpe", "data.labels_per_class=3",
                      f"train.init_from={lm}")
    assert rundir.read_json(tuned / "meta.json")["tokenizer"] == meta["tokenizer"]  # the pretrained run's ids
    code, _, err = run_cli(capsys, monkeypatch, "train", "fortunes-finetune", *small, "data.labels_per_class=3",
                           f"train.init_from={lm}", "--runs-dir", tmp_path / "bytes")
    assert code == 2 and "reads bpe tokens; set model.tokenizer=bpe" in err and "Traceback" not in err


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_the_cache_gives_the_logits_of_the_whole_sequence(positions):
    model = tiny(positions=positions)
    x = torch.randint(0, 256, (1, 12))
    whole = model(x)[0]
    h, cache = model.hidden(x[:, :8])
    steps = [model.lm_head(h[0, -1])]
    for i in range(8, 12):
        h, cache = model.hidden(x[:, i:i + 1], cache, start=i)
        steps.append(model.lm_head(h[0, -1]))
    torch.testing.assert_close(torch.stack(steps), whole[7:12], atol=1e-5, rtol=0)


def test_sampling_is_seeded_greedy_at_zero_and_runs_past_the_context():
    model, prompt = tiny(), torch.tensor([30, 72, 105])
    first = list(model.generate(prompt, 40, temperature=1.0, top_k=50, top_p=0.9, seed=3))
    assert len(first) == 40  # 43 positions: past the context of 16, the cache is rebuilt
    assert first == list(model.generate(prompt, 40, temperature=1.0, top_k=50, top_p=0.9, seed=3))
    assert first != list(model.generate(prompt, 40, temperature=1.0, top_k=50, top_p=0.9, seed=4))
    greedy = list(model.generate(prompt, 5, temperature=0))
    assert greedy == list(model.generate(prompt, 5, temperature=1.0, top_k=1, seed=9))
    assert greedy[0] == int(model(prompt[None])[0, -1].argmax())


def test_a_classifier_pools_only_the_tokens_of_its_entry():
    model = tiny(head="classes")
    a = torch.tensor([[65, 66, 67, 30, 30, 30, 30, 30]])
    b = torch.tensor([[65, 66, 67, 30, 1, 2, 3, 4]])  # after the end token: padding, whatever it holds
    torch.testing.assert_close(model(a), model(b))
    assert model(a).shape == (1, 5)
    assert not torch.allclose(model(a), model(torch.tensor([[65, 66, 68, 30, 30, 30, 30, 30]])))


def test_the_auxiliary_next_token_loss_counts_the_entry_and_only_in_training():
    model = tiny(head="classes", lm_weight=0.5).eval()
    x, y = torch.tensor([[65, 66, 67, 30, 1, 2, 3, 4]]), torch.tensor([2])
    plain = model.loss(x, y)
    torch.testing.assert_close(plain, F.cross_entropy(model(x), y))  # scoring: the class loss alone
    model.train()  # no dropout in tiny(): training differs from scoring by the auxiliary loss only
    logits = model.lm_head(model.hidden(x)[0])[0]
    lm = F.cross_entropy(logits[:3], x[0, 1:4])  # 66, 67 and the end token; not what pads after it
    torch.testing.assert_close(model.loss(x, y), plain + 0.5 * lm)
    padded = torch.tensor([[65, 66, 67, 30, 9, 9, 9, 9]])
    torch.testing.assert_close(model.loss(padded, y), model.loss(x, y))


def test_a_stop_string_ends_the_text_before_it():
    model, tok = tiny(), ByteTokenizer()
    full = complete(model, tok, "ab", 60, temperature=1.0, seed=1)
    text = full.text()
    assert full.finish_reason in ("length", "stop") and full.tokens <= 60
    if len(text) > 6:
        stop = text[3:5]
        cut = complete(model, tok, "ab", 60, temperature=1.0, seed=1, stop=[stop])
        assert cut.text() == text[: text.find(stop)] and cut.finish_reason == "stop"


def test_losses_score_every_token_once_with_the_most_context_a_window_gives():
    model = tiny()
    ids = torch.randint(0, 256, (15,))  # shorter than the context: one window, every next token scored
    nats, n = token_losses(model, ids)
    direct = F.cross_entropy(model(ids[None, :-1])[0], ids[1:], reduction="sum").detach()
    assert n == 14 and nats == pytest.approx(direct.item(), rel=1e-5)
    long = torch.randint(0, 256, (101,))
    nats, n = token_losses(model, long)
    assert n == 100  # overlapping windows, each token after the first scored once


def test_compressors_and_the_model_in_the_same_unit():
    text = "to be or not to be, that is the question. " * 200
    bits = compressor_bits(text)
    assert bits["xz_bpc"] == pytest.approx(8 * len(lzma.compress(text.encode(), preset=9)) / len(text), rel=0.02)
    assert bits["zstd_bpc"] is None or bits["zstd_bpc"] < 1  # repetitive text compresses far below a bit per char
    scored = bits_per_character(tiny(), ByteTokenizer(), text)
    assert 7 < scored["bits_per_character"] < 9  # an untrained model: about log2(256) = 8 bits per byte
    assert scored["perplexity"] == pytest.approx(2 ** (scored["bits_per_character"] * (len(text) - 1)
                                                       / (scored["tokens"] - 1)), rel=1e-4)
    assert math.isfinite(scored["perplexity"])


# ---- a trained language model, end to end (conftest's text_run: `genforge train text-gpt`, tiny) ----

def test_a_language_run_scores_itself_beside_the_compressors(text_run):
    summary = rundir.read_json(text_run / "summary.json")
    assert 0 < summary["test_bpc"] < 8.5 and summary["xz_bpc"] > 2  # 64 windows of training: little learnt yet
    assert summary["zstd_bpc"] is None or summary["zstd_bpc"] > 2
    samples = rundir.read_json(text_run / "samples.json")["samples"]
    assert [s["prompt"] for s in samples] == ["", "The ", "A computer "] and all(s["epoch"] == 1 for s in samples)
    page = (text_run / "report.html").read_text()
    assert "Samples after each epoch" in page and "curves" in page
    meta = rundir.read_json(text_run / "meta.json")
    assert meta["tokenizer"] == {"kind": "bytes", "vocab_size": 256} and meta["classes"] == []
    assert (text_run / "export" / "model.onnx").is_file()  # served once: exported, its parity checked


def test_generate_in_python_and_on_the_command_line_give_the_same_text(text_run, capsys, monkeypatch):
    loaded = runs.load_run(text_run)
    first = loaded.generate("The ", max_tokens=40, temperature=0.9, seed=7)
    pieces = list(first)
    assert first.finish_reason in ("stop", "length") and 0 < first.tokens <= 40
    again = loaded.generate("The ", max_tokens=40, temperature=0.9, seed=7).text()
    assert "".join(pieces) == again
    code, out, err = run_cli(capsys, monkeypatch, "generate", text_run, "--prompt", "The ", "--max-tokens", 40,
                             "--temperature", 0.9, "--seed", 7)
    assert code == 0, err
    assert out == "The " + again + "\n" and f"{first.tokens} tokens, ended by {first.finish_reason}" in err


def test_evaluate_prints_bits_per_character_beside_xz_and_zstd(text_run, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", text_run)
    assert code == 0, err
    assert "bits per character" in out and "xz -9" in out and "zstd --ultra -22" in out


def test_a_model_that_is_not_a_language_model_cannot_generate(classifier_run, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, "generate", classifier_run, "--prompt", "hi")
    assert code == 2 and "not a language model: it cannot generate text" in err


def test_predict_classifies_texts_as_the_model_does_and_refuses_the_wrong_input(text_run, text_classifier_run,
                                                                                classifier_run, capsys, monkeypatch):
    texts = ["Love is blind.", "A computer without COBOL"]
    code, out, err = run_cli(capsys, monkeypatch, "predict", text_classifier_run, "--text", texts[0], "--text",
                             texts[1], "--json")
    assert code == 0, err
    run = runs.load_run(text_classifier_run)
    with torch.inference_mode():
        x = language.entry_tokens(tokenizer_of(run.meta), texts, run.model.context)
        expected = run.model.probabilities(run.model(x))
    got = torch.tensor([p["probabilities"] for p in json.loads(out)["predictions"]])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for args, words in [((text_classifier_run,), 'classifies texts: give --text "..."'),
                        ((text_run, "--text", "hi"), "not a classifier: predict classifies; use genforge generate"),
                        ((classifier_run, "--text", "hi"), "give image files, not --text")]:
        code, _, err = run_cli(capsys, monkeypatch, "predict", *args)
        assert code == 2 and words in err and "Traceback" not in err, err


def test_a_language_model_is_fine_tuned_into_a_classifier_with_a_new_head(text_run, text_classifier_run):
    run = text_classifier_run  # conftest: fortunes-finetune train.init_from=text_run
    summary = rundir.read_json(run / "summary.json")
    transfer = summary["transfer"]
    assert transfer["init_from"] == str(text_run.resolve())
    assert transfer["head"].startswith("new classes for 10 classes (people, definitions")
    pretrained, tuned = runs.load_run(text_run).model, runs.load_run(run).model
    names = [n for n, _ in tuned.named_parameters()]
    assert transfer["loaded"] == f"{len(names) - 2} of {len(names)} parameter tensors"  # all but classes.{weight,bias}
    assert not torch.equal(pretrained.embed.weight, tuned.embed.weight)  # fine-tuned, from the pretrained weights
    assert 0 <= summary["test_accuracy"] <= 1 and tuned.classes.out_features == 10
    meta = rundir.read_json(run / "meta.json")
    assert meta["classes"][:2] == ["people", "definitions"] and meta["head"] == "classes"
    page = (run / "report.html").read_text()  # the mistakes, each entry coloured twice
    assert "The 8 test entries with the highest loss" in page and page.count("attention rollout</p>") == 8
    assert page.count("<p>true <b>") == 8


def test_explain_text_gives_each_character_an_attribution_that_adds_up(text_classifier_run, capsys, monkeypatch,
                                                                       tmp_path):
    text = "Love is blind; café!"  # é is two byte tokens: one character, one attribution
    code, out, err = run_cli(capsys, monkeypatch, "explain", text_classifier_run, "--text", text, "--json")
    assert code == 0, err
    (e,) = json.loads(out)["explanations"]
    assert e["characters"] == list(text) and len(e["attributions"]) == len(text)
    assert e["target"] == e["predicted"] and 0 < e["target_probability"] <= 1
    # completeness: the attributions add up to log p(class | text) - log p(class | baseline), up to the path's error
    assert abs(e["delta"]) < 0.05 * abs(sum(e["attributions"])) + 1e-3, e
    page = tmp_path / "why.html"
    code, out, err = run_cli(capsys, monkeypatch, "explain", text_classifier_run, "--text", text, "--target", "1",
                             "--out", page)
    assert code == 0, err
    second = rundir.read_json(text_classifier_run / "meta.json")["classes"][1]
    assert f"explained {second} (" in " ".join(out.split()) and "attention rollout" in out
    assert page.read_text().count("<span") == 2 * len(text)  # integrated gradients, then attention rollout
    assert len(e["rollout"]) == len(text) and min(e["rollout"]) > 0
    assert sum(e["rollout"]) < 1  # the end token, which the classifier pools too, holds the rest


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_attention_weights_are_what_the_model_attends_with_and_rollout_shares_sum_to_one(positions):
    model = tiny(positions=positions, head="classes")
    x = torch.tensor([[65, 66, 67, 68, 30, 30]])
    maps = model.attention_weights(x)  # (layers, B, heads, T, T)
    assert maps.shape == (2, 1, 2, 6, 6)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 1, 2, 6))
    assert (maps.triu(1) == 0).all()  # causal
    block, (h, rope) = model.blocks[0], model._embed(x, 0)
    v = block.attn.qkv(block.norm1(h)).view(1, 6, 3, 2, 16)[:, :, 2].transpose(1, 2)  # (B, heads, T, head width)
    by_hand = block.attn.proj((maps[0] @ v).transpose(1, 2).reshape(1, 6, 32))
    torch.testing.assert_close(by_hand, block.attn(block.norm1(h), rope, None)[0], atol=1e-5, rtol=0)
    shares = attention_rollout(model, x)
    torch.testing.assert_close(shares.sum(), torch.tensor(1.0))
    assert shares[5] == 0  # padding after the entry's end token: no pooled position sees it


def test_explain_text_refuses_an_image_classifier_and_a_text_classifier_without_text(text_classifier_run,
                                                                                     classifier_run, capsys,
                                                                                     monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, "explain", classifier_run, "--text", "hello")
    assert code == 2 and "give files to explain, not --text" in err
    code, _, err = run_cli(capsys, monkeypatch, "explain", text_classifier_run)
    assert code == 2 and "classifies texts: give --text" in err


def test_int8_of_a_language_model_generates_and_compares_its_bits_per_character(text_run, capsys, monkeypatch,
                                                                                tmp_path):
    """Dynamic int8 (the default for language models) of both exported parts, the forward and the step with its
    cache: the child scores and generates in ONNX Runtime, and its comparison has both models' bits per character
    and tokens/s."""
    code, out, err = run_cli(capsys, monkeypatch, "compress", text_run, "--quantize", "int8", "--runs-dir", tmp_path)
    assert code == 0, err
    (child,) = tmp_path.iterdir()
    assert json.loads((child / "compression.json").read_text())["method"] == "int8-dynamic"
    comparison = json.loads((child / "comparison.json").read_text())
    parent, int8 = comparison["rows"]["parent"], comparison["rows"]["compressed"]
    assert parent["backend"] == "torch" and int8["backend"] == "onnxruntime"
    assert all(row["test_bpc"] > 0 and row["tokens_per_s"] > 0 for row in (parent, int8))
    assert abs(comparison["change"]["test_bpc"]) < 0.05 * parent["test_bpc"]  # int8 weights barely move the scores
    assert int8["file_bytes"] < 0.5 * comparison["rows"]["parent (onnxruntime fp32)"]["file_bytes"]
    # the weights both parts hold count once (twice would be 2x); the int8 output layer is a copy of the tied embedding
    assert int8["parameters"] < 1.6 * parent["parameters"]
    loaded = runs.load_run(child)
    assert loaded.backend == "onnxruntime" and isinstance(loaded.model.step, OnnxPart)
    assert len(list(loaded.model.generate(torch.tensor([10, 84]), 20, temperature=0))) == 20
