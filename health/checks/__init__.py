"""The shipped checks, one module each: engine, registry, disk, pressure, clock.

Imports: titus_common and health only.
"""
