"""Rule files: planning options as data (TOML, JSON, YAML), checked before any model is built."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import layerdecay
from layerdecay import ConfigError
from layerdecay.rules import ALLOWED_KEYS, MAX_DEPTH, MAX_SIZE, load_rules, parse_rules

TOML = """\
# rules for fine-tuning
layer_decay = 0.65
weight_decay = 0.05
recipe = "timm"
no_weight_decay = ["head.*", 're:.*\\.alpha']
min_scale = 0

[lr_mult]
head = 10
"blocks.0" = 0.5
"""

EXPECTED = {
    "layer_decay": 0.65,
    "weight_decay": 0.05,
    "recipe": "timm",
    "no_weight_decay": ["head.*", r"re:.*\.alpha"],
    "min_scale": 0.0,
    "lr_mult": {"head": 10.0, "blocks.0": 0.5},
}

JSON = json.dumps(EXPECTED, indent=2)

YAML = """\
layer_decay: 0.65
weight_decay: 0.05
recipe: timm
no_weight_decay:
  - head.*
  - 're:.*\\.alpha'
min_scale: 0
lr_mult:
  head: 10
  blocks.0: 0.5
"""


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, text", [("rules.toml", TOML), ("rules.json", JSON), ("rules.yaml", YAML),
                                        ("rules.yml", YAML)])
def test_the_three_formats_give_the_same_rules(tmp_path, name, text):
    rules = load_rules(write(tmp_path, name, text))
    assert rules == EXPECTED
    assert all(type(rules[k]) is float for k in ("layer_decay", "weight_decay", "min_scale"))
    assert all(type(v) is float for v in rules["lr_mult"].values())


def test_rules_feed_explain(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(2, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
            self.head = nn.Linear(4, 2)

    path = write(tmp_path, "r.toml", 'layer_decay = 0.5\nweight_decay = 0.1\nno_weight_decay = ["head"]\n'
                                     '[lr_mult]\n"blocks.1" = 3.0\n')
    with pytest.warns(layerdecay.LayerDecayWarning):  # the generic fallback decides the layer ids
        plan = layerdecay.explain(Net(), host=layerdecay.create_plugin_host(autoload=False), **load_rules(path))
    # embed -> 0, blocks.i -> i+1, head -> 3: scales 0.5**(3 - id)
    assert plan.row("embed.weight").lr_mult == pytest.approx(0.125)
    assert plan.row("blocks.1.weight").lr_mult == pytest.approx(0.5 * 3.0)
    assert plan.row("blocks.0.weight").weight_decay == pytest.approx(0.1)
    assert plan.row("head.weight").weight_decay == 0.0


def test_only_given_keys_come_back(tmp_path):
    assert load_rules(write(tmp_path, "r.json", '{"layer_decay": 0.8}')) == {"layer_decay": 0.8}
    assert load_rules(write(tmp_path, "e.toml", "")) == {}
    assert load_rules(write(tmp_path, "e.yaml", "")) == {}
    assert load_rules(write(tmp_path, "s.yaml", "no_weight_decay: head\nstrict: true\n")) == {
        "no_weight_decay": ["head"], "strict": True}


def test_unknown_key_is_named_with_line_and_the_allowed_keys(tmp_path):
    path = write(tmp_path, "r.toml", "layer_decay = 0.7\nlayer_decy = 0.7\n")
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    message = str(info.value)
    assert str(path) in message and "line 2" in message and "'layer_decy'" in message
    for key in ALLOWED_KEYS:
        assert key in message


@pytest.mark.parametrize("name, text, line", [
    ("bad.toml", "layer_decay = 0.7\nweight_decay = \n", "line 2"),
    ("bad.toml", 'layer_decay = 0.7\n\n[lr_mult\nhead = 1\n', "line 3"),
    ("bad.json", '{\n  "layer_decay": 0.7,\n  "weight_decay": 0.05,\n}\n', "line 4"),
    ("bad.json", '{"layer_decay": 0.7', "line 1"),
    ("bad.yaml", "layer_decay: 0.7\nlr_mult: {head: 1\nweight_decay: 0.1\n", "line 3"),
    ("bad.yaml", "layer_decay: 0.7\n  weight_decay: [\n", "line 2"),
])
def test_malformed_file_gives_file_and_line(tmp_path, name, text, line):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    assert str(path) in str(info.value)
    assert line in str(info.value)
    assert info.value.__cause__ is not None  # the parser's own error is kept


@pytest.mark.parametrize("text, fragment", [
    ("layer_decay = 0\n", "layer_decay must be > 0"),
    ("layer_decay = nan\n", "layer_decay must be finite"),
    ("layer_decay = inf\n", "layer_decay must be finite"),
    ('layer_decay = "0.7"\n', "layer_decay must be a number"),
    ("layer_decay = true\n", "layer_decay must be a number"),
    ("weight_decay = -0.1\n", "weight_decay must be >= 0"),
    ("min_scale = 2\n", "min_scale must be <= 1"),
    ("recipe = 3\n", "recipe must be a string"),
    ('strict = "yes"\n', "strict must be true or false"),
    ("no_weight_decay = 3\n", "no_weight_decay must be a list"),
    ("no_weight_decay = [3]\n", "no_weight_decay patterns must be strings"),
    ('no_weight_decay = ["re:("]\n', "not a valid regular expression"),
    ('no_weight_decay = [""]\n', "is empty"),
    ('lr_mult = ["head"]\n', "lr_mult must be a table"),
    ("[lr_mult]\nhead = 0\n", "lr_mult['head'] must be > 0"),
    ('[lr_mult]\nhead = "x"\n', "lr_mult['head'] must be a number"),
    ('[lr_mult]\n"re:[" = 2.0\n', "not a valid regular expression"),
])
def test_bad_values_are_named_with_the_file(tmp_path, text, fragment):
    path = write(tmp_path, "r.toml", text)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    assert ("line 2" if text.startswith("[lr_mult]") else "line 1") in str(info.value)


def test_top_level_must_be_a_table(tmp_path):
    with pytest.raises(ConfigError, match="table of options at the top level, got list"):
        load_rules(write(tmp_path, "r.json", "[1, 2]"))
    with pytest.raises(ConfigError, match="got str"):
        load_rules(write(tmp_path, "r.yaml", "just text"))


def test_size_limit(tmp_path):
    path = write(tmp_path, "big.json", '{"layer_decay": 0.7' + " " * MAX_SIZE + "}")
    with pytest.raises(ConfigError, match=f"larger than {MAX_SIZE} bytes"):
        load_rules(path)


def test_nesting_limit(tmp_path):
    deep = {"lr_mult": {"head": {"a": {"b": {"c": 1}}}}}
    with pytest.raises(ConfigError, match=f"more than {MAX_DEPTH} levels"):
        load_rules(write(tmp_path, "deep.json", json.dumps(deep)))
    very_deep = '{"lr_mult": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ConfigError, match="nested"):
        load_rules(write(tmp_path, "very.json", very_deep))


def test_yaml_aliases_cannot_blow_up(tmp_path):
    """A billion-laughs document: shared references are visited once, and the depth limit stops it."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    with pytest.raises(ConfigError, match="levels|unknown key"):
        load_rules(write(tmp_path, "laughs.yaml", "\n".join(lines)))


def test_data_is_never_evaluated(tmp_path, monkeypatch):
    """YAML tags that would construct Python objects are rejected (safe_load), nothing is run."""
    called = []
    monkeypatch.setattr(builtins, "print", lambda *a, **k: called.append(a))
    path = write(tmp_path, "evil.yaml", 'layer_decay: !!python/object/apply:builtins.print ["pwned"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(path)
    assert called == []
    path = write(tmp_path, "evil.toml", 'recipe = "__import__(\'os\').system(\'false\')"\n')
    assert load_rules(path) == {"recipe": "__import__('os').system('false')"}  # only ever a string


def test_unknown_suffix_and_format_argument(tmp_path):
    path = write(tmp_path, "rules.cfg", '{"layer_decay": 0.7}')
    with pytest.raises(ConfigError, match=r"suffix '\.cfg'.*\.toml, \.json, \.yaml"):
        load_rules(path)
    assert load_rules(path, format="json") == {"layer_decay": 0.7}
    with pytest.raises(ConfigError, match="rule format must be"):
        load_rules(path, format="ini")


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_rules(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_rules(write(tmp_path, "latin.toml", 'recipe = "caf\xe9"\n'.encode("latin-1")))


def test_yaml_without_pyyaml_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    with pytest.raises(ConfigError, match=r"needs the 'PyYAML' package \(pip install pyyaml\)"):
        load_rules(write(tmp_path, "r.yaml", "layer_decay: 0.7\n"))


def test_parse_rules_from_text():
    assert parse_rules('{"layer_decay": 0.7}', "json") == {"layer_decay": 0.7}
    with pytest.raises(ConfigError, match="'<cli>'"):
        parse_rules("oops = 1", "toml", source="<cli>")


def test_rules_do_not_touch_torch_state(tmp_path):
    """Reading rules builds nothing: no tensors, no plugin host."""
    before = torch.random.get_rng_state()
    load_rules(write(tmp_path, "r.toml", TOML))
    assert torch.equal(before, torch.random.get_rng_state())
