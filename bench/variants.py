"""A variant is data: one point of the architecture x settings matrix, with a stable name."""

import fnmatch
import itertools
from dataclasses import asdict, dataclass

PRECISIONS = ("fp32", "bf16", "fp16")
# "step": the model compiled in mode default and the whole training step (forward, backward, fused
# capturable Adam) replayed as one CUDA graph (bench.worker.step_capture)
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "step")
MEMORY_FORMATS = ("contiguous", "channels_last")
CHANNELS = ("seed", "aligned")  # models.CHANNEL_LAYOUTS: conv widths as the seed's, or padded to multiples of 8
_FORMAT_TAG = {"contiguous": "contig", "channels_last": "cl"}


@dataclass(frozen=True)
class Variant:
    arch: str
    downsample: str = "maxpool"
    precision: str = "fp32"
    compile_mode: str = "none"
    memory_format: str = "contiguous"
    batch_size: int = 32
    loader: str = "torch"
    channels: str = "seed"
    epochs: int | None = None  # None: the run's --epochs; set for short pipeline probes (bench.options)

    def __post_init__(self):
        for field, value, allowed in (
            ("channels", self.channels, CHANNELS),
            ("precision", self.precision, PRECISIONS),
            ("compile_mode", self.compile_mode, COMPILE_MODES),
            ("memory_format", self.memory_format, MEMORY_FORMATS),
        ):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)}, got {value!r}")
        if self.compile_mode == "step" and self.precision == "fp16":
            raise ValueError("--compile-mode step cannot train --amp-dtype fp16: GradScaler's inf check waits for "
                             "the host, which a captured step cannot; use --amp-dtype bf16")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")

    @property
    def compiled(self) -> bool:
        return self.compile_mode != "none"

    @property
    def name(self) -> str:
        """e.g. add-maxpool-bf16-compile_default-cl-resident-b32; "aligned" follows the downsample
        when set, so the seed-width names stay as they were; -e3 ends a 3-epoch probe's name."""
        compiled = f"compile_{self.compile_mode}" if self.compiled else "eager"
        aligned = [] if self.channels == "seed" else [self.channels]
        parts = [self.arch, self.downsample, *aligned, self.precision, compiled, _FORMAT_TAG[self.memory_format],
                 self.loader, f"b{self.batch_size}"]
        return "-".join(parts + ([f"e{self.epochs}"] if self.epochs else []))

    def settings(self) -> dict:
        """The row's settings columns (epochs is a row column of its own, filled by the runner)."""
        settings = asdict(self)
        del settings["epochs"]
        return {"variant": self.name, **settings}


def build_matrix(archs, downsamples=("maxpool",), precisions=("fp32",), compile_modes=("none",),
                 memory_formats=("contiguous",), batch_sizes=(32,), loaders=("torch",),
                 channels=("seed",)) -> list[Variant]:
    """The cross product, ordered so one architecture's variants run next to each other."""
    return [Variant(arch, ds, prec, mode, fmt, bs, loader, ch)
            for arch, ds, ch, loader, bs, fmt, mode, prec in itertools.product(
                archs, downsamples, channels, loaders, batch_sizes, memory_formats, compile_modes, precisions)]


def filter_variants(variants: list[Variant], patterns: list[str] | None) -> list[Variant]:
    """Keep variants whose name matches any glob pattern (a plain word matches as a substring)."""
    if not patterns:
        return variants
    globs = [p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns]
    return [v for v in variants if any(fnmatch.fnmatchcase(v.name, g) for g in globs)]
