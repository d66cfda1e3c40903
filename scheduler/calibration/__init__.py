"""Calibration's pure half: what a calibration measures (:mod:`.plan`), the figures the
measurements in ``workers/`` return (:mod:`.figures`), and the fits that turn those figures
into a :class:`~scheduler.profiles.DeviceProfile` (:mod:`.fit`, :mod:`.replay_fit`).

Nothing here times anything or imports torch or Ray: the fits are plain functions of
frozen values, tested with hand-computed figures.
"""
