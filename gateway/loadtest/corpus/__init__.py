"""Builders for `mugaika samples`: benign and hostile test mails made from scratch.

Nothing here is live malware. Hostile behaviour is simulated with harmless stand-ins
(the EICAR test string, a PE header with no code, PDF JavaScript that only calls
`app.alert`, a VBA macro that does nothing, bombs that are small on disk), so the corpus
can be generated, stored and mailed anywhere a load test runs.
"""
