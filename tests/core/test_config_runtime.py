"""The runtime section and the device key: validated, apart from the paper's hyperparameters."""

from __future__ import annotations

import pytest

from iris_core.config import CommonConfig, ConfigError, IrisConfig, RuntimeConfig


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_known_devices_are_accepted(device: str) -> None:
    assert CommonConfig(device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", "", "CUDA", "tpu"])
def test_unknown_devices_are_rejected_naming_the_key(device: str) -> None:
    with pytest.raises(ConfigError) as error:
        CommonConfig(device=device)
    assert error.value.key == "device" and repr(device) in error.value.message


def test_the_default_is_auto_and_every_runtime_option_follows_the_device() -> None:
    config = IrisConfig()
    assert config.common.device == "auto"
    assert config.runtime == RuntimeConfig()
    assert all(value is None for value in vars(config.runtime).values())
