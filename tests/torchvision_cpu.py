"""torchvision for the perception-metric oracles, importable beside a CPU torch."""
import importlib
import sys
import types


def import_torchvision():
    """torchvision, importable even where its compiled ops do not load (PyPI's CUDA torchvision wheel beside a CPU
    torch fails in ``torchvision._meta_registrations``): the models used here are pure Python, so that module is
    stubbed out then."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError:  # operator torchvision::nms does not exist
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        return importlib.import_module("torchvision")
