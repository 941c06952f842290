"""The instrument simulator (``opsims-sim``): a Na | NASICON half-cell on a potentiostat and
a dual-polarity SIMS raster, speaking the same link protocols as the hardware.

Modules: ``cell`` (electrochemistry), ``specimen`` (the sample under the beam), ``timebase``
(accelerated time, drifting and wrapping device clocks), ``potentiostat`` and ``sims`` (the
two instrument links), ``faults``, ``config``, ``server`` (the process), ``cli``.
"""
