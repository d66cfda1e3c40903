"""Allocation policies: pure decisions over a frozen snapshot of the cluster.

Like ``scheduler``, this package never imports ray, torch or pynvml, so the
same policy code runs in the simulator and live.
"""
