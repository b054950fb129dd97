"""`riskwire models train | fuse | eval` end to end on tiny models, with the model registry."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from models.finetune import FinetuneConfig
from riskwire.cli import models_train
from tests.riskwire.test_cli import riskwire


def registry(data_dir: Path) -> dict[str, dict]:
    engine = create_engine(f"sqlite:///{data_dir / 'riskwire.db'}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT name, version, description FROM model_versions"))
        return {r.name: {"version": r.version, **json.loads(r.description)} for r in rows}


@pytest.mark.slow
def test_train_fuse_and_evaluate_through_the_cli(
    tmp_path: Path, tiny_encoder_dir: Path, fixtures_dir: Path
) -> None:
    env = {"RISKWIRE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    data = str(fixtures_dir / "labelled.jsonl")
    head = tmp_path / "heads" / "tiny-head.json"
    result = riskwire("models", "train", "--kind", "head", "--data", data, "--name", "tiny-head",
                      "--base", str(tiny_encoder_dir), "--hidden", "8", "--out", str(head),
                      env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation macro-F1" in result.stdout and head.is_file()
    tuned = tmp_path / "tuned"
    result = riskwire("models", "train", "--kind", "finetune", "--data", data, "--name", "tuned",
                      "--base", str(tiny_encoder_dir), "--out", str(tuned), "--epochs", "2",
                      "--batch-size", "8", "--max-length", "32", "--patience", "3",
                      env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step " in result.stdout and (tuned / "riskwire.json").is_file()
    config = json.loads((tuned / "riskwire.json").read_text())["config"]
    assert config["patience"] == 3 and config["pooling"] == "mean"
    assert (tuned / "pooling.json").is_file()  # the mean-pooled classifier by default
    result = riskwire("models", "train", "--kind", "finetune", "--data", data, "--name", "x",
                      "--out", str(tmp_path / "x"), "--pooling", "max", env=env)  # fmt: skip
    assert result.returncode == 2 and "--pooling 'max': choose one of mean, cls" in result.stdout
    known = registry(tmp_path / "data")
    assert known["tiny-head"]["data_sha256"] and "val_macro_f1" in known["tiny-head"]["metrics"]
    assert known["tiny-head"]["hidden"] == 8  # a head with a hidden layer, through fuse and eval
    assert known["tuned"]["kind"] == "hf-classifier" and known["tuned"]["base"]

    members = tmp_path / "members.json"
    members.write_text(json.dumps({"name": "tiny", "members": [
        {"member": "finlex"}, {"member": "finvader"},
        {"member": "head", "name": "tiny-head", "head": "heads/tiny-head.json",
         "encoder": str(tiny_encoder_dir)},
        {"member": "hf", "name": "tuned", "model": "tuned", "max_length": 32},
    ]}))  # fmt: skip
    fitted = tmp_path / "elsewhere" / "fitted.json"  # relative member paths are rewritten
    result = riskwire("models", "fuse", "--members", str(members), "--data", data, "--split",
                      "all", "--fusion", "stacking", "--out", str(fitted), env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    spec = json.loads(fitted.read_text())
    assert spec["fusion"]["strategy"] == "stacking" and len(spec["fusion"]["params"]["bias"]) == 3
    assert registry(tmp_path / "data")["tiny"]["version"] == spec["version"]

    report = tmp_path / "report"
    result = riskwire("models", "eval", "--data", data, "--ensemble", str(fitted), "--json",
                      "--report", str(report), env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert body["n"] == 30 and set(body["members"]) == {"finlex", "finvader", "tiny-head", "tuned"}
    keys = {"accuracy", "macro_f1", "weighted_f1", "ece", "docs_per_s"}
    assert all(set(m) == keys for m in [*body["members"].values(), body["fused"]])
    # the stacker was fitted on these very rows: it must at least match its best member here
    assert body["fused"]["macro_f1"] >= max(m["macro_f1"] for m in body["members"].values())
    versus = body["fused_minus_members"]  # with a paired bootstrap's interval per member
    assert set(versus) == set(body["members"])
    for name, figures in versus.items():
        assert figures["difference"] == pytest.approx(
            body["fused"]["macro_f1"] - body["members"][name]["macro_f1"], abs=2e-4
        )
        assert figures["low"] <= figures["difference"] <= figures["high"]
    assert (report / "report.png").stat().st_size > 10_000
    assert "| **fused** |" in (report / "report.md").read_text()
    assert "paired bootstrap" in (report / "report.md").read_text()

    result = riskwire("models", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    listed = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"tiny-head", "tuned", "tiny", "finlex"} <= set(listed)
    assert listed["tiny"]["version"] == spec["version"]
    result = riskwire("models", "list", "--name", "tuned", env=env)
    assert result.returncode == 0 and "tuned" in result.stdout and "tiny-head" not in result.stdout

    # a routing file: each file's rows go to the ensemble for their kind
    routing = tmp_path / "elsewhere" / "routing.yaml"
    majority = tmp_path / "elsewhere" / "lexicons.json"
    majority.write_text(json.dumps({"name": "lexicons", "members": [
        {"member": "finlex"}, {"member": "finvader"}], "fusion": {"strategy": "majority"}}))  # fmt: skip
    routing.write_text("ensembles: {news: fitted.json, social: lexicons.json}\n"
                       "routes: [{kind: social, ensemble: social}]\ndefault: news\n")  # fmt: skip
    result = riskwire("models", "eval", "--data", data, "--data", data, "--kind", "news",
                      "--kind", "social", "--ensemble", str(routing), "--json",
                      "--report", str(tmp_path / "routed"), env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    routed = json.loads(result.stdout)
    assert routed["n"] == 60 and routed["ensemble"].startswith("router-")
    assert set(routed["members"]) == {"finlex", "finvader", "tiny-head", "tuned"}
    result = riskwire("models", "eval", "--data", data, "--kind", "news", "--kind", "social",
                      "--ensemble", str(routing), env=env)  # fmt: skip
    assert result.returncode != 0 and "2 --kind for 1 --data" in result.stdout + result.stderr

    result = riskwire("models", "eval", "--data", data, "--ensemble", "nonesuch", env=env)
    assert result.returncode != 0 and "no ensemble 'nonesuch'" in result.stdout + result.stderr


def test_the_train_command_defaults_to_the_fine_tuning_defaults() -> None:
    """The CLI spells its fine-tuning defaults out (its imports stay lazy); they must not drift
    from ``FinetuneConfig``'s."""
    options = inspect.signature(models_train).parameters
    shared = [f for f in fields(FinetuneConfig) if f.name in options]
    assert {f.name for f in shared} >= {"epochs", "patience", "learning_rate", "batch_size"}
    for f in shared:
        assert options[f.name].default == f.default, f.name


@pytest.mark.slow
def test_fuse_prune_leaves_out_a_member_that_adds_nothing(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """Two copies of one member: either adds nothing the other does not, so at most one of them
    stays; the written file says what was dropped and scores like any other."""
    env = {"RISKWIRE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    data = str(fixtures_dir / "labelled.jsonl")
    members = tmp_path / "members.json"
    members.write_text(json.dumps({"name": "copies", "members": [
        {"member": "finlex"}, {"member": "finvader"}, {"member": "finvader", "name": "again"},
    ]}))  # fmt: skip
    fitted = tmp_path / "pruned.json"
    result = riskwire("models", "fuse", "--members", str(members), "--data", data, "--split",
                      "all", "--fusion", "soft", "--prune", "--out", str(fitted), env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pruning: cross-validated on the fitting rows (3 units of cost)" in result.stdout
    spec = json.loads(fitted.read_text())
    names = [m.get("name", m["member"]) for m in spec["members"]]
    pruned = spec["fitted_on"]["pruned"]
    assert {"finvader", "again"} & set(pruned["dropped"]) and len(names) < 3
    assert sorted(names + pruned["dropped"]) == ["again", "finlex", "finvader"]
    assert 0 < pruned["cost_share"] < 1 and "without" in result.stdout
    assert len(spec["fusion"]["params"]["weights"]) == len(names)
    result = riskwire("models", "eval", "--data", data, "--ensemble", str(fitted), "--json",
                      env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["members"]) == set(names)
