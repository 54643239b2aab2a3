"""Every reproduction config in recipes/ parses as `flashbone train --config` flags and builds its
run (data fields, method, rank, targets, schedule) on a tiny stand-in for its model and data."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from flashbone import cli, loading
from flashbone.commands import _train_steps as st
from flashbone.commands import train as train_cmd

# the papers' LLM and GLUE experiments (recipes/<kind>/...); other recipes at the top level have their own tests
KINDS = ("math", "code", "chat", "rank", "glue")
RECIPES = sorted(p for k in KINDS for p in (Path(__file__).resolve().parents[1] / "recipes" / k).glob("*.yaml"))
# the columns each hub dataset the recipes name really has (their documented layouts)
HUB_COLUMNS = {
    "meta-math/MetaMathQA": ("query", "response"),
    "m-a-p/CodeFeedback-Filtered-Instruction": ("query", "answer"),
    "WizardLMTeam/WizardLM_evol_instruct_70k": ("instruction", "output"),
}
MODELS = {"meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1", "FacebookAI/roberta-base"}


def test_the_papers_experiments_are_all_there():
    names = {str(p.relative_to(p.parents[1])) for p in RECIPES}
    for task in ("math", "code", "chat"):
        for model in ("llama2-7b", "mistral-7b"):
            for method in ("bone", "bat", "bat-row", "lora", "pissa", "olora", "dora"):
                assert f"{task}/{model}-{method}.yaml" in names
    assert {f"rank/llama2-7b-bone-r{r}.yaml" for r in (16, 32, 64, 128)} <= names
    for task in ("mnli", "sst2", "cola", "qnli", "mrpc"):
        for method in ("lora", "pissa", "bone"):
            assert {f"glue/roberta-base-{task}-{method}-seed{s}.yaml" for s in (0, 1, 2)} <= names


def _args(recipe: Path, out: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    train_cmd.add_arguments(parser)
    cli.apply_config_file(parser, str(recipe))  # unknown keys fail here
    return parser.parse_args(["--out", str(out)])


@pytest.fixture(scope="module")
def stand_ins():
    """A Llama-shaped model whose sides 128/256 take r=16..128 and bat's blocks, and a RoBERTa."""
    from transformers import LlamaConfig, LlamaForCausalLM, RobertaConfig

    vocab = len(loading.load_tokenizer(None))  # the built-in tokenizer's, which the stand-ins are run with
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    roberta = RobertaConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=80,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=0,
    )
    return llama, roberta


def _rows(source: str, **_) -> datasets.Dataset:
    if source.startswith("nyu-mll/glue"):
        raise AssertionError("GLUE goes through resolve_source")
    assert source in HUB_COLUMNS, f"a recipe names unknown data {source!r}"
    q, r = HUB_COLUMNS[source]
    return datasets.Dataset.from_list(
        [{q: f"What is {i} + {i}?", r: f"{i} + {i} = {2 * i}\nThe answer is: {2 * i}"} for i in range(8)]
    )


@pytest.mark.parametrize(
    "recipe", [p for p in RECIPES if "/glue/" not in str(p)], ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_causal_recipe_builds(recipe, tmp_path, monkeypatch, stand_ins):
    llama, _ = stand_ins
    monkeypatch.setattr(loading, "load_tokenizer", lambda name, **kw: _TOKENIZER)
    monkeypatch.setattr(loading, "load_model", lambda name, dtype=None, device=None, **kw: copy.deepcopy(llama))
    monkeypatch.setattr("flashbone.data.load_rows", _rows)
    spec = yaml.safe_load(recipe.read_text())
    assert spec["model"] in MODELS
    v = train_cmd._resolve(_args(recipe, tmp_path / "run"))
    assert v.recipe == "paper" and v.batch_size * v.grad_accum == 64 and v.lr == 2e-5
    ctx = st.load_base(v, torch.device("cpu"))
    st.attach_method(v, ctx)
    adapted = ctx.adapted
    assert adapted.method == spec["method"] and v.r == spec["r"] and adapted.n_trainable > 0
    assert v.targets_resolved == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert len(ctx.rows) == 8


_TOKENIZER = loading.load_tokenizer(None)


def test_glue_seeds_differ_only_in_seed_and_out():
    """Seeds 1 and 2 are seed 0's run with another seed (seed 0's build is tested below)."""
    for p in RECIPES:
        if "/glue/" in str(p) and p.stem.endswith(("seed1", "seed2")):
            a = yaml.safe_load(p.read_text())
            b = yaml.safe_load(p.with_name(p.name[: -len("seed1.yaml")] + "seed0.yaml").read_text())
            assert a["seed"] == int(p.stem[-1]) and b["seed"] == 0
            assert {k: v for k, v in a.items() if k not in ("seed", "out")} == {
                k: v for k, v in b.items() if k not in ("seed", "out")
            }


@pytest.mark.parametrize(
    "recipe", [p for p in RECIPES if "/glue/" in str(p) and p.stem.endswith("seed0")], ids=lambda p: p.stem
)
def test_glue_recipe_builds(recipe, tmp_path, monkeypatch, stand_ins, capsys):
    """The whole `flashbone train --config` run, its training loop replaced by a check of the
    settings it was given (the model and GLUE data replaced by tiny stand-ins)."""
    from transformers import RobertaForSequenceClassification

    from flashbone import classification as cls

    _, roberta = stand_ins
    spec = yaml.safe_load(recipe.read_text())
    task = cls.GLUE_TASKS[spec["data"].split("/")[1]]
    seen = {}

    def classifier(name, num_labels, dtype=None, device=None, **_):
        assert name == "FacebookAI/roberta-base"
        cfg = copy.deepcopy(roberta)
        cfg.num_labels = num_labels
        return RobertaForSequenceClassification(cfg)

    def rows(source, split="train", subset=None, **_):
        assert (source, subset) == ("nyu-mll/glue", task.name) and split in ("train", task.dev_split)
        return datasets.Dataset.from_list(
            [
                {
                    task.text: f"text {i}",
                    **({task.pair: "pair"} if task.pair else {}),
                    "label": i % task.num_labels,
                    "idx": i,
                }
                for i in range(6)
            ]
        )

    def fake_train(model, train_rows, pad_id, settings, out_dir):
        seen["settings"] = settings
        (out_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7, "lr": 0.0}\n')  # what loss.png reads
        return {"steps": 0, "final_loss": None, "tokens": 0, "train_seconds": 0.0}

    monkeypatch.setattr(cls, "load_classifier", classifier)
    monkeypatch.setattr(cls, "train", fake_train)
    monkeypatch.setattr("flashbone.data.load_rows", rows)
    monkeypatch.setattr(loading, "load_tokenizer", lambda name, **kw: _TOKENIZER)
    rc = cli.main(["train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = seen["settings"]
    assert (s.lr, s.batch_size, s.epochs, s.seed, s.warmup_ratio, s.weight_decay) == (
        spec["lr"],
        spec["batch-size"],
        spec["epochs"],
        spec["seed"],
        0.06,
        0.1,
    )
    assert f"{spec['method']} r={spec['r']} on query,value + head classifier" in out
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
