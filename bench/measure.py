"""Measurement tools of the benchmark, shared with tests/host/test_cost.py: aten op and host-sync counting, FLOPs,
per-step probes, and tensor-storage walks for "bytes duplicated by clone()". Imports no ComfyUI module."""
from __future__ import annotations

import contextlib
import types
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# ------------------------------------------------------------------------------------------- measurement tools

# aten ops that make the host wait for the device: .item()/float()/bool()/`if tensor` end in _local_scalar_dense;
# the others have a data-dependent output size or a host-side result.
SYNC_OPS = frozenset({"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.masked_select",
                      "aten.equal", "aten._unique2", "aten.unique_consecutive", "aten.unique_dim"})
_COPY_OPS = frozenset({"aten._to_copy", "aten.copy_", "aten._copy_from", "aten._copy_from_and_resize"})
D2H = "device-to-host copy"
HOST_METHODS = ("cpu", "numpy", "tolist")


def _counting(method: Callable, counter: Counter, label: str) -> Callable:
    def call(self, *args, **kwargs):
        if self.device.type == "cpu":
            counter[label] += 1
        return method(self, *args, **kwargs)

    return call


def _tensors(x: Any) -> Iterable[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)


def storage_key(t: torch.Tensor) -> tuple[str, int]:
    s = t.untyped_storage()
    return (str(s.device), s.data_ptr())


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside it, the synchronising ones, and the ops that read a watched tensor
    storage (e.g. the adapter's to_k_ip / to_v_ip weights): ``watched`` by op name, ``touched`` by storage."""

    def __init__(self, watch: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.syncs: Counter = Counter()
        self.watched: Counter = Counter()
        self.touched: Counter = Counter()
        self._watch = {storage_key(t) for t in watch}
        self._saved: dict[str, Any] = {}

    def __enter__(self):
        # .cpu() / .numpy() / .tolist() of a CPU tensor dispatch nothing, yet each is a sync when the tensor is on a
        # GPU: count the Python calls on CPU tensors too (GPU tensors are caught as device-to-host copies below).
        for name in HOST_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, _counting(getattr(torch.Tensor, name), self.syncs, f"Tensor.{name}()"))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, saved in self._saved.items():
            if saved is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, saved)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        self.ops[name] += 1
        if name in SYNC_OPS:
            self.syncs[name] += 1
        elif name in _COPY_OPS:
            src = args[1] if name == "aten.copy_" else args[0]
            dst = args[0] if name == "aten.copy_" else out
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.device.type != "cpu" \
                    and dst.device.type == "cpu":
                self.syncs[D2H] += 1
        if self._watch:
            touched = {storage_key(t) for t in _tensors(list(args) + list(kwargs.values()))} & self._watch
            if touched:
                self.watched[name] += 1
                self.touched.update(touched)
        return out

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU SDPA kernel (torch's registry only knows the CUDA ones)."""
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_flash_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


@dataclass
class StepRecord:
    """One model call (one sampling step, cond and uncond batched)."""

    cond_or_uncond: list
    batch: int
    ops: Counter = field(default_factory=Counter)
    syncs: Counter = field(default_factory=Counter)
    watched: Counter = field(default_factory=Counter)
    touched: Counter = field(default_factory=Counter)
    flops: int = 0
    call: tuple | None = None

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())


class StepProbe:
    """A ComfyUI ``model_function_wrapper`` that runs every model call under the measurements asked for.

    Always counts aten ops, syncs and the ops reading ``watch`` storages; flops: also count FLOPs; keep_call: keep the
    call's arguments so it can be replayed (time ratios). ``calls`` holds one StepRecord per model call.
    """

    def __init__(self, *, flops: bool = False, watch: Iterable[torch.Tensor] = (), keep_call: bool = False) -> None:
        self.flops, self.keep_call = flops, keep_call
        self.watch = list(watch)
        self.calls: list[StepRecord] = []

    def __call__(self, apply_model: Callable, args: dict) -> torch.Tensor:
        x, t, c = args["input"], args["timestep"], args["c"]
        rec = StepRecord(cond_or_uncond=list(args["cond_or_uncond"]), batch=int(x.shape[0]))
        if self.keep_call:
            rec.call = (apply_model, x, t, c)
        fc = flop_counter() if self.flops else contextlib.nullcontext()
        oc = OpCounter(self.watch)
        with fc, oc:  # OpCounter innermost: it sees the ops as dispatched, before FlopCounterMode decomposes any
            out = apply_model(x, t, **c)
        rec.ops, rec.syncs, rec.watched, rec.touched = oc.ops, oc.syncs, oc.watched, oc.touched
        if self.flops:
            rec.flops = fc.get_total_flops()
        self.calls.append(rec)
        return out


def probe_sampling(sample: Callable[[Any], Any], model_patcher: Any, probe: StepProbe) -> list[StepRecord]:
    """Run ``sample(model)`` on a clone of ``model_patcher`` whose model function wrapper is ``probe``, in inference
    mode as ComfyUI runs every prompt; ``model_patcher`` is not changed. One record per model call."""
    m = model_patcher.clone()
    m.set_model_unet_function_wrapper(probe)
    with torch.inference_mode():
        sample(m)
    return probe.calls


_LEAVES = (str, bytes, int, float, complex, bool, type(None), type, types.ModuleType, types.BuiltinFunctionType,
           torch.device, torch.dtype, torch.Size)


def tensor_storages(root: Any) -> dict[tuple[str, int], int]:
    """Every tensor storage reachable from ``root`` -> its size in bytes.

    Follows containers, object attributes (``__dict__`` and ``__slots__``), module parameters/buffers, bound
    methods' ``__self__`` and closure cells, the values of WeakKeyDictionary; not globals, classes or weak values.
    """
    seen: set[int] = set()
    found: dict[tuple[str, int], int] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, _LEAVES) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta" and obj.untyped_storage().nbytes() > 0:
                found[storage_key(obj)] = obj.untyped_storage().nbytes()
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, weakref.WeakKeyDictionary):
            stack.extend(obj.data.values())
        elif isinstance(obj, (weakref.WeakValueDictionary, weakref.ref)):
            continue
        elif isinstance(obj, types.MethodType):
            stack.append(obj.__self__)
        elif isinstance(obj, types.FunctionType):
            stack.extend(c.cell_contents for c in (obj.__closure__ or ()) if _cell_filled(c))
        else:
            stack.extend(vars(obj).values() if hasattr(obj, "__dict__") else ())
            for klass in type(obj).__mro__:
                for slot in getattr(klass, "__slots__", ()):
                    if isinstance(slot, str) and hasattr(obj, slot):
                        stack.append(getattr(obj, slot))
    return found


def _cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def duplicated_bytes(original: Any, copy: Any) -> int:
    """Bytes of tensor storages reachable from ``copy`` that ``original`` does not reach (0 = everything shared)."""
    before = tensor_storages(original)
    return sum(n for k, n in tensor_storages(copy).items() if k not in before)


def module_bytes(module: torch.nn.Module) -> dict[tuple[str, int], int]:
    return {storage_key(t): t.untyped_storage().nbytes() for t in list(module.parameters()) + list(module.buffers())}
