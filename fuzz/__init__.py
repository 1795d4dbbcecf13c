"""Fuzzing mugaika: harnesses shared by `make fuzz` (atheris) and the tests (hypothesis).

`smtp_harness` drives the real SMTP session and ingress hooks over a real spool;
`pipeline_harness` drives parse → sanitize → rebuild; `seeds` builds their seed corpora;
`run` is the coverage-guided entry point (`python -m fuzz.run smtp|pipeline`).
"""
