"""runtime.create_session: the options the server asks for reach onnxruntime."""

from __future__ import annotations

import pytest

from mlos_core.runtime import create_session
from tests.support.onnx_models import mlp_model


@pytest.mark.parametrize("spinning", [True, False])
def test_intra_op_options_reach_the_session(spinning: bool) -> None:
    info = create_session(mlp_model(features=4, out=3, seed=1).SerializeToString(), "cpu", intra_op_threads=2,
                          intra_op_spinning=spinning)
    opts = info.session.get_session_options()
    assert info.provider == "CPUExecutionProvider"
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")
