"""DICOM decoding (the 'dicom' extra): modality LUT, window, MONOCHROME1, 12/16-bit ranges."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.payloads import make_dicom
from pneumo_onnx.engine.errors import ImageError
from pneumo_onnx.engine.runtime.decoders import open_image

RAMP12 = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))  # a 12-bit ramp


def test_twelve_bit_ramp_uses_the_full_range() -> None:
    img = open_image(make_dicom(RAMP12, bits=12))
    a = np.asarray(img)
    assert img.mode == "L" and a.min() == 0 and a.max() == 255
    assert abs(int(a[0, 32]) - 129) <= 2  # linear: the middle of the ramp is mid-gray


def test_monochrome1_is_inverted() -> None:
    normal = np.asarray(open_image(make_dicom(RAMP12, bits=12)))
    inverted = np.asarray(open_image(make_dicom(RAMP12, photometric="MONOCHROME1", bits=12)))
    assert np.array_equal(inverted, 255 - normal)


def test_window_centre_width_is_applied() -> None:
    # Window 1024..3072 of a 0..4095 ramp: the left quarter black, the right quarter white.
    a = np.asarray(open_image(make_dicom(RAMP12, bits=12, WindowCenter=2048, WindowWidth=2048)))
    assert a[0, :14].max() == 0 and a[0, -14:].min() == 255
    assert 100 < a[0, 32] < 155


def test_rescale_slope_intercept_before_the_window() -> None:
    # Stored 0..4095 with slope 2, intercept -1000 -> -1000..7190: the window is in those units.
    a = np.asarray(
        open_image(
            make_dicom(
                RAMP12,
                bits=12,
                RescaleSlope=2,
                RescaleIntercept=-1000,
                WindowCenter=3095,
                WindowWidth=8190,
            )
        )
    )
    assert a[0, 0] == 0 and a[0, -1] == 255 and abs(int(a[0, 32]) - 129) <= 3


def test_corrupt_dicom_is_a_clear_error() -> None:
    data = make_dicom(RAMP12, bits=12)
    with pytest.raises(ImageError, match="is not a readable DICOM image"):
        open_image(data[:400])


def test_oversized_dicom_is_refused_from_its_header() -> None:
    data = make_dicom(RAMP12, bits=12, Rows=10000, Columns=10000)
    with pytest.raises(ImageError, match="decompression bomb guard"):
        open_image(data)
