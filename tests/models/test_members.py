"""One contract for every member: shape, probabilities, order, batching; then member specifics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from models.base import Member
from models.embedding import EmbeddingHeadMember, Head, SentenceEncoder
from models.ensemble import Ensemble
from models.exceptions import ModelError
from models.hf import HFClassifierMember
from models.lexicon import LexiconMember
from models.packaged import FinVaderMember, loughran_mcdonald_member
from riskwire.records import LABELS
from tests.models.conftest import FixedMember

TEXTS = [
    "Acme beats estimates and raises guidance",
    "Acme shares plunge after accounting probe",
    "Acme to hold its annual meeting in May",
    "$ACME",
    "A much longer sentence about the quarterly results of a company that nobody has heard of yet",
]


def random_head(dim: int, seed: int = 0, hidden: int = 0) -> Head:
    """Linear, or with a ReLU layer of ``hidden`` units."""
    rng = np.random.default_rng(seed)
    if not hidden:
        return Head(rng.normal(size=(dim, 3)), rng.normal(size=3), {"version": "test-head"})
    layer = (rng.normal(size=(dim, hidden)), rng.normal(size=hidden))
    return Head(rng.normal(size=(hidden, 3)), rng.normal(size=3), {"version": "test-mlp"}, layer)


FUSED = ["majority", "soft", "stacking", "dawid-skene"]
# labels for fitting the learning fusions on TEXTS (what the texts say, roughly)
FIT_LABELS = np.array([2, 0, 1, 1, 1])


def fitted_ensemble(fusion: str, members: list[Member]) -> Ensemble:
    ensemble = Ensemble(members, [1.0, 2.0, 1.0][: len(members)], fusion=fusion)
    ensemble.fit_fusion(TEXTS * 4, np.tile(FIT_LABELS, 4))
    return ensemble


MEMBER_KINDS = ["finlex", "lm", "finvader", "embedding-head", "embedding-mlp-head", "hf", "hf-int8",
                "hf-traced", "hf-mean-pooled", *(f"ensemble-{f}" for f in FUSED)]  # fmt: skip


@pytest.fixture(params=MEMBER_KINDS)
def member(
    request: pytest.FixtureRequest,
    tiny_encoder_dir: Path,
    tiny_classifier_dir: Path,
    tiny_pooled_classifier_dir: Path,
) -> Member:
    kind = request.param
    if kind == "finlex":
        return LexiconMember()
    if kind == "lm":
        return loughran_mcdonald_member()
    if kind == "finvader":
        return FinVaderMember()
    if kind.startswith("hf"):
        folder = tiny_pooled_classifier_dir if kind == "hf-mean-pooled" else tiny_classifier_dir
        return HFClassifierMember(
            str(folder), max_length=16, stride=4, batch_size=2,
            quantize=kind == "hf-int8", trace=kind == "hf-traced",
        )  # fmt: skip
    encoder = SentenceEncoder(str(tiny_encoder_dir))
    if kind == "embedding-mlp-head":
        return EmbeddingHeadMember(encoder, random_head(encoder.dim, hidden=5))
    head_member = EmbeddingHeadMember(encoder, random_head(encoder.dim))
    if kind == "embedding-head":
        return head_member
    members: list[Member] = [LexiconMember(), head_member, FinVaderMember()]
    return fitted_ensemble(kind.removeprefix("ensemble-"), members)


def test_member_contract(member: Member) -> None:
    """Shape, probabilities, canonical labels, batch = one by one, input order, determinism.

    Dynamic int8 quantisation scales activations by each batch's range: close, not identical."""
    assert_member_contract(member, 1e-3 if getattr(member, "quantized", False) else 1e-5)


def assert_member_contract(member: Member, tolerance: float) -> None:
    """The contract, with ``tolerance`` for a batch's answer against one by one or reordered."""
    probs = member.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS), 3)
    assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    order = [4, 2, 0, 3, 1]
    assert np.allclose(
        member.predict_proba([TEXTS[i] for i in order]), probs[order], atol=tolerance
    )
    one_by_one = np.concatenate([member.predict_proba([t]) for t in TEXTS])
    assert np.allclose(one_by_one, probs, atol=tolerance)
    assert np.array_equal(member.predict_proba(TEXTS), probs)  # deterministic
    assert member.predict_proba([]).shape == (0, 3)
    votes = member.votes(TEXTS)
    assert [v.member for v in votes] == [member.name] * len(TEXTS)
    assert all(v.model_version == member.version for v in votes)
    assert all(v.label in LABELS for v in votes)
    assert [v.label for v in votes] == [LABELS[i] for i in probs.argmax(axis=1)]
    assert member.describe()["kind"]


def test_lexicon_reads_phrases_negation_and_intensifiers() -> None:
    lex = LexiconMember()
    pos, neg, neutral, negated, sharp, mild = lex.predict_proba(
        [
            "Acme beats estimates and raises guidance",
            "Acme shares plunge after accounting probe",
            "Acme to hold its annual meeting in May",
            "Acme did not miss estimates",
            "Revenue fell sharply",
            "Revenue fell slightly",
        ]
    )
    assert pos.argmax() == 2 and neg.argmax() == 0 and neutral.argmax() == 1
    assert negated[0] < 0.3  # a negated miss is not negative news
    assert sharp[0] > mild[0]


def test_lexicon_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "lex.tsv"
    bad.write_text("# comment\ngood\t1.0\nbroken line\n")
    with pytest.raises(ModelError, match=r"lex\.tsv:3"):
        LexiconMember(bad)


def test_head_round_trips_and_refuses_wrong_shapes(tmp_path: Path) -> None:
    head = random_head(16)
    head.save(tmp_path / "h.json")
    loaded = Head.load(tmp_path / "h.json")
    assert loaded.version == "test-head"
    assert np.allclose(loaded.weight, head.weight, atol=1e-5)
    with pytest.raises(ModelError, match="head must be"):
        Head(np.zeros((16, 2)), np.zeros(3), {})
    with pytest.raises(ModelError, match="run 'riskwire models train'"):
        Head.load(tmp_path / "missing.json")


def test_head_with_a_hidden_layer_round_trips_and_computes_relu_logits(tmp_path: Path) -> None:
    head = random_head(16, hidden=4)
    head.save(tmp_path / "mlp.json")
    loaded = Head.load(tmp_path / "mlp.json")
    assert loaded.hidden is not None and loaded.input_dim == 16 and loaded.version == "test-mlp"
    assert np.allclose(loaded.hidden[0], head.hidden[0], atol=1e-6)  # type: ignore[index]
    x = np.random.default_rng(3).normal(size=(5, 16))
    assert head.hidden is not None
    hidden = np.maximum(x @ head.hidden[0] + head.hidden[1], 0)
    assert np.allclose(loaded.logits(x), hidden @ head.weight + head.bias, atol=1e-4)
    # rows of numbers one to a line: a hidden layer of 128 units stays a few hundred kB
    assert len((tmp_path / "mlp.json").read_text().splitlines()) < 40
    with pytest.raises(ModelError, match="hidden layer must be"):
        Head(np.zeros((4, 3)), np.zeros(3), {}, (np.zeros((16, 5)), np.zeros(5)))


def test_head_files_keep_lists_that_are_not_all_numbers(tmp_path: Path) -> None:
    """Rows of numbers go on one line; a list with a string or a NaN in it is written as JSON
    writes it, and quickly (a pattern that backtracks over every way to cut the digits would
    not finish on this row)."""
    head = random_head(16, hidden=8)
    head.meta["notes"] = ["scaled", 1, 2.5]
    assert head.hidden is not None
    head.hidden[1][:] = 0.1234567
    head.hidden[1][7] = np.nan
    head.save(tmp_path / "odd.json")
    loaded = Head.load(tmp_path / "odd.json")
    assert loaded.meta["notes"] == ["scaled", 1, 2.5]
    assert loaded.hidden is not None and np.isnan(loaded.hidden[1][7])
    assert np.allclose(loaded.hidden[1][:7], 0.123457)


def test_encoder_and_head_must_agree_on_dimensions(tiny_encoder_dir: Path) -> None:
    encoder = SentenceEncoder(str(tiny_encoder_dir))
    with pytest.raises(ModelError, match="expects 8-d embeddings"):
        EmbeddingHeadMember(encoder, random_head(8))


def test_an_unloadable_encoder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load encoder"):
        SentenceEncoder(str(tmp_path / "nowhere"))


def test_embeddings_are_normalised_and_batch_independent(tiny_encoder_dir: Path) -> None:
    encoder = SentenceEncoder(str(tiny_encoder_dir))
    full = encoder.encode(TEXTS, batch_size=64)
    small = encoder.encode(TEXTS, batch_size=2)
    assert np.allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    assert np.allclose(full, small, atol=1e-5)


def test_each_thread_keeps_its_own_shared_embedding_pass(tiny_encoder_dir: Path) -> None:
    # a worker scores two batches at once, in two threads, with heads over one encoder: one
    # thread's heads must never be handed the other thread's remembered batch
    encoder = SentenceEncoder(str(tiny_encoder_dir))
    encoded: list[tuple[str, ...]] = []
    encode = encoder.encode

    def counted(texts: list[str], batch_size: int = 64) -> np.ndarray:
        encoded.append(tuple(texts))
        return encode(texts, batch_size)

    encoder.encode = counted  # type: ignore[method-assign]
    mine, theirs = TEXTS[:3], TEXTS[3:]
    first = encoder.embed(mine)
    with ThreadPoolExecutor(1) as other:
        elsewhere = other.submit(encoder.embed, theirs).result()
    again = encoder.embed(mine)  # remembered here although the other thread embedded since
    assert encoded == [tuple(mine), tuple(theirs)]
    assert np.array_equal(again, first) and elsewhere.shape == (len(theirs), encoder.dim)


def test_an_ensemble_judges_batches_in_threads_as_it_does_one_at_a_time(
    tiny_encoder_dir: Path,
) -> None:
    encoder = SentenceEncoder(str(tiny_encoder_dir))
    heads = [EmbeddingHeadMember(encoder, random_head(encoder.dim, seed), name=f"h{seed}")
             for seed in (1, 2)]  # fmt: skip
    ensemble = Ensemble([*heads, loughran_mcdonald_member()], fusion="soft")
    batches = [[f"{t} ({i})" for t in TEXTS[: 2 + i % 4]] for i in range(40)]
    alone = [ensemble.judge(b) for b in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(ensemble.judge, batches))
    assert together == alone


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_traced_encoder_answers_as_the_model_does(tiny_encoder_dir: Path, precision: str) -> None:
    texts = [*TEXTS, "x", " ".join(["word"] * 300)]  # padded, one cut at max_length
    plain = SentenceEncoder(str(tiny_encoder_dir), precision=precision)
    traced = SentenceEncoder(str(tiny_encoder_dir), precision=precision, trace=True)
    assert plain.traced is None and traced.traced is not None
    assert np.allclose(traced.encode(texts), plain.encode(texts), atol=1e-5)
    assert np.allclose(traced.encode(texts, batch_size=3), plain.encode(texts), atol=1e-5)


def test_a_trace_that_answers_differently_is_not_used(
    tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def wrong(module: torch.nn.Module) -> object:
        return lambda *inputs: module(*inputs) + 1.0

    monkeypatch.setattr(torch.jit, "freeze", wrong)
    encoder = SentenceEncoder(str(tiny_encoder_dir), trace=True)
    assert encoder.traced is None
    plain = SentenceEncoder(str(tiny_encoder_dir))
    assert np.allclose(encoder.encode(TEXTS), plain.encode(TEXTS), atol=1e-6)


def test_the_worker_ensemble_traces_its_transformers_unless_told_not_to(
    tiny_encoder_dir: Path, tiny_classifier_dir: Path, tmp_path: Path
) -> None:
    from models.factory import MemberBuilder
    from riskwire.settings import load_settings

    for setting, expected in ((True, True), (False, False)):
        settings = load_settings(data_dir=tmp_path, device="cpu", trace_models=setting)
        encoder = MemberBuilder(settings).encoder(str(tiny_encoder_dir), "fp32")
        assert (encoder.traced is not None) is expected
        spec = {"member": "hf", "model": str(tiny_classifier_dir), "precision": "bf16"}
        classifier = MemberBuilder(settings).build(spec)
        assert isinstance(classifier, HFClassifierMember)
        assert (classifier.traced is not None) is expected
    spec = {"member": "hf", "model": str(tiny_classifier_dir), "trace": False}  # its spec says
    assert getattr(MemberBuilder(settings).build(spec), "traced", 0) is None
    settings = load_settings(data_dir=tmp_path, device="cpu", trace_models=True)
    spec = {"member": "hf", "model": str(tiny_classifier_dir), "quantize": True}
    assert getattr(MemberBuilder(settings).build(spec), "traced", 0) is None  # int8: not traced


def test_fixed_member_helper_is_sane() -> None:
    member = FixedMember("f", [0.2, 0.5, 0.3], {"bad": [0.8, 0.1, 0.1]})
    probs = member.predict_proba(["ok", "bad news"])
    assert np.allclose(probs, [[0.2, 0.5, 0.3], [0.8, 0.1, 0.1]])


def test_precision_setting_reaches_transformer_members_unless_their_spec_says(
    tmp_path: Path, tiny_encoder_dir: Path, tiny_classifier_dir: Path
) -> None:
    from models.factory import MemberBuilder
    from riskwire.settings import Settings

    random_head(16).save(tmp_path / "head.json")
    # CPU precisions (int8, bf16): on the CPU even where a GPU is present (auto would take it)
    builder = MemberBuilder(Settings(data_dir=tmp_path, precision="int8", device="cpu"), tmp_path)
    classifier = builder.build({"member": "hf", "model": str(tiny_classifier_dir)})
    head = builder.build({"member": "head", "head": "head.json", "encoder": str(tiny_encoder_dir)})
    assert isinstance(classifier, HFClassifierMember) and classifier.quantized
    assert head.version.endswith("-q8") and head.describe()["precision"] == "int8"
    plain = builder.build({"member": "hf", "model": str(tiny_classifier_dir), "precision": "fp32"})
    assert isinstance(plain, HFClassifierMember) and plain.precision == "fp32"
    assert plain.version != classifier.version
    bf16 = builder.build({"member": "hf", "model": str(tiny_classifier_dir), "precision": "bf16"})
    assert isinstance(bf16, HFClassifierMember) and bf16.version.endswith("bf16-L256")
    # bf16 arithmetic: the same labels as fp32, probabilities within a few hundredths
    assert np.array_equal(bf16.predict_proba(TEXTS).argmax(1), plain.predict_proba(TEXTS).argmax(1))
    assert np.allclose(bf16.predict_proba(TEXTS), plain.predict_proba(TEXTS), atol=0.03)
