"""Every place an op touches lists exactly the ops of pipo_kernels._registry: the C++ schemas and
kernel registrations, csrc/ops.h, the Python wrappers and their fake kernels, the references, the
Triton twins, docs/ops.md, the benchmarks and the tests. Adding an op in one place and forgetting
another fails here, with the place named."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch
from torch._library import simple_registry

import pipo.ops
import pipo_kernels
from pipo_kernels import _backend, _registry, reference

ROOT = Path(__file__).resolve().parents[1]
NAMES = set(_registry.NAMES)
TRITON = set(_registry.TRITON_NAMES)


def read(rel: str) -> str:
    return (ROOT / rel).read_text()


def test_registry_itself():
    assert len(_registry.NAMES) == len(NAMES), "an op is listed twice"
    for op in _registry.OPS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", op.name), op.name
        assert not op.name.endswith("_triton"), op.name
    assert _registry.get("pair_out").family == "pair_out"
    with pytest.raises(ValueError, match="name: expected one of kv_cache_append"):
        _registry.get("nope")


def _schemas() -> dict[str, str]:
    """{op name: schema} of the m.def calls in TORCH_LIBRARY(pipo, m)."""
    text = read("csrc/torch_bindings.cpp")
    block = text.split("TORCH_LIBRARY(pipo, m) {", 1)[1].split("\n}\n", 1)[0]
    schemas = {}
    for call in re.findall(r"m\.def\((.*?)\);", block, flags=re.S):
        schema = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', call))
        schemas[schema.split("(", 1)[0]] = schema
    return schemas


def _impls(key: str) -> set[str]:
    text = read("csrc/torch_bindings.cpp")
    block = text.split(f"TORCH_LIBRARY_IMPL(pipo, {key}, m) {{", 1)[1].split("\n}", 1)[0]
    impls = dict(re.findall(r'm\.impl\("(\w+)", &pipo::(\w+)\)', block))
    for name, fn in impls.items():
        assert fn == f"{name}_{key.lower()}", f"torch_bindings.cpp: {name} -> {fn}"
    return set(impls)


def test_bindings_cover_the_registry():
    schemas = _schemas()
    assert set(schemas) == NAMES, "csrc/torch_bindings.cpp TORCH_LIBRARY(pipo, m) schemas"
    assert _impls("CPU") == NAMES, "csrc/torch_bindings.cpp CPU m.impl lines"
    assert _impls("CUDA") == NAMES, "csrc/torch_bindings.cpp CUDA m.impl lines"
    for op in _registry.OPS:
        schema = schemas[op.name]
        written = set(re.findall(r"Tensor\(\w!\) (\w+)", schema))
        assert written == set(op.mutates), f"{op.name}: schema marks {written} as written"
        if op.mutates:
            assert schema.endswith("-> ()"), f"{op.name}: a mutating op returns ()"


def test_ops_h_declares_the_registry():
    text = read("csrc/ops.h")
    assert set(re.findall(r"\b(\w+)_cpu\(", text)) == NAMES, "csrc/ops.h <op>_cpu declarations"
    assert set(re.findall(r"\b(\w+)_cuda\(", text)) == NAMES, "csrc/ops.h <op>_cuda declarations"


@pytest.mark.skipif(not pipo_kernels.HAS_C, reason="pipo_kernels._C is not built")
def test_registered_pipo_ops_are_the_registry():
    """torch.ops.pipo holds the registry's ops and their Triton twins, nothing else."""
    names = {
        n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pipo::")
    }
    expected = NAMES | ({f"{n}_triton" for n in TRITON} if _backend.triton_importable() else set())
    assert names == expected
    for name in NAMES:
        assert _backend.has_kernel(name, "CPU"), name


def test_wrappers_and_fake_kernels():
    for op in _registry.OPS:
        module = importlib.import_module(op.wrapper_module)
        assert op.name in getattr(module, "__all__", ()), f"{op.wrapper_module}.__all__"
        fn = op.wrapper()
        assert getattr(pipo_kernels, op.name, None) is fn, f"pipo_kernels.{op.name}"
        assert getattr(pipo.ops, op.name, None) is fn, f"pipo.ops.{op.name}"
        assert pipo.ops.resolve(op.name) is fn, op.name
        if pipo_kernels.HAS_C:  # the fake kernel, registered by the wrapper module
            fake = simple_registry.singleton.find(f"pipo::{op.name}").fake_impl.kernel
            assert fake is not None, f"{op.name}: no fake kernel (torch.library.register_fake)"
            assert f"pipo_kernels/{op.family}.py" in fake.source, fake.source
        assert "backend: " in (fn.__doc__ or ""), f"{op.name}: document the backend argument"
    for alias, name in _registry.ALIASES.items():
        assert alias not in NAMES, f"alias {alias} is also an op"
        assert getattr(pipo_kernels, alias) is getattr(pipo_kernels, name), f"pipo_kernels.{alias}"
        assert getattr(pipo.ops, alias) is getattr(pipo_kernels, name), f"pipo.ops.{alias}"
    aliases = set(_registry.ALIASES)
    public = (
        set(pipo_kernels.__all__)
        - aliases
        - {
            "HAS_C",
            "__version__",
            "available_backends",
            "reference",
            "resolve",
            "triton_interpreting",
        }
    )
    assert public == NAMES, "pipo_kernels.__all__"
    assert set(pipo.ops.__all__) - {"OPS", "resolve"} == NAMES | aliases
    assert set(pipo.ops.OPS) == NAMES


def test_references():
    for name in NAMES:
        assert name in reference.__all__ and callable(getattr(reference, name)), name


def test_triton_twins():
    files = {p.stem for p in (ROOT / "pipo_kernels" / "triton").glob("*.py")}
    assert files - {"__init__", "_common"} == TRITON, "pipo_kernels/triton/<op>.py files"
    for op in _registry.OPS:
        if not op.triton:
            continue
        source = (ROOT / "pipo_kernels" / "triton" / f"{op.name}.py").read_text()
        assert f'"pipo::{op.name}_triton"' in source, f"{op.name}: registers pipo::{op.name}_triton"
        assert f"\ndef {op.name}(" in source, f"{op.name}: host function {op.name}"
        assert "@triton.jit" in source, f"{op.name}: no Triton kernel"
    if _backend.triton_importable():
        import pipo_kernels.triton as pk_triton

        assert set(pk_triton.__all__) == TRITON


def test_docs_have_one_section_per_op():
    headings = re.findall(r"^### `(\w+)\(", read("docs/ops.md"), flags=re.M)
    assert sorted(headings) == sorted(NAMES), "docs/ops.md: one '### `<op>(...)`' section per op"


def test_benchmarks_and_tests_per_family():
    benches = {p.stem.removeprefix("bench_") for p in (ROOT / "benchmarks").glob("bench_*.py")}
    # bench_e2e and bench_spec time the whole engine, not one op family
    assert benches - {"e2e", "spec"} == set(_registry.FAMILIES), "benchmarks/bench_<family>.py"
    for op in _registry.OPS:
        bench = read(f"benchmarks/bench_{op.family}.py")
        assert re.search(rf"\b{op.name}\b", bench), f"bench_{op.family}.py does not time {op.name}"
        test = read(f"tests/test_{op.family}.py")
        assert re.search(rf"\b{op.name}\b", test), f"test_{op.family}.py does not test {op.name}"
        assert (ROOT / "pipo_kernels" / f"{op.family}.py").is_file(), op.family
