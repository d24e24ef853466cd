"""BERTScore (hallbench/eval/bertscore.py) with the real packaged all-MiniLM-L6-v2, on the CPU, offline.

The pinned numbers were measured with all-MiniLM-L6-v2 at layer 6, bert-score 0.3.13, transformers 5.23.0
and torch 2.13.0 (CPU); a change of model, layer, tokenization or bert-score version moves them.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json

import pytest

from hallbench.errors import HallbenchError, ModelNotFoundError
from hallbench.eval.bertscore import (
    MINILM,
    BertScoreConfig,
    BertScoreConfigError,
    BertScorer,
    bundled_baseline_path,
    packaged_minilm_path,
    resolve_bertscore,
)

CPU = {"device": "cpu"}
STAR = ("a red star", "a red star and a blue moon")


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """Empty basemodel folder and Hugging Face cache, so model=None resolves the same on every machine."""
    root = tmp_path_factory.mktemp("bertscore-lookup")
    (root / "basemodel").mkdir()
    (root / "hf").mkdir()
    return {"basemodel": root / "basemodel", "hf_cache_dir": root / "hf"}


@pytest.fixture(scope="module")
def scorer(isolated):
    """The default scorer, built once for the module: roberta-large is absent, so it is the packaged MiniLM."""
    return BertScorer(BertScoreConfig(**CPU), **isolated)


def close(actual, expected, tol=1e-5):
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


# --- scores ---------------------------------------------------------------------------------------------


def test_identical_strings_score_one(scorer):
    for text in ("The cat sat on the mat.", "two blue squares", "yes"):
        (p, r, f) = scorer.score([text], [text])[0]
        assert close((p, r, f), (1.0, 1.0, 1.0)), (text, p, r, f)


def test_paraphrase_scores_higher_than_unrelated(scorer):
    reference = "The cat sat on the mat."
    paraphrase, unrelated = scorer.score(["A cat was sitting on the mat.", "The stock market fell sharply today."], [reference, reference])
    assert close(paraphrase, (0.895905, 0.918635, 0.907127), 1e-3)
    assert close(unrelated, (0.137270, 0.184478, 0.157411), 1e-3)
    assert paraphrase[2] > unrelated[2] + 0.5
    shapes = scorer.score(["two blue squares", "two blue squares"], ["there are two squares and they are blue", "a green triangle"])
    assert shapes[0][2] == pytest.approx(0.885862, abs=1e-3)
    assert shapes[1][2] == pytest.approx(0.326311, abs=1e-3)


def test_subset_candidate_has_precision_above_recall(scorer):
    # Every token of "a red star" is in the reference (high precision); "and a blue moon" is not covered (lower recall).
    forward, backward = scorer.score([STAR[0], STAR[1]], [STAR[1], STAR[0]])
    assert close(forward, (0.873005, 0.675800, 0.761848), 1e-3)
    assert forward[0] > forward[1] + 0.1
    # Swapping candidate and reference swaps P and R exactly (same greedy matching, seen from the other side); F1 is symmetric.
    assert close(backward, (forward[1], forward[0], forward[2]))


def test_deterministic_batched_and_built_once(scorer):
    inner = scorer.bert_scorer
    candidates = ["A cat was sitting on the mat.", STAR[0], "Two blue squares.", "a green triangle"] * 3
    references = ["The cat sat on the mat.", STAR[1], "two blue squares", "a red star"] * 3
    first = scorer.score(candidates, references)
    second = scorer.score(candidates, references)
    assert first == second  # bit-identical
    assert scorer.bert_scorer is inner  # one bert_score.BERTScorer, reused, never rebuilt
    # A pair's score does not depend on the other pairs of the call (only float noise from padding).
    alone = [scorer.score([c], [r])[0] for c, r in zip(candidates[:4], references[:4], strict=True)]
    for one, batched in zip(alone, first[:4], strict=True):
        assert close(one, batched, 1e-5)
    assert first[0] == first[4] == first[8]


def test_empty_candidates_and_references_score_zero(scorer):
    pairs = [("", STAR[1]), ("   \n", STAR[1]), (STAR[0], STAR[1]), (STAR[0], ""), ("", "")]
    scores = scorer.score([c for c, _ in pairs], [r for _, r in pairs])
    assert scores[0] == scores[1] == scores[3] == scores[4] == (0.0, 0.0, 0.0)
    # The non-empty pair in the same call is unaffected.
    assert close(scores[2], scorer.score([STAR[0]], [STAR[1]])[0])
    assert scorer.score([], []) == []


def test_bad_inputs(scorer):
    with pytest.raises(ValueError, match="2 candidates but 1 references"):
        scorer.score(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="candidate 1 is NoneType"):
        scorer.score(["a", None], ["a", "b"])


def test_description_of_the_offline_model(scorer):
    versions = f"version={importlib.metadata.version('bert-score')}(hug_trans={importlib.metadata.version('transformers')})"
    assert scorer.hash_string == f"all-MiniLM-L6-v2_L6_no-idf_no-rescale_{versions}"
    description = scorer.description()
    assert description["model"] == MINILM
    assert description["num_layers"] == 6
    assert description["idf"] is False
    assert description["rescaled"] is False
    assert description["baseline"] is None
    assert description["source"] == "packaged"
    assert description["hash"] == scorer.hash_string
    json.dumps(description)  # JSON-ready for summary.json
    assert packaged_minilm_path().name == "model" and (packaged_minilm_path() / "model.safetensors").is_file()


# --- rescaling ------------------------------------------------------------------------------------------


def write_baseline(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["LAYER", "P", "R", "F"])
        writer.writerows(rows)
    return path


def test_rescaling_the_local_model_needs_a_baseline(tmp_path, isolated):
    message = f"rescale_with_baseline=True for {MINILM}, but a local model has no bert-score baseline .*; give baseline_path"
    # Named or given as its folder: refused when the config is made, before any lookup.
    for model in (MINILM, str(packaged_minilm_path())):
        with pytest.raises(BertScoreConfigError, match=message):
            BertScoreConfig(model=model, rescale_with_baseline=True)
    # model=None: which model it is (and so whether it has a baseline) is known once resolved, before loading.
    with pytest.raises(BertScoreConfigError, match=message):
        BertScorer(BertScoreConfig(rescale_with_baseline=True, **CPU), **isolated)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 4}))
    with pytest.raises(BertScoreConfigError, match=f"rescale_with_baseline=True for {tmp_path.resolve()}, but a local model"):
        BertScoreConfig(model=str(tmp_path), num_layers=4, rescale_with_baseline=True)


def test_custom_baseline_rescales_linearly(scorer, tmp_path, isolated):
    # Other layers get other values, so reading the wrong row would show.
    rows = [[layer, 0.05 * layer, 0.04 * layer, 0.03 * layer] for layer in range(6)] + [[6, 0.5, 0.4, 0.3]]
    path = write_baseline(tmp_path / "minilm-baseline.tsv", rows)
    rescaled = BertScorer(BertScoreConfig(baseline_path=path, **CPU), **isolated)
    description = rescaled.description()
    assert description["rescaled"] is True
    assert description["baseline"]["source"] == "custom" and description["baseline"]["P_R_F"] == [0.5, 0.4, 0.3]
    assert "_rescaled(custom:minilm-baseline.tsv@sha256:" in rescaled.hash_string
    candidates = [STAR[0], "The stock market fell sharply today.", ""]
    references = [STAR[1], "The cat sat on the mat.", STAR[1]]
    raw = scorer.score(candidates, references)
    new = rescaled.score(candidates, references)
    for raw_pair, new_pair in zip(raw[:2], new[:2], strict=True):
        # (score - b) / (1 - b) for P, R and F1 each with its own b; F1 is not recomputed from rescaled P and R.
        expected = tuple((s - b) / (1 - b) for s, b in zip(raw_pair, (0.5, 0.4, 0.3), strict=True))
        assert close(new_pair, expected, 1e-6)
    assert close(new[0], ((0.873005 - 0.5) / 0.5, (0.675800 - 0.4) / 0.6, (0.761848 - 0.3) / 0.7), 2e-3)
    assert new[1][2] < 0  # an unrelated pair falls below this baseline
    assert new[2] == (0.0, 0.0, 0.0)  # empty stays 0.0 in rescaled mode too


def test_bad_baseline_files(tmp_path, isolated):
    short = write_baseline(tmp_path / "short.tsv", [[0, 0.1, 0.1, 0.1], [1, 0.2, 0.2, 0.2]])
    with pytest.raises(BertScoreConfigError, match="expected a row for layer 6"):
        resolve_bertscore(BertScoreConfig(baseline_path=short), **isolated)
    shuffled = write_baseline(tmp_path / "shuffled.tsv", [[layer, 0.1, 0.1, 0.1] for layer in (0, 1, 2, 3, 4, 6, 5)])
    with pytest.raises(BertScoreConfigError, match="expected LAYER 6"):
        resolve_bertscore(BertScoreConfig(baseline_path=shuffled), **isolated)
    (tmp_path / "header.tsv").write_text("layer\tP\tR\tF\n0\t0.1\t0.1\t0.1\n")
    with pytest.raises(BertScoreConfigError, match="expected the header LAYER,P,R,F"):
        resolve_bertscore(BertScoreConfig(baseline_path=tmp_path / "header.tsv"), **isolated)
    with pytest.raises(BertScoreConfigError, match="no file at"):
        BertScoreConfig(baseline_path=tmp_path / "missing.tsv")
    with pytest.raises(BertScoreConfigError, match="rescale_with_baseline is False"):
        BertScoreConfig(baseline_path=short, rescale_with_baseline=False)


def test_bundled_baseline_format_is_what_read_baseline_expects():
    # bert-score's own roberta-large file: comma-separated despite .tsv, one row per layer from 0.
    path = bundled_baseline_path("roberta-large", "en")
    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["LAYER", "P", "R", "F"]
    assert [int(row[0]) for row in rows[1:]] == list(range(len(rows) - 1))


# --- model resolution -----------------------------------------------------------------------------------


def test_missing_model_names_what_was_tried(tmp_path, isolated):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match=rf"'{missing}' not found .* Tried: a folder at {missing} \(does not exist\)") as info:
        BertScorer(BertScoreConfig(model=str(missing)), **isolated)
    assert isinstance(info.value, HallbenchError)
    with pytest.raises(ModelNotFoundError, match=r"someone/model' not found .* someone/model in the Hugging Face cache"):
        resolve_bertscore(BertScoreConfig(model="someone/model"), **isolated)
    with pytest.raises(
        ModelNotFoundError,
        match=r"roberta-large not found .* Tried: .*roberta-large/config.json; FacebookAI/roberta-large in the Hugging Face cache",
    ):
        resolve_bertscore(BertScoreConfig(model="roberta-large"), **isolated)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_bertscore(BertScoreConfig(model=str(tmp_path / "empty"), num_layers=1), **isolated)


def test_local_folder_needs_num_layers_in_range(tmp_path, isolated):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 4}))
    with pytest.raises(BertScoreConfigError, match="num_layers is required"):
        resolve_bertscore(BertScoreConfig(model=str(tmp_path)), **isolated)
    with pytest.raises(BertScoreConfigError, match="has 4 layers; num_layers=5 does not exist"):
        resolve_bertscore(BertScoreConfig(model=str(tmp_path), num_layers=5), **isolated)
    resolved = resolve_bertscore(BertScoreConfig(model=str(tmp_path), num_layers=4), **isolated)
    assert (resolved.name, resolved.source, resolved.baseline) == (str(tmp_path.resolve()), "path", None)


def roberta_large_rows():
    with bundled_baseline_path("roberta-large", "en").open() as handle:
        return list(csv.reader(handle))


def test_roberta_large_is_preferred_when_present(tmp_path):
    # Resolution only (a folder with roberta-large's config.json); the 1.4 GB weights are never needed for this.
    config_json = json.dumps({"model_type": "roberta", "num_hidden_layers": 24})
    (tmp_path / "basemodel" / "roberta-large").mkdir(parents=True)
    (tmp_path / "basemodel" / "roberta-large" / "config.json").write_text(config_json)
    resolved = resolve_bertscore(BertScoreConfig(), basemodel=tmp_path / "basemodel", hf_cache_dir=tmp_path / "hf")
    assert (resolved.name, resolved.source, resolved.num_layers) == ("roberta-large", "basemodel", 17)
    assert resolved.baseline is not None and resolved.baseline.bundled
    assert resolved.baseline.values == tuple(float(v) for v in roberta_large_rows()[18][1:])  # header + layers 0..17
    assert "roberta-large_L17_no-idf_rescaled(bert-score:en/roberta-large.tsv)_version=" in resolved.hash_string
    # rescale_with_baseline=False is honoured; in the Hugging Face cache layout it is found under FacebookAI/.
    snapshot = tmp_path / "hf" / "models--FacebookAI--roberta-large" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(config_json)
    (tmp_path / "hf" / "models--FacebookAI--roberta-large" / "refs").mkdir()
    (tmp_path / "hf" / "models--FacebookAI--roberta-large" / "refs" / "main").write_text("0" * 40)
    cached = resolve_bertscore(BertScoreConfig(rescale_with_baseline=False), basemodel=tmp_path / "nowhere", hf_cache_dir=tmp_path / "hf")
    assert (cached.name, cached.source, cached.path, cached.baseline) == ("roberta-large", "hf-cache", snapshot, None)
    assert "_no-rescale_" in cached.hash_string


# --- idf and the transformers-5 tokenizer workaround ----------------------------------------------------


def test_idf_needs_a_corpus_and_changes_weights(scorer, isolated):
    with pytest.raises(BertScoreConfigError, match="idf=True needs the reference corpus"):
        BertScorer(BertScoreConfig(idf=True, **CPU), **isolated)
    with pytest.raises(BertScoreConfigError, match="idf_sentences given but idf=False"):
        BertScorer(BertScoreConfig(**CPU), idf_sentences=["a"], **isolated)
    corpus = ["a red star", "a blue moon", "a red circle", "a green square", "", "a red star and a blue moon"]
    weighted = BertScorer(BertScoreConfig(idf=True, **CPU), idf_sentences=corpus, **isolated)
    assert "_idf_no-rescale_" in weighted.hash_string and weighted.description()["idf"] is True
    new = weighted.score([STAR[0], "The cat sat on the mat."], [STAR[1], "The cat sat on the mat."])
    assert close(new[1], (1.0, 1.0, 1.0))
    assert close(new[0], (0.906597, 0.613800, 0.732005), 1e-3)
    # "a" (in every sentence) weighs little, "moon" much: the uncovered "blue moon" costs more recall than without idf.
    assert new[0][1] < scorer.score([STAR[0]], [STAR[1]])[0][1] - 0.02


def test_roberta_tokenizer_gets_its_prefix_space(tmp_path, isolated):
    """bert-score's encode(..., add_prefix_space=True) is ignored by transformers 5; the scorer fixes the tokenizer."""
    import torch
    from bert_score.utils import sent_encode
    from tokenizers import pre_tokenizers
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "<mask>": 4}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    vocab["Ġa"] = len(vocab)
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[("Ġ", "a")], model_max_length=64)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=72
    )
    folder = tmp_path / "tiny-roberta"
    RobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # The bug being worked around: without the fix the first word loses its leading-space token.
    assert tokenizer.convert_ids_to_tokens(sent_encode(tokenizer, "a cat"))[1] == "a"

    tiny = BertScorer(BertScoreConfig(model=str(folder), num_layers=2, **CPU), **isolated)
    fixed = tiny.bert_scorer._tokenizer
    assert fixed.convert_ids_to_tokens(sent_encode(fixed, "a cat")) == ["<s>", "Ġa", "Ġ", "c", "a", "t", "</s>"]
    assert close(tiny.score(["a cat"], ["a cat"])[0], (1.0, 1.0, 1.0))
