"""NVIDIA DALI loader, in two forms: the PNG files as they are, or the prepared raw arrays.

png: `fn.readers.file` reads the PNG bytes and the label, `fn.readers.numpy` the depth map, and
`fn.decoders.image(output_type=ANY_DATA)` decodes RGBA on DALI's C++ threads ("mixed" on a GPU,
although PNG decoding itself stays on the CPU there). The two readers stay paired because they
get the same `files=` order, the same shuffle, shard and padding arguments; DALI documents no such
guarantee, so tests/test_loaders.py proves it for every yielded sample.

prepared (loaders.prepare): one `fn.external_source` callback returns the rows of memory-mapped
arrays for a batch, so the pairing holds by construction and nothing is decoded.

The png form reads the files as they are, so it takes only 8-bit RGBA PNGs at their depth map's
size: DALI's decoder has no RGBA output for RGB or grey PNGs and its resize does not reproduce
PIL's bilinear one, so converting there would feed other tensors than the other loaders. Any
other image is refused up front, naming the file, with the fix: `bench prepare`, whose arrays are
made by loaders.dataset like every other loader's (alpha added, images resized). Broken files
(corrupt PNG, NaN depth, wrong depth shape) are named earlier by the data check (loaders.check).

Both forms: [0, 1] scaling and XYZA are computed in torch right after the iterator, on the target
device, with the same functions as every other loader (loaders.dataset), or with
input_prep_kernel=True by the one-pass Triton kernel of kernels/input_prep (same mathematics).
Outputs move to the GPU inside the pipeline (`.gpu()` / mixed decoder) when the device is CUDA;
without a GPU the pipeline uses CPU operators only and device_id=None.

Order (shuffle=True): every epoch is a fresh permutation of the whole split, each sample exactly
once, fixed by (seed, epoch) and independent of batch size and threads. png uses the readers'
`shuffle_after_epoch` with `shuffle_after_epoch_seed=seed` (new in DALI 2.x; without it the
shuffle ignores every seed). The buffer-based `random_shuffle` is not used: it only mixes within
`initial_fill` samples and lets samples cross epoch boundaries. prepared uses loaders.order, the
rule the torch and resident loaders share, so it feeds the same batches as they do; png's order
differs from theirs for the same seed.
shuffle=False keeps the order of `sample_ids`. With num_shards > 1, shard k reads the slice
[k * N // S, (k + 1) * N // S) of each epoch's order (the same seed on every rank makes the shards
disjoint). The png readers pad an epoch's last batch instead of running into the next epoch, and
the prepared callback ends each epoch itself, so drop_last (LastBatchPolicy.DROP) or PARTIAL
never shift epochs.
"""

import contextlib
from pathlib import Path

import numpy as np
import torch

try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as error:
    raise ImportError(
        'the dali loader needs NVIDIA DALI, which is optional: install it with pip install -e ".[dali]" '
        f"(pulls nvidia-dali-cuda130); import failed with: {error}"
    ) from error

from loaders.dataset import DatasetError, angle_tables, label_of, prepare_batch, sample_files
from loaders.order import epoch_order, shard_bounds
from loaders.prepare import find_prepared, open_prepared

READER = "rgb_reader"
OUTPUTS = ["rgba", "depth", "label"]


@pipeline_def
def png_pipeline(rgb_files, depth_files, labels, shuffle, order_seed, shard_id, num_shards, on_gpu):
    """Two readers in lockstep (identical file order and reader arguments) + RGBA decoding."""
    common = dict(shard_id=shard_id, num_shards=num_shards, pad_last_batch=True)
    if shuffle:
        common.update(shuffle_after_epoch=True, shuffle_after_epoch_seed=order_seed)
    else:
        common.update(stick_to_shard=True)  # the same slice every epoch, as shuffle_after_epoch implies
    encoded, label = fn.readers.file(files=rgb_files, labels=labels, name=READER, **common)
    depth = fn.readers.numpy(files=depth_files, **common)
    rgba = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.ANY_DATA)
    if on_gpu:
        depth, label = depth.gpu(), label.gpu()
    return rgba, depth, label


@pipeline_def
def prepared_pipeline(source, on_gpu):
    """One batch callback yields RGBA, depth and label of the same rows."""
    rgba, depth, label = fn.external_source(source=source, num_outputs=3, batch=True, batch_info=True,
                                            dtype=[types.UINT8, types.FLOAT, types.INT32])
    if on_gpu:
        rgba, depth, label = rgba.gpu(), depth.gpu(), label.gpu()
    return rgba, depth, label


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, without decoding it."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise DatasetError(f"{path} is not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[24], head[25]


def check_png_form(root: Path, files: list) -> None:
    """Refuses images the png form would read differently from the other loaders (see above), and
    depth maps of the wrong shape, from the files' headers alone (DALI would fail without a name)."""
    tables = angle_tables(root)
    for f in files:
        width, height, bits, colour = png_header(f.rgb)
        expected = (len(tables[0][f.label]), len(tables[1][f.label]))
        if bits != 8 or colour != 6 or (height, width) != expected:
            raise DatasetError(
                f"{f.rgb} is not an 8-bit RGBA PNG of {expected[1]}x{expected[0]} (its depth map's size; it is "
                f"{width}x{height}, colour type {colour}, {bits} bits): DALI's png form cannot convert it as the "
                f"other loaders do; run `python -m bench prepare --data {root}` and the dali loader reads the "
                "prepared arrays instead")
        depth_shape = _npy_shape(f.lidar)
        if depth_shape != expected:
            raise DatasetError(f"{f.lidar} has shape {depth_shape} but the angle tables of its folder need {expected}")


def _npy_shape(path: Path) -> tuple:
    """The array shape from a .npy header, without reading the data."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            return read_header(f)[0]
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read depth map {path}: {error}") from None


class PreparedBatches:
    """external_source callback: batch `iteration` of epoch `epoch_idx`, rows in the seeded order."""

    def __init__(self, rgba, depth, rows, labels, batch_size, shuffle, drop_last, seed, shard_id, num_shards):
        self.rgba, self.depth, self.rows, self.labels = rgba, depth, rows, labels
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.shard = shard_bounds(len(rows), shard_id, num_shards)
        self.cached = (None, None)

    def order(self, epoch: int) -> np.ndarray:
        """Positions in `rows` this shard reads in `epoch`; every epoch a new full permutation."""
        if self.cached[0] != epoch:
            order = epoch_order(len(self.rows), self.seed, epoch, self.shuffle)
            self.cached = (epoch, order[slice(*self.shard)])
        return self.cached[1]

    def __call__(self, info):
        order = self.order(info.epoch_idx)
        start = info.iteration * self.batch_size
        picked = order[start:start + self.batch_size]
        if len(picked) == 0 or (self.drop_last and len(picked) < self.batch_size):
            raise StopIteration  # ends the epoch; DALI asks for epoch_idx + 1 next
        rows = self.rows[picked]
        return self.rgba[rows], self.depth[rows], self.labels[picked]


class DaliLoader:
    """DALI pipeline + iterator; each pass over it is one epoch of (rgb, lidar XYZA, label) batches."""

    def __init__(self, root, sample_ids, batch_size=32, shuffle=True, drop_last=True, seed=42,
                 device="cpu", workers=2, prepared: bool | None = None, *, shard_id=0, num_shards=1,
                 input_prep_kernel: bool = False):
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        root = Path(root).expanduser()
        sample_ids = list(sample_ids)
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        device_id = None
        if on_gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        settings = dict(batch_size=batch_size, num_threads=max(workers, 1), seed=seed, device_id=device_id)
        if prepared is None:
            prepared = find_prepared(root) is not None
        self.form = "prepared" if prepared else "png"
        labels = np.array([label_of(i) for i in sample_ids], dtype=np.int32)
        if prepared:
            data = open_prepared(root)
            source = PreparedBatches(data.rgba, data.depth, data.rows(sample_ids), labels, batch_size, shuffle,
                                     drop_last, seed, shard_id, num_shards)
            self.iterator = DALIGenericIterator(prepared_pipeline(source, on_gpu, **settings), OUTPUTS,
                                                auto_reset=True, prepare_first_batch=False)
            azimuth, zenith = data.azimuth, data.zenith
        else:
            files = [sample_files(root, i) for i in sample_ids]
            check_png_form(root, files)
            pipe = png_pipeline([str(f.rgb) for f in files], [str(f.lidar) for f in files], labels.tolist(), shuffle,
                                seed, shard_id, num_shards, on_gpu, **settings)
            policy = LastBatchPolicy.DROP if drop_last else LastBatchPolicy.PARTIAL
            self.iterator = DALIGenericIterator(pipe, OUTPUTS, reader_name=READER, auto_reset=True,
                                                last_batch_policy=policy, prepare_first_batch=False)
            azimuth, zenith = angle_tables(root)
        self.azimuth = torch.from_numpy(np.array(azimuth)).to(self.device)
        self.zenith = torch.from_numpy(np.array(zenith)).to(self.device)
        low, high = shard_bounds(len(sample_ids), shard_id, num_shards)
        self.num_samples = high - low
        self.batch_size, self.drop_last = batch_size, drop_last
        self.input_prep_kernel = input_prep_kernel
        self.in_epoch = False

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def batch(self, outputs: dict):
        """DALI's uint8 RGBA, depth and label -> the harness's (rgb, lidar XYZA, label) on the device."""
        rgba = outputs["rgba"].to(self.device)
        if rgba.shape[-1] != 4:
            raise DatasetError(f"DALI decoded {rgba.shape[-1]}-channel images; the dataset must hold RGBA PNGs")
        label = outputs["label"].reshape(-1).to(self.device, torch.int64)
        depth = outputs["depth"].to(self.device, torch.float32)
        rgb, lidar = prepare_batch(rgba, depth, self.azimuth[label], self.zenith[label], kernel=self.input_prep_kernel)
        return rgb, lidar, label

    def __iter__(self):
        if self.in_epoch:  # the last pass stopped early; DALI cannot reset mid-epoch, so finish it
            with contextlib.suppress(StopIteration):  # next(), not a for loop: iter() would warn
                while True:
                    next(self.iterator)
        self.in_epoch = True
        for outputs in self.iterator:
            yield self.batch(outputs[0])
        self.in_epoch = False
