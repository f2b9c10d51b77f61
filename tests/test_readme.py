"""README is the operator's reference: every configuration key and every BACnet point is documented."""
from __future__ import annotations

from pathlib import Path

from bacnet_api.points import POINTS
from ven.config import GatewayConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            yield from _keys(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_config_key_is_documented():
    missing = [k for k in _keys(GatewayConfig) if f"`{k}`" not in README]
    assert not missing, f"README lacks configuration keys: {missing}"


def test_every_point_is_in_the_point_table():
    for p in POINTS:
        assert f"| {p.object_id} | {p.name} |" in README, p.name


def test_example_config_shows_every_key():
    import re

    example = (Path(__file__).resolve().parent.parent / "examples" / "gateway.toml").read_text()
    missing = [k for k in _keys(GatewayConfig)
               if not re.search(rf"^#? ?{k.rpartition('.')[2]} =", example, re.M)]
    assert not missing, f"examples/gateway.toml lacks: {missing}"
