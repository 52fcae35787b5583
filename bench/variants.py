"""A variant is data: one point of the architecture x settings matrix, with a stable name."""

import fnmatch
import itertools
from dataclasses import asdict, dataclass

PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
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

    def __post_init__(self):
        for field, value, allowed in (
            ("channels", self.channels, CHANNELS),
            ("precision", self.precision, PRECISIONS),
            ("compile_mode", self.compile_mode, COMPILE_MODES),
            ("memory_format", self.memory_format, MEMORY_FORMATS),
        ):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)}, got {value!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")

    @property
    def name(self) -> str:
        """e.g. add-maxpool-bf16-compile_default-cl-resident-b32; "aligned" follows the downsample
        when set, so the seed-width names stay as they were."""
        compiled = "eager" if self.compile_mode == "none" else f"compile_{self.compile_mode}"
        aligned = [] if self.channels == "seed" else [self.channels]
        return "-".join([self.arch, self.downsample, *aligned, self.precision, compiled,
                         _FORMAT_TAG[self.memory_format], self.loader, f"b{self.batch_size}"])

    def settings(self) -> dict:
        return {"variant": self.name, **asdict(self)}


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
