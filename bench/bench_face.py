"""Face pipeline cost on the CPU: ip_adapter_core.face next to insightface on the same ONNX files.

Run ``python3 scripts/bench_face.py`` (``--help`` for the options). Nothing is downloaded: the models are the test kit's
(testkit/onnx_faces.py) with buffalo_l's I/O signatures and small random weights, so the figures measure the
pipeline around the networks (letterbox, decode, NMS, alignment, blobs, session calls), not det_10g / w600k_r50's
own compute, which is the same onnxruntime call on both sides.

- per image: detect + embed every face found, median over ``--rounds``; det 640 and 320; 1 and 5 faces (planted
  detector, bright discs), and the random detector on scikit-image's astronaut (many "faces": detect + the best
  face's embedding). insightface's column runs ``FaceAnalysis.get`` (detection + recognition) on the BGR image;
  ratio = ours / insightface.
- sessions: two pipelines built from the same files share their two sessions (the weights are held once); two
  insightface ``FaceAnalysis`` objects hold two sets. RSS growth of each, in MB, with a ``--memory-mb`` recogniser.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings

import numpy as np



def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def median_ms(*fns, rounds: int) -> list[float]:
    """Median wall time of each function in ms, the functions alternated call by call (so a busy machine slows
    them alike and the ratios hold)."""
    for fn in fns:
        fn()  # warm: the first call builds caches (and, in insightface 2.1, a session per det size)
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) * 1000 for ts in times]


def blob_scene(n_faces: int, det_size: int):
    """A 1280x960 image with ``n_faces`` discs that the planted detector finds at ``det_size`` (radius 7 canvas px,
    centres on the stride-8 grid of the letterbox canvas)."""
    from testkit.onnx_faces import blob_image

    w, h = 1280, 960
    s = det_size / w  # letterbox scale (wide image: new_w = det_size)
    centres = []
    for i in range(n_faces):
        cx, cy = 8 * round((0.15 + 0.17 * i) * det_size / 8), 8 * round(0.3 * det_size / 8)
        centres.append(((cx + 0.5) / s - 0.5, (cy + 0.5) / s - 0.5))
    return blob_image(h, w, centres, 7 / s, values=[255 - 5 * i for i in range(n_faces)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed calls per case (median); default 20")
    ap.add_argument("--sizes", default="640,320", help="det sizes; default 640,320")
    ap.add_argument("--no-insightface", action="store_true", help="time this pack only")
    ap.add_argument("--memory-mb", type=int, default=100, help="recogniser size for the memory figure; default 100")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore", FutureWarning)

    from ip_adapter_core.face import FacePipeline, find_face_models, resample
    from testkit import onnx_faces

    app_cls = None
    if not args.no_insightface:
        try:
            from insightface.app import FaceAnalysis as app_cls
        except Exception as exc:  # noqa: BLE001 - any import failure just drops the column
            print(f"insightface not importable ({type(exc).__name__}: {exc}); timing this pack only")

    tmp = tempfile.mkdtemp(prefix="bench_face_")
    roots = {"planted": os.path.join(tmp, "planted"), "random": os.path.join(tmp, "random")}
    for kind, root in roots.items():
        onnx_faces.buffalo_folder(root, detector=kind)

    pipes = {k: FacePipeline(find_face_models([r], where="bench", check_hash=False)) for k, r in roots.items()}
    print(f"resize / warp backend: {resample.resolve_backend('auto')}; onnxruntime providers: "
          f"{pipes['planted'].providers}")

    apps = {}
    if app_cls is not None:
        for k, r in roots.items():
            apps[k] = app_cls(name="buffalo_l", root=r, allowed_modules=["detection", "recognition"],
                              providers=["CPUExecutionProvider"])

    import skimage.data

    cases = []
    for size in sizes:
        for n in (1, 5):
            cases.append((f"planted, {n} face{'s' if n > 1 else ''}", "planted", size, blob_scene(n, size), "all"))
        cases.append(("random, astronaut 512x512", "random", size, skimage.data.astronaut(), "best"))

    print(f"\n{'case':28} {'det':>4} {'faces':>6} {'ours ms':>9} {'detect ms':>10} {'insightface ms':>15} {'ratio':>6}")
    for label, kind, size, img, which in cases:
        pipe = pipes[kind]
        faces, _ = pipe.detect(img, det_sizes=(size,))

        def ours():
            fs, _ = pipe.detect(img, det_sizes=(size,))
            for f in (fs if which == "all" else fs[:1]):
                pipe.embedding(img, f)

        def detect_only():
            pipe.detect(img, det_sizes=(size,))

        t_theirs = ratio = ""
        if kind in apps:
            app = apps[kind]
            app.prepare(ctx_id=-1, det_size=(size, size))
            bgr = np.ascontiguousarray(img[..., ::-1])
            if which == "all":
                def theirs():
                    app.get(bgr)
            else:  # insightface embeds every face; the fair pair is its detector + one recognition call
                rec = app.models["recognition"]
                from insightface.app.common import Face

                def theirs():
                    det, kps = app.det_model.detect(bgr, input_size=(size, size))
                    rec.get(bgr, Face(bbox=det[0, :4], kps=kps[0], det_score=det[0, 4]))

            t_ours, t_det, t = median_ms(ours, detect_only, theirs, rounds=args.rounds)
            t_theirs, ratio = f"{t:.2f}", f"{t_ours / t:.2f}"
        else:
            t_ours, t_det = median_ms(ours, detect_only, rounds=args.rounds)
        print(f"{label:28} {size:>4} {len(faces):>6} {t_ours:>9.2f} {t_det:>10.2f} {t_theirs:>15} {ratio:>6}")

    memory(args.memory_mb, tmp, app_cls)


def memory(mb: int, tmp: str, app_cls) -> None:
    """RSS growth of building a pipeline twice on one folder whose recogniser is about ``mb`` MB."""
    from ip_adapter_core.face import FacePipeline, find_face_models, loaded_sessions
    from testkit import onnx_faces

    root = os.path.join(tmp, "big")
    folder = os.path.join(root, "models", "buffalo_l")
    onnx_faces.planted_detector(os.path.join(folder, "det_10g.onnx"))
    onnx_faces.random_recognizer(os.path.join(folder, "w600k_r50.onnx"), features=max(1, mb * 2**20 // 2048))
    size = os.path.getsize(os.path.join(folder, "w600k_r50.onnx")) / 2**20
    files = find_face_models([root], where="bench", check_hash=False)
    n0, r0 = loaded_sessions(), rss_mb()
    first = FacePipeline(files)
    r1 = rss_mb()
    second = FacePipeline(find_face_models([root], where="bench", check_hash=False))
    r2 = rss_mb()
    shared = second._det is first._det and second._rec is first._rec
    print(f"\nsessions, recogniser file {size:.0f} MB: pipeline 1 RSS +{r1 - r0:.0f} MB, pipeline 2 on the same files "
          f"+{r2 - r1:.0f} MB (sessions shared: {shared}; {loaded_sessions() - n0} loaded for both)")
    if app_cls is not None:
        held, rss = [], [rss_mb()]
        for _ in range(2):
            held.append(app_cls(name="buffalo_l", root=root, allowed_modules=["detection", "recognition"],
                                providers=["CPUExecutionProvider"]))
            rss.append(rss_mb())
        print(f"insightface: FaceAnalysis 1 RSS +{rss[1] - rss[0]:.0f} MB, FaceAnalysis 2 on the same files "
              f"+{rss[2] - rss[1]:.0f} MB")

if __name__ == "__main__":
    main()
