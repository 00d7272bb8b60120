"""Qwen-VL `pixel_values` from an RGB image already at the processor's resolution, 4× faster than the processor.

The data loader rebuilds every sample's `pixel_values` from the image stored in the tokenize cache (already
resized). transformers' PIL image processor then spends most of its time on float64 arithmetic over the whole
image (rescale, normalise) and a broadcast copy: ~5 of the ~7 ms a 448×448 image takes (benchmarks/README.md).
Both are elementwise, so they can be tabulated: for each channel, the processor's own `rescale` and `normalize` are run
once on the 256 possible byte values, and an image is then a table lookup per channel written straight into the
patch layout. (The torchvision "fast" processor would do the same job but torchvision is not installable on
every machine; see the README.)

`Patchifier.verified(image_processor)` returns one only when its output equals the processor's, bit for bit, on
probe images, and None otherwise (other families, changed transformers code): callers fall back to the processor.
Only numpy is imported.
"""

from __future__ import annotations

from typing import Any

_PROBE_SIZES = ((97, 131), (640, 480), (224, 224))  # (width, height), before the processor's resize


class Patchifier:
    """One image processor's rescale + normalise as per-channel lookup tables, and its patch layout."""

    def __init__(self, tables: Any, patch: int, merge: int, temporal: int, min_pixels: int, max_pixels: int):
        self.tables = tables  # (channels, 256) float32
        self.patch, self.merge, self.temporal = patch, merge, temporal
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    @classmethod
    def verified(cls, image_processor: Any) -> Patchifier | None:
        """The processor's tables, if they reproduce its `pixel_values` exactly on probe images; else None."""
        import numpy as np
        from PIL import Image

        from vlmtune_cli.models.boxes import smart_resize

        try:
            candidate = cls._from(image_processor)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        rng = np.random.default_rng(0)
        bounds = candidate.patch * candidate.merge, candidate.min_pixels, candidate.max_pixels
        sizes = {smart_resize(w, h, *bounds) for w, h in _PROBE_SIZES}
        sizes = [size for size in sizes if candidate.applies(*size)]
        for width, height in sizes:
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            try:
                expected = image_processor(images=[Image.fromarray(image)], return_tensors="np")["pixel_values"]
            except (TypeError, ValueError):
                return None
            got = candidate(image)
            if got.shape != expected.shape or got.dtype != expected.dtype or not np.array_equal(got, expected):
                return None
        return candidate if sizes else None

    @classmethod
    def _from(cls, image_processor: Any) -> Patchifier:
        import numpy as np

        ip = image_processor
        patch, merge, temporal = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
        size = ip.size
        low, high = (
            (size["shortest_edge"], size["longest_edge"])
            if isinstance(size, dict)
            else (size.shortest_edge, size.longest_edge)
        )
        # Channel-first, as the processor holds images when it rescales and normalises.
        values = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :], (3, 1, 256)).copy()
        if ip.do_rescale:
            values = ip.rescale(values, ip.rescale_factor)
        if ip.do_normalize:
            values = ip.normalize(values, ip.image_mean, ip.image_std)
        tables = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(3, 256))
        return cls(tables, patch, merge, temporal, int(low), int(high))

    def applies(self, width: int, height: int) -> bool:
        """True if the processor would leave an image of this size as it is (it only patchifies it then)."""
        from vlmtune_cli.models.boxes import smart_resize

        return smart_resize(width, height, self.patch * self.merge, self.min_pixels, self.max_pixels) == (width, height)

    def patches(self, width: int, height: int) -> int:
        return (width // self.patch) * (height // self.patch)

    @property
    def width(self) -> int:
        """Values per patch: channels × temporal patch × patch²."""
        return 3 * self.temporal * self.patch * self.patch

    def __call__(self, image: Any, out: Any = None) -> Any:
        """(patches, channels × temporal × patch²) float32 of one (height, width, 3) uint8 image, written into
        `out` (a C-contiguous float32 array of that size) when given."""
        import numpy as np

        p, m, t = self.patch, self.merge, self.temporal
        height, width, channels = image.shape
        gh, gw = height // p, width // p
        # Byte patches in the processor's order (merge blocks row-major, then channel, row, column in a patch).
        grouped = image.reshape(gh // m, m, p, gw // m, m, p, channels).transpose(0, 3, 1, 4, 6, 2, 5)
        grouped = np.ascontiguousarray(grouped).reshape(gh * gw, channels, p * p)
        if out is None:
            out = np.empty((gh * gw, channels * t * p * p), dtype=np.float32)
        layout = out.reshape(gh * gw, channels, t, p * p)
        for c in range(channels):
            np.take(self.tables[c], grouped[:, c], out=layout[:, c, 0])
            for k in range(1, t):  # a still image repeats over the temporal patch
                layout[:, c, k] = layout[:, c, 0]
        return out


class StoredImages:
    """One sample's `pixel_values`, not computed yet: the collator writes them straight into the batch's array
    (in a DataLoader worker, shared memory), saving two copies of ~5 MB per 448×448 image. Anything else that
    reads them (`np.asarray`) gets them computed."""

    def __init__(self, arrays: list[Any], patchifier: Patchifier):
        self.arrays = arrays
        self.patchifier = patchifier
        self.shape = (sum(patchifier.patches(a.shape[1], a.shape[0]) for a in arrays), patchifier.width)

    def write(self, out: Any) -> None:
        """Compute into `out`, a C-contiguous float32 array of `self.shape`."""
        row = 0
        for array in self.arrays:
            n = self.patchifier.patches(array.shape[1], array.shape[0])
            self.patchifier(array, out[row : row + n])
            row += n

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        out = np.empty(self.shape, dtype=np.float32)
        self.write(out)
        return out if dtype is None else out.astype(dtype, copy=False)
