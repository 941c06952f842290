"""Cubes out to other tools: VTK XML image data (``.vti``) for ParaView, ``.npy`` for one
species, HDF5 with the metadata needed to read the counts as physics
(docs/ion-maps-3d.md).

The ``.vti`` writer follows the VTK XML file format (``VTKFile`` version 1.0,
``header_type="UInt64"``, little endian): every species is a ``UInt32`` array of raw
counts, either appended raw after the XML (the default, compact and fast) or inline as
base64 (pure text). The binary block of an array is an 8-byte byte count followed by the
values, x fastest, then y, then z, which is the C order of our ``[z, y, x]`` cubes. For
inline base64, count and values are encoded together as one stream, as VTK's writer
does for uncompressed data.

Geometry: x and y in µm from the probe at the field centre; z is depth below the
original surface in µm, so +z points into the sample. Without a pixel size or a depth
calibration the unit is one pixel or one slice.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal
from xml.sax.saxutils import quoteattr

import numpy as np
import numpy.typing as npt

from opsims.analysis.cubeset import CubeSet
from opsims.analysis.depth import DepthAxis
from opsims.analysis.maps import SliceRange, check_species, pixel_centres

Encoding = Literal["raw", "base64"]
Location = Literal["cell", "point"]
H5_FORMAT = "opsims.cubes/1"


def vti_geometry(
    cs: CubeSet, sel: SliceRange, depth: DepthAxis, location: Location = "cell"
) -> tuple[tuple[int, ...], tuple[float, float, float], tuple[float, float, float]]:
    """``(WholeExtent, Origin, Spacing)`` of the selected slices. Cell data: one cell per
    voxel, the origin at the corner of the first voxel; point data: one point per voxel,
    at its centre. A partial last slice is drawn at full thickness."""
    _, ny, nx = cs.shape
    nz = sel.n
    p = cs.pixel_um
    dx = 1.0 if p is None else p
    edges = depth.edges[sel.start : sel.stop + 1]
    if depth.calibrated:
        edges = edges / 1000.0
    steps = np.diff(edges)
    dz = float(np.max(steps)) if steps.size else 1.0
    if location == "cell":
        x0 = -0.5 if p is None else -nx / 2 * p
        y0 = -0.5 if p is None else -ny / 2 * p
        extent: tuple[int, ...] = (0, nx, 0, ny, 0, nz)
        return extent, (x0, y0, float(edges[0])), (dx, dx, dz)
    xc, yc = pixel_centres(nx, p), pixel_centres(ny, p)
    extent = (0, nx - 1, 0, ny - 1, 0, nz - 1)
    return extent, (float(xc[0]), float(yc[0]), float(edges[0]) + dz / 2), (dx, dx, dz)


def write_vti(
    path: str | Path,
    cs: CubeSet,
    species: Sequence[str],
    sel: SliceRange,
    depth: DepthAxis,
    *,
    encoding: Encoding = "raw",
    location: Location = "cell",
) -> Path:
    """Write the slices ``sel`` of ``species`` as one VTK ImageData file."""
    names = list(species)
    check_species(cs, names)
    if not names:
        raise ValueError("no species to write")
    if encoding not in ("raw", "base64") or location not in ("cell", "point"):
        raise ValueError(f"encoding raw|base64 and location cell|point, got {encoding}, {location}")
    extent, origin, spacing = vti_geometry(cs, sel, depth, location)
    arrays = [np.ascontiguousarray(cs.cubes[s][sel.start : sel.stop], dtype="<u4") for s in names]
    tag = "CellData" if location == "cell" else "PointData"
    ext = " ".join(str(v) for v in extent)
    lines = [
        '<?xml version="1.0"?>',
        '<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt64">',
        f'  <ImageData WholeExtent="{ext}" Origin="{_floats(origin)}" '
        f'Spacing="{_floats(spacing)}">',
        f'    <Piece Extent="{ext}">',
        f"      <{tag} Scalars={quoteattr(names[0])}>",
    ]
    offset = 0
    for name, a in zip(names, arrays, strict=True):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        head = (
            f'        <DataArray type="UInt32" Name={quoteattr(name)} NumberOfComponents="1" '
            f'RangeMin="{lo}" RangeMax="{hi}"'
        )
        if encoding == "raw":
            lines.append(f'{head} format="appended" offset="{offset}"/>')
            offset += 8 + a.nbytes
        else:
            lines.append(f'{head} format="binary">')
            lines.append(_base64_block(a))
            lines.append("        </DataArray>")
    lines += [f"      </{tag}>", "    </Piece>", "  </ImageData>"]
    p = Path(path)
    with open(p, "wb") as f:
        f.write("\n".join(lines).encode() + b"\n")
        if encoding == "raw":
            f.write(b'  <AppendedData encoding="raw">\n   _')
            for a in arrays:
                f.write(struct.pack("<Q", a.nbytes))
                _write_array(f, a)
            f.write(b"\n  </AppendedData>\n")
        f.write(b"</VTKFile>\n")
    return p


def _floats(values: Sequence[float]) -> str:
    return " ".join(repr(float(v)) for v in values)


def _base64_block(a: npt.NDArray[Any]) -> str:
    return base64.b64encode(struct.pack("<Q", a.nbytes) + a.tobytes()).decode("ascii")


def _write_array(f: IO[bytes], a: npt.NDArray[Any]) -> None:
    f.write(a.data)  # the array's own buffer: no copy of a cube that may be 100 MB


def write_npy(path: str | Path, cs: CubeSet, species: str, sel: SliceRange) -> Path:
    """One species' raw counts ``u32 [z, y, x]`` of the slices ``sel``."""
    check_species(cs, [species])
    p = Path(path)
    np.save(p, np.ascontiguousarray(cs.cubes[species][sel.start : sel.stop], dtype=np.uint32))
    return p


def write_h5(
    path: str | Path, cs: CubeSet, species: Sequence[str], sel: SliceRange, depth: DepthAxis
) -> Path:
    """One dataset per species, ``u32 [z, y, x]`` raw counts of the slices ``sel``, each
    carrying what is needed to read it: polarity, pixel size, slice edges, frames and
    live time per slice, dead time, units, source."""
    import h5py

    names = list(species)
    check_species(cs, names)
    p = Path(path)
    frames = np.asarray(cs.frames_in_slice[sel.start : sel.stop], dtype=np.int64)
    common: dict[str, Any] = {
        "source": cs.source,
        "units": "counts",
        "axes": "z,y,x",
        "slice_start": sel.start,
        "slice_stop": sel.stop,
        "frames_per_slice": cs.frames_per_slice,
        "frames_in_slice": frames,
        "depth_calibration": depth.calibration,
    }
    if cs.run_id is not None:
        common["run_id"] = cs.run_id
    if cs.pixel_um is not None:
        common["pixel_um"] = cs.pixel_um
        common["fov_um"] = cs.pixel_um * cs.shape[2]
    if depth.calibrated:
        edges = np.asarray(depth.edges[sel.start : sel.stop + 1])
        common["slice_edges_nm"] = edges
        common["depth_per_slice_nm"] = float(np.max(np.diff(edges))) if sel.n else 0.0
    with h5py.File(p, "w") as f:
        f.attrs["format"] = H5_FORMAT
        f.attrs["species"] = names
        for key, value in common.items():
            f.attrs[key] = value
        for s in names:
            data = np.ascontiguousarray(cs.cubes[s][sel.start : sel.stop], dtype=np.uint32)
            d = f.create_dataset(s, data=data, compression="gzip", compression_opts=1, shuffle=True)
            for key, value in common.items():
                d.attrs[key] = value
            d.attrs["species"] = s
            d.attrs["polarity"] = cs.polarity_of(s)
            d.attrs["live_time_s"] = cs.live_time_s(s)[sel.start : sel.stop]
            d.attrs["dead_time_s"] = cs.dead_time_s(s)
    return p
