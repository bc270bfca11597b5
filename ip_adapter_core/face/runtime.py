"""onnxruntime, imported only when a face model is read or run, and the one shared session per file.

``sessions(files, providers)`` gives the detector's and the recogniser's ``InferenceSession``; every pipeline built
from the same files (same ``checkpoint.file_key``) and providers gets the same two sessions, so the weights are held
once however many nodes use them. A file that changed on disk gets fresh sessions and the stale ones are dropped.
``signature(path)`` reads a model's inputs and outputs (names, shapes, element types) through onnxruntime, without
the ``onnx`` package, once per file version.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass

from ..checkpoint import file_key
from ..errors import CorruptFileError, InputError

log = logging.getLogger(__name__)

ORT_MISSING = "FaceID needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA)"



class OnnxRuntimeMissingError(InputError):
    """onnxruntime does not import: FaceID cannot run (the message says what to install)."""


_lock = threading.Lock()
_sessions: dict = {}      # (file_key, providers) -> InferenceSession
_signatures: dict = {}    # file_key -> Signature


def onnxruntime(where: str | None = None):
    """The onnxruntime module, or InputError saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:  # also what ``sys.modules['onnxruntime'] = None`` gives
        raise OnnxRuntimeMissingError(f"{where}: {ORT_MISSING}." if where else f"{ORT_MISSING}.") from None
    return ort


def available_providers(*, where: str | None = None) -> tuple[str, ...]:
    """onnxruntime's execution providers on this machine (e.g. CUDAExecutionProvider, CPUExecutionProvider)."""
    return tuple(onnxruntime(where).get_available_providers())


def _provider_name(p) -> str:
    return str(p[0]) if isinstance(p, (tuple, list)) else str(p)


def _freeze(p):
    if isinstance(p, (tuple, list)):  # (name, {options})
        return (str(p[0]), tuple(sorted((str(k), str(v)) for k, v in dict(p[1] if len(p) > 1 else {}).items())))
    return str(p)


def resolve_providers(providers, *, where: str | None = None) -> tuple:
    """The requested providers that this onnxruntime has, in order; InputError when none of them is there."""
    if isinstance(providers, str):
        providers = (providers,)
    requested = tuple(_freeze(p) for p in (providers or ("CPUExecutionProvider",)))
    have = set(available_providers(where=where))
    usable = tuple(p for p in requested if _provider_name(p) in have)
    dropped = [_provider_name(p) for p in requested if _provider_name(p) not in have]
    if not usable:
        raise InputError(f"{where + ': ' if where else ''}none of the onnxruntime providers "
                         f"{', '.join(map(repr, dropped))} is available here; this onnxruntime has "
                         f"{', '.join(sorted(have))} (install onnxruntime-gpu for CUDAExecutionProvider).")
    if dropped:
        log.info("IPAdapter FaceID: onnxruntime providers %s not available here, using %s", dropped,
                 [_provider_name(p) for p in usable])
    return usable


def _ort_providers(frozen: tuple) -> list:
    return [p if isinstance(p, str) else (p[0], dict(p[1])) for p in frozen]


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    text = text.split(" : ")[-1]  # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from ... failed: ..."
    text = re.sub(r"^Load model from .*? failed:\s*", "", text).rstrip(".")
    return text[:240] + ("..." if len(text) > 240 else "")


def _new_session(path: str, providers: list, *, optimise: bool = True):
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / RuntimeException types
        raise CorruptFileError(f"{os.path.basename(path)}: onnxruntime cannot load it as an ONNX model "
                               f"({_short(exc)}).") from None


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple     # ints for fixed axes, None for named / free ones
    type: str        # "tensor(float)", ...


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def describe(self) -> str:
        def one(ts):
            return ", ".join(f"{t.name}[{','.join('?' if d is None else str(d) for d in t.shape)}]" for t in ts)
        return f"inputs {one(self.inputs)}; outputs {one(self.outputs)}"


def _dims(shape) -> tuple:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in (shape or ()))


def signature(path: str) -> Signature:
    """Inputs and outputs of an ONNX file, read by onnxruntime (CorruptFileError when it cannot load it)."""
    key = file_key(path)
    with _lock:
        if key in _signatures:
            return _signatures[key]
    sess = _new_session(path, ["CPUExecutionProvider"], optimise=False)
    sig = Signature(tuple(Tensor(t.name, _dims(t.shape), t.type) for t in sess.get_inputs()),
                    tuple(Tensor(t.name, _dims(t.shape), t.type) for t in sess.get_outputs()))
    del sess
    with _lock:
        for k in [k for k in _signatures if k[0] == key[0] and k != key]:
            del _signatures[k]
        _signatures[key] = sig
    return sig


def session(path: str, providers=("CPUExecutionProvider",), *, where: str | None = None):
    """The shared InferenceSession of one file version and provider list (loaded on first use)."""
    frozen = resolve_providers(providers, where=where)
    key = (file_key(path), frozen)
    with _lock:  # one loader at a time: two nodes asking for the same file load it once
        sess = _sessions.get(key)
        if sess is None:
            for k in [k for k in _sessions if k[0][0] == key[0][0] and k[0] != key[0]]:
                del _sessions[k]  # the file changed on disk
            sess = _sessions[key] = _new_session(path, _ort_providers(frozen))
        return sess


@dataclass(frozen=True)
class FaceSessions:
    detector: object
    recognizer: object


def sessions(files, providers=("CPUExecutionProvider",), *, where: str | None = None) -> FaceSessions:
    """The detector's and recogniser's shared sessions for a ``FaceModelFiles``."""
    return FaceSessions(session(files.detector, providers, where=where),
                        session(files.recognizer, providers, where=where))


def loaded_sessions() -> int:
    """How many sessions the shared cache holds (for tests and the benchmark)."""
    with _lock:
        return len(_sessions)


def clear_sessions() -> None:
    """Drop every shared session and cached signature (they are rebuilt on next use)."""
    with _lock:
        _sessions.clear()
        _signatures.clear()
