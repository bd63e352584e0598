"""Make torchvision importable on a CPU-only torch (set-up step, run by `make`; never imported by the package).

The registry only has CUDA builds of torchvision; on the CPU torch their compiled extension fails to load and
`import torchvision` dies in `_meta_registrations.py` on `torchvision::nms`. This script checks for that failure
and only then writes a start-up hook into the virtual environment that declares the two missing operator schemas
right before torchvision is first imported. transforms, timm and open_clip then work; torchvision.ops/io do not.
"""
import site
import subprocess
import sys
from pathlib import Path

HOOK_MODULE = '''"""Declares torchvision::nms/qnms schemas before torchvision loads (written by multimeditron's set-up)."""
import importlib.abc
import sys

_LIBRARY = None


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        global _LIBRARY
        if name == "torchvision" and _LIBRARY is None:
            sys.meta_path.remove(self)
            import torch

            _LIBRARY = torch.library.Library("torchvision", "DEF")
            _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _DeclareTorchvisionOps())
'''


def torchvision_imports() -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def main() -> int:
    ok, err = torchvision_imports()
    if ok:
        print("torchvision imports as installed; no shim needed")
        return 0
    if "torchvision::nms" not in err:
        print(f"torchvision fails to import for another reason: {err}", file=sys.stderr)
        return 1
    target = Path(site.getsitepackages()[0])
    (target / "_multimeditron_torchvision_shim.py").write_text(HOOK_MODULE)
    (target / "_multimeditron_torchvision_shim.pth").write_text("import _multimeditron_torchvision_shim\n")
    ok, err = torchvision_imports()
    print("torchvision shim installed" if ok else f"torchvision still fails: {err}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
