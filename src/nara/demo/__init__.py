"""The synthetic region: directory, population and clinical history, deterministic from a seed.

See :mod:`nara.demo.generate` (entry point), :mod:`nara.demo.users` (demo logins) and ``docs/demo.md``.
"""
