"""Untrusted bytes in, harmless renderings out.

This package never imports `gateway`: it runs alone inside the sandbox
(`python -m converters.worker`) and is testable without SMTP.
"""
