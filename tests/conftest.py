import os
import sys
import tempfile

import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # convert/ and experiments/
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests never see the user's converted models or compilation cache: a fresh jtaba home for the session.
os.environ["JTABA_HOME"] = tempfile.mkdtemp(prefix="jtaba-test-home-")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "_tfds_never_downloads"))


import convert.common  # noqa: E402,F401  (makes an installed torchvision importable before any test imports it)


@pytest.fixture(autouse=True)
def _highest_precision():
    """Parity tests compare fp32 against torch: no reduced-precision matmuls."""
    with jax.default_matmul_precision("highest"):
        yield
