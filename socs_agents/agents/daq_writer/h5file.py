"""The HDF5 file of one request, as users read it with plain h5py.

Layout (``<det>`` is ``--detector-name``)::

    /<det>/data          (K, H, W) stream dtype, chunks (1, H, W): one image per chunk
    /<det>/image_id      (K,) uint64
    /<det>/status        (K,) uint64   (0 good, 1 missing packets, 2 id mismatch)
    /<det>/receive_time  (K,) float64  Unix seconds when the writer received the image
    /<det> attributes    run_id, n_images_requested, n_images_written, start_time,
                         stop_time, state, message, gap counts, encoding, compression

K is the number of images written: a partial file (aborted, stalled stream) is shrunk so
every dataset has the same length. Compression is bitshuffle/LZ4 (HDF5 filter 32008),
always declared in the dataset's filter pipeline: a reader with ``hdf5plugin`` gets the
right pixels, one without it an error naming the missing filter, never wrong data.
"""

from __future__ import annotations

import h5py
import numpy as np

from .metadata import ENCODING_BSHUFFLE_LZ4, ENCODING_RAW, ENCODINGS, ImageMetadata

COMPRESSIONS = ("none", "bitshuffle-lz4")
BITSHUFFLE_FILTER = 32008
#: bitshuffle's filter options: block size 0 (automatic), compressor 2 (LZ4).
BITSHUFFLE_LZ4_OPTS = (0, 2)


def hdf5plugin_available() -> bool:
    try:
        import hdf5plugin  # noqa: F401  (importing it registers the filters with HDF5)
    except ImportError:
        return False
    return True


class ImageFile:
    """Writes the images of one request into ``path`` (the temporary name).

    Args:
        path: file to create (it must not exist).
        detector: name of the group.
        capacity: the request's ``n_images`` (the datasets' maximum length).
        first: header of the first image; fixes shape, dtype and encoding for the file.
        compression: ``"none"`` or ``"bitshuffle-lz4"`` (for raw images; compressed
            images, encoding 1, are stored as they come, with the filter declared).

    Raises:
        ValueError: bitshuffle-lz4 asked for raw images without ``hdf5plugin`` installed.
    """

    def __init__(
        self, path: str, detector: str, capacity: int, first: ImageMetadata, compression: str
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        self.path = path
        self.capacity = capacity
        self.shape = first.shape
        self.dtype = first.numpy_dtype
        self.encoding = first.encoding
        self.compression = compression
        filter_kw: dict = {}
        if first.encoding == ENCODING_BSHUFFLE_LZ4:
            # Chunks arrive compressed: declare the filter (no plugin needed to write them).
            filter_kw = dict(
                compression=BITSHUFFLE_FILTER,
                compression_opts=BITSHUFFLE_LZ4_OPTS,
                allow_unknown_filter=True,
            )
            self.compression = "bitshuffle-lz4"
            self._direct = True
        elif compression == "bitshuffle-lz4":
            if not hdf5plugin_available():
                raise ValueError("compression bitshuffle-lz4 needs the hdf5plugin package")
            filter_kw = dict(compression=BITSHUFFLE_FILTER, compression_opts=BITSHUFFLE_LZ4_OPTS)
            self._direct = False
        else:
            self._direct = True
        self.file = h5py.File(path, "w-")
        self.group = self.file.create_group(detector)
        h, w = self.shape
        self.data = self.group.create_dataset(
            "data",
            shape=(capacity, h, w),
            maxshape=(capacity, h, w),
            dtype=self.dtype,
            chunks=(1, h, w),
            **filter_kw,
        )
        self._dsid = self.data.id
        self.image_ids = np.zeros(capacity, dtype=np.uint64)
        self.statuses = np.zeros(capacity, dtype=np.uint64)
        self.receive_times = np.zeros(capacity, dtype=np.float64)
        self.count = 0
        self.bytes_written = 0

    def matches(self, meta: ImageMetadata) -> str:
        """'' when ``meta`` fits this file, else why not."""
        if meta.shape != self.shape or meta.numpy_dtype != self.dtype:
            return (
                f"image {meta.id} is {meta.height} x {meta.width} {meta.numpy_dtype.name}; "
                f"the file's images are {self.shape[0]} x {self.shape[1]} {self.dtype.name}"
            )
        if meta.encoding != self.encoding:
            return (
                f"image {meta.id} has encoding {ENCODINGS[meta.encoding]}; "
                f"the file's images are {ENCODINGS[self.encoding]}"
            )
        return ""

    def write(self, meta: ImageMetadata, pixels: memoryview, received_at: float) -> None:
        """Append one image (its header must :meth:`match`)."""
        i = self.count
        if i >= self.capacity:
            raise IndexError(f"the file holds {self.capacity} images already")
        if self._direct:
            self._dsid.write_direct_chunk((i, 0, 0), pixels)
        else:
            self.data[i] = np.frombuffer(pixels, dtype=self.dtype).reshape(self.shape)
        self.image_ids[i] = meta.id
        self.statuses[i] = meta.status
        self.receive_times[i] = received_at
        self.count = i + 1
        self.bytes_written += pixels.nbytes

    def close(self, attrs: dict) -> int:
        """Shrink to the images written, write the metadata datasets and ``attrs``, close.
        Returns the number of images in the file."""
        k = self.count
        try:
            if k < self.capacity:
                self.data.resize((k, *self.shape))
            for name, values in (
                ("image_id", self.image_ids),
                ("status", self.statuses),
                ("receive_time", self.receive_times),
            ):
                self.group.create_dataset(name, data=values[:k])
            self.group.attrs["n_images_written"] = k
            self.group.attrs["encoding"] = ENCODINGS[self.encoding]
            self.group.attrs["compression"] = self.compression
            for key, value in attrs.items():
                self.group.attrs[key] = "" if value is None else value
        finally:
            self.file.close()
        return k

    def discard(self) -> None:
        """Close without finishing (the caller removes the file)."""
        try:
            self.file.close()
        except Exception:  # closing a file whose writes failed may fail too
            pass


__all__ = ["COMPRESSIONS", "ENCODING_RAW", "ImageFile", "hdf5plugin_available"]
