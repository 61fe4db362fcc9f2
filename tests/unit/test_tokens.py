"""`add_vrshq_tokens` and the tokenizers (tiny in code, LLaMA from a local folder)."""

from __future__ import annotations

import pytest

from vrshq.model.tokenizer import TokenizerNotFoundError, build_tiny_tokenizer, load_llama_tokenizer, load_tokenizer
from vrshq.model.tokens import SEG_TOKEN, TAK_TOKEN, VrshqTokenIds, add_vrshq_tokens, vrshq_token_ids


def _toy_llama_tokenizer():
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for piece in ["▁", "a", "b", "(", ")", "0", "1", ",", "."]:
        vocab.setdefault(piece, len(vocab))
    for merged in ["▁a", "▁(", "▁,"]:
        vocab[merged] = len(vocab)
    return LlamaTokenizer(vocab=vocab, merges=[("▁", "a"), ("▁", "("), ("▁", ",")])


def test_add_tokens_ids_are_appended_and_single_tokens():
    tok = build_tiny_tokenizer()
    base = len(tok)
    ids = add_vrshq_tokens(tok)
    assert ids == VrshqTokenIds(seg_token_id=base, tak_token_id=base + 1)
    assert len(tok) == base + 2
    assert tok("x [SEG] y [TAK]", add_special_tokens=False).input_ids.count(ids.seg_token_id) == 1
    assert tok.convert_ids_to_tokens([ids.seg_token_id, ids.tak_token_id]) == [SEG_TOKEN, TAK_TOKEN]
    # idempotent: adding again keeps ids and size
    assert add_vrshq_tokens(tok) == ids and len(tok) == base + 2


def test_token_ids_require_added_tokens():
    with pytest.raises(ValueError, match="add_vrshq_tokens"):
        vrshq_token_ids(build_tiny_tokenizer())


def test_token_ids_validation():
    with pytest.raises(ValueError, match="distinct"):
        VrshqTokenIds(seg_token_id=3, tak_token_id=3)
    with pytest.raises(ValueError, match="non-negative"):
        VrshqTokenIds(seg_token_id=-1, tak_token_id=3)


def test_tiny_tokenizer_is_deterministic_and_covers_any_text():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    ids = a("a red circle", add_special_tokens=True).input_ids
    assert a.convert_ids_to_tokens(ids) == ["<s>", "a", "red", "circle"]
    # an unknown word falls back to characters, an unknown character to <unk>
    assert a.convert_ids_to_tokens(a("zq é", add_special_tokens=False).input_ids) == ["z", "##q", "<unk>"]
    assert a.pad_token == a.unk_token == "<unk>" and a.padding_side == "right" and a.model_max_length == 2048


def test_tiny_tokenizer_extra_words_and_save_round_trip(tmp_path):
    tok = build_tiny_tokenizer(extra_words=["zebra"])
    assert tok.convert_ids_to_tokens(tok("zebra", add_special_tokens=False).input_ids) == ["zebra"]
    ids = add_vrshq_tokens(tok)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert add_vrshq_tokens(loaded) == ids
    text = "Sure, (0) [SEG], (1) [SEG] zebra [TAK].</s>"
    assert loaded(text).input_ids == tok(text).input_ids
    with pytest.raises(ValueError, match="extra_words"):
        build_tiny_tokenizer(extra_words=["two words"])


def test_load_llama_tokenizer_settings(tmp_path):
    _toy_llama_tokenizer().save_pretrained(tmp_path)
    tok = load_llama_tokenizer(tmp_path)
    assert tok.pad_token == tok.unk_token == "<unk>"
    assert tok.padding_side == "right"
    assert tok.model_max_length == 2048


def test_load_llama_tokenizer_missing_path_is_clear(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="does not exist"):
        load_llama_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerNotFoundError, match="tokenizer.model"):
        load_llama_tokenizer(tmp_path)
    with pytest.raises(TokenizerNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_load_llama_tokenizer_honours_legacy_flag(tmp_path):
    """tokenizer_config.json's legacy=false is honoured (as transformers 4.31 does), not overridden."""
    import json

    from vrshq.model.tokenizer import read_legacy_flag

    _toy_llama_tokenizer().save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["legacy"] = False
    config_path.write_text(json.dumps(config))
    assert read_legacy_flag(tmp_path) is False
    assert load_llama_tokenizer(tmp_path).legacy is False
