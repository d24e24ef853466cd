"""Scoring rules carry versions that caches and summaries rely on; editing a rule without a bump fails here.

Each versioned rule is fingerprinted: the sha256 of the source of the functions and the values of
the constants that decide its output (a benchmark's metric declarations and per-sample fields included). The fingerprint is pinned next to the version. When a test
below fails, the rule changed: bump the version named in the message (so that CHAIR ground-truth
caches and judge caches are rebuilt, and summaries say which rules made them) and pin the new
fingerprint printed by the failure. Formatting-only edits change the fingerprint too; bump anyway,
it costs one cache rebuild.
"""

from __future__ import annotations

import hashlib
import inspect

from hallbench.eval import chair, judge, mme, pope, vqa

PINNED = {
    "chair": ("chair-gt-3", "579325378e5d185d"),
    "judge": ("equiv-v2", "ca560a5b0d5763c1"),
    "pope": ("pope-2", "f6cded7def92974e"),
    "mme": ("mme-1", "606b7fd38ad6b235"),
    "vqa": ("vqa-1", "6ea5a4f6c2321515"),
}


def _fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        source = inspect.unwrap(part) if callable(part) else part  # a cached function is fingerprinted by its code
        text = inspect.getsource(source) if inspect.isfunction(source) or inspect.isclass(source) else repr(part)
        assert " at 0x" not in text, f"{part!r} has no stable fingerprint"
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def fingerprints() -> dict[str, tuple[str, str]]:
    scorer = chair.ChairScorer
    return {
        "chair": (
            chair.CODE_VERSION,
            _fingerprint(
                chair.CHAIR_METRICS,
                chair._fields,
                chair.split_words,
                chair._special_phrases,
                scorer._normalise,
                scorer._starts_phrase,
                scorer._units,
                scorer._is_verb,
                scorer._match,
                scorer._build_index,
                chair.ANIMAL_QUALIFIERS,
                chair.ANIMAL_CATEGORIES,
                chair.NON_OBJECT_ANIMAL_WORDS,
                chair.PASSENGER_VEHICLE_CATEGORIES,
                chair.FIXED_PHRASES,
                chair.CONTEXT_EXCLUSIONS,
                sorted(chair.MODIFIED_HEADS),
                sorted(chair.VERB_SUBJECTS),
                sorted(chair.VERB_FOLLOWERS),
                chair._WORD_RE.pattern,
            ),
        ),  # fmt: skip
        "judge": (
            judge.PROMPT_ID,
            _fingerprint(
                judge._PROMPT_HEAD,
                judge._FIELDS_MARKER,
                judge.build_judge_prompt,
                judge.parse_verdict,
                judge._STRIP_CHARS,
                judge._THINK.pattern,
                judge._FINAL_MARKER.pattern,
            ),
        ),  # fmt: skip
        "pope": (
            pope.PARSER_VERSION,
            _fingerprint(
                pope.POPE_METRICS,
                pope._fields,
                pope.parse_answer,
                pope._parse_official,
                pope.existence_question,
                pope.asked_object,
                pope.QUESTION_TEMPLATE,
                pope._ASKED_RE.pattern,
                pope._HEDGE_RE.pattern,
                pope._CLAUSE_RE.pattern,
                sorted(pope.NEGATION_WORDS),
                pope._WORD_RE.pattern,
                pope._SENTENCE_END_RE.pattern,
                pope._LEADING_JUNK_RE.pattern,
                pope._object_pattern,
            ),
        ),  # fmt: skip
        "mme": (mme.VERSION, _fingerprint(mme.MME_METRICS, mme._fields, mme.parse_official, mme.parse_mme_answer, pope.PARSER_VERSION)),
        "vqa": (vqa.SPEC.version, _fingerprint(vqa.VQA_METRICS, vqa._fields, vqa.extract_final_answer, vqa._marker_pattern)),
    }


def test_every_scoring_rule_change_comes_with_a_version_bump():
    current = fingerprints()
    stale = {name: current[name] for name in PINNED if current[name] != PINNED[name]}
    assert not stale, (
        "a scoring rule changed: for each of these, bump its version (chair.CODE_VERSION, judge.PROMPT_ID, "
        f"pope.PARSER_VERSION, mme.VERSION, vqa.SPEC.version) if its output can change, then pin (version, fingerprint): {stale}"
    )


def test_the_versions_are_recorded_by_the_benchmarks():
    assert pope.SPEC.version == pope.PARSER_VERSION
    assert chair.SPEC.version == chair.CODE_VERSION
