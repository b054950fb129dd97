"""`riskwire bench infer` runs both sides on the same texts and prints one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.riskwire.test_cli import riskwire


@pytest.mark.slow
def test_bench_infer_compares_the_ensemble_with_naive_pipelines(
    tmp_path: Path, tiny_encoder_dir: Path, tiny_classifier_dir: Path, fixtures_dir: Path
) -> None:
    head = tmp_path / "head.json"
    dim = 16
    head.write_text(json.dumps({"version": "tiny-head-1", "weight": [[0.1, 0.0, -0.1]] * dim,
                                "bias": [0.0, 0.1, 0.0]}))  # fmt: skip
    ensemble = tmp_path / "tiny.json"
    ensemble.write_text(json.dumps({"name": "tiny", "members": [
        {"member": "finlex"},
        {"member": "head", "name": "tiny-head", "head": "head.json",
         "encoder": str(tiny_encoder_dir)},
        {"member": "hf", "name": "tiny-clf", "model": str(tiny_classifier_dir), "max_length": 32},
    ], "fusion": {"strategy": "soft"}}))  # fmt: skip
    env = {"RISKWIRE_DATA_DIR": str(tmp_path), "RISKWIRE_ENSEMBLE": str(ensemble)}
    result = riskwire("bench", "infer", "--data", str(fixtures_dir / "labelled.jsonl"),
                      "--n", "120", "--json", env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    body = json.loads(result.stdout)
    assert body["members"] == ["finlex", "tiny-head", "tiny-clf"] and body["texts"] == 120
    assert body["ensemble_docs_per_s"] > 0 and body["naive_docs_per_s"] > 0
    assert body["ratio"] == pytest.approx(
        body["ensemble_docs_per_s"] / body["naive_docs_per_s"], rel=0.01
    )
    assert "naive, one document at a time" in result.stderr


def test_the_naive_baseline_answers_as_the_members_do(
    tiny_classifier_dir: Path, tiny_pooled_classifier_dir: Path
) -> None:
    """Each member's one-at-a-time pipeline gives its batched answer: the ratio compares speed."""
    import numpy as np

    from bench.infer import naive_scorer
    from models.hf import HFClassifierMember

    texts = ["Profit rose 20% on strong demand.", "The lender cut its outlook after losses."]
    for folder in (tiny_classifier_dir, tiny_pooled_classifier_dir):
        member = HFClassifierMember(str(folder), max_length=32)
        naive = naive_scorer(member, "cpu")
        assert np.allclose(np.stack([naive(t) for t in texts]), member.predict_proba(texts),
                           atol=1e-5)  # fmt: skip
