"""Alignment (ip_adapter_core.face.align): Umeyama against hand-made similarity transforms, the ArcFace template
table of shared/reference/faceid.md §1.3, and the warp's torch fallback against cv2 (within one grey level)."""
from __future__ import annotations

import numpy as np
import pytest

from ip_adapter_core.errors import InputError
from ip_adapter_core.face import align as A
from ip_adapter_core.face import resample


def _similarity(scale, angle, tx, ty):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty], [0, 0, 1.0]])


@pytest.mark.parametrize("scale, angle, tx, ty", [(1.7, 0.3, 12.0, -5.0), (0.25, -1.2, 300.0, 41.5),
                                                  (1.0, 0.0, 0.0, 0.0), (3.1, 3.0, -7.0, 2.0)])
def test_umeyama_recovers_a_known_similarity(scale, angle, tx, ty):
    src = A.ARCFACE_DST.astype(np.float64)
    t = _similarity(scale, angle, tx, ty)
    dst = src @ t[:2, :2].T + t[:2, 2]
    got = A.umeyama(src, dst)
    assert got.dtype == np.float64 and got.shape == (3, 3)
    assert np.allclose(got, t, atol=1e-10)


def test_umeyama_least_squares_and_no_reflection():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    t = _similarity(2.0, 0.7, 5.0, -3.0)
    noise = rng.normal(0, 0.5, (5, 2))
    dst = src @ t[:2, :2].T + t[:2, 2] + noise
    got = A.umeyama(src, dst)

    def residual(m):
        return float(((src @ m[:2, :2].T + m[:2, 2] - dst) ** 2).sum())

    # the least-squares optimum: no worse than the true transform, and any nudge of its parameters is worse
    assert residual(got) <= residual(t)
    for d in (np.eye(3) * [1.001, 1.001, 1], _similarity(1, 0.001, 0, 0), _similarity(1, 0, 0.01, -0.01)):
        assert residual(d @ got) > residual(got)
    mirrored = src * [-1, 1]                                 # a reflection is not a similarity
    r = A.umeyama(src, mirrored)
    assert np.linalg.det(r[:2, :2]) > 0
    assert np.isclose(r[0, 0], r[1, 1]) and np.isclose(r[0, 1], -r[1, 0])  # rotation * scale, no shear


def test_umeyama_equals_skimage_on_float64_points():
    import warnings

    transform = pytest.importorskip("skimage.transform", reason="skimage is the oracle for the Umeyama estimate")
    rng = np.random.default_rng(1)
    dst = A.template(224).astype(np.float64)
    for _ in range(20):
        kps = rng.uniform(0, 500, (5, 2))
        tf = transform.SimilarityTransform()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # skimage 0.26 deprecates estimate()
            tf.estimate(kps, dst)
        assert np.array_equal(A.umeyama(kps, dst), tf.params)


@pytest.mark.parametrize("size, scale, shift", [(112, 1, 0), (224, 2, 0), (256, 2, 16), (336, 3, 0),
                                                (128, 1, 8), (512, 4, 32), (448, 4, 0)])
def test_template_table(size, scale, shift):
    # faceid.md §1.3: S % 112 == 0 -> x S/112; otherwise S % 128 == 0 -> x S/128 and + 8 S/128 on x
    t = A.template(size)
    left_eye = (38.2946 * scale + shift, 51.6963 * scale)
    right_mouth = (70.7299 * scale + shift, 92.2041 * scale)
    assert t.shape == (5, 2) and t.dtype == np.float32
    assert t[0].tolist() == pytest.approx(left_eye, abs=1e-4)
    assert t[4].tolist() == pytest.approx(right_mouth, abs=1e-4)


@pytest.mark.parametrize("size", [100, 200, 0, 300])
def test_template_bad_size(size):
    with pytest.raises(InputError, match=f"IPA Encode Face: face crop size {size}: expected a multiple of 112 or"):
        A.template(size, where="IPA Encode Face")


def test_estimate_norm_checks_keypoints():
    with pytest.raises(InputError, match=r"shape \(4, 2\)"):
        A.estimate_norm(np.zeros((4, 2)), 112, where="x")
    with pytest.raises(InputError, match="degenerate"):
        A.estimate_norm(np.ones((5, 2)), 112, where="x")


def test_norm_crop_maps_keypoints_onto_the_template():
    # a 3x scaled, shifted copy of the template as the face: the crop's transform takes kps to the template
    kps = A.ARCFACE_DST * 3 + [100, 50]
    m = A.estimate_norm(kps, 224)
    mapped = kps @ m[:, :2].T + m[:, 2]
    assert np.allclose(mapped, A.template(224), atol=1e-4)


def _transforms():
    rng = np.random.default_rng(0)
    for _ in range(40):
        a, s = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 3)
        c, sn = s * np.cos(a), s * np.sin(a)
        m = np.array([[c, -sn, rng.uniform(-300, 100)], [sn, c, rng.uniform(-300, 100)]])
        yield m, int(rng.choice([112, 224, 256]))


def test_warp_torch_fallback_within_one_grey_level_of_cv2():
    skdata = pytest.importorskip("skimage.data", reason="the astronaut photo comes with scikit-image")
    if resample._cv2() is None:
        pytest.skip("cv2 is not importable here: the cv2 half of the warp comparison cannot run")
    img = skdata.astronaut()
    sharp = np.zeros((300, 300, 3), np.uint8)
    sharp[100:200, 120:180] = 255
    for m, size in _transforms():
        for image in (img, sharp):
            a = resample.warp_affine(image, m, size, backend="cv2").astype(int)
            b = resample.warp_affine(image, m, size, backend="torch").astype(int)
            assert a.shape == b.shape == (size, size, 3)
            assert np.abs(a - b).max() <= 1


def test_warp_identity_and_black_border():
    img = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    eye = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert np.array_equal(resample.warp_affine(img, eye, 112, backend="torch"), img)
    shifted = resample.warp_affine(img, np.array([[1.0, 0, 50], [0, 1.0, 0]]), 112, backend="torch")
    assert not shifted[:, :50].any() and np.array_equal(shifted[:, 50:], img[:, :62])
    away = resample.warp_affine(img, np.array([[1.0, 0, 5000], [0, 1.0, 0]]), 112, backend="torch")
    assert not away.any()
    if resample._cv2() is not None:
        assert np.array_equal(resample.warp_affine(img, eye, 112, backend="cv2"), img)


def test_norm_crop_of_a_template_face_is_the_image():
    img = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = A.norm_crop(img, A.template(112), 112, backend="torch")
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1
