import pytest

from cellemnet.config import PATH_DIR, Field, load_config, parse_overrides
from cellemnet.errors import ConfigError

SCHEMA = {
    "lr": Field(float, 0.1),
    "epochs": Field(int),
    "cos": Field(bool, False),
    "optim": Field(str, "AdamW", choices=("AdamW", "SGD")),
    "norms": Field(dict, {"mean": [0.5], "std": [0.2]}),
    "data_path": Field(str, ".", path=PATH_DIR),
    "schedule": Field(list, [120, 160]),
}


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_types_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "epochs: 3\nlr: 1\n"), SCHEMA, ["cos=true", "schedule=[1,2]", "norms.mean=[0.3]"])
    assert cfg["epochs"] == 3 and cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["cos"] is True and cfg["schedule"] == [1, 2]
    assert cfg["norms"] == {"mean": [0.3], "std": [0.2]}
    assert cfg["optim"] == "AdamW"


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("epochs: 3\nlrr: 1\n", [], "unknown key 'lrr' (did you mean 'lr'?)"),
        ("lr: 1\n", [], "required key 'epochs'"),
        ("epochs: three\n", [], "key 'epochs' must be int"),
        ("epochs: 3\noptim: Adam\n", [], "must be one of"),
        ("epochs: 3\ndata_path: /no/such/dir\n", [], "directory not found"),
        ("epochs: 3\n", ["bogus=1"], "unknown key 'bogus'"),
        ("epochs: 3\n", ["noequals"], "key=value"),
        ("epochs: [3\n", [], "not valid YAML"),
        ("- 1\n- 2\n", [], "must be a mapping"),
        ("epochs: true\n", [], "got a boolean"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, SCHEMA, overrides)
    assert message in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/no/such.yaml", SCHEMA)


def test_parse_overrides_yaml_values():
    assert parse_overrides(["a=1", "b=x", "c=[1, 2]", "d=null", "e="]) == {
        "a": 1, "b": "x", "c": [1, 2], "d": None, "e": None}


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    from cellemnet.config import read_yaml

    path = tmp_path / "dup.yaml"
    path.write_text("lr: 0.1\nepochs: 3\nlr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: key 'lr' given twice \(lines 1 and 3\)"):
        read_yaml(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("norms:\n  mean: [0.5]\n  mean: [0.6]\n")
    with pytest.raises(ConfigError, match="key 'mean' given twice"):
        read_yaml(nested)
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: {x: 1}\nb: {x: 2}\nlist: [{x: 1}, {x: 2}]\n")
    assert read_yaml(ok) == {"a": {"x": 1}, "b": {"x": 2}, "list": [{"x": 1}, {"x": 2}]}
