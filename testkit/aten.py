"""AtenLog: the aten ops run inside a block (tests and bench count with it)."""
from __future__ import annotations


class AtenLog:
    """Records the name of every aten op run while active (tensor allocations included)."""

    def __enter__(self) -> "AtenLog":
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = self.ops = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ops.append(func.name())
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)

    def syncs(self) -> list[str]:
        """Ops that read a tensor value on the host (.item() and friends)."""
        return [o for o in self.ops if "_local_scalar_dense" in o]
