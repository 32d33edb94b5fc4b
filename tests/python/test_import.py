"""import dynmoe works without torch (torch.ops.dynmoe is then not registered)."""
import subprocess
import sys


def test_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import dynmoe, numpy as np; "
            "assert not dynmoe.torch_ops_registered; r = dynmoe.Router(num_experts=4, top_k=1); "
            "ids, w = dynmoe.route(np.zeros((2, 4), np.float32), r); assert ids.shape == (2, 1); print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
