"""Provider registry, APTConfig files and overrides, schedules."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from apt.core import APTConfig
from apt.core import ProviderRegistry
from apt.core import Schedule
from apt.errors import ConfigError
from apt.errors import ProviderError


def test_registry_lookup_default_fallback_and_info(caplog: pytest.LogCaptureFixture) -> None:
    reg = ProviderRegistry(builtins=False)
    reg.register("ffn", "dense", dict, default=True)
    reg.register("ffn", "wide", list)
    assert reg.get("ffn", "wide") is list
    assert reg.get("ffn", "dense", config={"a": 1}) == {"a": 1}
    with caplog.at_level(logging.WARNING):
        assert reg.get("ffn", "wid") is dict
    assert "no ffn provider 'wid' (did you mean 'wide'?); using the default 'dense' instead" in caplog.text
    assert reg.get_info("ffn", "dense") == {
        "kind": "ffn",
        "name": "dense",
        "is_default": True,
        "plugin": None,
        "version": None,
    }
    assert reg.list_providers() == {"ffn": ["dense", "wide"]}
    reg.register("ffn", "wide", tuple, default=True)
    assert reg.default_name("ffn") == "wide" and not reg.get_info("ffn", "dense")["is_default"]
    reg.unregister("ffn", "wide")
    assert reg.list_providers("ffn") == ["dense"]


def test_registry_errors_and_new_kinds() -> None:
    reg = ProviderRegistry(builtins=False)
    with pytest.raises(ProviderError, match=r"unknown provider kind 'atention' \(did you mean 'attention'\?\)"):
        reg.get("atention", "x")
    with pytest.raises(ProviderError, match=r"no provider router:topk; registered router providers: none"):
        reg.build("router", "topk")
    reg.register("retrieval", "bm25", dict)  # a plugin may add a kind
    assert reg.build("retrieval", "bm25", k=3) == {"k": 3}
    with pytest.raises(ProviderError, match="must be a callable factory"):
        reg.register("ffn", "bad", 42)  # type: ignore[arg-type]


def test_builtin_providers_are_lazy() -> None:
    reg = ProviderRegistry()
    info = reg._entry("ffn", "gelu")
    assert info is not None
    assert isinstance(info.factory, str)  # nothing imported yet
    assert reg.default_name("attention") == "causal" and reg.default_name("optimizer") == "adamw"


def test_yaml_round_trip_and_file_errors(tmp_path: Path) -> None:
    cfg = APTConfig(plugins=["moe"], training={"max_epochs": 3}, moe={"top_k": 1}, schedules={"enable_moe_at_epoch": 1})
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    back = APTConfig.from_yaml(path)
    assert back.to_dict() == cfg.to_dict() and back.section("moe") == {"top_k": 1}
    with pytest.raises(ConfigError, match="does not exist"):
        APTConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("training:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' line \d+ is not valid YAML"):
        APTConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("model:\n  n_layers: 3\n")
    with pytest.raises(
        ConfigError, match=r"typo.yaml: unknown config key 'model.n_layers' \(did you mean 'n_layer'\?\)"
    ):
        APTConfig.from_yaml(tmp_path / "typo.yaml")


def test_dotted_overrides() -> None:
    cfg = APTConfig().with_overrides(["training.max_epochs=3", "model.ffn=swiglu", "moe.top_k=1", "plugins=[moe]"])
    assert cfg.training.max_epochs == 3 and cfg.model.ffn == "swiglu" and cfg.section("moe") == {"top_k": 1}
    assert cfg.plugins == ["moe"]
    with pytest.raises(ConfigError, match=r"unknown config key 'training.max_epoch' \(did you mean 'max_epochs'\?\)"):
        APTConfig().with_overrides(["training.max_epoch=3"])
    with pytest.raises(ConfigError, match="must look like KEY=VALUE"):
        APTConfig().with_overrides(["training.max_epochs"])
    with pytest.raises(ConfigError, match=r"config key 'training.lr': Input should be a valid number"):
        APTConfig().with_overrides(["training.lr=fast"])


def test_schedules_toggles_and_annealing() -> None:
    s = Schedule(
        {
            "enable_moe_at_epoch": 2,
            "enable_align_at_step": 5,
            "disable_align_at_epoch": 3,
            "moe_capacity": {"start": 2.0, "end": 1.0, "by": "step"},
            "w": {"start": 0.0, "end": 1.0, "by": "epoch", "curve": "cosine", "until": 2},
        }
    )
    s.bind(total_epochs=4, steps_per_epoch=10)
    assert [s.should_enable_plugin("moe", epoch=e) for e in range(4)] == [False, False, True, True]
    assert [s.should_enable_plugin("align", step=t) for t in (4, 5, 29, 30)] == [False, True, True, False]
    assert s.should_enable_plugin("other", epoch=0)
    assert s.get_param("moe_capacity", step=0) == 2.0
    assert s.get_param("moe_capacity", step=20) == pytest.approx(1.5)
    assert s.get_param("moe_capacity", step=99) == 1.0
    assert s.get_param("w", epoch=1) == pytest.approx(0.5)
    with pytest.raises(
        ConfigError, match=r"no annealed parameter 'moe_capacty' in schedules \(did you mean 'moe_capacity'\?\)"
    ):
        s.get_param("moe_capacty", step=0)
    with pytest.raises(ConfigError, match=r"'schedules.enable_moe_at_epok' is not a schedule"):
        Schedule({"enable_moe_at_epok": 1})
    with pytest.raises(ConfigError, match=r"schedules.cap.curv"):
        Schedule({"cap": {"start": 1, "end": 2, "curv": "linear"}})


def test_schedule_errors_name_the_exact_key() -> None:
    with pytest.raises(
        ConfigError, match="'schedules.enable_moe_at_epoch' and 'schedules.enable_moe_at_step' both"
    ) as e:
        Schedule({"enable_moe_at_epoch": 2, "enable_moe_at_step": 500})
    assert e.value.key == "schedules.enable_moe_at_step"
    Schedule({"enable_moe_at_epoch": 2, "disable_moe_at_step": 500})  # one toggle of each kind: fine
    for key in ("disable_algn_at_step", "enable_algn_at_epoch"):
        with pytest.raises(ConfigError, match="schedules name plugin 'algn' \\(did you mean 'align'") as e:
            Schedule({key: 3}).check_plugins({"align", "moe"})
        assert e.value.key == f"schedules.{key}"


def test_plugins_leave_the_registry_as_they_found_it_in_any_unload_order() -> None:
    """Two or three plugins add providers, shadow core ones and take the default, in every combination;
    unloading them in any order gives back the core providers and the core default."""
    import itertools

    actions = {  # (name, default): a new provider, or one under a core provider's name
        "new_default": ("moe{}", True), "new": ("x{}", False), "shadow_gelu": ("gelu", False),
        "shadow_gelu_default": ("gelu", True), "shadow_swiglu": ("swiglu", False),
        "shadow_swiglu_default": ("swiglu", True),
    }  # fmt: skip

    def snapshot(reg: ProviderRegistry) -> Any:
        names = reg.list_providers("ffn")
        assert isinstance(names, list)
        infos = [reg.get_info("ffn", n) for n in names]
        return reg.default_name("ffn"), [(i["name"], i["plugin"], i["is_default"]) for i in infos]

    fresh = snapshot(ProviderRegistry())
    for n in (2, 3):
        for acts in itertools.product(actions, repeat=n):
            names = [actions[a][0].format(i) for i, a in enumerate(acts)]
            if len(set(names)) < n:
                continue  # two plugins under one name: a conflict, refused at registration
            for order in itertools.permutations(range(n)):
                reg = ProviderRegistry()
                for i, (name, default) in enumerate(actions[a] for a in acts):
                    with reg.registering_for(f"p{i}", "1.0"):
                        reg.register("ffn", name.format(i), lambda: None, default=default)
                for i in order:
                    reg.unregister_plugin(f"p{i}")
                assert snapshot(reg) == fresh, (acts, order)


def test_overrides_keep_text_as_text_and_reach_nested_plugin_keys() -> None:
    config = APTConfig().with_overrides(
        ["run.name=2026-11-26", "data.path=0123", "training.lr=0.1", "moe.router.top_k=1", "moe.when=2026-01-01"]
    )
    assert (config.run.name, config.data.path, config.training.lr) == ("2026-11-26", "0123", 0.1)
    assert config.section("moe") == {"router": {"top_k": 1}, "when": "2026-01-01"}


def test_resume_paths_reach_the_trainer_as_given() -> None:
    import argparse

    from apt.cli._train import config_from_args

    for path in ("2026-11-26", "0123", "on", "My runs: v2/ckpt"):
        args = argparse.Namespace(config=None, overrides=[], resume=path, no_plugins=True, plugins=None)
        assert config_from_args(args).training.resume == path


def test_replacing_the_default_under_its_own_name_keeps_it_the_default() -> None:
    registry = ProviderRegistry()

    class MyGelu:
        pass

    registry.register("ffn", "gelu", MyGelu)
    assert registry.default_name("ffn") == "gelu" and registry.get("ffn") is MyGelu
    assert registry.get_info("ffn", "gelu")["is_default"]


def test_model_shape_is_checked_with_the_keys_named() -> None:
    with pytest.raises(ConfigError, match=r"model.d_model \(128\) must be divisible by model.n_head \(3\)"):
        APTConfig(model={"n_head": 3})
