"""Prompt ids from the release's slow LLaMA tokenizer files equal transformers 4.31's, for every
`legacy` setting of tokenizer_config.json (the expected ids were produced by 4.31 itself: see
tests/fixtures/slow_llama_tokenizer/make_fixture.py)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

import pytest

from vrshq.model.prompts import tokenize_prompt
from vrshq.model.tokenizer import PIECE_ENCODER_ATTR, LLAMA_TOKENIZER_FILES, load_llama_tokenizer
from vrshq.model.tokens import add_vrshq_tokens

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "slow_llama_tokenizer"
_EXPECTED = json.loads((FIXTURE / "expected_ids.json").read_text(encoding="utf-8"))


def _tokenizer_folder(tmp_path: pathlib.Path, legacy: bool | None) -> pathlib.Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in LLAMA_TOKENIZER_FILES:
        shutil.copy(FIXTURE / name, folder / name)
    config = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    config.pop("legacy", None)
    if legacy is not None:
        config["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_fixture_texts_are_the_current_prompts():
    """The fixture covers the templates the code uses now (a template change needs a new fixture)."""
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.prompt_texts() == _EXPECTED["texts"]
    assert _EXPECTED["transformers"] == "4.31.0"


@pytest.mark.parametrize("legacy", [True, False, None], ids=["legacy_true", "legacy_false", "legacy_unset"])
def test_prompt_ids_equal_transformers_431(tmp_path, legacy):
    tok = load_llama_tokenizer(_tokenizer_folder(tmp_path, legacy))
    assert getattr(tok, PIECE_ENCODER_ATTR).legacy is (legacy is not False)
    ids = add_vrshq_tokens(tok)
    assert (ids.seg_token_id, ids.tak_token_id) == (400, 401)  # from added_tokens.json, as 4.31 reads it
    expected = _EXPECTED["ids"][{True: "legacy_true", False: "legacy_false", None: "legacy_unset"}[legacy]]
    for text, want in zip(_EXPECTED["texts"], expected, strict=True):
        assert tokenize_prompt(tok, text) == want, text


def test_legacy_setting_changes_the_ids():
    """The three variants are not all the same ids, so the comparison above can fail."""
    assert _EXPECTED["ids"]["legacy_true"] == _EXPECTED["ids"]["legacy_unset"]
    assert _EXPECTED["ids"]["legacy_true"] != _EXPECTED["ids"]["legacy_false"]


def test_bad_legacy_value_is_named(tmp_path):
    folder = _tokenizer_folder(tmp_path, None)
    (folder / "tokenizer_config.json").write_text(json.dumps({"legacy": "no"}))
    with pytest.raises(ValueError, match="tokenizer_config.json: 'legacy' must be"):
        load_llama_tokenizer(folder)


def test_vrshq_checkpoint_keeps_the_slow_tokenizer(tmp_path):
    """A checkpoint saved from a model with the release's tokenizer restores the same prompt ids."""
    import torch

    from vrshq.checkpoint.load import load_vrshq_tokenizer
    from vrshq.checkpoint.save import save_vrshq_checkpoint

    tok = load_llama_tokenizer(_tokenizer_folder(tmp_path, False))
    add_vrshq_tokens(tok)
    save_vrshq_checkpoint(torch.nn.Linear(2, 2), str(tmp_path / "ck"), tokenizer=tok)
    loaded = load_vrshq_tokenizer(str(tmp_path / "ck"))
    assert getattr(loaded, PIECE_ENCODER_ATTR).legacy is False
    for text, want in zip(_EXPECTED["texts"], _EXPECTED["ids"]["legacy_false"], strict=True):
        assert tokenize_prompt(loaded, text) == want, text
