"""`flashbone generate`: prompt in, text out, with or without an adapter, chat template when there is one."""

from cli_helpers import flashbone
from tiny_models import randomize_adapters

from flashbone import BoneConfig, get_bone_model, load_adapter
from flashbone.commands.generate import format_prompts
from flashbone.generation import generate
from flashbone.loading import load_model, load_tokenizer


def test_generate_with_and_without_an_adapter(tmp_path, capsys):
    bm = get_bone_model(load_model(None), BoneConfig(variant="bat", r=16))
    randomize_adapters(bm, std=0.2)
    bm.save_adapter(tmp_path / "adapter")
    args = ["generate", "--prompt", "What is 3 + 4?", "--prompt", "Name a colour.", "--max-new-tokens", "12"]
    rc, plain, err = flashbone(capsys, *args)
    assert rc == 0, err
    rc, adapted, err = flashbone(capsys, *args, "--adapter", tmp_path / "adapter")
    assert rc == 0, err
    tok = load_tokenizer(None)
    prompts, stops = format_prompts(tok, ["What is 3 + 4?", "Name a colour."], None, True)
    expected = generate(
        load_adapter(load_model(None), tmp_path / "adapter"),
        tok,
        prompts,
        max_new_tokens=12,
        batch_size=2,
        stops=stops,
        progress=False,
    )
    assert adapted.splitlines() == [t.strip() for t in expected]
    assert plain != adapted and len(plain.splitlines()) == 2


def test_chat_template_when_the_tokenizer_has_one():
    tok = load_tokenizer(None)
    plain = format_prompts(tok, ["hi"], None, True)  # no chat template: the plain template
    tok.chat_template = (
        "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    )
    assert format_prompts(tok, ["hi"], None, True) == (["<u>hi</u><a>"], [])
    assert format_prompts(tok, ["hi"], None, False) == plain
    prompts, stops = format_prompts(tok, ["hi"], "alpaca", True)  # an explicit template wins
    assert "hi" in prompts[0] and prompts[0] != "hi" and stops


def test_generate_needs_a_prompt(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        flashbone(capsys, "generate")
    assert e.value.code == 2 and "--prompt" in capsys.readouterr().err


def test_generate_bad_adapter_is_one_error(tmp_path, capsys):
    from cli_helpers import one_line_error

    rc, _, err = flashbone(capsys, "generate", "--prompt", "hi", "--adapter", tmp_path / "nothing")
    one_line_error(rc, err, "nothing", "does not exist")
