import inspect
import json
import sys

import pytest

from gboost.search.config import METHODS, ConfigError, SearchConfig
from gboost.cost import CostRecord


def test_defaults_are_valid_and_documented():
    c = SearchConfig()
    assert c.method == "gboost" and c.action_policy == "both"
    assert (c.num_simulations, c.uct_c, c.slm_width, c.collab_width) == (16, 0.2, 2, 1)
    assert c.fusion_rule == "loglinear" and c.fusion_alpha == 0.5
    assert c.step_delimiter == "\n\n" and c.final_choice == "best_path" and c.prm_aggregation == "min"
    src = inspect.getsource(sys.modules[SearchConfig.__module__])
    for name in c.to_dict():  # every field has a comment line
        assert f"    {name}:" in src
        idx = src.index(f"    {name}:")
        assert src[:idx].rstrip().splitlines()[-1].strip().startswith("#:"), name


@pytest.mark.parametrize("kw,msg", [
    ({"method": "mcts"}, "method='mcts': must be one of gboost, slm"),
    ({"num_simulations": 0}, "num_simulations=0: must be >= 1"),
    ({"uct_c": -1}, "uct_c"),
    ({"slm_width": 0, "collab_width": 0}, "slm_width + collab_width"),
    ({"method": "beam", "slm_width": 0}, "children per beam"),
    ({"prm_aggregation": "max"}, "prm_aggregation"),
    ({"final_choice": "vote"}, "final_choice"),
    ({"fusion_alpha": 1.5}, "fusion_alpha=1.5: must be in [0, 1]"),
    ({"fusion_rule": "avg"}, "fusion_rule"),
    ({"top_p": 0.0}, "top_p"),
    ({"temperature": "hot"}, "temperature='hot': must be a number"),
    ({"num_simulations": 2.5}, "must be an integer"),
    ({"num_simulations": True}, "must be an integer"),
    ({"dedup_children": 1}, "must be true or false"),
    ({"max_llm_calls": -1}, "max_llm_calls=-1"),
    ({"answer_pattern": "(unclosed"}, "not a valid regex"),
    ({"step_delimiter": ""}, "step_delimiter"),
    ({"rsd_threshold": 2}, "rsd_threshold"),
    ({"action_policy": "random"}, "action_policy"),
])
def test_validation_errors(kw, msg):
    with pytest.raises(ConfigError) as e:
        SearchConfig(**kw)
    assert msg in str(e.value)


def test_unknown_keys_are_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'num_simulation' \(did you mean 'num_simulations'\?\)"):
        SearchConfig.from_dict({"num_simulation": 3})
    with pytest.raises(ConfigError):
        SearchConfig.from_dict(["method"])


def test_from_file_json_and_toml(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"method": "beam", "beam_width": 3, "uct_c": 2, "max_llm_calls": None}))
    c = SearchConfig.from_file(p)
    assert (c.method, c.beam_width, c.uct_c, c.max_llm_calls) == ("beam", 3, 2.0, None)
    assert isinstance(c.uct_c, float)
    t = tmp_path / "c.toml"
    t.write_text('[search]\nmethod = "rsd"\nrsd_threshold = 0.6\nstep_delimiter = "\\n"\n')
    c = SearchConfig.from_file(t)
    assert (c.method, c.rsd_threshold, c.step_delimiter) == ("rsd", 0.6, "\n")
    t.write_text('num_simulations = 0\n')
    with pytest.raises(ConfigError, match=r"c\.toml:1: num_simulations=0"):
        SearchConfig.from_file(t)
    t.write_text('num_simulations = \n')
    with pytest.raises(ConfigError, match="cannot parse"):
        SearchConfig.from_file(t)
    with pytest.raises(ConfigError, match="not found"):
        SearchConfig.from_file(tmp_path / "missing.json")
    y = tmp_path / "c.yaml"
    y.write_text("method: slm")
    with pytest.raises(ConfigError, match="unsupported config format"):
        SearchConfig.from_file(y)


def test_replace_validates_and_sampling_view():
    c = SearchConfig().replace(temperature=0.0, seed=5)
    assert c.temperature == 0.0 and c.seed == 5
    with pytest.raises(ConfigError):
        SearchConfig().replace(temperature=-1)
    with pytest.raises(ConfigError):
        SearchConfig().replace(nope=1)
    s = SearchConfig(fusion_alpha=0.3).sampling()
    assert s["fusion_alpha"] == 0.3 and s["step_delimiter"] == "\n\n" and s["max_step_tokens"] == 256


def test_cost_record_merge_roundtrip_and_minus():
    a = CostRecord(slm_tokens=10, llm_tokens=5, llm_calls=1, llm_faults={"llm_timeout": 1}, wall_s={"expand": 1.0})
    b = CostRecord(slm_tokens=1, prm_tokens=7, prefix_cache_tokens=3, llm_faults={"llm_timeout": 2, "x": 1},
                   wall_s={"expand": 0.5, "score": 0.25})
    snap = a.copy()
    a.merge(b)
    assert (a.slm_tokens, a.llm_tokens, a.prm_tokens, a.prefix_cache_tokens) == (11, 5, 7, 3)
    assert a.llm_faults == {"llm_timeout": 3, "x": 1} and a.total_faults == 4
    assert a.wall_s == {"expand": 1.5, "score": 0.25}
    assert CostRecord.from_dict(a.to_dict()) == a
    d = a.minus(snap)
    assert d.slm_tokens == 1 and d.llm_faults == {"llm_timeout": 2, "x": 1} and d.wall_s["expand"] == 0.5
    with pytest.raises(ValueError):
        CostRecord.from_dict({"tokens": 1})


@pytest.mark.parametrize("seed, ok", [(0, True), (-1, True), (2**64 - 1, True), (-(2**63), True),
                                      (2**64, False), (-(2**63) - 1, False), (2**70, False), (True, False)])
def test_seeds_are_what_torch_generators_take(seed, ok):
    """One check (gboost.sampling.check_seed) for SearchConfig, SamplingParams and every route."""
    import torch

    from gboost.sampling import SamplingParams
    if ok:
        SearchConfig(seed=seed)
        SamplingParams(seed=seed).generator()   # and torch agrees
        torch.Generator().manual_seed(seed)
        return
    with pytest.raises(ConfigError, match=r"seed.*integer" + (r".*\[-2\*\*63, 2\*\*64 - 1\]" if seed is not True else "")):
        SearchConfig(seed=seed)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=seed)


@pytest.mark.parametrize("name, text, want", [
    ("trunc.json", '{\n  "num_simulations": 4,\n  "max_depth": 3,\n', r"trunc\.json:4: cannot parse JSON: "),
    ("unknown.json", '{\n  "num_simulations": 4,\n  "num_simulatons": 3\n}\n',
     r"unknown\.json:3: unknown search config key\(s\): 'num_simulatons' \(did you mean 'num_simulations'\?\)"),
    ("type.json", '{\n  "num_simulations": "four",\n  "max_depth": 3\n}\n',
     r"type\.json:2: num_simulations='four': must be an integer"),
    ("range.json", '{"max_depth": 3,\n "uct_c": -1}', r"range\.json:2: uct_c=-1.0: must be a finite number >= 0"),
    ("bad.toml", '[search]\nnum_simulations = 4\nmax_depth = = 3\n', r"bad\.toml:3: cannot parse TOML: "),
    ("type.toml", '[search]\nnum_simulations = 4\nuct_c = "x"\n', r"type\.toml:3: uct_c='x': must be a number"),
    ("unknown.toml", 'num_simulations = 4\n\nwidth = 2\n', r"unknown\.toml:3: unknown search config key\(s\): 'width'"),
    ("list.json", '[1, 2]', r"list\.json: search config must be a mapping, got list"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, r"deep\.json: cannot parse JSON"),
    ("conf.yaml", "num_simulations: 4", r"conf\.yaml: unsupported config format '\.yaml'"),
])
def test_bad_config_files_are_one_line_naming_file_and_line(tmp_path, name, text, want):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=want) as e:
        SearchConfig.from_file(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_missing_and_binary_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.json"):
        SearchConfig.from_file(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="is a directory"):
        SearchConfig.from_file(tmp_path)
    (tmp_path / "bin.json").write_bytes(b'{"seed": 1}\xff')
    with pytest.raises(ConfigError, match=r"bin\.json: not UTF-8 text"):
        SearchConfig.from_file(tmp_path / "bin.json")


def test_a_config_file_extends_another(tmp_path):
    (tmp_path / "base.toml").write_text('[search]\nnum_simulations = 6\nmax_depth = 5\nuct_c = 0.4\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "mid.json").write_text(json.dumps({"extends": "../base.toml", "max_depth": 7}))
    (sub / "top.toml").write_text('extends = "mid.json"\nuct_c = 0.1\n')
    c = SearchConfig.from_file(sub / "top.toml")
    # each file's own keys win over what it extends; paths are relative to the extending file
    assert (c.num_simulations, c.max_depth, c.uct_c) == (6, 7, 0.1)
    assert SearchConfig.from_file(sub / "mid.json").uct_c == 0.4
    # a bad key is reported at its line in the file that sets it, named by that file
    (tmp_path / "base.toml").write_text('[search]\nnum_simulations = 6\n\nmax_depth = -1\n')
    with pytest.raises(ConfigError, match=r"base\.toml:4: max_depth=-1"):
        SearchConfig.from_file(tmp_path / "base.toml")
    (sub / "fix.toml").write_text('extends = "../base.toml"\nuct_c = 0.1\n')
    with pytest.raises(ConfigError, match=r"base\.toml:4: max_depth=-1"):
        SearchConfig.from_file(sub / "fix.toml")
    (sub / "over.toml").write_text('extends = "../base.toml"\nmax_depth = 3\n')
    assert SearchConfig.from_file(sub / "over.toml").max_depth == 3  # the override hides the base's bad value


@pytest.mark.parametrize("files, want", [
    ({"a.toml": 'extends = "b.toml"\n', "b.toml": 'extends = "a.toml"\n'}, r"a\.toml: 'extends' goes round in a circle"),
    ({"a.toml": 'extends = "a.toml"\n'}, r"a\.toml: 'extends' goes round in a circle"),
    ({"a.toml": 'max_depth = 3\nextends = 3\n'}, r"a\.toml:2: extends must be the path of a config file"),
    ({"a.toml": 'extends = "gone.toml"\n'}, r"config file not found: .*gone\.toml"),
    ({"a.toml": 'extends = "b.json"\n', "b.json": '{"max_depth": 3,'}, r"b\.json:1: cannot parse JSON"),
])
def test_bad_extends_are_one_line_errors(tmp_path, files, want):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=want) as e:
        SearchConfig.from_file(tmp_path / "a.toml")
    assert "\n" not in str(e.value)


def test_every_benchmark_config_loads_and_names_its_method():
    from pathlib import Path
    files = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "configs").glob("*.toml"))
    assert files
    for f in files:
        cfg = SearchConfig.from_file(f)  # validates, following `extends`
        assert cfg.method in METHODS, f
    bon = SearchConfig.from_file(files[0].with_name("gsm8k_bon_head.toml"))
    beam = SearchConfig.from_file(files[0].with_name("gsm8k_beam_head.toml"))
    head = SearchConfig.from_file(files[0].with_name("gsm8k_gboost_head.toml"))
    for cfg in (bon, beam):  # the baselines sample and choose as the G-Boost they are compared with
        assert (cfg.temperature, cfg.top_p, cfg.prm_aggregation, cfg.final_choice) == \
            (head.temperature, head.top_p, head.prm_aggregation, head.final_choice)
    assert (bon.method, bon.bon_n, beam.method, beam.beam_width, beam.slm_width) == ("bon", 4, "beam", 2, 2)


def test_prm_kind_defaults_fill_only_unset_keys(tmp_path):
    """A value head's config starts from its kind's defaults (PRM_KIND_DEFAULTS); a key the user
    sets wins, a judge keeps the dataclass defaults, and an unknown kind is refused."""
    from gboost.search.config import PRM_KIND_DEFAULTS, prm_kind_of
    assert PRM_KIND_DEFAULTS["value_head"]["prm_aggregation"] != SearchConfig().prm_aggregation
    assert SearchConfig.from_dict({}, "value_head").prm_aggregation == "last"
    head = SearchConfig.from_dict({}, "value_head")  # the search chosen on dev lines (rsd's rule in the tree)
    assert (head.action_policy, head.gate_threshold, head.gate_replaces, head.collab_width, head.delegate_width) \
        == ("gate", 0.5, True, 0, 1)
    for key, value in PRM_KIND_DEFAULTS["value_head"].items():
        assert getattr(SearchConfig(), key) != value, key  # each entry changes something
    assert SearchConfig.from_dict({"prm_aggregation": "min"}, "value_head").prm_aggregation == "min"
    assert SearchConfig.from_dict({}, "judge") == SearchConfig() == SearchConfig.from_dict({})
    with pytest.raises(ConfigError, match="prm_kind='oracle'"):
        SearchConfig.from_dict({}, "oracle")
    f = tmp_path / "c.toml"
    f.write_text('[search]\nnum_simulations = 3\n')
    got = SearchConfig.from_file(f, "value_head")
    assert (got.num_simulations, got.prm_aggregation) == (3, "last")
    f.write_text('[search]\nprm_aggregation = "mean"\n')
    assert SearchConfig.from_file(f, "value_head").prm_aggregation == "mean"
    assert prm_kind_of("value-head:/x") == prm_kind_of(None, "value_head") == "value_head"
    assert prm_kind_of("qwen2.5-coder-1.5b", "judge") == "judge" and prm_kind_of(None) == "judge"


@pytest.mark.parametrize("argv,want", [(["--prm", "value-head:/h"], "last"),
                                       (["--prm-kind", "value_head", "--prm", "/h"], "last"),
                                       ([], "min"), (["--prm", "value-head:/h", "--config", "{cfg}"], "mean")])
def test_cli_config_takes_the_defaults_of_its_prm_kind(tmp_path, argv, want):
    from gboost.cli import _search_config, build_parser
    f = tmp_path / "c.toml"
    f.write_text('prm_aggregation = "mean"\n')
    for cmd in ("solve", "eval", "serve"):
        extra = {"solve": ["q"], "eval": ["--data", "d.jsonl"], "serve": ["--solve"]}[cmd]
        args = build_parser().parse_args([cmd, *[a.format(cfg=f) for a in argv], *extra])
        assert _search_config(args).prm_aggregation == want, cmd
