"""Native core of opsims (Rust, through PyO3).

Every call that processes data releases the GIL. Errors of the core arrive as the
exception classes below; a malformed record never raises: it is counted.
"""

from collections.abc import Iterator, Sequence
from os import PathLike
from typing import Any, Self, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "Acquisition",
    "BudgetError",
    "ClockModel",
    "CommandRefused",
    "ConfigError",
    "DetectorEmitter",
    "EventCore",
    "InterlockError",
    "JournalBlocks",
    "JournalError",
    "JournalFrames",
    "JournalFullError",
    "JournalReader",
    "JournalWriter",
    "LinkStreamDecoder",
    "OpsimsError",
    "PanicException",
    "PtuError",
    "PtuFile",
    "RecordFormatError",
    "__version__",
    "decode_records",
    "encode_link_frame",
    "read_ptu",
    "recover_journal",
]

__version__: str

class OpsimsError(Exception):
    """Base class of every opsims native error."""

class ConfigError(OpsimsError):
    """An invalid configuration value; the message names it."""

class RecordFormatError(OpsimsError):
    """An unknown record type or a malformed link frame."""

class PtuError(OpsimsError):
    """A PicoQuant .ptu file that cannot be read."""

class BudgetError(OpsimsError):
    """The cube memory budget would be exceeded."""

class JournalError(OpsimsError):
    """A run journal that cannot be opened, written or read as asked."""

class JournalFullError(JournalError):
    """The journal's queue is at its memory bound: the append was refused (and counted)."""

class PanicException(BaseException):
    """A panic in the native code: a bug, never the answer to bad input (which is one of
    the errors above, or a counted rejection). PyO3 raises it (``pyo3_runtime``) instead
    of aborting the interpreter; it is not an :class:`Exception`, so ``except Exception``
    does not hide it."""

# --- detector pipeline (docs/raster.md, docs/detector-link.md) ---

@final
class EventCore:
    """The detector pipeline of one source: decode → clock → raster map → voxel cubes.

    ``polarities`` lists ``(name, channels, species, switching, settle_ticks)`` with
    ``switching`` either ``"per_frame"`` or ``"per_pixel"``. Marker arguments are bit
    masks; ``frame_marker_at`` says whether the frame marker starts a frame (``"start"``)
    or ends it (``"end"``, as in PicoQuant image files). ``clock_time_scale`` is simulated
    seconds per host second (1.0 with hardware): the clock model fits ticks of
    ``tick_s / clock_time_scale`` host seconds. Raises :class:`ConfigError` for
    inconsistent values.
    """

    def __new__(
        cls,
        record_type: int,
        tick_s: float,
        nx: int,
        ny: int,
        dwell_ticks: int,
        polarities: Sequence[tuple[str, Sequence[int], Sequence[str], str, int]],
        *,
        line_settle_ticks: int = 0,
        flyback_ticks: int = 0,
        line_tolerance_ticks: int = 0,
        frames_per_slice: int = 1,
        frame_marker: int = 4,
        line_start_marker: int = 1,
        line_stop_marker: int = 2,
        mass_switch_marker: int = 0,
        frame_marker_at: str = "start",
        memory_budget_bytes: int = ...,  # 1 GiB
        budget_policy: str = "rebin",
        clock_window_s: float = 30.0,
        clock_time_scale: float = 1.0,
    ) -> Self: ...
    def feed(self, records: npt.NDArray[np.uint32]) -> dict[str, int]:
        """Decode, map and bin raw TTTR records; returns the batch's counter deltas."""
    def feed_link(self, data: bytes, host_ns: int) -> dict[str, int]:
        """Bytes of the live detector link in any chunking, received at ``host_ns``."""
    def finish(self) -> dict[str, int]:
        """Close the open line at the end of a run so every event is accounted for."""
    def counters(self) -> dict[str, int]:
        """Totals since creation: ``events == binned + rejected_total + pending``."""
    @property
    def species(self) -> list[str]: ...
    @property
    def n_slices(self) -> int: ...
    @property
    def frames_per_slice(self) -> int:
        """Frames per depth slice now (doubles each time the cubes are rebinned)."""
    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of every slice."""
    @property
    def allocated_bytes(self) -> int: ...
    def cube(
        self, species: str | int, z_start: int = 0, z_stop: int | None = None
    ) -> npt.NDArray[np.uint32]:
        """A copy of slices ``z_start..z_stop`` of one species, ``[z, y, x]``."""
    def depth_profile(self, z_start: int = 0) -> npt.NDArray[np.uint64]:
        """Counts per slice and species from slice ``z_start`` on, ``[z, species]``."""
    def ion_map(
        self, species: str | int, z_start: int = 0, z_stop: int | None = None
    ) -> npt.NDArray[np.uint64]:
        """Sum of one species over slices ``z_start..z_stop``, ``[y, x]``."""
    def binned_by_species(self) -> dict[str, int]:
        """Counts binned per species since the cubes were made (no pass over them)."""
    def digest(self) -> dict[str, Any]:
        """What the engine built: ``counters``, ``n_slices``, ``frames_per_slice`` and
        ``species`` ({name: {``crc32`` of its cube, ``binned``}}); equal for two engines
        fed the same bytes with the same arrival times."""
    def take_dirty(self) -> int | None:
        """The lowest slice changed since the last call, or None."""
    def clock_state(self) -> dict[str, Any]:
        """The source's clock model: ``offset_ns``, ``drift_ppm``, ``residual_ns``, ..."""
    def to_host_ns(self, ticks: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Host ns of device ticks per the clock model; RuntimeError before the first frame."""
    def loss_intervals(self) -> list[tuple[int, int, int, int]]:
        """``(first_lost, resumed_at, last_tick_before, resume_base)`` per link loss."""
    @property
    def last_link_error(self) -> str | None: ...

def encode_link_frame(
    sequence: int,
    record_type: int,
    records: npt.NDArray[np.uint32],
    *,
    tick_fs: int,
    fine_fs: int = 0,
    overflow_base: int = 0,
    sent_tick: int = 0,
    frame_markers: int = 0,
    line_starts: int = 0,
    frame_marker: int = 4,
    line_start_marker: int = 1,
    line_stop_marker: int = 2,
    mass_switch_marker: int = 0,
) -> bytes:
    """One live-link frame: the 80-byte header with its CRC-32, then the records."""

# --- PTU files and records (docs/tttr-records.md) ---

@final
class PtuFile:
    """A PicoQuant .ptu file read into memory (see docs/tttr-records.md).

    A record area shorter or longer than ``TTResult_NumberOfRecords`` says is not an
    error: the whole records present are kept and ``warnings`` explains.
    """

    @property
    def version(self) -> str:
        """File format version string from the preamble, e.g. ``"1.0.00"``."""
    @property
    def record_type(self) -> int:
        """``TTResultFormat_TTTRRecType`` code, e.g. ``0x00010303`` (PicoHarp T3)."""
    @property
    def record_type_name(self) -> str:
        """Instrument name of the code, e.g. ``"HydraHarp V2 T3"``, or ``"unknown (0x…)"``."""
    @property
    def tags(self) -> dict[str, Any]:
        """Header tags: key ``ident`` for scalar tags, ``"ident[index]"`` for indexed ones.

        Values: None (Empty8), bool, int (Int8, BitSet64, Color8), float (Float8;
        TDateTime as days since 1899-12-30), list[float], str (ANSI strings decode as
        UTF-8 or else Latin-1; wide strings as UTF-16LE), bytes (BinaryBlob).
        """
    @property
    def global_resolution(self) -> float | None:
        """Seconds per tick (``MeasDesc_GlobalResolution``): T2 time tag, T3 sync period."""
    @property
    def resolution(self) -> float | None:
        """Seconds per T3 dtime bin (``MeasDesc_Resolution``)."""
    @property
    def image_markers(self) -> dict[str, int | None]:
        """``line_start``, ``line_stop``, ``frame`` marker masks and ``pix_x``, ``pix_y``.

        A mask is ``1 << (n - 1)`` for tag value n, comparable with decoded marker
        masks; None where the tag is absent. Raises :class:`PtuError` if a tag is
        invalid (marker number outside 1..4, negative size).
        """
    @property
    def number_of_records(self) -> int: ...
    @property
    def records(self) -> npt.NDArray[np.uint32]:
        """The raw 32-bit records (read-only)."""
    @property
    def warnings(self) -> list[str]:
        """Problems tolerated in the record area (count mismatch, stray bytes)."""

def read_ptu(path: str | PathLike[str]) -> PtuFile:
    """Read a .ptu file. Raises :class:`PtuError` for a file that is not a readable
    PTU file (bad magic, truncated or garbled header) and OSError if it cannot be read.
    The GIL is released while reading.
    """

def decode_records(
    record_type: int, records: npt.NDArray[np.uint32]
) -> dict[str, npt.NDArray[Any]]:
    """Decode raw TTTR records of ``record_type`` from a zero time base, GIL released.

    Returns one entry per input record in each array:
    ``kind`` (uint8: 0 event, 1 marker, 2 overflow, 3 T2 sync, 4 malformed),
    ``tick`` (uint64 absolute device tick: T2 time tag, T3 sync count; for an overflow
    the time base after it; for a malformed record the current base),
    ``channel`` (uint8, 0-based detector channel), ``dtime`` (uint16, T3 fine time),
    ``marker`` (uint8 marker bit mask, bit 0 = marker 1).
    Raises :class:`RecordFormatError` for an unknown record type code.
    """

@final
class LinkStreamDecoder:
    """A recorded detector link stream read back as records (docs/journal.md): feed it
    the bytes as they arrived, in any pieces; each whole frame's records come out
    decoded from the time base its header carries."""

    def __new__(cls) -> Self: ...
    def push(self, data: bytes) -> dict[str, Any]:
        """The records of every frame this piece completes, as :func:`decode_records`
        gives them (``kind``, ``tick``, ``channel``, ``dtime``, ``marker``), and
        ``frames``: ``sequence``, ``first_record`` (index into these records),
        ``overflow_base``, ``sent_tick``, ``record_type`` per frame."""
    @property
    def corrupt(self) -> int:
        """Frames whose checksum failed (dropped)."""
    @property
    def bytes_skipped(self) -> int:
        """Bytes skipped looking for a frame start."""

# --- clock ---

@final
class ClockModel:
    """Device ticks → host ns for one source: ``host_ns = offset_ns + tick * tick_s * 1e9
    * (1 + drift_ppm * 1e-6)``.

    Fitted online from (device tick, host arrival ns) pairs, where arrival is never
    earlier than the truth: the fit is the lower envelope (lower convex hull edge under
    the window's mean device time) over the last ``window_s`` seconds, so one-sided
    network jitter barely moves it. Memory is bounded (per-bucket minima, 512 buckets per
    window) whatever the update rate. Until the pairs span 1 s (or half the window) only
    the offset is fitted, at the last fitted drift (0 at first) and ``fitted`` is False.
    A clock jump (pairs far below the line, the device counter going back more than a
    window, or pairs far above the line for 1 s) restarts the window and counts in
    ``jumps``. Raises :class:`ConfigError` unless ``0 < tick_s <= 1`` (≥ 1e-15) and
    ``0 < window_s <= 1e6`` spanning at least 2 ticks.
    """

    def __new__(cls, tick_s: float, window_s: float = 30.0) -> Self: ...
    def update(self, device_tick: int, host_ns: int) -> None:
        """Add one (device tick, host arrival ns) pair."""
    def update_many(
        self, device_ticks: npt.NDArray[np.uint64], host_ns: npt.NDArray[np.int64]
    ) -> None:
        """Add pairs from two equally long arrays (ValueError otherwise); GIL released."""
    def to_host_ns(self, device_ticks: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Host ns of device ticks per the current fit; RuntimeError before the first pair."""
    def reset(self) -> None:
        """Forget all pairs and the fitted drift (``jumps`` is kept)."""
    def state(self) -> dict[str, Any]:
        """``offset_ns``, ``drift_ppm``, ``residual_ns``, ``points``, ``fitted``, ``jumps``."""
    @property
    def offset_ns(self) -> float:
        """Host ns at device tick 0 on the fitted line."""
    @property
    def drift_ppm(self) -> float:
        """(host ns per nominal device ns - 1) * 1e6: positive when the device runs slow."""
    @property
    def residual_ns(self) -> float:
        """Typical delay: median over the window's buckets of the pairs' mean height above
        the line, ns."""
    @property
    def points(self) -> int:
        """Pairs in the current window."""
    @property
    def fitted(self) -> bool:
        """Whether the drift is fitted (enough spread in time) or only the offset."""
    @property
    def jumps(self) -> int:
        """Clock jumps detected since creation; each restarted the window."""
    @property
    def tick_s(self) -> float: ...
    @property
    def window_s(self) -> float: ...

# --- simulated detector front-end (docs/detector-emitter.md) ---

@final
class DetectorEmitter:
    """The simulated detector front-end: the byte stream of the live detector link
    (docs/detector-link.md) for a raster configured as for :class:`EventCore`, with
    Poisson counts from per-pixel rates, dead time, dark counts and exact ground truth.

    The raster starts at ``start_tick``: a line start every ``line_settle_ticks +
    nx * dwell_ticks + flyback_ticks``, ``frame_gap_ticks`` more after a frame's last
    line; the frame marker comes with the frame's first line start (``"start"``) or with
    the next frame's (``"end"``). Mass switching per polarity as in docs/raster.md, with
    a ``mass_switch_marker`` record at every switch when that mask is not 0. Counts land
    on each polarity's first channel: in live pixel time at the species' rate, while the
    magnet settles at ``settle_rate_fraction`` of the next species' rate, in line settle,
    flyback and frame gap at ``dark_rate_hz``. A count within ``dead_time_ticks`` of the
    last recorded count of its channel is lost (non-paralysable). The link's time base
    starts just below ``start_tick``, as for a time tagger that has run for a while: the
    first header's overflow base stands for the wraps before it.

    ``t3_fine_fs`` (T3 only) is the fine-time bin of ``dtime`` in femtoseconds, sent as
    the header's ``fine_fs``; dtimes are uniform over one sync period (``tick_s``). The
    default spreads one sync period over the whole dtime field. ``seed`` fixes every draw:
    the same seed, rates and calls give the same bytes, however time is sliced into
    :meth:`emit_until` calls. ``record_events`` logs every generated count for
    :meth:`take_events`. Raises :class:`ConfigError` for an inconsistent configuration (as
    :class:`EventCore` does, plus: fixed dwell only, marker masks within 4 bits, each
    polarity's first channel valid for the record type, no PicoHarp T2, whose markers
    cannot sit on exact ticks; with ``record_events``, ``nx`` and ``ny`` at most 65536).
    """

    def __new__(
        cls,
        record_type: int,
        tick_s: float,
        nx: int,
        ny: int,
        dwell_ticks: int,
        polarities: Sequence[tuple[str, Sequence[int], Sequence[str], str, int]],
        *,
        line_settle_ticks: int = 0,
        flyback_ticks: int = 0,
        frame_gap_ticks: int = 0,
        frames_per_slice: int = 1,
        frame_marker: int = 4,
        line_start_marker: int = 1,
        line_stop_marker: int = 2,
        mass_switch_marker: int = 0,
        frame_marker_at: str = "start",
        dead_time_ticks: int = 0,
        dark_rate_hz: float = 0.0,
        settle_rate_fraction: float = 0.0,
        start_tick: int = 0,
        seed: int = 0,
        record_truth: bool = False,
        record_events: bool = False,
        max_records_per_frame: int = 65536,
        t3_fine_fs: int | None = None,
    ) -> Self: ...
    def set_rates(self, rates: npt.ArrayLike) -> None:
        """Count rates ``[n_species, ny, nx]`` in counts/s (converted to float64), used
        from the next line start on (all zero until the first call). ValueError for a
        wrong shape, NaN, infinite or negative values, or rates so high that one line
        would hold more than 2**24 counts of a species."""
    def emit_until(self, tick: int) -> list[bytes]:
        """Every record with a tick below ``tick``, as one or more complete link frames
        (at most ``max_records_per_frame`` records each; an empty frame when there is
        nothing to send, so the receiver still gets a clock pair). Sequence numbers run
        on from 0; every frame of the call has ``sent_tick = tick``. ValueError if
        ``tick`` is below the previous call's. The GIL is released while generating."""
    def jump(self, ticks: int) -> None:
        """The device counter jumps forward by ``ticks`` at the next line start not yet
        generated: that line and every later record, marker and :meth:`emit_until`
        argument are in the jumped counter. The jump falls at the end of a flyback, so with
        line-stop markers no line is lost; the next frame header carries the new time base
        (no overflow records for the jumped span). ValueError unless ``ticks > 0`` and the
        counter stays within 64 bits."""
    def jumps(self) -> list[tuple[int, int]]:
        """``(tick_before, ticks)`` of every jump: the line start it moved, in the
        counter before the jump, and the ticks added."""
    def take_events(self) -> dict[str, npt.NDArray[Any]]:
        """Drain the true event log: every count emitted (or lost to dead time) since
        the last call, in time order. ``tick`` (uint64, unwrapped device tick),
        ``channel`` (uint8), ``species`` (int16 global index; -1 for dark counts), ``z``,
        ``y``, ``x`` (uint32, uint16, uint16; the voxel of an in-voxel count, else 0) and
        ``fate`` (uint8: 0 in voxel, 1 line settle, 2 flyback or frame gap, 3 mass
        settle, 4 lost to dead time and not sent). ValueError unless created with
        ``record_events=True``."""
    @property
    def next_sequence(self) -> int:
        """Sequence number of the next frame."""
    @property
    def position(self) -> tuple[int, int, int]:
        """``(frame, line)`` of the last line start sent, and the tick of the last record."""
    @property
    def line_period_ticks(self) -> int:
        """Ticks from one line start to the next within a frame."""
    @property
    def frame_period_ticks(self) -> int:
        """Ticks from a frame's first line start to the next frame's."""
    @property
    def n_slices(self) -> int:
        """Depth slices (``frame // frames_per_slice``) of the frames begun so far."""
    def truth_counters(self) -> dict[str, int]:
        """What was sent, by the core's names: ``events``, ``binned`` (live pixel time),
        ``line_settle``, ``flyback``, ``mass_settle``, ``markers``, ``frame_markers``,
        ``line_starts``, ``line_stops``, ``mass_switches``, ``overflow_records``,
        ``wraps``, ``records``, ``link_frames``; and ``dead_time_lost``, ``frames``,
        ``lines`` (begun), ``clock_jumps``."""
    def truth_cube(
        self, species: str | int, z_start: int = 0, z_stop: int | None = None
    ) -> npt.NDArray[np.uint32]:
        """True counts of one species in live pixel time, ``[z, y, x]``, binned as the
        core bins them. ValueError unless created with ``record_truth=True``."""
    @property
    def species(self) -> list[str]: ...

# --- the instrument links in native threads (docs/acquisition.md) ---

class CommandRefused(OpsimsError):
    """A potentiostat command was refused: ``args == (message, code)``, with the reply code
    of the instrument, or None when the acquisition's own check refused it unsent."""

class InterlockError(OpsimsError):
    """The safety interlock refused an operation (a reset while the condition persists)."""

@final
class Acquisition:
    """The instrument links in native threads: the detector link into the voxel cubes,
    the potentiostat link into samples on the host timebase, commands, heartbeats.

    ``detector`` holds ``host``, ``port`` and the arguments of :class:`EventCore` by the
    same names (``record_type``, ``tick_s``, ``nx``, ``ny``, ``dwell_ticks``,
    ``polarities`` and the keywords); ``potentiostat`` holds ``host``, ``port`` and
    ``clock_window_s`` (30 s). Either may be None. Both links connect at once and
    reconnect after any failure, waiting ``reconnect_initial_s`` doubling up to
    ``reconnect_max_s``; every state change is an event. ``clock_time_scale`` is
    simulated seconds per host second (1.0 with hardware) for both clock models.

    The potentiostat thread sends HEARTBEAT every ``heartbeat_s`` only while
    :meth:`kick` was called within ``liveness_s`` (construction counts as a kick), so
    the instrument's watchdog opens the circuit if the owner hangs. Samples wait in a
    queue of ``sample_queue``; beyond it new samples are dropped and counted
    (``samples_dropped``). Every sample passes the native sample check before it is
    queued: with ``interlock`` (a dict of limits, docs/safety.md) that check is the
    safety interlock, which opens the circuit from the potentiostat thread on a bad
    sample and refuses current until :meth:`reset_interlock`; without it, a pass-through.
    ``latched`` (``reason``, ``detail``, ``trip_host_ns``, ``sample``) is a trip from
    before a restart, restored in the interlock before the links start (as
    :meth:`latch_interlock`, which cannot be that early).

    Safe to call from any Python thread; waits and copies release the GIL. Bad values
    raise :class:`ConfigError` naming the key (``detector.nx: ...``). Dropping the object
    stops it as :meth:`stop` does.
    """

    def __new__(
        cls,
        *,
        detector: dict[str, Any] | None = None,
        potentiostat: dict[str, Any] | None = None,
        clock_time_scale: float = 1.0,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        heartbeat_s: float = 0.5,
        liveness_s: float = 2.0,
        sample_queue: int = 1_000_000,
        interlock: dict[str, Any] | None = None,
        latched: tuple[str, str, int, dict[str, Any] | None] | None = None,
    ) -> Self: ...
    def wait(self, timeout_s: float) -> bool:
        """Block, GIL released, until new samples, events or detector data arrived since
        the last call returned (True) or ``timeout_s`` passed (False). Signal handlers run
        every 50 ms meanwhile (KeyboardInterrupt arrives)."""
    def kick(self) -> None:
        """The owner is alive: heartbeats go on for ``liveness_s`` from now."""
    def take_samples(self) -> dict[str, npt.NDArray[Any]]:
        """Queued samples, oldest first, as columns: ``host_ns`` (int64), ``tick`` (uint64,
        the unwrapped device counter), ``ewe_v``, ``current_a`` (float64), ``mode``,
        ``flags`` (uint8). ``host_ns`` follows the clock model once its drift is fitted,
        and is the frame's arrival time before. The queue is emptied."""
    def take_events(self) -> list[dict[str, Any]]:
        """Queued events, oldest first, each with ``kind`` and ``host_ns``:
        ``link`` (``link``: ``"detector"``/``"potentiostat"``, ``state``:
        ``"connecting"``/``"up"``/``"down"``, ``reason``); ``eis_point`` (``tick``,
        ``index``, ``n_points``, ``freq_hz``, ``z_re_ohm``, ``z_im_ohm``);
        ``instrument_event`` (``tick``, ``code``, ``name``: ``"eis_done"`` (1),
        ``"watchdog_open_circuit"`` (2), ``"eis_aborted"`` (3) or ``"limit_reached"`` (4,
        a :meth:`set_current` voltage limit ended the step: ``tick`` is the sample that
        reached it), ``message``); ``safety`` (``state``: ``"armed"``,
        ``"tripped"``, ``"alarm"``; ``reason``), one per interlock state change, queued
        after the trip's OPEN_CIRCUIT went out; ``step_stop`` (``tick``, ``ewe_v`` and
        ``host_ns`` of the sample that reached the stop, ``limit_v``), queued after the
        stop's OPEN_CIRCUIT went out (:meth:`arm_step_stop`). The queue is emptied; beyond
        65 536 events new ones are dropped and counted (``events_dropped``)."""
    def counters(self) -> dict[str, int]:
        """The detector engine's counters (as :meth:`EventCore.counters`) and the links':
        connects, connect failures, disconnects and bytes per link; potentiostat frames,
        skipped bytes, corrupt, unsupported, malformed and unexpected frames; ``samples``,
        ``samples_dropped``, ``samples_tick_backwards``, ``events_dropped``,
        ``commands_sent``, ``commands_timed_out``, ``replies_unmatched``,
        ``heartbeats_sent``, ``heartbeats_withheld``, ``open_circuit_now``, ``panics``."""
    def clock_states(self) -> dict[str, dict[str, Any]]:
        """``{"detector": ..., "potentiostat": ...}``, each as :meth:`ClockModel.state`;
        the potentiostat's appears with its first HELLO."""
    def link_states(self) -> dict[str, str]:
        """The state of each configured link: ``"connecting"``, ``"up"`` or ``"down"``."""
    def hello(self) -> dict[str, Any] | None:
        """The potentiostat's last HELLO (``protocol``, ``counter_bits``, ``tick_fs``,
        ``sample_period_ticks``, ``compliance_a``, ``name``), None before the first one.
        RuntimeError without a potentiostat link."""
    def set_current(
        self, amps: float, timeout_s: float = 2.0, limit_v: float | None = None
    ) -> None:
        """Galvanostatic control at ``amps``. With ``limit_v`` the instrument itself opens
        the circuit at the first sample of this control with |Ewe| >= ``limit_v`` and
        says so with an ``instrument_event`` ``limit_reached`` (0 is no limit; a
        non-finite or negative one is refused, code 3 ``out_of_range``); a later
        SET_CURRENT or OPEN_CIRCUIT replaces or clears it. Raises :class:`CommandRefused`
        if the instrument refuses, ConnectionError if the link is down, TimeoutError if
        no reply comes within ``timeout_s`` (as every command does)."""
    def open_circuit(self, timeout_s: float = 2.0) -> None:
        """Current off at once (also aborts a sweep)."""
    def start_eis(
        self,
        f_start_hz: float,
        f_stop_hz: float,
        points_per_decade: int,
        amplitude_v: float,
        timeout_s: float = 2.0,
    ) -> None:
        """An impedance sweep from ``f_start_hz`` down to ``f_stop_hz``; its points arrive
        as ``eis_point`` events, then an ``instrument_event`` ``eis_done``."""
    def read_status(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """The instrument's STATUS: ``tick`` (the raw counter), ``mode``,
        ``watchdog_opened``, ``eis_done``, ``eis_total``, ``setpoint_a``, ``ewe_v``,
        ``current_a``."""
    def command(
        self, kind: int, payload: bytes = b"", timeout_s: float = 2.0
    ) -> tuple[int, str, bytes]:
        """Any command by kind (docs/potentiostat-link.md); returns the reply's ``(code,
        message, body)`` whatever the code. ValueError for a payload above 65 536 bytes."""
    def stop(self, open_circuit: bool = True) -> bool:
        """Open the circuit first (waiting at most 1 s for the reply), then stop and join
        both threads. True if open circuit was confirmed, or not asked for, or there is no
        potentiostat link. Reads of the cubes keep working; later calls return True."""
    def interlock_state(self) -> dict[str, Any] | None:
        """The interlock (None without one): ``state``, ``reason``, ``detail``, ``sample``
        (the offending sample as a dict, or None), ``device_tick``, ``sample_host_ns``,
        ``trip_host_ns``, ``alarm_host_ns``, ``open_circuit_confirmed`` (a sample at open
        circuit since the trip), ``open_circuit_acknowledged``, ``open_circuit_written``,
        ``restored``, ``current_flowing``, ``link_up``, ``trips``, ``resets``,
        ``open_circuit_writes``, ``changes`` (a counter of state changes), ``last_reset``,
        ``limits``, ``step_stop_v`` (the armed step stop's limit, None when none is armed),
        ``step_stops`` (how many fired). Reading it also runs the escalation timer while
        the link is down."""
    def start_recording(self, journal: JournalWriter, fresh_cubes: bool = True) -> bool:
        """From now on every detector read and sample batch also goes to ``journal``, from
        the link threads; with ``fresh_cubes`` the cubes and counters start over at that
        moment, so replaying the journal rebuilds them exactly. Returns whether a journal
        was already being recorded to (it is replaced, not closed)."""
    def stop_recording(self) -> dict[str, Any] | None:
        """Stop recording (the journal is not closed: its owner closes it). Returns the
        digest of what the engine built while recording (as :meth:`EventCore.digest`;
        ``{}`` without a detector link), or None if nothing was being recorded."""
    def reset_interlock(self, operator: str, reason: str) -> dict[str, Any]:
        """Operator reset to ARMED; returns ``state``, ``operator``, ``reason``,
        ``host_ns`` and the ``cleared`` trip. :class:`InterlockError` while not tripped or
        while the condition persists (last sample out of limits, link down, open circuit
        not shown by a sample); RuntimeError without an interlock."""
    def latch_interlock(
        self,
        reason: str,
        detail: str,
        trip_host_ns: int,
        sample: dict[str, Any] | None = None,
    ) -> None:
        """Latch a trip from before a restart as TRIPPED (the circuit is opened as soon
        as the link is up); call it before commanding any current. ValueError for an
        unknown ``reason``."""
    def arm_step_stop(self, limit_v: float) -> None:
        """Arm the interlock's step stop: the first finite sample in galvanostatic mode
        with ``|Ewe| >= limit_v`` opens the circuit from the potentiostat thread (no
        Python on the path), is queued as a ``step_stop`` event, and disarms the stop.
        Replaces a stop already armed. The stop never latches or changes the safety
        state; the safety checks judge every sample first, and a sample that trips the
        interlock is a trip only. A trip, a lost link and :meth:`stop` disarm it; while
        tripped it is not judged. :class:`ConfigError` unless ``limit_v`` is finite and
        above 0; RuntimeError without an interlock."""
    def disarm_step_stop(self) -> bool:
        """Disarm the step stop; whether one was armed (False once it fired).
        RuntimeError without an interlock."""
    @property
    def stopped(self) -> bool: ...
    @property
    def species(self) -> list[str]:
        """Species of the detector pipeline ([] without a detector link)."""
    @property
    def n_slices(self) -> int:
        """RuntimeError (as every cube read) without a detector link."""
    @property
    def frames_per_slice(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of every slice."""
    def cube(
        self, species: str | int, z_start: int = 0, z_stop: int | None = None
    ) -> npt.NDArray[np.uint32]:
        """A copy of slices ``z_start..z_stop`` of one species, ``[z, y, x]``, taken under
        the engine's lock (the detector thread waits meanwhile)."""
    def cube_slices(
        self, keys: Sequence[tuple[int, int]]
    ) -> tuple[list[npt.NDArray[np.uint32] | None], int, int, int]:
        """Single slices ``(species_index, z)``, ``[y, x]``, read under one lock with the
        binning they are of: ``(slices, frames_per_slice, n_slices, rebins)``. A slice
        merged away by a rebin since it was asked for (``z >= n_slices``) is None."""
    def cubes(
        self,
    ) -> tuple[dict[str, npt.NDArray[np.uint32]], int, int, int, dict[str, int]]:
        """Every species' whole cube read under one lock (so all share the same slices
        and binning), with the counters they go with: ``(cubes, frames_per_slice,
        n_slices, rebins, counters)``."""
    def depth_profile(self, z_start: int = 0) -> npt.NDArray[np.uint64]:
        """Counts per slice and species from slice ``z_start`` on, ``[z, species]``."""
    def profile_rows(self, z_start: int = 0) -> tuple[npt.NDArray[np.uint64], int, int, int]:
        """The depth profile from slice ``z_start`` on, ``[z, species]``, read under one
        lock with the binning it is of: ``(rows, frames_per_slice, n_slices, rebins)``."""
    def ion_map(
        self, species: str | int, z_start: int = 0, z_stop: int | None = None
    ) -> npt.NDArray[np.uint64]:
        """Sum of one species over slices ``z_start..z_stop``, ``[y, x]``."""
    def binned_by_species(self) -> dict[str, int]:
        """Counts binned per species since the cubes were made (no pass over them)."""
    def take_dirty(self) -> int | None:
        """The lowest slice changed since the last call, or None."""

# --- run journal (docs/journal.md) ---

@final
class JournalWriter:
    """Writes one run journal: a directory of checksummed segment files.

    ``append`` and ``append_frame`` only copy into a bounded queue and return; a native
    thread batches detector frames into blocks of up to ``block_bytes``, compresses them
    (``level``; ``transform``: ``"auto"`` tries each on a sample now and then, or one of
    ``"delta_shuffle"``, ``"shuffle"``, ``"none"``), writes
    and syncs every ``flush_interval_s`` (or ``flush_bytes``), rolling to a new segment
    at ``segment_bytes``. On a disk error the blocks stay queued and the write is retried
    every ``retry_interval_s``; once ``queue_bytes`` of accepted data are not yet durable,
    appends raise :class:`JournalFullError` (and are counted). A directory that exists
    and is not empty raises :class:`JournalError` unless ``append`` continues it (after
    recovering it if it was left open). A context manager: leaving it closes.
    """

    def __new__(
        cls,
        path: str | PathLike[str],
        *,
        run_id: str | None = None,
        append: bool = False,
        segment_bytes: int = 268_435_456,
        flush_interval_s: float = 0.1,
        flush_bytes: int = 67_108_864,
        block_bytes: int = 4_194_304,
        queue_bytes: int = 536_870_912,
        level: int = 1,
        transform: str = "auto",
        retry_interval_s: float = 1.0,
        close_timeout_s: float = 10.0,
    ) -> Self: ...
    def append(self, kind: str, host_ns: int, payload: bytes) -> None:
        """Queue opaque bytes of ``kind``: ``"potentiostat"``, ``"clock"``, ``"safety"``,
        ``"control"``, ``"step"``, ``"note"`` (``"detector_frames"`` is ``append_frame``).
        Raises :class:`JournalFullError` when the queue is full, :class:`JournalError`
        for an unknown kind or after close."""
    def append_frame(self, host_ns: int, frame: bytes) -> None:
        """Queue one raw detector link frame (any chunk of the link's bytes); it reads
        back byte-identical with ``host_ns``. Raises as :meth:`append`."""
    def status(self) -> dict[str, Any]:
        """Counters: ``blocks_appended``, ``frames_appended``, ``bytes_appended``,
        ``refused_appends``, ``refused_bytes``, ``blocks_durable``, ``frames_durable``,
        ``raw_bytes_durable``, ``stored_bytes_durable``, ``compression_ratio``,
        ``durable_seq``, ``durable_bytes``, ``durable_host_ns`` (None before the first
        sync), ``queued_bytes``, ``queued_high_water``, ``disk_error`` (the error being
        retried, or None), ``disk_errors``, ``writer_error`` (why the writer stopped,
        or None), ``segments``, ``closed``."""
    def close(self) -> dict[str, Any]:
        """Drain, write the closed block, sync; the final :meth:`status`. Raises
        :class:`JournalError` if the disk kept failing for ``close_timeout_s``
        (:meth:`status` then shows what was not written). GIL released."""
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool: ...

@final
class JournalReader:
    """Reads a journal directory, verifying every block's CRC-32. Corruption is not an
    error: it is skipped and reported by :meth:`report`. GIL released while reading."""

    def __new__(cls, path: str | PathLike[str]) -> Self: ...
    def blocks(self) -> JournalBlocks:
        """Every verified block in order as ``(kind, seq, host_ns, payload)``; a
        ``"detector_frames"`` payload is the raw batch (layout in docs/journal.md)."""
    def frames(self) -> JournalFrames:
        """Every detector frame in order as ``(seq, host_ns, frame)``."""
    def report(self) -> dict[str, Any]:
        """Read everything: ``run_id``, ``segments``, ``missing_segments`` (``(first,
        last)`` runs of indices), ``blocks``,
        ``frames``, ``raw_bytes``, ``stored_bytes``, ``first_seq``, ``last_seq``,
        ``last_host_ns``, ``closed``, ``recovered``, ``recoveries``,
        ``refused_appends``, ``corrupt`` (dicts of ``segment``, ``offset``, ``len``,
        ``reason``), ``torn_tail`` (such a dict, or None), ``gaps`` (``(expected,
        found)`` sequence numbers)."""

@final
class JournalBlocks(Iterator[tuple[str, int, int, bytes]]):
    """The iterator of :meth:`JournalReader.blocks`."""

    def __next__(self) -> tuple[str, int, int, bytes]: ...
    def report(self) -> dict[str, Any]:
        """As :meth:`JournalReader.report`, for what was read so far."""

@final
class JournalFrames(Iterator[tuple[int, int, bytes]]):
    """The iterator of :meth:`JournalReader.frames`."""

    def __next__(self) -> tuple[int, int, bytes]: ...

def recover_journal(path: str | PathLike[str]) -> dict[str, Any]:
    """End a journal left open (a crash): cut its torn tail at the last verified block,
    append a recovered block. Idempotent. Returns ``run_id``, ``blocks`` and ``frames``
    kept, ``last_seq``, ``last_host_ns``, ``bytes_cut``, ``cut`` (the span, or None),
    ``corrupt`` (spans left in place), ``was_closed``, ``marker_written``,
    ``next_seq``."""
