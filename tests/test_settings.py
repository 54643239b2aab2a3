"""The GPU settings object: every FLASHBONE_* variable feeds one typed field."""

import pytest

from flashbone.errors import BoneConfigError
from flashbone.ops import get_backend, use_backend
from flashbone.settings import SETTINGS, Settings


def test_defaults_without_variables():
    assert Settings.from_env({}) == Settings()
    assert Settings().padded is None and Settings().kernel_min_elements == 1 << 23


def test_every_variable_reaches_its_field():
    s = Settings.from_env(
        {
            "FLASHBONE_BACKEND": "torch",
            "FLASHBONE_KERNELS": "0",
            "FLASHBONE_KERNEL_MIN_ELEMENTS": "1024",
            "FLASHBONE_PADDED": "bat-row, bone",
            "FLASHBONE_GROUPS": "0",
            "FLASHBONE_REPLAY": "0",
            "FLASHBONE_REPLAY_FUSED": "0",
            "FLASHBONE_KERNEL_CONFIG": '{"weight_grad": {"num_warps": 4}}',
        }
    )
    assert s == Settings(
        backend="torch",
        kernels=False,
        kernel_min_elements=1024,
        padded=("bat-row", "bone"),
        groups=False,
        replay=False,
        replay_fused=False,
        kernel_config={"weight_grad": {"num_warps": 4}},
    )
    assert Settings.from_env({"FLASHBONE_PADDED": "0"}).padded == ()
    assert Settings.from_env({"FLASHBONE_PADDED": "1"}).padded is None


@pytest.mark.parametrize(
    "env,message",
    [
        ({"FLASHBONE_KERNEL_MIN_ELEMENTS": "lots"}, r"FLASHBONE_KERNEL_MIN_ELEMENTS='lots': expected an integer"),
        ({"FLASHBONE_KERNEL_CONFIG": "{nope"}, r"FLASHBONE_KERNEL_CONFIG is not valid JSON"),
        ({"FLASHBONE_KERNEL_CONFIG": "[1]"}, r"FLASHBONE_KERNEL_CONFIG: expected"),
    ],
)
def test_malformed_variables_name_themselves(env, message):
    with pytest.raises(BoneConfigError, match=message):
        Settings.from_env(env)


def test_the_backend_switch_is_the_settings_field():
    with use_backend("reference"):
        assert SETTINGS.backend == "reference" == get_backend()
    assert SETTINGS.backend == "auto"
