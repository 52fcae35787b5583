"""Deterministic synthetic cube/sphere dataset in the NVIDIA assessment layout.

The real assessment data cannot be downloaded here, so this module renders stand-in scenes: one
cube or one sphere with random pose, size, colour and lighting, above a ground plane and in front
of a sky that gives no LiDAR return. Depth and RGBA come from casting the same ray grid, so the
two modalities agree pixel for pixel, and the ray for pixel (i, j) is exactly the one the reader
uses to turn depth back into XYZ (see DESIGN.md). Both classes draw colour, size, position and
light from the same distributions, so only shape separates them.

Every sample has its own RNG seeded by (seed, class, index), so the bytes written do not depend on
the number of worker processes or the order in which they finish.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

CLASSES = ("cubes", "spheres")
NO_RETURN = 50.0  # depth written where a ray hits nothing; the reader treats d >= 50 as no return
HALF_FOV = 0.3  # radians either side of +y, for both azimuth and zenith
# A convex body's mean silhouette area is a quarter of its surface (Cauchy), so a cube of
# half-edge r * sqrt(pi / 6) looks on average as large as a sphere of radius r: apparent size
# does not give the class away.
CUBE_HALF_EDGE_PER_RADIUS = float(np.sqrt(np.pi / 6.0))
DEPTH_NOISE_M = 0.02
PIXEL_NOISE = 0.02
CHUNK = 100  # samples per worker task: small enough for load balance and a smooth progress bar


def ray_angles(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth per row and zenith per column, evenly spread over the field of view."""
    azimuth = np.linspace(-HALF_FOV, HALF_FOV, size, dtype=np.float32)
    zenith = np.linspace(-HALF_FOV, HALF_FOV, size, dtype=np.float32)
    return azimuth, zenith


def ray_directions(azimuth: np.ndarray, zenith: np.ndarray) -> np.ndarray:
    """Unit rays [H, W, 3] matching the reader's depth-to-XYZ formula, so XYZ = depth * ray."""
    az = -azimuth.astype(np.float64)[:, None]
    ze = -zenith.astype(np.float64)[None, :]
    x = np.sin(az) * np.cos(ze)
    y = np.cos(az) * np.cos(ze)
    z = np.broadcast_to(np.sin(ze), x.shape)
    return np.stack([x, y, z], axis=-1)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3x3 rotation, from a normalised Gaussian quaternion."""
    w, x, y, z = rng.normal(size=4)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def sample_scene(rng: np.random.Generator) -> dict:
    """Draw everything both classes share, from the same distributions for both."""
    distance = rng.uniform(3.0, 5.0)
    bearing = rng.uniform(-0.1, 0.1)
    light = rng.normal(size=3)
    light[1] = -abs(light[1])  # from the sensor's side, so the visible faces can be lit
    light[2] = abs(light[2])  # from above
    return {
        "center": np.array([distance * np.tan(bearing), distance, rng.uniform(-0.4, 0.4)]),
        "radius": rng.uniform(0.5, 1.0),
        "ground_height": rng.uniform(1.8, 2.4),
        "object_colour": rng.uniform(0.15, 0.95, size=3),
        "ground_colour": rng.uniform(0.2, 0.7, size=3),
        "sky_colour": rng.uniform(0.3, 1.0, size=3),
        "light": light / np.linalg.norm(light),
        "ambient": rng.uniform(0.25, 0.45),
        "intensity": rng.uniform(0.8, 1.1),
    }


def hit_sphere(rays: np.ndarray, center: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the first hit (inf on a miss) and surface normals, for rays from the origin."""
    b = rays @ center
    disc = b * b - center @ center + radius * radius
    t = b - np.sqrt(np.maximum(disc, 0.0))
    t = np.where((disc >= 0.0) & (t > 0.0), t, np.inf)
    normals = (np.where(np.isfinite(t), t, 0.0)[..., None] * rays - center) / radius
    return t, normals


def hit_box(
    rays: np.ndarray, center: np.ndarray, rotation: np.ndarray, half_edge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Slab test in the box frame: distance to the first hit (inf on a miss) and normals."""
    local_rays = rays @ rotation  # row-wise rotation.T @ ray
    local_origin = -center @ rotation
    safe = np.copysign(np.maximum(np.abs(local_rays), 1e-12), local_rays)
    t1 = (-half_edge - local_origin) / safe
    t2 = (half_edge - local_origin) / safe
    t_near = np.minimum(t1, t2)
    entry = t_near.max(axis=-1)
    exit_ = np.maximum(t1, t2).min(axis=-1)
    t = np.where((entry <= exit_) & (entry > 0.0), entry, np.inf)
    # The entry face is the slab entered last; its outward normal opposes the ray on that axis.
    axis = t_near.argmax(axis=-1)[..., None]
    local_normals = np.zeros_like(local_rays)
    np.put_along_axis(local_normals, axis, -np.sign(np.take_along_axis(local_rays, axis, -1)), -1)
    return t, local_normals @ rotation.T


def hit_ground(rays: np.ndarray, height: float) -> np.ndarray:
    """Distance to the plane z = -height (inf for rays that do not point down)."""
    down = rays[..., 2]
    return np.where(down < 0.0, -height / np.where(down < 0.0, down, -1.0), np.inf)


def lambert(colour: np.ndarray, normals: np.ndarray, scene: dict) -> np.ndarray:
    """Ambient plus diffuse shading, so faces read as flat (cube) or graded (sphere)."""
    diffuse = np.clip(normals @ scene["light"], 0.0, None)[..., None]
    return colour * scene["intensity"] * (scene["ambient"] + (1.0 - scene["ambient"]) * diffuse)


def render_sample(
    kind: str, seed: int, index: int, rays: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene to (RGBA uint8 [H, W, 4], depth float32 [H, W]) from its own RNG."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, CLASSES.index(kind), index]))
    scene = sample_scene(rng)
    if kind == "cubes":
        half_edge = scene["radius"] * CUBE_HALF_EDGE_PER_RADIUS
        t_obj, normals = hit_box(rays, scene["center"], random_rotation(rng), half_edge)
    else:
        t_obj, normals = hit_sphere(rays, scene["center"], scene["radius"])
    t_ground = hit_ground(rays, scene["ground_height"])
    on_object = t_obj < t_ground
    depth = np.minimum(t_obj, t_ground)
    on_ground = ~on_object & (depth < NO_RETURN)

    up = np.broadcast_to(np.array([0.0, 0.0, 1.0]), rays.shape)
    rgb = np.broadcast_to(scene["sky_colour"], rays.shape).copy()
    rgb[on_ground] = lambert(scene["ground_colour"], up[on_ground], scene)
    rgb[on_object] = lambert(scene["object_colour"], normals[on_object], scene)
    rgb += rng.normal(0.0, PIXEL_NOISE, size=rgb.shape)
    alpha = np.where(on_object, 255, 0)[..., None]
    rgba = np.concatenate([np.round(np.clip(rgb, 0.0, 1.0) * 255.0), alpha], axis=-1)

    hit = depth < NO_RETURN
    depth = np.where(hit, depth + rng.normal(0.0, DEPTH_NOISE_M, size=depth.shape), NO_RETURN)
    return rgba.astype(np.uint8), np.minimum(depth, NO_RETURN).astype(np.float32)


def _write_chunk(task: tuple[str, str, int, int, int, int]) -> int:
    """Render and write samples [start, stop) of one class; returns how many it wrote."""
    root, kind, start, stop, seed, size = task
    rays = ray_directions(*ray_angles(size))
    folder = Path(root) / kind
    for index in range(start, stop):
        rgba, depth = render_sample(kind, seed, index, rays)
        Image.fromarray(rgba).save(folder / "rgb" / f"{index:04d}.png")
        np.save(folder / "lidar" / f"{index:04d}.npy", depth)
    return stop - start


def _prepare_folders(root: Path, size: int) -> None:
    """Refuse to mix with an existing dataset, then create the folders and the angle files."""
    for kind in CLASSES:
        folder = root / kind
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(f"dataset folder already exists and is not empty: {folder}")
    azimuth, zenith = ray_angles(size)
    for kind in CLASSES:
        (root / kind / "rgb").mkdir(parents=True, exist_ok=True)
        (root / kind / "lidar").mkdir(parents=True, exist_ok=True)
        np.save(root / kind / "azimuth.npy", azimuth)
        np.save(root / kind / "zenith.npy", zenith)


def generate_dataset(
    root: str | Path, per_class: int = 3000, seed: int = 42, size: int = 64, progress: bool = True
) -> Path:
    """Writes the dataset under root (created if missing) and returns root.

    Layout: root/{cubes,spheres}/rgb/NNNN.png (RGBA uint8), lidar/NNNN.npy (float32 depth,
    NO_RETURN where nothing is hit), azimuth.npy (per row) and zenith.npy (per column), float32.
    Samples are rendered in chunks across a spawn-started process pool (spawn, because the
    caller may already hold threads, e.g. torch); a set of one chunk or less runs in-process.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    root = Path(root)
    _prepare_folders(root, size)
    tasks = [
        (str(root), kind, start, min(start + CHUNK, per_class), seed, size)
        for kind in CLASSES
        for start in range(0, per_class, CHUNK)
    ]
    processes = min(os.cpu_count() or 1, -(-2 * per_class // CHUNK))  # no pool for tiny sets
    with tqdm(total=2 * per_class, disable=not progress, unit="sample", desc="generate") as bar:
        if processes == 1:
            for task in tasks:
                bar.update(_write_chunk(task))
        else:
            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                for written in pool.imap_unordered(_write_chunk, tasks):
                    bar.update(written)
    return root
