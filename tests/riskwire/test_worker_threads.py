"""A worker leaves one core to its stream stages: its models get one torch thread fewer; a scoring
process scores a batch per core at once, and shares the cores out among them."""

from __future__ import annotations

from pathlib import Path

import pytest

from riskwire.settings import load_settings
from riskwire.worker import apply_model_threads, model_threads, scoring_threads


@pytest.mark.parametrize(
    ("setting", "cores", "threads"), [(0, 2, 1), (0, 1, 1), (0, 16, 15), (3, 2, 3)]
)
def test_models_get_the_cores_the_stages_do_not_need(
    tmp_path: Path, setting: int, cores: int, threads: int
) -> None:
    settings = load_settings(data_dir=tmp_path, model_threads=setting)
    assert model_threads(settings, cores) == threads


def test_the_worker_sets_torchs_threads(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        assert apply_model_threads(load_settings(data_dir=tmp_path, model_threads=1)) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("batches", "threads", "cores", "expected"),
    [(0, 0, 2, (2, 1)), (0, 0, 1, (1, 1)), (0, 0, 16, (8, 2)), (3, 0, 12, (3, 4)),
     (2, 5, 2, (2, 5)), (0, 0, 5, (5, 1))],
)  # fmt: skip
def test_a_scoring_process_scores_a_batch_per_core_at_once(
    tmp_path: Path, batches: int, threads: int, cores: int, expected: tuple[int, int]
) -> None:
    settings = load_settings(data_dir=tmp_path, scoring_threads=batches, model_threads=threads)
    assert scoring_threads(settings, cores) == expected
