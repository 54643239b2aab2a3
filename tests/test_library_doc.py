"""docs/library.md's Python examples work as written (run in order, in a scratch folder)."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def test_library_doc_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert "trainable params:" in capsys.readouterr().out
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert not namespace["torch"].allclose(namespace["base_logits"], namespace["merged_logits"])
    for folder in ("out/trainer/checkpoint-2", "out/sft/final"):  # Trainer and SFTTrainer save adapters
        assert (tmp_path / folder / "adapter_config.json").is_file()
        assert not (tmp_path / folder / "model.safetensors").exists()


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    readme = DOC.parents[1] / "README.md"
    (block,) = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(readme), "exec"), {})
    assert "trainable params:" in capsys.readouterr().out
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


def test_readme_first_commands_match_ci():
    """The README's test command is, verbatim, the one .ci/run runs."""
    root = DOC.parents[1]
    first = re.search(r"```bash\n(.*?)```", (root / "README.md").read_text(), flags=re.S).group(1)
    install_and_run, tests = [line.split("#")[0].strip() for line in first.strip().splitlines()]
    assert install_and_run.endswith("flashbone train")
    assert tests in (root / ".ci" / "run").read_text().splitlines()
