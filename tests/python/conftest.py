"""pytest setup for dynmoe's Python tests: they test the installed package
(pip install . or the wheel of scripts/build-wheel.sh), never the source folder."""
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # reference.py


def pytest_report_header(config):
    try:
        import dynmoe
    except ImportError as e:
        raise pytest.UsageError(f"dynmoe is not installed ({e}): run pip install . (repository root) first")
    lines = [f"dynmoe {dynmoe.__version__} from {pathlib.Path(dynmoe.__file__).parent} "
             f"(lib {dynmoe.version()}, cuda {dynmoe.cuda_available()}, torch ops {dynmoe.torch_ops_registered})"]
    return lines
